"""Simulate a workload served in batches, per DVFS policy, against the hindsight oracle.

A ``Job`` is one batch: the arrival time of each of its images, and how many of them run each stage of the
pipeline (an early exit's later stages run only the images that did not exit). Stage times per number of
images and per frequency come from a ``StageCosts`` (host times scaled to the target, or a recorded trace).
A batch starts when the CPU is free and its last image has arrived; its deadline counts from its oldest
image's arrival; an image misses when its batch answers after the image's own arrival + deadline. Waiting
for arrivals is idle time. Energy is modelled over the same window for every policy, from the first arrival
to the last image's deadline (or the last answer, if later): the board's idle power all the time, plus,
while inferring, P_active(f) − P_idle, plus, for every switch, its energy beyond idle. Every policy runs on the
device's own session (``replay``): after each stage it knows how many images go on.

The **oracle** knows everything in advance. By dynamic programming over the batches it finds, among all
schedules that give each stage of each batch its own frequency, the one of least energy that meets every
deadline the top frequency meets (a batch the top frequency misses runs at the top). A state is the
frequency set when a batch ends and when it ends relative to the next one's ready time; states that end no
earlier at no less energy are dropped, and of the rest one per ``deadline / 1000`` of end time is kept
(the cheapest), so the result is exact up to that thinning. A switch between batches is made as the batch
ends, as the policies make it. Its plan is replayed through the same simulator as every policy.
"""

from __future__ import annotations

import itertools
from typing import Optional, Sequence

import numpy as np

from cbnet_tl.runtime.dvfs.energy import EnergyModel
from cbnet_tl.runtime.dvfs.policy import Policy
from cbnet_tl.runtime.errors import DvfsError
from cbnet_tl.toolchain.simulation.replay import Job, replay
from cbnet_tl.toolchain.simulation.simulate import ORACLE, compare_to_references, named_policy

_TOLERANCE = 1e-12


def durations(jobs: Sequence[Job], stages: Sequence[str], costs, frequencies_khz) -> np.ndarray:
    """Seconds of each stage of each job at each frequency: (jobs, stages, frequencies)."""
    table = {}
    out = np.zeros((len(jobs), len(stages), len(frequencies_khz)))
    for j, job in enumerate(jobs):
        for s, (stage, count) in enumerate(zip(stages, job.counts)):
            if count:
                key = (stage, count)
                if key not in table:
                    table[key] = [costs.seconds(stage, count, f) for f in frequencies_khz]
                out[j, s] = table[key]
    return out


def top_finishes(jobs: Sequence[Job], dur: np.ndarray) -> np.ndarray:
    """When each job answers with everything at the top frequency (no switch): the earliest it can."""
    finishes, now = np.empty(len(jobs)), 0.0
    for j, job in enumerate(jobs):
        now = max(now, job.ready_s) + float(dur[j, :, -1].sum())
        finishes[j] = now
    return finishes


def image_misses(jobs: Sequence[Job], finishes: np.ndarray, deadline_s: float) -> int:
    return int(sum(np.sum(job.arrivals_s + deadline_s < finish - _TOLERANCE) for job, finish in zip(jobs, finishes)))


class _Schedule(Policy):
    """Replays the oracle's plan: one frequency per stage per job; a switch between jobs as a job ends."""

    name = ORACLE

    def __init__(self, plan: list, stages: Sequence[str]):
        self.plan, self.position, self.j = plan, {stage: s for s, stage in enumerate(stages)}, -1

    def initial_khz(self):
        return self.plan[0][0]

    def on_batch(self, pipeline, num_images, lateness_s, idle_s, queue):
        self.j += 1
        return self.plan[self.j][0]

    def on_stage(self, stage, num_images, elapsed_s):
        return self.plan[self.j][self.position[stage]]

    def on_end(self, latency_s):
        return self.plan[self.j + 1][0] if self.j + 1 < len(self.plan) else self.plan[self.j][-1]


