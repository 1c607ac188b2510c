"""The Raspberry Pi's CSI camera: through ``rpicam-vid`` (``libcamera-vid`` where only that exists, as on bullseye)
writing MJPEG to its stdout, or through picamera2 (imported only when chosen).

``rpicam-vid`` runs in a session of its own, so a Ctrl-C at the terminal reaches only us and ``close()`` stops it
(SIGTERM, then SIGKILL after ``STOP_TIMEOUT_S``) and reaps it. Its stderr is drained by a thread into the last
``STDERR_LINES`` lines, which name the cause when it dies.
"""

from __future__ import annotations

import collections
import functools
import os
import select
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Optional

from cbnet_tl.runtime.errors import ConfigError
from cbnet_tl.runtime.frames.base import (DEFAULT_FPS, DEFAULT_CAMERA_SIZE, DEFAULT_TIMEOUT_S, Frame,
                                          FrameSource, EncodedFrameSource, SourceError, image_from_bgr,
                                          optional_module)
from cbnet_tl.runtime.frames.jpeg import ByteStream

RPICAM_PROGRAMS = ("rpicam-vid", "libcamera-vid")
STOP_TIMEOUT_S = 3.0
STDERR_LINES = 20
PICAMERA2_FORMAT = "RGB888"  # picamera2's manual: "RGB888 - 24 bits per pixel, ordered [B, G, R]"


def find_rpicam() -> str:
    for name in RPICAM_PROGRAMS:
        found = shutil.which(name)
        if found:
            return found
    raise ConfigError("rpicam-vid (or libcamera-vid) not found on PATH: sudo apt install rpicam-apps")


class RpicamSource(EncodedFrameSource):
    """``rpicam``: ``rpicam-vid -t 0 -n --codec mjpeg -o -`` with the size and frame rate, split into JPEG frames."""

    def __init__(self, *, fps: Optional[float] = None, size: Optional[tuple] = None,
                 timeout: float = DEFAULT_TIMEOUT_S) -> None:
        super().__init__()
        self.program = find_rpicam()
        self.width, self.height = size or DEFAULT_CAMERA_SIZE
        self.fps = fps or DEFAULT_FPS
        self.timeout = timeout
        self.description = f"{Path(self.program).name} {self.width}x{self.height} at {self.fps:g} fps"
        self._process: Optional[subprocess.Popen] = None
        self._stream: Optional[ByteStream] = None
        self._stderr_tail: collections.deque = collections.deque(maxlen=STDERR_LINES)
        self._drain: Optional[threading.Thread] = None

    def command(self) -> list:
        return [self.program, "-t", "0", "-n", "--codec", "mjpeg", "-o", "-", "--width", str(self.width),
                "--height", str(self.height), "--framerate", f"{self.fps:g}"]

    @property
    def pid(self) -> Optional[int]:
        """The running camera process's id, None when closed."""
        return None if self._process is None else self._process.pid

    def open(self) -> None:
        self.close()
        self._stderr_tail.clear()
        try:
            process = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, start_new_session=True)
        except OSError as error:
            raise SourceError(f"{self.description}: cannot start {self.program} ({error})") from None
        self._process = process
        self._drain = threading.Thread(target=self._keep_stderr, args=(process.stderr,), daemon=True,
                                       name="rpicam-stderr")
        self._drain.start()
        self._stream = ByteStream(functools.partial(self._read_stdout, process))

    def _keep_stderr(self, pipe) -> None:
        for line in iter(functools.partial(pipe.readline, 4096), b""):
            text = line.decode("utf-8", "replace").strip()
            if text:
                self._stderr_tail.append(text)

    def _read_stdout(self, process: subprocess.Popen, num_bytes: int) -> bytes:
        """Up to ``num_bytes`` of the process's stdout (b"" at its end), read past Python's buffer; TimeoutError
        when it writes nothing for ``timeout`` seconds."""
        descriptor = process.stdout.fileno()
        ready, _, _ = select.select([descriptor], [], [], self.timeout)
        if not ready:
            raise TimeoutError
        return os.read(descriptor, num_bytes)

    def _next_encoded(self) -> bytes:
        process, stream = self._process, self._stream
        if process is None or stream is None:
            raise SourceError(f"{self.description}: read() before open(), or after close()")
        try:
            return stream.next_jpeg()
        except TimeoutError:
            raise SourceError(f"{self.description}: no frame for {self.timeout:g} s{self._tail()}") from None
        except (EOFError, ValueError, OSError):  # its end of output, or the pipe closed by close() in another thread
            pass
        try:
            status = process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise SourceError(f"{self.description}: the camera process closed its output{self._tail()}") from None
        if self._drain is not None:
            self._drain.join(timeout=STOP_TIMEOUT_S)
        raise SourceError(f"{self.description}: {Path(self.program).name} exited with status {status}{self._tail()}")

    def _tail(self) -> str:
        lines = list(self._stderr_tail)[-3:]
        return "; its last words: " + " | ".join(lines) if lines else ""

    def close(self) -> None:
        process, drain = self._process, self._drain
        self._process, self._drain, self._stream = None, None, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if drain is not None:
            drain.join(timeout=STOP_TIMEOUT_S)
        process.stdout.close()
        process.stderr.close()


class Picamera2Source(FrameSource):
    """``picamera2``: frames captured as ``RGB888`` (B, G, R in memory) and turned into RGB."""

    def __init__(self, *, fps: Optional[float] = None, size: Optional[tuple] = None) -> None:
        super().__init__()
        self._module = optional_module("picamera2", "picamera2", "the picamera2 source",
                                       "sudo apt install python3-picamera2, in a venv made with "
                                       "--system-site-packages")
        self.width, self.height = size or DEFAULT_CAMERA_SIZE
        self.fps = fps or DEFAULT_FPS
        self.description = f"picamera2 {self.width}x{self.height} at {self.fps:g} fps"
        self._camera = None

    def open(self) -> None:
        self.close()
        camera = None
        try:  # picamera2 and libcamera raise what they like (RuntimeError, IndexError for no camera, OSError)
            camera = self._module.Picamera2()
            config = camera.create_video_configuration(
                main={"size": (self.width, self.height), "format": PICAMERA2_FORMAT},
                controls={"FrameRate": self.fps})
            camera.configure(config)
            camera.start()
        except Exception as error:
            if camera is not None:
                camera.close()
            raise SourceError(f"{self.description}: cannot start the camera ({type(error).__name__}: {error})") \
                from None
        self._camera = camera

    def read(self) -> Optional[Frame]:
        if self._camera is None:
            raise SourceError(f"{self.description}: read() before open(), or after close()")
        try:
            array = self._camera.capture_array("main")
        except Exception as error:
            raise SourceError(f"{self.description}: capture failed ({type(error).__name__}: {error})") from None
        arrival = time.monotonic()
        if getattr(array, "ndim", 0) != 3 or array.shape[2] not in (3, 4):
            raise SourceError(f"{self.description}: expected {PICAMERA2_FORMAT} pixels (height, width, 3). "
                              f"Received an array of shape {getattr(array, 'shape', None)}")
        return self._deliver(image_from_bgr(array[:self.height, :self.width]), arrival)

    def close(self) -> None:
        camera, self._camera = self._camera, None
        if camera is not None:
            try:
                camera.stop()
            finally:
                camera.close()
