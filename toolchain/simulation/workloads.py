"""Workloads served in batches, for ``cbnet-tl simulate --workload``: when images arrive and by when each must be
answered.

- ``camera:FPS``: one image every 1/FPS seconds; the deadline is the period unless given.
- ``burst:K:MS``: K images arrive together and are due within MS milliseconds.
- ``arrivals:FILE``: a recorded file of arrival times in seconds, one per line (``#`` starts a comment), or
  a JSON list of numbers; times are taken relative to the first. It has no deadline of its own: it defaults to
  twice the slowest batch at the top frequency, and never less than two frequency switches (``workload_sim``).

(The board takes a workload's deadline and arrivals with ``runtime/classify.py workload_options``.)

A service takes images in batches of at most ``batch_size``: when the CPU is free it takes every image that
has arrived, up to the batch size. Which images go together is fixed once, by serving the workload at the
top frequency, so every policy (and the oracle) serves the same batches.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from cbnet_tl.runtime.errors import ConfigError, DataError

WORKLOAD_FORMS = "camera:FPS, burst:K:MS or arrivals:FILE"


@dataclass(frozen=True)
class Workload:
    kind: str
    arrivals_s: np.ndarray
    deadline_s: Optional[float]  # the workload's own (None: arrivals from a file, no deadline of its own)
    description: str


def _positive(text: str, what: str, spec: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise ConfigError(f"Expected {what} > 0 in --workload {spec!r} ({WORKLOAD_FORMS}). Received: {text!r}")
    return value


def parse_workload(spec: str, num_images: int) -> Workload:
    """``spec`` as above; ``num_images``: how many frames a camera workload runs (a burst says its own)."""
    kind, _, rest = spec.partition(":")
    if kind == "camera" and rest:
        fps = _positive(rest, "frames per second", spec)
        return Workload("camera", np.arange(num_images) / fps, 1.0 / fps,
                        f"camera at {fps:g} frames/s, {num_images} frames")
    if kind == "burst" and rest.count(":") == 1:
        count, ms = rest.split(":")
        if not count.isdigit() or int(count) < 1:
            raise ConfigError(f"Expected K >= 1 images in --workload burst:K:MS. Received: {count!r}")
        ms_value = _positive(ms, "MS milliseconds", spec)
        return Workload("burst", np.zeros(int(count)), ms_value / 1e3,
                        f"burst of {int(count)} images due within {ms_value:g} ms")
    if kind == "arrivals" and rest:
        arrivals = read_arrivals(Path(rest))
        return Workload("arrivals", arrivals, None, f"{len(arrivals)} arrivals from {rest}")
    raise ConfigError(f"Expected --workload as {WORKLOAD_FORMS}, e.g. camera:30 or burst:256:500. Received: {spec!r}")


def read_arrivals(path: Path) -> np.ndarray:
    try:
        text = path.read_text()
    except OSError as error:
        raise DataError(f"Cannot read the arrivals file {path}: {error.strerror}") from None
    try:
        values = json.loads(text) if text.lstrip().startswith("[") else [
            float(line.split("#")[0]) for line in text.splitlines() if line.split("#")[0].strip()]
        arrivals = np.asarray(values, dtype=np.float64)
    except (ValueError, TypeError):
        raise DataError(f"Arrivals file {path}: expected one time in seconds per line, or a JSON list of "
                        "numbers") from None
    if arrivals.ndim != 1 or not len(arrivals) or not np.all(np.isfinite(arrivals)):
        raise DataError(f"Arrivals file {path}: expected at least one finite time in seconds. "
                        f"Received: {values[:5] if isinstance(values, list) else values!r}")
    if np.any(np.diff(arrivals) < 0):
        first = int(np.argmax(np.diff(arrivals) < 0)) + 1
        raise DataError(f"Arrivals file {path}: expected times in order. Received {arrivals[first]} after "
                        f"{arrivals[first - 1]} (line {first + 1})")
    return arrivals - arrivals[0]


def form_batches(arrivals_s: np.ndarray, batch_size: int, seconds_at_top: Callable) -> list:
    """[(first, stop)] image ranges: each batch is every image arrived when the CPU (at the top frequency)
    is free, up to ``batch_size``. ``seconds_at_top(first, stop)``: how long that batch takes."""
    if batch_size < 1:
        raise ConfigError(f"Expected a batch size >= 1. Received: {batch_size}")
    batches, now, first = [], 0.0, 0
    while first < len(arrivals_s):
        now = max(now, float(arrivals_s[first]))
        arrived = int(np.searchsorted(arrivals_s, now, side="right"))
        stop = min(first + batch_size, max(arrived, first + 1))
        batches.append((first, stop))
        now += seconds_at_top(first, stop)
        first = stop
    return batches
