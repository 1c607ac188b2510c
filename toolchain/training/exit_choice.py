"""``multiexit``'s exit thresholds and EENet's exit table, chosen on held-out images (never on test data).

The build runs every int8 segment on the held-out half of the validation split (``train.json``'s
``validation_indices``: no model was trained on them) through the runtime, and keeps each exit's answer and
confidence (top softmax probability) for every image. An image leaves at the first exit whose confidence reaches
that exit's threshold (the runtime's rule, ``exits.exit_depths``, which this module calls); the thresholds of every
exit but the last come from a grid of their confidences' quantiles (and ``EVERY_IMAGE_GOES_ON``: never leave).

The promise is the accuracy on new images: at most ``margin_pt`` points below the last exit's, at 95%. Choosing
the cheapest pair whose bound passes on the same images the bound is computed on breaks that promise: among
thousands of pairs the cheapest to pass is usually one that was lucky on those images, and it loses more than the
margin on a test set (RESULTS.md has a Fashion-MNIST case). So the held-out images are split in two, alternately:

- on the *selection* half, the pairs that cost the least for their loss (each cheaper one loses more) are put
  in order from the whole path down to the cheapest;
- on the *certification* half they are tested in that order, and the walk stops at the first that fails; the
  last that passed is chosen. Testing in a fixed order set on other images needs no correction for the number
  of pairs (fixed-sequence testing, as in Learn-then-Test risk control).

The test: per image the loss is +1 (the last exit right, the image's exit wrong), -1 or 0; its one-sided upper
bound is the mean plus 1.645 standard errors, where the error is that of the certification mean plus, when
``num_new_images`` is given (the build gives its test set's size), that of a new sample of that size, so the
bound is for what a check on such a sample will see rather than for the mean over all images. Costs are MACs
per image; among equal costs the more accurate.

The exit table is what EENet predicts the remaining work from: the share of images that run each stage of those
that ran the one before, and, after each exit an image did not leave at, the same shares by the confidence it
had there (a few bins), so an unsure image is expected to go deeper than a nearly sure one.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Optional

import numpy as np

from cbnet_tl.runtime.errors import ConfigError
from cbnet_tl.runtime.exits import exit_depths  # the runtime's exit rule: the build chooses with the device's
from cbnet_tl.runtime.specs import EVERY_IMAGE_GOES_ON, EXIT_TABLE, EXIT_THRESHOLDS

DEFAULT_MARGIN_PT = 0.5
LOSS_BOUND_Z = 1.645  # one-sided 95%: the accuracy loss's upper bound is its mean plus this many standard errors
NUM_CANDIDATES = 48  # thresholds tried per exit: quantiles of its confidences
NUM_BINS = 4  # confidence bins of the exit table


def loss_bound(last_correct: np.ndarray, chosen_correct: np.ndarray, num_new_images: Optional[int] = None) -> float:
    """One-sided upper bound (``LOSS_BOUND_Z`` standard errors) on the accuracy lost against the last exit, as a
    fraction, from per-image paired outcomes (True where right); with ``num_new_images``, on the loss a new sample
    of that many images will show (the spread of both means)."""
    loss = last_correct.astype(np.float64) - chosen_correct
    n = len(loss)
    spread = float(loss.std(ddof=1)) if n > 1 else 0.0
    variance_scale = 1.0 / n + (1.0 / num_new_images if num_new_images else 0.0)
    return float(loss.mean()) + LOSS_BOUND_Z * spread * float(np.sqrt(variance_scale))


def _frontier(costs: np.ndarray, losses: np.ndarray) -> list:
    """Indices of the candidates that cost the least for their loss (each cheaper one loses more), costliest
    first."""
    order = np.lexsort((losses, costs))  # by cost, then loss
    kept, least = [], np.inf
    for i in order:
        if losses[i] < least - 1e-12:
            kept.append(int(i))
            least = losses[i]
    return kept[::-1]


def choose_thresholds(labels: np.ndarray, confidences: np.ndarray, truth: np.ndarray, segment_macs,
                      margin_pt: float = DEFAULT_MARGIN_PT, num_new_images: Optional[int] = None) -> dict:
    """``labels``, ``confidences``: (exits, N) per exit and image; ``segment_macs``: each segment's MACs. Returns
    the pipeline's options: the thresholds and what they gave on these images (the module says how)."""
    if not 0.0 <= margin_pt <= 100.0:
        raise ConfigError(f"Expected an accuracy margin between 0 and 100 points. Received: {margin_pt}")
    num_exits, n = confidences.shape
    if n < 2:
        raise ConfigError(f"Expected held-out images to choose the exit thresholds on. Received {n}; build with more "
                          "training images (a validation split of at least a few hundred)")
    correct = labels == truth[None, :]
    cumulative = np.cumsum(np.asarray(segment_macs, dtype=np.float64))
    quantiles = np.linspace(0.0, 1.0, NUM_CANDIDATES)
    grids = [np.unique(np.concatenate([np.quantile(confidences[k], quantiles), [EVERY_IMAGE_GOES_ON]]))
             for k in range(num_exits - 1)]
    candidates = list(itertools.product(*grids))  # the last: every image goes on at every exit, the whole path
    select = np.arange(n) % 2 == 0
    certify = ~select
    depths = np.empty((len(candidates), n), np.int8)
    for i, thresholds in enumerate(candidates):
        depths[i] = exit_depths(confidences, thresholds)
    right = correct[depths, np.arange(n)]  # (candidates, N): each candidate's exit right on each image
    costs = sum(cumulative[k] * (depths[:, select] == k).mean(axis=1) for k in range(num_exits))
    losses = (correct[-1, select][None, :].astype(np.float64) - right[:, select]).mean(axis=1)
    whole = len(candidates) - 1
    walk = [whole] + [i for i in _frontier(costs, losses) if i != whole]
    chosen, bound = whole, 0.0
    for i in walk:
        tried = loss_bound(correct[-1, certify], right[i, certify], num_new_images)
        if tried > margin_pt / 100 + 1e-12:
            break
        chosen, bound = i, tried
    depth = depths[chosen].astype(np.int64)
    cost = float(cumulative[depth].mean())
    return {
        EXIT_THRESHOLDS: [float(t) for t in candidates[chosen]], "margin_pt": float(margin_pt),
        "validation_loss_bound_pt": 100 * bound, "loss_bound_z": LOSS_BOUND_Z,
        "num_new_images": None if num_new_images is None else int(num_new_images),
        "num_selection": int(select.sum()), "num_certification": int(certify.sum()),
        "segment_macs": [int(m) for m in segment_macs],
        "validation_accuracy": float(right[chosen].mean()), "validation_last_exit_accuracy": float(correct[-1].mean()),
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
                      margin_pt: float = DEFAULT_MARGIN_PT, num_new_images: Optional[int] = None) -> dict:
    """Run the int8 segments of a build on held-out images; return multiexit's options (thresholds, exit table);
    ``num_new_images``: the size of the sample the margin is promised on (the build's test set)."""
    from cbnet_tl.runtime.bundle import load_bundle
    from cbnet_tl.runtime.exits import exit_scores
    from cbnet_tl.runtime.pipelines import Pipeline
    from cbnet_tl.runtime.specs import MULTIEXIT_PIPELINE, PIPELINE_SPECS

    spec = PIPELINE_SPECS[MULTIEXIT_PIPELINE]
    bundle = load_bundle(build_dir, precision="int8", models=list(spec.models), manifest=manifest)
    labels, confidences = exit_scores(Pipeline(bundle, spec, gates_off=True), images)  # no thresholds chosen yet
    macs = [manifest.models[m].macs for m in spec.models]
    options = choose_thresholds(labels, confidences, truth, macs, margin_pt, num_new_images)
    options[EXIT_TABLE] = exit_table(confidences, options[EXIT_THRESHOLDS], spec.models)
    return options
