"""The runtime on a real tiny build: real sample PNGs, batches, and bad inputs with clear errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from cbnet_tl.runtime.api import classify_paths, open_pipeline, selftest
from cbnet_tl.runtime.bundle import load_bundle
from cbnet_tl.runtime.errors import BundleError, ChecksumError, ImageError, ModelError
from cbnet_tl.runtime.images import load_image, load_images
from cbnet_tl.runtime.manifest import read_manifest
from cbnet_tl.runtime.pipelines import Pipeline
from cbnet_tl.runtime.specs import DEPLOYED_PIPELINES, PIPELINE_SPECS, PIPELINES

from conftest import TINY_BUILD


@pytest.fixture(scope="module")
def mnist_samples(samples_dir):
    paths = sorted(samples_dir.glob("mnist_*.png"))
    labels = np.array([int(p.stem.split("_")[-1]) for p in paths])
    return paths, labels


def _load(paths):
    """The sample PNGs through the tiny build's input spec (28x28, one channel): (N, 28, 28, 1) uint8."""
    return load_images(paths, read_manifest(TINY_BUILD).input_spec)


@pytest.mark.parametrize("name", [p for p in PIPELINES if not PIPELINE_SPECS[p].optional])  # a default build's
def test_pipelines_classify_real_samples(tiny_build, mnist_samples, name):
    paths, labels = mnist_samples
    pipeline = open_pipeline(tiny_build, name)  # the build directory holds every pipeline's models
    records = classify_paths(pipeline, paths)
    assert len(records) == len(paths)
    predicted = np.array([r["label"] for r in records])
    # briefly trained models on 2,000 images still read most real digits correctly
    assert np.mean(predicted == labels) >= 0.6  # chance is 0.1
    assert all(0.0 < r["confidence"] <= 1.0 and r["ms"] > 0 for r in records)


def test_branchynet_paths_follow_the_entropy_gate(tiny_bundle, mnist_samples):
    from cbnet_tl.runtime.gate import entropy, softmax

    bundle = load_bundle(tiny_bundle.parent, models=["trunk_branch", "main_tail", "branch"])
    images = _load(mnist_samples[0])
    result = Pipeline(bundle, "branchynet").classify(images)
    branch_logits = bundle.models["branch"](images.astype(np.float32))[0]
    early = entropy(softmax(branch_logits)) < bundle.entropy_threshold
    assert [p == "branch" for p in result.paths] == early.tolist()


@pytest.mark.parametrize("name", [p for p in DEPLOYED_PIPELINES if not PIPELINE_SPECS[p].optional])
def test_a_pipeline_built_with_its_gates_off_runs_every_model_on_every_image(tiny_bundle, mnist_samples, name):
    """What `run.py trace` times and the build reads every exit with: no early exit, no confidence gate, with or
    without a stage hook, at any batch size; a pipeline with a gate, built as the manifest says, does skip models."""
    from cbnet_tl.runtime.specs import models_for

    images = _load(mnist_samples[0])
    bundle = load_bundle(tiny_bundle, models=models_for([name], read_manifest(tiny_bundle)))
    spec, ran = PIPELINE_SPECS[name], {}

    class Count:
        def begin_inference(self, pipeline): pass
        def before_stage(self, stage, num_images): ran[stage] = ran.get(stage, 0) + num_images
        def after_stage(self, stage, seconds): pass
        def end_inference(self, path): pass

    every = Pipeline(bundle, name, gates_off=True)
    for batch in (images, images[:1]):
        ran.clear()
        assert set(every.classify(batch).paths) == set(every.classify(batch, hook=Count()).paths) == {spec.full_path}
        assert ran == {model: len(batch) for model in spec.models}
    if spec.gate is not None:  # the manifest's gate lets some image leave early: the test above can fail
        assert set(Pipeline(bundle, name).classify(images).paths) != {spec.full_path}


def test_batches_match_single_images(tiny_bundle, mnist_samples):
    images = _load(mnist_samples[0])
    for name in ("cbnet", "branchynet", "lenet"):
        pipeline = open_pipeline(tiny_bundle, name)
        batched = pipeline.classify(images)
        single = [pipeline.classify(image).labels[0] for image in images]
        assert batched.labels.tolist() == single
        assert batched.paths == tuple(p for image in images for p in pipeline.classify(image).paths)


def test_selftest_passes_on_a_fresh_bundle(tiny_bundle):
    report = selftest(tiny_bundle)
    assert report["passed"] and set(report["pipelines"]) == {"cbnet", "cbnet-fallback", "branchynet", "lenet"}
    assert set(DEPLOYED_PIPELINES) == {"cbnet", "cbnet-fallback", "branchynet", "lenet", "multiexit"}  # where built


