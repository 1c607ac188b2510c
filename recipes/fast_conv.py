"""The fast recipe above ``fast.DENSE_MAX_VALUES`` input values: a convolutional converting AE and classifier.

Dense layers cost fan-in × fan-out, so past a few thousand input values the dense AE outgrows LeNet.
Here the encoder is three stride-2 3×3 convolutions, the code a dense layer, the decoder a dense layer to
an eighth of the input size, then three nearest-neighbour ×2 up-samplings, each followed by a 3×3 ``Conv2D``, back to the input size
(Edge TPU-friendly: no ``Conv2DTranspose``; a whole-number RESIZE_NEAREST_NEIGHBOR maps), cropped when
the input side is not a multiple of 8. The classifier reads the converted image with two stride-2
convolutions, a global average and the config's hidden dense layer. Layer names match the dense recipe's
where the toolchain reads them (``code``, ``classifier_hidden``, ``logits``).
"""

from __future__ import annotations

import math
from typing import Optional

import keras
from keras import layers

from cbnet_tl.recipes.layers import BatchReshape, NearestUpsample, batch_flatten

ENCODER_CHANNELS = (16, 32, 32)
DECODER_CHANNELS = 16  # after the decoder's dense layer, at an eighth of the input size
UPSAMPLE_CHANNELS = (16, 8)  # the two hidden up-sampling convolutions; the last one gives the input's channels
CLASSIFIER_CHANNELS = (16, 32)


def _half(side: int) -> int:
    return math.ceil(side / 2)


def macs(shape: tuple, code_units: int, classifier_units: int, num_classes: int) -> int:
    """Multiply-accumulates per image of the fused pipeline, convolutions and dense layers."""
    height, width, channels = shape
    total, h, w, c = 0, height, width, channels
    for out in ENCODER_CHANNELS:
        h, w = _half(h), _half(w)
        total, c = total + h * w * 9 * c * out, out
    total += h * w * c * code_units
    h, w, c = math.ceil(height / 8), math.ceil(width / 8), DECODER_CHANNELS
    total += code_units * h * w * c
    for out in (*UPSAMPLE_CHANNELS, channels):
        h, w = 2 * h, 2 * w
        total, c = total + h * w * 9 * c * out, out
    h, w, c = height, width, channels
    for out in CLASSIFIER_CHANNELS:
        h, w = _half(h), _half(w)
        total, c = total + h * w * 9 * c * out, out
    if classifier_units:
        total, c = total + c * classifier_units, classifier_units
    return total + c * num_classes


def build_autoencoder(shape: tuple, code_units: int, dropout: float, batch_size: Optional[int],
                      rescale: bool) -> keras.Model:
    height, width, channels = shape
    pixels = keras.Input(shape, batch_size=batch_size, name="pixels")
    x = layers.Rescaling(1.0 / 255.0, name="rescale")(pixels) if rescale else pixels
    for i, out in enumerate(ENCODER_CHANNELS):
        x = layers.Conv2D(out, 3, strides=2, padding="same", activation="relu", name=f"encoder_conv_{i}")(x)
    x = batch_flatten(tuple(x.shape[1:]), name="ae_flatten")(x)
    if dropout > 0:
        x = layers.Dropout(dropout, name="encoder_dropout")(x)
    x = layers.Dense(code_units, name="code")(x)
    small = (math.ceil(height / 8), math.ceil(width / 8), DECODER_CHANNELS)
    x = layers.Dense(math.prod(small), activation="relu", name="decoder_dense")(x)
    x = BatchReshape(small, name="decoder_reshape")(x)  # batch -1: the interpreter can resize the batch
    for i, out in enumerate((*UPSAMPLE_CHANNELS, channels)):
        x = NearestUpsample(2, name=f"decoder_up_{i}")(x)
        last = i == len(UPSAMPLE_CHANNELS)
        x = layers.Conv2D(out, 3, padding="same", activation="sigmoid" if last else "relu",
                          name="decoder" if last else f"decoder_conv_{i}")(x)
    extra_h, extra_w = 8 * small[0] - height, 8 * small[1] - width
    if extra_h or extra_w:
        x = layers.Cropping2D(((0, extra_h), (0, extra_w)), name="decoder_crop")(x)
    converted = layers.Identity(name="converted")(x)
    return keras.Model(pixels, converted, name="fast_autoencoder")


def build_classifier(shape: tuple, classifier_units: int, num_classes: int, dropout: float,
                     batch_size: Optional[int]) -> keras.Model:
    image = keras.Input(shape, batch_size=batch_size, name="converted_image")
    x = image
    for i, out in enumerate(CLASSIFIER_CHANNELS):
        x = layers.Conv2D(out, 3, strides=2, padding="same", activation="relu", name=f"classifier_conv_{i}")(x)
    x = layers.GlobalAveragePooling2D(name="classifier_pool")(x)
    if classifier_units:
        x = layers.Dense(classifier_units, activation="relu", name="classifier_hidden")(x)
        if dropout > 0:
            x = layers.Dropout(dropout, name="classifier_dropout")(x)
    logits = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(image, logits, name="fast_classifier")
