"""The four ways to classify: ``cbnet``, ``branchynet``, ``lenet`` and the truncated ``branch``.

Every pipeline takes uint8 images (N, 28, 28), runs pre-processing, its models and post-processing
(softmax, entropy gate), and returns an immutable ``BatchResult``. A stage hook (see ``StageHook``)
hears about each stage, which is how a DVFS policy sets the frequency between stages.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional, Protocol

import numpy as np

from cbnet_tl.runtime.bundle import Bundle
from cbnet_tl.runtime.errors import BundleError, ImageError
from cbnet_tl.runtime.gate import exits_early, softmax, softmax_entropy
from cbnet_tl.runtime.interpreter import Model, dequantize, quantize

PIPELINE_MODELS = {
    "cbnet": ("autoencoder", "branch"),
    "branchynet": ("trunk_branch", "main_tail"),
    "lenet": ("lenet",),
    "branch": ("branch",),
}
# (model, output index, next model): where one model's raw output feeds the next
PIPELINE_LINKS = {
    "cbnet": (("autoencoder", 0, "branch"),),
    "branchynet": (("trunk_branch", 1, "main_tail"),),
}
PIPELINES = tuple(PIPELINE_MODELS)
DEPLOYED_PIPELINES = ("cbnet", "branchynet", "lenet")


class StageHook(Protocol):
    def begin_inference(self, pipeline: str) -> None: ...
    def before_stage(self, stage: str) -> None: ...
    def after_stage(self, stage: str, seconds: float) -> None: ...
    def end_inference(self, path: str) -> None: ...


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


def check_images(images: np.ndarray) -> np.ndarray:
    """uint8 (N, 28, 28), (28, 28) or (N, 28, 28, 1) → uint8 (N, 28, 28), or a clear error."""
    images = np.asarray(images)
    if images.ndim == 2:
        images = images[None]
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ImageError(f"Expected uint8 images of shape (N, 28, 28). Received {images.shape}")
    if images.dtype != np.uint8:
        raise ImageError(f"Expected uint8 pixel values 0..255. Received dtype {images.dtype}")
    return images


def preprocess(images: np.ndarray) -> np.ndarray:
    """uint8 (N, 28, 28) or (28, 28) → float32 (N, 28, 28, 1) in [0, 1]."""
    return (check_images(images).astype(np.float32) / 255.0)[..., None]


def _byte_codes(dtype: np.dtype) -> Optional[np.ndarray]:
    """Every value of a one-byte storage type, indexed by its byte (``raw.view(np.uint8)``)."""
    dtype = np.dtype(dtype)
    return np.arange(256, dtype=np.uint8).view(dtype) if dtype in (np.dtype(np.int8), np.dtype(np.uint8)) else None


def input_table(spec) -> Optional[np.ndarray]:
    """pixel (0..255) → the model input's storage value, the same numbers ``quantize(preprocess(·))`` gives,
    as one table lookup. None for float inputs."""
    if not spec.is_quantized or _byte_codes(spec.dtype) is None:
        return None
    return quantize(np.arange(256, dtype=np.float32)[:, None, None] / np.float32(255.0), spec).reshape(256)


def requantize_table(out_spec, in_spec) -> Optional[np.ndarray]:
    """One model's output byte → the next model's input value (dequantize, then quantize), as a table.
    None when the output is not a one-byte quantized type or the input is not quantized."""
    codes = _byte_codes(out_spec.dtype)
    if codes is None or not (out_spec.is_quantized and in_spec.is_quantized):
        return None
    return quantize(dequantize(codes, out_spec), in_spec)


def dequantize_table(spec) -> Optional[np.ndarray]:
    """Output byte → real value (float32), the numbers ``dequantize`` gives, as a table. None for float outputs."""
    codes = _byte_codes(spec.dtype)
    return dequantize(codes, spec) if spec.is_quantized and codes is not None else None


def _lookup(table: np.ndarray, raw: np.ndarray) -> np.ndarray:
    """Apply a 256-entry table to a one-byte tensor."""
    return table[np.ascontiguousarray(raw).view(np.uint8)]


def _pass_on(raw: np.ndarray, out_spec, in_spec, table: Optional[np.ndarray]) -> np.ndarray:
    """Feed one model's raw output to the next, requantizing only when the two scales differ."""
    if (out_spec.scale, out_spec.zero_point, out_spec.dtype) == (in_spec.scale, in_spec.zero_point, in_spec.dtype):
        return raw
    if table is not None:
        return _lookup(table, raw)
    return quantize(dequantize(raw, out_spec), in_spec)


class _NoHook:
    def begin_inference(self, pipeline): pass
    def before_stage(self, stage): pass
    def after_stage(self, stage, seconds): pass
    def end_inference(self, path): pass


