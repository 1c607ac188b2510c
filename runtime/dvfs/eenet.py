"""EENet: predict the work a batch still needs and set the frequency that meets its deadline at the least energy.

A batch (one image is a batch of one) runs its pipeline's stages in order; after each stage the images going on are
known (an early exit's gate has decided), and so are the batches queued behind it (size, and deadline from each one's
oldest image). Per pipeline and stage the policy learns the cycles (seconds × kHz) per number of images and the share
of images going on; before each stage it predicts the work left (this stage, the rest of the batch, every queued
batch), each part with its deadline.

Known work W due by T costs least at the constant speed W/T, or a mix of the two operating points that bracket it on
the lower convex hull of energy per cycle against time per cycle (energy per cycle grows with f; points off the hull
never pay). So the policy takes s = max over the deadlines of (work due by it) / (time to it) and runs the next stage
at the lower bracketing point when the work left after it still fits at the upper one, else at the upper one; one
image alone is planned by ``exit_plan.next_frequency``. Predictions grow by (1 + margin): a miss raises the margin,
met deadlines lower it. A cycle costs (P(f) − P_idle) / f when arrivals leave the board idle (running slower only
replaces idle time), P(f) / f back to back (the next batch arrives when this one answers: no idle to fill).
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from cbnet_tl.runtime.dvfs.exit_plan import Costs, binomial_quantile, efficient_frequencies, next_frequency
from cbnet_tl.runtime.dvfs.policy import DvfsContext, Policy, PolicyKind

PERSIST = 3  # decisions in a row that want the same other frequency before a switch that does not pay at once
FORGET = 0.005  # the weight an image's exit loses per image seen after it, in the learned shares


class _PipelineState:
    def __init__(self):
        self.order: list = []  # stages in the order a batch runs them
        self.costs: dict = {}
        self.went_on: dict = {}  # stage -> [images that ran it, images that ran the stage before], decayed
        self.after: dict = {}  # exit stage -> {"edges", "go_on"}: the exit table's shares by the confidence seen

    def predicted(self, seen, stages: list) -> Optional[list]:
        """``go_on`` for ``stages`` (the next one first) from the exit table, given ``seen`` = (exit, confidence) of
        the one image going on; None when the table has nothing for it."""
        if seen is None or seen[0] not in self.after:
            return None
        exit_stage, confidence = seen
        table = self.after[exit_stage]
        shares = table["go_on"][int(np.searchsorted(table["edges"], confidence, side="right"))]
        if exit_stage not in self.order or self.order.index(exit_stage) + 1 >= len(self.order) or \
                stages[0] != self.order[self.order.index(exit_stage) + 1] or len(shares) != len(stages):
            return None
        return [1.0] + [float(s) for s in shares[1:]]

    def share(self, stage: str) -> float:
        """The share of the previous stage's images that run ``stage``, with one image that did as a prior: 1
        before any is seen, never quite 0 or 1 (a share seen as 0 in a few images is not certain)."""
        ran, offered = self.went_on.get(stage, (0.0, 0.0))
        return (ran + 1.0) / (offered + 1.0)

    def add_cost(self, stage: str, num_images: int, kcycles: float, smoothing: float) -> None:
        if stage not in self.costs:
            self.costs[stage] = Costs(smoothing)
            self.order.append(stage)
        self.costs[stage].add(int(num_images), kcycles)


class EENetPolicy(Policy):
    name = PolicyKind.EENET.value

    def __init__(self, margin: float = 0.02, miss_step: float = 0.1, margin_decay: float = 0.01,
                 smoothing: float = 0.2):
        self.min_margin, self.miss_step, self.margin_decay, self.smoothing = margin, miss_step, margin_decay, smoothing

    def bind(self, context: DvfsContext) -> None:
        super().bind(context)
        self.model = model = context.model
        self.credit_w = 0.0 if context.back_to_back else model.idle_w  # the power running slower does not add
        self.margin = self.min_margin
        self.levels = efficient_frequencies(model, self.credit_w)
        self._pipelines: dict = {}
        self._pipe, self._current = _PipelineState(), model.top_khz
        self._budget = self._lateness = 0.0
        self._queue, self._previous_count = (), 0
        self._wanted, self._streak = self._current, 0
        self._start, self._gap_streak = self._current, 0
        self._seen = None  # (exit stage, confidence) the one image of the batch going on had there
        self._idle: Optional[float] = None  # the idle time before a batch: smoothed, and never above the last one

    # what is known before the first batch ---------------------------------------------------------
    def learn(self, pipeline, stage, num_images, seconds, khz):
        self._pipelines.setdefault(pipeline, _PipelineState()).add_cost(stage, num_images, seconds * khz,
                                                                        self.smoothing)

    def learn_exits(self, pipeline, table, weight: float = 1.0 / FORGET):
        """The exit table's shares as if ``weight`` images had shown them, and its shares by confidence."""
        pipe = self._pipelines.setdefault(pipeline, _PipelineState())
        for stage, share in zip(table["stages"][1:], table["go_on"][1:]):
            pipe.went_on[stage] = (float(share) * weight, weight)
        pipe.after = {stage: {"edges": np.asarray(after["edges"], dtype=np.float64), "go_on": after["go_on"]}
                      for stage, after in table.get("after", {}).items()}

    def on_batch(self, pipeline, num_images, lateness_s, idle_s, queue):
        self._pipe = self._pipelines.setdefault(pipeline, _PipelineState())
        self._budget = self.context.deadline_s  # elapsed_s counts from the oldest image's arrival too
        self._lateness = lateness_s  # the queue's deadlines count from now, the batch's start
        self._queue, self._previous_count = tuple(queue), num_images
        self._seen = None
        self._idle = idle_s if self._idle is None else min(idle_s, self._idle + 0.2 * (idle_s - self._idle))
        return self._current

    def on_confidence(self, stage, confidence):
        self._seen = (stage, float(confidence))

    def on_stage(self, stage, num_images, elapsed_s):
        if num_images > 0:  # else the stage is skipped: nothing to set
            self._current = self._stage_khz(stage, num_images, elapsed_s)
        return self._current

    def on_stage_done(self, stage, num_images, seconds, khz):
        pipe = self._pipe
        if pipe.order and stage != pipe.order[0] and self._previous_count:
            ran, offered = pipe.went_on.get(stage, (0.0, 0.0))
            keep = (1.0 - FORGET) ** self._previous_count  # about the last 1 / FORGET images count
            pipe.went_on[stage] = (ran * keep + num_images, offered * keep + self._previous_count)
        self._previous_count = num_images
        if num_images > 0:
            pipe.add_cost(stage, num_images, seconds * khz, self.smoothing)

    def on_end(self, latency_s):
        missed = latency_s > self.context.deadline_s * (1 + 1e-9)
        self.margin = min(1.0, self.margin + self.miss_step) if missed else max(
            self.min_margin, self.margin - self.margin_decay)
        gap = 0.0 if self.context.back_to_back else (self._idle or 0.0)
        if self._gap_streak and self._start != self._current and gap >= self.model.switch_seconds:
            self._current = self._start  # where the next batch wants to start: switch in the idle gap
        return self._current

    # the prediction -----------------------------------------------------------------------------------
    def _stage_khz(self, stage: str, num_images: int, elapsed_s: float) -> int:
        """The frequency for ``num_images`` images to run ``stage`` (the top while its work is unknown)."""
        pipe, left = self._pipe, self._budget - elapsed_s
        if stage not in pipe.costs:  # never seen: unknown work, run it at the top
            return self.model.top_khz
        index = pipe.order.index(stage)
        if num_images == 1 and not self._queue:  # one image: each exit a coin toss, planned for as such
            single = self._single(index)
            if single is not None:
                start = single(left, True, True) if index == 0 else None
                return self._persist(single(left, True, False), start, single(left, False, False))
        now_cost, rest = pipe.costs[stage].predict(num_images), self._work(num_images, index + 1, cautious=True)
        if rest is None or now_cost is None:
            return self.model.top_khz
        return self._choose(now_cost, rest, left, elapsed_s - self._lateness, index == 0)

    def _work(self, count: float, first: int = 0, cautious: bool = False) -> Optional[float]:
        """Predicted kcycles of a batch's stages from index ``first`` on, ``count`` images having run the one before
        (or being the batch). ``cautious``: plan for as many images going on as all but 0.5% of batches have (the
        current batch), else the expected number (the queue: surprises average out). None: a cost is unknown."""
        pipe, total = self._pipe, 0.0
        for i in range(first, len(pipe.order)):
            stage = pipe.order[i]
            if i > 0:
                share = pipe.share(stage)
                count = binomial_quantile(count, share) if cautious else count * share
            cost = pipe.costs[stage].predict(count)
            if cost is None:
                return None
            total += cost
        return total

    def _single(self, index: int):
        """The exit planner for one image from stage ``index`` on (None while a stage's cost is unknown)."""
        pipe, grow, model = self._pipe, 1.0 + self.margin, self.model
        stages = pipe.order[index:]
        cycles = [pipe.costs[s].predict_high(1) for s in stages]
        if any(c is None for c in cycles):
            return None
        go_on = pipe.predicted(self._seen, stages) or [1.0] + [pipe.share(s) for s in stages[1:]]
        per_kcycle = {f: self._per_kcycle(f) for f in set(self.levels) | {self._current}}

        def choose(time_left: float, free_energy: bool, free_time: bool) -> int:
            return next_frequency([c * grow for c in cycles], go_on, tuple(per_kcycle), per_kcycle,
                                  lambda a, b: model.switch_j(a, b) - self.credit_w * model.switch_seconds,
                                  self._current, time_left, self._budget, model.switch_seconds, free_energy, free_time)
        return choose

    def _choose(self, now_cost: float, rest: float, budget: float, into_batch: float, first_stage: bool) -> int:
        """The next stage's frequency: ``now_cost`` kcycles now, then ``rest`` more of this batch by ``budget`` s from
        now, then the queued batches by theirs. Of the frequencies after which the work left still fits at the top, the
        one of least energy: this stage at f, plus the work left at the speed it then needs (between hull points)."""
        grow, switch = 1.0 + self.margin, self.model.switch_seconds
        due = [(rest, budget)]
        for num_images, seconds in self._queue:
            due.append((due[-1][0] + (self._work(num_images) or 0.0), seconds - into_batch))

        def speed_after(elapsed: float, first: float = 0.0) -> float:
            """The speed (kHz) the work left needs after ``elapsed`` seconds, with room for a switch per batch."""
            need = 0.0
            for k, (work, seconds) in enumerate(due):
                total, room = (work + first) * grow, seconds - elapsed - (switch * (k + 1) if work + first else 0.0)
                if room < 0 or (total > 0 and room == 0):  # what ran already overruns this deadline
                    return math.inf
                need = max(need, total / room if total > 0 else 0.0)
            return need

        top, planned = self.model.top_khz, due[-1][0]  # the planned work: the expected would undercount a speed-up
        if speed_after(0.0, now_cost) > top:
            return top
        best, best_cost, free, free_cost = top, math.inf, top, math.inf
        for f in sorted(set(self.levels) | {self._current}):
            moved = f != self._current
            after = speed_after((switch if moved else 0.0) + now_cost * grow / f)
            if after > top:
                continue
            cost = now_cost * self._per_kcycle(f) + planned * self._per_kcycle_at(after)
            if cost < free_cost:
                free, free_cost = f, cost
            if moved:
                cost += self.model.switch_j(self._current, f) - self.credit_w * switch
            if cost < best_cost:
                best, best_cost = f, cost
        return self._persist(free, free if first_stage else None, best)

    def _persist(self, free: int, start: Optional[int], best: int) -> int:
        """``best``, or ``free`` (the choice were the switch's energy free) once wanted ``PERSIST`` decisions in a row:
        a switch that does not pay within this stage can pay over the stages after it. ``start``: at a batch's first
        stage, its choice were the CPU already there, which ``on_end`` sets in an idle gap when two batches want it."""
        self._streak = self._streak + 1 if free == self._wanted and free != best else 0
        self._wanted = free
        if start is not None:
            self._gap_streak = self._gap_streak + 1 if start == self._start else 0
            self._start = start
        return free if self._streak >= PERSIST else best

    def _per_kcycle_at(self, speed: float) -> float:
        """Energy per kcycle of running at ``speed`` kHz: a mix of the two hull points around it."""
        levels = self.levels
        if speed <= levels[0]:
            return self._per_kcycle(levels[0])
        upper = next((f for f in levels if f >= speed), levels[-1])
        lower = max(f for f in levels if f <= speed) if speed < upper else upper
        if upper == lower:
            return self._per_kcycle(upper)
        share_upper = (1 / lower - 1 / speed) / (1 / lower - 1 / upper)  # time per cycle mixes linearly
        return share_upper * self._per_kcycle(upper) + (1 - share_upper) * self._per_kcycle(lower)

    def _per_kcycle(self, khz: int) -> float:
        return (self.model.active_w(khz) - self.credit_w) / khz
