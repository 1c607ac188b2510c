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


class BudgetedBest(keras.callbacks.Callback):
    """Early stopping on ``val_loss`` plus a wall-clock budget; always ends on the best weights.

    Keras's EarlyStopping restores the best weights only when it is the one that stops training;
    this restores them however training ends (patience, budget or the last epoch), unless ``restore_best`` is
    False (a fixed schedule that chooses nothing on validation images keeps its last weights).
    """

    def __init__(self, patience: int, budget_seconds: float | None, restore_best: bool = True):
        super().__init__()
        self.restore_best = restore_best
        self.patience = patience
        self.budget_seconds = budget_seconds
        self.best = float("inf")
        self.best_weights = None
        self.wait = 0
        self.stopped_by = "epochs"
        self._started = None

    def on_train_begin(self, logs=None):
        import time

        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        import time

        current = (logs or {}).get("val_loss")
        if current is not None and current < self.best:
            self.best, self.wait = current, 0
            self.best_weights = self.model.get_weights()
        else:
            self.wait += 1
        if self.wait >= self.patience:
            self.stopped_by, self.model.stop_training = "patience", True
        elapsed = time.perf_counter() - self._started
        # stop if another epoch of the average length would overrun the budget
        if self.budget_seconds is not None and elapsed * (epoch + 2) / (epoch + 1) > self.budget_seconds:
            self.stopped_by, self.model.stop_training = "time budget", True

    def on_train_end(self, logs=None):
        if self.restore_best and self.best_weights is not None:
            self.model.set_weights(self.best_weights)
