"""The frame loop of ``run.py serve``: a source's newest frame classified under the DVFS session, one record each.

    with dvfs_session("eenet", deadline_ms=1000 / 30, period_ms=1000 / 30) as session:
        loop = LiveLoop(pipeline, open_source("rpicam", fps=30), session, LiveConfig(log=Path("live.jsonl")))
        loop.run(stop)  # until ``stop`` is set, or a file or folder has played out

Latest frame wins: a reader thread reads the source into a one-slot mailbox; a frame replaced there before the model
took it is dropped (counted, not logged), so nothing queues up behind a slow model. The caller's thread takes the
newest frame through the bundle's input spec (``frame_input``) and classifies it as a batch of one
(``DvfsSession.classify_batch``, holding ``lock``); the session hears its wait since arrival, and the wait for a
frame as idle time. A source that fails (``SourceError``) is opened again after a backoff that doubles up to
``backoff_s[1]`` (and starts over once a frame comes); ``seq`` counts on. A source whose ``read`` returns None (a
file or folder played out; the live sources never do) ends the loop.

A record: ``seq``, ``arrival``, ``start`` (taken from the mailbox), ``end`` (answered; ``time.monotonic()``
seconds), ``label``, ``class_name``, ``confidence``, ``path``, ``khz`` (its last stage's frequency; None with DVFS
off) and ``energy_j`` (what the session's energy total, modelled or measured, grew by since the frame before). An
event: ``event`` ("opened", "lost", "reopened", "ended"), ``time``, ``source`` and, when lost, ``error``.
"""

from __future__ import annotations

import collections
import math
import sys
import threading
import time
from enum import Enum
from typing import Callable, Optional

from cbnet_tl.runtime.dvfs.session import LATE
from cbnet_tl.runtime.errors import ConfigError, DvfsError, ImageError
from cbnet_tl.runtime.frames import SourceError, frame_input
from cbnet_tl.runtime.frames.base import check_fps
from cbnet_tl.runtime.live_log import JsonLinesLog, LiveConfig, UncertainKeeper, WorkLock, frame_jpeg

__all__ = ["LiveConfig", "LiveLoop", "SourceState"]

POLL_S = 0.05  # how often the waiting classifier looks at the caller's ``stop``
NUM_EVENTS = 20  # source events kept for ``status()``
FPS_WINDOW_S = 5.0  # ``status()["fps"]``: classified frames per second over this window
JOIN_TIMEOUT_S = 10.0  # how long ``run`` waits for the reader thread to close the source


class SourceState(str, Enum):
    OPENING = "opening"
    OPEN = "open"
    LOST = "lost"
    REOPENING = "reopening"
    ENDED = "ended"
    STOPPED = "stopped"


