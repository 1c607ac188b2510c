"""The ways to classify, as one table of ``PipelineSpec``: ``cbnet``, ``cbnet-fallback``, ``branchynet``,
``lenet``, the truncated ``branch`` and, in builds made ``--with multiexit``, the three-exit ``multiexit``.

Every pipeline takes uint8 images (N, height, width, channels) of the build's input spec, runs its models and
its decision (argmax and top probability, or BranchyNet's entropy gate), and returns an immutable
``BatchResult``. A spec names the pipeline's models in order, the links between them (which output feeds which
model), the path label of each set of models an image can run through, and the runner that drives them.

The per-call path is built once, when a ``Pipeline`` is made: every model's feeder and output readers
(``Model.bind``), the input tables, and a runner bound to them. A call checks the images once, runs the
models, and takes the class as the argmax of the raw scores. The confidence (top softmax probability, the
numbers ``gate.decide`` gives from dequantized logits) comes from a table of the raw bytes
(``gate.top_probability_bytes``), when first read unless a gate needs it. Which path each image took is kept
as a mask and spelt out only when ``paths`` is read. A stage hook (``StageHook``, e.g. a DVFS session) hears
about each stage with the number of images that run it, and gets each stage's time; without a hook no stage is
timed and nothing is counted.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Mapping, Optional, Protocol

import numpy as np

from cbnet_tl.runtime.bundle import Bundle
from cbnet_tl.runtime.errors import BundleError, ImageError
from cbnet_tl.runtime.exits import multi_exit
from cbnet_tl.runtime.gate import decide, top_probability_bytes
from cbnet_tl.runtime.interpreter import dequantize, quantize
from cbnet_tl.runtime.runners import CONFIDENCE_THRESHOLD, chain, early_exit, fallback
from cbnet_tl.runtime.tables import dequantize_table, exp_difference_table, input_table, lookup, requantize_table

class StageHook(Protocol):
    def begin_inference(self, pipeline: str) -> None: ...
    def before_stage(self, stage: str, num_images: int) -> None: ...  # the images that run this stage
    def after_stage(self, stage: str, seconds: float) -> None: ...
    def end_inference(self, path: str) -> None: ...
    # optional: exit_confidence(stage, confidence), what a multi-exit pipeline's exit said of the one image of a
    # batch that goes on past it (the top softmax probability), told before the next stage


@dataclass(frozen=True)
class Link:
    """``source``'s output number ``output`` (raw bytes) is ``target``'s input."""

    source: str
    output: int
    target: str


@dataclass(frozen=True)
class PipelineSpec:
    name: str
    models: tuple  # in the order they run
    paths: dict  # models an image ran through (tuple) -> path label
    runner: Callable  # (pipeline, {model: run}, hook or None) -> classify(uint8 images (N, H, W, C)) -> (labels, confidences, route)
    links: tuple = ()
    deployed: bool = True  # shipped in bundles and checked by the build
    description: str = ""
    optional: bool = False  # built only when asked for (`cbnet-tl build --with NAME`): deployed where the manifest has it
    choices: dict = field(default_factory=dict)  # model -> the models a build may put in its place (the manifest says)

    def with_models(self, models) -> "PipelineSpec":
        """This spec with the models a manifest names in the place of its own (``choices``), or a clear error."""
        models = tuple(models)
        if not models or models == self.models:
            return self
        allowed = len(models) == len(self.models) and all(
            new == old or new in self.choices.get(old, ()) for new, old in zip(models, self.models))
        if not allowed:
            raise BundleError(f"Pipeline {self.name} cannot run models {list(models)}; expected {list(self.models)}"
                              + (f" with {self.choices} in their place" if self.choices else "") + "; rebuild the bundle")
        renamed = {old: new for old, new in zip(self.models, models)}
        paths = {tuple(renamed[m] for m in key): "+".join(renamed.get(part, part) for part in label.split("+"))
                 for key, label in self.paths.items()}
        links = tuple(Link(renamed[l.source], l.output, renamed[l.target]) for l in self.links)
        return dataclasses.replace(self, models=models, paths=paths, links=links)

    def path_of(self, stages) -> str:
        """The path label of an image that ran through ``stages`` (stage names = model names)."""
        ran = tuple(s for s in self.models if s in set(stages))
        return self.paths.get(ran, "mixed")

    @property
    def full_path(self) -> str:
        """The path label of an image that ran through every model (branchynet: ``branch+main``)."""
        return self.paths[self.models]

    @property
    def tail(self) -> tuple:
        """Models only some images run (an early exit's later stages)."""
        always = set.intersection(*(set(models) for models in self.paths))
        return tuple(m for m in self.models if m not in always)


@dataclass(frozen=True)
class Prediction:
    label: int
    class_name: str
    confidence: float
    path: str
    seconds: float


class TimeStages:
    """A stage hook that does nothing itself: pass it to ``classify`` to get each stage's time in
    ``stage_seconds`` without a DVFS policy."""

    def begin_inference(self, pipeline: str) -> None: pass
    def before_stage(self, stage: str, num_images: int) -> None: pass
    def after_stage(self, stage: str, seconds: float) -> None: pass
    def end_inference(self, path: str) -> None: pass


TIME_STAGES = TimeStages()
NO_STAGES: Mapping = MappingProxyType({})  # stage_seconds of a call without a hook: no stage was timed


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


_UINT8 = np.dtype(np.uint8)


def check_images(images: np.ndarray, shape: tuple) -> np.ndarray:
    """uint8 (N, H, W, C) or one image (H, W, C) of ``shape`` = (H, W, C), a tuple; grayscale also as (N, H, W)
    or (H, W) → uint8 (N, H, W, C), or a clear error. On every call: no allocation beyond the views."""
    if type(images) is np.ndarray and images.dtype is _UINT8 and images.ndim == 4 and images.shape[1:] == shape:
        return images  # the usual case, decided in a few attribute reads
    images = np.asarray(images)
    if images.shape == shape:  # one image
        images = images[None]
    elif shape[-1] == 1 and images.ndim in (2, 3):  # grayscale without its channel axis
        images = images[None, ..., None] if images.ndim == 2 else images[..., None]
    if images.ndim != 4 or images.shape[1:] != shape:
        raise ImageError(f"Expected uint8 images of shape (N, {', '.join(map(str, shape))}) (the bundle's input "
                         f"spec). Received {images.shape}")
    if images.dtype != np.uint8:
        raise ImageError(f"Expected uint8 pixel values 0..255. Received dtype {images.dtype}")
    return images


def preprocess(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, C) → float32 in [0, 1], same shape."""
    return images.astype(np.float32) / np.float32(255.0)


class Pipeline:
    """One pipeline over a loaded bundle. ``classify`` is safe to call repeatedly (not from two threads)."""

    def __init__(self, bundle: Bundle, name, options: Optional[dict] = None):
        """``name``: a pipeline of the table, or a ``PipelineSpec``. ``options`` override the manifest's."""
        spec = name if isinstance(name, PipelineSpec) else PIPELINE_SPECS.get(name)
        if spec is None:
            raise BundleError(f"Unknown pipeline {name!r}. Expected one of {list(PIPELINE_SPECS)}")
        name = spec.name
        spec = as_built(spec, bundle.manifest)  # e.g. cbnet-fallback's second network, chosen by the build
        entry = bundle.manifest.pipelines.get(name)
        missing = [m for m in spec.models if m not in bundle.models]
        if missing:
            raise BundleError(f"Pipeline {name} needs model(s) {missing}, which the bundle did not load")
        self.spec, self.name, self.bundle = spec, name, bundle
        self.models = {m: bundle.models[m] for m in spec.models}
        self.threshold = bundle.entropy_threshold
        self.input_spec = bundle.manifest.input_spec
        self.input_shape = self.input_spec.shape
        self.device = next(iter(self.models.values())).device
        self.options = {**(entry.options if entry is not None else {}), **(options or {})}
        self._ranges = {m: bundle.manifest.models[m].input_range for m in self.models}
        self._input_tables = {m: input_table(model.input, self._ranges[m]) for m, model in self.models.items()}
        self._tables: dict = {}
        bound = {m: model.bind() for m, model in self.models.items()}
        self._runs = {m: run for m, (run, _) in bound.items()}
        self.reads = {m: reads for m, (_, reads) in bound.items()}
        self._classify = spec.runner(self, self._runs)
        self._hook, self._hooked, self._stage_seconds = None, None, None

    @property
    def configuration(self) -> dict:
        """What each model runs as: precision (from its input type) / op resolver, e.g. ``int8/default``."""
        return {name: f"{'float32' if model.input.dtype == np.float32 else 'int8'}/{model.resolver}"
                for name, model in self.models.items()}

    def classify(self, images: np.ndarray, hook: Optional[StageHook] = None) -> BatchResult:
        images = check_images(images, self.input_shape)
        if hook is None:
            start = time.perf_counter()
            labels, confidences, route = self._classify(images)
            return BatchResult(self.name, labels, confidences, route, time.perf_counter() - start, NO_STAGES)
        if hook is not self._hook:  # the same runner, each model's run wrapped in the hook and a timer
            self._hooked = self.spec.runner(self, {m: self._timed(m, run, hook) for m, run in self._runs.items()}, hook)
            self._hook = hook
        self._stage_seconds = stage_seconds = {}
        start = time.perf_counter()
        hook.begin_inference(self.name)
        labels, confidences, route = self._hooked(images)
        result = BatchResult(self.name, labels, confidences, route, time.perf_counter() - start, stage_seconds)
        hook.end_inference(result.path)
        return result

    def _timed(self, name: str, run: Callable, hook: StageHook) -> Callable:
        def stage(values: np.ndarray) -> None:
            hook.before_stage(name, len(values))
            begin = time.perf_counter()
            run(values)
            elapsed = time.perf_counter() - begin
            self._stage_seconds[name] = self._stage_seconds.get(name, 0.0) + elapsed
            hook.after_stage(name, elapsed)

        return stage

    def model_input(self, name: str, images: np.ndarray) -> np.ndarray:
        """uint8 images (N, H, W, C) as model ``name``'s input storage values: the bytes themselves for raw-pixel
        (uint8, scale 1) inputs, one table lookup for int8 inputs, floats for float models."""
        return self.from_pixels(name, lambda values: values)(images)

    # the per-call path, put together once by the runners ---------------------------------------------
    def from_pixels(self, name: str, run: Callable) -> Callable:
        """``run`` (model ``name``'s) on uint8 images, through the model's input conversion, decided here."""
        spec, input_range, table = self.models[name].input, self._ranges[name], self._input_tables[name]
        if input_range == 255.0 and spec.dtype == np.uint8 and spec.scale == 1.0 and spec.zero_point == 0:
            return run  # raw pixels in: the bytes themselves
        if table is not None:
            return lambda images: run(table.take(images))
        # float inputs: where the float path gives every pixel value itself (range 255), one conversion
        scale = np.float32(input_range)
        values = quantize(preprocess(np.arange(256, dtype=np.uint8)) * scale, spec)
        if np.array_equal(values, np.arange(256, dtype=values.dtype)):
            return lambda images: run(images.astype(values.dtype))
        return lambda images: run(quantize(preprocess(images) * scale, spec))

    def from_output(self, link: Link, run: Callable) -> Callable:
        """``run`` (``link.target``'s) on ``link.source``'s raw output, requantized only where the scales differ."""
        out, into = self.models[link.source].outputs[link.output], self.models[link.target].input
        if (out.scale, out.zero_point, out.dtype) == (into.scale, into.zero_point, into.dtype):
            return run
        table = requantize_table(out, into)
        if table is not None:
            return lambda raw: run(lookup(table, raw))
        return lambda raw: run(quantize(dequantize(raw, out), into))

    def confidence(self, name: str, index: int = 0) -> Callable:
        """raw output ``index`` of model ``name`` → top softmax probabilities, the numbers ``gate.decide`` gives
        from its dequantized values. (The class is the raw scores' argmax: dequantizing is increasing.)"""
        spec = self.models[name].outputs[index]
        table = self._table(exp_difference_table, spec)
        if table is not None:
            return lambda raw: top_probability_bytes(raw, table)
        return lambda raw: decide(dequantize(raw, spec))[1]

    def logits64(self, name: str, index: int = 0) -> Callable:
        """raw output ``index`` of model ``name`` → its dequantized values in float64."""
        spec = self.models[name].outputs[index]
        table = self._table(dequantize_table, spec)
        if table is not None:
            table64 = table.astype(np.float64)
            return lambda raw: table64.take(raw.view(np.uint8))
        return lambda raw: np.asarray(raw, dtype=np.float64)

    def row_test(self, make: Callable, name: str, threshold: float) -> Callable:
        """A gate's test of one row of model ``name``'s raw scores (``gate.entropy_row_test`` or
        ``confidence_row_test``); for scores that are not one byte, a test that always defers (None)."""
        spec = self.models[name].outputs[0]
        if self._table(dequantize_table, spec) is None:
            return lambda row: None
        return make(spec.scale, threshold)

    def _table(self, make: Callable, spec) -> Optional[np.ndarray]:
        """``make(spec)``, made once per pipeline (a hook's runner shares the tables of the plain one)."""
        key = (make, spec)
        if key not in self._tables:
            self._tables[key] = make(spec)
        return self._tables[key]


def convert_images(autoencoder, images: np.ndarray) -> np.ndarray:
    """What a converting autoencoder (raw-pixel uint8 input) makes of uint8 images (N, H, W, C), as uint8
    images of the same shape."""
    raw = autoencoder.invoke_quantized(check_images(images, autoencoder.input.shape[1:]))[0]
    out = dequantize(raw, autoencoder.outputs[0])
    return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)


