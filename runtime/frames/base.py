"""What every frame source shares: the ``Frame`` it delivers, the ``FrameSource`` protocol, ``SourceError``, the
JPEG decoder of the camera and stream sources, the pacing of replayed files, and the one place an optional module
(OpenCV, picamera2) is imported with a clear error when it is missing.

A source counts every frame it produced in ``Frame.seq``, frames it could not decode included, so a consumer sees a
gap in ``seq`` as a lost frame; the count goes on across ``close()`` and ``open()`` of the same source object.
"""

from __future__ import annotations

import importlib
import io
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Optional

import numpy as np
from PIL import Image, UnidentifiedImageError

from cbnet_tl.runtime.errors import CbnetError, ConfigError, ImageError
from cbnet_tl.runtime.images import MAX_PIXELS_DEFAULT, check_pixels

DEFAULT_CAMERA_SIZE = (640, 480)  # what rpicam and picamera2 are asked for when no size is given
DEFAULT_FPS = 30.0  # the frame rate they are asked for likewise; a folder, and a video file that states none, play at it
DEFAULT_TIMEOUT_S = 10.0  # a camera or stream that delivers nothing for this long is lost
MAX_FRAME_BYTES = 32 * 1024 * 1024  # one encoded frame larger than this is refused: the stream is not MJPEG
MAX_BAD_FRAMES_IN_A_ROW = 5  # undecodable frames are skipped (and counted in seq) until this many in a row


class SourceError(CbnetError):
    """A frame source cannot be opened, or was lost while reading (process died, connection dropped, device gone)."""


@dataclass(frozen=True)
class Frame:
    """One frame as its source delivered it.

    ``image`` is as Pillow decoded it, after colour-order conversion: RGB, or L for a grey source (a folder's file
    keeps the mode Pillow opens it in, e.g. RGBA, so that ``frame_input`` gives what ``classify`` gives for the
    file). ``seq`` numbers the frames the source produced from 0; ``arrival`` is ``time.monotonic()`` when the frame
    was complete; ``jpeg`` holds its bytes when the source delivered JPEG, else None."""

    image: Image.Image
    seq: int
    arrival: float
    jpeg: Optional[bytes] = None


class FrameSource:
    """The protocol of every source: ``open()``, then ``read()`` until it returns None (a file or folder played
    out) or raises ``SourceError`` (lost), and ``close()`` (idempotent). ``read()`` blocks until the next frame.
    A source is a context manager that opens and closes it. One thread reads a source at a time; a source whose
    ``closes_from_any_thread`` is True (the camera process, the network sources, a folder, OpenCV) may be closed from
    another thread, which makes a blocked ``read()`` raise ``SourceError``."""

    description: str = "frame source"
    fps: Optional[float] = None
    closes_from_any_thread = False  # True: close() from another thread wakes a blocked read() (SourceError)

    def __init__(self) -> None:
        self._next_seq = 0
        self._bad_in_a_row = 0

    def open(self) -> None:
        raise NotImplementedError

    def read(self) -> Optional[Frame]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> "FrameSource":
        self.open()
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.description}>"

    def _deliver(self, image: Image.Image, arrival: float, jpeg: Optional[bytes] = None) -> Frame:
        """The next frame, numbered; a good frame ends a run of bad ones."""
        frame = Frame(image=image, seq=self._next_seq, arrival=arrival, jpeg=jpeg)
        self._next_seq += 1
        self._bad_in_a_row = 0
        return frame

    def _skip_bad(self, reason: str) -> None:
        """Count a frame that could not be decoded; ``SourceError`` after ``MAX_BAD_FRAMES_IN_A_ROW`` in a row."""
        self._next_seq += 1
        self._bad_in_a_row += 1
        if self._bad_in_a_row >= MAX_BAD_FRAMES_IN_A_ROW:
            self._bad_in_a_row = 0
            raise SourceError(f"{self.description}: {MAX_BAD_FRAMES_IN_A_ROW} frames in a row could not be "
                              f"decoded; the last: {reason}")


