"""Stage traces: the seconds each stage of each pipeline takes, per batch size, at each CPU frequency.

A board writes one (``run.py trace``) and ``cbnet-tl simulate --save-trace FILE`` the host-timed simulation's
own; ``cbnet-tl simulate --trace FILE`` replays it (the reader is the toolchain's, ``simulation/trace_read.py``). The file is JSON::

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

from pathlib import Path
from typing import Optional

from cbnet_tl.runtime.files import write_json_atomic

TRACE_FORMAT = "cbnet-tl-stage-trace"
TRACE_VERSION = 1
HOST_STAGE = "host"


def write_trace(path: Path, trace: dict) -> None:
    write_json_atomic(Path(path), trace)


def make_trace(source: str, frequencies_khz, pipelines: dict, *, speed_changed: bool, target: Optional[str] = None,
               ran_at_khz: Optional[int] = None, notes=(), recorded_at: Optional[str] = None) -> dict:
    """A trace from ``pipelines``: {pipeline: {stage: {num_images: {kHz: seconds}}}}."""
    return {
        "format": TRACE_FORMAT, "version": TRACE_VERSION, "source": source, "target": target,
        "speed_changed": bool(speed_changed), "ran_at_mhz": None if ran_at_khz is None else ran_at_khz / 1000,
        "frequencies_mhz": [khz / 1000 for khz in frequencies_khz], "recorded_at": recorded_at, "notes": list(notes),
        "pipelines": {name: {"stages": {stage: {str(n): {_mhz_key(khz): s for khz, s in at.items()}
                                                for n, at in sizes.items()} for stage, sizes in stages.items()}}
                      for name, stages in pipelines.items()},
    }


def _mhz_key(khz: int) -> str:
    return str(khz // 1000) if khz % 1000 == 0 else str(khz / 1000)
