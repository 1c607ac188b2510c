"""``multiexit``'s exit thresholds and EENet's exit table, chosen on held-out images (never on test data).

The build runs every int8 segment on the held-out half of the validation split (``train.json``'s
``validation_indices``: no model was trained on them) through the runtime, and keeps each exit's answer and
confidence (top softmax probability) for every image. An image leaves at the first exit whose confidence reaches
that exit's threshold. Of all threshold pairs from a grid of the confidences' quantiles (and "never"), the chosen
one has the least average MACs per image among those whose accuracy loss against the last exit, on the same
images, stays within ``margin_pt`` points at 95% confidence; among equal costs, the more accurate. The bound is
one-sided and paired: per image the loss is +1 (the last exit right, the image's exit wrong), -1 or 0, and the
bound is its mean plus 1.645 standard errors. The default margin is the 0.5 pt the pipeline promises on new
images. A rule on the mean alone (at most 0.25 pt on the 3,000 held-out Fashion-MNIST images) chose thresholds
that lost 0.51 pt on the test set: among 2,401 pairs the cheapest to pass a noisy test is usually one that was
lucky on these images.

The exit table is what EENet predicts the remaining work from: the share of images that run each stage of those
that ran the one before, and, after each exit an image did not leave at, the same shares by the confidence it
had there (a few bins), so an unsure image is expected to go deeper than a nearly sure one.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from cbnet_tl.runtime.errors import ConfigError
from cbnet_tl.runtime.exits import EXIT_TABLE, EXIT_THRESHOLDS, NEVER

DEFAULT_MARGIN_PT = 0.5
LOSS_BOUND_Z = 1.645  # one-sided 95%: the accuracy loss's upper bound is its mean plus this many standard errors
NUM_CANDIDATES = 48  # thresholds tried per exit: quantiles of its confidences
NUM_BINS = 4  # confidence bins of the exit table


def exit_depths(confidences: np.ndarray, thresholds) -> np.ndarray:
    """The exit (0-based) each image leaves at: the first whose confidence reaches its threshold, else the last."""
    num_exits = len(confidences)
    leaves = np.vstack([confidences[k] >= thresholds[k] for k in range(num_exits - 1)]
                       + [np.ones(confidences.shape[1], bool)])
    return leaves.argmax(axis=0)


def loss_bound(last_correct: np.ndarray, chosen_correct: np.ndarray) -> float:
    """One-sided upper bound (``LOSS_BOUND_Z`` standard errors) on the accuracy lost against the last exit, as a
    fraction, from per-image paired outcomes (True where right)."""
    loss = last_correct.astype(np.float64) - chosen_correct
    n = len(loss)
    spread = float(loss.std(ddof=1)) if n > 1 else 0.0
    return float(loss.mean()) + LOSS_BOUND_Z * spread / np.sqrt(n)


def choose_thresholds(labels: np.ndarray, confidences: np.ndarray, truth: np.ndarray, segment_macs,
                      margin_pt: float = DEFAULT_MARGIN_PT) -> dict:
    """``labels``, ``confidences``: (exits, N) per exit and image; ``segment_macs``: each segment's MACs. Returns
    the pipeline's options: the thresholds and what they gave on these images."""
    if not 0.0 <= margin_pt <= 100.0:
        raise ConfigError(f"Expected an accuracy margin between 0 and 100 points. Received: {margin_pt}")
    num_exits, n = confidences.shape
    if n == 0:
        raise ConfigError("Expected held-out images to choose the exit thresholds on. Received none; build with more "
                          "training images (a validation split of at least a few hundred)")
    correct = labels == truth[None, :]
    cumulative = np.cumsum(np.asarray(segment_macs, dtype=np.float64))
    last = float(correct[-1].mean())
    grids = [np.unique(np.concatenate([np.quantile(confidences[k], np.linspace(0.0, 1.0, NUM_CANDIDATES)), [NEVER]]))
             for k in range(num_exits - 1)]
    best = None
    for thresholds in itertools.product(*grids):
        depth = exit_depths(confidences, thresholds)
        chosen = correct[depth, np.arange(n)]
        bound = loss_bound(correct[-1], chosen)
        if bound > margin_pt / 100 + 1e-12:
            continue
        accuracy = float(chosen.mean())
        cost = float(cumulative[depth].mean())
        key = (cost, -accuracy)
        if best is None or key < best[0]:
            best = (key, thresholds, accuracy, depth, bound)
    (cost, _), thresholds, accuracy, depth, bound = best  # all "never" always qualifies: a loss of 0, bound 0
    return {
        EXIT_THRESHOLDS: [float(t) for t in thresholds], "margin_pt": float(margin_pt),
        "validation_loss_bound_pt": 100 * bound, "loss_bound_z": LOSS_BOUND_Z,
        "segment_macs": [int(m) for m in segment_macs],
        "validation_accuracy": accuracy, "validation_last_exit_accuracy": last,
        "validation_exit_accuracies": [float(c.mean()) for c in correct],
        "validation_exit_shares": [float(np.mean(depth == k)) for k in range(num_exits)],
        "validation_macs_per_image": cost, "validation_macs_share_of_last": cost / float(cumulative[-1]),
        "num_validation": int(n),
    }


