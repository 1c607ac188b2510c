"""Replay the real per-sample stage times of an evaluation through a target's power model, per DVFS policy.

A trace is a list of samples; a sample is the list of ``(stage, seconds)`` its pipeline ran, timed on this
machine. Those times count as times at the target's top frequency and scale as f_max / f. Arrivals are
back to back (the next inference arrives when the previous one has answered) or periodic (inference k
arrives at k · period). The deadline counts from the arrival. Energy is modelled (``energy.EnergyModel``):
busy time at P_active(f), idle time at P_idle, and every frequency switch its time and energy. Every
policy runs on the device's own session (``replay``), with a simulated clock and cpufreq.

The **oracle** knows the whole trace. Among all schedules that give every stage of every sample its own
frequency from the OPP list, it finds by dynamic programming the one of least total energy that meets
every deadline that can be met at all (a sample too slow even at the top frequency runs at the top, and
may make the next one start late). Every policy, the oracle too, sets a frequency before the first arrival
(that switch delays nothing). Switch costs count: inside an inference and, back to back, before one,
a switch delays it; between periodic arrivals a switch is made in the idle gap when it fits there, else at
the arrival. Its ``planned_energy_j`` is therefore a lower bound on the energy of every policy that misses
no more deadlines and switches only at those points (the static policies and eenet do); its other figures
come from replaying its schedule through the same simulator as the policies, and match the plan.
"""

from __future__ import annotations

import itertools
from typing import Optional, Sequence

import numpy as np

from cbnet_tl.runtime.dvfs.energy import EnergySource, model_for
from cbnet_tl.runtime.dvfs.policy import Policy
from cbnet_tl.runtime.dvfs.run import parse_policy
from cbnet_tl.runtime.dvfs.trace_file import HOST_STAGE  # a trace's time outside the model calls
from cbnet_tl.runtime.errors import DataError, DvfsError
from cbnet_tl.runtime.specs import PIPELINE_SPECS, spec_for_stages
from cbnet_tl.toolchain.simulation.power_notes import assumptions
from cbnet_tl.toolchain.simulation.replay import Job, replay

ORACLE = "oracle"


def infer_pipeline(stage_names) -> str:
    names = {name for name in stage_names if name != HOST_STAGE}
    spec = spec_for_stages(names)
    if spec is None:
        expected = "; ".join(f"{name} ({', '.join(s.models)})" for name, s in PIPELINE_SPECS.items())
        raise DataError(f"Cannot tell the pipeline from stages {sorted(names)}. Expected one of: {expected}; "
                        "pass pipeline=")
    return spec.name


def path_of(pipeline: str, stages: Sequence[str]) -> str:
    spec = PIPELINE_SPECS.get(pipeline)
    return spec.path_of(stages) if spec is not None else "mixed"


def _check_trace(trace) -> list:
    samples = []
    for i, sample in enumerate(trace):
        try:
            stages = [(str(stage), float(seconds)) for stage, seconds in sample]
        except (TypeError, ValueError):
            raise DataError(f"Expected sample {i} as a list of (stage, seconds) pairs. Received: {sample!r}") from None
        if not stages or any(not s >= 0 for _, s in stages):
            raise DataError(f"Expected sample {i} to have stages with seconds >= 0. Received: {stages}")
        samples.append(stages)
    if not samples:
        raise DataError("Expected a trace with at least one sample. Received an empty trace")
    return samples


def top_frequency_latency(trace, pipeline: Optional[str] = None) -> dict:
    """Latency per sample at the top frequency (the trace as timed), in ms, and the median of each path."""
    samples = _check_trace(trace)
    pipeline = pipeline or infer_pipeline(s for sample in samples for s, _ in sample)
    totals = np.array([sum(s for _, s in sample) for sample in samples]) * 1e3
    paths = np.array([path_of(pipeline, [name for name, _ in sample]) for sample in samples])
    return {"median": float(np.median(totals)), "mean": float(totals.mean()),
            "p95": float(np.percentile(totals, 95)), "p99": float(np.percentile(totals, 99)),
            "max": float(totals.max()),
            "median_by_path": {str(path): float(np.median(totals[paths == path])) for path in np.unique(paths)}}


def default_deadline_ms(latency: dict, switch_seconds: float = 0.0) -> float:
    """Twice the top-frequency latency of the pipeline's slowest path (its median over the samples that
    take it): every path has the same 2x slack, so what a policy saves or misses is its own doing. Never
    less than two frequency switches: a shorter deadline leaves no policy a choice."""
    return max(2 * max(latency["median_by_path"].values()), 2 * switch_seconds * 1e3)


