"""EENet for batches: the frequency for the rest of a batch, and the batches queued behind it, from their deadlines.

A batch runs its pipeline's stages one after another; after each stage the number of images that go on is
known (an early exit's gate has decided), and the batches waiting behind it are known by their size and their
deadline (counted from the arrival of each one's oldest image). The planner keeps, per pipeline and stage, the
stage's cost in cycles (seconds × kHz) per number of images, and the share of images that go on to each stage.
Before each stage it predicts the work left: this stage (its count known), the rest of the batch (counts
predicted from the shares) and every queued batch, each with its deadline.

The least-energy way to do a known amount of work W by a deadline T on a CPU whose energy per cycle above
idle grows with the frequency is the constant speed W/T, or, between two operating points, a mix of the two
that bracket it (points off the lower convex hull of energy per cycle against time per cycle never pay).
So the planner takes the required speed s = max over the deadlines of (work due by it) / (time to it), and
runs the next stage at the lower bracketing point when the work left after it still fits at the upper one,
else at the upper one: over a batch the mix approaches s. Predictions are multiplied by (1 + margin); a miss
raises the margin, met deadlines lower it again. Idle time is idle: the board draws idle power whatever the
frequency, so energy per cycle above idle, (P(f) − P_idle) / f, is what a frequency costs.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from cbnet_tl.runtime.dvfs.base import DvfsContext
from cbnet_tl.runtime.dvfs.exit_plan import next_frequency


PERSIST = 3  # decisions in a row that want the same other frequency before a switch that does not pay at once
FORGET = 0.005  # the weight an image's exit loses per image seen after it, in the learned shares
QUANTILE = 0.995  # the images not yet gated that a batch plans for: all but 0.5% of batches have no more


def binomial_quantile(count: float, share: float, quantile: float) -> int:
    """The least k with P(Binomial(ceil(count), share) <= k) >= quantile."""
    n = math.ceil(count - 1e-9)
    cumulative = 0.0
    for k in range(n + 1):
        cumulative += math.comb(n, k) * share ** k * (1 - share) ** (n - k)
        if cumulative >= quantile:
            return k
    return n


def efficient_frequencies(model) -> tuple:
    """The OPPs (kHz, ascending) on the lower convex hull of energy per cycle above idle against time per cycle,
    from the most efficient one up to the top: the only ones a least-energy schedule mixes."""
    points = sorted(((1.0 / f, (model.active_w(f) - model.idle_w) / f, f) for f in model.frequencies_khz))
    hull: list = []  # from the top frequency (least time per cycle) towards the most efficient one
    for point in points:
        while len(hull) >= 2:
            (x1, y1, _), (x2, y2, _) = hull[-2], hull[-1]
            if (y2 - y1) * (point[0] - x1) >= (point[1] - y1) * (x2 - x1):  # hull[-1] is not below the chord
                hull.pop()
            else:
                break
        hull.append(point)
    best = min(range(len(hull)), key=lambda i: hull[i][1])
    return tuple(sorted(f for _, _, f in hull[: best + 1]))


class _Costs:
    """One stage's cost in thousands of cycles per number of images, smoothed."""

    __slots__ = ("by_count", "smoothing")

    def __init__(self, smoothing: float):
        self.by_count: dict = {}
        self.smoothing = smoothing

    def add(self, num_images: int, kcycles: float) -> None:
        old = self.by_count.get(num_images)
        self.by_count[num_images] = kcycles if old is None else old + self.smoothing * (kcycles - old)

    def predict(self, num_images: float) -> Optional[float]:
        return per_count(self.by_count, num_images)


def per_count(by_count: dict, num_images: float) -> Optional[float]:
    """A cost for ``num_images`` from costs known per number of images: the known one, else linear between the
    nearest known sizes (beyond them, along the line through the two nearest; one size known: ∝ images)."""
    if num_images <= 0:
        return 0.0
    if num_images in by_count:
        return by_count[num_images]
    if not by_count:
        return None
    sizes = np.array(sorted(by_count), dtype=np.float64)
    values = np.array([by_count[int(s)] for s in sizes])
    if len(sizes) == 1:
        return float(values[0] * num_images / sizes[0])
    if sizes[0] <= num_images <= sizes[-1]:
        return float(np.interp(num_images, sizes, values))
    i, k = (0, 1) if num_images < sizes[0] else (-2, -1)
    slope = (values[k] - values[i]) / (sizes[k] - sizes[i])
    return float(max(0.0, values[i] + slope * (num_images - sizes[i])))


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


