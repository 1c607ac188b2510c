"""B-LeNet: the LeNet baseline with one BranchyNet early exit after the first convolution.

Shapes follow the original Chainer model, whose pooling rounds up (``padding="same"`` here); every
size is derived from the input spec's (height, width, channels), S below being a side of the input:
shared trunk: conv1 (5×5, pad 3) S+2 → pool ⌈(S+2)/2⌉ = T.
Branch: conv 3×3 (pad 1) T → pool ⌈T/2⌉ → dense classes.
Main:   conv 5×5 (pad 3) T+2 → pool P → conv 5×5 (pad 3) P+2 → pool → dense 84 → dense classes.
At the MNIST family's size in one channel: ≈0.22 M MACs for trunk and branch, ≈1.14 M for the LeNet path.

Training views take pixels in [0, 1]; the export views take the image bytes as they are (float 0..255),
with the 1/255 folded into conv1's kernel, so every shipped model reads uint8 pixels of the spec.
Every head returns logits; softmax and entropy are computed by the runtime.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import keras
from keras import layers

from cbnet_tl.recipes.layers import batch_flatten, check_image_shape

TRUNK_CHANNELS, BRANCH_CHANNELS, CONV2_CHANNELS, CONV3_CHANNELS = 5, 10, 10, 20


def _pooled(side: int) -> int:
    return math.ceil(side / 2)


def trunk_shape(image_shape: tuple) -> tuple:
    """The trunk's output (the features main_tail reads) for an input of ``image_shape``."""
    height, width, _ = image_shape
    return (_pooled(height + 2), _pooled(width + 2), TRUNK_CHANNELS)


def _branch_flat(image_shape: tuple) -> tuple:
    height, width, _ = trunk_shape(image_shape)
    return (_pooled(height), _pooled(width), BRANCH_CHANNELS)


def _main_flat(image_shape: tuple) -> tuple:
    height, width, _ = trunk_shape(image_shape)
    height, width = _pooled(_pooled(height + 2) + 2), _pooled(_pooled(width + 2) + 2)
    return (height, width, CONV3_CHANNELS)


@dataclass(frozen=True)
class BLeNetLayers:
    """The layers of one B-LeNet, shared by every view built from it."""

    trunk: list
    branch: list
    main: list


def make_layers(image_shape: tuple, num_classes: int = 10) -> BLeNetLayers:
    check_image_shape(image_shape)
    if num_classes < 2:
        raise ValueError(f"Expected num_classes >= 2. Received: {num_classes}")
    trunk = [
        layers.ZeroPadding2D(3, name="conv1_pad"),
        layers.Conv2D(TRUNK_CHANNELS, 5, activation="relu", name="conv1"),
        layers.MaxPooling2D(2, padding="same", name="pool1"),
    ]
    branch = [
        layers.Conv2D(BRANCH_CHANNELS, 3, padding="same", activation="relu", name="branch_conv"),
        layers.MaxPooling2D(2, padding="same", name="branch_pool"),
        batch_flatten(_branch_flat(image_shape), name="branch_flatten"),
        layers.Dense(num_classes, name="branch_logits"),
    ]
    main = [
        layers.ZeroPadding2D(3, name="conv2_pad"),
        layers.Conv2D(CONV2_CHANNELS, 5, activation="relu", name="conv2"),
        layers.MaxPooling2D(2, padding="same", name="pool2"),
        layers.ZeroPadding2D(3, name="conv3_pad"),
        layers.Conv2D(CONV3_CHANNELS, 5, activation="relu", name="conv3"),
        layers.MaxPooling2D(2, padding="same", name="pool3"),
        batch_flatten(_main_flat(image_shape), name="main_flatten"),
        layers.Dense(84, activation="relu", name="fc1"),
        layers.Dense(num_classes, name="main_logits"),
    ]
    return BLeNetLayers(trunk, branch, main)


def _apply(stack: list, tensor):
    for layer in stack:
        tensor = layer(tensor)
    return tensor


