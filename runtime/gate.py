"""Softmax, entropy and BranchyNet's early-exit test, in float64 on dequantized logits; the class and its
probability from raw one-byte scores, with the same numbers as from their dequantized values."""

from __future__ import annotations

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
    top = _max(raw, axis=-1, keepdims=True)
    return 1.0 / _sum(exp_table[top.view(np.uint8), raw.view(np.uint8)], axis=-1)


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
