"""The held-out evidence the build chooses on, and the pipeline it recommends from it.

Evidence is data, not models: for each deployed pipeline whether it was right on each evidence image (int8,
through the runtime), cbnet's confidence on each, and whether cbnet-fallback's second network alone was right on
each, so that cbnet-fallback's threshold (``fallback.choose_threshold``) and the recommendation
(``recommend_pipeline``) take arrays. Today one source makes it, ``held_out_evidence``: the held-out training images
that ``train.json``'s ``validation_indices`` names (no model was trained on them, nor stopped by them). Another
source (e.g. out-of-fold predictions on every training image of a small set) makes an ``Evidence`` with the same
fields, and both choices take it unchanged.

The recommendation, among the deployed pipelines that passed the learning check on the test split
(``checks.learning_figures``): ``best`` is the one right on the most evidence images (among equals, the first in
``runtime.specs.DEPLOYED_PIPELINES``, cbnet first). cbnet is recommended when it passed and the evidence does not
show at 95% that ``best`` is more accurate: on the images exactly one of the two gets right, the 95% Wilson interval
(``scoring.wilson_interval``) of the share ``best`` gets right reaches down to one half (a paired sign test, which
counts only the images where they differ), or they differ on none. Otherwise ``best`` is. No pipeline is
recommended when none passed. cbnet-fallback's outcomes are those at the threshold chosen on the same images, so
its figure there leans optimistic (at most ``--max-fallback-share`` of them could be picked to gain).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cbnet_tl.runtime.bundle import load_bundle
from cbnet_tl.runtime.errors import ConfigError
from cbnet_tl.runtime.manifest import Manifest
from cbnet_tl.runtime.pipelines import Pipeline
from cbnet_tl.runtime.runners import CONFIDENCE_THRESHOLD
from cbnet_tl.runtime.specs import (
    DEFAULT_PIPELINE,
    DEPLOYED_PIPELINES,
    FALLBACK_PIPELINE,
    deployed_pipelines,
    models_for,
    spec_in,
)
from cbnet_tl.toolchain.scoring import format_share, wilson_interval

HELD_OUT = "held-out training images"  # the source ``held_out_evidence`` names


@dataclass(frozen=True)
class Evidence:
    """Per-image outcomes on one set of evidence images (the same images, in the same order, in every array)."""

    source: str  # what the images are, for the build's lines
    correct: dict  # pipeline -> (N,) bool; cbnet-fallback's only once its threshold is set (``with_fallback``)
    cbnet_confidences: np.ndarray  # (N,) cbnet's top-class probability
    second_correct: np.ndarray  # (N,) bool: cbnet-fallback's second network alone (LeNet, or multiexit's whole path)

    def __post_init__(self):
        sizes = {len(self.cbnet_confidences), len(self.second_correct), *(len(c) for c in self.correct.values())}
        if len(sizes) != 1 or DEFAULT_PIPELINE not in self.correct:
            raise ConfigError(f"Expected one outcome per evidence image for every pipeline, {DEFAULT_PIPELINE} among "
                              f"them. Received: sizes {sorted(sizes)} for {sorted(self.correct)}")

    @property
    def num_images(self) -> int:
        return len(self.cbnet_confidences)

    def with_fallback(self, threshold: float) -> "Evidence":
        """This evidence with cbnet-fallback's outcomes at ``threshold``: the images whose cbnet confidence is below
        it take the second network's answer (as ``runtime.runners.fallback`` does)."""
        sent = self.cbnet_confidences < threshold
        fallback = np.where(sent, self.second_correct, self.correct[DEFAULT_PIPELINE])
        return dataclasses.replace(self, correct={**self.correct, FALLBACK_PIPELINE: fallback})


