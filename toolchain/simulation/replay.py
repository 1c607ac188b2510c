"""The simulator's board: the device's own ``DvfsSession`` over a simulated clock and cpufreq.

Every simulation (``cbnet-tl simulate`` with or without ``--workload``) drives a bound policy through
``replay``: a ``ReplayPipeline`` stands for the pipeline and calls the session's stage hook as
``Pipeline.classify`` does, advancing the clock by each stage's time at the frequency the policy set; a switch
takes the model's switch time on the clock. The energy books are the session's (``DvfsSession.totals``): what
the simulator reports is what the session on a board reports for the same times.

A job is a batch: each image's arrival, the images running each stage, and, for one image of a multi-exit
pipeline, its confidence at each exit. Arrivals are the jobs' own (a camera, a burst, a recorded list, periodic
images: the board idles until each is ready) or back to back (``back_to_back``: each job arrives when the previous
one has answered). The window starts one switch before the first arrival (the policy's first frequency is set
then) and ends at ``horizon_s`` (or the last answer).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Optional, Sequence

import numpy as np

from cbnet_tl.runtime.dvfs.energy import EnergyModel
from cbnet_tl.runtime.dvfs.policy import Policy
from cbnet_tl.runtime.dvfs.session import DvfsSession
from cbnet_tl.runtime.errors import DvfsError
from cbnet_tl.runtime.specs import EXIT_TABLE


@dataclass(frozen=True)
class Job:
    arrivals_s: np.ndarray  # each image's arrival, ascending (ignored back to back)
    counts: tuple  # images that run each stage, in the pipeline's stage order (0: the stage is skipped)
    confidences: Optional[tuple] = None  # one image: its confidence at each stage's exit (None: not an exit)

    @property
    def oldest_s(self) -> float:
        return float(self.arrivals_s[0])

    @property
    def ready_s(self) -> float:
        return float(self.arrivals_s[-1])


class SimClock:
    def __init__(self, now: float = 0.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)


class SimCpufreq:
    """The CPU's frequency as the session sets it: a switch takes the model's switch time on the clock."""

    method = None

    def __init__(self, model: EnergyModel, clock: SimClock, policy_name: str):
        self.frequencies_khz, self.current_khz = model.frequencies_khz, model.top_khz
        self.khz_at_start = model.top_khz  # the session counts the switch to the policy's first frequency
        self.switch_seconds, self.clock, self.policy_name = model.switch_seconds, clock, policy_name
        self.decisions: list = []  # the frequency of each switch, in order

    def set_khz(self, khz: int) -> None:
        if khz not in self.frequencies_khz:
            raise DvfsError(f"Policy {self.policy_name} chose {khz} kHz, not in {list(self.frequencies_khz)}")
        if khz != self.current_khz:
            self.clock.now += self.switch_seconds
            self.current_khz = khz
            self.decisions.append(int(khz))


class ReplayPipeline:
    """Stands for a pipeline whose stages take ``durations[job, stage, frequency]`` seconds (frequencies in the
    model's order); ``job`` is the one the next ``classify`` runs."""

    def __init__(self, name: str, stages: Sequence[str], durations: np.ndarray, jobs: Sequence[Job],
                 cpu: SimCpufreq, exit_table: Optional[dict] = None):
        self.name, self.spec = name, SimpleNamespace(models=tuple(stages))
        self.options = {EXIT_TABLE: exit_table} if exit_table else {}
        self.durations, self.jobs, self.cpu, self.job = durations, jobs, cpu, 0
        self.index = {f: i for i, f in enumerate(cpu.frequencies_khz)}

    def classify(self, images, hook):
        job, stages = self.jobs[self.job], self.spec.models
        hook.begin_inference(self.name)
        for s, (stage, count) in enumerate(zip(stages, job.counts)):
            if not count:  # as a runner: no image reached it, no call
                continue
            hook.before_stage(stage, count)
            seconds = float(self.durations[self.job, s, self.index[self.cpu.current_khz]])
            self.cpu.clock.now += seconds
            hook.after_stage(stage, seconds)
            goes_on = s + 1 < len(stages) and job.counts[s + 1]
            if job.confidences is not None and goes_on and job.confidences[s] is not None:
                hook.exit_confidence(stage, job.confidences[s])
        hook.end_inference("")


def replay(policy: Policy, model: EnergyModel, deadline_s: float, pipeline: str, stages: Sequence[str],
           jobs: Sequence[Job], durations: np.ndarray, *, back_to_back: bool = False,
           horizon_s: Optional[float] = None, exit_table: Optional[dict] = None,
           profile: Optional[dict] = None, start_s: Optional[float] = None) -> dict:
    """Drive an unbound policy through the jobs on the device session; energy, misses, latency, time per OPP.
    ``profile`` maps (stage, num_images) to seconds at the top frequency: what the policy knows before the first
    job (a recorded trace); ``exit_table``: the multi-exit pipeline's, which the session hands to the policy;
    ``start_s``: when the session starts (default: one switch before the first arrival)."""
    clock = SimClock(-model.switch_seconds if start_s is None else start_s)
    cpu = SimCpufreq(model, clock, policy.name)
    session = DvfsSession(policy, cpu, model, deadline_s, burst=not back_to_back, clock=clock, sleep=clock.sleep)
    for (stage, count), seconds in (profile or {}).items():
        policy.learn(pipeline, stage, count, seconds, model.top_khz)
    runner = ReplayPipeline(pipeline, stages, durations, jobs, cpu, exit_table)
    oldest = np.array([job.oldest_s for job in jobs])
    arrived, finishes = [], np.empty(len(jobs))
    with session:
        for j, job in enumerate(jobs):
            if back_to_back:
                arrivals = np.array([clock.now])
            else:
                arrivals = job.arrivals_s
                session.idle(job.ready_s - clock.now)
                clock.now = max(clock.now, job.ready_s)
            last = int(np.searchsorted(oldest, clock.now, side="right"))
            queue = [(int(np.searchsorted(jobs[k].arrivals_s, clock.now, side="right")), clock.now - jobs[k].oldest_s)
                     for k in range(j + 1, last)] if not back_to_back else []
            runner.job = j
            session.classify_batch(runner, None, (clock.now - arrivals).tolist(), queue)
            arrived.append(arrivals)
            finishes[j] = clock.now
        if horizon_s is not None and horizon_s > clock.now:
            session.idle(horizon_s - clock.now)
            clock.now = horizon_s
    num_images = session.num_inferences
    joules = session.modelled_joules()
    latencies = np.concatenate([finish - a for a, finish in zip(arrived, finishes)]) * 1e3
    late = deadline_s * (1 + 1e-9)
    return {"energy_j": joules / num_images, "energy_j_total": joules, "misses": session.num_misses,
            "miss_rate": session.num_misses / num_images,
            "batch_misses": int(sum(f - a[0] > late for a, f in zip(arrived, finishes))),
            "latency_ms_median": float(np.median(latencies)), "latency_ms_p95": float(np.percentile(latencies, 95)),
            "time_at_frequency": {str(k // 1000): round(v, 9) for k, v in sorted(session.busy_seconds.items())
                                  if v > 0},
            "switches": len(cpu.decisions), "decisions": cpu.decisions}
