"""The ways to classify, as one table of ``PipelineSpec``: ``cbnet``, ``cbnet-fallback``, ``branchynet``,
``lenet`` and the truncated ``branch``.

Every pipeline takes uint8 images (N, height, width, channels) of the build's input spec, runs pre-processing, its models and post-processing
(softmax, entropy gate), and returns an immutable ``BatchResult``. A spec names the pipeline's models in
order, the links between them (which output feeds which model), the path label of each set of models
an image can run through, and the runner that drives them. A stage hook (``StageHook``) hears about each
stage, which is how a DVFS policy sets the frequency between stages.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol

import numpy as np

from cbnet_tl.runtime.bundle import Bundle
from cbnet_tl.runtime.errors import BundleError, ImageError
from cbnet_tl.runtime.gate import decide, exits_early, softmax, softmax_entropy
from cbnet_tl.runtime.interpreter import Model, dequantize, quantize
from cbnet_tl.runtime.tables import dequantize_table, input_table, lookup, pass_on, requantize_table


class StageHook(Protocol):
    def begin_inference(self, pipeline: str) -> None: ...
    def before_stage(self, stage: str) -> None: ...
    def after_stage(self, stage: str, seconds: float) -> None: ...
    def end_inference(self, path: str) -> None: ...


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
    runner: Callable  # (pipeline, uint8 images (N, H, W, C), run) -> (labels, confidences, path labels)
    links: tuple = ()
    deployed: bool = True  # shipped in bundles and checked by the build
    description: str = ""

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


@dataclass(frozen=True)
class BatchResult:
    pipeline: str
    labels: np.ndarray
    confidences: np.ndarray
    paths: tuple
    seconds: float
    stage_seconds: dict

    def predictions(self, class_names: list) -> list:
        per_image = self.seconds / max(1, len(self.labels))
        return [
            Prediction(int(label), class_names[int(label)], float(conf), path, per_image)
            for label, conf, path in zip(self.labels, self.confidences, self.paths)
        ]


def check_images(images: np.ndarray, shape: tuple) -> np.ndarray:
    """uint8 (N, H, W, C) or one image (H, W, C) of ``shape`` = (H, W, C), a tuple; grayscale also as (N, H, W)
    or (H, W) → uint8 (N, H, W, C), or a clear error. On every call: no allocation beyond the views."""
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


class _NoHook:
    def begin_inference(self, pipeline): pass
    def before_stage(self, stage): pass
    def after_stage(self, stage, seconds): pass
    def end_inference(self, path): pass


@dataclass
class _Run:
    """One call of ``classify``: the hook and the time spent in each stage."""

    hook: StageHook
    stage_seconds: dict = field(default_factory=dict)


class Pipeline:
    """One pipeline over a loaded bundle. ``classify`` is safe to call repeatedly."""

    def __init__(self, bundle: Bundle, name, options: Optional[dict] = None):
        """``name``: a pipeline of the table, or a ``PipelineSpec``. ``options`` override the manifest's."""
        spec = name if isinstance(name, PipelineSpec) else PIPELINE_SPECS.get(name)
        if spec is None:
            raise BundleError(f"Unknown pipeline {name!r}. Expected one of {list(PIPELINE_SPECS)}")
        name = spec.name
        missing = [m for m in spec.models if m not in bundle.models]
        if missing:
            raise BundleError(f"Pipeline {name} needs model(s) {missing}, which the bundle did not load")
        self.spec, self.name, self.bundle = spec, name, bundle
        self.models = {m: bundle.models[m] for m in spec.models}
        self.threshold = bundle.entropy_threshold
        self.input_spec = bundle.manifest.input_spec
        self.input_shape = self.input_spec.shape
        self.device = next(iter(self.models.values())).device
        entry = bundle.manifest.pipelines.get(name)
        self.options = {**(entry.options if entry is not None else {}), **(options or {})}
        self._ranges = {m: bundle.manifest.models[m].input_range for m in self.models}
        self._input_tables = {m: input_table(model.input, self._ranges[m]) for m, model in self.models.items()}
        self._real = {(m, i): dequantize_table(out) for m, model in self.models.items()
                      for i, out in enumerate(model.outputs)}
        self._links = {(link.source, link.output): (link.target, requantize_table(
            self.models[link.source].outputs[link.output], self.models[link.target].input)) for link in spec.links}

    @property
    def configuration(self) -> dict:
        """What each model runs as: precision (from its input type) / op resolver, e.g. ``int8/default``."""
        return {name: f"{'float32' if model.input.dtype == np.float32 else 'int8'}/{model.resolver}"
                for name, model in self.models.items()}

    def classify(self, images: np.ndarray, hook: Optional[StageHook] = None) -> BatchResult:
        run = _Run(hook or _NoHook())
        start = time.perf_counter()
        run.hook.begin_inference(self.name)
        labels, confidences, paths = self.spec.runner(self, check_images(images, self.input_shape), run)
        seconds = time.perf_counter() - start
        run.hook.end_inference(paths[0] if len(set(paths)) == 1 else "mixed")
        return BatchResult(self.name, labels, confidences, tuple(paths), seconds, run.stage_seconds)

    def model_input(self, name: str, images: np.ndarray) -> np.ndarray:
        """uint8 images (N, H, W, C) as model ``name``'s input storage values: the bytes themselves for raw-pixel
        (uint8, scale 1) inputs, one table lookup for int8 inputs, floats for float models."""
        spec, input_range = self.models[name].input, self._ranges[name]
        if input_range == 255.0 and spec.dtype == np.uint8 and spec.scale == 1.0 and spec.zero_point == 0:
            return images
        table = self._input_tables[name]
        if table is not None:
            return table[images]
        return quantize(preprocess(images) * np.float32(input_range), spec)

    def stage(self, name: str, values: np.ndarray, run: _Run) -> list:
        """Run model ``name`` as one stage on values in its input's storage type; return its raw outputs."""
        model: Model = self.models[name]
        run.hook.before_stage(name)
        begin = time.perf_counter()
        outputs = model.invoke_quantized(values)
        elapsed = time.perf_counter() - begin
        run.stage_seconds[name] = run.stage_seconds.get(name, 0.0) + elapsed
        run.hook.after_stage(name, elapsed)
        return outputs

    def logits(self, model_name: str, raw: list, index: int = 0) -> np.ndarray:
        table = self._real[(model_name, index)]
        if table is None:
            return dequantize(raw[index], self.models[model_name].outputs[index])
        return lookup(table, raw[index])

    def feed(self, source: str, index: int, raw: np.ndarray) -> np.ndarray:
        """``source``'s output ``index`` (raw) as the linked model's input."""
        target, table = self._links[(source, index)]
        return pass_on(raw, self.models[source].outputs[index], self.models[target].input, table)



