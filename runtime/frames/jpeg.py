"""Whole JPEG images, and lines, out of a byte stream that arrives in pieces of any size: the stdout of
``rpicam-vid --codec mjpeg``, a raw MJPEG stream over TCP, the body of a multipart HTTP stream.

An image runs from its SOI marker (FF D8) to its EOI marker (FF D9). The splitter walks the marker segments by
their lengths and scans only entropy-coded data for markers, so an FF D9 inside a segment (an EXIF thumbnail, a
comment) does not end the image early; bytes before an SOI are skipped.
"""

from __future__ import annotations

from typing import Callable, Optional

from cbnet_tl.runtime.frames.base import MAX_FRAME_BYTES, SourceError

CHUNK_BYTES = 64 * 1024
MAX_LINE_BYTES = 8 * 1024  # a multipart boundary or header line
_SOI = b"\xff\xd8\xff"  # start of image, and the marker that always follows it
_SOS, _EOI = 0xDA, 0xD9
_RESYNC = object()


def _standalone(code: int) -> bool:
    """Markers without a length: TEM and the restart markers RST0..RST7."""
    return code == 0x01 or 0xD0 <= code <= 0xD7


class ByteStream:
    """Bytes from ``read_some(n)`` (a socket's recv, a pipe's read, an HTTP body's read1), buffered.

    ``read_some`` returns b"" at the end of the stream; then ``next_jpeg``, ``readline`` and ``read_exact`` raise
    ``EOFError``. Whatever ``read_some`` raises (a timeout, a reset) goes through unchanged."""

    def __init__(self, read_some: Callable[[int], bytes], max_frame_bytes: int = MAX_FRAME_BYTES) -> None:
        self._read_some = read_some
        self._max_frame_bytes = max_frame_bytes
        self._buffer = bytearray()
        self._in_image = False  # an SOI sits at the start of the buffer
        self._in_scan = False  # pos is inside entropy-coded data
        self._pos = 0  # where the scan of the current image resumes

    def _fill(self) -> None:
        data = self._read_some(CHUNK_BYTES)
        if not data:
            raise EOFError("end of stream")
        self._buffer += data

    def next_jpeg(self) -> bytes:
        """The next whole JPEG image; blocks until it is complete."""
        while True:
            image = self._take_jpeg()
            if image is not None:
                return image
            if len(self._buffer) > self._max_frame_bytes:
                raise SourceError(f"no whole JPEG image within {self._max_frame_bytes:,} bytes: not an MJPEG stream")
            self._fill()

    def readline(self) -> bytes:
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                return self._take(end + 1)
            if len(self._buffer) > MAX_LINE_BYTES:
                raise SourceError(f"a line longer than {MAX_LINE_BYTES:,} bytes where a multipart header was expected")
            self._fill()

    def read_exact(self, num_bytes: int) -> bytes:
        if num_bytes > self._max_frame_bytes:
            raise SourceError(f"a part of {num_bytes:,} bytes, above the limit of {self._max_frame_bytes:,}")
        while len(self._buffer) < num_bytes:
            self._fill()
        return self._take(num_bytes)

    def _take(self, num_bytes: int) -> bytes:
        taken = bytes(self._buffer[:num_bytes])
        del self._buffer[:num_bytes]
        return taken

    def _take_jpeg(self) -> Optional[bytes]:
        while True:
            image = self._scan()
            if image is not _RESYNC:
                return image
            del self._buffer[:1]  # a broken image: look for the next SOI after its start
            self._in_image = False

    def _scan(self):
        """The image at the start of the buffer if it is complete, None if more bytes are needed, or _RESYNC."""
        buf = self._buffer
        if not self._in_image:
            start = buf.find(_SOI)
            if start < 0:
                del buf[:max(0, len(buf) - (len(_SOI) - 1))]  # keep what may be the start of a split SOI
                return None
            del buf[:start]
            self._in_image, self._in_scan, self._pos = True, False, 2
        pos, end = self._pos, len(buf)
        while True:
            if self._in_scan:
                marker = buf.find(b"\xff", pos)
                if marker < 0 or marker + 1 >= end:
                    self._pos = max(pos, end) if marker < 0 else marker
                    return None
                code = buf[marker + 1]
                if code == 0x00 or _standalone(code) or code == 0xFF:  # stuffed byte, restart marker, fill byte
                    pos = marker + (1 if code == 0xFF else 2)
                    continue
                self._in_scan, pos = False, marker
            if pos + 2 > end:
                self._pos = pos
                return None
            if buf[pos] != 0xFF:
                return _RESYNC
            code = buf[pos + 1]
            if code == 0xFF:  # fill byte before a marker
                pos += 1
            elif code == _EOI:
                self._in_image = False
                return self._take(pos + 2)
            elif code == 0xD8:  # a new image began before this one ended
                return _RESYNC
            elif _standalone(code):
                pos += 2
            else:
                if pos + 4 > end:
                    self._pos = pos
                    return None
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                if length < 2:
                    return _RESYNC
                pos += 2 + length
                self._in_scan = code == _SOS
