"""What the commands print, one formatter each: the results table of a classify, the closing error line when some
files could not be read, and the one-line summary of a DVFS session.

``run.py classify``, ``cbnet-tl run`` (both through ``classify.py``), ``run.py watch`` and ``cbnet-tl eval``
print through these, so the same run reads the same whichever command made it.
"""

from __future__ import annotations

from typing import Optional, Sequence


def format_results(records: Sequence[dict]) -> list:
    """The text table of ``classify_paths``' entries, one line each: file, class, confidence, path taken and time,
    or file and ``error: why`` for an unreadable one."""
    return [f"{r['file']}\terror: {r['error']}" if "error" in r else
            f"{r['file']}\t{r['class_name']}\t{r['confidence']:.3f}\t{r['path']}\t{r['ms']:.3f} ms" for r in records]


def unreadable_error(records: Sequence[dict]) -> Optional[str]:
    """The closing error line when some files could not be classified (the command then exits 1), else None."""
    failed = [r for r in records if "error" in r]
    if not failed:
        return None
    first = f"{failed[0]['file']}: {failed[0]['error']}"
    if len(failed) == 1:
        return f"error: {first}"
    return f"error: {len(failed)} of {len(records)} files unreadable, each with its error entry; the first: {first}"


def format_dvfs_summary(summary: dict, command: Optional[str] = None) -> str:
    """One line from a ``DvfsSession.summary()`` (or ``totals()``): inputs (a service's ``num_inputs``), images
    classified, the policy, the arrivals, deadline misses, latency median and p95, energy (modelled or measured,
    said) and the time at each frequency. ``command`` ("classify", "watch", …) opens it as "<command> summary:"."""
    count = summary["num_inferences"]
    inputs = "" if summary.get("num_inputs") is None else f"{summary['num_inputs']} inputs, "
    took = "" if summary.get("seconds") is None else f" in {summary['seconds']:.1f} s"
    method = f" ({summary['method']})" if summary.get("method") else ""
    period = "" if summary.get("period_ms") is None else f"; one image every {summary['period_ms']:g} ms"
    misses = "no deadline" if summary["deadline_ms"] is None else (
        f"deadline {summary['deadline_ms']:g} ms missed by {summary['deadline_misses']}/{count} "
        f"({summary['miss_rate']:.1%})")
    latency = "" if summary.get("latency_ms_median") is None else (
        f"; latency median {summary['latency_ms_median']:.3f} ms, p95 {summary['latency_ms_p95']:.3f} ms")
    source = summary.get("energy_model") or summary.get("energy_meter")
    if summary.get("energy_note"):  # DVFS off: the frequency the governor chose is not known
        source += ", at the top frequency: DVFS off"
    energy = f"energy {summary['energy_j_total']:.4g} J ({summary['energy_source']}, {source})"
    if count:
        energy += f", {summary['energy_j'] * 1e3:.4g} mJ/image"
    busy = sum(summary["time_at_frequency"].values())
    use = ", ".join(f"{k}{'' if k == 'uncontrolled' else ' MHz'} {v:.3f} s ({v / busy:.0%})"
                    for k, v in summary["time_at_frequency"].items()) if busy else "none busy"
    opening = "" if command is None else f"{command} summary: "
    return (f"{opening}{inputs}{count} classified{took}; dvfs {summary['dvfs']}{method}{period}; {misses}{latency}; "
            f"{energy}; time at {use}; idle {summary['idle_s']:.3f} s; frequency switches: {summary['switches']}")