def exit_table(confidences: np.ndarray, thresholds, stages, num_bins: int = NUM_BINS) -> dict:
    """EENet's table from held-out images: per stage the share that runs it of those that ran the one before;
    after each exit j an image stayed at, by its confidence there (bins of equal counts), the same shares of
    every stage from j + 2 on."""
    depth = exit_depths(confidences, thresholds)
    num_exits = len(stages)

    def shares(chosen: np.ndarray) -> list:
        out = []
        for k in range(1, num_exits):
            ran_before = int(np.sum(depth[chosen] >= k - 1))
            out.append(float(np.sum(depth[chosen] >= k) / ran_before) if ran_before else 1.0)
        return out

    everyone = np.ones(len(depth), bool)
    table = {"stages": list(stages), "go_on": [1.0] + shares(everyone), "num_images": int(len(depth)), "after": {}}
    for j in range(num_exits - 2):  # after exit j an image stayed: stage j + 1 runs for sure, later ones may
        stayed = depth > j
        if stayed.sum() < num_bins:
            continue
        values = confidences[j][stayed]
        edges = np.unique(np.quantile(values, np.linspace(0, 1, num_bins + 1)[1:-1]))
        bins = np.searchsorted(edges, confidences[j], side="right")
        table["after"][stages[j]] = {
            "edges": [float(e) for e in edges],
            "go_on": [[1.0] + shares(stayed & (bins == b))[j + 1:] for b in range(len(edges) + 1)],
        }
    return table


def multiexit_options(build_dir: Path, images: np.ndarray, truth: np.ndarray, manifest,
                      margin_pt: float = DEFAULT_MARGIN_PT) -> dict:
    """Run the int8 segments of a build on held-out images; return multiexit's options (thresholds, exit table)."""
    from cbnet_tl.runtime.bundle import load_bundle
    from cbnet_tl.runtime.exits import exit_scores
    from cbnet_tl.runtime.pipelines import Pipeline
    from cbnet_tl.runtime.specs import MULTIEXIT_PIPELINE, PIPELINE_SPECS

    spec = PIPELINE_SPECS[MULTIEXIT_PIPELINE]
    bundle = load_bundle(build_dir, precision="int8", models=list(spec.models), manifest=manifest)
    never = {EXIT_THRESHOLDS: [NEVER] * (len(spec.models) - 1)}
    labels, confidences = exit_scores(Pipeline(bundle, spec, options=never), images)
    macs = [manifest.models[m].macs for m in spec.models]
    options = choose_thresholds(labels, confidences, truth, macs, margin_pt)
    options[EXIT_TABLE] = exit_table(confidences, options[EXIT_THRESHOLDS], spec.models)
    return options
