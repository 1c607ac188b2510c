"""Stage traces: the seconds each stage of each pipeline takes, per batch size, at each CPU frequency.

A board writes one (``run.py trace``, with the runtime's ``dvfs/trace_file.py``) and ``cbnet-tl simulate
--save-trace FILE`` the host-timed simulation's own; ``cbnet-tl simulate --trace FILE`` replays it. Reading one
checks it: one ``DataError`` line naming the first problem and where it is. The file is JSON::

    {
      "format": "cbnet-tl-stage-trace",
      "version": 1,
      "source": "run.py trace on raspberrypi (Raspberry Pi 4 Model B Rev 1.4)",   # who timed it, where
      "target": "rpi4",                    # the power table the board matches (optional)
      "speed_changed": true,               # did the CPU really run at each listed frequency?
      "ran_at_mhz": null,                  # speed_changed false: the one frequency every time was taken at
      "frequencies_mhz": [600, 1500],
      "recorded_at": "2026-12-01T00:00:00Z",   # optional
      "notes": ["..."],                        # optional
      "pipelines": {
        "branchynet": {"stages": {
          "host":         {"1": {"600": 0.00011, "1500": 0.000045}, "32": {"600": 0.0021, "1500": 0.00085}},
          "trunk_branch": {"1": {...}, "32": {...}},
          "main_tail":    {"1": {...}, "32": {...}}}}}
    }

Stages are listed in the order a batch runs them; ``host`` is the time outside the model calls (pre- and
post-processing, gates). A stage's entry maps a number of images (as a string) to the seconds at each
frequency in MHz (as a string). When ``speed_changed`` is false (cpufreq read-only, or a fake sysfs tree
in tests), every time was taken at ``ran_at_mhz`` whatever frequency is listed, and a replay scales it as
f_ran / f; null means the highest listed frequency.
"""

from __future__ import annotations

import math
from pathlib import Path

from cbnet_tl.runtime.dvfs.trace_file import TRACE_FORMAT, TRACE_VERSION, write_trace as _write
from cbnet_tl.runtime.errors import DataError
from cbnet_tl.runtime.files import read_json


def _mhz(text, where: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise DataError(f"{where}: expected a frequency in MHz > 0. Received: {text!r}")
    return value


def check_trace(trace, where: str = "trace") -> dict:
    """The trace, checked: one ``DataError`` line naming the first problem and where it is."""
    if not isinstance(trace, dict) or trace.get("format") != TRACE_FORMAT:
        raise DataError(f"{where}: expected a JSON object with \"format\": \"{TRACE_FORMAT}\". "
                        f"Received: {str(trace)[:80]!r}")
    if trace.get("version") != TRACE_VERSION:
        raise DataError(f"{where}: expected version {TRACE_VERSION}. Received: {trace.get('version')!r}")
    for key, kind in (("source", str), ("speed_changed", bool), ("pipelines", dict), ("frequencies_mhz", list)):
        if not isinstance(trace.get(key), kind):
            raise DataError(f"{where}: expected {key!r} as a {kind.__name__}. Received: {trace.get(key)!r}")
    listed = [_mhz(f, f"{where} frequencies_mhz") for f in trace["frequencies_mhz"]]
    if not listed:
        raise DataError(f"{where}: expected at least one frequency in frequencies_mhz. Received: []")
    if trace.get("ran_at_mhz") is not None:
        _mhz(trace["ran_at_mhz"], f"{where} ran_at_mhz")
    if not trace["pipelines"]:
        raise DataError(f"{where}: expected at least one pipeline in 'pipelines'. Received: {{}}")
    for name, entry in trace["pipelines"].items():
        stages = entry.get("stages") if isinstance(entry, dict) else None
        if not isinstance(stages, dict) or not stages:
            raise DataError(f"{where}: expected pipelines.{name}.stages as an object of stages. Received: {entry!r}")
        for stage, sizes in stages.items():
            here = f"{where} pipelines.{name}.stages.{stage}"
            if not isinstance(sizes, dict) or not sizes:
                raise DataError(f"{here}: expected an object of batch sizes. Received: {sizes!r}")
            for size, at in sizes.items():
                if not str(size).isdigit() or int(size) < 1:
                    raise DataError(f"{here}: expected batch sizes as whole numbers >= 1. Received: {size!r}")
                if not isinstance(at, dict) or not at:
                    raise DataError(f"{here}.{size}: expected an object of MHz -> seconds. Received: {at!r}")
                for mhz, seconds in at.items():
                    _mhz(mhz, f"{here}.{size}")
                    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds >= 0 \
                            or not math.isfinite(seconds):
                        raise DataError(f"{here}.{size}.{mhz}: expected seconds >= 0. Received: {seconds!r}")
    return trace


def read_trace(path: Path) -> dict:
    return check_trace(read_json(Path(path), f"expected a {TRACE_FORMAT} file (see `cbnet-tl simulate --help`)"),
                       str(path))


def write_trace(path: Path, trace: dict) -> None:
    """The trace, checked, written atomically."""
    _write(path, check_trace(trace))


def stage_seconds(trace: dict, pipeline: str) -> tuple:
    """(stages in order, {stage: {num_images: {kHz: seconds}}}, the kHz every time was taken at or None)."""
    entry = trace["pipelines"].get(pipeline)
    if entry is None:
        raise DataError(f"The trace has no pipeline {pipeline!r}. Expected one of {list(trace['pipelines'])}; "
                        "record it, or pass --pipeline with one of those")
    table = {stage: {int(n): {int(round(float(mhz) * 1000)): float(s) for mhz, s in at.items()}
                     for n, at in sizes.items()} for stage, sizes in entry["stages"].items()}
    ran_at = None
    if not trace["speed_changed"]:
        listed = trace.get("ran_at_mhz") or max(float(f) for f in trace["frequencies_mhz"])
        ran_at = int(round(float(listed) * 1000))
    return tuple(table), table, ran_at
