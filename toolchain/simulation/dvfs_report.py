"""``cbnet-tl simulate`` over a bundle: record real per-image stage times, replay them per policy."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from cbnet_tl.runtime.bundle import load_bundle
from cbnet_tl.runtime.dvfs.energy import EnergyModel, model_for
from cbnet_tl.runtime.errors import ConfigError, DvfsError
from cbnet_tl.runtime.pipelines import TIME_STAGES, Pipeline
from cbnet_tl.runtime.specs import models_for
from cbnet_tl.toolchain.analysis.evaluation import load_test_split
from cbnet_tl.toolchain.simulation.simulate import HOST_STAGE, default_deadline_ms, simulate, top_frequency_latency


def frequency_curve(model: EnergyModel, top_latency_ms: dict) -> dict:
    """Modelled energy per inference (mJ) of each pipeline run entirely at each OPP, back to back."""
    curve = {"mhz": [khz // 1000 for khz in model.frequencies_khz], "energy_mj": {}}
    for name, latency_ms in top_latency_ms.items():
        curve["energy_mj"][name] = [
            model.active_w(khz) * latency_ms * model.top_khz / khz for khz in model.frequencies_khz  # time ∝ 1/f
        ]
    return curve


def simulate_bundle(bundle_dir: Path, dataset: Optional[str], data_dir: Optional[Path], pipelines: Sequence[str], *,
                    target: str, deadline_ms: Optional[float], period_ms: Optional[float], policies: Sequence[str],
                    limit: Optional[int] = None, repeats: int = 3, frequencies_khz: Optional[Sequence[int]] = None,
                    switch_us: Optional[float] = None, threads: int = 1) -> dict:
    """``target``: a power table's name or a ``PowerTable``; ``frequencies_khz``: the device's OPP list (default:
    the table's); ``switch_us``: one switch; ``threads``: the interpreter's, and the busy cores of the model."""
    model = model_for(target, frequencies_khz, None if switch_us is None else switch_us / 1e6, threads)  # fails fast
    target = model.table
    manifest, test = load_test_split(bundle_dir, data_dir, dataset)
    images = test.images[:limit]
    bundle = load_bundle(bundle_dir, models=models_for(pipelines, manifest), num_threads=threads)
    result = {"target": target.target, "num_images": int(len(images)), "energy_source": "modelled", "pipelines": {},
              "threads": threads,
              "notes": [f"Stage times shown: host times, unscaled: measured on this machine, they count as times at "
                        f"{target.target}'s top frequency, scaled by f_max/f; energy comes from the documented power "
                        "model, not a meter. (--workload scales them to the target and takes --trace.)"]}
    medians = {}
    for name in pipelines:
        trace = trace_of(Pipeline(bundle, name), images, repeats=repeats)
        latency = top_frequency_latency(trace, name)
        medians[name] = latency["median"]
        deadline = deadline_ms if deadline_ms is not None else default_deadline_ms(latency, model.switch_seconds)
        runs = {}
        for arrivals, period in (("back-to-back", None), ("periodic", period_ms if period_ms else deadline)):
            runs[arrivals] = simulate(trace, target, deadline / 1e3, None if period is None else period / 1e3,
                                      policies, model.frequencies_khz, switch_seconds=model.switch_seconds,
                                      pipeline=name)
        result["pipelines"][name] = {"deadline_ms": deadline, "deadline_rule": "given" if deadline_ms else
                                     "2x the slowest path's median top-frequency latency, at least two frequency switches",
                                     "runs": runs}
    first = next(iter(result["pipelines"].values()))["runs"]["back-to-back"]
    result["policies"] = first["policies"]  # the first pipeline, back to back: the headline
    result["headline"] = {"pipeline": first["pipeline"], "arrivals": "back-to-back"}
    result["frequency_curve"] = frequency_curve(model, medians)
    return result


def format_simulation(result: dict) -> str:
    lines = [f"{result['target']} power model, {result['num_images']} test images, energy {result['energy_source']}"]
    for name, entry in result["pipelines"].items():
        for arrivals, run in entry["runs"].items():
            period = f", period {run['period_ms']:.3f} ms" if run["period_ms"] else ""
            lines.append(f"\n{name}, {arrivals}: deadline {entry['deadline_ms']:.3f} ms ({entry['deadline_rule']}){period}, "
                         f"unavoidable misses {run['unavoidable_miss_rate']:.2%}")
            lines.append(f"{'policy':<14}{'mJ/inference':>14}{'vs performance':>16}{'vs oracle':>11}{'misses':>9}{'p95 ms':>9}")
            for policy, r in run["policies"].items():
                lines.append(f"{policy:<14}{r['energy_j'] * 1e3:>14.5f}{r.get('energy_vs_performance', 0):>+15.2%}"
                             f"{r.get('energy_vs_oracle', 0):>+11.2%}{r['miss_rate']:>9.2%}{r['latency_ms_p95']:>9.3f}")
            if run.get("best_saving") is not None:
                lines.append(f"best possible saving: {run['best_saving']:.2%} (the oracle against performance)")
    lines.extend(f"note: {n}" for n in result["notes"])
    return "\n".join(lines)


def trace_of(pipeline, images: np.ndarray, repeats: int = 3) -> list:
    """Per-image stage times, the input of ``simulate``: ``[("host", s), (stage, s), …]`` per image.

    "host" is the pre/post-processing, gate and softmax time outside the model calls. The whole set is
    run ``repeats`` times, one pass after another, and each stage of each image keeps its median over
    the passes. A model's work does not depend on the pixels, so what varies between runs of one image
    is this (shared) machine's noise, and that comes in bursts: repeats of one image taken back to back
    fall into the same burst, passes far apart in time do not. The path is the same in every pass.
    """
    if repeats < 1:
        raise ConfigError(f"Expected repeats >= 1. Received: {repeats}")
    passes = []
    for _ in range(repeats):
        runs = []
        for image in images:
            result = pipeline.classify(image, hook=TIME_STAGES)  # stages are timed only for a hook
            stages = list(result.stage_seconds.items())
            runs.append([(HOST_STAGE, max(0.0, result.seconds - sum(s for _, s in stages)))] + stages)
        passes.append(runs)
    trace = []
    for i, first in enumerate(passes[0]):
        names = [name for name, _ in first]
        if any([name for name, _ in runs[i]] != names for runs in passes[1:]):
            raise DvfsError(f"Image {i} took different paths in different passes; expected a deterministic pipeline")
        trace.append([(name, float(np.median([runs[i][j][1] for runs in passes]))) for j, name in enumerate(names)])
    return trace
