"""The entropy gate and the choice of canonical easy image."""

from __future__ import annotations

import numpy as np
import pytest

from cbnet_tl.runtime.errors import DataError
from cbnet_tl.runtime.gate import entropy, exits_early, softmax
from cbnet_tl.toolchain.training.train import (
    EasyHardSplit,
    TrainConfig,
    autoencoder_pairs,
    choose_canonical,
    easy_hard_split,
)


def test_entropy_of_uniform_and_one_hot():
    assert entropy(np.full(10, 0.1)) == pytest.approx(np.log(10))
    assert entropy(np.eye(10)[3]) == 0.0


def test_softmax_is_stable_for_large_logits():
    p = softmax(np.array([[1000.0, 0.0, -1000.0]]))
    assert np.isfinite(p).all() and p[0, 0] == pytest.approx(1.0)


def test_gate_is_strictly_below_threshold():
    assert exits_early(np.array([0.01, 0.025, 0.03]), 0.025).tolist() == [True, False, False]


def test_canonical_is_lowest_entropy_correct_easy_image():
    labels = np.array([0, 0, 0, 1, 1])
    predictions = np.array([0, 1, 0, 1, 1])
    entropies = np.array([0.02, 0.001, 0.3, 0.04, 0.01])
    easy = entropies < 0.05
    # index 1 has the lowest entropy but is misclassified; index 2 is hard
    assert choose_canonical(entropies, labels, predictions, easy, 2).tolist() == [0, 4]


def test_canonical_falls_back_when_a_class_has_no_easy_image():
    labels = np.array([0, 1, 1])
    entropies = np.array([0.9, 0.5, 0.7])
    chosen = choose_canonical(entropies, labels, labels.copy(), np.zeros(3, bool), 2)
    assert chosen.tolist() == [0, 1]


def test_every_class_needs_an_image():
    with pytest.raises(DataError, match="Class 2 has no training images"):
        choose_canonical(np.zeros(2), np.array([0, 1]), np.array([0, 1]), np.ones(2, bool), 3)


def test_easy_hard_split_from_logits():
    logits = np.array([[20.0, 0, 0], [1.0, 1.0, 1.0], [0, 15.0, 0], [0, 0, 0.5]])
    split = easy_hard_split(logits, np.array([0, 1, 1, 2]), threshold=0.05, num_classes=3)
    assert split.easy.tolist() == [True, False, True, False]
    assert split.canonical_indices.tolist() == [0, 2, 3]


def test_autoencoder_pairs_follow_the_three_to_one_recipe():
    easy = np.array([True] * 90 + [False] * 10)
    split = EasyHardSplit(np.zeros(100), easy, np.zeros(1, dtype=int))
    pairs = autoencoder_pairs(split, TrainConfig(min_autoencoder_pairs=0), seed=0)
    assert len(pairs) == 40 and (~easy[pairs]).sum() == 10
    pairs = autoencoder_pairs(split, TrainConfig(min_autoencoder_pairs=1000), seed=0)
    assert len(pairs) == 100  # small sets use every image


def test_softmax_entropy_matches_the_two_step_definition():
    from cbnet_tl.runtime.gate import softmax_entropy

    rng = np.random.default_rng(7)
    logits = np.concatenate([rng.normal(0, 3, (200, 10)), [[0.0] * 10, [800.0] + [-800.0] * 9, [5.0] * 10]])
    probabilities, entropies = softmax_entropy(logits)
    assert np.allclose(probabilities, softmax(logits), atol=1e-15)
    assert np.allclose(entropies, entropy(softmax(logits)), atol=1e-12)
    assert entropies[-3] == pytest.approx(np.log(10)) and entropies[-2] == 0.0
