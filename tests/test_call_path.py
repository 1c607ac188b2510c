"""The per-call path gives the classes, confidences and paths of the plain computation: every pipeline, on real
test images, against a reference that calls each model through the interpreter itself and decides from its
dequantized logits (``gate.decide``, ``softmax_entropy`` + ``exits_early``: the float path this runtime used
before the per-call path). Thresholds are also set exactly at observed values, so ``<`` against ``<=`` shows.

``CBNET_TL_FULL_BUILD=/tmp/runs/fm28 CBNET_TL_FULL_DATA=/usr/share/datasets/fashion-mnist`` also runs the
comparison on a full build and the whole test set of its dataset (IDX files).
"""

from __future__ import annotations

import gzip
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from cbnet_tl.runtime.bundle import load_bundle
from cbnet_tl.runtime.gate import (
    confidence_row_test,
    decide,
    entropy_row_test,
    exit_gate,
    exits_early,
    softmax,
    softmax_entropy,
    top_probability_bytes,
)
from cbnet_tl.runtime.interpreter import TensorSpec, dequantize, quantize
from cbnet_tl.runtime.pipelines import NO_STAGES, TIME_STAGES, Pipeline
from cbnet_tl.runtime.specs import (
    CONFIDENCE_THRESHOLD,
    EARLY_EXIT_PIPELINE,
    ENTROPY_THRESHOLD,
    FALLBACK_PIPELINE,
    PIPELINE_SPECS,
    PIPELINES,
    models_for,
)
from cbnet_tl.runtime.tables import exp_difference_table

from conftest import MNIST_8K

BATCH_SIZES = (1, 7, 32)

# what a default build has; the optional pipelines (`build --with`) are tested in tests/test_multiexit.py
DEFAULT_BUILD = tuple(p for p in PIPELINES if not PIPELINE_SPECS[p].optional)


def _idx_images(folder: Path) -> np.ndarray:
    """The test split's images of an IDX data folder, as uint8 (N, 28, 28, 1)."""
    raw = gzip.open(folder / "t10k-images-idx3-ubyte.gz").read()
    return np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(-1, 28, 28, 1)


def _cases() -> list:
    full = os.environ.get("CBNET_TL_FULL_BUILD") and os.environ.get("CBNET_TL_FULL_DATA")
    return ["tiny", "full"] if full else ["tiny"]


@pytest.fixture(scope="module", params=_cases())
def build_and_images(request, tiny_build):
    if request.param == "full":
        return Path(os.environ["CBNET_TL_FULL_BUILD"]), _idx_images(Path(os.environ["CBNET_TL_FULL_DATA"]))
    return tiny_build, _idx_images(MNIST_8K)


# the reference: the interpreter called directly, float logits, the plain rules ------------------------------