class Pipeline:
    """One pipeline over a loaded bundle. ``classify`` is safe to call repeatedly."""

    def __init__(self, bundle: Bundle, name: str):
        if name not in PIPELINE_MODELS:
            raise BundleError(f"Unknown pipeline {name!r}. Expected one of {list(PIPELINE_MODELS)}")
        missing = [m for m in PIPELINE_MODELS[name] if m not in bundle.models]
        if missing:
            raise BundleError(f"Pipeline {name} needs model(s) {missing}, which the bundle did not load")
        self.name = name
        self.bundle = bundle
        self.models = {m: bundle.models[m] for m in PIPELINE_MODELS[name]}
        self.threshold = bundle.entropy_threshold
        self.device = next(iter(self.models.values())).device
        first = self.models[PIPELINE_MODELS[name][0]]
        self._input_table = input_table(first.input)
        self._real = {(m, i): dequantize_table(spec) for m, model in self.models.items()
                      for i, spec in enumerate(model.outputs)}
        self._links = {(source, index): requantize_table(self.models[source].outputs[index], self.models[target].input)
                       for source, index, target in PIPELINE_LINKS.get(name, ())}

    def classify(self, images: np.ndarray, hook: Optional[StageHook] = None) -> BatchResult:
        hook = hook or _NoHook()
        start = time.perf_counter()
        stage_seconds: dict = {}
        hook.begin_inference(self.name)
        if self._input_table is not None:  # int8 models: pixels straight to the input's storage values
            x, quantized = self._input_table[check_images(images)][..., None], True
        else:
            x, quantized = preprocess(images), False
        probabilities, paths = getattr(self, f"_run_{self.name}")(x, quantized, hook, stage_seconds)
        labels = probabilities.argmax(axis=-1)
        confidences = probabilities.max(axis=-1)
        seconds = time.perf_counter() - start
        hook.end_inference(paths[0] if len(set(paths)) == 1 else "mixed")
        return BatchResult(self.name, labels, confidences, tuple(paths), seconds, stage_seconds)

    def _stage(self, stage: str, model: Model, values: np.ndarray, hook, stage_seconds, quantized=False):
        hook.before_stage(stage)
        begin = time.perf_counter()
        outputs = model.invoke_quantized(values) if quantized else model.invoke_quantized(quantize(values, model.input))
        elapsed = time.perf_counter() - begin
        stage_seconds[stage] = stage_seconds.get(stage, 0.0) + elapsed
        hook.after_stage(stage, elapsed)
        return outputs

    def _logits(self, model_name: str, raw: list, index: int = 0) -> np.ndarray:
        table = self._real[(model_name, index)]
        if table is None:
            return dequantize(raw[index], self.models[model_name].outputs[index])
        return _lookup(table, raw[index])

    def _feed(self, source: str, index: int, target: str, raw: np.ndarray) -> np.ndarray:
        """``source``'s output ``index`` (raw) as ``target``'s input, by the link's table when it has one."""
        return _pass_on(raw, self.models[source].outputs[index], self.models[target].input, self._links[(source, index)])

    def _run_lenet(self, x, quantized, hook, stage_seconds):
        model = self.models["lenet"]
        raw = self._stage("lenet", model, x, hook, stage_seconds, quantized)
        return softmax(self._logits("lenet", raw)), ["main"] * len(x)

    def _run_branch(self, x, quantized, hook, stage_seconds):
        model = self.models["branch"]
        raw = self._stage("branch", model, x, hook, stage_seconds, quantized)
        return softmax(self._logits("branch", raw)), ["branch-only"] * len(x)

    def _run_cbnet(self, x, quantized, hook, stage_seconds):
        autoencoder, branch = self.models["autoencoder"], self.models["branch"]
        converted = self._stage("autoencoder", autoencoder, x, hook, stage_seconds, quantized)
        fed = self._feed("autoencoder", 0, "branch", converted[0])
        raw = self._stage("branch", branch, fed, hook, stage_seconds, quantized=True)
        return softmax(self._logits("branch", raw)), ["ae+branch"] * len(x)

    def _run_branchynet(self, x, quantized, hook, stage_seconds):
        first, tail = self.models["trunk_branch"], self.models["main_tail"]
        raw = self._stage("trunk_branch", first, x, hook, stage_seconds, quantized)
        probabilities, entropies = softmax_entropy(self._logits("trunk_branch", raw))
        early = exits_early(entropies, self.threshold)
        paths = ["branch" if leaves else "branch+main" for leaves in early.tolist()]
        if not early.all():
            hard = np.flatnonzero(~early)
            features = self._feed("trunk_branch", 1, "main_tail", raw[1][hard])
            tail_raw = self._stage("main_tail", tail, features, hook, stage_seconds, quantized=True)
            probabilities[hard] = softmax(self._logits("main_tail", tail_raw))
        return probabilities, paths

    def convert(self, images: np.ndarray) -> np.ndarray:
        """The converting autoencoder's output as uint8 images (cbnet only), for reports."""
        if self.name != "cbnet":
            raise BundleError(f"Only the cbnet pipeline converts images; this is {self.name}")
        autoencoder = self.models["autoencoder"]
        out = autoencoder(preprocess(images))[0]
        return np.clip(np.round(out[..., 0] * 255.0), 0, 255).astype(np.uint8)


def models_for(pipelines) -> list:
    """The model names a set of pipelines needs, in a stable order."""
    names = []
    for pipeline in pipelines:
        for model in PIPELINE_MODELS[pipeline]:
            if model not in names:
                names.append(model)
    return names
