"""Build the list of models to convert from the trained Keras files in a build directory.

Every model that reads an image takes raw pixels of the build's input spec (``input_type="uint8"``; the
1/255 scaling is folded into its first layer), so the runtime feeds image bytes as they are: ``cbnet``
(the converting AE and its classifier fused into one graph), ``autoencoder`` (the AE alone, for reports
and ``--convert-image``), ``lenet``, ``branch``, ``trunk_branch``, ``noop`` and, in builds made ``--with multiexit``,
``exit1`` and ``multiexit_full`` (``exit2`` and ``exit3`` read the features of the segment before). ``main_tail`` reads the
trunk's int8 features, and the build-only ``classifier`` reads a converted image in [0, 1].
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cbnet_tl.runtime.errors import ConfigError
from cbnet_tl.runtime.specs import CONVERTER, INVOKE_PROBE
from cbnet_tl.toolchain.conversion.convert import ModelSpec
from cbnet_tl.toolchain.training.multiexit import RECORD_NAME as MULTIEXIT_RECORD


def _calibration_pixels(train_images: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Float pixels in [0, 255] for raw-pixel models, with one ramp image so 0 and 255 both occur: the
    uint8 input then quantizes with scale 1 and zero point 0, i.e. the bytes are the values."""
    pixels = train_images[indices].astype(np.float32)
    shape = pixels.shape[1:]
    ramp = np.linspace(0, 255, int(np.prod(shape)), dtype=np.float32).reshape(1, *shape)
    return np.concatenate([ramp, pixels])


def _paper_fused(autoencoder, branch):
    """The paper recipe as one graph: pixels in [0, 255] → AE (1/255 folded in) → the B-LeNet branch."""
    import keras

    from cbnet_tl.recipes import autoencoder as ae_recipe

    shape = tuple(autoencoder.input_shape[1:])
    view = ae_recipe.build_autoencoder(shape, batch_size=1)
    weights = [w.copy() for w in autoencoder.get_weights()]
    weights[0] = weights[0] / 255.0
    view.set_weights(weights)
    pixels = keras.Input(shape, batch_size=1, name="pixels")
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
    image_shape = tuple(train_images.shape[1:])
    images = train_images[indices].astype(np.float32) / np.float32(255.0)
    pixels = _calibration_pixels(train_images, indices)

    parts = blenet.layers_of(trained)
    views = blenet.build_views(parts, image_shape)
    features = np.asarray(blenet.build_trunk_model(parts, image_shape).predict(images, batch_size=256, verbose=0))
    if recipe == "paper":
        autoencoder = keras.models.load_model(keras_dir / "autoencoder.keras", compile=False)
        classifier = blenet.build_branch_on_unit(parts, image_shape)
        fused, ae_view = _paper_fused(autoencoder, classifier)
    else:
        from cbnet_tl.recipes import fast

        fast_ae = keras.models.load_model(keras_dir / "fast_autoencoder.keras", compile=False)
        fast_classifier = keras.models.load_model(keras_dir / "fast_classifier.keras", compile=False)
        fused = fast.build_fused(fast_ae, fast_classifier, batch_size=1)
        ae_view = fast.build_fused_autoencoder(fast_ae, batch_size=1)
        classifier = fast.build_classifier(fast._config_of(fast_ae, fast_classifier), batch_size=1)
        classifier.set_weights(fast_classifier.get_weights())
    multiexit = []
    if (Path(build_dir) / MULTIEXIT_RECORD).is_file():  # built --with multiexit: its segments and its whole path
        from cbnet_tl.toolchain.training.multiexit import export_multiexit

        multiexit = export_multiexit(build_dir, pixels)
    return [
        ModelSpec("cbnet", fused, ("logits",), pixels, input_type="uint8"),
        ModelSpec(CONVERTER, ae_view, ("converted",), pixels, input_type="uint8"),
        ModelSpec("classifier", classifier, ("logits",), images),  # build dir only: the fused graph's second half
        ModelSpec("branch", views["branch"], ("logits",), pixels, input_type="uint8"),
        ModelSpec("trunk_branch", views["trunk_branch"], ("logits", "features"), pixels, input_type="uint8"),
        ModelSpec("main_tail", views["main_tail"], ("logits",), features),
        ModelSpec("lenet", views["lenet"], ("logits",), pixels, input_type="uint8"),
        ModelSpec(INVOKE_PROBE, build_noop(image_shape), ("output",), pixels, input_type="uint8"),
        *multiexit,
    ]