def build_training_model(parts: BLeNetLayers, image_shape: tuple) -> keras.Model:
    """Image in [0, 1] → (branch logits, main logits), for the BranchyNet joint loss."""
    image = keras.Input(image_shape, name="image")
    features = _apply(parts.trunk, image)
    branch = layers.Identity(name="branch")(_apply(parts.branch, features))
    main = layers.Identity(name="main")(_apply(parts.main, features))
    return keras.Model(image, {"branch": branch, "main": main}, name="b_lenet")


def pixel_trunk(parts: BLeNetLayers) -> list:
    """The trunk for image bytes (float 0..255): conv1's kernel takes the 1/255 (same function, and
    per-channel int8 weights quantize to the same integers)."""
    pad, conv1, pool = parts.trunk
    scaled = layers.Conv2D.from_config({**conv1.get_config(), "name": "conv1_pixels"})
    kernel, bias = conv1.get_weights()
    scaled.build((None, None, None, kernel.shape[2]))
    scaled.set_weights([kernel / 255.0, bias])
    return [pad, scaled, pool]


def build_views(parts: BLeNetLayers, image_shape: tuple) -> dict:
    """Batch-1 export views sharing the trained layers: one ``.tflite`` each. The image views take the
    pixels as they are (float 0..255; convert them with a uint8 input).

    - ``lenet``: image → main-path logits (the LeNet baseline)
    - ``branch``: image → branch logits (the light classifier of CBNet, and the truncated branch)
    - ``trunk_branch``: image → (branch logits, trunk features) for BranchyNet's first stage
    - ``main_tail``: trunk features → main-path logits, BranchyNet's second stage
    """
    trunk = pixel_trunk(parts)

    def image_input():
        return keras.Input(image_shape, batch_size=1, name="pixels")

    image = image_input()
    lenet = keras.Model(image, _apply(parts.main, _apply(trunk, image)), name="lenet")
    image = image_input()
    branch = keras.Model(image, _apply(parts.branch, _apply(trunk, image)), name="branch")
    image = image_input()
    features = _apply(trunk, image)
    trunk_branch = keras.Model(
        image, [_apply(parts.branch, features), features], name="trunk_branch"
    )
    features_in = keras.Input(trunk_shape(image_shape), batch_size=1, name="features")
    main_tail = keras.Model(features_in, _apply(parts.main, features_in), name="main_tail")
    return {"lenet": lenet, "branch": branch, "trunk_branch": trunk_branch, "main_tail": main_tail}


def build_branch_on_unit(parts: BLeNetLayers, image_shape: tuple) -> keras.Model:
    """Batch-1 branch for images in [0, 1] (the paper recipe's classifier, reading the AE's output)."""
    image = keras.Input(image_shape, batch_size=1, name="image")
    return keras.Model(image, _apply(parts.branch, _apply(parts.trunk, image)), name="branch_on_unit")


def build_trunk_model(parts: BLeNetLayers, image_shape: tuple) -> keras.Model:
    """Image in [0, 1] → trunk features (any batch), for main_tail's representative dataset."""
    image = keras.Input(image_shape, name="image")
    return keras.Model(image, _apply(parts.trunk, image), name="trunk")


TRUNK_LAYERS = ("conv1_pad", "conv1", "pool1")
BRANCH_LAYERS = ("branch_conv", "branch_pool", "branch_flatten", "branch_logits")
MAIN_LAYERS = ("conv2_pad", "conv2", "pool2", "conv3_pad", "conv3", "pool3", "main_flatten", "fc1", "main_logits")


def layers_of(model: keras.Model) -> BLeNetLayers:
    """The shared layers of a trained (or reloaded) training model, to build export views from."""
    def pick(names):
        return [model.get_layer(name) for name in names]

    return BLeNetLayers(pick(TRUNK_LAYERS), pick(BRANCH_LAYERS), pick(MAIN_LAYERS))
