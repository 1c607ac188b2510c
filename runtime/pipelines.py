"""``Pipeline``: one pipeline of the spec table (``specs``) run on a bundle's models.

Every pipeline takes uint8 images (N, height, width, channels) of the build's input spec, runs its models and
its decision (argmax and top probability, or BranchyNet's entropy gate), and returns an immutable
``BatchResult`` (``results``).

The per-call path is built once, when a ``Pipeline`` is made: every model's feeder and output readers
(``Model.bind``), the input tables, and the runner its spec names by key (``RUNNERS``: ``runners``, ``exits``),
bound to them; one made with ``gates_off`` runs every image through every model. A call checks the images once,
runs the models, and takes the class as the argmax of the raw scores. The confidence (top softmax probability, the
numbers ``gate.decide`` gives from dequantized logits) comes from a table of the raw bytes
(``gate.top_probability_bytes``), when first read unless a gate needs it. Which path each image took is kept
as a mask and spelt out only when ``paths`` is read. A stage hook (``StageHook``, e.g. a DVFS session) hears
about each stage with the number of images that run it, and gets each stage's time; without a hook no stage is
timed and nothing is counted.
"""

from __future__ import annotations

import time
from types import MappingProxyType
from typing import Callable, Mapping, Optional, Protocol

import numpy as np

from cbnet_tl.runtime.bundle import Bundle
from cbnet_tl.runtime.errors import BundleError, ImageError
from cbnet_tl.runtime.exits import multi_exit
from cbnet_tl.runtime.gate import decide, top_probability_bytes
from cbnet_tl.runtime.interpreter import dequantize, quantize
from cbnet_tl.runtime.results import NO_STAGES, BatchResult
from cbnet_tl.runtime.runners import chain, early_exit, fallback
from cbnet_tl.runtime.specs import PIPELINE_SPECS, Link, PipelineSpec, Runner, as_built
from cbnet_tl.runtime.tables import (
    dequantize_table,
    exp_difference_table,
    input_table,
    is_identity,
    lookup,
    requantize_table,
)


class StageHook(Protocol):
    def begin_inference(self, pipeline: str) -> None: ...
    def before_stage(self, stage: str, num_images: int) -> None: ...  # the images that run this stage
    def after_stage(self, stage: str, seconds: float) -> None: ...
    def end_inference(self, path: str) -> None: ...
    # optional: exit_confidence(stage, confidence), what a multi-exit pipeline's exit said of the one image of a
    # batch that goes on past it (the top softmax probability), told before the next stage


class TimeStages:
    """A stage hook that does nothing itself: pass it to ``classify`` to get each stage's time in
    ``stage_seconds`` without a DVFS policy."""

    def begin_inference(self, pipeline: str) -> None: pass
    def before_stage(self, stage: str, num_images: int) -> None: pass
    def after_stage(self, stage: str, seconds: float) -> None: pass
    def end_inference(self, path: str) -> None: pass


TIME_STAGES = TimeStages()

# The code of each runner key a spec names (``specs.Runner``): (pipeline, {model: run}, hook or None) ->
# classify(uint8 images (N, H, W, C)) -> (labels, confidences, route)
RUNNERS: Mapping[Runner, Callable] = MappingProxyType({
    Runner.CHAIN: chain, Runner.FALLBACK: fallback, Runner.EARLY_EXIT: early_exit, Runner.MULTI_EXIT: multi_exit})

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

    def __init__(self, bundle: Bundle, name, options: Optional[dict] = None, gates_off: bool = False):
        """``name``: a pipeline of the table, or a ``PipelineSpec``. ``options`` override the manifest's.
        ``gates_off``: every image runs every model (the spec's gate option at its "off" value, over both)."""
        spec = name if isinstance(name, PipelineSpec) else PIPELINE_SPECS.get(name)
        if spec is None:
            raise BundleError(f"Unknown pipeline {name!r}. Expected one of {list(PIPELINE_SPECS)}")
        if spec.runner not in RUNNERS:
            raise BundleError(f"Pipeline {spec.name}: expected a runner of {[r.value for r in RUNNERS]}. "
                              f"Received: {spec.runner!r}")
        name = spec.name
        spec = as_built(spec, bundle.manifest)  # e.g. cbnet-fallback's second network, chosen by the build
        entry = bundle.manifest.pipelines.get(name)
        missing = [m for m in spec.models if m not in bundle.models]
        if missing:
            raise BundleError(f"Pipeline {name} needs model(s) {missing}, which the bundle did not load")
        self.spec, self.name, self.bundle = spec, name, bundle
        self.models = {m: bundle.models[m] for m in spec.models}
        self.input_spec = bundle.manifest.input_spec
        self.input_shape = self.input_spec.shape
        self.device = next(iter(self.models.values())).device
        self.options = {**(entry.options if entry is not None else {}), **(options or {}),
                        **(spec.gates_off if gates_off else {})}
        self._ranges = {m: bundle.manifest.models[m].input_range for m in self.models}
        self._input_tables = {m: input_table(model.input, self._ranges[m]) for m, model in self.models.items()}
        self._tables: dict = {}
        bound = {m: model.bind() for m, model in self.models.items()}
        self._runs = {m: run for m, (run, _) in bound.items()}
        self.reads = {m: reads for m, (_, reads) in bound.items()}
        self._runner = RUNNERS[spec.runner]
        self._classify = self._runner(self, self._runs)
        self._hook, self._hooked, self._stage_seconds = None, None, None

    @property
    def runs(self) -> Mapping:
        """Each model's run on its input storage values, unhooked and untimed (``exits.exit_scores`` reads every
        exit with them)."""
        return MappingProxyType(self._runs)

    @property
    def entropy_threshold(self) -> float:
        """The manifest's BranchyNet entropy threshold (``specs.ENTROPY_THRESHOLD`` in ``options`` overrides it)."""
        return self.bundle.entropy_threshold

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
            self._hooked = self._runner(self, {m: self._timed(m, run, hook) for m, run in self._runs.items()}, hook)
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
        if table is not None and is_identity(table, out, into):
            return run  # the two scales a float32 rounding apart: every byte stays itself
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
