"""Keras callbacks of the DLRM trainer: step timing and curves, stopping at a global step,
checkpoints, and TensorBoard.

Steps are global: they are read from the optimizer's `iterations`, which a restored
checkpoint carries, so a resumed run continues the count (and its curves and checkpoint
numbers) where the last one stopped. `tf.keras` is the process's Keras: tf_keras under
TF_USE_LEGACY_KERAS=1 (the trainer's), Keras 3 otherwise.
"""

import os
import time
from typing import Dict, List, Optional

import tensorflow as tf


def global_step(model) -> int:
    return int(model.optimizer.iterations.numpy())


class StepRecorder(tf.keras.callbacks.Callback):
    """Records the training loss of every step and the periodic held-out AUC and log loss
    (`val_auc`, `val_logloss` at the end of each epoch) against the global step, and times
    every step of a fit but its first (which traces the train function)."""

    def __init__(self, batch_size: int):
        super().__init__()
        self.batch_size = batch_size
        self.steps: List[int] = []
        self.losses: List[float] = []
        self.eval_steps: List[int] = []
        self.eval_auc: List[float] = []
        self.eval_logloss: List[float] = []
        self.timed_steps = 0
        self.timed_seconds = 0.0
        self.first_step_seconds: Optional[float] = None
        self._t0 = 0.0

    def on_train_batch_begin(self, batch, logs=None):
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        loss = float((logs or {}).get("loss", float("nan")))  # waits for the step
        seconds = time.perf_counter() - self._t0
        if self.first_step_seconds is None:
            self.first_step_seconds = seconds
        else:
            self.timed_steps += 1
            self.timed_seconds += seconds
        self.steps.append(global_step(self.model))
        self.losses.append(loss)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if "val_auc" in logs:
            self.eval_steps.append(global_step(self.model))
            self.eval_auc.append(float(logs["val_auc"]))
            self.eval_logloss.append(float(logs.get("val_logloss", float("nan"))))

    @property
    def examples_per_second(self) -> float:
        """Training throughput over the timed steps (nan with fewer than two steps)."""
        if not self.timed_steps:
            return float("nan")
        return self.timed_steps * self.batch_size / self.timed_seconds

    def curve(self) -> Dict[str, list]:
        return {"steps": list(self.steps), "loss": list(self.losses),
                "eval_steps": list(self.eval_steps), "eval_auc": list(self.eval_auc),
                "eval_logloss": list(self.eval_logloss)}


class StopAtStep(tf.keras.callbacks.Callback):
    """Stops training once the global step reaches `last_step` (fit counts whole epochs from
    `initial_epoch`, which overshoots a total that is not a multiple of the epoch length)."""

    def __init__(self, last_step: int):
        super().__init__()
        self.last_step = last_step

    def on_train_batch_end(self, batch, logs=None):
        if global_step(self.model) >= self.last_step:
            self.model.stop_training = True


class CheckpointAtEpochEnd(tf.keras.callbacks.Callback):
    """Saves `manager`'s checkpoint at the end of each epoch and of training, numbered by the
    global step (once per step)."""

    def __init__(self, manager: tf.train.CheckpointManager):
        super().__init__()
        self.manager = manager
        self.last_saved: Optional[int] = None

    def save(self):
        step = global_step(self.model)
        if step != self.last_saved:
            self.manager.save(checkpoint_number=step)
            self.last_saved = step

    def on_epoch_end(self, epoch, logs=None):
        self.save()

    def on_train_end(self, logs=None):
        self.save()


def tensorboard(log_dir: str) -> tf.keras.callbacks.TensorBoard:
    """Epoch scalars ("epoch_<metric>" under log_dir/train and log_dir/validation; the
    epoch, which continues on resume, as the step)."""
    return tf.keras.callbacks.TensorBoard(log_dir=log_dir, update_freq="epoch",
                                          write_graph=False, profile_batch=0)


def make_callbacks(recorder: StepRecorder, last_step: int, run_dir: str = "",
                   manager: Optional[tf.train.CheckpointManager] = None) -> list:
    """The recorder, stop-at-step, and with a run directory checkpoints and TensorBoard."""
    out = [recorder, StopAtStep(last_step)]
    if manager is not None:
        out.append(CheckpointAtEpochEnd(manager))
    if run_dir:
        out.append(tensorboard(os.path.join(run_dir, "tensorboard")))
    return out
