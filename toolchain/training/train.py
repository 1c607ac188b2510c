"""Training: B-LeNet with the BranchyNet joint loss, easy/hard split, canonical images, converting AE.

Writes ``BUILD/keras/*.keras`` and ``BUILD/train.json``; later stages read those, never call this.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np

from cbnet_tl.runtime.errors import ConfigError, DataError
from cbnet_tl.runtime.gate import entropy, exits_early, softmax
from cbnet_tl.toolchain.ingest.datasets import Dataset
from cbnet_tl.toolchain.training import schedule
from cbnet_tl.toolchain.training.schedule import class_balance_weights


class Recipe(str, Enum):
    """How CBNet's converting AE and light classifier are made (``recipes/``)."""

    FAST = "fast"  # dense AE + dense classifier, trained paper-style then jointly; one fused graph
    PAPER = "paper"  # the authors' AE and the B-LeNet branch as the classifier


# Entropy thresholds used by the CBNet authors (DESIGN §2); custom datasets default to FMNIST's.
DEFAULT_THRESHOLDS = {"mnist": 0.05, "fashion-mnist": 0.5, "kmnist": 0.025}
CUSTOM_THRESHOLD = 0.5


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    recipe: Recipe = Recipe.FAST
    fast_size: str = "default"  # a key of recipes.fast.SIZES
    validation_fraction: float = 0.1
    blenet_epochs: int = 20  # the learning rate has decayed 0.8x per epoch to ~1% by then
    autoencoder_epochs: int = 100
    patience: int = 4
    batch_size: int = 128
    autoencoder_batch_size: int = 256
    branch_loss_weight: float = 1.0
    main_loss_weight: float = 1.0
    easy_per_hard: float = 3.0
    min_autoencoder_pairs: int = 20000
    augment_shift_pixels: Optional[float] = None  # training-only random shift; None: 2 px below 20k images
    # A user's explicit wall-clock limit for both stages (2/3 B-LeNet, 1/3 AE); None (the default): the fixed
    # schedule runs whole, so the same seed gives the same models however fast or loaded the machine is.
    time_budget_s: Optional[float] = None
    autoencoder_dropout: float = 0.1  # training only; the exported graph has no dropout
    progress: bool = True
    # Adam with the learning rate multiplied by this factor after every epoch (it reaches a higher accuracy in
    # fewer epochs than a constant rate: benchmarks/RESULTS.md).
    learning_rate: float = 2e-3
    lr_decay_per_epoch: float = 0.8
    autoencoder_learning_rate: float = 1e-3
    autoencoder_lr_decay_per_epoch: float = 0.9
    autoencoder_patience: int = 6
    # below schedule.FEW_IMAGES training images: optimizer steps of B-LeNet and of the fast recipe (the epoch
    # counts above do not apply there)
    few_image_steps: int = schedule.TARGET_STEPS

    def __post_init__(self):
        if not 0.0 < self.validation_fraction < 0.5:
            raise ConfigError(f"Expected 0 < validation_fraction < 0.5. Received: {self.validation_fraction}")
        if self.blenet_epochs < 1 or self.autoencoder_epochs < 1:
            raise ConfigError("Expected at least 1 epoch per stage")
        if self.few_image_steps < 1:
            raise ConfigError(f"Expected --steps >= 1. Received: {self.few_image_steps}")


@dataclass(frozen=True)
class EasyHardSplit:
    entropies: np.ndarray
    easy: np.ndarray  # bool per training image
    canonical_indices: np.ndarray  # one training-image index per class


def split_validation(num_samples: int, fraction: float, seed: int) -> tuple:
    order = np.random.default_rng(seed).permutation(num_samples)
    num_validation = max(1, int(round(num_samples * fraction)))
    return np.sort(order[num_validation:]), np.sort(order[:num_validation])


