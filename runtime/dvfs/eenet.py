"""EENet: per-inference DVFS that predicts the remaining work and meets the deadline at the least energy.

It follows the protocol of ``base.Policy``.

- Within an inference it splits the work into the stages every path runs and the tail some paths run
  (BranchyNet's ``main_tail``; a CBNet has no tail). At each decision point it picks, for the work known
  to remain, the frequency of least expected energy whose predicted finish, with the tail at its planned
  frequency, meets the deadline. Predictions use a high quantile of each stage's cost, times (1 + margin).
  A switch is chosen only when its time fits and its energy is repaid.
- Across inferences it learns each stage's cost in cycles (seconds × frequency: an exponentially smoothed
  mean and a tracked upper quantile), how often the tail runs, and whether arrivals leave idle time. From
  these it recalibrates the base frequency and the tail's frequency for the least expected energy. After a
  miss it raises its margin and replans; the margin decays slowly while deadlines are met (about one
  miss in ``miss_step / margin_decay`` inferences at equilibrium).
- Energy of running slower: back to back, the board's idle power keeps running while the inference takes
  longer, so E(f) = P(f)·t(f). With idle gaps between arrivals, running slower only replaces idle time:
  E(f) = (P(f) − P_idle)·t(f) + constant. The power model says which frequency wins; nothing is assumed.
- Batches (``on_batch`` and the other batch events): ``batch_plan.BatchPlanner`` sets the frequency for the rest
  of the batch, and the batches queued behind it, from the images known to go on and every deadline.
  ``learn`` gives it a stage's cost from a profile (a recorded trace) before the first batch; ``learn_exits`` a
  multi-exit pipeline's exit table, so one image's exit is predicted from the confidences seen so far
  (``on_batch_confidence``) rather than from the average share alone.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

from cbnet_tl.runtime.dvfs.base import DvfsContext, Policy, PolicyKind
from cbnet_tl.runtime.dvfs.batch_plan import BatchPlanner
from cbnet_tl.runtime.errors import DvfsError


class _Stage:
    __slots__ = ("mean", "high", "num_runs", "rate")

    def __init__(self):
        self.mean = self.high = self.rate = 0.0
        self.num_runs = 0


class Remaining(NamedTuple):
    """The work known to remain at a decision point, in thousands of cycles (kHz·s)."""

    common_mean: float  # stages every path still runs
    common_high: float  # their tracked upper quantile
    tail_mean: float  # the stages only some paths run (BranchyNet's main_tail)
    tail_high: float
    tail_share: float  # how often the tail runs


class Plan(NamedTuple):
    base_khz: int  # the frequency of the common stages
    tail_khz: int  # the frequency of the tail


class _Pipeline:
    def __init__(self):
        self.order: list = []
        self.stats: dict = {}
        self.count = 0
        self.plan: Optional[Plan] = None
        self.remaining: dict = {}  # decision point (None: the arrival, else a stage) → Remaining
        self.ran: set = set()


class EENetPolicy(Policy):
    name = PolicyKind.EENET.value

    def __init__(self, quantile: float = 0.995, smoothing: float = 0.05, warmup: int = 16, replan_every: int = 64,
                 margin: float = 0.02, miss_step: float = 0.2, margin_decay: float = 0.0002):
        if not 0.5 < quantile < 1 or not 0 < smoothing <= 1 or warmup < 1 or replan_every < 1:
            raise DvfsError("Expected 0.5 < quantile < 1, 0 < smoothing <= 1, warmup >= 1, replan_every >= 1. "
                            f"Received: {quantile}, {smoothing}, {warmup}, {replan_every}")
        self.quantile, self.smoothing, self.warmup, self.replan_every = quantile, smoothing, warmup, replan_every
        self.min_margin, self.miss_step, self.margin_decay = margin, miss_step, margin_decay

    def bind(self, context: DvfsContext) -> None:
        super().bind(context)
        self.margin = self.min_margin
        self._pipelines: dict = {}
        self._pipeline = _Pipeline()
        self._current: Optional[int] = None
        self._idle: Optional[float] = None  # smoothed idle time before an inference
        self._latency: Optional[float] = None
        self._batches = BatchPlanner(context, margin=self.min_margin)

    def learn(self, pipeline: str, stage: str, num_images: int, seconds: float, khz: int) -> None:
        """A stage's cost for a batch of ``num_images`` from a profile, before the first batch (batches only)."""
        self._batches.learn(pipeline, stage, num_images, seconds, khz)

    def learn_exits(self, pipeline: str, table: dict) -> None:
        """A multi-exit pipeline's exit table (its manifest's ``exit_table``, learned on held-out images): the share
        of images going on to each stage as the prior, and those shares by the confidence seen at an exit."""
        self._batches.learn_exits(pipeline, table)

    def on_batch_confidence(self, stage, confidence):
        self._batches.confidence(stage, confidence)

    # batches ------------------------------------------------------------------------------------
    def on_batch(self, pipeline, num_images, lateness_s, idle_s, queue):
        return self._batches.start(pipeline, num_images, lateness_s, queue)

    def on_batch_stage(self, stage, num_images, elapsed_s):
        return self._batches.before_stage(stage, num_images, elapsed_s)

    def on_batch_stage_done(self, stage, num_images, seconds, khz):
        self._batches.stage_done(stage, num_images, seconds, khz)

    def on_batch_end(self, latency_s, queue):
        return self._batches.end(latency_s)

    # events -------------------------------------------------------------------------------------
    def on_begin(self, pipeline, lateness_s, idle_s):
        self._idle = idle_s if self._idle is None else self._idle + 0.05 * (idle_s - self._idle)
        self._pipeline = self._pipelines.setdefault(pipeline, _Pipeline())
        self._pipeline.ran = set()
        return self._choose(None, lateness_s)

    def on_stage(self, stage, elapsed_s):
        return self._choose(stage, elapsed_s)

    def on_stage_done(self, stage, seconds, khz):
        pipe = self._pipeline
        st = pipe.stats.get(stage)
        if st is None:
            st = pipe.stats[stage] = _Stage()
            pipe.order.append(stage)
        if stage in pipe.ran:
            return  # counted once per inference
        pipe.ran.add(stage)
        cycles = seconds * khz  # kHz·s: thousands of cycles
        st.num_runs += 1
        st.mean += max(1.0 / st.num_runs, self.smoothing) * (cycles - st.mean)
        if st.num_runs <= self.warmup:
            st.high = max(st.high, cycles)
        else:  # stochastic quantile tracking: rises τ·step when exceeded, falls (1 − τ)·step otherwise
            step = 0.1 * st.mean
            st.high += step * self.quantile if cycles > st.high else -step * (1 - self.quantile)
            st.high = max(st.high, st.mean)

    def on_end(self, path, latency_s):
        pipe, context = self._pipeline, self.context
        pipe.count += 1
        for stage in pipe.order:
            st = pipe.stats[stage]
            st.rate += max(1.0 / pipe.count, 0.01) * ((stage in pipe.ran) - st.rate)
        self._latency = latency_s if self._latency is None else self._latency + 0.05 * (latency_s - self._latency)
        missed = latency_s > context.deadline_s
        if missed:
            self.margin = min(1.0, self.margin + self.miss_step)
        else:
            self.margin = max(self.min_margin, self.margin - self.margin_decay)
        if pipe.count >= self.warmup and (missed or pipe.plan is None or pipe.count % self.replan_every == 0):
            self._replan(pipe)
        if pipe.plan and self._periodic() and self._current != pipe.plan.base_khz and self._gap() >= self._switch_s():
            self._current = pipe.plan.base_khz  # go back to the base frequency while idle, off the critical path
        return self._current if self._current is not None else context.model.top_khz

    # model --------------------------------------------------------------------------------------
    def _switch_s(self) -> float:
        return self.context.model.switch_seconds

    def _periodic(self) -> bool:
        return self.context.period_s is not None or (self._idle or 0.0) > 0.0

    def _gap(self) -> float:
        if self.context.period_s is not None:
            return self.context.period_s - (self._latency or 0.0)
        return self._idle or 0.0

    def _switch_cost(self, a: int, b: int, idle_credit: float) -> float:
        return 0.0 if a == b else self.context.model.switch_j(a, b) - idle_credit * self._switch_s()

    def _choose(self, key, elapsed_s: float) -> int:
        pipe, model = self._pipeline, self.context.model
        remaining = pipe.remaining.get(key) if pipe.plan else None
        if remaining is None:  # warming up, or a stage never seen: run at the top
            self._current = model.top_khz
            return self._current
        c_mean, c_high, t_high, p = remaining.common_mean, remaining.common_high, remaining.tail_high, remaining.tail_share
        base, tail = pipe.plan.base_khz, pipe.plan.tail_khz
        credit = model.idle_w if self._periodic() else 0.0
        budget, grow, switch = self.context.deadline_s - elapsed_s, 1.0 + self.margin, self._switch_s()
        for tail_at_same in (False, True):
            best, best_cost = None, math.inf
            for f in model.frequencies_khz:
                f_tail = f if tail_at_same else tail
                moved = self._current is not None and f != self._current
                finish = (switch if moved else 0.0) + c_high * grow / f
                if finish > budget or (p > 0 and finish + (switch if f_tail != f else 0.0)
                                       + t_high * grow / f_tail > budget):
                    continue
                cost = (model.active_w(f) - credit) * c_mean / f
                cost += self._switch_cost(self._current, f, credit) if moved else 0.0
                cost += p * self._switch_cost(f, f_tail, credit) + (1 - p) * self._switch_cost(f, base, credit)
                if cost < best_cost:
                    best, best_cost = f, cost
            if best is not None:
                self._current = best
                return best
        # no frequency meets the deadline: finish as early as possible, counting the switch's own time
        self._current = min(model.frequencies_khz, key=lambda f: (switch if f != self._current else 0.0)
                            + (c_high + t_high) / f)
        return self._current

    def _replan(self, pipe: _Pipeline) -> None:
        common = [s for s in pipe.order if pipe.stats[s].num_runs == pipe.count]
        tail = [s for s in pipe.order if s not in common]
        mean = {s: pipe.stats[s].mean for s in pipe.order}
        high = {s: pipe.stats[s].high for s in pipe.order}
        p = max((pipe.stats[s].rate for s in tail), default=0.0)
        t_mean, t_high = sum(mean[s] for s in tail), sum(high[s] for s in tail)
        pipe.remaining = {None: Remaining(sum(mean[s] for s in common), sum(high[s] for s in common), t_mean, t_high, p)}
        for i, stage in enumerate(common):
            rest = common[i:]
            pipe.remaining[stage] = Remaining(sum(mean[s] for s in rest), sum(high[s] for s in rest), t_mean, t_high, p)
        for i, stage in enumerate(tail):
            pipe.remaining[stage] = Remaining(sum(mean[s] for s in tail[i:]), sum(high[s] for s in tail[i:]), 0.0, 0.0, 0.0)
        pipe.plan = self._best_plan(pipe.remaining[None])

    def _best_plan(self, work: Remaining) -> Plan:
        a_mean, a_high, b_mean, b_high, p = work
        model, deadline = self.context.model, self.context.deadline_s
        credit = model.idle_w if self._periodic() else 0.0
        grow, switch = 1.0 + self.margin, self._switch_s()
        switch_in_critical = not self._periodic() or self._gap() < switch  # a switch back delays the next one
        best, best_cost = Plan(model.top_khz, model.top_khz), math.inf
        for fa in model.frequencies_khz:
            for fb in (model.frequencies_khz if p > 0 else (fa,)):
                moved = fa != fb
                easy = (switch if moved and switch_in_critical else 0.0) + a_high * grow / fa
                hard = easy + (switch if moved else 0.0) + b_high * grow / fb
                if easy > deadline or (p > 0 and hard > deadline):
                    continue
                cost = (model.active_w(fa) - credit) * a_mean / fa
                cost += p * ((model.active_w(fb) - credit) * b_mean / fb + 2 * self._switch_cost(fa, fb, credit))
                if cost < best_cost:
                    best, best_cost = Plan(fa, fb), cost
        return best
