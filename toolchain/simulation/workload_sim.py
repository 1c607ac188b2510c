"""``cbnet-tl simulate --workload``: a bundle's pipelines serving a workload in batches, per DVFS policy.

Which images of a batch go on to each stage comes from running the pipeline here (the int8 models decide
the same on any CPU). How long each stage takes comes from a recorded trace (``--trace``), or from timing the
workload's batches here, each stage's median over ``repeats`` passes per number of images, multiplied by a
stated factor (``time_scale``) to stand for the target at its top frequency. ``save_trace`` writes that
table as a trace, which ``--trace`` replays to the same decisions and energy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from cbnet_tl.runtime.dvfs.exit_plan import efficient_frequencies
from cbnet_tl.runtime.dvfs.energy import EnergyModel
from cbnet_tl.runtime.dvfs.trace_file import HOST_STAGE, make_trace
from cbnet_tl.toolchain.simulation.trace_read import read_trace, write_trace
from cbnet_tl.runtime.errors import ConfigError
from cbnet_tl.runtime.pipelines import TIME_STAGES, Pipeline
from cbnet_tl.runtime.specs import EXIT_TABLE
from cbnet_tl.toolchain.simulation.batch_sim import ORACLE, Job, simulate_jobs
from cbnet_tl.toolchain.simulation.power_notes import assumptions, describe_model
from cbnet_tl.toolchain.simulation.stage_costs import StageCosts
from cbnet_tl.toolchain.simulation.time_scale import TimeScale, time_scale
from cbnet_tl.toolchain.simulation.workloads import Workload, form_batches

NO_SAVING = 0.001  # a best possible saving below this is no saving: say why
MAX_TIMED_BATCHES = 512


@dataclass(frozen=True)
class WorkloadConfig:
    workload: Workload
    batch_size: int = 1
    deadline_s: Optional[float] = None  # None: the workload's default
    policies: tuple = ("performance", "powersave", "eenet", ORACLE)
    repeats: int = 3
    trace: Optional[Path] = None
    save_trace: Optional[Path] = None
    time_scale: Optional[float] = None
    target: str = "rpi4"  # the power table's name, for recorded arm64 counts

    def __post_init__(self):
        if self.batch_size < 1 or self.repeats < 1:
            raise ConfigError(f"Expected batch_size >= 1 and repeats >= 1. Received: {self.batch_size}, {self.repeats}")
        if self.deadline_s is not None and not self.deadline_s > 0:
            raise ConfigError(f"Expected a deadline > 0 ms. Received: {self.deadline_s * 1e3}")


def depths_of(pipeline: Pipeline, images: np.ndarray) -> np.ndarray:
    """How many of the pipeline's models each image runs."""
    spec = pipeline.spec
    length = {label: len(models) for models, label in spec.paths.items()}
    depths = []
    for first in range(0, len(images), 256):
        depths.extend(length[path] for path in pipeline.classify(images[first:first + 256]).paths)
    return np.array(depths, dtype=np.int64)


def exit_confidences(pipeline: Pipeline, images: np.ndarray) -> Optional[np.ndarray]:
    """A multi-exit pipeline's confidence at each exit for each image, (exits, N); None for other pipelines."""
    if EXIT_TABLE not in pipeline.options:
        return None
    from cbnet_tl.runtime.exits import exit_scores

    return exit_scores(pipeline, images)[1]


def stage_counts(depths: np.ndarray, num_models: int) -> tuple:
    """(images running the host part, then each model) for a batch whose images run ``depths`` models."""
    return (len(depths),) + tuple(int(np.sum(depths > k)) for k in range(num_models))


def host_costs(pipeline: Pipeline, images: np.ndarray, depths: np.ndarray, config: WorkloadConfig,
               model: EnergyModel, bundle_dir: Path) -> tuple:
    """(StageCosts from host times × the factor, TimeScale): chunks at batch 1 and the batch size first (for
    the factor and the batches), then the workload's own batches."""
    spec, samples = pipeline.spec, {}
    models = spec.models

    def timed(ranges):
        for first, stop in ranges:
            runs = [pipeline.classify(images[first:stop], hook=TIME_STAGES) for _ in range(config.repeats)]
            counts = stage_counts(depths[first:stop], len(models))
            samples.setdefault((HOST_STAGE, counts[0]), []).append(
                float(np.median([max(0.0, r.seconds - sum(r.stage_seconds.values())) for r in runs])))
            for k, stage in enumerate(models):
                if counts[k + 1]:
                    samples.setdefault((stage, counts[k + 1]), []).append(
                        float(np.median([r.stage_seconds.get(stage, 0.0) for r in runs])))
            yield float(np.median([r.seconds for r in runs])) / (stop - first)

    per_image = {}
    for size in sorted({1, min(config.batch_size, len(images))}):
        chunks = [(a, a + size) for a in range(0, len(images) - size + 1, size)][:8]
        per_image[size] = float(np.median(list(timed(chunks))))

    def host_per_image(batch):
        if batch not in per_image:
            chunks = [(a, a + batch) for a in range(0, len(images) - batch + 1, batch)][:8] or [(0, len(images))]
            per_image[batch] = float(np.median(list(timed(chunks))))
        return per_image[batch]

    scale = time_scale(config.time_scale, bundle_dir, config.target, pipeline.name, config.batch_size,
                       model.top_khz, host_per_image)
    costs = _costs(samples, scale, model, models)
    batches = form_batches(config.workload.arrivals_s, config.batch_size, _top_seconds(costs, depths, model, models))
    step = max(1, math.ceil(len(batches) / MAX_TIMED_BATCHES))
    list(timed(batches[::step]))
    return _costs(samples, scale, model, models), scale