def _halves(indices: np.ndarray, seed: int) -> tuple:
    """Two disjoint sorted halves of ``indices`` (seeded); the first at least one element."""
    order = np.random.default_rng(seed + 1).permutation(indices)
    middle = max(1, (len(order) + 1) // 2)
    return np.sort(order[:middle]), np.sort(order[middle:])


def choose_canonical(entropies: np.ndarray, labels: np.ndarray, predictions: np.ndarray,
                     easy: np.ndarray, num_classes: int) -> np.ndarray:
    """Per class, the easy, correctly classified training image with the lowest branch entropy.

    A class with no easy image falls back to its lowest-entropy correctly classified image, then to
    its lowest-entropy image.
    """
    chosen = np.empty(num_classes, dtype=np.int64)
    for cls in range(num_classes):
        in_class = labels == cls
        if not in_class.any():
            raise DataError(f"Class {cls} has no training images; every class needs at least one")
        for mask in (in_class & easy & (predictions == cls), in_class & (predictions == cls), in_class):
            if mask.any():
                candidates = np.flatnonzero(mask)
                chosen[cls] = candidates[np.argmin(entropies[candidates])]
                break
    return chosen


def easy_hard_split(branch_logits: np.ndarray, labels: np.ndarray, threshold: float, num_classes: int) -> EasyHardSplit:
    probabilities = softmax(branch_logits)
    entropies = entropy(probabilities)
    easy = exits_early(entropies, threshold)
    canonical = choose_canonical(entropies, labels, probabilities.argmax(-1), easy, num_classes)
    return EasyHardSplit(entropies, easy, canonical)


def autoencoder_pairs(split: EasyHardSplit, config: TrainConfig, seed: int) -> np.ndarray:
    """Indices of training images for the AE: every hard image plus easy images up to
    ``easy_per_hard`` × the hard count (the authors' recipe), or more when that would leave fewer
    than ``min_autoencoder_pairs`` pairs (small datasets)."""
    rng = np.random.default_rng(seed)
    hard = np.flatnonzero(~split.easy)
    easy = np.flatnonzero(split.easy)
    wanted = max(int(config.easy_per_hard * len(hard)), config.min_autoencoder_pairs - len(hard))
    easy = rng.permutation(easy)[: min(len(easy), wanted)]
    return rng.permutation(np.concatenate([hard, easy]))


SMALL_DATASET = 20000  # fewer training images than this: augment (B-LeNet shifts; the fast recipe SMALL_DATA)


def augmentation_shift(config: TrainConfig, num_images: int) -> float:
    """Small sets gain much from random shifts; large ones (e.g. 60k FMNIST) mostly pay in epochs."""
    if config.augment_shift_pixels is not None:
        return float(config.augment_shift_pixels)
    return 2.0 if num_images < SMALL_DATASET else 0.0


def _with_augmentation(model, shift: float, seed: int):
    """Wrap a model with a random shift of its input (``shift`` pixels) that is active only while training."""
    import keras

    if shift <= 0:
        return model
    fraction = shift / model.input_shape[1]
    return _with_layers(model, [keras.layers.RandomTranslation(fraction, fraction, fill_mode="constant", seed=seed,
                                                               name="augment_shift")])


def _with_layers(model, augmentation: list):
    """Wrap a model with ``augmentation`` layers (active only while training) in front of its input."""
    import keras

    image = keras.Input(tuple(model.input_shape[1:]), name="image")
    tensor = image
    for layer in augmentation:
        tensor = layer(tensor)
    outputs = model(tensor)
    if isinstance(outputs, dict):
        outputs = {name: keras.layers.Identity(name=name)(t) for name, t in outputs.items()}
    return keras.Model(image, outputs, name=f"{model.name}_trainer")


def _decaying(rate: float, decay_per_epoch: float, num_samples: int, batch_size: int, min_steps: int):
    """Multiply the rate by ``decay_per_epoch`` once per epoch, but at most once per ``min_steps`` updates:
    a small dataset (few updates per epoch) must not freeze its rate before it has converged."""
    import keras

    steps_per_epoch = max(1, -(-num_samples // batch_size))
    return keras.optimizers.schedules.ExponentialDecay(rate, max(steps_per_epoch, min_steps), decay_per_epoch,
                                                       staircase=True)


def _to_float(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, C) → float32 in [0, 1]."""
    return images.astype(np.float32) / np.float32(255.0)


def train_all(train: Dataset, build_dir: Path, threshold: float, config: TrainConfig) -> dict:
    """Train every model; save them under ``build_dir/keras``; return the training record."""
    import keras

    from cbnet_tl.recipes import blenet
    from cbnet_tl.toolchain.progress import BudgetedBest, EpochBar

    keras.utils.set_random_seed(config.seed)
    num_classes = len(train.class_names)
    few = schedule.few_images(len(train))  # a step-counted schedule, nothing chosen by early stopping
    if train.validation_indices is not None and len(train.validation_indices):  # a val/ folder
        validation = np.asarray(train.validation_indices, dtype=np.int64)
        fit_index = np.setdiff1d(np.arange(len(train)), validation)
    else:
        fraction = schedule.VALIDATION_FRACTION if few else config.validation_fraction
        fit_index, validation = split_validation(len(train), fraction, config.seed)
    if few:  # nothing stops on validation images: all of them are held out for the choices after training
        val_index, held_out = validation, validation
    else:
        # half the validation split stops training (early stopping, best epoch); the other half is never seen by
        # training or model selection, so cbnet-fallback's threshold is chosen on unbiased accuracies
        val_index, held_out = _halves(validation, config.seed)
    x, y = _to_float(train.images), train.labels
    record: dict = {"config": asdict(config), "num_train": int(len(fit_index)), "num_validation": int(len(val_index)),
                    "schedule": "few images" if few else "epochs"}

    started = stage_started = time.perf_counter()
    image_shape = tuple(train.images.shape[1:])
    parts = blenet.make_layers(image_shape, num_classes)
    b_lenet = blenet.build_training_model(parts, image_shape)
    if few:
        shift, batch_size = 0.0, schedule.BATCH_SIZE
        epochs = schedule.epochs_for_steps(len(fit_index), batch_size, config.few_image_steps)
        model = _with_layers(b_lenet, schedule.augmentation_layers(train.images, 1.0, config.seed))
        rate = keras.optimizers.schedules.CosineDecay(schedule.BLENET_LEARNING_RATE,
                                                      epochs * -(-len(fit_index) // batch_size))
        weights = class_balance_weights(y[fit_index], num_classes)
    else:
        shift, batch_size, epochs, weights = augmentation_shift(config, len(fit_index)), config.batch_size, \
            config.blenet_epochs, None
        model = _with_augmentation(b_lenet, shift, config.seed)
        rate = _decaying(config.learning_rate, config.lr_decay_per_epoch, len(fit_index), config.batch_size,
                         min_steps=400)
    # with few images nothing stops early (patience beyond the schedule); a --time-budget still cuts
    budget = BudgetedBest(epochs + 1 if few else config.patience,
                          None if config.time_budget_s is None else config.time_budget_s * 2 / 3,
                          restore_best=not few)
    model.compile(
        optimizer=keras.optimizers.Adam(rate),
        loss={"branch": keras.losses.SparseCategoricalCrossentropy(from_logits=True),
              "main": keras.losses.SparseCategoricalCrossentropy(from_logits=True)},
        loss_weights={"branch": config.branch_loss_weight, "main": config.main_loss_weight},
        metrics={"branch": ["accuracy"], "main": ["accuracy"]},
        jit_compile=False,  # XLA bypasses oneDNN, which costs these small convolutions more CPU time
    )

    history = model.fit(
        x[fit_index], {"branch": y[fit_index], "main": y[fit_index]}, sample_weight=weights,
        validation_data=(x[val_index], {"branch": y[val_index], "main": y[val_index]}),
        epochs=epochs, batch_size=batch_size, verbose=0, shuffle=True,
        callbacks=[
            budget,
            EpochBar("train B-LeNet", epochs, config.progress),
        ],
    )
    record["blenet"] = {
        "epochs_run": len(history.history["loss"]), "stopped_by": budget.stopped_by, "augment_shift_pixels": shift,
        "seconds": round(time.perf_counter() - started, 2),
        "val_branch_accuracy": float(max(history.history["val_branch_accuracy"])),
        "val_main_accuracy": float(max(history.history["val_main_accuracy"])),
    }

    branch_logits = np.asarray(b_lenet.predict(x, batch_size=1024, verbose=0)["branch"])  # no augmentation at inference
    split = easy_hard_split(branch_logits, y, threshold, num_classes)
    canonical = x[split.canonical_indices]
    record["easy_hard"] = {
        "threshold": threshold,
        "hard_share_train": float(1.0 - split.easy.mean()),
        "canonical_indices": split.canonical_indices.tolist(),
        "canonical_entropies": split.entropies[split.canonical_indices].tolist(),
    }

    keras_dir = Path(build_dir) / "keras"
    keras_dir.mkdir(parents=True, exist_ok=True)
    if config.recipe == Recipe.PAPER:
        remaining = None if config.time_budget_s is None else config.time_budget_s - (time.perf_counter() - stage_started)
        autoencoder = _train_paper_autoencoder(_Data(x, y, canonical, val_index, held_out), split, shift, remaining, config, record)
        autoencoder.save(keras_dir / "autoencoder.keras")
    else:
        from cbnet_tl.recipes.fast import SIZES, few_images, small_data
        from cbnet_tl.toolchain.training.fast import train_fast

        started = time.perf_counter()
        fast_config = dataclasses.replace(SIZES[config.fast_size], num_classes=num_classes, input_shape=image_shape)
        if few:  # a step-counted schedule; convolutional for colour images (recipes/fast.py FEW_IMAGES)
            jitter = schedule.COLOUR_JITTER if schedule.colour(train.images) else 0.0
            fast_config = few_images(fast_config, flip=schedule.colour(train.images), colour_jitter=jitter,
                                     fill_value=schedule.fill_value(train.images),
                                     joint_epochs=schedule.epochs_for_steps(
                                         len(fit_index), schedule.BATCH_SIZE,
                                         config.few_image_steps * schedule.FAST_STEP_FACTOR),
                                     conv=schedule.colour(train.images))
        elif len(fit_index) < SMALL_DATASET:  # small sets: augmentation, more epochs (recipes/fast.py SMALL_DATA)
            fast_config = small_data(fast_config)
        # without early stopping the recipe also trains on the images that stopped B-LeNet; the held-out half
        # (cbnet-fallback's threshold) stays unseen (with few images, every validation image is held out)
        train_index = np.sort(np.concatenate([fit_index, val_index])) \
            if fast_config.patience == 0 and not few else fit_index
        fast_ae, fast_classifier, history = train_fast(
            train.images[train_index], y[train_index], train.images[val_index], y[val_index],
            train.images[split.canonical_indices], fast_config, seed=config.seed, progress=config.progress)
        fast_ae.save(keras_dir / "fast_autoencoder.keras")
        fast_classifier.save(keras_dir / "fast_classifier.keras")
        record["fast"] = {"size": config.fast_size, "config": fast_config.to_dict(), "macs": fast_config.macs(),
                          "seconds": round(time.perf_counter() - started, 2),
                          "monitor_accuracy_best": history.get("best_val_acc"), "best_epoch": history.get("best_epoch"),
                          "trained_on_monitor_images": bool(fast_config.patience == 0),
                          "paper_style_val_accuracy": history.get("paper_style_val_acc")}
    record["recipe"] = config.recipe.value
    record["validation_indices"] = held_out.tolist()  # cbnet-fallback's threshold is chosen on these
    record["num_held_out"] = int(len(held_out))

    b_lenet.save(keras_dir / "b_lenet.keras")
    np.save(keras_dir / "canonical.npy", train.images[split.canonical_indices])
    # the calibration pool: --calibration-samples takes the first N of these
    np.save(keras_dir / "representative_indices.npy", np.random.default_rng(config.seed).permutation(fit_index)[:4000])
    record["class_names"] = list(train.class_names)
    (Path(build_dir) / "train.json").write_text(json.dumps(record, indent=2))
    return record


class _Data(NamedTuple):
    x: np.ndarray  # float images in [0, 1]
    y: np.ndarray
    canonical: np.ndarray  # the canonical image of each class, float
    val_index: np.ndarray  # the validation images that stop training
    held_out: np.ndarray  # never trained on: cbnet-fallback's threshold is chosen on them


def _train_paper_autoencoder(data: _Data, split, shift: float, remaining: Optional[float], config, record):
    """The CBNet authors' converting AE: hard images plus easy ones, BCE toward the canonical image."""
    import keras

    from cbnet_tl.recipes import autoencoder as ae_recipe
    from cbnet_tl.toolchain.progress import BudgetedBest, EpochBar

    started = time.perf_counter()
    x, y, canonical, val_index, held_out = data
    pairs = autoencoder_pairs(split, config, config.seed)
    pairs = pairs[~np.isin(pairs, held_out)]
    pair_val = np.isin(pairs, val_index)
    ae_fit, ae_val = pairs[~pair_val], pairs[pair_val]
    autoencoder = ae_recipe.build_autoencoder(tuple(x.shape[1:]), dropout=config.autoencoder_dropout)
    trainer = _with_augmentation(autoencoder, shift, config.seed)
    # with few images every validation image is held out: no pair stops training, the schedule runs whole
    stopping = len(ae_val) > 0
    ae_budget = BudgetedBest(config.autoencoder_patience if stopping else config.autoencoder_epochs + 1,
                             None if remaining is None else max(remaining, 30.0), restore_best=stopping)
    trainer.compile(optimizer=keras.optimizers.Adam(_decaying(config.autoencoder_learning_rate, config.autoencoder_lr_decay_per_epoch,
                                                              len(ae_fit), config.autoencoder_batch_size, min_steps=200)),
                    loss="binary_crossentropy", jit_compile=False)
    history = trainer.fit(
        x[ae_fit], canonical[y[ae_fit]],
        validation_data=(x[ae_val], canonical[y[ae_val]]) if stopping else None,
        epochs=config.autoencoder_epochs, batch_size=config.autoencoder_batch_size, verbose=0, shuffle=True,
        callbacks=[
            ae_budget,
            EpochBar("train converting AE", config.autoencoder_epochs, config.progress),
        ],
    )
    record["autoencoder"] = {
        "pairs": int(len(pairs)), "hard_pairs": int((~split.easy[pairs]).sum()),
        "epochs_run": len(history.history["loss"]), "stopped_by": ae_budget.stopped_by,
        "seconds": round(time.perf_counter() - started, 2),
        "val_loss": float(min(history.history["val_loss"])) if stopping else None,
    }
    return autoencoder
