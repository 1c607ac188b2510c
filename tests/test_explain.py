"""``check --explain``: which layer lost the accuracy, and the calibration-size sweep."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from cbnet_tl.toolchain.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def broken_model():
    """A tiny model whose layer 'spike' is quantized badly on purpose.

    Only one calibration sample switches on unit 0 of 'front', which 'spike' multiplies by 1e5: the
    calibration range of 'spike' is then ~1000x its usual values, so int8 rounds them all to zero.
    """
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8,), batch_size=1)
    front = keras.layers.Dense(16, activation="relu", name="front")
    spike = keras.layers.Dense(16, name="spike")
    model = keras.Model(inputs, keras.layers.Dense(4, name="head")(spike(front(inputs))))
    weights, bias = front.get_weights()
    weights[:, 0], weights[7, 0], bias[0] = 0.0, 1.0, -0.99
    front.set_weights([weights, bias])
    weights, bias = spike.get_weights()
    weights[0, :] = 0.0
    weights[0, 0] = 1.0e5
    spike.set_weights([weights, bias])
    rng = np.random.default_rng(0)
    calibration = rng.uniform(-1, 1, (64, 8)).astype(np.float32)
    calibration[:, 7] = rng.uniform(-1, 0.5, 64)
    calibration[0, 7] = 1.0  # the one outlier
    return model, calibration


def test_broken_layer_is_named_first(broken_model):
    from cbnet_tl.toolchain.analysis.explain import explain_model

    model, calibration = broken_model
    layers = explain_model(model, calibration, samples=calibration[1:])
    assert layers[0].layer == "spike", [(e.layer, e.noise_to_signal) for e in layers]
    assert layers[0].noise_to_signal > 0.5 and "calibration" in layers[0].suggestion
    assert all(e.suggestion == "ok" for e in layers[1:])
    assert {e.layer for e in layers} == {"front", "spike", "head"}
    assert all(e.scale > 0 and e.rmse_over_scale >= 0 for e in layers)


def test_no_calibration_is_refused(broken_model):
    from cbnet_tl.runtime.errors import ConfigError
    from cbnet_tl.toolchain.analysis.explain import explain_model

    with pytest.raises(ConfigError, match="Expected num_calibration_samples > 0. Received: 0"):
        explain_model(broken_model[0], np.zeros((0, 8), np.float32))


def test_check_explain_cli_on_the_tiny_build(tiny_build, mnist_dir, tmp_path):
    """The committed tiny build carries no keras/ (only the build `cbnet-tl build` writes has it): said plainly."""
    result = runner.invoke(app, ["check", str(tiny_build), "--data-dir", str(mnist_dir), "--explain"])
    assert result.exit_code == 1
    assert "has no Keras models in keras/; --explain compares them with the int8 models" in result.output


def test_calibration_sweep_scores_each_size():
    import keras

    from cbnet_tl.toolchain.conversion.calibration import calibration_sweep

    keras.utils.set_random_seed(1)
    inputs = keras.Input((8,), batch_size=1)
    model = keras.Model(inputs, keras.layers.Dense(4, name="logits")(keras.layers.Dense(16, activation="relu")(inputs)))
    pool = np.random.default_rng(1).normal(size=(80, 8)).astype(np.float32)
    labels = np.argmax(np.asarray(model(pool[:40])), axis=-1)
    rows = calibration_sweep(model, pool[:40], labels, sizes=(5, 20, 1000), calibration=pool[40:])
    assert [r["samples"] for r in rows] == [5, 20, 40]
    assert all(0.0 <= r["int8_accuracy"] <= 1.0 for r in rows) and rows[-1]["int8_accuracy"] > 0.8
