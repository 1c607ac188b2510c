"""Early exit over any number of stages: the runner of ``multiexit`` (and of any spec whose models form a chain
of segments, each returning its exit's logits and, but the last, the features the next one reads), and the exit
rule itself (``leaves``, ``exit_depths``), which the build's choice of thresholds calls too.

An image leaves at the first exit whose top softmax probability (``Pipeline.confidence``, the numbers
``gate.decide`` gives) is at least that exit's threshold, compared in float64; the last exit takes every image
left. The thresholds are the pipeline's option ``exit_thresholds`` (one per exit but the last), chosen by the build
on held-out images. Only the images still in the network run the next segment, so the CPU stops at the exit taken.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import numpy as np

from cbnet_tl.runtime.errors import BundleError
from cbnet_tl.runtime.gate import confidence_row_test
from cbnet_tl.runtime.runners import PipelineParts
from cbnet_tl.runtime.specs import EXIT_TABLE, EXIT_THRESHOLDS  # noqa: F401 (callers import EXIT_TABLE from here)


def leaves(confidences: np.ndarray, threshold: float) -> np.ndarray:
    """True where an image leaves at an exit of ``threshold``: its confidence reaches it. In float64, as the build
    chooses thresholds: float32 confidences against a Python float would round the threshold to float32 (NumPy 2),
    and an image just below it would leave at the device but not at the build."""
    return np.asarray(confidences).astype(np.float64, copy=False) >= threshold


def exit_depths(confidences: np.ndarray, thresholds) -> np.ndarray:
    """The exit (0-based) each image leaves at, from (exits, N) confidences and a threshold per exit but the last:
    the first whose confidence reaches its threshold, else the last."""
    num_exits = len(confidences)
    left = np.vstack([leaves(confidences[k], thresholds[k]) for k in range(num_exits - 1)]
                     + [np.ones(np.shape(confidences)[1], bool)])
    return left.argmax(axis=0)


def _stages(pipeline: PipelineParts, runs: dict) -> list:
    """(run on its input, read logits, read features or None, confidence) per segment, in order."""
    spec = pipeline.spec
    links = {link.source: link for link in spec.links}
    stages = []
    for k, name in enumerate(spec.models):
        run = pipeline.from_pixels(name, runs[name]) if k == 0 else pipeline.from_output(links[spec.models[k - 1]], runs[name])
        link = links.get(name)
        features = pipeline.reads[name][link.output] if link is not None else None
        stages.append((run, pipeline.reads[name][0], features, pipeline.confidence(name)))
    return stages


def thresholds_of(pipeline: PipelineParts) -> tuple:
    """The pipeline's exit thresholds, checked: one number per exit but the last."""
    values = pipeline.options.get(EXIT_THRESHOLDS)
    wanted = len(pipeline.spec.models) - 1
    if values is None:
        raise BundleError(f"Pipeline {pipeline.name} needs options.{EXIT_THRESHOLDS} in the manifest; rebuild the bundle")
    if len(values) != wanted:
        raise BundleError(f"Pipeline {pipeline.name}: expected {wanted} exit thresholds. Received: {list(values)}")
    return tuple(float(v) for v in values)


def multi_exit(pipeline: PipelineParts, runs: dict, hook=None) -> Callable:
    """Each segment's confidence decides who runs the next; labels from the exit each image took. A stage hook
    with ``exit_confidence`` hears, for a batch of one, the confidence of the image at each exit it goes on past."""
    spec = pipeline.spec
    tell = getattr(hook, "exit_confidence", None)
    stages, thresholds = _stages(pipeline, runs), thresholds_of(pipeline) + (-1.0,)  # the last exit takes all
    labels_of = tuple(spec.paths[spec.models[: k + 1]] for k in range(len(spec.models)))

    # one image: each exit's test on Python floats, exact (float64, as the batch path and the build compare) only
    # where they cannot tell; confidences made when read; one tuple per exit that can be left early, read in order
    last = len(stages) - 1
    early = tuple((stages[k][1], pipeline.row_test(confidence_row_test, spec.models[k], thresholds[k]),
                   partial(_stays, stages[k][3], thresholds[k]), stages[k][2], stages[k + 1][0], stages[k][3],
                   labels_of[k], spec.models[k]) for k in range(last))
    run_first, (_, read_last, _, confidence_last) = stages[0][0], stages[last]

    def one(image):
        run_first(image)
        for read_logits, row_stays, stays_exact, read_features, run_next, confidence, label, name in early:
            raw = read_logits()
            stays = row_stays(raw[0].tolist())
            if stays is None:  # too near the threshold for Python floats
                stays = stays_exact(raw)
            if not stays:
                return raw.argmax(axis=-1), partial(_float64, confidence, raw), label
            if tell is not None:  # it goes on: what this exit said of it
                tell(name, float(confidence(raw)[0]))
            run_next(read_features())
        raw = read_last()
        return raw.argmax(axis=-1), partial(_float64, confidence_last, raw), labels_of[last]

    def classify(images):
        count = len(images)
        if count == 1:
            return one(images)
        labels = np.zeros(count, dtype=np.int64)
        confidences = np.zeros(count, dtype=np.float64)
        depth = np.zeros(count, dtype=np.int64)
        left = None  # indices of the images still in the network; None: all of them
        stages[0][0](images)
        for k, (_, read_logits, read_features, confidence) in enumerate(stages):
            raw = read_logits()
            top = confidence(raw)
            leaving = leaves(top, thresholds[k])
            where = np.flatnonzero(leaving) if left is None else left[leaving]
            labels[where], confidences[where], depth[where] = raw.argmax(axis=-1)[leaving], top[leaving], k
            if leaving.all():
                break
            stays = ~leaving
            features = read_features()
            stages[k + 1][0](features if not leaving.any() else features[stays])
            left = np.flatnonzero(stays) if left is None else left[stays]
        first = depth[0]
        if (depth == first).all():
            return labels, confidences, labels_of[first]
        return labels, confidences, (depth, labels_of)

    return classify


def _stays(confidence: Callable, threshold: float, raw: np.ndarray) -> bool:
    return not leaves(confidence(raw), threshold)[0]


def _float64(confidence: Callable, raw: np.ndarray) -> np.ndarray:
    return confidence(raw).astype(np.float64)


def exit_scores(pipeline: PipelineParts, images: np.ndarray, chunk: int = 256) -> tuple:
    """(labels, confidences), each (exits, N): what every exit of a multi-exit pipeline says of every image (each
    segment runs on all of them). The build chooses thresholds and EENet's exit table from these."""
    stages = _stages(pipeline, pipeline.runs)
    num_exits = len(stages)
    labels = np.zeros((num_exits, len(images)), dtype=np.int64)
    confidences = np.zeros((num_exits, len(images)), dtype=np.float64)
    for first in range(0, len(images), chunk):
        batch = slice(first, first + chunk)
        stages[0][0](images[batch])
        for k, (_, read_logits, read_features, confidence) in enumerate(stages):
            raw = read_logits()
            labels[k, batch], confidences[k, batch] = raw.argmax(axis=-1), confidence(raw)
            if read_features is not None:
                stages[k + 1][0](read_features())
    return labels, confidences
