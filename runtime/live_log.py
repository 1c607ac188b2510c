"""The frame loop's options (``LiveConfig``; the loop is ``live.py``), the pipeline's lock (``WorkLock``), and what
it writes: the JSON-lines log of its records and events (``--log FILE``), rotated by size, and the frames it was least
sure of (``--keep-uncertain DIR --below C``), for relabelling.

Neither stops the loop: the first write error of each is said once on stderr, and every one is counted
(``num_errors``); the next write tries again.

The log: one JSON object a line, each line written whole with one ``write``; before a line would take the file past
``max_bytes``, ``log`` becomes ``log.1``, ``log.1`` becomes ``log.2`` and so on, and ``log.<keep>`` goes.

The kept frames: ``<UTC time>-<seq>.jpg`` (the source's own JPEG bytes when it sent JPEG, else the frame encoded)
and beside it ``<same>.json``, the frame's record, each written atomically (``files.write_bytes_atomic``: no half
file is ever visible); the JPEG first, so a sidecar always has its frame. Room is made before each write, oldest
first, so the folder never holds more than ``max_files`` frames or ``max_bytes`` bytes, counting the frames of
earlier runs found there.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import io
import json
import math
import os
import re
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from PIL import Image

from cbnet_tl.runtime.errors import ConfigError
from cbnet_tl.runtime.files import write_bytes_atomic

JPEG_QUALITY = 95  # a frame that arrived as pixels (a PNG file, OpenCV, picamera2) is kept and shown as this JPEG


@dataclass(frozen=True)
class LiveConfig:
    """The frame loop's options, checked on construction (``ConfigError``)."""

    deadline_s: Optional[float] = None  # None: the session's deadline, else the frame period
    log: Optional[Path] = None  # JSON-lines log of records and events
    log_max_bytes: int = 10 * 2**20  # rotate: log -> log.1 -> ... -> log.<log_keep>
    log_keep: int = 3
    keep_uncertain: Optional[Path] = None  # keep frames whose confidence is below ``below`` here
    below: float = 0.5
    keep_max_files: int = 1000  # the oldest kept frames go first
    keep_max_bytes: int = 100 * 2**20
    backoff_s: tuple = (0.5, 30.0)  # reopen a failed source after 0.5 s, doubling up to 30 s

    def __post_init__(self):
        if self.deadline_s is not None and not 0 < self.deadline_s < math.inf:
            raise ConfigError(f"Expected a deadline > 0 s and finite. Received: {self.deadline_s}")
        for name, least in (("log_max_bytes", 1), ("log_keep", 0), ("keep_max_files", 1), ("keep_max_bytes", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ConfigError(f"Expected {name} a whole number >= {least}. Received: {value!r}")
        if not 0.0 <= self.below <= 1.0:
            raise ConfigError(f"Expected --below a confidence between 0 and 1. Received: {self.below}")
        backoff = tuple(self.backoff_s)
        if len(backoff) != 2 or not 0 < backoff[0] <= backoff[1] < math.inf:
            raise ConfigError(f"Expected backoff_s (first, longest) with 0 < first <= longest, in seconds. "
                              f"Received: {self.backoff_s!r}")


def frame_jpeg(frame) -> bytes:
    """The frame as JPEG: the bytes its source sent when they are JPEG, else its image encoded."""
    if frame.jpeg is not None:
        return frame.jpeg
    image = frame.image if frame.image.mode in ("L", "RGB") else frame.image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def json_line(record: dict) -> bytes:
    return (json.dumps(record, allow_nan=False, separators=(",", ":")) + "\n").encode()


class _Complaint:
    """Counts write errors; says the first on stderr."""

    def __init__(self, what: str) -> None:
        self.what, self.num_errors = what, 0

    def __call__(self, error: Exception) -> None:
        self.num_errors += 1
        if self.num_errors == 1:
            strerror, filename = getattr(error, "strerror", None), getattr(error, "filename", None)
            reason = f"{strerror}: {filename}" if strerror and filename else str(error)
            print(f"warning: cannot write {self.what} ({reason}); the frame loop goes on without it, and further "
                  "errors are counted in its status, not said", file=sys.stderr, flush=True)


class JsonLinesLog:
    """Appends JSON lines to ``path``, rotating it by size; safe to call from several threads."""

    def __init__(self, path: Path, max_bytes: int, keep: int) -> None:
        self.path, self.max_bytes, self.keep = Path(path), max_bytes, keep
        self._file, self._size = None, 0
        self._lock = threading.Lock()
        self._complain = _Complaint(f"the log {self.path}")

    @property
    def num_errors(self) -> int:
        return self._complain.num_errors

    def write(self, record: dict) -> None:
        line = json_line(record)
        with self._lock:
            try:
                if self._file is None:
                    self._open()
                if self._size and self._size + len(line) > self.max_bytes:
                    self._rotate()
                self._file.write(line)  # unbuffered: the whole line, now
                self._size += len(line)
            except OSError as error:
                self._close()
                self._complain(error)

    def close(self) -> None:
        with self._lock:
            self._close()

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "ab", buffering=0)
        self._size = os.fstat(self._file.fileno()).st_size

    def _close(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            with contextlib.suppress(OSError):
                file.close()

    def _rotate(self) -> None:
        self._close()
        numbered = [self.path.with_name(f"{self.path.name}.{k}") for k in range(1, self.keep + 1)]
        for older, newer in reversed(list(zip(numbered[1:], numbered))):
            if newer.exists():
                os.replace(newer, older)
        with contextlib.suppress(FileNotFoundError):  # removed by hand meanwhile: nothing to move
            if numbered:
                os.replace(self.path, numbered[0])
            else:
                os.unlink(self.path)
        self._open()


_KEPT = re.compile(r"\d{8}T\d{6}\.\d{3}Z-\d{9}\.(?:jpg|json)")  # the names ``UncertainKeeper.keep`` gives
_KEPT_TEMPORARY = re.compile(r"\.\d{8}T\d{6}\.\d{3}Z-\d{9}\.(?:jpg|json)\..*\.tmp")  # write_bytes_atomic's


class UncertainKeeper:
    """Keeps frames with their records in ``directory``, at most ``max_files`` frames and ``max_bytes`` bytes."""

    def __init__(self, directory: Path, max_files: int, max_bytes: int) -> None:
        self.directory, self.max_files, self.max_bytes = Path(directory), max_files, max_bytes
        self._kept: Optional[collections.deque] = None  # (stem, bytes) of each kept frame, oldest first
        self._bytes = 0
        self._complain = _Complaint(f"uncertain frames to {self.directory}")

    @property
    def num_errors(self) -> int:
        return self._complain.num_errors

    def keep(self, record: dict, frame) -> None:
        """Keep the frame (as ``frame_jpeg``) and its record, making room first; a frame larger than the whole
        budget is not kept."""
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S.%f")[:-3]
        stem = f"{stamp}Z-{record['seq']:09d}"
        sidecar = (json.dumps({**record, "jpeg": f"{stem}.jpg"}, allow_nan=False, indent=1) + "\n").encode()
        try:
            jpeg = frame_jpeg(frame)
            size = len(jpeg) + len(sidecar)
            if size > self.max_bytes:
                return
            if self._kept is None:
                self._scan()
            while self._kept and (len(self._kept) >= self.max_files or self._bytes + size > self.max_bytes):
                self._forget(*self._kept.popleft())
            write_bytes_atomic(self.directory / f"{stem}.jpg", jpeg)
            write_bytes_atomic(self.directory / f"{stem}.json", sidecar)
            self._kept.append((stem, size))
            self._bytes += size
        except (OSError, ValueError) as error:  # ValueError: Pillow cannot encode the frame
            self._complain(error)

    def _scan(self) -> None:
        """What earlier runs kept here (oldest first, by name), and no temporary file a crash left. Only names the
        keeper gives are counted or removed: whatever else is in the folder is the user's."""
        self.directory.mkdir(parents=True, exist_ok=True)
        sizes: dict = {}
        for entry in os.scandir(self.directory):
            name = entry.name
            if _KEPT_TEMPORARY.fullmatch(name):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
            elif _KEPT.fullmatch(name) and entry.is_file(follow_symlinks=False):
                stem = name.rsplit(".", 1)[0]
                sizes[stem] = sizes.get(stem, 0) + entry.stat(follow_symlinks=False).st_size
        self._kept = collections.deque(sorted(sizes.items()))
        self._bytes = sum(sizes.values())

    def _forget(self, stem: str, size: int) -> None:
        for suffix in (".json", ".jpg"):  # the sidecar first: a sidecar always has its frame
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.directory / f"{stem}{suffix}")
        self._bytes -= size


class WorkLock:
    """A lock that adds up how long it was held (``held_seconds``): the pipeline's, which the frame loop and the
    server's posted images share (TFLite interpreters are not thread-safe)."""

    def __init__(self, clock=time.monotonic) -> None:
        self._lock, self._clock, self._since, self.held_seconds = threading.Lock(), clock, 0.0, 0.0

    def __enter__(self) -> "WorkLock":
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        taken = self._lock.acquire(blocking, timeout)
        if taken:
            self._since = self._clock()
        return taken

    def release(self) -> None:
        self.held_seconds += self._clock() - self._since
        self._lock.release()

    def locked(self) -> bool:
        return self._lock.locked()
