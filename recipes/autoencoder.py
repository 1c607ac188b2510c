"""The CBNet converting autoencoder: maps any image of a class to that class's canonical easy image.

Architecture as published by the CBNet authors: dense 784 → 512 → 384 → 256 → 64 (linear code)
→ 784 (sigmoid), trained with binary cross-entropy. ≈0.76 M MACs.
"""

from __future__ import annotations

from typing import Optional

import keras
from keras import layers

from cbnet_tl.recipes.layers import BatchReshape, batch_flatten

IMAGE_SHAPE = (28, 28, 1)
HIDDEN_UNITS = (512, 384, 256)
CODE_UNITS = 64


def build_autoencoder(batch_size: Optional[int] = None, dropout: float = 0.0) -> keras.Model:
    """Image in [0, 1] (28, 28, 1) → converted image in [0, 1], same shape.

    ``dropout`` regularizes the encoder during training only; the exported graph is the same.
    """
    image = keras.Input(IMAGE_SHAPE, batch_size=batch_size, name="image")
    x = batch_flatten(IMAGE_SHAPE, name="flatten")(image)
    for i, units in enumerate(HIDDEN_UNITS):
        x = layers.Dense(units, activation="relu", name=f"encoder_{i}")(x)
        if dropout > 0:
            x = layers.Dropout(dropout, name=f"dropout_{i}")(x)
    x = layers.Dense(CODE_UNITS, name="code")(x)
    x = layers.Dense(784, activation="sigmoid", name="decoder")(x)
    converted = BatchReshape(IMAGE_SHAPE, name="converted")(x)
    return keras.Model(image, converted, name="autoencoder")


def export_view(trained: keras.Model) -> keras.Model:
    """A batch-1 copy of a trained autoencoder, for conversion with static shapes."""
    view = build_autoencoder(batch_size=1)
    view.set_weights(trained.get_weights())
    return view
