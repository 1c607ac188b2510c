"""The arm64 check's instruction counts (scripts/arm64_check.py loads this file; only the standard library).

Every pipeline of the check's rpi4 and rpi5 bundles is counted with ``cbnet-tl bench BUNDLE --arm64`` on its
target's core (cortex-a72, cortex-a76), in the bookworm root. The counts are recorded in device_checks.json, so
a change in any pipeline's cost shows in the diff without timing noise, and printed beside the last recorded
ones. ``problems`` is the proof that the count is real: a model with about twice the MACs of another counts
clearly more instructions per image, and the empty model counts about the bare cost of one interpreter call.
"""

from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COUNT_TARGETS = ("rpi4", "rpi5")  # bundles counted, each on its own core (toolchain/targets.py qemu_cpu)
COUNT_SUITE = "bookworm"
COUNT_TIMEOUT = 3600
EMPTY_MODEL = "noop"  # runtime.specs.INVOKE_PROBE: a reshape-only model
MACS_TWICE = (1.6, 2.4)  # "about twice the MACs"
CLEARLY_MORE = 1.3  # ... must count at least this many times the instructions
EMPTY_RANGE = (2_000, 60_000)  # one set_tensor + invoke + get_tensor of an empty model (≈21 k measured)
EMPTY_SHARE = 0.25  # ... and at most this share of the cheapest real model's bare call


def count_command(cbnet_tl: Path, bundle: Path, root: Path) -> list:
    return [cbnet_tl, "bench", bundle, "--arm64", "--json", "--no-save", "--batch", "1,32", "--dataset", "mnist",
            "--data-dir", REPO / "tests" / "data" / "mnist-8k", "--arm64-root", root]


def problems(report: dict, manifest: dict) -> list:
    """Every way the counts of one bundle fail to look real (empty when they pass)."""
    bare = report.get("arm64_bare") or {}
    macs = {name: model.get("macs") for name, model in manifest.get("models", {}).items()}
    found = []
    pairs = [(a, b) for a in bare for b in bare
             if a != b and macs.get(a) and macs.get(b) and MACS_TWICE[0] <= macs[b] / macs[a] <= MACS_TWICE[1]]
    if not pairs:
        found.append(f"no two counted models with {MACS_TWICE[0]}-{MACS_TWICE[1]}x the MACs of each other "
                     f"(MACs {macs}): the count cannot be checked against MACs")
    for a, b in pairs:
        if bare[b] < CLEARLY_MORE * bare[a]:
            found.append(f"{b} has {macs[b] / macs[a]:.2f}x the MACs of {a} but counts {bare[b]:,} instructions per "
                         f"image against {bare[a]:,} (expected at least {CLEARLY_MORE}x)")
    empty = bare.get(EMPTY_MODEL)
    real = [n for m, n in bare.items() if m != EMPTY_MODEL]
    if empty is None:
        found.append(f"the empty model {EMPTY_MODEL!r} was not counted")
    elif not EMPTY_RANGE[0] <= empty <= EMPTY_RANGE[1] or (real and empty > EMPTY_SHARE * min(real)):
        found.append(f"the empty model counts {empty:,} instructions per call; expected the bare cost of one call, "
                     f"{EMPTY_RANGE[0]:,}-{EMPTY_RANGE[1]:,} and at most {EMPTY_SHARE:.0%} of the cheapest model's "
                     f"{min(real) if real else 0:,}")
    for pipeline, row in report.get("arm64", {}).items():
        if any(n <= 0 for n in row.values()):
            found.append(f"{pipeline}: a count per image <= 0 ({row})")
    return found


def record(target: str, report: dict) -> dict:
    """What device_checks.json keeps of one bundle's counts."""
    setup = report["arm64_setup"]
    return {"target": target, "suite": COUNT_SUITE, "qemu_cpu": setup["cpu"], "qemu": setup["qemu"],
            "cpuinfo_shown": setup.get("cpuinfo"),
            "interpreter": setup.get("interpreter"), "interpreter_version": setup.get("interpreter_version"),
            "python": setup.get("python"), "num_images": setup["num_images"], "method": setup["method"],
            "instructions_per_image": report["arm64"], "bare_call": report.get("arm64_bare", {}),
            "bare_call_by_kernels": report.get("arm64_bare_kernels", {}),
            "beyond_bare_calls_batch_1": report.get("arm64_beyond_bare", {}),
            "lenet_over_pipeline": {p: {b: round(r, 3) for b, r in row.items()}
                                    for p, row in report.get("arm64_vs_lenet", {}).items()}}


def previous_counts(json_path: Path) -> dict:
    """target -> the instructions per image device_checks.json recorded last time."""
    try:
        recorded = json.loads(json_path.read_text()).get("instruction_counts", [])
        return {r["target"]: r["instructions_per_image"] for r in recorded}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def table(records: list, previous: dict) -> str:
    lines = []
    for r in records:
        lines.append(f"arm64 instructions per image, {r['target']} bundle on {r['qemu_cpu']} "
                     f"({r['interpreter']} {r['interpreter_version']}; change against the last recorded count):")
        before = previous.get(r["target"], {})
        for pipeline, row in r["instructions_per_image"].items():
            cells = []
            for batch, count in row.items():
                old = before.get(pipeline, {}).get(batch)
                change = f" ({(count - old) / old:+.1%})" if old else " (new)"
                cells.append(f"batch {batch} {count:>11,}{change}")
            lines.append(f"  {pipeline:<15}" + "   ".join(cells))
    return "\n".join(lines)