def convert_images(autoencoder: Model, images: np.ndarray) -> np.ndarray:
    """What a converting autoencoder (raw-pixel uint8 input) makes of uint8 images (N, H, W, C), as uint8
    images of the same shape."""
    raw = autoencoder.invoke_quantized(check_images(images, autoencoder.input.shape[1:]))[0]
    out = dequantize(raw, autoencoder.outputs[0])
    return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)


# runners ------------------------------------------------------------------------------------------

def _run_chain(pipeline: Pipeline, images, run):
    """Models one after another, each link feeding the next; the last model's logits decide."""
    names = pipeline.spec.models
    raw = pipeline.stage(names[0], pipeline.model_input(names[0], images), run)
    for link in pipeline.spec.links:
        raw = pipeline.stage(link.target, pipeline.feed(link.source, link.output, raw[link.output]), run)
    labels, confidences = decide(pipeline.logits(names[-1], raw))
    return labels, confidences, [pipeline.spec.paths[names]] * len(images)


def _run_fallback(pipeline: Pipeline, images, run):
    """CBNet first; images whose top-class probability is below the threshold go to LeNet as well."""
    first, second = pipeline.spec.models
    threshold = pipeline.options.get(CONFIDENCE_THRESHOLD)
    if threshold is None:
        raise BundleError(f"Pipeline {pipeline.name} needs options.{CONFIDENCE_THRESHOLD} in the manifest; "
                          "rebuild the bundle")
    labels, confidences = decide(pipeline.logits(first, pipeline.stage(first, pipeline.model_input(first, images), run)))
    unsure = confidences < float(threshold)
    short, full = pipeline.spec.paths[(first,)], pipeline.spec.paths[pipeline.spec.models]
    paths = [full if u else short for u in unsure.tolist()]
    if unsure.any():
        hard = np.flatnonzero(unsure)
        raw = pipeline.stage(second, pipeline.model_input(second, images[hard]), run)
        labels[hard], confidences[hard] = decide(pipeline.logits(second, raw))
    return labels, confidences, paths


