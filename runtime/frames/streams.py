"""MJPEG over the network: ``http://`` and ``https://`` (``multipart/x-mixed-replace``, what IP cameras serve) and
``tcp://HOST:PORT`` (a raw stream of JPEG images, what ``rpicam-vid --listen -o tcp://0.0.0.0:PORT`` serves).

Both read with a socket timeout: a stream that sends nothing for ``timeout`` seconds is lost (``SourceError``), as is
one the server closes. The frame rate is the server's; ``fps``, when given, only states it (for the deadline).
"""

from __future__ import annotations

import base64
import email.message
import http.client
import socket
import urllib.parse
from typing import Optional

from cbnet_tl.runtime.errors import ConfigError
from cbnet_tl.runtime.frames.base import DEFAULT_TIMEOUT_S, MAX_FRAME_BYTES, EncodedFrameSource, SourceError
from cbnet_tl.runtime.frames.jpeg import ByteStream
from cbnet_tl.runtime.images import MAX_PIXELS_DEFAULT

MAX_HEADER_LINES = 64  # lines before a part's boundary, and header lines of one part


def _redacted(url: urllib.parse.SplitResult) -> str:
    """The URL without its user and password, to name the source in logs."""
    host = url.hostname or ""
    host = f"[{host}]" if ":" in host else host
    netloc = host if url.port is None else f"{host}:{url.port}"
    return urllib.parse.urlunsplit((url.scheme, netloc, url.path, url.query, ""))


def _shut_down(sock: Optional[socket.socket]) -> None:
    """End both directions of a connection, which wakes a read blocked on it in another thread."""
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:  # not connected, or already closed
            pass


class _NetworkSource(EncodedFrameSource):
    """What the HTTP and TCP sources share: a ByteStream on a connection, read with a timeout."""

    def __init__(self, name: str, *, fps: Optional[float], timeout: float, max_pixels: Optional[int],
                 max_frame_bytes: int) -> None:
        super().__init__()
        self._name, self.fps, self.timeout = name, fps, timeout
        self.max_pixels, self._max_frame_bytes = max_pixels, max_frame_bytes
        self._stream: Optional[ByteStream] = None

    def _next_bytes(self, stream: ByteStream) -> bytes:
        raise NotImplementedError

    def _next_encoded(self) -> bytes:
        stream = self._stream
        if stream is None:
            raise SourceError(f"{self.description}: read() before open(), or after close()")
        try:
            return self._next_bytes(stream)
        except EOFError:
            lost = "the server closed the stream"
        except socket.timeout:
            lost = f"no data for {self.timeout:g} s"
        except (OSError, http.client.HTTPException) as error:
            lost = f"connection lost ({type(error).__name__}: {error})"
        except (AttributeError, ValueError):  # how http.client's reads fail when close() ran in another thread
            if self._stream is stream:
                raise
        if self._stream is not stream:
            lost = "closed"
        raise SourceError(f"{self._name}: {lost}")


