"""examples/dlrm/callbacks.py and memory.py on a small Keras model (no TFRS needed: runs
under both Kerases)."""

import glob
import os

import numpy as np
import pytest
import tensorflow as tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from examples.dlrm import callbacks as CB  # noqa: E402
from examples.dlrm import memory  # noqa: E402

BATCH = 8


def _model(seed=0):
    tf.keras.utils.set_random_seed(seed)
    model = tf.keras.Sequential([tf.keras.Input((4,)),
                                 tf.keras.layers.Dense(1, activation="sigmoid")])
    model.compile(optimizer=tf.keras.optimizers.SGD(0.1), loss="binary_crossentropy",
                  metrics=[tf.keras.metrics.AUC(name="auc"),
                           tf.keras.metrics.BinaryCrossentropy(name="logloss")])
    return model


def _data(batches, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batches * BATCH, 4)).astype(np.float32)
    y = (x[:, :1] + 0.5 * rng.normal(size=(len(x), 1)) > 0).astype(np.float32)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH)


def event_scalars(log_dir):
    """{tag: [(step, value)]} of the summaries in log_dir's event files, in write order."""
    out = {}
    for path in sorted(glob.glob(os.path.join(log_dir, "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for v in event.summary.value:
                value = float(tf.make_ndarray(v.tensor)) if v.HasField("tensor") else v.simple_value
                out.setdefault(v.tag, []).append((event.step, value))
    return out


def test_recorder_stop_at_step_and_tensorboard(tmp_path):
    model = _model()
    recorder = CB.StepRecorder(BATCH)
    callbacks = CB.make_callbacks(recorder, last_step=7, run_dir=str(tmp_path))
    assert [type(c) for c in callbacks] == [CB.StepRecorder, CB.StopAtStep,
                                            tf.keras.callbacks.TensorBoard]
    history = model.fit(_data(3).repeat(), epochs=4, steps_per_epoch=3,
                        validation_data=_data(2, seed=2), callbacks=callbacks, verbose=0)
    # Epochs of 3 steps, stopped at step 7 in the third epoch, which still evaluates.
    assert int(model.optimizer.iterations.numpy()) == 7
    curve = recorder.curve()
    assert curve["steps"] == [1, 2, 3, 4, 5, 6, 7]
    assert np.all(np.isfinite(curve["loss"])) and len(curve["loss"]) == 7
    assert curve["eval_steps"] == [3, 6, 7]
    np.testing.assert_allclose(curve["eval_auc"], history.history["val_auc"], rtol=1e-6)
    np.testing.assert_allclose(curve["eval_logloss"], history.history["val_logloss"],
                               rtol=1e-6)
    assert recorder.timed_steps == 6 and recorder.first_step_seconds > 0
    assert recorder.examples_per_second == pytest.approx(6 * BATCH / recorder.timed_seconds)
    # TensorBoard: the epoch scalars of fit's logs, by epoch.
    train = event_scalars(tmp_path / "tensorboard" / "train")
    validation = event_scalars(tmp_path / "tensorboard" / "validation")
    assert [step for step, _ in train["epoch_loss"]] == [0, 1, 2]
    np.testing.assert_allclose([v for _, v in train["epoch_loss"]], history.history["loss"],
                               rtol=1e-6)
    for tag, key in (("epoch_auc", "val_auc"), ("epoch_logloss", "val_logloss")):
        assert [step for step, _ in validation[tag]] == [0, 1, 2]
        np.testing.assert_allclose([v for _, v in validation[tag]], history.history[key],
                                   rtol=1e-6)


def test_recorder_before_two_steps_has_no_throughput():
    recorder = CB.StepRecorder(BATCH)
    assert np.isnan(recorder.examples_per_second)
    model = _model()
    model.fit(_data(1), epochs=1, callbacks=[recorder], verbose=0)
    assert recorder.curve()["steps"] == [1] and recorder.timed_steps == 0
    assert np.isnan(recorder.examples_per_second)
    assert recorder.curve()["eval_steps"] == []  # no validation data: no held-out points


def test_checkpoints_once_per_step_and_resume(tmp_path):
    model = _model()
    ckpt = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
    manager = tf.train.CheckpointManager(ckpt, str(tmp_path), max_to_keep=5)
    saver = CB.CheckpointAtEpochEnd(manager)
    model.fit(_data(2).repeat(), epochs=2, steps_per_epoch=2, callbacks=[saver], verbose=0)
    # Epoch ends at steps 2 and 4; the end of training (step 4 again) saves nothing new.
    assert [int(p.rsplit("-", 1)[1]) for p in manager.checkpoints] == [2, 4]
    restored = _model(seed=5)
    tf.train.Checkpoint(model=restored, optimizer=restored.optimizer).restore(
        manager.latest_checkpoint).expect_partial()
    assert CB.global_step(restored) == 4
    for a, b in zip(model.get_weights(), restored.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_memory_phase_sees_an_allocation():
    phase = memory.MemoryPhase()
    block = np.ones(40_000_000, np.float64)  # 320 MB, touched
    result = phase.result()
    assert result["process_maxrss_mb"] > 300
    assert result["phase_start_rss_mb"] is not None
    if phase.reset_ok:
        assert result["phase_peak_rss_mb"] >= result["phase_start_rss_mb"] + 300
    else:
        assert result["phase_peak_rss_mb"] is None
    del block
    assert memory.read_status_kb("NoSuchField") is None