# The pipelines other code refers to by their role; everything else about them is in their spec.
DEFAULT_PIPELINE = "cbnet"  # CBNet itself: the default of every command and the bundle's service
FALLBACK_PIPELINE = "cbnet-fallback"  # the build chooses its CONFIDENCE_THRESHOLD
EARLY_EXIT_PIPELINE = "branchynet"  # the entropy gate that tells easy images from hard ones
BASELINE_PIPELINE = "lenet"  # what speed-ups are measured against
MULTIEXIT_PIPELINE = "multiexit"  # the three-exit network (`cbnet-tl build --with multiexit`)
MULTIEXIT_STAGES = ("exit1", "exit2", "exit3")  # its segments, one .tflite each (recipes/multiexit.py)
MULTIEXIT_FULL = "multiexit_full"  # its whole path in one graph: the network cbnet-fallback may fall back to
FALLBACK_NETWORKS = {"lenet": "lenet", MULTIEXIT_PIPELINE: MULTIEXIT_FULL}  # `build --fallback` -> model

PIPELINE_SPECS = {spec.name: spec for spec in (
    PipelineSpec(DEFAULT_PIPELINE, ("cbnet",), {("cbnet",): "ae+classifier"}, chain,
                 description="converting autoencoder and light classifier, fused in one graph (raw pixels in)"),
    PipelineSpec(FALLBACK_PIPELINE, ("cbnet", "lenet"), {("cbnet",): "cbnet", ("cbnet", "lenet"): "cbnet+lenet"},
                 fallback, choices={"lenet": (MULTIEXIT_FULL,)},
                 description="cbnet; LeNet (or the build's --fallback network) too where cbnet's confidence is "
                             "below the threshold"),
    PipelineSpec(EARLY_EXIT_PIPELINE, ("trunk_branch", "main_tail"),
                 {("trunk_branch",): "branch", ("trunk_branch", "main_tail"): "branch+main"}, early_exit,
                 links=(Link("trunk_branch", 1, "main_tail"),),
                 description="B-LeNet: exits at the branch when its entropy is below the threshold"),
    PipelineSpec(BASELINE_PIPELINE, ("lenet",), {("lenet",): "main"}, chain, description="the LeNet baseline"),
    PipelineSpec(MULTIEXIT_PIPELINE, MULTIEXIT_STAGES,
                 {MULTIEXIT_STAGES[:k]: MULTIEXIT_STAGES[k - 1] for k in range(1, len(MULTIEXIT_STAGES) + 1)},
                 multi_exit, links=tuple(Link(a, 1, b) for a, b in zip(MULTIEXIT_STAGES, MULTIEXIT_STAGES[1:])),
                 optional=True, description="three stages of growing cost, an exit after each; an image leaves at "
                                            "the first exit whose confidence reaches its threshold"),
    PipelineSpec("branch", ("branch",), {("branch",): "branch-only"}, chain, deployed=False,
                 description="the B-LeNet branch alone (truncated)"),
)}
PIPELINES = tuple(PIPELINE_SPECS)
# every pipeline a bundle may deploy; a bundle deploys those its manifest lists (``deployed_pipelines``)
DEPLOYED_PIPELINES = tuple(name for name, spec in PIPELINE_SPECS.items() if spec.deployed)
OPTIONAL_PIPELINES = tuple(name for name, spec in PIPELINE_SPECS.items() if spec.optional)  # build --with NAME
# Models a bundle carries beside its pipelines' own:
CONVERTER = "autoencoder"  # the converting AE alone: the report's grid and `--convert-image`
INVOKE_PROBE = "noop"  # a reshape-only model: timing it gives the fixed cost of one interpreter call (bench's floor)


