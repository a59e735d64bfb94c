"""benchmarks/sgd.py's step, which the training-step timings stand on, is Keras' SGD step."""

import numpy as np
import tensorflow as tf

from tt_keras._keras import keras

from benchmarks.sgd import sgd_step


def test_sgd_step_matches_keras_sgd_for_dense_and_sparse_gradients():
    rng = np.random.default_rng(0)
    start = [rng.normal(size=(5, 3)).astype(np.float32), rng.normal(size=(7, 2)).astype(np.float32)]
    dense = tf.constant(rng.normal(size=(5, 3)).astype(np.float32))
    # Duplicate indices: both updates must land, as a scatter-add does.
    sparse = tf.IndexedSlices(tf.constant(rng.normal(size=(3, 2)).astype(np.float32)),
                              tf.constant([4, 1, 4], tf.int64), tf.constant([7, 2], tf.int64))
    ours = [tf.Variable(v) for v in start]
    sgd_step([dense, sparse], ours, learning_rate=0.25)
    theirs = [tf.Variable(v) for v in start]
    keras.optimizers.SGD(learning_rate=0.25).apply_gradients(zip([dense, sparse], theirs))
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6)
    assert not np.allclose(ours[1].numpy(), start[1])
