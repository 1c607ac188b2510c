"""B-LeNet: the LeNet baseline with one BranchyNet early exit after the first convolution.

Shapes follow the original Chainer model, whose pooling rounds up (``padding="same"`` here):
input 28 → conv1 (5×5, pad 3) 30 → pool 15, shared trunk.
Branch: conv 3×3 (pad 1) 15 → pool 8 → dense 10             ≈ 0.22 M MACs with the trunk.
Main:   conv 5×5 (pad 3) 17 → pool 9 → conv 5×5 (pad 3) 11 → pool 6 → dense 84 → dense 10
                                                             ≈ 1.14 M MACs with the trunk.
Every head returns logits; softmax and entropy are computed by the runtime in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
from keras import layers

from cbnet_tl.recipes.layers import batch_flatten

IMAGE_SHAPE = (28, 28, 1)
TRUNK_SHAPE = (15, 15, 5)


@dataclass(frozen=True)
class BLeNetLayers:
    """The layers of one B-LeNet, shared by every view built from it."""

    trunk: list
    branch: list
    main: list


def make_layers(num_classes: int = 10) -> BLeNetLayers:
    if num_classes < 2:
        raise ValueError(f"Expected num_classes >= 2. Received: {num_classes}")
    trunk = [
        layers.ZeroPadding2D(3, name="conv1_pad"),
        layers.Conv2D(5, 5, activation="relu", name="conv1"),
        layers.MaxPooling2D(2, padding="same", name="pool1"),
    ]
    branch = [
        layers.Conv2D(10, 3, padding="same", activation="relu", name="branch_conv"),
        layers.MaxPooling2D(2, padding="same", name="branch_pool"),
        batch_flatten((8, 8, 10), name="branch_flatten"),
        layers.Dense(num_classes, name="branch_logits"),
    ]
    main = [
        layers.ZeroPadding2D(3, name="conv2_pad"),
        layers.Conv2D(10, 5, activation="relu", name="conv2"),
        layers.MaxPooling2D(2, padding="same", name="pool2"),
        layers.ZeroPadding2D(3, name="conv3_pad"),
        layers.Conv2D(20, 5, activation="relu", name="conv3"),
        layers.MaxPooling2D(2, padding="same", name="pool3"),
        batch_flatten((6, 6, 20), name="main_flatten"),
        layers.Dense(84, activation="relu", name="fc1"),
        layers.Dense(num_classes, name="main_logits"),
    ]
    return BLeNetLayers(trunk, branch, main)


def _apply(stack: list, tensor):
    for layer in stack:
        tensor = layer(tensor)
    return tensor


def build_training_model(parts: BLeNetLayers) -> keras.Model:
    """Image → (branch logits, main logits), for the BranchyNet joint loss."""
    image = keras.Input(IMAGE_SHAPE, name="image")
    features = _apply(parts.trunk, image)
    branch = layers.Identity(name="branch")(_apply(parts.branch, features))
    main = layers.Identity(name="main")(_apply(parts.main, features))
    return keras.Model(image, {"branch": branch, "main": main}, name="b_lenet")


def build_views(parts: BLeNetLayers) -> dict:
    """Batch-1 export views sharing the trained layers: one ``.tflite`` each.

    - ``lenet``: image → main-path logits (the LeNet baseline)
    - ``branch``: image → branch logits (the light classifier of CBNet, and the truncated branch)
    - ``trunk_branch``: image → (branch logits, trunk features) for BranchyNet's first stage
    - ``main_tail``: trunk features → main-path logits, BranchyNet's second stage
    """
    def image_input():
        return keras.Input(IMAGE_SHAPE, batch_size=1, name="image")

    image = image_input()
    lenet = keras.Model(image, _apply(parts.main, _apply(parts.trunk, image)), name="lenet")
    image = image_input()
    branch = keras.Model(image, _apply(parts.branch, _apply(parts.trunk, image)), name="branch")
    image = image_input()
    features = _apply(parts.trunk, image)
    trunk_branch = keras.Model(
        image, [_apply(parts.branch, features), features], name="trunk_branch"
    )
    features_in = keras.Input(TRUNK_SHAPE, batch_size=1, name="features")
    main_tail = keras.Model(features_in, _apply(parts.main, features_in), name="main_tail")
    return {"lenet": lenet, "branch": branch, "trunk_branch": trunk_branch, "main_tail": main_tail}


def build_trunk_model(parts: BLeNetLayers) -> keras.Model:
    """Image → trunk features (any batch), for main_tail's representative dataset."""
    image = keras.Input(IMAGE_SHAPE, name="image")
    return keras.Model(image, _apply(parts.trunk, image), name="trunk")


TRUNK_LAYERS = ("conv1_pad", "conv1", "pool1")
BRANCH_LAYERS = ("branch_conv", "branch_pool", "branch_flatten", "branch_logits")
MAIN_LAYERS = ("conv2_pad", "conv2", "pool2", "conv3_pad", "conv3", "pool3", "main_flatten", "fc1", "main_logits")


def layers_of(model: keras.Model) -> BLeNetLayers:
    """The shared layers of a trained (or reloaded) training model, to build export views from."""
    def pick(names):
        return [model.get_layer(name) for name in names]

    return BLeNetLayers(pick(TRUNK_LAYERS), pick(BRANCH_LAYERS), pick(MAIN_LAYERS))
