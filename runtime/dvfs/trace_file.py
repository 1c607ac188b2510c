"""Writing stage traces: the seconds each stage of each pipeline takes, per batch size, at each CPU frequency (the
board's ``run.py trace``). The format, and its reader, are the toolchain's (``simulation/trace_read.py``)."""

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