def _costs(samples: dict, scale: TimeScale, model: EnergyModel, models: tuple) -> StageCosts:
    top = {}
    for (stage, count), values in samples.items():
        top.setdefault(stage, {})[count] = float(np.median(values)) * scale.factor
    order = [s for s in (HOST_STAGE,) + tuple(models) if s in top]  # the order a batch runs them
    return StageCosts.from_top({s: dict(sorted(top[s].items())) for s in order}, model.frequencies_khz,
                               f"host times x {scale.factor:.4g} ({scale.source})")


def _top_seconds(costs: StageCosts, depths: np.ndarray, model: EnergyModel, models: tuple):
    stages = (HOST_STAGE,) + tuple(models)

    def seconds(first, stop):
        counts = stage_counts(depths[first:stop], len(models))
        return sum(costs.seconds(stage, c, model.top_khz) for stage, c in zip(stages, counts))

    return seconds


def default_deadline(workload: Workload, jobs_top_max_s: float, model: EnergyModel) -> tuple:
    """(deadline in s, the rule): never shorter than two frequency switches unless the user gives one."""
    floor = 2 * model.switch_seconds
    if workload.deadline_s is None:
        return max(2 * jobs_top_max_s, floor), ("2x the slowest batch at the top frequency, at least two "
                                                f"frequency switches ({floor * 1e3:.3f} ms)")
    if workload.kind == "camera" and workload.deadline_s < floor:
        return floor, (f"the frame period ({workload.deadline_s * 1e3:.3f} ms) is shorter than two frequency "
                       f"switches; raised to {floor * 1e3:.3f} ms (pass --deadline-ms to insist)")
    return workload.deadline_s, "the frame period" if workload.kind == "camera" else "the workload's"


def no_saving_reasons(model: EnergyModel, jobs: list, costs: StageCosts, stages: tuple, deadline_s: float,
                      run: dict) -> list:
    """Why no policy can do better than performance here: the power model, the switch cost, the idle board."""
    reasons = []
    if efficient_frequencies(model) == (model.top_khz,):
        reasons.append("power model: energy per cycle above idle is least at the top frequency, so racing to "
                       "idle wins")
    now, slack = 0.0, math.inf
    for job in jobs:
        now = max(now, job.ready_s) + sum(costs.seconds(s, c, model.top_khz) for s, c in zip(stages, job.counts))
        slack = min(slack, job.oldest_s + deadline_s - now)
    if slack < model.switch_seconds:
        reasons.append(f"switch cost: a batch has {max(slack, 0) * 1e3:.3f} ms of slack at the top frequency, "
                       f"less than one {model.switch_seconds * 1e3:.3f} ms frequency switch")
    idle_share = model.idle_w * run["horizon_ms"] / 1e3 / run["policies"]["performance"]["energy_j_total"]
    if idle_share > 0.9:
        reasons.append(f"idle power: the board's {model.idle_w:g} W idle draw is {idle_share:.1%} of the energy at "
                       f"the top frequency (the CPU is busy {run['busy_share_at_top']:.2%} of the time), and no "
                       "frequency changes it")
    return reasons or [f"slack: running any stage below {model.top_khz // 1000} MHz saves less than its switches cost"]