def test_any_size_and_mode_goes_through_the_spec(tmp_path, samples_dir, tiny_bundle):
    """A 32x32 RGB copy of a sample becomes the spec's 28x28 gray input and gets the original's class."""
    original = next(samples_dir.glob("mnist_*.png"))
    path = tmp_path / "big.png"
    Image.open(original).convert("RGB").resize((32, 32)).save(path)
    spec = read_manifest(TINY_BUILD).input_spec
    assert load_image(path, spec).shape == (28, 28, 1)
    pipeline = open_pipeline(tiny_bundle, "lenet")
    assert pipeline.classify(load_image(path, spec)).labels[0] == pipeline.classify(load_image(original, spec)).labels[0]


def test_not_an_image(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("hello")
    with pytest.raises(ImageError, match="notes.png: not an image Pillow can read"):
        load_image(path, read_manifest(TINY_BUILD).input_spec)


def test_wrong_array_shape(tiny_bundle):
    with pytest.raises(ImageError, match=r"Expected uint8 images of shape \(N, 28, 28, 1\) \(the bundle's input spec\). "
                                         r"Received \(2, 32, 32, 1\)"):
        open_pipeline(tiny_bundle, "lenet").classify(np.zeros((2, 32, 32), np.uint8))
    with pytest.raises(ImageError, match=r"Received \(2, 28, 28, 3\)"):
        open_pipeline(tiny_bundle, "lenet").classify(np.zeros((2, 28, 28, 3), np.uint8))


@pytest.fixture()
def bundle_copy(tiny_bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, copy)
    return copy


def test_checksum_mismatch(bundle_copy):
    model = bundle_copy / "models" / "lenet_int8.tflite"
    data = bytearray(model.read_bytes())
    data[-100] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="lenet_int8.tflite: sha256 .* does not match the manifest"):
        load_bundle(bundle_copy, models=["lenet"])


def test_corrupt_tflite_is_a_model_error(bundle_copy):
    from cbnet_tl.runtime.interpreter import Model

    model = bundle_copy / "models" / "lenet_int8.tflite"
    model.write_bytes(b"TFL3 but not really a flatbuffer" * 10)
    with pytest.raises(ModelError, match="Cannot load lenet_int8.tflite as a TFLite model"):
        Model(model)


def test_missing_manifest_field(bundle_copy):
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    del manifest["entropy_threshold"]
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="lacks required field\\(s\\) entropy_threshold"):
        load_bundle(bundle_copy)


def test_float32_models_ship_where_the_target_can_use_them(tiny_build, tiny_bundle):
    """An rpi4 bundle carries the float32 models the build checked, so tuning may pick them on a board."""
    for directory in (tiny_build, tiny_bundle):
        assert load_bundle(directory, precision="float32", models=["lenet"]).models["lenet"].input.dtype == np.float32
    with pytest.raises(BundleError, match="has no float32 classifier model|manifest has no model 'classifier'"):
        load_bundle(tiny_bundle, precision="float32", models=["classifier"])


@pytest.mark.parametrize("dtype,scale,zero_point", [(np.int8, 1 / 255, -128), (np.uint8, 1 / 255, 0),
                                                    (np.int8, 0.00390625, -128), (np.int8, 0.0173, 5)])
def test_lookup_tables_give_the_same_numbers_as_the_float_path(dtype, scale, zero_point):
    from cbnet_tl.runtime.interpreter import TensorSpec, dequantize, quantize
    from cbnet_tl.runtime.pipelines import preprocess
    from cbnet_tl.runtime.tables import dequantize_table, input_table, requantize_table

    spec = TensorSpec("x", 0, (1, 28, 28, 1), np.dtype(dtype), scale, zero_point)
    pixels = np.arange(256, dtype=np.uint8).repeat(4)[:784].reshape(1, 28, 28, 1)
    table = input_table(spec)
    assert np.array_equal(table[pixels], quantize(preprocess(pixels), spec))

    nxt = TensorSpec("y", 0, (1, 28, 28, 1), np.dtype(np.int8), 1 / 255, -128)
    codes = np.arange(256, dtype=np.uint8).view(dtype)
    requantized = requantize_table(spec, nxt)[codes.view(np.uint8)]
    assert np.array_equal(requantized, quantize(dequantize(codes, spec), nxt))
    assert np.array_equal(dequantize_table(spec)[codes.view(np.uint8)], dequantize(codes, spec))
    assert input_table(TensorSpec("f", 0, (1, 28, 28, 1), np.dtype(np.float32), 0.0, 0)) is None