def replay_samples(policy: Policy, samples: list, model, deadline_s: float, period_s: Optional[float],
                   pipeline: str) -> dict:
    """Each sample a job of one image on the device session (``replay``): back to back (``period_s`` None) or
    arriving every ``period_s``; its stages' times, at the top frequency, scale as f_max / f."""
    stages = list(dict.fromkeys(stage for sample in samples for stage, _ in sample))
    order = {stage: s for s, stage in enumerate(stages)}
    top = np.zeros((len(samples), len(stages)))
    counts = np.zeros((len(samples), len(stages)), dtype=np.int64)
    for k, sample in enumerate(samples):
        for stage, seconds in sample:
            top[k, order[stage]] += seconds
            counts[k, order[stage]] = 1
    durations = top[:, :, None] * (model.top_khz / np.array(model.frequencies_khz, dtype=np.float64))[None, None, :]
    period = period_s or 0.0
    jobs = [Job(np.array([k * period]), tuple(int(c) for c in row)) for k, row in enumerate(counts)]
    result = replay(policy, model, deadline_s, pipeline, stages, jobs, durations, back_to_back=period_s is None,
                    horizon_s=None if period_s is None else len(samples) * period_s)
    for key in ("energy_j_total", "batch_misses", "decisions"):
        result.pop(key)
    return result


class _Schedule(Policy):
    """Replays a fixed schedule: one frequency per stage a sample runs (the oracle's); between samples, the next
    sample's first frequency is set as one answers when the idle gap holds the switch."""

    name = ORACLE

    def __init__(self, schedule: list, in_gap: list):
        self.schedule, self.in_gap, self.k, self.i, self.khz = schedule, in_gap, -1, 0, schedule[0][0]

    def initial_khz(self):
        return self.khz

    def on_batch(self, pipeline, num_images, lateness_s, idle_s, queue):
        self.k, self.i = self.k + 1, 0
        self.khz = self.schedule[self.k][0]
        return self.khz

    def on_stage(self, stage, num_images, elapsed_s):
        if num_images:  # a stage the sample did not run keeps the frequency
            self.khz, self.i = self.schedule[self.k][self.i], self.i + 1
        return self.khz

    def on_end(self, latency_s):
        following = self.k + 1 < len(self.schedule) and self.in_gap[self.k]
        self.khz = self.schedule[self.k + 1][0] if following else self.schedule[self.k][-1]
        return self.khz


def _combos(num_freqs: int, num_stages: int) -> np.ndarray:
    if num_freqs ** num_stages > 200_000:
        raise DvfsError(f"The oracle enumerates {num_freqs}^{num_stages} frequency choices per sample; too many. "
                        "Expected at most 200000 (fewer OPPs or stages)")
    combos = np.array(list(itertools.product(range(num_freqs), repeat=num_stages)), dtype=np.int64)
    return combos[np.argsort(combos[:, -1], kind="stable")]  # grouped by the last stage's frequency


def oracle_schedule(samples: list, model, deadline: float, period: Optional[float]) -> tuple:
    """(frequencies per stage per sample, switch-in-the-gap flags, least total energy in J) by dynamic
    programming. A state is (frequency at the end of the previous sample, whether its idle gap can hold
    a switch). Back to back there are no gaps: a switch before an inference delays it."""
    freqs = np.array(model.frequencies_khz, dtype=np.float64)
    n, top, switch_s = len(freqs), len(freqs) - 1, model.switch_seconds
    credit = model.idle_w if period is not None else 0.0  # periodic: busy time replaces idle time
    power = np.array([model.active_w(int(f)) for f in freqs]) - credit
    switch_j = np.array([[model.switch_j(int(a), int(b)) - (credit * switch_s if a != b else 0.0)
                          for b in freqs] for a in freqs])
    limit = min(deadline, period) if period is not None else deadline
    state_freq, state_roomy = np.repeat(np.arange(n), 2)[:, None], np.tile([False, True], n)[:, None]
    cost = np.full(2 * n, np.inf)
    cost[2 * top + 1] = 0.0  # at the top, with time before the first arrival for a switch
    back, cache, late = [], {}, 0.0  # late: how long after its arrival a sample can start (after an overrun)
    for stages in samples:
        t = np.array([s for _, s in stages])
        combos = cache.setdefault(len(t), _combos(n, len(t)))
        seconds = t[None, :] * freqs[-1] / freqs[combos]
        latency = seconds.sum(1) + (combos[:, 1:] != combos[:, :-1]).sum(1) * switch_s
        energy = (power[combos] * seconds).sum(1) + switch_j[combos[:, :-1], combos[:, 1:]].sum(1)
        switch_in = combos[None, :, 0] != state_freq
        total = late + latency[None, :] + (switch_in & ~state_roomy) * switch_s  # no room: switch after arrival
        if late + t.sum() <= limit:
            allowed, late = total <= limit * (1 + 1e-9), 0.0
        else:  # cannot be met even at the top frequency: run it at the top; the next one may start late
            allowed = np.broadcast_to((combos == top).all(1)[None, :], total.shape)
            late = max(0.0, late + t.sum() + switch_s - period) if period is not None else 0.0
        step = np.where(allowed, cost[:, None] + switch_j[state_freq[:, 0]][:, combos[:, 0]] + energy[None, :],
                        np.inf)
        roomy = total <= (period - switch_s) if period is not None else np.zeros_like(total, dtype=bool)
        new_cost, choice, prev = np.full(2 * n, np.inf), np.zeros(2 * n, np.int64), np.zeros(2 * n, np.int64)
        for flag in (False, True):
            masked = np.where(roomy == flag, step, np.inf)
            best_prev = masked.argmin(0)
            best = masked[best_prev, np.arange(len(combos))].reshape(n, -1)
            picked = best.argmin(1) + np.arange(n) * best.shape[1]
            new_cost[int(flag)::2], choice[int(flag)::2], prev[int(flag)::2] = best.min(1), picked, best_prev[picked]
        cost = new_cost
        back.append((combos, choice, prev))
    state = int(cost.argmin())
    bound, schedule, in_gap = float(cost[state]), [], []
    for combos, choice, prev in reversed(back):
        schedule.append([int(freqs[j]) for j in combos[choice[state]]])
        in_gap.append(bool(state % 2))
        state = int(prev[state])
    schedule.reverse()
    in_gap.reverse()
    if period is not None:  # idle power over the window, from one switch before the first arrival (replay)
        bound += model.idle_w * (period * len(samples) + switch_s)
    return schedule, in_gap, bound


