"""Softmax, entropy and BranchyNet's early-exit test, in float64 on dequantized logits."""

from __future__ import annotations

import numpy as np


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


def exits_early(entropies: np.ndarray, threshold: float) -> np.ndarray:
    """True where a sample leaves at the branch: entropy strictly below the threshold."""
    return np.asarray(entropies) < threshold
