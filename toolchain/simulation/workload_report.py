"""``cbnet-tl simulate --workload``: options to a ``WorkloadConfig``, and the text the command prints."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from cbnet_tl.runtime.dvfs.energy import model_for
from cbnet_tl.toolchain.analysis.evaluation import load_test_split
from cbnet_tl.toolchain.simulation.workload_sim import WorkloadConfig, simulate_workload_bundle
from cbnet_tl.toolchain.simulation.workloads import parse_workload


def run_workload(bundle_dir: Path, dataset: Optional[str], data_dir: Optional[Path], pipelines: Sequence[str], table,
                 workload: str, *, deadline_ms: Optional[float], batch_size: int, threads: int, policies: Sequence[str],
                 limit: Optional[int], repeats: int, switch_us: Optional[float], frequencies_khz, trace: Optional[Path],
                 save_trace: Optional[Path], time_scale: Optional[float]) -> dict:
    model = model_for(table, frequencies_khz, None if switch_us is None else switch_us / 1e6, threads)
    num_frames = limit
    if num_frames is None and workload.startswith("camera:"):
        num_frames = len(load_test_split(bundle_dir, data_dir, dataset)[1].images)
    config = WorkloadConfig(parse_workload(workload, num_frames or 1), batch_size=batch_size,
                            deadline_s=None if deadline_ms is None else deadline_ms / 1e3, policies=tuple(policies),
                            repeats=repeats, trace=trace, save_trace=save_trace, time_scale=time_scale,
                            target=table.target)
    return simulate_workload_bundle(bundle_dir, dataset, data_dir, list(pipelines), model, config, limit=limit,
                                    threads=threads)


def format_workload(result: dict) -> str:
    lines = [f"{result['target']} power model ({result['power_model']['active_cores']} busy core(s)), "
             f"{result['workload']}, batches of up to {result['batch_size']}, energy {result['energy_source']}"]
    for name, run in result["pipelines"].items():
        times = run["times"]
        lines.append(f"\n{name}: {run['num_images']} images in {run['num_batches']} batches, deadline "
                     f"{run['deadline_ms']:.3f} ms ({run['deadline_rule']}); unavoidable misses (the top frequency's) "
                     f"{run['unavoidable_miss_rate']:.2%}")
        lines.append(f"stage times: {'recorded trace' if times['kind'] == 'trace' else 'host times'} x "
                     f"{times['factor']:.4g} ({times['source']})")
        lines.append(f"{'policy':<14}{'mJ/image':>12}{'vs performance':>16}{'vs oracle':>11}{'misses':>9}"
                     f"{'switches':>10}  time at MHz (s)")
        for policy, r in run["policies"].items():
            spent = ", ".join(f"{mhz}: {s:.3f}" for mhz, s in r["time_at_frequency"].items())
            lines.append(f"{policy:<14}{r['energy_j'] * 1e3:>12.4f}{r.get('energy_vs_performance', 0):>+15.2%}"
                         f"{r.get('energy_vs_oracle', 0):>+11.2%}{r['miss_rate']:>9.2%}{r['switches']:>10}  {spent}")
        lines.extend(run.get("messages", []))
    lines.extend(f"note: {n}" for n in result["notes"])
    if result.get("saved_trace"):
        lines.append(f"trace written: {result['saved_trace']}")
    return "\n".join(lines)
