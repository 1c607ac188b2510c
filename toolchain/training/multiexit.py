"""Training of the multi-exit network (``recipes/multiexit.py``), asked for with ``cbnet-tl build --with multiexit``.

Every exit is trained at once on the joint loss (the sum of each exit's cross-entropy, weighted), for a fixed
number of epochs (no early stopping, no time budget: the same seed gives the same model). It trains on the
build's training images less the held-out half of the validation split (``train.json``'s
``validation_indices``), on which the exit thresholds and EENet's exit table are chosen afterwards.

Writes ``BUILD/keras/multiexit.keras`` and ``BUILD/multiexit.json`` (the config and what training saw).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import numpy as np

from cbnet_tl.runtime.errors import ConfigError
from cbnet_tl.runtime.files import write_json_atomic
from cbnet_tl.toolchain.ingest.datasets import Dataset

RECORD_NAME = "multiexit.json"
KERAS_NAME = "multiexit.keras"


def train_multiexit(train: Dataset, build_dir: Path, held_out: np.ndarray, config=None, seed: int = 0,
                    progress: bool = True, log=print) -> dict:
    """Train on every image of ``train`` but ``held_out``; save the model; return the record."""
    import keras

    from cbnet_tl.recipes.multiexit import MultiExitConfig, build_training_model, make_layers
    from cbnet_tl.toolchain.progress import EpochBar

    image_shape = tuple(train.images.shape[1:])
    config = config or MultiExitConfig()
    if config.num_classes != len(train.class_names):
        from dataclasses import replace

        config = replace(config, num_classes=len(train.class_names))
    keras.utils.set_random_seed(seed)
    fit = np.setdiff1d(np.arange(len(train)), held_out)
    x = train.images[fit].astype(np.float32) / np.float32(255.0)
    y = train.labels[fit]
    parts = make_layers(image_shape, config)
    model = build_training_model(parts)
    steps = max(1, -(-len(fit) // config.batch_size))
    schedule = keras.optimizers.schedules.ExponentialDecay(config.learning_rate, steps, config.lr_decay_per_epoch,
                                                           staircase=True)
    names = config.names
    model.compile(optimizer=keras.optimizers.Adam(schedule),
                  loss={n: keras.losses.SparseCategoricalCrossentropy(from_logits=True) for n in names},
                  loss_weights=dict(zip(names, config.exit_loss_weights)),
                  metrics={n: ["accuracy"] for n in names}, jit_compile=False)
    started = time.perf_counter()
    history = model.fit(x, {n: y for n in names}, epochs=config.epochs, batch_size=config.batch_size, verbose=0,
                        shuffle=True, callbacks=[EpochBar("train multiexit", config.epochs, progress)])
    keras_dir = Path(build_dir) / "keras"
    keras_dir.mkdir(parents=True, exist_ok=True)
    model.save(keras_dir / KERAS_NAME)
    record = {
        "config": config.to_dict(), "seed": seed, "input_shape": list(image_shape), "num_train": int(len(fit)),
        "num_held_out": int(len(held_out)), "epochs_run": len(history.history["loss"]),
        "seconds": round(time.perf_counter() - started, 2),
        "train_accuracy_last_epoch": {n: float(history.history[f"{n}_accuracy"][-1]) for n in names},
    }
    write_json_atomic(Path(build_dir) / RECORD_NAME, record)
    log(f"multiexit: trained {record['epochs_run']} epochs on {len(fit)} images in {record['seconds']:.0f} s "
        "(last epoch's training accuracy per exit: "
        + ", ".join(f"{n} {a:.2%}" for n, a in record["train_accuracy_last_epoch"].items()) + ")")
    return record


def read_record(build_dir: Path) -> Optional[dict]:
    path = Path(build_dir) / RECORD_NAME
    return json.loads(path.read_text()) if path.is_file() else None


def export_multiexit(build_dir: Path, pixels: np.ndarray) -> list:
    """``ModelSpec``s of the segments, calibrated: the first on ``pixels`` (float 0..255 with a ramp image, as
    ``export._calibration_pixels`` makes them), each later one on what the segment before it outputs for them."""
    import keras

    from cbnet_tl.recipes.multiexit import MultiExitConfig, build_full, build_segments, layers_of
    from cbnet_tl.runtime.specs import MULTIEXIT_FULL, MULTIEXIT_STAGES
    from cbnet_tl.toolchain.conversion.convert import ModelSpec

    record = read_record(build_dir)
    config = MultiExitConfig.from_dict(record["config"])
    trained = keras.models.load_model(Path(build_dir) / "keras" / KERAS_NAME, compile=False)
    parts = layers_of(trained, tuple(record["input_shape"]), config)
    segments = build_segments(parts)
    if tuple(name for name, _, _ in segments) != MULTIEXIT_STAGES:
        raise ConfigError(f"Expected the multiexit network's segments {list(MULTIEXIT_STAGES)} (the pipeline's "
                          f"models). Received: {[name for name, _, _ in segments]}")
    specs, inputs = [], pixels
    for k, (name, model, output_names) in enumerate(segments):
        specs.append(ModelSpec(name, model, output_names, inputs, input_type="uint8" if k == 0 else "int8"))
        if len(output_names) > 1:  # called eagerly: predict() would trace a function per segment (TF warns)
            inputs = np.concatenate([keras.ops.convert_to_numpy(model(inputs[i:i + 256], training=False)[1])
                                     for i in range(0, len(inputs), 256)]).astype(np.float32)
    specs.append(ModelSpec(MULTIEXIT_FULL, build_full(segments), ("logits",), pixels, input_type="uint8"))
    return specs