class LiveLoop:
    """One source, one pipeline, one session; ``run`` once. ``status``, ``latest`` and the waits are safe to call
    from any thread; ``lock`` is held while the pipeline runs (take it to run the pipeline from another thread)."""

    def __init__(self, pipeline, source, session, config: LiveConfig = LiveConfig(), *,
                 fps: Optional[float] = None, clock: Callable[[], float] = time.monotonic):
        if config.deadline_s is not None and math.isfinite(session.deadline_s) \
                and not math.isclose(config.deadline_s, session.deadline_s, rel_tol=1e-9):
            raise ConfigError(f"Expected the loop's deadline and the DVFS session's to agree: the policy plans for "
                              f"the session's. Received: {config.deadline_s * 1e3:g} ms and "
                              f"{session.deadline_s * 1e3:g} ms")
        self.pipeline, self.source, self.session, self.config = pipeline, source, session, config
        self.fps, self._clock = check_fps(fps, "the frame loop"), clock
        self.lock = WorkLock(clock)  # others' work under it (posted images) is not idle time
        self._changed = threading.Condition()  # guards everything below; notified on each record, event and state
        self._slot = None  # the mailbox: the newest frame not yet taken
        self._state, self._events = SourceState.OPENING, collections.deque(maxlen=NUM_EVENTS)
        self._num_read = self._num_classified = self._num_dropped = self._num_failed = self._num_misses = 0
        self._paths: collections.Counter = collections.Counter()
        self._ends = collections.deque(maxlen=int(FPS_WINDOW_S * 1000))  # end times (a window of up to 1000 fps)
        self._latest = self._latest_frame = None
        self._totals = session.totals()
        self._started: Optional[float] = None
        self._reader_done = self._finished = False
        self._reader_error: Optional[BaseException] = None
        self._log = JsonLinesLog(config.log, config.log_max_bytes, config.log_keep) if config.log else None
        self._keeper = UncertainKeeper(config.keep_uncertain, config.keep_max_files, config.keep_max_bytes) \
            if config.keep_uncertain else None

    # the classifier (the caller's thread) -----------------------------------------------------------------
    def run(self, stop: threading.Event) -> dict:
        """Read and classify until ``stop`` is set or the source ends; then the source is closed (its process
        ended), the log closed, and ``status()`` returned. An unexpected error in the reader is raised here."""
        if self._started is not None:
            raise RuntimeError("LiveLoop.run() runs once: make a new LiveLoop")
        self._started = self._clock()
        halt = threading.Event()
        reader = threading.Thread(target=self._read_frames, args=(halt,), name="live-reader", daemon=True)
        reader.start()
        try:
            while (frame := self._take(stop)) is not None:
                try:
                    self._classify(frame)
                except DvfsError:
                    if stop.is_set():
                        break  # the CPU was given back (SIGTERM) in the middle of a frame: stopping, as asked
                    raise
        finally:
            halt.set()
            reader.join(POLL_S)
            if reader.is_alive() and self.source.closes_from_any_thread:
                self.source.close()  # wakes a read blocked on the camera process or the connection
            reader.join(JOIN_TIMEOUT_S)
            if reader.is_alive():
                print(f"warning: {self.source.description}: the reader did not end within {JOIN_TIMEOUT_S:g} s",
                      file=sys.stderr, flush=True)
            if self._log is not None:
                self._log.close()
            with self._changed:
                if self._state is not SourceState.ENDED:
                    self._state = SourceState.STOPPED
                self._finished = True
                self._changed.notify_all()
        if self._reader_error is not None:
            raise self._reader_error
        return self.status()

    def _take(self, stop: threading.Event):
        """The newest frame, waiting for one (idle time for the session); None once stopped or played out."""
        began, others_before = self._clock(), self.lock.held_seconds
        with self._changed:
            while self._slot is None and not (stop.is_set() or self._reader_done):
                self._changed.wait(POLL_S)
            if self._slot is None or stop.is_set():
                return None
            frame, self._slot = self._slot, None
        # the wait less what other threads ran under the lock meanwhile: that was busy (the session books it so)
        self.session.idle(self._clock() - began - (self.lock.held_seconds - others_before))
        return frame

    def _classify(self, frame) -> None:
        start = self._clock()
        try:
            pixels = frame_input(frame, self.pipeline.input_spec)
        except (ImageError, ConfigError) as error:
            with self._changed:
                self._num_failed += 1
                self._changed.notify_all()
            if self._num_failed == 1:
                print(f"warning: {error}; such frames are counted in the status and skipped", file=sys.stderr,
                      flush=True)
            return
        with self.lock:
            result = self.session.classify_batch(self.pipeline, pixels[None],
                                                 [max(0.0, self._clock() - frame.arrival)], answered_later=True)
            khz = self.session.current_khz  # what the last stage ran at (the policy may switch as the frame ends)
            self.session.answered()
        end, totals = self._clock(), self.session.totals()
        label, confidence = int(result.labels[0]), float(result.confidences[0])
        record = {"seq": frame.seq, "arrival": round(frame.arrival, 6), "start": round(start, 6),
                  "end": round(end, 6), "label": label, "class_name": self.pipeline.bundle.class_names[label],
                  "confidence": round(confidence, 6), "path": result.paths[0], "khz": khz,
                  "energy_j": totals["energy_j_total"] - self._totals["energy_j_total"]}
        deadline = self.deadline_s
        with self._changed:
            self._num_classified += 1
            self._num_misses += deadline is not None and end - frame.arrival > deadline * LATE
            self._paths[record["path"]] += 1
            self._ends.append(end)
            self._latest, self._latest_frame, self._totals = record, frame, totals
            self._changed.notify_all()
        if self._log is not None:
            self._log.write(record)
        if self._keeper is not None and confidence < self.config.below:
            self._keeper.keep(record, frame)

    # the reader thread --------------------------------------------------------------------------------------
    def _read_frames(self, halt: threading.Event) -> None:
        """Open, read into the mailbox, reopen after a loss with backoff; close the source at the end (from this
        thread: OpenCV and picamera2 want it so)."""
        first, longest = self.config.backoff_s
        delay, opened = first, False
        try:
            while not halt.is_set():
                self._event(SourceState.REOPENING if self._events else SourceState.OPENING)
                try:
                    self.source.open()
                    if halt.is_set():
                        break
                    self._event(SourceState.OPEN, "reopened" if opened else "opened")
                    opened = True
                    while not halt.is_set():
                        frame = self.source.read()
                        if frame is None:
                            self._event(SourceState.ENDED, "ended")
                            return
                        self._post(frame)
                        delay = first
                except SourceError as error:
                    if halt.is_set():
                        break  # closed from run(): a lost source is what that looks like
                    self.source.close()
                    self._event(SourceState.LOST, "lost", error)
                    print(f"warning: source lost: {error}; reopening in {delay:g} s",  # the error names the source
                          file=sys.stderr, flush=True)
                    if halt.wait(delay):
                        break
                    delay = min(2 * delay, longest)
        except BaseException as error:  # a bug: run() raises it
            self._reader_error = error
        finally:
            try:
                self.source.close()
            finally:
                with self._changed:
                    self._reader_done = True
                    self._changed.notify_all()

    def _post(self, frame) -> None:
        with self._changed:
            self._num_dropped += self._slot is not None
            self._slot, self._num_read = frame, frame.seq + 1
            self._changed.notify_all()

    def _event(self, state: SourceState, name: Optional[str] = None, error: Optional[Exception] = None) -> None:
        """A new state, and the event that brought it (logged), if any."""
        event = {"event": name, "time": round(self._clock(), 6), "source": self.source.description}
        if error is not None:
            event["error"] = str(error)
        with self._changed:
            self._state = state
            if name is not None:
                self._events.append(event)
            self._changed.notify_all()
        if name is not None and self._log is not None:
            self._log.write(event)

    # what other threads read ----------------------------------------------------------------------------------
    @property
    def deadline_s(self) -> Optional[float]:
        """A frame's deadline: ``LiveConfig.deadline_s``, else the session's, else the frame period (None: no frame
        rate is known yet)."""
        if self.config.deadline_s is not None:
            return self.config.deadline_s
        if math.isfinite(self.session.deadline_s):
            return self.session.deadline_s
        fps = self.source.fps or self.fps
        return 1.0 / fps if fps else None

    def status(self) -> dict:
        """A snapshot, strict JSON."""
        now, deadline = self._clock(), self.deadline_s
        with self._changed:
            while self._ends and self._ends[0] < now - FPS_WINDOW_S:
                self._ends.popleft()
            window = FPS_WINDOW_S if self._started is None else min(FPS_WINDOW_S, now - self._started)
            totals, classified = self._totals, self._num_classified
            return {
                "source": self.source.description, "source_state": self._state.value,
                "events": [dict(event) for event in self._events],
                "frames_read": self._num_read, "frames_classified": classified, "frames_dropped": self._num_dropped,
                "frames_failed": self._num_failed,
                "deadline_ms": None if deadline is None else deadline * 1e3, "deadline_misses": self._num_misses,
                "fps": round(len(self._ends) / window, 3) if window > 0 else 0.0,
                "source_fps": self.source.fps or self.fps,
                "dvfs": totals["dvfs"], "khz": None if self._latest is None else self._latest["khz"],
                "energy_j_per_frame": totals["energy_j"], "energy_j_total": totals["energy_j_total"],
                "energy_source": totals["energy_source"],
                "path_shares": {path: round(count / classified, 6) for path, count in sorted(self._paths.items())},
                "latest": None if self._latest is None else dict(self._latest),
                "started": self._started, "uptime_s": 0.0 if self._started is None else round(now - self._started, 3),
                "log_errors": 0 if self._log is None else self._log.num_errors,
                "keep_errors": 0 if self._keeper is None else self._keeper.num_errors,
            }

    def latest(self) -> tuple:
        """(the latest record, that frame as JPEG bytes: the source's own, else encoded now), or (None, None)."""
        with self._changed:
            record, frame = self._latest, self._latest_frame
        return (None, None) if record is None else (dict(record), frame_jpeg(frame))

    def wait_for_record(self, after_seq: int, timeout: float) -> Optional[dict]:
        """The latest record once one with ``seq`` > ``after_seq`` is decided; else None (see ``wait_until``)."""
        status = self.wait_until(lambda s: s["latest"] is not None and s["latest"]["seq"] > after_seq, timeout)
        return None if status is None else status["latest"]

    def wait_until(self, predicate: Callable[[dict], bool], timeout: float) -> Optional[dict]:
        """The first ``status()`` for which ``predicate`` holds, looked at after each record, event and change of
        state; None after ``timeout`` seconds, or when the loop has finished and it does not hold."""
        until = time.monotonic() + timeout
        with self._changed:
            while True:
                status = self.status()
                if predicate(status):
                    return status
                remaining = until - time.monotonic()
                if self._finished or remaining <= 0:
                    return None
                self._changed.wait(remaining)
