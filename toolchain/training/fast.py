"""Training of the ``fast`` CBNet recipe (``recipes/fast.py``): paper-style first, then jointly.

Three phases, all Adam, batch ``config.batch_size``:

1. paper-style AE: pixels → converted image, BCE toward the canonical image of the true class
   (``config.ae_epochs`` at ``config.learning_rate``);
2. classifier on the (frozen) AE's converted images, CE from logits (``config.classifier_epochs``);
3. joint fine-tuning through classifier + AE:
   ``CE(logits, y; label_smoothing) + config.recon_weight · BCE(converted, canonical[y])``,
   learning rate cosine-decayed from ``config.learning_rate`` to 0 over ``config.joint_epochs``,
   the weights of the epoch with the best validation accuracy kept (early stop after
   ``config.patience`` epochs without improvement).

``config.shift_pixels`` / ``rotate_degrees`` / ``zoom`` add random augmentation of the input in
phases 1 and 3 (small data sets).
"""
from __future__ import annotations

import time

import keras
import numpy as np

from cbnet_tl.recipes.fast import (
    FastConfig,
    build_autoencoder,
    build_autoencoder_trainer,
    build_classifier,
    build_joint_trainer,
)
from cbnet_tl.toolchain.progress import EpochBar
from cbnet_tl.toolchain.training.schedule import class_balance_weights


def _onehot_smooth_ce(label_smoothing, num_classes):
    if label_smoothing:
        # sparse CE has no label smoothing: use categorical CE on one-hot targets
        return keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=label_smoothing), True
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True), False


class _BestOnVal(keras.callbacks.Callback):
    """Keeps the weights of the epoch with the best validation accuracy; stops after ``patience``."""

    def __init__(self, x_val, y_val, patience, history):
        super().__init__()
        self.x_val, self.y_val, self.patience, self.history = x_val, y_val, patience, history
        self.best, self.best_weights, self.wait = -1.0, None, 0

    def on_epoch_end(self, epoch, logs=None):
        for k, v in (logs or {}).items():
            self.history.setdefault(f"joint_{k}", []).append(float(v))
        if not self.patience and epoch + 1 < self.params.get("epochs", 0):
            return  # no early stopping: nothing chooses an epoch, so only the last one is scored
        out = self.model.predict(self.x_val, batch_size=1024, verbose=0)
        acc = float((np.argmax(out["logits"], 1) == self.y_val).mean())
        self.history.setdefault("joint_val_acc", []).append(acc)
        if acc > self.best:
            self.best, self.best_weights, self.wait = acc, self.model.get_weights(), 0
        else:
            self.wait += 1
            if self.patience and self.wait >= self.patience:
                self.model.stop_training = True

    def on_train_end(self, logs=None):
        # with early stopping, keep the best epoch; without (patience 0), the schedule's end: the monitoring
        # images were trained on, so picking an epoch by them would be a biased choice
        if self.patience and self.best_weights is not None:
            self.model.set_weights(self.best_weights)


def train_fast(x_fit_uint8, y_fit, x_val_uint8, y_val, canonical_uint8, config: FastConfig, seed: int = 0,
               progress: bool = True):
    """Train the fast recipe. Returns (autoencoder, classifier, history).

    x_*: uint8 pixels (N, height, width, channels) of ``config.input_shape``; y_*: int labels;
    canonical_uint8: (num_classes, height, width, channels) uint8. The models take float pixels in
    [0, 255]; build the shipped graph with ``build_fused(autoencoder, classifier)``.
    """
    keras.utils.set_random_seed(seed)
    t0 = time.perf_counter()
    shape = config.shape
    x_fit = np.asarray(x_fit_uint8, np.float32).reshape(-1, *shape)
    x_val = np.asarray(x_val_uint8, np.float32).reshape(-1, *shape)
    y_fit = np.asarray(y_fit, np.int64)
    y_val = np.asarray(y_val, np.int64)
    canon = np.asarray(canonical_uint8, np.float32).reshape(-1, *shape) / 255.0
    target_fit = canon[y_fit]
    history = {}
    bs = config.batch_size

    ae = build_autoencoder(config)
    clf = build_classifier(config)
    bce = keras.losses.BinaryCrossentropy()

    # 1. paper-style AE toward the canonical image
    if config.ae_epochs:
        ae_trainer = build_autoencoder_trainer(ae, config)
        ae_trainer.compile(keras.optimizers.Adam(config.learning_rate), bce)
        h = ae_trainer.fit(x_fit, target_fit, batch_size=bs, epochs=config.ae_epochs, verbose=0, shuffle=True,
                           callbacks=[EpochBar("train fast AE (paper-style)", config.ae_epochs, progress)])
        history["ae_loss"] = [float(v) for v in h.history["loss"]]
    history["t_ae"] = time.perf_counter() - t0

    # 2. classifier on converted images (AE frozen)
    ce, onehot = _onehot_smooth_ce(config.label_smoothing, config.num_classes)
    yf = keras.utils.to_categorical(y_fit, config.num_classes) if onehot else y_fit
    if config.classifier_epochs:
        conv_fit = ae.predict(x_fit, batch_size=1024, verbose=0)
        clf.compile(keras.optimizers.Adam(config.learning_rate), ce)
        h = clf.fit(conv_fit, yf, batch_size=bs, epochs=config.classifier_epochs, verbose=0, shuffle=True,
                    callbacks=[EpochBar("train fast classifier", config.classifier_epochs, progress)])
        history["classifier_loss"] = [float(v) for v in h.history["loss"]]
        conv_val = ae.predict(x_val, batch_size=1024, verbose=0)
        history["paper_style_val_acc"] = float(
            (np.argmax(clf.predict(conv_val, batch_size=1024, verbose=0), 1) == y_val).mean())
    history["t_classifier"] = time.perf_counter() - t0

    # 3. joint fine-tuning
    if config.joint_epochs:
        joint = build_joint_trainer(ae, clf, config)
        steps = config.joint_epochs * int(np.ceil(len(x_fit) / bs))
        lr = keras.optimizers.schedules.CosineDecay(config.learning_rate, steps)
        joint.compile(
            keras.optimizers.Adam(lr),
            loss={"converted": bce, "logits": ce},
            loss_weights={"converted": config.recon_weight, "logits": 1.0},
        )
        cb = _BestOnVal(x_val, y_val, config.patience, history)
        weights = None
        if config.balance_classes:  # per image, for both outputs (the converted image's loss is per pixel)
            per_image = class_balance_weights(y_fit, config.num_classes)
            weights = {"converted": np.broadcast_to(per_image[:, None, None], target_fit.shape[:3]).copy(),
                       "logits": per_image}
        joint.fit(x_fit, {"converted": target_fit, "logits": yf}, sample_weight=weights, batch_size=bs,
                  epochs=config.joint_epochs, verbose=0, shuffle=True,
                  callbacks=[cb, EpochBar("fine-tune AE + classifier jointly", config.joint_epochs, progress)])
        history["best_val_acc"] = cb.best
        history["best_epoch"] = (int(np.argmax(history["joint_val_acc"])) + 1 if config.patience
                                 else len(history.get("joint_loss", [])))  # without early stopping: the last
    history["train_seconds"] = time.perf_counter() - t0
    return ae, clf, history
