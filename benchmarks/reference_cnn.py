"""A reference line for a build's accuracies: a small CNN trained on the build's own images and split.

    .venv/bin/python benchmarks/reference_cnn.py build/stamps32            # the build's folder and split
    .venv/bin/python benchmarks/reference_cnn.py build/fmnist --steps 3000 --json

The CNN is the one users compare with (three 3x3 convolutions of 32, 64 and 128 channels, each with a 2x2 max
pooling, a global average, dropout 0.3, a dense layer to the classes), trained on the build's training images
less its held-out ones, on the few-image schedule of ``toolchain/training/schedule.py``: ``--steps`` optimizer
steps at batch 32, Adam at 1e-3 cosine-decayed to 0, the same augmentation (flips and colour jitter for colour
images), classes balanced. It reports float32 test accuracy with its 95% interval beside the largest class's
share, so a build's pipelines can be read against what a plain small CNN reaches on the same data.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np


def train_reference(train_x, train_y, num_classes: int, steps: int, seed: int):
    import keras
    from keras import layers

    from cbnet_tl.toolchain.training import schedule

    keras.utils.set_random_seed(seed)
    image = keras.Input(train_x.shape[1:])
    x = image
    for layer in schedule.augmentation_layers(train_x, 255.0, seed):
        x = layer(x)
    x = layers.Rescaling(1.0 / 255.0)(x)
    for channels in (32, 64, 128):
        x = layers.Conv2D(channels, 3, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D(2, padding="same")(x)
    x = layers.Dropout(0.3)(layers.GlobalAveragePooling2D()(x))
    model = keras.Model(image, layers.Dense(num_classes)(x))
    epochs = schedule.epochs_for_steps(len(train_x), schedule.BATCH_SIZE, steps)
    total = epochs * -(-len(train_x) // schedule.BATCH_SIZE)
    model.compile(keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(1e-3, total)),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(train_x.astype(np.float32), train_y, sample_weight=schedule.class_balance_weights(train_y, num_classes),
              batch_size=schedule.BATCH_SIZE, epochs=epochs, verbose=0, shuffle=True)
    return model, epochs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("build_dir", type=Path)
    parser.add_argument("--data-dir", type=Path, default=None, help="where the build's images are (default: its own)")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from cbnet_tl.toolchain.analysis.evaluation import load_test_split, load_train_split
    from cbnet_tl.toolchain.scoring import format_share, wilson_interval

    train, seed = load_train_split(args.build_dir, args.data_dir)
    manifest, test = load_test_split(args.build_dir, args.data_dir)
    held_out = json.loads((args.build_dir / "train.json").read_text())["validation_indices"]
    keep = np.setdiff1d(np.arange(len(train)), np.asarray(held_out, dtype=np.int64))
    started = time.perf_counter()
    model, epochs = train_reference(train.images[keep], train.labels[keep], len(manifest.class_names), args.steps, seed)
    predictions = np.argmax(model.predict(test.images.astype(np.float32), batch_size=256, verbose=0), axis=1)
    correct = int(np.sum(predictions == test.labels))
    largest = int(np.bincount(test.labels).max())
    record = {"build": str(args.build_dir), "num_train": int(len(keep)), "num_test": int(len(test)),
              "steps": args.steps, "epochs": epochs, "seconds": round(time.perf_counter() - started, 1),
              "accuracy": correct / len(test), "accuracy_interval": list(wilson_interval(correct, len(test))),
              "largest_class_share": largest / len(test),
              "most_answered_share": float(np.bincount(predictions).max() / len(test))}
    if args.json:
        print(json.dumps(record))
    else:
        print(f"small CNN (reference, float32, {args.steps} steps, {record['seconds']:.0f} s): "
              f"{format_share(correct, len(test))} on {len(test)} test images; the largest class "
              f"{100 * record['largest_class_share']:.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
