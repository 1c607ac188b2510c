"""``cbnet-fallback``'s confidence threshold, chosen on the validation split (never on test data).

Images whose cbnet top-class probability is below the threshold also run LeNet, whose answer is used.
The threshold chosen is the one that sends the fewest images to LeNet while the pipeline's accuracy on
held-out training images (never used to train or to select a model) is at least LeNet's own plus one
standard error (both int8, through the runtime).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from cbnet_tl.runtime.bundle import load_bundle
from cbnet_tl.runtime.manifest import Manifest
from cbnet_tl.runtime.pipelines import CONFIDENCE_THRESHOLD, FALLBACK_PIPELINE, PIPELINE_SPECS, Pipeline


def choose_threshold(confidences: np.ndarray, cbnet_correct: np.ndarray, lenet_correct: np.ndarray,
                     margin_se: float = 1.0) -> dict:
    """The lowest threshold (least LeNet work) whose accuracy reaches LeNet's plus ``margin_se`` standard errors
    of LeNet's accuracy on these images (so it holds on new data, not only on this sample); when nothing
    reaches that, the threshold of the best accuracy (the least LeNet work among equals)."""
    n = len(confidences)
    lenet = float(lenet_correct.mean())
    target = lenet + margin_se * float(np.sqrt(lenet * (1 - lenet) / n))
    order = np.argsort(confidences, kind="stable")
    conf, c_ok, l_ok = confidences[order], cbnet_correct[order].astype(np.int64), lenet_correct[order].astype(np.int64)
    # sending the k least confident images to LeNet: correct = LeNet's on the first k + cbnet's on the rest
    correct = np.concatenate([[0], np.cumsum(l_ok)]) + np.concatenate([np.cumsum(c_ok[::-1])[::-1], [0]])
    accuracy = correct / n
    # a threshold can only split between different confidences
    valid = np.array([k in (0, n) or conf[k] > conf[k - 1] for k in range(n + 1)])
    reaching = np.flatnonzero(valid & (accuracy >= target - 1e-12))
    k = int(reaching[0]) if len(reaching) else int(np.flatnonzero(valid)[np.argmax(accuracy[valid])])
    threshold = float(conf[k]) if k < n else 1.0 + 1e-9
    return {CONFIDENCE_THRESHOLD: threshold, "validation_accuracy": float(accuracy[k]),
            "validation_lenet_accuracy": lenet, "validation_target": target,
            "validation_fallback_share": k / n, "num_validation": int(n)}


def fallback_options(build_dir: Path, images: np.ndarray, labels: np.ndarray,
                     manifest: Optional[Manifest] = None) -> dict:
    """Run int8 cbnet-fallback of a build on validation images, with no image and with every image sent to its
    second model; return its options (the threshold chosen from both). ``manifest``: the build's, before it is
    written (the model files are read from ``build_dir``)."""
    spec = PIPELINE_SPECS[FALLBACK_PIPELINE]
    bundle = load_bundle(build_dir, precision="int8", models=list(spec.models), manifest=manifest)
    first = Pipeline(bundle, spec, options={CONFIDENCE_THRESHOLD: 0.0}).classify(images)  # nothing is unsure
    second = Pipeline(bundle, spec, options={CONFIDENCE_THRESHOLD: 2.0}).classify(images)  # everything is
    return choose_threshold(np.asarray(first.confidences), first.labels == labels, second.labels == labels)
