"""How host times stand in for the target's: a factor, and where it comes from.

Without a trace from the board, the simulator times stages on this machine. Those times are multiplied by a
factor so that they stand for times on the target at its top frequency. In order of preference, the factor
comes from:

1. ``--time-scale`` (the user's own figure);
2. arm64 instruction counts per image of the same pipeline at the nearest batch size: the build's own
   (``cbnet-tl bench BUILD --arm64`` saves them in bench.json), else those ``scripts/arm64_check.py`` recorded
   for the target in ``toolchain/data/device_checks.json`` (another bundle of the same recipes). Target time
   per image = instructions / (IPC × f_max), with IPC ASSUMED to be 1 (no board measurement here); the factor
   is that over this machine's time per image at that batch size, measured in the same run;
3. none of these: 1, host times unscaled, and the output says so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from cbnet_tl.runtime.errors import ConfigError

ASSUMED_IPC = 1.0  # arm64 instructions per cycle on the target's core: ASSUMED, not measured


@dataclass(frozen=True)
class TimeScale:
    factor: float
    source: str
    kind: str  # "given", "arm64-count", "unscaled", "trace"

    def describe(self) -> dict:
        return {"factor": self.factor, "source": self.source, "kind": self.kind}


def _counts_from_bench(bundle_dir: Path, pipeline: str) -> Optional[tuple]:
    for directory in (bundle_dir, bundle_dir.parent):
        try:
            bench = json.loads((directory / "bench.json").read_text())
            row = bench["arm64"][pipeline]
            cpu = bench.get("arm64_setup", {}).get("cpu", "the target's core")
        except (OSError, ValueError, KeyError, TypeError):
            continue
        return row, f"`bench --arm64` counts in {directory / 'bench.json'} ({cpu})"
    return None


def _counts_from_checks(target: str, pipeline: str) -> Optional[tuple]:
    from cbnet_tl.toolchain.delivery.bundle import device_checks

    for record in device_checks().get("instruction_counts", []):
        if record.get("target") == target and pipeline in record.get("instructions_per_image", {}):
            return (record["instructions_per_image"][pipeline],
                    f"arm64 counts recorded for the {target} bundle in toolchain/data/device_checks.json "
                    f"({record.get('qemu_cpu', 'its core')}; another build of the same recipes)")
    return None


def time_scale(given: Optional[float], bundle_dir: Path, target: str, pipeline: str, batch_size: int,
               top_khz: int, host_seconds_per_image: Callable) -> TimeScale:
    """``host_seconds_per_image(batch)``: this machine's seconds per image of ``pipeline`` at that batch size."""
    if given is not None:
        if not given > 0:
            raise ConfigError(f"Expected --time-scale > 0. Received: {given}")
        return TimeScale(float(given), f"given (--time-scale {given:g})", "given")
    found = _counts_from_bench(Path(bundle_dir), pipeline) or _counts_from_checks(target, pipeline)
    if found is None:
        return TimeScale(1.0, "none: no arm64 instruction count is recorded for this pipeline, so host times stand "
                         "unscaled for the target's top frequency (run `cbnet-tl bench BUILD --arm64`, or pass "
                         "--time-scale)", "unscaled")
    row, where = found
    sizes = {int(b): float(c) for b, c in row.items()}
    batch = min(sizes, key=lambda b: (abs(b - batch_size), b))
    target_seconds = sizes[batch] / (ASSUMED_IPC * top_khz * 1e3)
    host = host_seconds_per_image(batch)
    factor = target_seconds / host
    return TimeScale(factor, f"{where}: {sizes[batch]:,.0f} instructions per image at batch {batch}, at an ASSUMED "
                     f"{ASSUMED_IPC:g} instruction per cycle and {top_khz // 1000} MHz = {target_seconds * 1e6:.1f} us, "
                     f"over {host * 1e6:.1f} us per image here", "arm64-count")
