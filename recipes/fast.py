"""The ``fast`` CBNet recipe: a dense converting autoencoder and a dense light classifier.

Same method as the paper's CBNet (an autoencoder *converts* any image of a class toward that
class's canonical easy image, and a light classifier reads the converted image), sized so the
whole pipeline, quantized to full-integer int8 and run on XNNPACK, costs a fraction of LeNet:
dense int8 layers use the CPU's vector units well, small-channel convolutions do not.

Architecture (``SIZES["default"]``), for an input spec of (height, width, channels), P values::

    uint8-range pixels (height, width, channels), float in [0, 255]
      → Rescaling(1/255) → flatten (batch -1)                       (folded into encoder_0 on export)
      → Dense 512 relu → Dense 96 (linear code)                     encoder
      → Dense P sigmoid → reshape to the input shape                decoder: the converted image
      → flatten → Dense 32 relu → Dense classes (logits)            light classifier

MACs = Σ fan_in·fan_out of the dense layers (``FastConfig.macs()``); at the MNIST family's size
(one channel, 10 classes):

- ``small``   P→128→32→P, classifier P→16→10:   0.142 M
- ``default`` P→512→96→P, classifier P→32→10:   0.551 M
- ``large``   P→768→128→P, classifier P→128→10: 0.902 M

MACs grow linearly with P: at 32×32 RGB (P = 3,072) ``default`` is 2.0 M. Above ``DENSE_POOL_VALUES``
(32×32 RGB) both models open with an average pooling by ``FastConfig.pool`` (the smallest whole factor
that divides height and width and brings P within it; 56×56 RGB is pooled 2×2, P = 2,352) and the AE decodes
at that size, up-sampled back to the input size; the fused graph keeps neither the up-sampling nor the
classifier's pooling, which cancel. The recipe stays dense up to ``DENSE_MAX_VALUES`` input values
(64×64 RGB) and is convolutional above (``fast_conv.py``).

(LeNet's main path is ≈1.14 M MACs; the paper's AE alone 0.76 M plus a conv branch 0.22 M.)

A smaller size is faster and less accurate. At batch 1 every call also pays a fixed cost (the floor that
``cbnet-tl bench`` reports), which caps the speed-up over LeNet more than at batch 32. The sizes' measured
accuracies and speed-ups are in benchmarks/RESULTS.md.

The graph int8-converts to QUANTIZE (uint8→int8), RESHAPE, FULLY_CONNECTED ×3, LOGISTIC,
FULLY_CONNECTED ×2: static shapes, all Edge TPU ops, and the batch can be resized at run time.

Dropout layers act in training only; the exported graphs are the same with or without them.
Training (paper-style AE, then classifier on converted images, then joint fine-tuning with a
reconstruction term toward the canonical image) lives in the toolchain; these are the builders.
``build_fused`` gives the single graph that ships: raw pixels → class logits, to be converted with
``inference_input_type=tf.uint8`` so the runtime feeds the uint8 bytes as they are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Optional

import keras
from keras import layers

from cbnet_tl.recipes.layers import BatchReshape, NearestUpsample, batch_flatten, check_image_shape

# Largest input (height × width × channels) the dense recipe takes: 64×64 RGB. Beyond it the dense layers'
# MACs (linear in the input values) exceed several times LeNet's at that size.
DENSE_MAX_VALUES = 12288

# Most input values the first dense layer reads: 32×32 RGB. Above it (and up to DENSE_MAX_VALUES) the AE and
# the classifier open with an average pooling by the smallest whole factor that divides the height and the
# width and brings the values within this (``FastConfig.pool``); the converted image is decoded at the pooled
# size and up-sampled back to the input size. Without it a 56×56 RGB input gives a 6.7 M-MAC dense "light"
# pipeline (more than LeNet at that size) whose 4.8 M first-layer weights overfit.
DENSE_POOL_VALUES = 3072
MAX_POOL = 4


@dataclass(frozen=True)
class FastConfig:
    """Architecture and training hyperparameters of the fast recipe.

    Architecture: ``encoder_units`` (relu layers before the code), ``code_units`` (linear code),
    ``classifier_units`` (one relu hidden layer of the classifier, 0 = a single Dense to logits),
    ``dropout`` (after every hidden relu layer, training only).

    Training (read by the toolchain's trainer): ``ae_epochs`` paper-style epochs of the AE alone
    (BCE toward the canonical image of the true class), ``classifier_epochs`` of the classifier on
    the converted images, ``joint_epochs`` of joint fine-tuning with
    ``loss = CE(logits) + recon_weight · BCE(converted, canonical)``; Adam at ``learning_rate``
    (cosine decay to 0 over the joint phase), ``batch_size``, ``label_smoothing`` on the CE term,
    ``shift_pixels`` random translation, ``rotate_degrees`` random rotation, ``zoom`` random zoom
    fraction (0 = none; augmentation for small data sets), ``patience`` epochs of early stopping on the
    validation accuracy of the joint phase (0 = none; the best epoch's weights are kept).
    """

    encoder_units: tuple = (512,)
    code_units: int = 96
    classifier_units: int = 32
    dropout: float = 0.1
    num_classes: int = 10
    ae_epochs: int = 3
    classifier_epochs: int = 2
    joint_epochs: int = 30
    batch_size: int = 128
    learning_rate: float = 1e-3
    recon_weight: float = 1.0
    label_smoothing: float = 0.0
    shift_pixels: int = 0
    rotate_degrees: float = 0.0
    zoom: float = 0.0
    patience: int = 0
    input_shape: Optional[tuple] = None  # (height, width, channels) of the build's input spec; set by the trainer
    conv: bool = False  # the convolutional AE and classifier (fast_conv) at any size (few training images)
    flip: bool = False  # random horizontal flips (training only)
    colour_jitter: float = 0.0  # random brightness and contrast by up to this fraction (training only, colour input)
    fill_value: float = 0.0  # what shifted, zoomed or rotated images are filled with (pixel value, 0..255)
    balance_classes: bool = False  # weigh each training image by the inverse of its class's count

    def __post_init__(self):
        if self.input_shape is not None:
            object.__setattr__(self, "input_shape", check_image_shape(self.input_shape))
        units = self.encoder_units
        if isinstance(units, list):
            units = tuple(units)
            object.__setattr__(self, "encoder_units", units)
        if not isinstance(units, tuple) or not all(
            isinstance(u, int) and not isinstance(u, bool) and u > 0 for u in units
        ):
            raise ValueError(
                f"Expected encoder_units to be a tuple of positive ints. Received: encoder_units={self.encoder_units!r}"
            )
        for name in ("code_units", "num_classes", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Expected {name} to be a positive int. Received: {name}={value!r}")
        if self.num_classes < 2:
            raise ValueError(f"Expected num_classes >= 2. Received: num_classes={self.num_classes}")
        for name in ("classifier_units", "ae_epochs", "classifier_epochs", "joint_epochs", "shift_pixels", "patience"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"Expected {name} to be a non-negative int. Received: {name}={value!r}")
        if self.input_shape is not None and self.shift_pixels * 2 >= min(self.input_shape[:2]):
            raise ValueError(f"Expected shift_pixels below half the input side. Received: shift_pixels="
                             f"{self.shift_pixels} for an input of {self.input_shape}")
        if not 0.0 <= self.rotate_degrees <= 45.0:
            raise ValueError(f"Expected 0 <= rotate_degrees <= 45. Received: rotate_degrees={self.rotate_degrees!r}")
        if not 0.0 <= self.zoom < 0.5:
            raise ValueError(f"Expected 0 <= zoom < 0.5. Received: zoom={self.zoom!r}")
        if not 0.0 <= self.colour_jitter < 1.0:
            raise ValueError(f"Expected 0 <= colour_jitter < 1. Received: colour_jitter={self.colour_jitter!r}")
        if not 0.0 <= self.fill_value <= 255.0:
            raise ValueError(f"Expected 0 <= fill_value <= 255. Received: fill_value={self.fill_value!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"Expected 0 <= dropout < 1. Received: dropout={self.dropout!r}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(
                f"Expected 0 <= label_smoothing < 1. Received: label_smoothing={self.label_smoothing!r}"
            )
        if not self.learning_rate > 0:
            raise ValueError(f"Expected learning_rate > 0. Received: learning_rate={self.learning_rate!r}")
        if not self.recon_weight > 0:
            raise ValueError(
                "Expected recon_weight > 0 (the autoencoder must keep converting toward the canonical "
                f"image). Received: recon_weight={self.recon_weight!r}"
            )
        if self.ae_epochs + self.joint_epochs < 1:
            raise ValueError(
                "Expected ae_epochs + joint_epochs >= 1. "
                f"Received: ae_epochs={self.ae_epochs}, joint_epochs={self.joint_epochs}"
            )

    @property
    def convolutional(self) -> bool:
        """Convolutional AE and classifier (``fast_conv``): when ``conv`` says so, and above ``DENSE_MAX_VALUES``."""
        return self.conv or math.prod(self.shape) > DENSE_MAX_VALUES

    def macs(self) -> int:
        """Multiply-accumulates per image of the fused pipeline."""
        if self.convolutional:
            from cbnet_tl.recipes import fast_conv

            return fast_conv.macs(self.shape, self.code_units, self.classifier_units, self.num_classes)
        return sum(a * b for a, b in _dense_shapes(self))

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["encoder_units"] = list(self.encoder_units)
        out["input_shape"] = list(self.input_shape) if self.input_shape is not None else None
        return out

    @property
    def pool(self) -> int:
        """Side of the average pooling in front of the dense layers (1: none; see ``DENSE_POOL_VALUES``).

        The smallest factor up to ``MAX_POOL`` that divides both height and width and brings the pooled values
        within ``DENSE_POOL_VALUES``; 1 when the input already fits, is convolutional, or no such factor exists.
        """
        height, width, channels = self.shape
        if self.convolutional or height * width * channels <= DENSE_POOL_VALUES:
            return 1
        for factor in range(2, MAX_POOL + 1):
            if height % factor == 0 and width % factor == 0 and \
                    (height // factor) * (width // factor) * channels <= DENSE_POOL_VALUES:
                return factor
        return 1

    @property
    def pooled_shape(self) -> tuple:
        """The shape the dense layers see: the input shape after ``pool``."""
        height, width, channels = self.shape
        return (height // self.pool, width // self.pool, channels)

    @property
    def shape(self) -> tuple:
        """The input shape, which must be set (``replace(config, input_shape=...)``)."""
        if self.input_shape is None:
            raise ValueError("Expected FastConfig.input_shape (height, width, channels). Received: None")
        return self.input_shape


def _dense_shapes(config: FastConfig) -> list:
    values = math.prod(config.pooled_shape)
    widths = [values, *config.encoder_units, config.code_units, values]
    if config.classifier_units:
        widths += [config.classifier_units]
    widths += [config.num_classes]
    return list(zip(widths[:-1], widths[1:]))


SIZES = {
    # the fewest MACs: the fastest size, and the least accurate
    "small": FastConfig(encoder_units=(128,), code_units=32, classifier_units=16, recon_weight=0.3,
                        joint_epochs=40, patience=0),
    # what a build trains unless told another size; FastConfig()'s defaults (tests/test_recipes.py holds them equal)
    "default": FastConfig(encoder_units=(512,), code_units=96, classifier_units=32, joint_epochs=30, patience=0),
    "large": FastConfig(encoder_units=(768,), code_units=128, classifier_units=128, joint_epochs=30, patience=0),
}

# Overrides for few training images (a few hundred, a user's own folder; below
# toolchain.training.schedule.FEW_IMAGES): the AE and classifier trained jointly from the start for a fixed
# number of optimizer steps (the trainer sets joint_epochs from the data size) with a light reconstruction term,
# strong augmentation and balanced classes; convolutional for colour images (``conv``). The dense AE did not
# learn on colour: on 32x32 RGB clip-art images it answered one class whatever the schedule, recon weight or
# pooling. On grey images the dense one learns and the convolutional one is slow (benchmarks/RESULTS.md, "A
# user's few hundred images").
FEW_IMAGES = dict(recon_weight=0.02, dropout=0.3, ae_epochs=0, classifier_epochs=0, batch_size=32,
                  learning_rate=1e-3, rotate_degrees=18.0, zoom=0.1, balance_classes=True, patience=0)


def few_images(config: FastConfig, flip: bool, colour_jitter: float, fill_value: float, joint_epochs: int,
               conv: bool = True) -> FastConfig:
    """``config`` with the FEW_IMAGES overrides, the data's augmentation and the step-counted schedule."""
    shift = max(1, round(0.1 * min(config.shape[:2])))
    return replace(config, **FEW_IMAGES, conv=conv, shift_pixels=shift, flip=flip, colour_jitter=colour_jitter,
                   fill_value=fill_value, joint_epochs=joint_epochs)


# Overrides for small training sets (a few thousand images, e.g. MNIST-8k): stronger dropout,
# random shift/rotation/zoom, more epochs over the full cosine schedule (what they gained on MNIST-8k:
# benchmarks/RESULTS.md).
SMALL_DATA = dict(dropout=0.2, shift_pixels=2, rotate_degrees=10.0, zoom=0.1,
                  ae_epochs=10, classifier_epochs=3, joint_epochs=50, patience=0)


def small_data(config: FastConfig) -> FastConfig:
    """``config`` with the SMALL_DATA training overrides (architecture unchanged)."""
    return replace(config, **SMALL_DATA)


def _check_batch(batch_size):
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"Expected batch_size to be None or a positive int. Received: batch_size={batch_size!r}")


def build_autoencoder(
    config: FastConfig = SIZES["default"], batch_size: Optional[int] = None, rescale: bool = True,
    pooled_output: bool = False,
) -> keras.Model:
    """Pixels as float in [0, 255], of the config's input shape → converted image in [0, 1], same shape.

    ``rescale=False`` leaves out the ``Rescaling(1/255)`` layer (same weights list): for export
    views whose first kernel has the 1/255 folded in (see ``build_fused``). With ``config.pool`` > 1 the
    image is decoded at the pooled size and up-sampled (nearest) to the input size; ``pooled_output`` stops
    at the pooled size (the fused graph, whose classifier would only pool it again).
    """
    _check_batch(batch_size)
    shape = config.shape
    if config.convolutional:
        from cbnet_tl.recipes import fast_conv

        return fast_conv.build_autoencoder(shape, config.code_units, config.dropout, batch_size, rescale)
    pixels = keras.Input(shape, batch_size=batch_size, name="pixels")
    x = layers.Rescaling(1.0 / 255.0, name="rescale")(pixels) if rescale else pixels
    if config.pool > 1:
        x = layers.AveragePooling2D(config.pool, name="ae_pool")(x)
    x = batch_flatten(config.pooled_shape, name="ae_flatten")(x)
    for i, units in enumerate(config.encoder_units):
        x = layers.Dense(units, activation="relu", name=f"encoder_{i}")(x)
        if config.dropout > 0:
            x = layers.Dropout(config.dropout, name=f"encoder_dropout_{i}")(x)
    x = layers.Dense(config.code_units, name="code")(x)
    x = layers.Dense(math.prod(config.pooled_shape), activation="sigmoid", name="decoder")(x)
    if config.pool == 1:
        converted = BatchReshape(shape, name="converted")(x)
    elif pooled_output:
        converted = BatchReshape(config.pooled_shape, name="converted")(x)
    else:
        x = BatchReshape(config.pooled_shape, name="converted_pooled")(x)
        converted = NearestUpsample(config.pool, name="converted")(x)
    return keras.Model(pixels, converted, name="fast_autoencoder")


def build_classifier(config: FastConfig = SIZES["default"], batch_size: Optional[int] = None,
                     pooled_input: bool = False) -> keras.Model:
    """Converted image in [0, 1], of the config's input shape → class logits.

    With ``config.pool`` > 1 the image is average-pooled first; ``pooled_input`` takes it already pooled."""
    _check_batch(batch_size)
    if config.convolutional:
        from cbnet_tl.recipes import fast_conv

        return fast_conv.build_classifier(config.shape, config.classifier_units, config.num_classes, config.dropout,
                                          batch_size)
    pooled = config.pool > 1
    image = keras.Input(config.pooled_shape if pooled and pooled_input else config.shape, batch_size=batch_size,
                        name="converted_image")
    x = layers.AveragePooling2D(config.pool, name="classifier_pool")(image) if pooled and not pooled_input else image
    x = batch_flatten(config.pooled_shape, name="classifier_flatten")(x)
    if config.classifier_units:
        x = layers.Dense(config.classifier_units, activation="relu", name="classifier_hidden")(x)
        if config.dropout > 0:
            x = layers.Dropout(config.dropout, name="classifier_dropout")(x)
    logits = layers.Dense(config.num_classes, name="logits")(x)
    return keras.Model(image, logits, name="fast_classifier")


def augmentation_layers(config: FastConfig) -> list:
    """Random shift / rotation / zoom of the input pixels (active in training only; never exported)."""
    out = [layers.RandomFlip("horizontal", name="flip")] if config.flip else []
    fill = dict(fill_mode="constant", fill_value=config.fill_value)
    if config.rotate_degrees:
        out.append(layers.RandomRotation(config.rotate_degrees / 360.0, **fill, name="rotate"))
    if config.zoom:
        out.append(layers.RandomZoom(config.zoom, config.zoom, **fill, name="zoom"))
    if config.shift_pixels:
        factor = config.shift_pixels / config.shape[0]
        out.append(layers.RandomTranslation(factor, factor, **fill, name="shift"))
    if config.colour_jitter:
        out.append(layers.RandomBrightness(config.colour_jitter, value_range=(0.0, 255.0), name="brightness"))
        out.append(layers.RandomContrast(config.colour_jitter, value_range=(0.0, 255.0), name="contrast"))
    return out


def build_autoencoder_trainer(autoencoder: keras.Model, config: FastConfig) -> keras.Model:
    """Pixels → converted image with the config's augmentation in front: the paper-style AE phase."""
    pixels = keras.Input(config.shape, name="pixels")
    x = pixels
    for layer in augmentation_layers(config):
        x = layer(x)
    return keras.Model(pixels, autoencoder(x), name="fast_ae_trainer")


def build_joint_trainer(
    autoencoder: keras.Model, classifier: keras.Model, config: Optional[FastConfig] = None, *, shift_pixels: int = 0
) -> keras.Model:
    """Pixels → {"converted": image, "logits": class logits}, sharing the two models' weights,
    with the config's augmentation (training only) in front of the autoencoder.

    Without ``config``, only a random translation of ``shift_pixels`` (0 = none) is applied.
    """
    if config is None:
        config = FastConfig(shift_pixels=shift_pixels, input_shape=tuple(autoencoder.input_shape[1:]))
    elif shift_pixels:
        raise ValueError(f"Expected shift_pixels in config, not both. Received: shift_pixels={shift_pixels}")
    pixels = keras.Input(config.shape, name="pixels")
    x = pixels
    for layer in augmentation_layers(config):
        x = layer(x)
    converted = autoencoder(x)
    logits = classifier(converted)
    outputs = {
        "converted": layers.Identity(name="converted")(converted),
        "logits": layers.Identity(name="logits")(logits),
    }
    return keras.Model(pixels, outputs, name="fast_joint")


def build_fused(
    autoencoder: keras.Model, classifier: keras.Model, batch_size: Optional[int] = 1, fold_rescale: bool = True
) -> keras.Model:
    """Pixels (float in [0, 255]) → class logits through AE and classifier: the graph that ships.

    The layers are rebuilt at ``batch_size`` (static shapes for the converter; the flattens keep
    batch -1, so the interpreter can still resize the batch) and the trained weights copied in.
    ``fold_rescale`` multiplies the first kernel by 1/255 instead of keeping the Rescaling layer,
    which saves the int8 graph a per-pixel MUL op (same function; per-channel int8 weight
    quantization is invariant to that scale).
    """
    _check_batch(batch_size)
    config = _config_of(autoencoder, classifier)
    # pooled: the AE's up-sampling and the classifier's pooling would cancel (exactly, in float), so both go
    ae = build_autoencoder(config, batch_size=batch_size, rescale=not fold_rescale, pooled_output=True)
    clf = build_classifier(config, batch_size=batch_size, pooled_input=True)
    weights = [w.copy() for w in autoencoder.get_weights()]
    if fold_rescale:
        weights[0] = weights[0] / 255.0  # the first encoder kernel (input values, units)
    ae.set_weights(weights)
    clf.set_weights(classifier.get_weights())
    pixels = keras.Input(config.shape, batch_size=batch_size, name="pixels")
    logits = clf(ae(pixels))
    return keras.Model(pixels, logits, name="fast_cbnet")


def _config_of(autoencoder: keras.Model, classifier: keras.Model) -> FastConfig:
    """The architecture of trained models, read from their layers (dropout does not matter)."""
    config = _config_of_autoencoder(autoencoder)
    names = {l.name for l in classifier.layers}
    hidden = classifier.get_layer("classifier_hidden").units if "classifier_hidden" in names else 0
    return replace(config, classifier_units=hidden, num_classes=classifier.get_layer("logits").units)


def build_fused_autoencoder(autoencoder: keras.Model, batch_size: Optional[int] = 1) -> keras.Model:
    """The trained AE alone, pixels (float in [0, 255], 1/255 folded into the first kernel) → converted image."""
    config = _config_of_autoencoder(autoencoder)
    view = build_autoencoder(config, batch_size=batch_size, rescale=False)
    weights = [w.copy() for w in autoencoder.get_weights()]
    weights[0] = weights[0] / 255.0
    view.set_weights(weights)
    return view


def _config_of_autoencoder(autoencoder: keras.Model) -> FastConfig:
    names = [layer.name for layer in autoencoder.layers]
    conv = "encoder_conv_0" in names
    dense = [layer for layer in autoencoder.layers if isinstance(layer, layers.Dense)]
    encoder = (512,) if conv else tuple(layer.units for layer in dense if layer.name.startswith("encoder_"))
    return FastConfig(encoder_units=encoder, code_units=autoencoder.get_layer("code").units, dropout=0.0,
                      input_shape=tuple(autoencoder.input_shape[1:]), conv=conv)