def deployed_pipelines(manifest) -> tuple:
    """The pipelines a build or bundle deploys: those of ``DEPLOYED_PIPELINES`` its manifest lists (the optional
    ones only when it was built with them)."""
    return tuple(name for name in DEPLOYED_PIPELINES if name in manifest.pipelines)


def spec_in(name: str, manifest=None) -> PipelineSpec:
    """Pipeline ``name``'s spec with the models ``manifest`` names for it (cbnet-fallback's second network is the
    build's choice); the table's own without a manifest or where the manifest does not list it."""
    return as_built(PIPELINE_SPECS[name], manifest)


def as_built(spec: PipelineSpec, manifest=None) -> PipelineSpec:
    """``spec`` with the models ``manifest`` names for it in the place of the table's (``PipelineSpec.choices``)."""
    entry = manifest.pipelines.get(spec.name) if manifest is not None else None
    return spec.with_models(entry.models) if entry is not None and spec.choices else spec


def models_for(pipelines, manifest=None) -> list:
    """The model names a set of pipelines needs, in a stable order (a ``manifest``'s own where it names them:
    cbnet-fallback's second network is the build's choice)."""
    names = []
    for pipeline in pipelines:
        for model in spec_in(pipeline, manifest).models:
            if model not in names:
                names.append(model)
    return names


def spec_for_stages(stage_names) -> Optional[PipelineSpec]:
    """The pipeline whose models cover ``stage_names`` and whose first model ran (every path runs it)."""
    names = set(stage_names)
    for spec in PIPELINE_SPECS.values():
        if spec.models[0] in names and names <= set(spec.models):
            return spec
    return None