class EncodedFrameSource(FrameSource):
    """A source of encoded images (JPEG from a camera process or a stream): ``read()`` decodes each with Pillow and
    skips (and counts) one that does not decode."""

    closes_from_any_thread = True
    max_pixels: Optional[int] = MAX_PIXELS_DEFAULT

    def _next_encoded(self) -> bytes:
        """The next encoded image, blocking; ``SourceError`` when the source is lost."""
        raise NotImplementedError

    def read(self) -> Optional[Frame]:
        while True:
            data = self._next_encoded()
            arrival = time.monotonic()
            try:
                image = decode_frame(data, self.max_pixels)
            except ImageError as error:
                self._skip_bad(str(error))
                continue
            return self._deliver(image, arrival, data if is_jpeg(data) else None)


def image_from_bgr(array: np.ndarray) -> Image.Image:
    """uint8 pixels in B, G, R (or B, G, R, A) order, as OpenCV and picamera2's "RGB888" give them, or grey
    (h, w) or (h, w, 1) → an RGB (or L) image."""
    if array.ndim == 2 or array.shape[2] == 1:
        return Image.fromarray(np.ascontiguousarray(array.reshape(array.shape[:2])))
    return Image.fromarray(np.ascontiguousarray(array[..., 2::-1]))


def decode_frame(data: bytes, max_pixels: Optional[int] = MAX_PIXELS_DEFAULT, name: str = "frame") -> Image.Image:
    """Encoded image bytes (a JPEG frame, a file's bytes) → the decoded Pillow image, its size checked against
    ``max_pixels`` from the header before any pixel is decoded; one ``ImageError`` line, opened by ``name``, for any
    problem."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            warnings.filterwarnings("ignore", module=r"PIL(\.|$)")
            image = Image.open(io.BytesIO(data))
            if max_pixels is not None:
                check_pixels(name, image.size, max_pixels)
            image.load()
            return image
    except Image.DecompressionBombError as error:
        raise ImageError(f"{name}: refused by Pillow's decompression-bomb limit ({error})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"{name}: not an image Pillow can read, or truncated ({type(error).__name__}: "
                         f"{str(error)[:80]})") from None


def is_jpeg(data: bytes) -> bool:
    return data[:3] == b"\xff\xd8\xff"


class Pacer:
    """Paces a replay at ``fps``: ``wait()`` returns on a fixed schedule. A reader that falls more than a period
    behind starts the schedule again from now rather than getting a burst of frames. ``close()``, from any thread,
    wakes a ``wait()`` at once (it returns None) until ``restart()``: a closed replay does not sleep out its period."""

    def __init__(self, fps: float) -> None:
        self.period = 1.0 / fps
        self._due: Optional[float] = None
        self._closed = threading.Event()

    def restart(self) -> None:
        """A new schedule, and no longer closed (the source was opened again)."""
        self._due = None
        self._closed.clear()

    def close(self) -> None:
        self._closed.set()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def wait(self) -> Optional[float]:
        """Sleep until the next frame is due; returns ``time.monotonic()`` then, or None once ``close()`` came."""
        now = time.monotonic()
        if self._due is None or now - self._due > self.period:
            self._due = now
        while now < self._due:
            if self._closed.wait(self._due - now):
                return None
            now = time.monotonic()
        if self._closed.is_set():
            return None
        self._due += self.period
        return now


def check_fps(fps: Optional[float], spec: str) -> Optional[float]:
    if fps is None:
        return None
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not 0 < fps <= 1000:
        raise ConfigError(f"Expected a frame rate above 0 and at most 1000 frames/s for {spec}. Received: {fps!r}")
    return float(fps)


def refuse_size(size: Optional[tuple], spec: str) -> None:
    """A size is asked of a camera; anything else delivers the size it was made in."""
    if size is not None:
        raise ConfigError(f"Expected a size only for a camera (rpicam, picamera2, /dev/videoN): {spec} delivers the "
                          f"size it was made in. Received: {size[0]}x{size[1]}")


def optional_module(name: str, label: str, spec: str, install: str):
    """Import ``name`` (cv2, picamera2), which only some sources need, when such a source is chosen, so that the
    runtime stays light; a one-line ``ConfigError`` saying what to install when it is missing or broken."""
    try:
        return importlib.import_module(name)
    except ImportError as error:
        if isinstance(error, ModuleNotFoundError) and error.name == name:
            raise ConfigError(f"{label} is needed for {spec}: {install}") from None
        raise ConfigError(f"{label} is installed but cannot be imported for {spec} ({error}): {install}") from None
