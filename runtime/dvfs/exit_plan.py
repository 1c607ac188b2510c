"""One image, several exits: the frequency of least expected energy for the next stage, by dynamic programming.

When a single image runs (a camera frame, a batch of one), whether it goes on after a stage is a coin toss
with the learned share as its odds, so planning for the mean is wrong and planning for the worst case wastes
energy whenever the image exits. ``next_frequency`` minimises the expected energy of the stages left,

    V_i(f_prev, T) = min over f of  c_i · e(f) + switch(f_prev, f) + p_{i+1} · V_{i+1}(f, T − t_i(f))

over the time T left before the deadline, where every choice must leave room to finish the worst case (every
remaining stage runs) at the top frequency. e(f) is the energy per cycle above idle, c_i a stage's cycles,
p_{i+1} the chance that the image runs the next stage. T is a grid of ``GRID`` points up to the deadline;
values between points are interpolated, so a choice is checked again against the exact time left.
"""

from __future__ import annotations

import math

import numpy as np

GRID = 96
NEVER = 1e30  # the energy of a choice that cannot finish in time (finite, so that it interpolates)


def next_frequency(cycles: list, go_on: list, frequencies: tuple, per_kcycle: dict, switch_excess, current: int,
                   time_left: float, deadline: float, switch_s: float) -> int:
    """``cycles``: kcycles of the stages left, this one first (already grown by the margin); ``go_on[i]``: the
    chance stage i runs once stage i-1 has (``go_on[0]`` unused); ``switch_excess(a, b)``: a switch's energy
    beyond idle. Returns the frequency (kHz) for this stage; the top when nothing fits."""
    freqs = np.array(sorted(set(frequencies) | {current}), dtype=np.float64)
    top = freqs[-1]
    grid = np.linspace(0.0, max(deadline, time_left), GRID)
    n = len(freqs)
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
        left = time_left - cycles[0] / f - (switch_s if j != k else 0.0)
        if left < worst[1] - (switch_s if f == top else 0.0):
            continue
        later = go_on[1] * float(np.interp(left, grid, value[j])) if len(cycles) > 1 else 0.0
        cost = cycles[0] * e[j] + swx[k, j] + later
        if cost < best_cost:
            choice, best_cost = int(f), cost
    return choice
