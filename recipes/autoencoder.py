"""The CBNet converting autoencoder: maps any image of a class to that class's canonical easy image.

Architecture as published by the CBNet authors: dense P → 512 → 384 → 256 → 64 (linear code)
→ P (sigmoid), P being the number of input values (height × width × channels), trained with binary
cross-entropy. ≈0.76 M MACs at the MNIST family's size.
"""

from __future__ import annotations

import math
from typing import Optional

import keras
from keras import layers

from cbnet_tl.recipes.layers import BatchReshape, batch_flatten, check_image_shape

HIDDEN_UNITS = (512, 384, 256)
CODE_UNITS = 64


def build_autoencoder(image_shape: tuple, batch_size: Optional[int] = None, dropout: float = 0.0) -> keras.Model:
    """Image in [0, 1] of ``image_shape`` (height, width, channels) → converted image in [0, 1], same shape.

    ``dropout`` regularizes the encoder during training only; the exported graph is the same.
    """
    image_shape = check_image_shape(image_shape)
    image = keras.Input(image_shape, batch_size=batch_size, name="image")
    x = batch_flatten(image_shape, name="flatten")(image)
    for i, units in enumerate(HIDDEN_UNITS):
        x = layers.Dense(units, activation="relu", name=f"encoder_{i}")(x)
        if dropout > 0:
            x = layers.Dropout(dropout, name=f"dropout_{i}")(x)
    x = layers.Dense(CODE_UNITS, name="code")(x)
    x = layers.Dense(math.prod(image_shape), activation="sigmoid", name="decoder")(x)
    converted = BatchReshape(image_shape, name="converted")(x)
    return keras.Model(image, converted, name="autoencoder")
