"""A multi-exit CNN (SDN style): stages of growing cost, an exit head after each, trained jointly.

Every size comes from the build's input spec (height, width, channels) and a ``MultiExitConfig``. Stage k is
two 3×3 convolutions with batch normalisation and ReLU; every stage but the last ends with a stride-2
convolution, so the next stage works at half the resolution. The exit head after a stage is a 2×2 max pool
(after stage 1, whose features are the largest, and after the last), a flatten and a dense layer to the classes;
the last head has a hidden dense layer. ``segment_macs`` gives each segment's cost at an input size.

The network has one stage per exit of the runtime's ``multiexit`` pipeline (``runtime.specs.MULTIEXIT_STAGES``,
which names the segments): a config with another number of stages is refused when it is made, before training.

Export views (``build_segments``): one batch-1 model per stage, the first on raw pixel bytes (the 1/255 and every
batch normalisation folded into the convolutions), each returning its exit's logits and, except the last, the
features the next segment reads. Only CONV_2D, MAX_POOL_2D, RESHAPE and FULLY_CONNECTED remain, all of which map
to the Edge TPU, and each segment is its own graph so each compiles whole.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import keras
import numpy as np
from keras import layers

from cbnet_tl.recipes.layers import batch_flatten, check_image_shape
from cbnet_tl.runtime.errors import ConfigError
from cbnet_tl.runtime.specs import MULTIEXIT_STAGES  # the model names of the stages, in order: one per exit


@dataclass(frozen=True)
class MultiExitConfig:
    """The network's shape and its training schedule (fixed epochs: the same seed gives the same model)."""

    stage_channels: tuple = ((16, 32), (48, 64), (96, 96))  # two convolutions per stage, one stage per exit
    head_units: int = 128  # the last exit's hidden dense layer
    num_classes: int = 10
    epochs: int = 15
    batch_size: int = 128
    learning_rate: float = 2e-3
    lr_decay_per_epoch: float = 0.8
    exit_loss_weights: tuple = (0.6, 0.8, 1.0)  # the joint loss; SDN-style, the later exits weigh more
    dropout: float = 0.2  # before each head's dense layer, training only
    shift_pixels: int = 2  # random translation by up to this many pixels each way (edges repeated), training only

    def __post_init__(self):
        if len(self.stage_channels) != len(MULTIEXIT_STAGES):
            raise ConfigError(f"Expected {len(MULTIEXIT_STAGES)} stages, one per exit of the multiexit pipeline "
                              f"{list(MULTIEXIT_STAGES)}. Received: {len(self.stage_channels)} "
                              f"(stage_channels={self.stage_channels})")
        if len(self.exit_loss_weights) != len(self.stage_channels):
            raise ConfigError(f"Expected one loss weight per exit ({len(self.stage_channels)}). "
                              f"Received: {self.exit_loss_weights}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError(f"Expected epochs >= 1 and batch_size >= 1. Received: {self.epochs}, {self.batch_size}")
        if not isinstance(self.shift_pixels, int) or self.shift_pixels < 0:
            raise ConfigError(f"Expected shift_pixels >= 0 (an int). Received: {self.shift_pixels!r}")

    @property
    def names(self) -> tuple:
        return MULTIEXIT_STAGES

    def to_dict(self) -> dict:
        return {k: [list(v) for v in value] if k == "stage_channels" else list(value) if isinstance(value, tuple)
                else value for k, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> "MultiExitConfig":
        fields = dict(data)
        fields["stage_channels"] = tuple(tuple(int(c) for c in pair) for pair in fields["stage_channels"])
        fields["exit_loss_weights"] = tuple(float(w) for w in fields["exit_loss_weights"])
        return cls(**fields)


def _half(side: int) -> int:
    return math.ceil(side / 2)


def stage_shapes(image_shape: tuple, config: MultiExitConfig) -> list:
    """The features each stage outputs, (height, width, channels)."""
    height, width, _ = check_image_shape(image_shape)
    shapes = []
    for k, (_, second) in enumerate(config.stage_channels):
        if k < len(config.stage_channels) - 1:
            height, width = _half(height), _half(width)
        shapes.append((height, width, second))
    return shapes


def _head_input(shape: tuple, k: int, num_stages: int) -> tuple:
    """What head ``k`` flattens: stage 1's and the last stage's features pooled 2×2, the others as they are."""
    height, width, channels = shape
    pooled = k == 0 or k == num_stages - 1
    return (_half(height), _half(width), channels) if pooled else shape


def segment_macs(image_shape: tuple, config: MultiExitConfig) -> list:
    """Multiply-accumulates of each segment (its stage and its exit head)."""
    height, width, channels = check_image_shape(image_shape)
    shapes, out, n = stage_shapes(image_shape, config), [], len(config.stage_channels)
    for k, (first, second) in enumerate(config.stage_channels):
        total = height * width * 9 * channels * first
        height_2, width_2, _ = shapes[k]
        total += height_2 * width_2 * 9 * first * second
        flat = math.prod(_head_input(shapes[k], k, n))
        total += flat * config.head_units + config.head_units * config.num_classes if k == n - 1 else flat * config.num_classes
        out.append(total)
        height, width, channels = shapes[k]
    return out


class _Layers:
    """The trained layers of one network: per stage, (conv, batch norm) pairs, and per exit its head."""

    def __init__(self, image_shape: tuple, config: MultiExitConfig):
        self.config, self.image_shape = config, image_shape
        n = len(config.stage_channels)
        shapes = stage_shapes(image_shape, config)
        self.stages, self.heads = [], []
        for k, (first, second) in enumerate(config.stage_channels):
            stride = 2 if k < n - 1 else 1
            self.stages.append([
                (layers.Conv2D(first, 3, padding="same", use_bias=False, name=f"s{k + 1}_conv1"),
                 layers.BatchNormalization(name=f"s{k + 1}_bn1")),
                (layers.Conv2D(second, 3, strides=stride, padding="same", use_bias=False, name=f"s{k + 1}_conv2"),
                 layers.BatchNormalization(name=f"s{k + 1}_bn2")),
            ])
            head = []
            if k == 0 or k == n - 1:
                head.append(layers.MaxPooling2D(2, padding="same", name=f"h{k + 1}_pool"))
            head.append(batch_flatten(_head_input(shapes[k], k, n), name=f"h{k + 1}_flatten"))
            head.append(layers.Dropout(config.dropout, name=f"h{k + 1}_dropout"))
            if k == n - 1:
                head.append(layers.Dense(config.head_units, activation="relu", name=f"h{k + 1}_hidden"))
                head.append(layers.Dropout(config.dropout, name=f"h{k + 1}_dropout2"))
            head.append(layers.Dense(config.num_classes, name=f"h{k + 1}_logits"))
            self.heads.append(head)


def make_layers(image_shape: tuple, config: MultiExitConfig) -> _Layers:
    return _Layers(check_image_shape(image_shape), config)


def _apply(stack: list, tensor):
    for layer in stack:
        tensor = layer(tensor)
    return tensor


def build_training_model(parts: _Layers) -> keras.Model:
    """Image in [0, 1] → {exit name: logits}, for the joint loss; with ``shift_pixels``, each training image is
    first moved by a random whole-pixel-range translation (the export views have no such layer)."""
    image = keras.Input(parts.image_shape, name="image")
    x, outputs = image, {}
    shift = parts.config.shift_pixels
    if shift:
        height, width, _ = parts.image_shape
        if 2 * shift >= min(height, width):
            raise ValueError(f"Expected shift_pixels below half the input side. Received: {shift} for {parts.image_shape}")
        x = layers.RandomTranslation(shift / height, shift / width, fill_mode="nearest", name="shift")(x)
    for name, stage, head in zip(parts.config.names, parts.stages, parts.heads):
        for conv, norm in stage:
            x = layers.ReLU()(norm(conv(x)))
        outputs[name] = layers.Identity(name=name)(_apply(head, x))
    return keras.Model(image, outputs, name="multiexit")


def _folded_conv(conv, norm, scale: float, name: str) -> layers.Conv2D:
    """``conv`` then ``norm`` (inference) as one biased convolution with a fused ReLU, its input × ``scale``."""
    kernel = conv.get_weights()[0]
    gamma, beta, mean, variance = norm.get_weights()
    factor = gamma / np.sqrt(variance + norm.epsilon)
    folded = layers.Conv2D(kernel.shape[-1], 3, strides=conv.strides, padding="same", activation="relu", name=name)
    folded.build((None, None, None, kernel.shape[2]))
    folded.set_weights([kernel * factor * scale, beta - mean * factor])
    return folded


def build_segments(parts: _Layers) -> list:
    """Batch-1 export views, one per stage: (name, model, output names). The first reads pixel bytes (float
    0..255) and every one returns its exit's ``logits`` and, but the last, the ``features`` the next reads."""
    shapes = stage_shapes(parts.image_shape, parts.config)
    inputs = [parts.image_shape] + shapes[:-1]
    n, segments = len(parts.stages), []
    for k, (name, stage, head) in enumerate(zip(parts.config.names, parts.stages, parts.heads)):
        source = keras.Input(inputs[k], batch_size=1, name="pixels" if k == 0 else "features_in")
        x = source
        for j, (conv, norm) in enumerate(stage):
            x = _folded_conv(conv, norm, 1.0 / 255.0 if k == 0 and j == 0 else 1.0, f"{name}_conv{j + 1}")(x)
        logits = _apply([layer for layer in head if not isinstance(layer, layers.Dropout)], x)
        outputs = [logits] if k == n - 1 else [logits, x]
        names = ("logits",) if k == n - 1 else ("logits", "features")
        segments.append((name, keras.Model(source, outputs, name=name), names))
    return segments


def layers_of(model: keras.Model, image_shape: tuple, config: MultiExitConfig) -> _Layers:
    """The layers of a trained (saved and loaded) ``build_training_model``, by name."""
    parts = _Layers(image_shape, config)
    parts.stages = [[(model.get_layer(conv.name), model.get_layer(norm.name)) for conv, norm in stage]
                    for stage in parts.stages]
    parts.heads = [[model.get_layer(layer.name) for layer in head] for head in parts.heads]
    return parts


def build_full(segments: list) -> keras.Model:
    """The whole path in one batch-1 graph (pixel bytes → the last exit's logits), from ``build_segments``'s
    views: the network ``cbnet-fallback`` may fall back to."""
    first = segments[0][1]
    pixels = keras.Input(tuple(first.input_shape[1:]), batch_size=1, name="pixels")
    x = pixels
    for k, (_, model, _) in enumerate(segments):
        outputs = model(x)
        x = outputs[1] if k < len(segments) - 1 else outputs
    logits = x[0] if isinstance(x, (list, tuple)) else x
    return keras.Model(pixels, logits, name="multiexit_full")
