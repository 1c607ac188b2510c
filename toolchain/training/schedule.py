"""Training schedules for few images: a user's own folder of a few hundred images.

Below ``FEW_IMAGES`` training images an epoch is a handful of optimizer steps, so a schedule counted in epochs
stops long before a network has learned (357 images at batch 128: 3 steps an epoch). There every model trains
for a fixed number of optimizer steps (``TARGET_STEPS`` at batch ``BATCH_SIZE`` for B-LeNet, ``FAST_STEP_FACTOR``
times as many for the fast recipe; the learning rate cosine-decayed to 0), on augmented images (shifts, zooms, small rotations; horizontal flips and colour jitter for colour
images, whose classes are drawings and photos of things that a mirror does not change; grey digit and
character sets get neither), with each image weighed by the inverse of its class's count. The fast recipe is convolutional for colour images
and dense for grey ones (``recipes/fast.py`` FEW_IMAGES says why). Nothing is chosen by
early stopping: the validation images are all held out for the choices made after training (cbnet-fallback's
threshold, the recommended pipeline). At ``FEW_IMAGES`` and above the schedules are the ones counted in epochs,
unchanged.
"""

from __future__ import annotations

import math

import numpy as np

FEW_IMAGES = 5000  # fewer training images than this: the schedule below
TARGET_STEPS = 3000  # optimizer steps of B-LeNet
# the convolutional fast recipe learns more slowly (deeper, no shortcut from pixels to classes; how much slower on
# clip-art images: benchmarks/RESULTS.md, "A user's few hundred images")
FAST_STEP_FACTOR = 3
BATCH_SIZE = 32
VALIDATION_FRACTION = 0.2  # held out for the choices after training (nothing trains or stops on them)
BLENET_LEARNING_RATE = 2e-3
SHIFT_FRACTION = 0.1  # of the side
ZOOM = 0.1
ROTATE_TURNS = 0.05  # 18 degrees
COLOUR_JITTER = 0.2  # brightness and contrast, colour images only


def few_images(num_images: int) -> bool:
    return num_images < FEW_IMAGES


def class_balance_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """float32 weight per image: its class's inverse count, scaled so the weights average 1."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    per_class = len(labels) / (num_classes * np.maximum(counts, 1.0))
    return per_class[labels].astype(np.float32)


def epochs_for_steps(num_images: int, batch_size: int = BATCH_SIZE, steps: int = TARGET_STEPS) -> int:
    """Whole epochs that make at least ``steps`` optimizer steps over ``num_images``."""
    return max(1, math.ceil(steps / max(1, math.ceil(num_images / batch_size))))


def colour(images: np.ndarray) -> bool:
    """Colour images get flips and colour jitter (see the module's docstring)."""
    return images.shape[-1] == 3


def fill_value(images: np.ndarray) -> float:
    """What shifted or zoomed images are filled with: the median of the images' border pixels (white for drawings
    composited on white, black for digits), as a pixel value 0..255."""
    border = np.concatenate([images[:, 0].reshape(-1), images[:, -1].reshape(-1),
                             images[:, :, 0].reshape(-1), images[:, :, -1].reshape(-1)])
    return float(np.median(border))


def augmentation_layers(images: np.ndarray, scale: float, seed: int) -> list:
    """Keras layers (active in training only) for B-LeNet's inputs, pixels in [0, ``scale``]."""
    from keras import layers

    fill = dict(fill_mode="constant", fill_value=fill_value(images) / 255.0 * scale, seed=seed)
    out = [layers.RandomFlip("horizontal", seed=seed, name="augment_flip")] if colour(images) else []
    out += [layers.RandomRotation(ROTATE_TURNS, **fill, name="augment_rotate"),
            layers.RandomZoom(ZOOM, ZOOM, **fill, name="augment_zoom"),
            layers.RandomTranslation(SHIFT_FRACTION, SHIFT_FRACTION, **fill, name="augment_shift")]
    if colour(images):
        out += [layers.RandomBrightness(COLOUR_JITTER, value_range=(0.0, scale), seed=seed, name="augment_brightness"),
                layers.RandomContrast(COLOUR_JITTER, value_range=(0.0, scale), seed=seed, name="augment_contrast")]
    return out