def named_policy(name: str) -> Policy:
    """The named policy, unbound; 'off' cannot be simulated."""
    policy = parse_policy(name)
    if policy is None:
        raise DvfsError("DVFS 'off' leaves the frequency to the governor, which cannot be simulated. "
                        "Expected performance, powersave, fixed:<MHz>, eenet or oracle")
    return policy


def compare_to_references(results: dict) -> None:
    """Add each policy's energy against performance's and the oracle's, where they ran."""
    for reference in ("performance", ORACLE):
        if reference in results:
            for result in results.values():
                result[f"energy_vs_{reference}"] = result["energy_j"] / results[reference]["energy_j"] - 1


def simulate(trace, target: str, deadline_s: float, period_s: Optional[float], policies: Sequence[str],
             frequencies_khz=None, *, switch_seconds: Optional[float] = None, pipeline: Optional[str] = None) -> dict:
    """Every policy in ``policies`` (``performance``, ``powersave``, ``fixed:<MHz>``, ``eenet``, ``oracle``) over
    ``trace`` on ``target``'s power model: energy per inference (J, modelled), misses, latency, time per OPP.
    ``frequencies_khz``: the device's OPP list (default: the table's); ``period_s=None``: back to back."""
    samples = _check_trace(trace)
    model = model_for(target, frequencies_khz, switch_seconds)
    pipeline = pipeline or infer_pipeline(s for sample in samples for s, _ in sample)
    results = {}
    for name in policies:
        if name == ORACLE:
            schedule, in_gap, bound = oracle_schedule(samples, model, deadline_s, period_s)
            results[name] = replay_samples(_Schedule(schedule, in_gap), samples, model, deadline_s, period_s, pipeline)
            results[name]["planned_energy_j"] = bound / len(samples)
            continue
        policy = named_policy(name)
        results[policy.name] = replay_samples(policy, samples, model, deadline_s, period_s, pipeline)
    compare_to_references(results)
    best = 1 - results[ORACLE]["energy_j"] / results["performance"]["energy_j"] \
        if ORACLE in results and "performance" in results else None
    return {"best_saving": best,
        "target": model.table.target, "pipeline": pipeline, "num_inferences": len(samples),
        "deadline_ms": deadline_s * 1e3, "period_ms": None if period_s is None else period_s * 1e3,
        "arrivals": "back-to-back" if period_s is None else "periodic",
        "frequencies_mhz": [f // 1000 if f % 1000 == 0 else f / 1000 for f in model.frequencies_khz],
        "switch_us": model.switch_seconds * 1e6,
        "top_frequency_latency_ms": top_frequency_latency(samples, pipeline),
        "unavoidable_miss_rate": float(np.mean([sum(t for _, t in sample) > deadline_s for sample in samples])),
        "energy_source": EnergySource.MODELLED.value, "policies": results,
        "notes": [
            f"Stage times were measured on this machine; they count as times at the top frequency "
            f"({model.top_khz // 1000} MHz) of {target} and scale as f_max / f.",
            "energy_j is per inference, modelled: busy time at P_active(f), idle time at P_idle, switches at "
            "P_active of the higher frequency. Back to back, the next inference arrives when the previous answers.",
            "oracle: the least-energy schedule (one OPP per stage per sample) that meets every deadline the top "
            "frequency meets, knowing the whole trace; a lower bound for policies that miss no more deadlines.",
        ],
        "assumptions": assumptions(model.table),
    }
