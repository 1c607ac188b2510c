"""The HTTP layer of ``run.py serve`` (``server.py``), on ``http.server`` alone: a request handler whose every error is
one JSON object with its 4xx or 5xx code and that reads a request against a deadline, and a server with a thread per
connection and a bound on connections.

Reading: the request line and headers must arrive within the read timeout, and the body within the read timeout
plus one second per ``MIN_BODY_BYTES_PER_S`` actually received (not per byte its ``Content-Length`` claims), checked
as it arrives: a client too slow gets ``408`` and its connection closed (a per-read socket timeout alone lets one
sending a byte a second hold a thread for ever). A body needs a ``Content-Length`` (``411``; chunked is refused), and
one over the limit is refused from its header before any of it is read (``413``). Every error response closes its
connection, after a short lingering read so that the client sees the answer rather than a reset.
"""

from __future__ import annotations

import collections
import io
import json
import socket
import socketserver
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional

MIN_BODY_BYTES_PER_S = 64 * 1024  # a body may take the read timeout plus one second per 64 KiB received
MAX_REQUEST_LINE = 8192
LINGER_S = 0.5  # after an error, how long unread request bytes are drained before the connection is closed
RETRY_AFTER_S = 1
_BUSY = json.dumps({"error": "Expected fewer open connections. Received one too many; retry", "status": 503}).encode()
_TOO_MANY_CONNECTIONS = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: "
                         f"{len(_BUSY)}\r\nRetry-After: {RETRY_AFTER_S}\r\nConnection: close\r\n\r\n").encode() + _BUSY


class DeadlineReader(io.RawIOBase):
    """A socket's reading side with a deadline: ``seconds`` after ``start``, plus a second per ``rate`` bytes read
    since (a minimum rate; 0: none). Each ``recv`` waits the time left, at most ``seconds``; none left is a
    ``TimeoutError``. ``received`` counts the bytes read since ``start``."""

    def __init__(self, connection: socket.socket) -> None:
        super().__init__()
        self.connection = connection
        self.start(0.0)

    def start(self, seconds: float, rate: float = 0.0) -> None:
        self.began, self.seconds, self.rate, self.received = time.monotonic(), seconds, rate, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        left = self.began + self.seconds + (self.received / self.rate if self.rate else 0) - time.monotonic()
        if left <= 0:
            raise TimeoutError("read deadline passed")
        self.connection.settimeout(min(left, self.seconds))
        count = self.connection.recv_into(buffer)
        self.received += count
        return count


class JsonRequestHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive; errors as JSON; reads bounded in time and size. The server gives ``read_timeout_s``
    and ``max_body_bytes``; a subclass routes the request in ``route()`` and counts answers in ``answered()``."""

    protocol_version = "HTTP/1.1"
    default_request_version = "HTTP/1.1"  # an answer always opens with its status line (no HTTP/0.9 replies)
    server_version = "cbnet-tl"
    read_timeout_s = 10.0
    max_body_bytes = 16 * 2**20

    def setup(self) -> None:
        super().setup()
        self.rfile.close()
        self.reader = DeadlineReader(self.connection)
        self.rfile = io.BufferedReader(self.reader)
        self.body_unread = False
        self.status_code: Optional[int] = None

    def handle_one_request(self) -> None:
        """``BaseHTTPRequestHandler``'s, with a ``408`` for a request that does not arrive in time (a connection
        idle between requests is closed without one) and a ``500`` for a bug."""
        self.reader.start(self.read_timeout_s)
        self.command, self.request_version, self.requestline = "", self.default_request_version, ""
        self.status_code, self.body_unread = None, False
        try:
            self.raw_requestline = self.rfile.readline(MAX_REQUEST_LINE + 1)
            if len(self.raw_requestline) > MAX_REQUEST_LINE:
                self.send_error(HTTPStatus.REQUEST_URI_TOO_LONG, f"Expected a request line of at most "
                                f"{MAX_REQUEST_LINE} bytes. Received more")
                return
            if not self.raw_requestline:
                self.close_connection = True
                return
            if not self.parse_request():
                return
            length = self.headers.get("Content-Length", "0").strip()
            self.body_unread = bool(self.headers.get("Transfer-Encoding")) or length != "0"
            self.route()
            self.wfile.flush()
        except TimeoutError:
            if self.reader.received and self.status_code is None:
                self.body_unread = True  # the client may still be sending: linger, so that it reads the answer
                self.send_error(HTTPStatus.REQUEST_TIMEOUT, f"Expected the request within the read timeout "
                                f"({self.read_timeout_s:g} s, --read-timeout). Received {self.reader.received} bytes")
            self.close_connection = True
        except ConnectionError:
            self.close_connection = True
        except Exception:  # a bug: answered 500 and the connection closed; socketserver prints the traceback
            if self.status_code is None:
                self.send_error(HTTPStatus.INTERNAL_SERVER_ERROR, "The server failed on this request; its error "
                                "output has the traceback")
            raise

    def handle_expect_100(self) -> bool:
        return True  # "100 Continue" is sent by read_body, once the request has passed every check

    def route(self) -> None:
        raise NotImplementedError

    def answered(self, code: int) -> None:
        """Called once per answered request with its status code, as the answer begins."""

    # --- answers -------------------------------------------------------------------------------------
    def send_response(self, code, message=None) -> None:
        if int(code) >= 200 and self.status_code is None:
            self.status_code = int(code)
            self.answered(self.status_code)  # counted before the client can see the answer
        self.connection.settimeout(self.read_timeout_s)  # a client that does not read its answer is let go too
        super().send_response(code, message)

    def send_body(self, code: int, body: bytes, content_type: str, headers=None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for name, value in (headers.items() if hasattr(headers, "items") else headers or ()):
            self.send_header(name, value)
        if code >= 400:
            self.close_connection = True
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()
        if code >= 400 and self.body_unread:
            self._linger()

    def send_json(self, code: int, payload, headers=None) -> None:
        body = json.dumps(payload, indent=2, allow_nan=False).encode("utf-8") + b"\n"
        self.send_body(code, body, "application/json", headers)

    def send_error(self, code, message=None, explain=None, headers=None) -> None:
        """Every error as ``{"error": message, "status": code}``, its connection closed."""
        code = int(code)
        self.send_json(code, {"error": message or HTTPStatus(code).phrase, "status": code}, headers)

    def _linger(self) -> None:
        """Stop sending, then drain what the client is still sending for a moment, so that closing does not reset
        the connection under the answer before the client has read it."""
        try:
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(LINGER_S)
            ends = time.monotonic() + LINGER_S
            while time.monotonic() < ends and self.connection.recv(65536):
                pass
        except OSError:
            pass

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format, *args) -> None:
        pass  # answers are counted (status, metrics), not logged one by one

    # --- the body --------------------------------------------------------------------------------------
    def body_length(self) -> Optional[int]:
        """The ``Content-Length`` of a body this server will read, or None after answering with the error."""
        lengths = self.headers.get_all("Content-Length") or []
        if self.headers.get("Transfer-Encoding"):
            return self.send_error(HTTPStatus.LENGTH_REQUIRED, "Expected a body with a Content-Length. Received: "
                                   f"Transfer-Encoding {self.headers['Transfer-Encoding']} (not accepted)")
        if not lengths:
            return self.send_error(HTTPStatus.LENGTH_REQUIRED, "Expected the image bytes as the body, with a "
                                   "Content-Length (curl --data-binary @IMAGE). Received no Content-Length")
        if len(set(lengths)) != 1 or not lengths[0].strip().isdigit():
            return self.send_error(HTTPStatus.BAD_REQUEST, f"Expected one Content-Length, a number of bytes. "
                                   f"Received: {', '.join(lengths)[:80]!r}")
        length = int(lengths[0])
        if length == 0:
            return self.send_error(HTTPStatus.BAD_REQUEST, "Expected the image bytes as the body. Received an empty "
                                   "body")
        if length > self.max_body_bytes:
            return self.send_error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"Expected a body of at most "
                                   f"{self.max_body_bytes:,} bytes (--max-body-bytes). Received: Content-Length "
                                   f"{length:,}")
        return length

    def read_body(self, length: int) -> Optional[bytes]:
        """``length`` bytes of body, within the read timeout plus one second per ``MIN_BODY_BYTES_PER_S`` received
        (whatever ``length`` is); None after answering ``408`` to a client too slow, or closing on one gone."""
        if self.headers.get("Expect", "").lower() == "100-continue":
            self.send_response_only(HTTPStatus.CONTINUE)
            self.end_headers()
            self.wfile.flush()
        self.reader.start(self.read_timeout_s, MIN_BODY_BYTES_PER_S)
        try:
            body = self.rfile.read(length)
        except TimeoutError:
            body = None
        if body is None or len(body) < length:
            if body is not None:  # the client closed before sending all of it: nobody to answer
                self.body_unread, self.close_connection = False, True
                return None
            return self.send_error(HTTPStatus.REQUEST_TIMEOUT, f"Expected a body of {length:,} bytes within "
                                   f"{self.read_timeout_s:g} s (--read-timeout) plus a second per 64 KiB received. "
                                   f"Received less in {time.monotonic() - self.reader.began:.3g} s; closing")
        self.body_unread = False
        return body


class BoundedHTTPServer(ThreadingHTTPServer):
    """A thread per connection, ``max_connections`` at most: one more is answered ``503`` from the accepting thread
    (no thread for it) and closed once drained; IPv6 when the host is; no DNS look-up of its own name."""

    daemon_threads = True

    def __init__(self, address: tuple, handler, max_connections: int) -> None:
        self.max_connections, self._connections = max_connections, 0
        self._connections_lock = threading.Lock()
        self._refused: collections.deque = collections.deque()  # (until, socket) of refused connections, lingering
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.request_queue_size = max_connections  # socketserver's 5 resets connections in a burst of clients
        super().__init__(address, handler)

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # not HTTPServer's: it looks the name up in the DNS
        self.server_name, self.server_port = self.server_address[:2]

    @property
    def url(self) -> str:
        host = self.server_address[0]
        return f"http://{f'[{host}]' if ':' in host else host}:{self.server_address[1]}/"

    @property
    def num_connections(self) -> int:
        """Connections open now, each with its thread."""
        return self._connections

    def refused_connection(self) -> None:
        """Called for each connection refused for want of room."""

    def process_request(self, request, client_address) -> None:
        with self._connections_lock:
            full = self._connections >= self.max_connections
            self._connections += 0 if full else 1
        if not full:
            super().process_request(request, client_address)
            return
        self.refused_connection()
        try:
            request.setblocking(False)
            request.send(_TOO_MANY_CONNECTIONS)
            request.shutdown(socket.SHUT_WR)
        except OSError:
            request.close()
            return
        self._refused.append((time.monotonic() + LINGER_S, request))  # closed by service_actions, once drained
        while len(self._refused) > self.max_connections:
            self._refused.popleft()[1].close()

    def service_actions(self) -> None:
        """Between ``serve_forever``'s polls: drain the refused connections, so that closing them does not reset
        the answer before their client reads it; close each once its client has, or it has lingered long enough."""
        now, lingering = time.monotonic(), collections.deque()
        for until, request in self._refused:
            try:
                while request.recv(65536):
                    pass
                request.close()  # the client closed its side
            except BlockingIOError:
                (lingering.append((until, request)) if now < until else request.close())
            except OSError:
                request.close()
        self._refused = lingering

    def shutdown_request(self, request) -> None:
        try:
            super().shutdown_request(request)
        finally:
            with self._connections_lock:
                self._connections -= 1

    def server_close(self) -> None:
        super().server_close()
        for _, request in self._refused:
            request.close()
        self._refused.clear()