def oracle_plan(jobs: Sequence[Job], dur: np.ndarray, model: EnergyModel, deadline_s: float,
                horizon_s: float) -> tuple:
    """(frequencies per stage per job in kHz, least energy in J) by dynamic programming (module docstring)."""
    freqs = np.array(model.frequencies_khz)
    n, top, sw, idle = len(freqs), len(freqs) - 1, model.switch_seconds, model.idle_w
    extra_w = np.array([model.active_w(int(f)) - idle for f in freqs])
    swx = np.array([[0.0 if a == b else model.switch_j(int(a), int(b)) - idle * sw for b in freqs] for a in freqs])
    must_meet = top_finishes(jobs, dur) <= np.array([job.oldest_s for job in jobs]) + deadline_s + _TOLERANCE
    grid = deadline_s / 1000
    # the frontier: frequency index, end relative to the next job's ready time, energy, back-pointer
    f_state, delta, cost = np.arange(n), np.full(n, -sw), swx[top].copy()
    history, combos_cache = [], {}
    for j, job in enumerate(jobs):
        active = tuple(s for s, c in enumerate(job.counts) if c)
        combos = combos_cache.get(len(active))
        if combos is None:
            if n ** len(active) > 200_000:
                raise DvfsError(f"The oracle enumerates {n}^{len(active)} frequency choices per batch; too many. "
                                "Expected at most 200000 (fewer OPPs or stages)")
            combos = combos_cache[len(active)] = np.array(list(itertools.product(range(n), repeat=len(active))),
                                                          dtype=np.int64).reshape(-1, len(active))
        if not must_meet[j]:
            combos = combos[(combos == top).all(1)]
        seconds = dur[j][list(active)][np.arange(len(active))[None, :], combos] if active else np.zeros((1, 0))
        inner = (combos[:, 1:] != combos[:, :-1]).sum(1)
        length = seconds.sum(1) + inner * sw
        energy = (extra_w[combos] * seconds).sum(1) + swx[combos[:, :-1], combos[:, 1:]].sum(1)
        keep = _useful(combos[:, 0] * n + combos[:, -1], length, energy)  # the same ends, slower and dearer: never
        combos, seconds, length, energy = combos[keep], seconds[keep], length[keep], energy[keep]
        first, last = combos[:, 0], combos[:, -1]
        start = np.maximum(0.0, delta[:, None] + sw * (f_state[:, None] != first[None, :]))
        end = job.ready_s + start + length[None, :]
        total = cost[:, None] + energy[None, :] + swx[f_state][:, first]
        ok = end <= job.oldest_s + deadline_s + _TOLERANCE if must_meet[j] else np.ones_like(end, dtype=bool)
        following = jobs[j + 1].ready_s if j + 1 < len(jobs) else horizon_s
        prev, pick = np.nonzero(ok)
        new_delta = np.maximum(end[prev, pick] - following, -sw)
        f_state, delta, cost, prev, pick = _thin(last[pick], new_delta, total[prev, pick], prev, pick, grid)
        history.append((prev, combos[pick], active))
    final = cost + idle * (horizon_s + np.maximum(0.0, delta) + sw)  # the window starts a switch early (replay)
    state = int(final.argmin())
    best = float(final[state])
    plan = []
    for prev, chosen, active in reversed(history):
        row, khz = chosen[state], []
        for s in range(len(jobs[0].counts)):
            if s in active:
                khz.append(int(freqs[row[active.index(s)]]))
            else:
                khz.append(khz[-1] if khz else None)
        plan.append(khz)
        state = int(prev[state])
    plan.reverse()
    for row in plan:  # a skipped first stage keeps the frequency of the batch's first active stage
        first = next(k for k in row if k is not None)
        row[:] = [first if k is None else k for k in row]
    return plan, best


