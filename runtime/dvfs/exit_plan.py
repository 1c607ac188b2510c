"""What EENet predicts with: costs per number of images, the images going on, the efficient operating points, and,
for one image with several exits, the frequency of least expected energy for the next stage (``next_frequency``).

Whether a single image (a camera frame, a batch of one) goes on after a stage is a coin toss with the learned share
(or the exit table's share at the confidence seen) as its odds: planning for the mean is wrong, and planning for the
worst case wastes energy whenever the image exits. ``next_frequency`` minimises, by dynamic programming, the expected
energy of the stages left,

    V_i(f_prev, T) = min over f of  c_i · e(f) + switch(f_prev, f) + p_{i+1} · V_{i+1}(f, T − t_i(f))

over the time T left before the deadline, where every choice must leave room to finish the worst case (every remaining
stage runs) at the top frequency. e(f) is the energy per cycle above idle, c_i a stage's cycles, p_{i+1} the chance
that the image runs the next stage. T is a grid of ``GRID`` points up to the deadline; values between points are
interpolated, so a choice is checked again against the exact time left.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

GRID = 96
QUANTILE = 0.995  # the images not yet gated that a batch plans for: all but 0.5% of batches have no more
NEVER = 1e30  # the energy of a choice that cannot finish in time (finite, so that it interpolates)


def next_frequency(cycles: list, go_on: list, frequencies: tuple, per_kcycle: dict, switch_excess, current: int,
                   time_left: float, deadline: float, switch_s: float, free_energy: bool = False,
                   free_time: bool = False) -> int:
    """``cycles``: kcycles of the stages left, this one first (already grown by the margin); ``go_on[i]``: the
    chance stage i runs once stage i-1 has (``go_on[0]`` unused); ``switch_excess(a, b)``: a switch's energy
    beyond idle. ``free_energy``: a switch now costs its time but not its energy; ``free_time`` as well: the choice
    were the CPU already at each frequency. Returns the frequency (kHz) for this stage; the top when nothing fits."""
    freqs = np.array(sorted(set(frequencies) | {current}), dtype=np.float64)
    top, n = freqs[-1], len(freqs)
    grid = np.linspace(0.0, max(deadline, time_left), GRID)
    swx = np.array([[0.0 if a == b else switch_excess(int(a), int(b)) for b in freqs] for a in freqs])
    e = np.array([per_kcycle[int(f)] for f in freqs])
    # the least time the stages from i on can take: all at the top, with one switch to it
    worst = [sum(cycles[i:]) / top + (switch_s if i < len(cycles) else 0.0) for i in range(len(cycles) + 1)]
    value = np.zeros((n, GRID))  # V after the last stage
    for i in range(len(cycles) - 1, 0, -1):
        best = np.full((n, GRID), NEVER)
        for j, f in enumerate(freqs):
            moved = (np.arange(n) != j)[:, None]
            left = grid[None, :] - cycles[i] / f - switch_s * moved
            ok = left >= worst[i + 1] - (switch_s if f == top else 0.0)
            later = go_on[i + 1] * np.interp(left, grid, value[j]) if i + 1 < len(cycles) else 0.0
            cost = np.where(ok, cycles[i] * e[j] + swx[:, j][:, None] + later, NEVER)
            best = np.minimum(best, cost)
        value = best
    choice, best_cost = int(top), math.inf
    k = int(np.searchsorted(freqs, current))
    for j, f in enumerate(freqs):
        left = time_left - cycles[0] / f - (switch_s if j != k and not free_time else 0.0)
        if left < worst[1] - (switch_s if f == top else 0.0):
            continue
        later = go_on[1] * float(np.interp(left, grid, value[j])) if len(cycles) > 1 else 0.0
        cost = cycles[0] * e[j] + (swx[k, j] if not free_energy else 0.0) + later
        if cost < best_cost:
            choice, best_cost = int(f), cost
    return choice


def binomial_quantile(count: float, share: float, quantile: float = QUANTILE) -> int:
    """The least k with P(Binomial(ceil(count), share) <= k) >= quantile."""
    n = math.ceil(count - 1e-9)
    cumulative = 0.0
    for k in range(n + 1):
        cumulative += math.comb(n, k) * share ** k * (1 - share) ** (n - k)
        if cumulative >= quantile:
            return k
    return n


def efficient_frequencies(model, credit_w: Optional[float] = None) -> tuple:
    """The OPPs (kHz, ascending) on the lower convex hull of energy per cycle above ``credit_w`` (default: the idle
    power) against time per cycle, from the most efficient one up to the top: the only ones a least-energy schedule
    mixes."""
    credit = model.idle_w if credit_w is None else credit_w
    points = sorted(((1.0 / f, (model.active_w(f) - credit) / f, f) for f in model.frequencies_khz))
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


class Costs:
    """One stage's cost in thousands of cycles per number of images: smoothed, and a tracked upper quantile."""

    __slots__ = ("by_count", "high", "runs", "smoothing")
    WARMUP, QUANTILE = 16, 0.995

    def __init__(self, smoothing: float):
        self.by_count, self.high, self.runs, self.smoothing = {}, {}, {}, smoothing

    def add(self, num_images: int, kcycles: float) -> None:
        old = self.by_count.get(num_images)
        mean = self.by_count[num_images] = kcycles if old is None else old + self.smoothing * (kcycles - old)
        runs = self.runs[num_images] = self.runs.get(num_images, 0) + 1
        high = self.high.get(num_images, kcycles)
        if runs <= self.WARMUP:
            high = max(high, kcycles)
        else:  # stochastic quantile tracking: up τ·step when exceeded, down (1 − τ)·step otherwise
            step = 0.1 * mean
            high += step * self.QUANTILE if kcycles > high * (1 + 1e-9) else -step * (1 - self.QUANTILE)
        self.high[num_images] = max(high, mean)

    def predict(self, num_images: float) -> Optional[float]:
        return per_count(self.by_count, num_images)

    def predict_high(self, num_images: float) -> Optional[float]:
        """The cost that all but about 0.5% of runs stay under (the smoothed one until sizes are seen)."""
        return per_count({**self.by_count, **self.high}, num_images)
