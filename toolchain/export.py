"""Build the list of models to convert from the trained Keras files in a build directory."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cbnet_tl.toolchain.convert import ModelSpec


def export_specs(build_dir: Path, train_images: np.ndarray) -> list:
    """Batch-1 views of every model the pipelines need, with calibration data from training images."""
    import keras

    from cbnet_tl.recipes import autoencoder as ae_recipe
    from cbnet_tl.recipes import blenet
    from cbnet_tl.recipes.layers import build_noop

    keras_dir = Path(build_dir) / "keras"
    trained = keras.models.load_model(keras_dir / "b_lenet.keras", compile=False)
    autoencoder = keras.models.load_model(keras_dir / "autoencoder.keras", compile=False)
    indices = np.load(keras_dir / "representative_indices.npy")
    images = (train_images[indices].astype(np.float32) / 255.0)[..., None]

    parts = blenet.layers_of(trained)
    views = blenet.build_views(parts)
    features = np.asarray(blenet.build_trunk_model(parts).predict(images, batch_size=256, verbose=0))
    return [
        ModelSpec("autoencoder", ae_recipe.export_view(autoencoder), ("converted",), images),
        ModelSpec("branch", views["branch"], ("logits",), images),
        ModelSpec("trunk_branch", views["trunk_branch"], ("logits", "features"), images),
        ModelSpec("main_tail", views["main_tail"], ("logits",), features),
        ModelSpec("lenet", views["lenet"], ("logits",), images),
        ModelSpec("noop", build_noop(), ("output",), images),
    ]
