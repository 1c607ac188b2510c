"""Converter round trip on a tiny model: float32 and int8 files, run by our runtime."""

from __future__ import annotations

import numpy as np
import pytest

from cbnet_tl.runtime.interpreter import Model, dequantize

pytestmark = pytest.mark.tf


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    import keras

    from cbnet_tl.toolchain.conversion.convert import ModelSpec, convert_all

    keras.utils.set_random_seed(0)
    image = keras.Input((28, 28, 1), batch_size=1)
    x = keras.layers.Conv2D(4, 3, activation="relu")(image)
    features = keras.layers.MaxPooling2D(2)(x)
    from cbnet_tl.recipes.layers import batch_flatten

    logits = keras.layers.Dense(10)(batch_flatten((13, 13, 4), name="flat")(features))
    model = keras.Model(image, [logits, features])
    rng = np.random.default_rng(0)
    representative = rng.random((32, 28, 28, 1)).astype(np.float32)
    out = tmp_path_factory.mktemp("convert")
    entries = convert_all([ModelSpec("tiny", model, ("logits", "features"), representative)], out / "models")
    return model, entries["tiny"].to_dict(), out, representative  # as manifest.json records it


def test_both_precisions_written_with_quantization(converted):
    _, entry, out, _ = converted
    assert (out / entry["float32"]["file"]).is_file() and (out / entry["int8"]["file"]).is_file()
    int8 = entry["int8"]
    assert int8["input"]["dtype"] == "int8" and int8["input"]["scale"] > 0
    assert int8["outputs"]["logits"]["dtype"] == "int8"
    assert int8["outputs"]["features"]["shape"] == [1, 13, 13, 4]
    assert entry["float32"]["max_relative_error_vs_keras"] < 1e-3
    assert entry["macs"] == 26 * 26 * 4 * 9 + 676 * 10


def test_int8_round_trip_is_close_to_keras(converted):
    model, entry, out, representative = converted
    order = [entry["int8"]["outputs"][n]["index"] for n in entry["output_names"]]
    tflite = Model(out / entry["int8"]["file"], output_indices=order)
    logits, features = tflite(representative[:8])
    expected_logits, expected_features = (np.asarray(t) for t in model(representative[:8]))
    assert logits.shape == (8, 10) and features.shape == (8, 13, 13, 4)
    scale = entry["int8"]["outputs"]["logits"]["scale"]
    assert np.max(np.abs(logits - expected_logits)) < 8 * scale + 0.05 * np.abs(expected_logits).max()
    assert np.mean(logits.argmax(1) == expected_logits.argmax(1)) >= 0.75


def test_dequantize_does_not_overflow():
    from cbnet_tl.runtime.interpreter import TensorSpec

    spec = TensorSpec("x", 0, (1,), np.dtype(np.int8), 0.5, 100)
    assert dequantize(np.array([-128], np.int8), spec).tolist() == [-114.0]