def held_out_evidence(build_dir: Path, images: np.ndarray, labels: np.ndarray, manifest: Manifest) -> Evidence:
    """Run every pipeline ``manifest`` deploys, int8, on labelled held-out images (``manifest``: the build's, its
    held-out options such as multiexit's thresholds already in it; the model files are read from ``build_dir``)."""
    names = [name for name in deployed_pipelines(manifest) if name != FALLBACK_PIPELINE]
    fallback = spec_in(FALLBACK_PIPELINE, manifest)
    bundle = load_bundle(build_dir, precision="int8", models=models_for(names + [FALLBACK_PIPELINE], manifest),
                         manifest=manifest)
    first = Pipeline(bundle, fallback, options={CONFIDENCE_THRESHOLD: 0.0}).classify(images)  # cbnet: nothing unsure
    second = Pipeline(bundle, fallback, gates_off=True).classify(images)  # every image goes on
    correct = {DEFAULT_PIPELINE: first.labels == labels}
    correct.update({name: Pipeline(bundle, name).classify(images).labels == labels
                    for name in names if name != DEFAULT_PIPELINE})
    return Evidence(HELD_OUT, correct, np.asarray(first.confidences), second.labels == labels)


def recommend_pipeline(correct: dict, failed=(), source: str = HELD_OUT, cbnet_cheaper: bool = True) -> dict:
    """The recommended pipeline from per-image outcomes (pipeline -> (N,) bool), never one of ``failed`` (module
    docstring): {"pipeline": name or None, "best": name or None, "reason": one line, and the counts}.
    ``cbnet_cheaper=False`` (cbnet costs LeNet's MACs or more, as the convolutional recipe on few colour images
    does): cbnet is not preferred within the uncertainty, the most accurate pipeline is recommended."""
    candidates = sorted((n for n in correct if n not in failed), key=lambda n: (
        DEPLOYED_PIPELINES.index(n) if n in DEPLOYED_PIPELINES else len(DEPLOYED_PIPELINES)))
    num = len(next(iter(correct.values()))) if correct else 0
    counts = {name: int(np.sum(c)) for name, c in correct.items()}
    record = {"pipeline": None, "best": None, "source": source, "num_images": num, "num_correct": counts,
              "failed": sorted(failed)}
    if not candidates:
        return {**record, "reason": "no recommended pipeline: every pipeline failed the learning check on the test "
                                    "split"}
    passed_only = f"; failed the learning check: {', '.join(sorted(failed))}" if failed else ""
    if num == 0:  # candidates are in the table's order: cbnet first where it passed
        return {**record, "pipeline": candidates[0], "reason": f"recommended pipeline: {candidates[0]}, with no "
                                                               f"{source} to compare the pipelines on{passed_only}"}
    best = max(candidates, key=lambda n: counts[n])  # the first of equal counts
    figures = f"on {num} {source}: " + ", ".join(f"{n} {format_share(counts[n], num)}" for n in candidates)
    if best == DEFAULT_PIPELINE or DEFAULT_PIPELINE not in candidates or not cbnet_cheaper:
        costly = "" if cbnet_cheaper or best == DEFAULT_PIPELINE else \
            f"; cbnet is not preferred: it costs LeNet's MACs or more here"
        return {**record, "pipeline": best, "best": best,
                "reason": f"recommended pipeline: {best}, the most accurate {figures}{passed_only}{costly}"}
    wins = int(np.sum(correct[best] & ~correct[DEFAULT_PIPELINE]))
    differ = wins + int(np.sum(~correct[best] & correct[DEFAULT_PIPELINE]))
    low = wilson_interval(wins, differ)[0]
    within = low <= 0.5
    paired = (f"of the {differ} images only one of {best} and {DEFAULT_PIPELINE} gets right, {best} gets "
              f"{format_share(wins, differ)}, {'not ' if within else ''}above one half at 95%")
    chosen, why = ((DEFAULT_PIPELINE, f"within the uncertainty of the most accurate, {best}")
                   if within else (best, f"more accurate than {DEFAULT_PIPELINE}"))
    return {**record, "pipeline": chosen, "best": best, "num_differ": differ, "num_best_wins": wins,
            "reason": f"recommended pipeline: {chosen}, {why} ({figures}; {paired}){passed_only}"}