def simulate_pipeline(bundle, bundle_dir: Path, name: str, images: np.ndarray, model: EnergyModel,
                      config: WorkloadConfig) -> dict:
    pipeline = Pipeline(bundle, name)
    models = pipeline.spec.models
    stages = (HOST_STAGE,) + tuple(models)
    depths = depths_of(pipeline, images)
    if config.trace is not None:
        trace = read_trace(config.trace)
        costs = StageCosts.from_trace(trace, name, f"trace {config.trace} ({trace['source']})")
        note = " as recorded" if trace["speed_changed"] else (
            " (the CPU did not change speed when it was recorded: times scaled as f_ran / f)")
        scale = TimeScale(1.0, f"trace {config.trace}: {trace['source']}{note}", "trace")
    else:
        costs, scale = host_costs(pipeline, images, depths, config, model, bundle_dir)
    arrivals = config.workload.arrivals_s
    ranges = form_batches(arrivals, config.batch_size, _top_seconds(costs, depths, model, models))
    exits = exit_confidences(pipeline, images)
    jobs = [Job(arrivals[a:b], stage_counts(depths[a:b], len(models)),
                None if exits is None or b - a != 1 else (None, *exits[:, a].tolist())) for a, b in ranges]
    slowest = max(sum(costs.seconds(s, c, model.top_khz) for s, c in zip(stages, job.counts)) for job in jobs)
    if config.deadline_s is not None:
        deadline, rule = config.deadline_s, "given"
    else:
        deadline, rule = default_deadline(config.workload, slowest, model)
    run = simulate_jobs(jobs, stages, costs, model, deadline, config.policies, name, profile=costs.at_top(model.top_khz),
                        exits=pipeline.options.get(EXIT_TABLE))
    policies = run["policies"]
    result = {"pipeline": name, "workload": config.workload.description, "batch_size": config.batch_size,
              "deadline_ms": deadline * 1e3, "deadline_rule": rule, "times": scale.describe(), **run}
    if "performance" in policies and ORACLE in policies:
        best = 1 - policies[ORACLE]["energy_j"] / policies["performance"]["energy_j"]
        result["best_saving"] = best
        result["messages"] = [f"best possible saving: {best:.2%} (the oracle against performance)"]
        if best < NO_SAVING:
            result["messages"].append(f"no policy can save even {NO_SAVING:.1%} against performance here: "
                                      + "; ".join(no_saving_reasons(model, jobs, costs, stages, deadline, run)))
    return result, costs, scale


def simulate_workload_bundle(bundle_dir: Path, dataset: Optional[str], data_dir: Optional[Path],
                             pipelines: Sequence[str], model: EnergyModel, config: WorkloadConfig, *,
                             limit: Optional[int] = None, threads: int = 1) -> dict:
    """Every pipeline over the workload; the first one's policies are the headline (``policies``)."""
    from cbnet_tl.runtime.bundle import load_bundle
    from cbnet_tl.runtime.specs import models_for
    from cbnet_tl.toolchain.simulation.dvfs_report import frequency_curve
    from cbnet_tl.toolchain.analysis.evaluation import load_test_split

    manifest, test = load_test_split(bundle_dir, data_dir, dataset)
    pool = test.images[:limit]
    images = pool[np.arange(len(config.workload.arrivals_s)) % len(pool)]
    bundle = load_bundle(bundle_dir, models=models_for(pipelines, manifest), num_threads=threads)
    result = {"target": model.table.target, "energy_source": "modelled", "workload": config.workload.description,
              "batch_size": config.batch_size, "threads": threads, "num_images": int(len(images)),
              "power_model": describe_model(model), "pipelines": {}}
    traced = {}
    for name in pipelines:
        result["pipelines"][name], costs, scale = simulate_pipeline(bundle, bundle_dir, name, images, model, config)
        traced[name] = (costs, scale)
    first = result["pipelines"][pipelines[0]]
    result["policies"] = first["policies"]
    result["headline"] = {"pipeline": pipelines[0], "workload": config.workload.description}
    result["times"] = first["times"]
    shown = "a recorded trace" if first["times"]["kind"] == "trace" else "host times"
    result["notes"] = [
        f"Stage times shown: {shown}; {first['times']['source']}. They count as times on {model.table.target} and "
        "scale as f_max / f where not recorded.",
        f"Energy is modelled ({model.table.target} power table, {model.table.active_cores} busy core(s) = "
        f"--threads) over the window from the first arrival to the last deadline: idle power throughout, plus "
        "what inferring and switching add. Idle waiting is idle.",
        "Batches: each takes every image arrived when the CPU is free, up to the batch size (formed once, at the "
        "top frequency, the same for every policy); its deadline counts from its oldest image's arrival.",
        "eenet starts from each stage's cost per batch size (the profile a recorded trace gives a device) and "
        "learns the share of images that go on; oracle: the least-energy plan knowing every batch in advance.",
    ]
    result["assumptions"] = assumptions(model.table)
    result["frequency_curve"] = frequency_curve(model, {name: run["top_frequency_ms_per_image"]
                                                        for name, run in result["pipelines"].items()})
    if config.save_trace is not None:
        write_trace(config.save_trace, make_trace(
            f"cbnet-tl simulate: {shown}", model.frequencies_khz,
            {name: costs.as_trace_stages(model.frequencies_khz) for name, (costs, _) in traced.items()},
            speed_changed=True, target=model.table.target,
            notes=[f"{name}: {costs.source}" for name, (costs, _) in traced.items()]))
        result["saved_trace"] = str(config.save_trace)
    return result
