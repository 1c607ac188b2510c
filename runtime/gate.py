"""Softmax, entropy and BranchyNet's early-exit test, in float64 on dequantized logits; the class and its
probability from raw one-byte scores, with the same numbers as from their dequantized values; and the two
gates' tests for one row of raw bytes on Python floats, which defer to the exact computation near the
threshold, so they decide exactly as it does."""

from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np

_max, _sum = np.maximum.reduce, np.add.reduce  # the methods' reductions without their wrappers


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def entropy(probabilities: np.ndarray) -> np.ndarray:
    """Natural-log entropy ``-Σ p ln p`` per row; 0·ln 0 counts as 0."""
    p = np.asarray(probabilities, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p), 0.0)
    return -terms.sum(axis=-1)


def softmax_entropy(logits: np.ndarray) -> tuple:
    """(softmax, entropy) from one pass over the logits: with z = logits − max and S = Σ e^z,
    ln p = z − ln S, so ``-Σ p ln p = ln S − Σ p z`` (no logarithm of a zero probability)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    total = e.sum(axis=-1, keepdims=True)
    p = e / total
    return p, np.maximum(np.log(total[..., 0]) - (p * z).sum(axis=-1), 0.0)


def decide(logits: np.ndarray) -> tuple:
    """(top class, its softmax probability) per row, without forming the whole softmax: with z = logits − max,
    the top probability is 1 / Σ e^z. float32 is plenty for a confidence; the class is exact."""
    z = np.asarray(logits, dtype=np.float32)
    top = z.max(axis=-1, keepdims=True)
    return z.argmax(axis=-1), 1.0 / np.exp(z - top).sum(axis=-1)


def top_probability_bytes(raw: np.ndarray, exp_table: np.ndarray) -> np.ndarray:
    """``decide``'s top probabilities from raw one-byte scores (N, K), the same numbers: each term e^(z − top) of
    the sum is read from ``exp_table`` [top byte, byte] (``tables.exp_difference_table``), then summed in the
    order ``decide`` sums. The class is the raw scores' argmax: dequantizing is increasing (ties included)."""
    codes = raw.view(np.uint8)
    tops = codes[np.arange(len(codes)), raw.argmax(axis=-1)]  # argmax and indexing: cheaper than a ufunc's max
    return 1.0 / _sum(exp_table[tops[:, None], codes], axis=-1)


def exit_gate(logits: np.ndarray, threshold: float) -> tuple:
    """(exits early, top probability) per row of float64 logits: ``exits_early(softmax_entropy(logits)[1],
    threshold)`` and the softmax's largest value, with the same float64 operations. The top probability is
    1 / Σ e^(z − top) exactly: the top term is e^0 = 1."""
    z = logits - _max(logits, axis=-1, keepdims=True)
    e = np.exp(z)
    total = _sum(e, axis=-1, keepdims=True)
    entropies = np.log(total[:, 0]) - _sum(e / total * z, axis=-1)
    # softmax_entropy clips the entropy at 0; for a threshold > 0 the test is the same without the clip
    early = entropies < threshold if threshold > 0 else np.zeros(len(z), dtype=bool)
    return early, 1.0 / total[:, 0]


def top_probability(logits: np.ndarray) -> np.ndarray:
    """``softmax(logits).max(axis=-1)`` in float64 with the same operations (the top term is e^0 = 1)."""
    return 1.0 / _sum(np.exp(logits - _max(logits, axis=-1, keepdims=True)), axis=-1)


def exits_early(entropies: np.ndarray, threshold: float) -> np.ndarray:
    """True where a sample leaves at the branch: entropy strictly below the threshold."""
    return np.asarray(entropies) < threshold


# One row of raw one-byte scores, on Python floats. With d = top byte − byte and s the scale, the exact values are
# e^(−s·d) per term; the computations above work on float32 dequantized values z instead, whose rounding moves
# each z − top by Δz, at most 2·255·s·2^-24 (two values of magnitude ≤ 255·s rounded; their float64 difference
# is exact), and by another 255·s·2^-24 where that difference is taken in float32. A row is decided here when
# its value is farther from the threshold than twice the bound on what that can change, and left to the exact
# computation (None) otherwise.

def _terms(scale: float) -> list:
    return [math.exp(-scale * d) for d in range(256)]


def entropy_row_test(scale: float, threshold: float) -> Callable[[list], Optional[bool]]:
    """row (ints, one-byte scores of scale ``scale``) → exits early (``exits_early(softmax_entropy(·))`` on the
    dequantized row), or None when the entropy is too close to ``threshold`` to tell without that computation.
    The entropy is ln S + M, S = Σ e^(−s·d), M = Σ s·d·e^(−s·d) / S. It moves by Σ p·(z − z̄)·Δz at most, and
    Σ p·|z − z̄| ≤ 2·M (every z − top ≤ 0), so float32 rounding moves it by at most 2·M × the bound on Δz."""
    if threshold <= 0:  # an entropy clipped at 0 is never below it
        return lambda row: False
    exp_terms = _terms(scale)
    weighted = [scale * d * term for d, term in enumerate(exp_terms)]
    per_moment = 2 * (2 * 255 * scale * 2.0 ** -24) * 2  # twice (2·M × the bound on Δz, in float64 exactly)
    log = math.log

    def exits(row: list) -> Optional[bool]:
        top, total, moment = max(row), 0.0, 0.0
        for byte in row:
            total += exp_terms[top - byte]
            moment += weighted[top - byte]
        moment /= total
        entropy, margin = log(total) + moment, per_moment * moment + 1e-12
        return True if entropy < threshold - margin else False if entropy >= threshold + margin else None

    return exits


def confidence_row_test(scale: float, threshold: float) -> Callable[[list], Optional[bool]]:
    """row (ints, one-byte scores of scale ``scale``) → its top probability is below ``threshold`` (as ``decide``
    computes it in float32, compared as ``confidences < threshold``), or None when too close to tell. The top
    term is exactly 1 there; the others, summing to S − 1, each move by at most (3·255·s + 8 (4 ulps of exp))
    ·2^-24, relative; the sum's roundings, the division and the threshold in float32 add 11·2^-24. So c = 1 / S
    moves by at most (11 + (1 − c)·(3·255·s + 8))·2^-24, relative, and a probability is at most 1."""
    exp_terms = _terms(scale)
    per_rest = 2 * (3 * 255 * scale + 8) * 2.0 ** -24  # twice the bounds above
    fixed = 2 * 11 * 2.0 ** -24 + 1e-12

    def below(row: list) -> Optional[bool]:
        top, total = max(row), 0.0
        for byte in row:
            total += exp_terms[top - byte]
        confidence = 1.0 / total
        margin = fixed + per_rest * (1.0 - confidence)
        return True if confidence < threshold - margin else False if confidence >= threshold + margin else None

    return below
