"""``cbnet-fallback``'s confidence threshold, chosen on held-out training images (never on test data).

Images whose cbnet top-class probability is below the threshold also run LeNet, whose answer is used. The
threshold chosen gives the best int8 accuracy (through the runtime) on held-out training images, which no model
was trained on or selected by, among the thresholds that send at most ``max_share`` of those images to LeNet;
among equal accuracies, the one with the most LeNet work when LeNet is the more accurate network on those images
(its answers are then expected to be at least as good on the images cbnet is least sure of), else the least. The cap keeps the pipeline what it is for: about
cbnet's cost plus ``max_share`` of LeNet's (at the default 4%, a few times cheaper than LeNet). The second network
is LeNet, or the build's ``--fallback`` choice (``multiexit``: the multi-exit network's whole path,
``multiexit_full``); the pipeline's models in the manifest name it, and its options keep LeNet's name in their keys.

So the threshold never loses accuracy against cbnet on the held-out images: cbnet alone (threshold 0) is always a
candidate, and images are sent on only for a gain there (one more image right), or at no loss there when the
second network is the more accurate one on the held-out images. When no threshold
within the cap gains, the build says so in one line, with the least share that would (``describe_threshold``).
The held-out outcomes come as arrays (``evidence.Evidence``), whatever their source.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from cbnet_tl.runtime.errors import ConfigError
from cbnet_tl.runtime.manifest import Manifest, read_manifest
from cbnet_tl.runtime.specs import CONFIDENCE_THRESHOLD, DEFAULT_PIPELINE, EVERY_IMAGE_GOES_ON, FALLBACK_PIPELINE
from cbnet_tl.toolchain.scoring import format_share
from cbnet_tl.toolchain.training.evidence import Evidence, held_out_evidence


DEFAULT_MAX_SHARE = 0.04


def _cuts(confidences: np.ndarray, cbnet_correct: np.ndarray, lenet_correct: np.ndarray) -> tuple:
    """(sorted confidences, images right at each cut k = sending the k least confident on, which cuts a threshold
    can make: only between different confidences)."""
    if not len(confidences) == len(cbnet_correct) == len(lenet_correct):
        raise ConfigError(f"Expected as many held-out confidences as outcomes of each network. Received: "
                          f"{len(confidences)} confidences, {len(cbnet_correct)} and {len(lenet_correct)} outcomes")
    order = np.argsort(confidences, kind="stable")
    conf, c_ok, l_ok = confidences[order], cbnet_correct[order].astype(np.int64), lenet_correct[order].astype(np.int64)
    # sending the k least confident images to LeNet: correct = LeNet's on the first k + cbnet's on the rest
    correct = np.concatenate([[0], np.cumsum(l_ok)]) + np.concatenate([np.cumsum(c_ok[::-1])[::-1], [0]])
    splits = np.ones(len(conf) + 1, bool)
    splits[1:-1] = conf[1:] > conf[:-1]
    return conf, correct, splits


def choose_threshold(confidences: np.ndarray, cbnet_correct: np.ndarray, lenet_correct: np.ndarray,
                     max_share: float = DEFAULT_MAX_SHARE) -> dict:
    """The threshold of the best accuracy on these images among those sending at most ``max_share`` of them to
    LeNet; among equals the most LeNet work when LeNet is right on more of these images than cbnet, else the least
    (0: never LeNet; ``EVERY_IMAGE_GOES_ON``: LeNet for every image, new ones too)."""
    if not 0.0 <= max_share <= 1.0:
        raise ConfigError(f"Expected a fallback share between 0 and 1. Received: {max_share}")
    conf, correct, splits = _cuts(confidences, cbnet_correct, lenet_correct)
    n = len(conf)
    candidates = np.flatnonzero(splits & (np.arange(n + 1) <= max_share * n + 1e-9))  # cut 0 is always one
    tied = candidates[correct[candidates] == correct[candidates].max()]
    stronger = int(np.sum(lenet_correct)) > int(np.sum(cbnet_correct))  # then ties go to the most sent on
    k = int(tied[-1] if stronger else tied[0])
    # k = 0: never LeNet (not "below the least confident held-out image", which new images can be, uncapped)
    threshold = 0.0 if k == 0 else float(conf[k]) if k < n else EVERY_IMAGE_GOES_ON
    share = (lambda count: float(count / n)) if n else (lambda count: 0.0)  # no held-out images: nothing is sent
    return {CONFIDENCE_THRESHOLD: threshold, "validation_accuracy": share(correct[k]),
            "validation_lenet_accuracy": share(np.sum(lenet_correct)),
            "validation_cbnet_accuracy": share(np.sum(cbnet_correct)),
            "max_fallback_share": float(max_share),
            "validation_fallback_share": share(k), "num_validation": int(n)}


def least_gaining_share(confidences: np.ndarray, cbnet_correct: np.ndarray, lenet_correct: np.ndarray):
    """The least share of these images a threshold must send to LeNet to gain over cbnet alone on them, whatever
    the cap; None when no threshold gains."""
    conf, correct, splits = _cuts(confidences, cbnet_correct, lenet_correct)
    gaining = np.flatnonzero(splits & (correct > correct[0]))
    return float(gaining[0] / len(conf)) if len(gaining) else None


def threshold_from(evidence: Evidence, max_share: float = DEFAULT_MAX_SHARE) -> dict:
    """cbnet-fallback's options chosen on ``evidence``."""
    return choose_threshold(evidence.cbnet_confidences, evidence.correct[DEFAULT_PIPELINE], evidence.second_correct,
                            max_share)