def _invoke(model, values: np.ndarray) -> list:
    """[(raw output, its TensorSpec)] of one interpreter call, sized for ``values``."""
    interpreter = model._interpreter
    interpreter.resize_tensor_input(model.input.index, list(values.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(model.input.index, values)
    interpreter.invoke()
    return [(interpreter.get_tensor(spec.index), spec) for spec in model.outputs]


def _model_input(model, images: np.ndarray) -> np.ndarray:
    assert (model.input.dtype, model.input.scale, model.input.zero_point) == (np.uint8, 1.0, 0)  # raw pixels in
    return images


def reference(bundle, name: str, images: np.ndarray, options: dict) -> tuple:
    """(labels, confidences, paths) of pipeline ``name``, computed image set by image set, without the runtime's
    pipelines or tables."""
    spec, models = PIPELINE_SPECS[name], bundle.models
    if name == EARLY_EXIT_PIPELINE:
        first, (link,) = spec.models[0], spec.links
        outputs = _invoke(models[first], _model_input(models[first], images))
        probabilities, entropies = softmax_entropy(dequantize(*outputs[0]))
        early = exits_early(entropies, bundle.entropy_threshold)
        if not early.all():
            features, feature_spec = outputs[link.output]
            tail_input = quantize(dequantize(features[~early], feature_spec), models[link.target].input)
            probabilities[~early] = softmax(dequantize(*_invoke(models[link.target], tail_input)[0]))
        paths = [spec.paths[(first,)] if e else spec.full_path for e in early]
        return probabilities.argmax(-1), probabilities.max(-1), paths
    if name == FALLBACK_PIPELINE:
        first, second = spec.models
        labels, confidences = decide(dequantize(*_invoke(models[first], _model_input(models[first], images))[0]))
        unsure = confidences < float(options[CONFIDENCE_THRESHOLD])
        if unsure.any():
            raw = _invoke(models[second], _model_input(models[second], images[unsure]))[0]
            labels[unsure], confidences[unsure] = decide(dequantize(*raw))
        return labels, confidences, [spec.full_path if u else spec.paths[(first,)] for u in unsure]
    (model,) = spec.models
    labels, confidences = decide(dequantize(*_invoke(models[model], _model_input(models[model], images))[0]))
    return labels, confidences, [spec.full_path] * len(images)


def _classify_all(pipeline: Pipeline, images: np.ndarray, batch_size: int) -> tuple:
    labels, confidences, paths = [], [], []
    for start in range(0, len(images), batch_size):
        result = pipeline.classify(images[start:start + batch_size])
        labels.append(result.labels)
        confidences.append(result.confidences)
        paths.extend(result.paths)
    return np.concatenate(labels), np.concatenate(confidences), paths


def _assert_same(got: tuple, expected: tuple) -> None:
    assert np.array_equal(got[0], expected[0])
    assert got[1].dtype == expected[1].dtype and np.array_equal(got[1], expected[1])  # the same numbers, bit for bit
    assert list(got[2]) == list(expected[2])


@pytest.mark.parametrize("name", DEFAULT_BUILD)
def test_every_pipeline_gives_the_reference_classes_confidences_and_paths(build_and_images, name):
    build, images = build_and_images
    pipeline = Pipeline(load_bundle(build, models=models_for([name])), name)
    if name == FALLBACK_PIPELINE:  # a threshold that sends some images on (the build's may send none)
        first = Pipeline(load_bundle(build, models=models_for([name])), name, {CONFIDENCE_THRESHOLD: 0.0})
        threshold = float(np.quantile(first.classify(images).confidences, 0.2))
        pipeline = Pipeline(load_bundle(build, models=models_for([name])), name, {CONFIDENCE_THRESHOLD: threshold})
    expected = reference(load_bundle(build, models=models_for([name])), name, images, pipeline.options)
    assert len(set(expected[2])) == len(PIPELINE_SPECS[name].paths)  # every path is taken on these images
    for batch_size in BATCH_SIZES:
        _assert_same(_classify_all(pipeline, images, batch_size), expected)


def test_the_fallback_gate_is_strict_at_a_threshold_equal_to_an_observed_confidence(tiny_build):
    images = _idx_images(MNIST_8K)
    bundle, separate = (load_bundle(tiny_build, models=models_for([FALLBACK_PIPELINE])) for _ in range(2))
    observed = Pipeline(bundle, FALLBACK_PIPELINE, {CONFIDENCE_THRESHOLD: 0.0}).classify(images).confidences
    for threshold in np.quantile(observed, [0.1, 0.5], method="nearest"):  # exactly some image's confidence
        options = {CONFIDENCE_THRESHOLD: float(threshold)}
        expected = reference(separate, FALLBACK_PIPELINE, images, options)
        assert expected[2].count(PIPELINE_SPECS[FALLBACK_PIPELINE].full_path) == np.sum(observed < threshold)
        for batch_size in BATCH_SIZES:
            _assert_same(_classify_all(Pipeline(bundle, FALLBACK_PIPELINE, options), images, batch_size), expected)


def test_the_entropy_gate_is_strict_at_a_threshold_equal_to_an_observed_entropy(tiny_build):
    images = _idx_images(MNIST_8K)
    loaded, separate = (load_bundle(tiny_build, models=models_for([EARLY_EXIT_PIPELINE])) for _ in range(2))
    first = PIPELINE_SPECS[EARLY_EXIT_PIPELINE].models[0]
    entropies = softmax_entropy(dequantize(*_invoke(separate.models[first], images)[0]))[1]
    for threshold in np.quantile(entropies, [0.3, 0.7], method="nearest"):  # exactly some image's entropy
        bundle, apart = (replace(b, manifest=b.manifest.replace(entropy_threshold=float(threshold)))
                         for b in (loaded, separate))
        expected = reference(apart, EARLY_EXIT_PIPELINE, images, {})
        assert expected[2].count(PIPELINE_SPECS[EARLY_EXIT_PIPELINE].full_path) == np.sum(entropies >= threshold)
        for batch_size in BATCH_SIZES:
            _assert_same(_classify_all(Pipeline(bundle, EARLY_EXIT_PIPELINE), images, batch_size), expected)
        # the same threshold as the pipeline's option, over the manifest's
        by_option = Pipeline(loaded, EARLY_EXIT_PIPELINE, {ENTROPY_THRESHOLD: float(threshold)})
        _assert_same(_classify_all(by_option, images, BATCH_SIZES[1]), expected)


# the decision from raw bytes, on every kind of row ----------------------------------------------------------

@pytest.mark.parametrize("dtype,scale,zero_point", [(np.int8, 0.1798, 41), (np.int8, 1.0, -128), (np.uint8, 0.05, 3),
                                                    (np.int8, 0.0039, 0), (np.int8, 2.7, -7)])
def test_classes_and_confidences_from_raw_bytes_are_decide_s(dtype, scale, zero_point):
    spec = TensorSpec("scores", 0, (1, 10), np.dtype(dtype), scale, zero_point)
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, size=(20_000, 10), dtype=np.uint8)
    codes[:500] = codes[:500, :1]  # every score tied
    codes[500:1000, 3] = codes[500:1000, 7] = 255  # a tie at the top
    codes[1000:1500] = rng.integers(250, 256, size=(500, 10))  # scores close together
    raw = codes.view(dtype)
    labels, confidences = raw.argmax(axis=-1), top_probability_bytes(raw, exp_difference_table(spec))
    expected_labels, expected_confidences = decide(dequantize(raw, spec))
    assert np.array_equal(labels, expected_labels)
    assert confidences.dtype == expected_confidences.dtype and np.array_equal(confidences, expected_confidences)


@pytest.mark.parametrize("threshold", [0.5, 0.025, 0.0, -1.0])
def test_exit_gate_gives_the_early_exit_test_and_the_top_probability(threshold):
    rng = np.random.default_rng(1)
    logits = rng.normal(scale=rng.uniform(0.1, 30, size=(5000, 1)), size=(5000, 10))
    logits[:100] = 3.0  # every logit equal: entropy ln 10
    early, top = exit_gate(logits, threshold)
    probabilities, entropies = softmax_entropy(logits)
    assert np.array_equal(early, exits_early(entropies, threshold))
    assert np.array_equal(top, probabilities.max(-1))


# hooks, batch sizes ----------------------------------------------------------------------------------------

class _Recorder:
    def __init__(self):
        self.events = []

    def begin_inference(self, pipeline):
        self.events.append(("begin", pipeline))

    def before_stage(self, stage, num_images):
        self.events.append(("before", stage, num_images))

    def after_stage(self, stage, seconds):
        self.events.append(("after", stage))

    def end_inference(self, path):
        self.events.append(("end", path))


def test_a_hook_hears_every_stage_and_gets_its_time_and_no_hook_times_nothing(tiny_build):
    images = _idx_images(MNIST_8K)[:64]
    bundle = load_bundle(tiny_build, models=models_for([EARLY_EXIT_PIPELINE]))
    pipeline = Pipeline(bundle, EARLY_EXIT_PIPELINE)
    plain = pipeline.classify(images)
    assert plain.stage_seconds is NO_STAGES and plain.seconds > 0
    assert plain.path == "mixed"  # this slice has easy and hard images
    first, tail = PIPELINE_SPECS[EARLY_EXIT_PIPELINE].models
    for hook in (_Recorder(), _Recorder()):  # a second hook replaces the first one's runner
        result = pipeline.classify(images, hook=hook)
        hard = sum(p != "branch" for p in plain.paths)  # the images that go on past the exit
        assert hook.events == [("begin", EARLY_EXIT_PIPELINE), ("before", first, len(images)), ("after", first),
                               ("before", tail, hard), ("after", tail), ("end", "mixed")]
        assert set(result.stage_seconds) == {first, tail} and all(s > 0 for s in result.stage_seconds.values())
        _assert_same((result.labels, result.confidences, result.paths), (plain.labels, plain.confidences, plain.paths))
    easy = images[np.array([p == "branch" for p in plain.paths])][:3]
    timed = pipeline.classify(easy, hook=TIME_STAGES)
    assert set(timed.stage_seconds) == {first} and timed.path == "branch"


def test_any_order_of_batch_sizes_gives_the_single_image_answers(tiny_build):
    images = _idx_images(MNIST_8K)[:40]
    for name in DEFAULT_BUILD:
        pipeline = Pipeline(load_bundle(tiny_build, models=models_for([name])), name)
        singles = [pipeline.classify(image) for image in images]
        start = 0
        for size in (1, 32, 1, 5, 1):  # the interpreter is resized back and forth
            result = pipeline.classify(images[start:start + size])
            assert result.labels.tolist() == [s.labels[0] for s in singles[start:start + size]]
            assert result.confidences.tolist() == [s.confidences[0] for s in singles[start:start + size]]
            assert list(result.paths) == [s.paths[0] for s in singles[start:start + size]]
            start += size


@pytest.mark.parametrize("scale,zero_point", [(0.238, 64), (0.1798, 41), (0.05, -3), (1.0, -128)])
def test_one_row_gate_tests_decide_as_the_exact_computations_or_defer(scale, zero_point):
    """Each one-row test says what the exact computation says, or defers (None) near the threshold."""
    spec = TensorSpec("scores", 0, (1, 10), np.dtype(np.int8), scale, zero_point)
    rng = np.random.default_rng(2)
    raw = rng.integers(-128, 128, size=(3000, 10)).astype(np.int8)
    raw[:1000] = np.clip(raw[:1000] // 8 + 100, -128, 127)  # close scores: high entropy, low confidence
    logits = dequantize(raw, spec)
    entropies = softmax_entropy(logits)[1]
    confidences = decide(logits)[1]
    rows, close = raw.tolist(), slice(0, 1000)
    for threshold in (*np.quantile(entropies[close], [0.05, 0.5, 0.95]), entropies[7], 0.0):  # [7]: a row's own
        test, exact = entropy_row_test(scale, float(threshold)), exits_early(entropies, threshold)
        told = [test(row) for row in rows]
        assert all(t is None or t == e for t, e in zip(told, exact.tolist()))
        assert told[7] is None or threshold != entropies[7]  # at a row's own value: defers
        assert sum(t is None for t in told) < 0.05 * len(rows) + 2
    for threshold in (*np.quantile(confidences[close], [0.05, 0.5, 0.95]), float(confidences[11])):
        test, exact = confidence_row_test(scale, float(threshold)), confidences < threshold
        told = [test(row) for row in rows]
        assert all(t is None or t == e for t, e in zip(told, exact.tolist()))
        assert told[11] is None or threshold != confidences[11]  # at a row's own value: defers
        assert sum(t is None for t in told) < 0.01 * len(rows) + 2


def test_the_row_by_row_interpreter_path_gives_the_same_answers(tiny_build):
    """tflite-runtime runs a batch as batch-1 invokes (its aarch64 int8 FULLY_CONNECTED crashes at batch > 1)."""
    images = _idx_images(MNIST_8K)[:48]
    for name in DEFAULT_BUILD:
        expected = Pipeline(load_bundle(tiny_build, models=models_for([name])), name).classify(images)
        bundle = load_bundle(tiny_build, models=models_for([name]))
        for model in bundle.models.values():
            model._one_row_at_a_time = True
        result = Pipeline(bundle, name).classify(images)
        _assert_same((result.labels, result.confidences, result.paths),
                     (expected.labels, expected.confidences, expected.paths))
