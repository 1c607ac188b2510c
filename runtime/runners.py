"""The runners: each puts one kind of pipeline's per-call path together, once, from its models' runs (a
``Pipeline`` calls its spec's runner when it is made, and again for a stage hook, with each run wrapped and the
hook passed). What a runner returns classifies a checked uint8 batch: (labels, confidences or a function that makes
them, route).

A runner reads a pipeline through ``PipelineParts``, the few things it needs of one, not through ``Pipeline``
itself, so that the runners, the table that names them (``specs``) and ``pipelines`` import in one direction only.
"""

from __future__ import annotations

from functools import partial
from typing import Callable, Mapping, Protocol

import numpy as np

from cbnet_tl.runtime.errors import BundleError
from cbnet_tl.runtime.gate import confidence_row_test, entropy_row_test, exit_gate, top_probability
from cbnet_tl.runtime.specs import CONFIDENCE_THRESHOLD, ENTROPY_THRESHOLD, Link, PipelineSpec


class PipelineParts(Protocol):
    """What a runner reads of a pipeline (``pipelines.Pipeline`` has all of it)."""

    spec: PipelineSpec
    name: str
    options: Mapping  # the manifest's options with the caller's over them
    entropy_threshold: float  # the manifest's
    reads: Mapping  # model -> its output readers, one per output: raw scores, features
    runs: Mapping  # model -> run on its input storage values (the runners get their own, maybe wrapped, in a call)

    def from_pixels(self, name: str, run: Callable) -> Callable: ...  # run on uint8 images
    def from_output(self, link: Link, run: Callable) -> Callable: ...  # run on link.source's raw output
    def confidence(self, name: str, index: int = 0) -> Callable: ...  # raw scores -> top probabilities
    def logits64(self, name: str, index: int = 0) -> Callable: ...  # raw scores -> float64 logits
    def row_test(self, make: Callable, name: str, threshold: float) -> Callable: ...  # one row's gate, or None


def chain(pipeline: PipelineParts, runs: dict, hook=None) -> Callable:
    """Models one after another, each link feeding the next; the last model's scores decide."""
    spec = pipeline.spec
    names, route = spec.models, spec.paths[spec.models]
    first = pipeline.from_pixels(names[0], runs[names[0]])
    hops = tuple((pipeline.reads[link.source][link.output], pipeline.from_output(link, runs[link.target]))
                 for link in spec.links)
    read, confidence = pipeline.reads[names[-1]][0], pipeline.confidence(names[-1])

    def classify(images):
        first(images)
        for read_source, run_target in hops:
            run_target(read_source())
        scores = read()
        return scores.argmax(axis=-1), partial(confidence, scores), route  # confidences: when read

    return classify


def fallback(pipeline: PipelineParts, runs: dict, hook=None) -> Callable:
    """CBNet first; images whose top-class probability is below the threshold go to LeNet as well."""
    spec = pipeline.spec
    first, second = spec.models
    threshold = pipeline.options.get(CONFIDENCE_THRESHOLD)
    if threshold is None:
        raise BundleError(f"Pipeline {pipeline.name} needs options.{CONFIDENCE_THRESHOLD} in the manifest; "
                          "rebuild the bundle")
    threshold = float(threshold)
    run_first, run_second = pipeline.from_pixels(first, runs[first]), pipeline.from_pixels(second, runs[second])
    read_first, read_second = pipeline.reads[first][0], pipeline.reads[second][0]
    confidence_first, confidence_second = pipeline.confidence(first), pipeline.confidence(second)
    row_unsure = pipeline.row_test(confidence_row_test, first, threshold)  # one image, on Python floats
    short, full = spec.paths[(first,)], spec.paths[spec.models]

    def classify(images):
        run_first(images)
        scores = read_first()
        if len(scores) == 1:  # one image: confidences when read
            unsure = row_unsure(scores[0].tolist())
            if unsure is None:  # too near the threshold for Python floats
                unsure = confidence_first(scores)[0] < threshold
            if not unsure:
                return scores.argmax(axis=-1), partial(confidence_first, scores), short
            run_second(images)
            scores = read_second()
            return scores.argmax(axis=-1), partial(confidence_second, scores), full
        confidences = confidence_first(scores)
        unsure = confidences < threshold
        if not unsure.any():
            return scores.argmax(axis=-1), confidences, short
        labels, hard = scores.argmax(axis=-1), np.flatnonzero(unsure)
        run_second(images[hard])
        scores = read_second()
        labels[hard], confidences[hard] = scores.argmax(axis=-1), confidence_second(scores)
        return labels, confidences, (unsure, full, short)

    return classify


def early_exit(pipeline: PipelineParts, runs: dict, hook=None) -> Callable:
    """BranchyNet: the first model's branch logits decide, by entropy, who also runs the tail."""
    spec = pipeline.spec
    first, (link,) = spec.models[0], spec.links
    threshold = float(pipeline.options.get(ENTROPY_THRESHOLD, pipeline.entropy_threshold))
    run_first, run_tail = pipeline.from_pixels(first, runs[first]), pipeline.from_output(link, runs[link.target])
    read_branch, read_features = pipeline.reads[first][0], pipeline.reads[first][link.output]
    read_tail = pipeline.reads[link.target][0]
    branch_logits, tail_logits = pipeline.logits64(first), pipeline.logits64(link.target)
    row_exits = pipeline.row_test(entropy_row_test, first, threshold)  # one image, on Python floats
    short, full = spec.paths[(first,)], spec.paths[spec.models]

    def branch_confidences(raw):
        return top_probability(branch_logits(raw))

    def tail_confidences(raw):
        return top_probability(tail_logits(raw))

    def classify(images):
        run_first(images)
        raw = read_branch()
        if len(raw) == 1:  # one image: confidences when read
            exits = row_exits(raw[0].tolist())
            if exits is None:  # too near the threshold for Python floats
                exits = exit_gate(branch_logits(raw), threshold)[0][0]
            if exits:
                return raw.argmax(axis=-1), partial(branch_confidences, raw), short
            run_tail(read_features())
            tail = read_tail()
            return tail.argmax(axis=-1), partial(tail_confidences, tail), full
        early, confidences = exit_gate(branch_logits(raw), threshold)
        labels = raw.argmax(axis=-1)  # the softmax's argmax: it is increasing in the logits
        if early.all():
            return labels, confidences, short
        hard = np.flatnonzero(~early)
        features = read_features()
        run_tail(features[hard] if early.any() else features)
        tail = read_tail()
        labels[hard], confidences[hard] = tail.argmax(axis=-1), top_probability(tail_logits(tail))
        return labels, confidences, (early, short, full)

    return classify
