"""The inbox contract of ``run.py watch``: only complete files are read, no input is ever lost.

    python3 run.py watch --inbox /opt/cbnet-tl/inbox --outbox /opt/cbnet-tl/outbox

- Names starting with ``.`` or ending in ``.part``/``.tmp`` are ignored. Any other entry is taken once
  its inode, size and mtime have held still for ``settle_seconds`` (a writer still copying moves them;
  ``settle.py`` decides, and says when each entry arrived).
- Each input gets one result, ``outbox/<full file name>.json`` (``a.png`` -> ``a.png.json``), written
  atomically (temporary name, fsync, rename). A name already used by an earlier input gets
  ``<name>.2.json``, ``<name>.3.json``, … so no result is ever replaced.
- Then the input moves, keeping its name, to ``done/`` (or is deleted with ``delete_processed``); a failed
  input moves to ``failed/`` and is never deleted. A failure of one input affects that input only.
- Order: result first, then the move. A result records the input's identity (inode, size, mtime) and the
  place the input goes to, so after a SIGKILL an input still in the inbox whose result exists is only
  moved, never classified twice: every input ends with exactly one result and in exactly one place.
- Under a ``DvfsSession`` each batch is one DVFS batch: an input arrived when it settled (its last change, so
  the settle interval counts against the deadline; see ``settle.py``) and is answered when its result is in the
  outbox; the batch's deadline counts from its oldest input, the ready inputs behind it are its queue, and
  polling sleep is idle time. The state file then carries the session's totals (energy, misses, time per
  frequency) for ``run.py status``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from cbnet_tl.runtime.errors import CbnetError, ConfigError
from cbnet_tl.runtime.files import write_json_atomic
from cbnet_tl.runtime.images import MAX_PIXELS_DEFAULT, load_image
from cbnet_tl.runtime.settle import Settler

STATE_FILE_NAME = "watch-state.json"


@dataclass(frozen=True)
class InboxConfig:
    """Where inputs come from and go to. ``done``, ``failed`` and ``state_dir`` default to folders beside
    the inbox (``done/``, ``failed/``, ``state/``)."""

    inbox: Path
    outbox: Path
    done: Optional[Path] = None
    failed: Optional[Path] = None
    state_dir: Optional[Path] = None
    delete_processed: bool = False
    poll_seconds: float = 0.2
    settle_seconds: float = 1.0
    batch_size: int = 32
    max_pixels: int = MAX_PIXELS_DEFAULT
    extra: dict = field(default_factory=dict)  # recorded in the state file (e.g. the DVFS policy)

    def __post_init__(self):
        for name in ("poll_seconds", "settle_seconds"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"Expected {name} > 0. Received: {getattr(self, name)}")
        for name in ("batch_size", "max_pixels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"Expected {name} >= 1. Received: {getattr(self, name)}")
        beside = Path(self.inbox).parent
        for name, default in (("done", "done"), ("failed", "failed"), ("state_dir", "state")):
            object.__setattr__(self, name, Path(getattr(self, name) or beside / default))
        object.__setattr__(self, "inbox", Path(self.inbox))
        object.__setattr__(self, "outbox", Path(self.outbox))
        folders = [self.inbox, self.outbox, self.failed] + ([] if self.delete_processed else [self.done])
        if len({p.resolve() for p in folders}) != len(folders):
            raise ConfigError(f"Expected distinct inbox, outbox, done and failed folders. Received: {folders}")

    @property
    def state_file(self) -> Path:
        return self.state_dir / STATE_FILE_NAME


class Inbox:
    """Processes ready inputs in batches and keeps the state file; ``session``: a ``DvfsSession`` (or None)."""

    def __init__(self, pipeline, config: InboxConfig, session=None, clock: Callable[[], float] = time.monotonic):
        self.pipeline, self.config, self.session, self._clock = pipeline, config, session, clock
        self.num_handled = 0  # inputs finished (result written, input moved) by this object, counted one by one
        for folder in (config.inbox, config.outbox, config.failed, config.state_dir) + \
                (() if config.delete_processed else (config.done,)):
            folder.mkdir(parents=True, exist_ok=True)
        for leftover in config.outbox.glob(".*.tmp"):  # half-written results of a killed run
            leftover.unlink(missing_ok=True)
        previous = read_state(config.state_file)
        self.state = {"pid": os.getpid(), "started_at": time.time(), "processed": previous.get("processed", 0),
                      "failed": previous.get("failed", 0), "last_error": previous.get("last_error"),
                      **config.extra}
        self.save_state()

    def save_state(self) -> None:
        self.state["updated_at"] = time.time()
        if self.session is not None:
            self.state["session"] = self.session.totals()
        write_json_atomic(self.config.state_file, self.state, durable=True)

    def watch(self, *, max_images: Optional[int] = None, drain: bool = False,
              sleep: Callable[[float], None] = time.sleep) -> int:
        """Classify inputs as they settle in the inbox, batch by batch; stop after ``max_images`` (None: never), or
        with ``drain`` once the inbox holds no input, settled or not. The session, if any, is told of each batch
        and of the polling sleep (idle). Returns ``num_handled``, which also counts an interrupted watch's inputs."""
        config, settler = self.config, Settler(self.config.settle_seconds)
        while max_images is None or self.num_handled < max_images:
            ready = settler.scan(config.inbox)
            if max_images is not None:
                ready = ready[: max_images - self.num_handled]
            if not ready:
                if drain and not settler.num_seen:
                    break
                began = time.monotonic()
                sleep(config.poll_seconds)
                if self.session is not None:
                    self.session.idle(time.monotonic() - began)
                continue
            for start in range(0, len(ready), config.batch_size):
                stop = start + config.batch_size
                self.process(ready[start:stop], ready[stop:])
        return self.num_handled

    def process(self, batch: list, behind: list = ()) -> int:
        """Classify one batch of ``Entry``s; write every result, then move every input. ``behind``: the settled
        entries waiting after this batch (the DVFS queue)."""
        records, images, loaded, settled = [], [], [], []
        for name, identity, kind, settled_at in batch:
            result_path, existing = self._result_for(name, identity)
            if existing is not None:  # a killed run wrote the result but did not move the input
                records.append((name, result_path, existing, False))
                continue
            record = {"file": name, "input": {"name": name, "id": list(identity)}}
            try:
                images.append(self._load(name, kind))
                loaded.append(record)
                settled.append(settled_at)
            except CbnetError as error:
                record.update(status="failed", error=str(error))
            records.append((name, result_path, record, True))
        if images:
            result = self._classify(np.stack(images), settled, behind)
            for record, prediction in zip(loaded, result.predictions(self.pipeline.bundle.class_names)):
                record.update(status="done", label=prediction.label, class_name=prediction.class_name,
                              confidence=round(prediction.confidence, 6), path=prediction.path,
                              ms=round(prediction.seconds * 1e3, 4), device=self.pipeline.device)
        for name, result_path, record, fresh in records:
            if fresh:
                record["moved_to"] = self._destination(name, record)
                record["at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")
                write_json_atomic(result_path, record, durable=True)
        _fsync_dir(self.config.outbox)
        if images and self.session is not None:
            self.session.answered()  # the batch's latency: until its results are in the outbox
        for name, _, record, fresh in records:
            self._finish(name, record)
            self.num_handled += 1  # at once: a SIGTERM in this loop still finds every input it has counted
            if fresh:
                self.state["processed" if record["status"] == "done" else "failed"] += 1
                if record["status"] != "done":
                    self.state["last_error"] = {"file": name, "error": record["error"], "at": record["at"]}
        for folder in (self.config.inbox, self.config.done, self.config.failed):
            _fsync_dir(folder)
        self.save_state()
        return len(records)

    def _classify(self, images: np.ndarray, settled: list, behind: list):
        if self.session is None:
            return self.pipeline.classify(images)
        now, size = self._clock(), self.config.batch_size
        queue = [(len(later), now - min(e.settled_at for e in later))
                 for later in (behind[i : i + size] for i in range(0, len(behind), size))]
        return self.session.classify_batch(self.pipeline, images, [now - t for t in settled], queue,
                                           answered_later=True)

    def _load(self, name: str, kind: str) -> np.ndarray:
        path = self.config.inbox / name
        if kind == "directory":
            raise CbnetError(f"{name}: is a directory, expected an image file")
        if kind != "file":
            raise CbnetError(f"{name}: is a {kind}, expected a regular image file")
        try:
            return load_image(path, self.pipeline.input_spec, max_pixels=self.config.max_pixels)
        except CbnetError as error:
            if not os.path.lexists(path):
                raise CbnetError(f"{name}: vanished between listing and reading") from None
            raise CbnetError(str(error).replace(str(path), name, 1)) from None

    def _result_for(self, name: str, identity: tuple) -> tuple:
        """(result path, the existing result when this very input already has one)."""
        number = 1
        while True:
            path = self.config.outbox / (f"{name}.json" if number == 1 else f"{name}.{number}.json")
            try:
                existing = json.loads(path.read_text())
            except FileNotFoundError:
                return path, None
            except (OSError, ValueError):
                existing = {}
            if isinstance(existing, dict) and existing.get("input", {}).get("id") == list(identity):
                return path, existing
            number += 1

    def _destination(self, name: str, record: dict) -> Optional[str]:
        if record["status"] == "done" and self.config.delete_processed:
            return None
        if not os.path.lexists(self.config.inbox / name):
            return None  # vanished: nothing to move
        folder = self.config.done if record["status"] == "done" else self.config.failed
        stem, suffix = os.path.splitext(name)
        candidate, number = folder / name, 1
        while os.path.lexists(candidate):  # an earlier input of the same name is there: keep both
            number += 1
            candidate = folder / f"{stem}~{number}{suffix}"
        return str(candidate)

    def _finish(self, name: str, record: dict) -> None:
        source = self.config.inbox / name
        if not os.path.lexists(source):
            return
        target = record.get("moved_to")
        if target is None:  # deleted by this run's options, or a run with other options wrote the result
            target = self._destination(name, record)
        if target is not None:
            _move(source, Path(target))
        else:
            source.unlink()


def _move(source: Path, destination: Path) -> None:
    try:
        os.rename(source, destination)
    except OSError as error:
        if error.errno != errno.EXDEV:
            raise
        staging = destination.with_name(f".{destination.name}.tmp")  # other filesystem: copy, then rename
        if source.is_dir() and not source.is_symlink():
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(source, staging, symlinks=True)
            os.rename(staging, destination)
            shutil.rmtree(source)
        else:
            shutil.copy2(source, staging, follow_symlinks=False)
            os.rename(staging, destination)
            source.unlink()


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def watch_inbox(pipeline, config: InboxConfig, *, session=None, max_images: Optional[int] = None,
                drain: bool = False, sleep: Callable[[float], None] = time.sleep) -> int:
    """``Inbox(pipeline, config, session).watch(...)``: the number of inputs handled."""
    return Inbox(pipeline, config, session=session).watch(max_images=max_images, drain=drain, sleep=sleep)


def read_state(state_file: Path) -> dict:
    try:
        state = json.loads(Path(state_file).read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}
