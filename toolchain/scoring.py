"""Score a pipeline on labelled images: accuracy, per-class accuracy, path shares, time per image; and the one
interval every figure measured on a sample of images (a test split, held-out images) is printed with."""

from __future__ import annotations

import math
import time
from collections import Counter
from typing import Callable, Optional

import numpy as np

from cbnet_tl.runtime.errors import ConfigError
from cbnet_tl.runtime.pipelines import Pipeline


INTERVAL_Z = 1.959963984540054  # two-sided 95%: the normal quantile the Wilson interval uses


def wilson_interval(successes: int, num: int) -> tuple:
    """The 95% Wilson score interval (low, high), as fractions, of a share seen as ``successes`` of ``num``; (0, 1)
    for no images. Every accuracy or share measured on a sample of images takes its uncertainty from here."""
    if num < 0 or not 0 <= successes <= num:
        raise ConfigError(f"Expected 0 <= successes <= num. Received: {successes} of {num}")
    if num == 0:
        return 0.0, 1.0
    share, z2 = successes / num, INTERVAL_Z ** 2
    centre = (share + z2 / (2 * num)) / (1 + z2 / num)
    half = INTERVAL_Z * math.sqrt(share * (1 - share) / num + z2 / (4 * num * num)) / (1 + z2 / num)
    return max(0.0, centre - half), min(1.0, centre + half)


def format_share(successes: int, num: int) -> str:
    """``successes`` of ``num`` as a percentage with its 95% interval: ``96.12% [95.08-96.96]``."""
    low, high = wilson_interval(successes, num)
    return f"{100 * successes / max(num, 1):.2f}% [{100 * low:.2f}-{100 * high:.2f}]"


def run_pipeline(pipeline: Pipeline, images: np.ndarray, batch_size: int = 1,
                 progress: Optional[Callable] = None, hook=None) -> dict:
    """Classify every image; return predictions, paths and timing (pre/post-processing included)."""
    if batch_size < 1:
        raise ConfigError(f"Expected batch_size >= 1. Received: {batch_size}")
    labels, confidences, paths, seconds = [], [], [], []
    starts = range(0, len(images), batch_size)
    for start in progress(starts) if progress else starts:
        result = pipeline.classify(images[start : start + batch_size], hook=hook)
        labels.append(result.labels)
        confidences.append(result.confidences)
        paths.extend(result.paths)
        seconds.append(result.seconds / len(result.labels))
    return {
        "predictions": np.concatenate(labels),
        "confidences": np.concatenate(confidences),
        "paths": paths,
        "seconds_per_image": np.asarray(seconds),
    }


def score(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
    correct = predictions == labels
    per_class = []
    for cls in range(num_classes):
        mask = labels == cls
        per_class.append(float(correct[mask].mean()) if mask.any() else None)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels, predictions), 1)
    return {"accuracy": float(correct.mean()), "per_class_accuracy": per_class, "confusion": confusion.tolist()}


def evaluate(pipeline: Pipeline, images: np.ndarray, labels: np.ndarray, *, batch_size: int = 1,
             progress: Optional[Callable] = None, hook=None) -> dict:
    started = time.perf_counter()
    run = run_pipeline(pipeline, images, batch_size, progress, hook)
    num_classes = len(pipeline.bundle.class_names)
    result = score(run["predictions"], labels, num_classes)
    counts = Counter(run["paths"])
    result.update({
        "num_images": int(len(labels)),
        "batch_size": batch_size,
        "path_shares": {path: count / len(labels) for path, count in sorted(counts.items())},
        "ms_per_image_median": float(np.median(run["seconds_per_image"]) * 1e3),
        "wall_seconds": time.perf_counter() - started,
        "predictions": run["predictions"],
    })
    return result
