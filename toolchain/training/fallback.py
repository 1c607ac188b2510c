"""``cbnet-fallback``'s confidence threshold, chosen on held-out training images (never on test data).

Images whose cbnet top-class probability is below the threshold also run LeNet, whose answer is used. The
threshold chosen gives the best int8 accuracy (through the runtime) on held-out training images, which no model
was trained on or selected by, among the thresholds that send at most ``max_share`` of those images to LeNet;
among equal accuracies, the one with the least LeNet work. The cap keeps the pipeline what it is for: about
cbnet's cost plus ``max_share`` of LeNet's (at the default 4%, a few times cheaper than LeNet). The second network
is LeNet, or the build's ``--fallback`` choice (``multiexit``: the multi-exit network's whole path,
``multiexit_full``); the pipeline's models in the manifest name it, and its options keep LeNet's name in their keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from cbnet_tl.runtime.bundle import load_bundle
from cbnet_tl.runtime.errors import ConfigError
from cbnet_tl.runtime.manifest import Manifest
from cbnet_tl.runtime.pipelines import Pipeline
from cbnet_tl.runtime.runners import CONFIDENCE_THRESHOLD
from cbnet_tl.runtime.specs import FALLBACK_PIPELINE, PIPELINE_SPECS


DEFAULT_MAX_SHARE = 0.04


def choose_threshold(confidences: np.ndarray, cbnet_correct: np.ndarray, lenet_correct: np.ndarray,
                     max_share: float = DEFAULT_MAX_SHARE) -> dict:
    """The threshold of the best accuracy on these images among those sending at most ``max_share`` of them to
    LeNet, the least LeNet work among equals (0: never LeNet; 1: LeNet allowed for every image)."""
    if not 0.0 <= max_share <= 1.0:
        raise ConfigError(f"Expected a fallback share between 0 and 1. Received: {max_share}")
    n = len(confidences)
    order = np.argsort(confidences, kind="stable")
    conf, c_ok, l_ok = confidences[order], cbnet_correct[order].astype(np.int64), lenet_correct[order].astype(np.int64)
    # sending the k least confident images to LeNet: correct = LeNet's on the first k + cbnet's on the rest
    correct = np.concatenate([[0], np.cumsum(l_ok)]) + np.concatenate([np.cumsum(c_ok[::-1])[::-1], [0]])
    # a threshold can only split between different confidences, and may send at most max_share to LeNet
    splits = np.ones(n + 1, bool)  # cut k sends the k least confident images on
    splits[1:n] = conf[1:] > conf[:-1]
    allowed = splits & (np.arange(n + 1) <= max_share * n + 1e-9)
    candidates = np.flatnonzero(allowed)
    k = int(candidates[np.argmax(correct[candidates])])  # argmax: the first (fewest to LeNet) of equal counts
    # k = 0: never LeNet (not "below the least confident held-out image", which new images can be, uncapped)
    threshold = 0.0 if k == 0 else float(conf[k]) if k < n else 1.0 + 1e-9
    return {CONFIDENCE_THRESHOLD: threshold, "validation_accuracy": float(correct[k] / n),
            "validation_lenet_accuracy": float(lenet_correct.mean()),
            "validation_cbnet_accuracy": float(cbnet_correct.mean()),
            "max_fallback_share": float(max_share),
            "validation_fallback_share": k / n, "num_validation": int(n)}


def fallback_options(build_dir: Path, images: np.ndarray, labels: np.ndarray,
                     manifest: Optional[Manifest] = None, max_share: float = DEFAULT_MAX_SHARE) -> dict:
    """Run int8 cbnet-fallback of a build on validation images, with no image and with every image sent to its
    second model; return its options (the threshold chosen from both). ``manifest``: the build's, before it is
    written (the model files are read from ``build_dir``)."""
    spec = PIPELINE_SPECS[FALLBACK_PIPELINE]
    if manifest is not None and FALLBACK_PIPELINE in manifest.pipelines:  # the build's --fallback network
        spec = spec.with_models(manifest.pipelines[FALLBACK_PIPELINE].models)
    bundle = load_bundle(build_dir, precision="int8", models=list(spec.models), manifest=manifest)
    first = Pipeline(bundle, spec, options={CONFIDENCE_THRESHOLD: 0.0}).classify(images)  # nothing is unsure
    second = Pipeline(bundle, spec, options={CONFIDENCE_THRESHOLD: 2.0}).classify(images)  # everything is
    return choose_threshold(np.asarray(first.confidences), first.labels == labels, second.labels == labels, max_share)
