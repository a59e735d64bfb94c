r"""The TT op's cost per call at small batches: what a call costs beyond its work.

    python -m benchmarks.op_overhead
    python -m benchmarks.op_overhead --bags=1,5,20,80 --bag_size=26 --reps=200

For each number of bags (of --bag_size Zipf ids of the workload's 10,131,227 x 16 table,
rank --rank), timed in turns (benchmarks/workload.interleaved_median_ms): the op's forward
and forward+backward (gradients of sum(y^2) for the cores), and the same for the fastest
dense bag lookup a user has (tf.gather + tf.math.segment_sum on the uncompressed table).
Everything runs in tf.functions, so the microseconds at one bag are the fixed cost of a call
through TensorFlow (executor, kernel launch, allocation, validation) rather than work; the
slope between the largest sizes is the cost per id.

"+sgd" adds the SGD step a Keras optimizer takes after the gradient, with the ops Keras'
SGD runs: the cores' dense gradients applied whole (ResourceApplyGradientDescent), the
dense table's tf.IndexedSlices applied to the rows looked up (ResourceScatterAdd). At small
batches that update, not the lookup, is most of what a TT table costs over a dense one:
a rank-32 core of this table is 495,360 floats read and written every step.
"""

import numpy as np
import tensorflow as tf
from absl import app, flags

from tt_keras import tt_embedding_bag, tt_math

from benchmarks.sgd import sgd_step
from benchmarks.workload import NUM_ROWS, ROW_SHAPE, interleaved_median_ms, zipf_ids

FLAGS = flags.FLAGS
flags.DEFINE_list("bags", ["1", "8", "64", "512", "4096"], "Bags per call.")
flags.DEFINE_integer("bag_size", 26, "Ids per bag.")
flags.DEFINE_integer("rank", 32, "TT rank.")
flags.DEFINE_integer("reps", 100, "Timed calls of each lookup.")
flags.DEFINE_integer("seed", 0, "Random seed.")


def lookups(cores, table, ids, splits, segments):
    """[(name, fn)]: the op and the dense bag lookup, forward and forward+backward."""
    @tf.function
    def op_fwd():
        return tt_embedding_bag(cores, ids, row_splits=splits, combiner="sum",
                                num_rows=NUM_ROWS)

    @tf.function
    def op_grad():
        with tf.GradientTape() as tape:
            y = tt_embedding_bag(cores, ids, row_splits=splits, combiner="sum",
                                 num_rows=NUM_ROWS)
            loss = tf.reduce_sum(y * y)
        return tape.gradient(loss, cores)

    @tf.function
    def dense_fwd():
        return tf.math.segment_sum(tf.gather(table, ids), segments)

    @tf.function
    def dense_grad():
        with tf.GradientTape() as tape:
            y = tf.math.segment_sum(tf.gather(table, ids), segments)
            loss = tf.reduce_sum(y * y)
        return tape.gradient(loss, table)

    @tf.function
    def op_sgd():
        sgd_step(op_grad(), cores)

    @tf.function
    def dense_sgd():
        sgd_step([dense_grad()], [table])

    return [("op fwd", op_fwd), ("dense fwd", dense_fwd), ("op fwd+bwd", op_grad),
            ("dense fwd+bwd", dense_grad), ("op +sgd", op_sgd), ("dense +sgd", dense_sgd)]


def main(argv):
    del argv
    rng = np.random.default_rng(FLAGS.seed)
    shape = tt_math.TTShape(ROW_SHAPE, (2, 2, 4), (1, FLAGS.rank, FLAGS.rank, 1))
    cores = [tf.Variable(rng.normal(0, 0.1, s).astype(np.float32))
             for s in shape.core_shapes]
    table = tf.Variable(tf.zeros([NUM_ROWS, 16]))
    print(f"rank {FLAGS.rank}, bags of {FLAGS.bag_size} Zipf(1.1) ids; median us per call of "
          f"{FLAGS.reps}, in turns; dense: tf.gather + segment_sum")
    print(f"{'bags':>6} {'ids':>7} {'op fwd':>9} {'dense fwd':>10} {'ratio':>6} "
          f"{'op f+b':>9} {'dense f+b':>10} {'ratio':>6} {'op +sgd':>9} {'dense +sgd':>10} "
          f"{'ratio':>6}")
    for bags in [int(b) for b in FLAGS.bags]:
        n = bags * FLAGS.bag_size
        ids = tf.constant(zipf_ids(NUM_ROWS, n, 1.1, "rank", rng), tf.int64)
        splits = tf.constant(np.arange(0, n + 1, FLAGS.bag_size), tf.int64)
        segments = tf.constant(np.repeat(np.arange(bags), FLAGS.bag_size), tf.int64)
        fns = [fn for _, fn in lookups(cores, table, ids, splits, segments)]
        us = [1000 * ms for ms in interleaved_median_ms(fns, FLAGS.reps)]
        print(f"{bags:>6} {n:>7} {us[0]:>9.1f} {us[1]:>10.1f} {us[0] / us[1]:>6.2f} "
              f"{us[2]:>9.1f} {us[3]:>10.1f} {us[2] / us[3]:>6.2f} "
              f"{us[4]:>9.1f} {us[5]:>10.1f} {us[4] / us[5]:>6.2f}", flush=True)


if __name__ == "__main__":
    app.run(main)