def test_int8_pipelines_match_the_float_path_on_real_images(tiny_bundle, mnist_samples):
    from cbnet_tl.runtime.interpreter import dequantize

    images = _load(mnist_samples[0])
    pipeline = Pipeline(load_bundle(tiny_bundle), "cbnet")
    fused = pipeline.models["cbnet"]
    assert fused.input.dtype == np.uint8 and (fused.input.scale, fused.input.zero_point) == (1.0, 0)
    expected = dequantize(fused.invoke_quantized(images)[0], fused.outputs[0])  # raw bytes in
    result = pipeline.classify(images)
    assert np.array_equal(result.labels, expected.argmax(-1))
    probabilities = np.exp(expected - expected.max(-1, keepdims=True))
    assert np.allclose(result.confidences, (probabilities / probabilities.sum(-1, keepdims=True)).max(-1))


def test_fused_cbnet_gives_the_classes_of_ae_then_classifier(tiny_build, mnist_samples):
    """One uint8-in graph = the converting AE, then the classifier on its converted image, run apart as a pipeline
    of two models. Between them the runtime requantizes the AE's output bytes to the classifier's input scale (a
    table, ``Pipeline.from_output``); the classifier then answers what it answers to the per-element float path."""
    from cbnet_tl.runtime.gate import decide
    from cbnet_tl.runtime.interpreter import dequantize, quantize
    from cbnet_tl.runtime.specs import Link, PipelineSpec, Runner

    images = _load(mnist_samples[0])
    bundle = load_bundle(tiny_build, models=["cbnet", "autoencoder", "classifier"])
    fused, ae, classifier = (bundle.models[m] for m in ("cbnet", "autoencoder", "classifier"))
    out, into = ae.outputs[0], classifier.input
    assert out.scale != into.scale  # the bytes must be requantized on the way
    apart = PipelineSpec("ae-then-classifier", ("autoencoder", "classifier"),
                         {("autoencoder", "classifier"): "apart"}, Runner.CHAIN,
                         links=(Link("autoencoder", 0, "classifier"),), deployed=False)
    result = Pipeline(bundle, apart).classify(images)
    scores = classifier.invoke_quantized(quantize(dequantize(ae.invoke_quantized(images)[0], out), into))[0]
    labels, confidences = decide(dequantize(scores, classifier.outputs[0]))
    assert result.path == "apart" and np.array_equal(result.labels, labels)
    assert np.array_equal(result.confidences, confidences)
    assert np.array_equal(dequantize(fused.invoke_quantized(images)[0], fused.outputs[0]).argmax(-1), labels)


def test_row_by_row_invokes_equal_a_real_batch(tiny_bundle, mnist_samples):
    """The tflite-runtime path (its aarch64 int8 FULLY_CONNECTED crashes at batch > 1) runs a batch as rows."""
    images = _load(mnist_samples[0])
    bundle = load_bundle(tiny_bundle, models=["cbnet"])
    model = bundle.models["cbnet"]
    batched = model.invoke_quantized(images)[0]
    model._one_row_at_a_time, before = True, model.num_invokes
    rows = model.invoke_quantized(images)[0]
    assert np.array_equal(rows, batched) and model.num_invokes - before == len(images)



def test_a_requantize_table_of_scales_a_rounding_apart_is_known_as_the_identity():
    """The three-exit network's segments: the features' output scale and the next input's differ in the last bit
    of float32; every byte maps to itself, so the runtime feeds the raw output on. Scales that truly differ, or
    another storage type, are not the identity."""
    from cbnet_tl.runtime.interpreter import TensorSpec
    from cbnet_tl.runtime.tables import is_identity, requantize_table

    out = TensorSpec("f", 0, (1, 14, 14, 32), np.dtype(np.int8), 0.02786240354180336, -128)
    near = TensorSpec("g", 0, (1, 14, 14, 32), np.dtype(np.int8), 0.02786240167915821, -128)
    assert out.scale != near.scale
    assert is_identity(requantize_table(out, near), out, near)
    other = TensorSpec("h", 0, (1, 14, 14, 32), np.dtype(np.int8), 0.03, -128)
    assert not is_identity(requantize_table(out, other), out, other)
    shifted = TensorSpec("s", 0, (1, 14, 14, 32), np.dtype(np.int8), out.scale, -127)
    assert not is_identity(requantize_table(out, shifted), out, shifted)
    unsigned = TensorSpec("u", 0, (1, 14, 14, 32), np.dtype(np.uint8), out.scale, 0)
    assert not is_identity(requantize_table(out, unsigned), out, unsigned)
