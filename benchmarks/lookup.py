"""TT lookup speed: the custom op vs the pure-TF chain vs a dense lookup, on the same ids.

    python -m benchmarks.lookup                      # the spec's workload, all configurations
    python -m benchmarks.lookup --configs=r32 --reps=50

Workload (spec section 2 / issue 3): the largest Criteo-Kaggle table, 10,131,227 x 16, row
factors (200, 220, 250), column factors (2, 2, 4); 2048 bags of 26 ids drawn Zipf(1.1) over
the rows, summed per bag. Configurations: ranks 8/16/32/64 and a 64-wide table at rank 32.
Every line is one run of all three lookups on the same ids; ratios are relative to the dense
lookup (tf.nn.embedding_lookup_sparse on the uncompressed table) and to the pure-TF chain.

Timings are medians of --reps calls of a tf.function, after warm-up; "fwd+bwd" computes the
output and the gradients of sum(output^2) with respect to the table (cores or dense table).
"""

import time

import numpy as np
import tensorflow as tf
from absl import app, flags

from tt_keras import lookup_backend_scope, tt_embedding_bag, tt_math

FLAGS = flags.FLAGS
flags.DEFINE_list("configs", ["r8", "r16", "r32", "r64", "d64"],
                  "Configurations: rN = the 16-wide example table at rank N; d64 = a 64-wide "
                  "table at rank 32.")
flags.DEFINE_integer("bags", 2048, "Bags per batch.")
flags.DEFINE_integer("bag_size", 26, "Ids per bag.")
flags.DEFINE_float("zipf", 1.1, "Zipf exponent of the id distribution.")
flags.DEFINE_enum("id_order", "rank", ["rank", "shuffled"],
                  "rank: id i is the i-th most frequent row (Zipf over the rows); shuffled: "
                  "frequencies are assigned to rows at random, as hashed ids would be.")
flags.DEFINE_integer("reps", 30, "Timed calls of the op and dense lookups.")
flags.DEFINE_integer("reference_reps", 5, "Timed calls of the (slow) pure-TF chain.")
flags.DEFINE_integer("seed", 0, "Random seed.")

NUM_ROWS = 10_131_227
ROW_SHAPE = (200, 220, 250)


def zipf_ids(num_rows, size, exponent, order, rng):
    """Ids with P(rank k) proportional to k^-exponent over num_rows rows."""
    weights = np.arange(1, num_rows + 1, dtype=np.float64) ** -exponent
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    ranks = np.searchsorted(cdf, rng.random(size))
    if order == "shuffled":
        return rng.permutation(num_rows)[ranks]
    return ranks


def median_ms(fn, reps):
    fn()  # trace
    fn()  # warm caches and per-thread scratch
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def config_shape(name):
    if name.startswith("r"):
        return tt_math.TTShape(ROW_SHAPE, (2, 2, 4), (1, int(name[1:]), int(name[1:]), 1))
    if name == "d64":
        return tt_math.TTShape(ROW_SHAPE, (4, 4, 4), (1, 32, 32, 1))
    raise ValueError(f"unknown configuration {name!r}")


def run_config(name, ids, row_splits, rng):
    shape = config_shape(name)
    dim = shape.dim
    cores = [tf.Variable(rng.normal(0, 0.1, s).astype(np.float32)) for s in shape.core_shapes]
    dense = tf.Variable(rng.normal(0, 0.01, (NUM_ROWS, dim)).astype(np.float32))
    num_bags = int(row_splits.shape[0]) - 1
    bag_of_id = tf.ragged.row_splits_to_segment_ids(row_splits)
    position = tf.range(tf.size(ids, out_type=tf.int64)) - tf.gather(row_splits, bag_of_id)
    sparse_ids = tf.SparseTensor(tf.stack([bag_of_id, position], axis=1), ids,
                                 [num_bags, int(tf.reduce_max(position)) + 1])

    def tt_fwd(backend):
        with lookup_backend_scope(backend):
            return tt_embedding_bag(cores, ids, row_splits, None, "sum", NUM_ROWS)

    def tt_fwd_bwd(backend):
        with tf.GradientTape() as tape:
            out = tt_fwd(backend)
            loss = tf.reduce_sum(out * out)
        return tape.gradient(loss, cores)

    def dense_fwd():
        return tf.nn.embedding_lookup_sparse(dense, sparse_ids, None, combiner="sum")

    def dense_fwd_bwd():
        with tf.GradientTape() as tape:
            out = dense_fwd()
            loss = tf.reduce_sum(out * out)
        return tape.gradient(loss, [dense])

    fns = {
        ("op", "fwd"): tf.function(lambda: tt_fwd("op")),
        ("op", "fwd+bwd"): tf.function(lambda: tt_fwd_bwd("op")),
        ("tf", "fwd"): tf.function(lambda: tt_fwd("reference")),
        ("tf", "fwd+bwd"): tf.function(lambda: tt_fwd_bwd("reference")),
        ("dense", "fwd"): tf.function(dense_fwd),
        ("dense", "fwd+bwd"): tf.function(dense_fwd_bwd),
    }
    ms = {key: median_ms(fn, FLAGS.reference_reps if key[0] == "tf" else FLAGS.reps)
          for key, fn in fns.items()}
    for mode in ("fwd", "fwd+bwd"):
        op, ref, dense_ms = ms[("op", mode)], ms[("tf", mode)], ms[("dense", mode)]
        print(f"{name:>4} {dim:>3} {shape.ranks[1]:>4} {mode:>8} {op:9.2f} {ref:9.2f} "
              f"{dense_ms:9.2f} {op / dense_ms:11.2f} {ref / op:10.1f} "
              f"{shape.compression_ratio(NUM_ROWS):8.0f}x", flush=True)


def main(argv):
    del argv
    rng = np.random.default_rng(FLAGS.seed)
    size = FLAGS.bags * FLAGS.bag_size
    ids_np = zipf_ids(NUM_ROWS, size, FLAGS.zipf, FLAGS.id_order, rng)
    ids = tf.constant(ids_np, tf.int64)
    row_splits = tf.constant(np.arange(0, size + 1, FLAGS.bag_size), tf.int64)
    unique = np.unique(ids_np)
    prefixes = np.unique(unique // ROW_SHAPE[2])
    print(f"{FLAGS.bags} bags x {FLAGS.bag_size} ids, Zipf({FLAGS.zipf}) over {NUM_ROWS:,} rows "
          f"({FLAGS.id_order} order): {unique.size:,} distinct ids ({unique.size / size:.0%}), "
          f"{prefixes.size:,} distinct (i1, i2) prefixes; "
          f"{tf.config.threading.get_intra_op_parallelism_threads() or 'all'} intra-op threads")
    print(f"{'cfg':>4} {'D':>3} {'rank':>4} {'mode':>8} {'op ms':>9} {'tf ms':>9} "
          f"{'dense ms':>9} {'op/dense':>11} {'tf/op':>10} {'compress':>9}")
    for name in FLAGS.configs:
        run_config(name, ids, row_splits, rng)


if __name__ == "__main__":
    app.run(main)