def describe_threshold(options: dict, evidence: Evidence, network: str) -> str:
    """The build's one line on the threshold, every held-out figure with its 95% interval; when no threshold within
    the cap gains on the evidence, it says so, with the least share that would."""
    n = options["num_validation"]
    if n == 0:
        return f"{FALLBACK_PIPELINE}: sends no image to {network} (threshold 0): no {evidence.source} to choose on"
    figures = (f"accuracy {format_share(round(options['validation_accuracy'] * n), n)} vs cbnet "
               f"{format_share(round(options['validation_cbnet_accuracy'] * n), n)}, {network} "
               f"{format_share(round(options['validation_lenet_accuracy'] * n), n)}")
    if options["validation_fallback_share"] > 0:
        sent = round(options["validation_fallback_share"] * n)
        tie = ("; no gain on them at this share, sent on because " + network + " is right on more of them than cbnet"
               if options["validation_accuracy"] <= options["validation_cbnet_accuracy"] else "")
        return (f"{FALLBACK_PIPELINE}: confidence threshold {options[CONFIDENCE_THRESHOLD]:.4f} (on {n} "
                f"{evidence.source}: {format_share(sent, n)} of them to {network}, at most "
                f"{options['max_fallback_share']:.1%}; {figures}{tie})")
    needed = least_gaining_share(evidence.cbnet_confidences, evidence.correct[DEFAULT_PIPELINE],
                                 evidence.second_correct)
    cap = options["max_fallback_share"]
    why = (f"no threshold gains over cbnet on the {n} {evidence.source}, at any share" if needed is None else
           f"no threshold within it ({cap * n:.1f} of the {n} {evidence.source}) gains over cbnet on them; the "
           f"least share that gains is {needed:.1%} ({round(needed * n)} images)")
    return (f"{FALLBACK_PIPELINE}: sends no image to {network} (threshold 0; the cap: at most {cap:.1%}): {why} "
            f"({figures})")


def fallback_options(build_dir: Path, images: np.ndarray, labels: np.ndarray,
                     manifest: Optional[Manifest] = None, max_share: float = DEFAULT_MAX_SHARE) -> dict:
    """cbnet-fallback's options for a build, chosen on labelled held-out images (``held_out_evidence``).
    ``manifest``: the build's, before it is written (the model files are read from ``build_dir``)."""
    manifest = manifest if manifest is not None else read_manifest(build_dir)
    return threshold_from(held_out_evidence(build_dir, images, labels, manifest), max_share)