def _useful(ends: np.ndarray, length: np.ndarray, energy: np.ndarray) -> np.ndarray:
    """Indices of the combinations no other with the same first and last frequency beats in time and energy."""
    order = np.lexsort((energy, length, ends))
    keep = []
    for key in np.unique(ends):
        idx = order[ends[order] == key]
        running = np.minimum.accumulate(energy[idx])
        keep.append(idx[np.concatenate(([True], energy[idx][1:] < running[:-1]))])
    return np.sort(np.concatenate(keep))


def _thin(f_state, delta, cost, prev, pick, grid: float) -> tuple:
    """Per frequency: the cheapest state per grid step of end time and the earliest-ending one, then of those
    the ones that no state ending no later beats in energy."""
    n, low = int(f_state.max()) + 1, float(delta.min())
    steps = int((delta.max() - low) / grid) + 1
    if n * steps > 4_000_000:  # a very wide spread of end times: coarser steps
        grid, steps = grid * (n * steps / 4_000_000), 4_000_001 // n
    key = f_state * steps + np.minimum(np.floor((delta - low) / grid).astype(np.int64), steps - 1)
    cheapest = np.full(n * steps, np.inf)
    np.minimum.at(cheapest, key, cost)
    chosen = np.full(n * steps, -1)
    winners = np.flatnonzero(cost <= cheapest[key])
    chosen[key[winners]] = winners  # one state of the least energy per step
    soonest = np.full(n, np.inf)
    np.minimum.at(soonest, f_state, delta)
    earliest = np.full(n, -1)
    winners = np.flatnonzero(delta <= soonest[f_state])
    earliest[f_state[winners]] = winners
    idx = np.unique(np.concatenate((chosen[chosen >= 0], earliest[earliest >= 0])))
    keep = []
    for f in np.unique(f_state[idx]):
        group = idx[f_state[idx] == f]
        group = group[np.lexsort((cost[group], delta[group]))]
        running = np.minimum.accumulate(cost[group])
        keep.append(group[np.concatenate(([True], cost[group][1:] < running[:-1]))])
    keep = np.concatenate(keep)
    return f_state[keep], delta[keep], cost[keep], prev[keep], pick[keep]


def simulate_jobs(jobs: Sequence[Job], stages: Sequence[str], costs, model: EnergyModel, deadline_s: float,
                  policies: Sequence[str], pipeline: str, profile: Optional[dict] = None,
                  exits: Optional[dict] = None) -> dict:
    """Every policy over the jobs; ``profile`` maps (stage, num_images) -> top-frequency seconds that eenet
    starts from (what a recorded trace gives a device before its first batch); ``exits``: a multi-exit pipeline's
    exit table (its manifest's), which eenet predicts an image's exit from."""
    if not jobs:
        raise DvfsError("Expected a workload with at least one image. Received none")
    dur = durations(jobs, stages, costs, model.frequencies_khz)
    horizon = max(job.arrivals_s[-1] for job in jobs) + deadline_s
    num_images = sum(len(job.arrivals_s) for job in jobs)
    results = {}
    for name in policies:
        if name == ORACLE:
            plan, planned = oracle_plan(jobs, dur, model, deadline_s, horizon)
            policy = _Schedule(plan, stages)
        else:
            policy = named_policy(name)
        results[policy.name] = replay(policy, model, deadline_s, pipeline, stages, jobs, dur, horizon_s=horizon,
                                      exit_table=exits, profile=profile)
        if name == ORACLE:
            results[name]["planned_energy_j"] = planned / num_images
    compare_to_references(results)
    top = top_finishes(jobs, dur)
    return {"policies": results, "num_images": num_images, "num_batches": len(jobs),
            "unavoidable_miss_rate": image_misses(jobs, top, deadline_s) / num_images,
            "top_frequency_batch_ms": {"median": float(np.median(dur[:, :, -1].sum(1))) * 1e3,
                                       "max": float(dur[:, :, -1].sum(1).max()) * 1e3},
            "top_frequency_ms_per_image": float(dur[:, :, -1].sum() / num_images) * 1e3,
            "busy_share_at_top": float(dur[:, :, -1].sum() / horizon), "horizon_ms": horizon * 1e3}
