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


def exits_early(entropies: np.ndarray, threshold: float) -> np.ndarray:
    """True where a sample leaves at the branch: entropy strictly below the threshold."""
    return np.asarray(entropies) < threshold
