"""The SGD step Keras takes after a gradient, for the benchmarks that time training steps
(benchmarks/lookup.py, benchmarks/op_overhead.py)."""

import tensorflow as tf


def sgd_step(grads, variables, learning_rate=1e-6):
    """Applies `grads` to `variables` with the ops Keras' SGD runs: a tf.IndexedSlices (a
    dense table's gradient) is scattered into the rows it names (ResourceScatterAdd), a
    dense gradient (the TT cores') applied to the whole variable
    (ResourceApplyGradientDescent). The learning rate is tiny: only the cost matters."""
    lr = tf.constant(learning_rate)
    for g, v in zip(grads, variables):
        if isinstance(g, tf.IndexedSlices):
            tf.raw_ops.ResourceScatterAdd(resource=v.handle, indices=g.indices,
                                          updates=-lr * g.values)
        else:
            tf.raw_ops.ResourceApplyGradientDescent(var=v.handle, alpha=lr, delta=g)
