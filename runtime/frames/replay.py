"""Frames from what is already recorded, and from what OpenCV opens: a folder or glob of images replayed at a frame
rate, and video files, ``/dev/videoN`` devices and ``rtsp://`` streams through OpenCV (``cv2``, imported only when
such a source is chosen).

A folder or a video file is paced: its frames arrive one period apart (``base.Pacer``), at ``fps`` when given, else
the file's own rate (a folder, or a file that states none: ``DEFAULT_FPS``); when it has played out,
``read()`` returns None. A device or a stream is live: its frames arrive as it makes them, and a failed read is a
lost source.

Both sources may be closed from another thread: that wakes a read waiting for its frame's turn at once (it raises
``SourceError``). OpenCV's capture is released only by the thread that reads it: ``close()`` during a read leaves the
capture to that read, which releases it when ``cv2`` returns.
"""

from __future__ import annotations

import glob
import math
import threading
import time
from pathlib import Path
from typing import Optional, Sequence

from cbnet_tl.runtime.errors import ConfigError, ImageError
from cbnet_tl.runtime.frames.base import (DEFAULT_FPS, Frame, FrameSource, Pacer, SourceError, decode_frame,
                                          image_from_bgr, is_jpeg, optional_module, refuse_size)
from cbnet_tl.runtime.images import MAX_PIXELS_DEFAULT, collect_image_paths

GLOB_CHARACTERS = frozenset("*?[")


def replay_paths(spec: str) -> list:
    """The files a folder (its images, recursively) or a glob (every file it matches) names, sorted by path."""
    if GLOB_CHARACTERS & set(spec):
        paths = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
        if not paths:
            raise ConfigError(f"Expected a glob that matches image files. Received: {spec!r}, which matches none")
        return paths
    try:
        return collect_image_paths([Path(spec)])
    except ImageError as error:
        raise ConfigError(f"Expected a folder of images to replay. Received: {error}") from None


class FolderSource(FrameSource):
    """Image files replayed in order at ``fps``, each decoded with Pillow in its own mode; a JPEG file's bytes are
    kept in ``Frame.jpeg``. A file that does not decode is skipped (and counted in ``seq``)."""

    closes_from_any_thread = True  # close() only sets the pacer's event, which wakes a paced read

    def __init__(self, paths: Sequence[Path], *, name: str, fps: Optional[float] = None,
                 max_pixels: Optional[int] = MAX_PIXELS_DEFAULT) -> None:
        super().__init__()
        self.paths = list(paths)
        self.fps = fps or DEFAULT_FPS
        self.max_pixels = max_pixels
        self.description = f"{name} ({len(self.paths)} images at {self.fps:g} fps)"
        self._pacer = Pacer(self.fps)
        self._pacer.close()  # closed until open()
        self._index = 0

    def open(self) -> None:
        self._index = 0
        self._pacer.restart()

    def read(self) -> Optional[Frame]:
        if self._pacer.closed:
            raise SourceError(f"{self.description}: read() before open(), or after close()")
        while self._index < len(self.paths):
            path = self.paths[self._index]
            self._index += 1
            try:
                data = path.read_bytes()
                image = decode_frame(data, self.max_pixels, name=str(path))
            except OSError as error:
                self._skip_bad(f"{path}: {error.strerror or error}")
                continue
            except ImageError as error:
                self._skip_bad(str(error))
                continue
            arrival = self._pacer.wait()
            if arrival is None:
                raise SourceError(f"{self.description}: closed")
            return self._deliver(image, arrival, data if is_jpeg(data) else None)
        return None

    def close(self) -> None:
        self._pacer.close()


class OpenCvSource(FrameSource):
    """A video file, a ``/dev/videoN`` device or an ``rtsp://`` stream through ``cv2.VideoCapture``; OpenCV's B, G, R
    frames are turned into RGB. ``size`` and ``fps`` are asked of a device; ``fps`` paces a file, and states the
    rate of a stream."""

    closes_from_any_thread = True  # close() during a read wakes its pacing and leaves the release to the reader

    def __init__(self, spec: str, *, fps: Optional[float] = None, size: Optional[tuple] = None) -> None:
        super().__init__()
        self._cv2 = optional_module("cv2", "OpenCV (cv2)", spec, "pip install opencv-python-headless")
        self.spec = spec
        self.is_device = spec.startswith("/dev/")
        self.is_file = not self.is_device and "://" not in spec
        if not self.is_device:
            refuse_size(size, spec)
        self._requested_fps, self._size = fps, size
        self.fps = fps
        kind = "video file" if self.is_file else "device" if self.is_device else "stream"
        self._kind = kind
        self.description = f"{spec} ({kind} through OpenCV)"
        self._capture = None
        self._pacer: Optional[Pacer] = None
        self._lock = threading.Lock()  # guards _capture, _reading and _closing between the reader and close()
        self._reading = self._closing = False

    def open(self) -> None:
        self.close()
        cv2 = self._cv2
        capture = cv2.VideoCapture(self.spec, cv2.CAP_V4L2) if self.is_device else cv2.VideoCapture(self.spec)
        if not capture.isOpened():
            capture.release()
            raise SourceError(f"{self.description}: OpenCV cannot open it")
        if self.is_device:
            if self._size is not None:
                capture.set(cv2.CAP_PROP_FRAME_WIDTH, self._size[0])
                capture.set(cv2.CAP_PROP_FRAME_HEIGHT, self._size[1])
            if self._requested_fps is not None:
                capture.set(cv2.CAP_PROP_FPS, self._requested_fps)
        stated = capture.get(cv2.CAP_PROP_FPS)
        stated = float(stated) if math.isfinite(stated) and 0 < stated <= 1000 else None
        # a device's rate is what its driver granted; a file's or a stream's, what fps says, else what it states
        self.fps = (stated or self._requested_fps) if self.is_device else (self._requested_fps or stated)
        if self.is_file:
            self.fps = self.fps or DEFAULT_FPS
            self._pacer = Pacer(self.fps)
        rate = "" if self.fps is None else f" at {self.fps:g} fps"
        self.description = f"{self.spec} ({self._kind} through OpenCV{rate})"
        with self._lock:
            self._capture, self._closing = capture, False

    def read(self) -> Optional[Frame]:
        with self._lock:
            capture = self._capture
            if capture is None or self._closing:
                raise SourceError(f"{self.description}: read() before open(), or after close()")
            self._reading = True
        try:
            ok, array = capture.read()
            if self._closing:
                raise SourceError(f"{self.description}: closed")
            if not ok or array is None:
                if self.is_file:
                    return None
                raise SourceError(f"{self.description}: no frame (the device is gone or the stream ended)")
            image = image_from_bgr(array)
            arrival = self._pacer.wait() if self._pacer is not None else time.monotonic()
            if arrival is None:
                raise SourceError(f"{self.description}: closed")
            return self._deliver(image, arrival)
        finally:
            with self._lock:
                self._reading = False
                capture = self._capture if self._closing else None
                if capture is not None:
                    self._capture = None
            if capture is not None:
                capture.release()  # close() came during this read: released here, in the reading thread

    def close(self) -> None:
        with self._lock:
            self._closing = True
            if self._pacer is not None:
                self._pacer.close()
            if self._reading:
                return  # the reading thread releases the capture when its read returns
            capture, self._capture = self._capture, None
        if capture is not None:
            capture.release()
