"""tqdm progress for Keras training: one bar per stage, advanced once per epoch."""

from __future__ import annotations

import keras
from tqdm.auto import tqdm


class EpochBar(keras.callbacks.Callback):
    def __init__(self, description: str, num_epochs: int, enabled: bool = True):
        super().__init__()
        self._bar = tqdm(total=num_epochs, desc=description, unit="epoch", disable=not enabled, leave=True)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        shown = {k: f"{v:.4f}" for k, v in logs.items() if k in ("loss", "val_loss", "val_main_accuracy", "val_branch_accuracy")}
        self._bar.set_postfix(shown)
        self._bar.update(1)

    def on_train_end(self, logs=None):
        self._bar.close()