class BatchPlanner:
    """The per-batch half of ``EENetPolicy`` (see the module docstring)."""

    def __init__(self, context: DvfsContext, margin: float = 0.02, miss_step: float = 0.1,
                 margin_decay: float = 0.01, smoothing: float = 0.2):
        self.context, self.model = context, context.model
        self.min_margin, self.miss_step, self.margin_decay, self.smoothing = margin, miss_step, margin_decay, smoothing
        self.margin = margin
        self.levels = efficient_frequencies(self.model)
        self._pipelines: dict = {}
        self._pipe = _PipelineState()
        self._current = self.model.top_khz
        self._budget = 0.0
        self._queue: tuple = ()
        self._previous_count = 0
        self._wanted, self._streak = self._current, 0
        self._seen = None  # (exit stage, confidence) the one image of the batch going on had there

    # what is known of the costs ----------------------------------------------------------------
    def learn(self, pipeline: str, stage: str, num_images: int, seconds: float, khz: int) -> None:
        """A stage's cost: from a run, or from a profile (a trace) before the first batch."""
        pipe = self._pipelines.setdefault(pipeline, _PipelineState())
        if stage not in pipe.costs:
            pipe.costs[stage] = _Costs(self.smoothing)
            pipe.order.append(stage)
        pipe.costs[stage].add(int(num_images), seconds * khz)

    def learn_exits(self, pipeline: str, table: dict, weight: float = 1.0 / FORGET) -> None:
        """A multi-exit pipeline's exit table: its shares as if ``weight`` images had shown them, and its shares
        by confidence for single images (``confidence``)."""
        pipe = self._pipelines.setdefault(pipeline, _PipelineState())
        for stage, share in zip(table["stages"][1:], table["go_on"][1:]):
            pipe.went_on[stage] = (float(share) * weight, weight)
        pipe.after = {stage: {"edges": np.asarray(after["edges"], dtype=np.float64), "go_on": after["go_on"]}
                      for stage, after in table.get("after", {}).items()}

    def confidence(self, stage: str, confidence: float) -> None:
        self._seen = (stage, float(confidence))

    def _work(self, count: float, first: int = 0, cautious: bool = False) -> Optional[float]:
        """Predicted kcycles of a batch's stages from index ``first`` on; ``count`` images ran the stage before it
        (or, from the first stage, the batch has ``count`` images). ``cautious``: plan for as many images going
        on as happen in all but ``1 - QUANTILE`` of batches (the current batch), else for the expected number
        (the queue: its batches' surprises average out). None: a stage's cost is not known yet."""
        pipe, total = self._pipe, 0.0
        for i in range(first, len(pipe.order)):
            stage = pipe.order[i]
            if i > 0:
                share = pipe.share(stage)
                count = binomial_quantile(count, share, QUANTILE) if cautious else count * share
            cost = pipe.costs[stage].predict(count)
            if cost is None:
                return None
            total += cost
        return total

    # events --------------------------------------------------------------------------------------
    def start(self, pipeline: str, num_images: int, lateness_s: float, queue: tuple) -> int:
        self._pipe = self._pipelines.setdefault(pipeline, _PipelineState())
        self._budget = self.context.deadline_s  # the stages' elapsed_s count from the oldest image's arrival too
        self._lateness = lateness_s  # the queue's deadlines count from now, the batch's start
        self._queue, self._previous_count = tuple(queue), num_images
        self._seen = None
        return self._current

    def before_stage(self, stage: str, num_images: int, elapsed_s: float) -> int:
        pipe = self._pipe
        if num_images <= 0:  # the stage is skipped: nothing to set
            return self._current
        if stage not in pipe.costs:  # never seen: unknown work, run it at the top
            self._current = self.model.top_khz
            return self._current
        index = pipe.order.index(stage)
        now_cost = pipe.costs[stage].predict(num_images)
        if num_images == 1 and not self._queue:  # one image: each exit a coin toss, planned for as such
            single = self._single(index)
            if single is not None:
                self._current = single(self._budget - elapsed_s)
                return self._current
        rest = self._work(num_images, index + 1, cautious=True)
        expected = self._work(num_images, index + 1)
        if rest is None or expected is None or now_cost is None:
            self._current = self.model.top_khz
            return self._current
        self._current = self._choose(now_cost, rest, expected, self._budget - elapsed_s,
                                     elapsed_s - self._lateness)
        return self._current

    def stage_done(self, stage: str, num_images: int, seconds: float, khz: int) -> None:
        pipe = self._pipe
        if pipe.order and stage != pipe.order[0] and self._previous_count:
            ran, offered = pipe.went_on.get(stage, (0.0, 0.0))
            keep = (1.0 - FORGET) ** self._previous_count  # about the last 1 / FORGET images count
            pipe.went_on[stage] = (ran * keep + num_images, offered * keep + self._previous_count)
        self._previous_count = num_images
        if num_images > 0:
            if stage not in pipe.costs:
                pipe.costs[stage] = _Costs(self.smoothing)
                pipe.order.append(stage)
            pipe.costs[stage].add(num_images, seconds * khz)

    def _single(self, index: int):
        """The exit planner for one image from stage ``index`` on (None while a stage's cost is unknown)."""
        pipe, grow = self._pipe, 1.0 + self.margin
        stages = pipe.order[index:]
        cycles = [pipe.costs[s].predict(1) for s in stages]
        if any(c is None for c in cycles):
            return None
        go_on = pipe.predicted(self._seen, stages) or [1.0] + [pipe.share(s) for s in stages[1:]]
        model = self.model
        per_kcycle = {f: self._per_kcycle(f) for f in set(self.levels) | {self._current}}

        def choose(time_left: float) -> int:
            return next_frequency([c * grow for c in cycles], go_on, tuple(per_kcycle), per_kcycle,
                                  lambda a, b: model.switch_j(a, b) - model.idle_w * model.switch_seconds,
                                  self._current, time_left, self._budget, model.switch_seconds)

        return choose

    def end(self, latency_s: float) -> int:
        missed = latency_s > self.context.deadline_s * (1 + 1e-9)
        self.margin = min(1.0, self.margin + self.miss_step) if missed else max(
            self.min_margin, self.margin - self.margin_decay)
        return self._current

    # the choice ------------------------------------------------------------------------------------
    def _choose(self, now_cost: float, rest: float, expected_rest: float, budget: float, into_batch: float) -> int:
        """The frequency of the next stage: ``now_cost`` kcycles now, then ``rest`` more of this batch (planned
        for; ``expected_rest`` on average) by ``budget`` seconds from now, then the queued batches by theirs.
        Of the frequencies after which the work left still fits at the top, the one of least expected energy:
        this stage at f, plus the work left at the speed it then needs (on the hull, between two points)."""
        grow, switch = 1.0 + self.margin, self.model.switch_seconds
        due, expected = [(rest, budget)], expected_rest
        for num_images, seconds in self._queue:
            work = self._work(num_images) or 0.0
            due.append((due[-1][0] + work, seconds - into_batch))
            expected += work

        def speed_after(elapsed: float, first: float = 0.0) -> float:
            """The speed (kHz) the work left needs after ``elapsed`` seconds, with room for a switch per batch."""
            need = 0.0
            for k, (work, seconds) in enumerate(due):
                total, room = (work + first) * grow, seconds - elapsed - (switch * (k + 1) if work + first else 0.0)
                if room < 0 or (total > 0 and room == 0):  # what ran already overruns this deadline
                    return math.inf
                need = max(need, total / room if total > 0 else 0.0)
            return need

        top, planned = self.model.top_khz, due[-1][0]  # the work the speed after is for (not the expected:
        if speed_after(0.0, now_cost) > top:          # its cost would then undercount a speed-up later)
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
                cost += self.model.switch_j(self._current, f) - self.model.idle_w * switch
            if cost < best_cost:
                best, best_cost = f, cost
        # A switch that does not pay within this stage can pay over the stages after it, the frequency staying set:
        # make it when the switch cost is the only reason against it, decision after decision.
        self._streak = self._streak + 1 if free == self._wanted and free != best else 0
        self._wanted = free
        return free if self._streak >= PERSIST else best

    def _per_kcycle_at(self, speed: float) -> float:
        """Energy per kcycle above idle of running at ``speed`` kHz: a mix of the two hull points around it."""
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
        return (self.model.active_w(khz) - self.model.idle_w) / khz
