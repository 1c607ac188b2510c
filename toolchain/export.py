"""Build the list of models to convert from the trained Keras files in a build directory.

Models whose spec says ``input_type="uint8"`` take raw pixels (the 1/255 scaling is folded into their
first layer), so the runtime feeds image bytes as they are: ``cbnet`` (the converting AE and its
classifier fused into one graph) and ``autoencoder`` (the AE alone, for reports and ``--convert-image``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cbnet_tl.runtime.errors import ConfigError
from cbnet_tl.toolchain.convert import ModelSpec


def _calibration_pixels(train_images: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Float pixels in [0, 255] for raw-pixel models, with one ramp image so 0 and 255 both occur: the
    uint8 input then quantizes with scale 1 and zero point 0, i.e. the bytes are the values."""
    pixels = train_images[indices].astype(np.float32)[..., None]
    ramp = np.linspace(0, 255, 28 * 28, dtype=np.float32).reshape(1, 28, 28, 1)
    return np.concatenate([ramp, pixels])


def _paper_fused(autoencoder, branch):
    """The paper recipe as one graph: pixels in [0, 255] → AE (1/255 folded in) → the B-LeNet branch."""
    import keras

    from cbnet_tl.recipes import autoencoder as ae_recipe

    view = ae_recipe.build_autoencoder(batch_size=1)
    weights = [w.copy() for w in autoencoder.get_weights()]
    weights[0] = weights[0] / 255.0
    view.set_weights(weights)
    pixels = keras.Input((28, 28, 1), batch_size=1, name="pixels")
    return keras.Model(pixels, branch(view(pixels)), name="cbnet"), view


DEFAULT_CALIBRATION_SAMPLES = 500


def export_specs(build_dir: Path, train_images: np.ndarray, calibration_samples: int = DEFAULT_CALIBRATION_SAMPLES) -> list:
    """Batch-1 views of every model the pipelines need, calibrated on ``calibration_samples`` training images."""
    import keras

    from cbnet_tl.recipes import blenet
    from cbnet_tl.recipes.layers import build_noop

    keras_dir = Path(build_dir) / "keras"
    recipe = json.loads((Path(build_dir) / "train.json").read_text()).get("recipe", "paper")
    trained = keras.models.load_model(keras_dir / "b_lenet.keras", compile=False)
    if calibration_samples < 1:
        raise ConfigError(f"Expected num_calibration_samples > 0. Received: {calibration_samples}")
    indices = np.load(keras_dir / "representative_indices.npy")[:calibration_samples]
    images = (train_images[indices].astype(np.float32) / 255.0)[..., None]
    pixels = _calibration_pixels(train_images, indices)

    parts = blenet.layers_of(trained)
    views = blenet.build_views(parts)
    features = np.asarray(blenet.build_trunk_model(parts).predict(images, batch_size=256, verbose=0))
    if recipe == "paper":
        autoencoder = keras.models.load_model(keras_dir / "autoencoder.keras", compile=False)
        fused, ae_view = _paper_fused(autoencoder, views["branch"])
        classifier = views["branch"]
    else:
        from cbnet_tl.recipes import fast

        fast_ae = keras.models.load_model(keras_dir / "fast_autoencoder.keras", compile=False)
        fast_classifier = keras.models.load_model(keras_dir / "fast_classifier.keras", compile=False)
        fused = fast.build_fused(fast_ae, fast_classifier, batch_size=1)
        ae_view = fast.build_fused_autoencoder(fast_ae, batch_size=1)
        classifier = fast.build_classifier(fast._config_of(fast_ae, fast_classifier), batch_size=1)
        classifier.set_weights(fast_classifier.get_weights())
    return [
        ModelSpec("cbnet", fused, ("logits",), pixels, input_type="uint8"),
        ModelSpec("autoencoder", ae_view, ("converted",), pixels, input_type="uint8"),
        ModelSpec("classifier", classifier, ("logits",), images),  # build dir only: the fused graph's second half
        ModelSpec("branch", views["branch"], ("logits",), images),
        ModelSpec("trunk_branch", views["trunk_branch"], ("logits", "features"), images),
        ModelSpec("main_tail", views["main_tail"], ("logits",), features),
        ModelSpec("lenet", views["lenet"], ("logits",), images),
        ModelSpec("noop", build_noop(), ("output",), pixels, input_type="uint8"),
    ]