def _run_early_exit(pipeline: Pipeline, images, run):
    """BranchyNet: the first model's branch logits decide, by entropy, who also runs the tail."""
    spec = pipeline.spec
    first, (link,) = spec.models[0], spec.links
    raw = pipeline.stage(first, pipeline.model_input(first, images), run)
    probabilities, entropies = softmax_entropy(pipeline.logits(first, raw))
    early = exits_early(entropies, pipeline.threshold)
    short, full = spec.paths[(first,)], spec.paths[spec.models]
    paths = [short if leaves else full for leaves in early.tolist()]
    if not early.all():
        hard = np.flatnonzero(~early)
        features = pipeline.feed(first, link.output, raw[link.output][hard])
        tail_raw = pipeline.stage(link.target, features, run)
        probabilities[hard] = softmax(pipeline.logits(link.target, tail_raw))
    return probabilities.argmax(axis=-1), probabilities.max(axis=-1), paths


CONFIDENCE_THRESHOLD = "confidence_threshold"  # cbnet-fallback's option, chosen on validation data by the build
# The pipelines other code refers to by their role; everything else about them is in their spec.
DEFAULT_PIPELINE = "cbnet"  # CBNet itself: the default of every command and the bundle's service
FALLBACK_PIPELINE = "cbnet-fallback"  # the build chooses its CONFIDENCE_THRESHOLD
EARLY_EXIT_PIPELINE = "branchynet"  # the entropy gate that tells easy images from hard ones
BASELINE_PIPELINE = "lenet"  # what speed-ups are measured against

PIPELINE_SPECS = {spec.name: spec for spec in (
    PipelineSpec(DEFAULT_PIPELINE, ("cbnet",), {("cbnet",): "ae+classifier"}, _run_chain,
                 description="converting autoencoder and light classifier, fused in one graph (raw pixels in)"),
    PipelineSpec(FALLBACK_PIPELINE, ("cbnet", "lenet"), {("cbnet",): "cbnet", ("cbnet", "lenet"): "cbnet+lenet"},
                 _run_fallback, description="cbnet; LeNet too where cbnet's confidence is below the threshold"),
    PipelineSpec(EARLY_EXIT_PIPELINE, ("trunk_branch", "main_tail"),
                 {("trunk_branch",): "branch", ("trunk_branch", "main_tail"): "branch+main"}, _run_early_exit,
                 links=(Link("trunk_branch", 1, "main_tail"),),
                 description="B-LeNet: exits at the branch when its entropy is below the threshold"),
    PipelineSpec(BASELINE_PIPELINE, ("lenet",), {("lenet",): "main"}, _run_chain, description="the LeNet baseline"),
    PipelineSpec("branch", ("branch",), {("branch",): "branch-only"}, _run_chain, deployed=False,
                 description="the B-LeNet branch alone (truncated)"),
)}
PIPELINES = tuple(PIPELINE_SPECS)
DEPLOYED_PIPELINES = tuple(name for name, spec in PIPELINE_SPECS.items() if spec.deployed)
# Models a bundle carries beside its pipelines' own:
CONVERTER = "autoencoder"  # the converting AE alone: the report's grid and `--convert-image`
INVOKE_PROBE = "noop"  # a reshape-only model: timing it gives the fixed cost of one interpreter call (bench's floor)


def models_for(pipelines) -> list:
    """The model names a set of pipelines needs, in a stable order."""
    names = []
    for pipeline in pipelines:
        for model in PIPELINE_SPECS[pipeline].models:
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