class TcpMjpegSource(_NetworkSource):
    """``tcp://HOST:PORT``: JPEG images back to back on a TCP connection."""

    def __init__(self, spec: str, *, fps: Optional[float] = None, timeout: float = DEFAULT_TIMEOUT_S,
                 max_pixels: Optional[int] = MAX_PIXELS_DEFAULT, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        url = urllib.parse.urlsplit(spec)
        try:
            port = url.port
        except ValueError:
            port = None
        if not url.hostname or port is None:
            raise ConfigError(f"Expected a TCP stream as tcp://HOST:PORT. Received: {spec!r}")
        super().__init__(spec, fps=fps, timeout=timeout, max_pixels=max_pixels, max_frame_bytes=max_frame_bytes)
        self._address = (url.hostname, port)
        self._socket: Optional[socket.socket] = None
        self.description = f"{spec} (MJPEG over TCP)"

    def open(self) -> None:
        self.close()
        try:
            self._socket = socket.create_connection(self._address, timeout=self.timeout)
        except OSError as error:
            raise SourceError(f"{self._name}: cannot connect ({error})") from None
        self._stream = ByteStream(self._socket.recv, self._max_frame_bytes)

    def _next_bytes(self, stream: ByteStream) -> bytes:
        return stream.next_jpeg()

    def close(self) -> None:
        sock, self._socket, self._stream = self._socket, None, None
        _shut_down(sock)
        if sock is not None:
            sock.close()


class HttpMjpegSource(_NetworkSource):
    """``http://`` or ``https://``: a ``multipart/x-mixed-replace`` stream, a JPEG image a part. A part is read by
    its Content-Length when it states one, else from SOI to EOI. A user and password in the URL are sent as HTTP
    basic authentication and left out of the description."""

    def __init__(self, spec: str, *, fps: Optional[float] = None, timeout: float = DEFAULT_TIMEOUT_S,
                 max_pixels: Optional[int] = MAX_PIXELS_DEFAULT, max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        url = urllib.parse.urlsplit(spec)
        try:
            url.port
        except ValueError:
            raise ConfigError(f"Expected an MJPEG stream URL as http://HOST[:PORT]/PATH. Received: {spec!r}") from None
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ConfigError(f"Expected an MJPEG stream URL as http://HOST[:PORT]/PATH. Received: {spec!r}")
        super().__init__(_redacted(url), fps=fps, timeout=timeout, max_pixels=max_pixels,
                         max_frame_bytes=max_frame_bytes)
        self._url = url
        self._connection: Optional[http.client.HTTPConnection] = None
        self._response: Optional[http.client.HTTPResponse] = None
        self._socket: Optional[socket.socket] = None
        self._boundary: Optional[bytes] = None
        self.description = f"{self._name} (MJPEG over HTTP)"

    def open(self) -> None:
        self.close()
        kind = http.client.HTTPSConnection if self._url.scheme == "https" else http.client.HTTPConnection
        headers = {"Accept": "multipart/x-mixed-replace, */*"}
        if self._url.username is not None:
            credentials = f"{urllib.parse.unquote(self._url.username)}:{urllib.parse.unquote(self._url.password or '')}"
            headers["Authorization"] = "Basic " + base64.b64encode(credentials.encode()).decode("ascii")
        path = urllib.parse.urlunsplit(("", "", self._url.path or "/", self._url.query, ""))
        try:
            self._connection = kind(self._url.hostname, self._url.port, timeout=self.timeout)
            self._connection.request("GET", path, headers=headers)
            self._socket = self._connection.sock
            response = self._response = self._connection.getresponse()
        except (OSError, http.client.HTTPException) as error:
            self.close()
            raise SourceError(f"{self._name}: cannot connect ({type(error).__name__}: {error})") from None
        content_type = response.getheader("Content-Type", "")
        if response.status != 200 or not content_type.lower().startswith("multipart/"):
            self.close()
            status = f"HTTP {response.status} {response.reason}"
            raise SourceError(f"{self._name}: expected HTTP 200 with Content-Type multipart/x-mixed-replace (an MJPEG "
                              f"stream). Received: {status}, Content-Type {content_type or 'none'!r}")
        message = email.message.Message()
        message["Content-Type"] = content_type
        boundary = message.get_param("boundary")
        self._boundary = str(boundary).strip().lstrip("-").encode("latin-1") if boundary else None
        self._stream = ByteStream(response.read1, self._max_frame_bytes)

    def _next_bytes(self, stream: ByteStream) -> bytes:
        if self._boundary is None:  # no boundary stated: the JPEG images themselves delimit the parts
            return stream.next_jpeg()
        for _ in range(MAX_HEADER_LINES):
            line = stream.readline().strip()
            if line.startswith(b"--") and line.lstrip(b"-").startswith(self._boundary):
                if line.endswith(self._boundary + b"--"):
                    raise EOFError("closing boundary")
                break
        else:
            raise SourceError(f"{self._name}: no multipart boundary {self._boundary.decode('latin-1')!r} "
                              f"in {MAX_HEADER_LINES} lines")
        length = None
        for _ in range(MAX_HEADER_LINES):
            line = stream.readline().strip()
            if not line:
                break
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length" and value.strip().isdigit():
                length = int(value.strip())
        return stream.read_exact(length) if length is not None else stream.next_jpeg()

    def close(self) -> None:
        response, connection, sock = self._response, self._connection, self._socket
        self._response, self._connection, self._socket, self._stream = None, None, None, None
        _shut_down(sock)
        if response is not None:  # it holds the socket when the server said it closes the connection after the body
            response.close()
        if connection is not None:
            connection.close()
