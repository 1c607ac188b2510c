"""``BatchResult``: what one ``Pipeline.classify`` call gives, read-only, and ``Prediction``, one image of it."""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

import numpy as np

NO_STAGES: Mapping = MappingProxyType({})  # stage_seconds of a call without a hook: no stage was timed


@dataclass(frozen=True)
class Prediction:
    label: int
    class_name: str
    confidence: float
    path: str
    seconds: float


class BatchResult:
    """One ``classify`` call, read-only. ``confidences`` (the top softmax probabilities) is computed when first
    read where the pipeline's decision did not need it. ``route`` is the path every image took (a label),
    (mask, label where the mask is True, label where it is False), or (index per image, labels) for more than two
    paths; ``paths`` spells it out per image."""

    __slots__ = ("_pipeline", "_labels", "_confidences", "_route", "_seconds", "_stage_seconds")

    def __init__(self, pipeline: str, labels: np.ndarray, confidences, route, seconds: float,
                 stage_seconds: Mapping = NO_STAGES):
        """``confidences``: an array, or a function of nothing that makes it (called once, when first read)."""
        self._pipeline, self._labels, self._confidences = pipeline, labels, confidences
        self._route, self._seconds, self._stage_seconds = route, seconds, stage_seconds

    pipeline = property(lambda self: self._pipeline)
    labels = property(lambda self: self._labels)
    route = property(lambda self: self._route)
    seconds = property(lambda self: self._seconds)
    stage_seconds = property(lambda self: self._stage_seconds)

    @property
    def confidences(self) -> np.ndarray:
        if callable(self._confidences):
            self._confidences = self._confidences()
        return self._confidences

    @property
    def paths(self) -> tuple:
        if isinstance(self._route, str):
            return (self._route,) * len(self._labels)
        if len(self._route) == 2:
            index, labels = self._route
            return tuple(labels[i] for i in index.tolist())
        mask, yes, no = self._route
        return tuple(yes if taken else no for taken in mask.tolist())

    @property
    def path(self) -> str:
        """The path of the whole batch: the one every image took, or "mixed"."""
        if isinstance(self._route, str):
            return self._route
        if len(self._route) == 2:
            index, labels = self._route
            return labels[int(index[0])] if (index == index[0]).all() else "mixed"
        mask, yes, no = self._route
        return yes if mask.all() else no if not mask.any() else "mixed"

    def predictions(self, class_names: list) -> list:
        per_image = self._seconds / max(1, len(self._labels))
        return [
            Prediction(int(label), class_names[int(label)], float(conf), path, per_image)
            for label, conf, path in zip(self._labels.tolist(), self.confidences.tolist(), self.paths)
        ]

    def __repr__(self) -> str:
        return (f"BatchResult(pipeline={self._pipeline!r}, labels={self._labels!r}, path={self.path!r}, "
                f"seconds={self._seconds!r})")
