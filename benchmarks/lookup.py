"""TT lookup speed: the custom op vs the pure-TF chain vs a dense lookup, on the same ids.

    python -m benchmarks.lookup                      # the standard workload, all configurations
    python -m benchmarks.lookup --configs=r32 --reps=50

Workload (benchmarks/workload.py): the largest Criteo-Kaggle table, 10,131,227 x 16, row
factors (200, 220, 250), column factors (2, 2, 4); 2048 bags of 26 ids drawn Zipf(1.1) over
the rows, summed per bag. Configurations: ranks 8/16/32/64 and a 64-wide table at rank 32.
Every line is one run of all the lookups on the same ids; ratios are relative to the dense
lookups on the uncompressed table -- tf.nn.embedding_lookup_sparse, and the fastest a user
has: tf.gather + tf.math.segment_sum for bags, tf.gather for ids one by one (the op with
combiner "none") -- and to the pure-TF chain.

Timings are medians of --reps calls of a tf.function, after warm-up, the op and the dense
lookup called in turns so that load from elsewhere falls on both alike; "fwd+bwd" computes the
output and the gradients of sum(output^2) with respect to the table (cores or dense table);
"+sgd" also applies them as Keras' SGD does (sgd_step): what a training step costs, where
the dense table pays a scatter into every row looked up and the cores a dense update (the
pure-TF chain is not timed there).

Cache rows (--cache_fractions): for each configuration and each cache of that
fraction of the rows, the layer's Space-Saving counter (tt_keras.cache_updates) runs over
--cache_warmup_batches batches of the workload; the top rows it finds are cached (with
values drawn at random: timings do not depend on them), and a further, held-out batch is
timed. Each line compares, on that one batch: the cached op (gradients for the cores and,
sparsely, for the cache rows), the plain op, the pure-TF cached path and the dense lookup;
it also gives the batch's hit rate, the counter's cost per batch (paid by every training
step while counting) and the compression ratio with the cache's bytes included.
"""

import time

import numpy as np
import tensorflow as tf
from absl import app, flags

from tt_keras import (
    TTEmbedding,
    cache,
    cache_updates,
    lookup_backend_scope,
    tt_embedding_bag,
    tt_math,
)
from tt_keras.lookup import tt_embedding_bag_cached

from benchmarks.sgd import sgd_step
from benchmarks.workload import NUM_ROWS, ROW_SHAPE, interleaved_median_ms, zipf_ids

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
flags.DEFINE_list("cache_fractions", ["0.0001", "0.001"],
                  "Cache sizes as fractions of the rows, one set of cache lines per fraction "
                  "and configuration; empty for none.")
flags.DEFINE_integer("cache_warmup_batches", 10,
                     "Batches the frequency counter sees before the cache is filled.")

def median_ms(fn, reps):
    return interleaved_median_ms([fn], reps)[0]


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

    def gather_segment_sum():
        # The fastest dense bag lookup a user has: gather the rows, sum them per bag.
        return tf.math.segment_sum(tf.gather(dense, ids), bag_of_id)

    def tt_ids():
        with lookup_backend_scope("op"):
            return tt_embedding_bag(cores, ids, None, None, "none", NUM_ROWS)

    def with_grad(fn, variables):
        def fwd_bwd():
            with tf.GradientTape() as tape:
                out = fn()
                loss = tf.reduce_sum(out * out)
            return tape.gradient(loss, variables)
        return fwd_bwd

    def with_sgd(fn, variables):
        def step():
            sgd_step(with_grad(fn, variables)(), variables)
        return step

    fns = {
        ("op", "fwd"): tf.function(lambda: tt_fwd("op")),
        ("op", "fwd+bwd"): tf.function(lambda: tt_fwd_bwd("op")),
        ("tf", "fwd"): tf.function(lambda: tt_fwd("reference")),
        ("tf", "fwd+bwd"): tf.function(lambda: tt_fwd_bwd("reference")),
        ("dense", "fwd"): tf.function(dense_fwd),
        ("dense", "fwd+bwd"): tf.function(with_grad(dense_fwd, [dense])),
        ("gather_sum", "fwd"): tf.function(gather_segment_sum),
        ("gather_sum", "fwd+bwd"): tf.function(with_grad(gather_segment_sum, [dense])),
        ("op_ids", "fwd"): tf.function(tt_ids),
        ("op_ids", "fwd+bwd"): tf.function(with_grad(tt_ids, cores)),
        ("gather", "fwd"): tf.function(lambda: tf.gather(dense, ids)),
        ("gather", "fwd+bwd"): tf.function(with_grad(lambda: tf.gather(dense, ids), [dense])),
        ("op", "+sgd"): tf.function(with_sgd(lambda: tt_fwd("op"), cores)),
        ("dense", "+sgd"): tf.function(with_sgd(dense_fwd, [dense])),
        ("gather_sum", "+sgd"): tf.function(with_sgd(gather_segment_sum, [dense])),
        ("op_ids", "+sgd"): tf.function(with_sgd(tt_ids, cores)),
        ("gather", "+sgd"): tf.function(with_sgd(lambda: tf.gather(dense, ids), [dense])),
    }
    # The op and the dense lookups are timed in turns (load on a shared machine then falls
    # on all alike); the slow pure-TF chain separately, with fewer calls.
    fast = [key for key in fns if key[0] != "tf"]
    ms = dict(zip(fast, interleaved_median_ms([fns[key] for key in fast], FLAGS.reps)))
    ms.update({key: median_ms(fn, FLAGS.reference_reps) for key, fn in fns.items()
               if key[0] == "tf"})
    ms[("tf", "+sgd")] = float("nan")
    for mode in ("fwd", "fwd+bwd", "+sgd"):
        op, ref, dense_ms = ms[("op", mode)], ms[("tf", mode)], ms[("dense", mode)]
        fastest = ms[("gather_sum", mode)]
        ids_op, gather = ms[("op_ids", mode)], ms[("gather", mode)]
        print(f"{name:>4} {dim:>3} {shape.ranks[1]:>4} {mode:>8} {op:9.2f} {ref:9.2f} "
              f"{dense_ms:9.2f} {op / dense_ms:11.2f} {fastest:9.2f} {op / fastest:9.2f} "
              f"{ids_op:9.2f} {gather:9.2f} {ids_op / gather:9.2f} {ref / op:10.1f} "
              f"{shape.compression_ratio(NUM_ROWS):8.0f}x", flush=True)


def counter_top_ids(batches, cache_size):
    """The cache the layer would fill after counting `batches`, and the ms per batch the
    counter costs."""
    counter_size = min(cache.CacheConfig.DEFAULT_COUNTER_MULTIPLE * cache_size, NUM_ROWS)
    keys = tf.Variable(tf.fill([counter_size], tf.constant(cache.EMPTY_ID, tf.int64)))
    counts = tf.Variable(tf.zeros([counter_size], tf.int64))

    @tf.function
    def count(ids):
        new_keys, new_counts = cache_updates.space_saving_update(keys, counts, ids)
        keys.assign(new_keys)
        counts.assign(new_counts)

    times = []
    for b in batches:
        start = time.perf_counter()
        count(b)
        times.append(time.perf_counter() - start)
    top = cache_updates.top_ids(keys, counts, cache_size)
    return top, 1000 * float(np.median(times[1:]))


def run_cache_config(name, fraction, rng):
    shape = config_shape(name)
    dim = shape.dim
    cache_size = max(1, int(round(fraction * NUM_ROWS)))
    size = FLAGS.bags * FLAGS.bag_size
    # One draw for warm-up and timed batches, so that a shuffled order maps ranks to rows
    # the same way in all of them; the timed batch is the last, unseen by the counter.
    stream = zipf_ids(NUM_ROWS, size * (FLAGS.cache_warmup_batches + 1), FLAGS.zipf,
                      FLAGS.id_order, rng)
    batches = [tf.constant(stream[i * size:(i + 1) * size], tf.int64)
               for i in range(FLAGS.cache_warmup_batches + 1)]
    ids = batches[-1]
    cache_ids, count_ms = counter_top_ids(batches[:-1], cache_size)
    hit_rate = float(np.isin(ids.numpy(), cache_ids.numpy()).mean())
    row_splits = tf.constant(np.arange(0, size + 1, FLAGS.bag_size), tf.int64)
    cores = [tf.Variable(rng.normal(0, 0.1, s).astype(np.float32)) for s in shape.core_shapes]
    cache_rows = tf.Variable(rng.normal(0, 0.01, (cache_size, dim)).astype(np.float32))
    dense = tf.Variable(rng.normal(0, 0.01, (NUM_ROWS, dim)).astype(np.float32))
    bag_of_id = tf.ragged.row_splits_to_segment_ids(row_splits)
    position = tf.range(size, dtype=tf.int64) - tf.gather(row_splits, bag_of_id)
    sparse_ids = tf.SparseTensor(tf.stack([bag_of_id, position], axis=1), ids,
                                 [FLAGS.bags, FLAGS.bag_size])

    def cached_fwd_bwd(backend):
        with tf.GradientTape() as tape:
            with lookup_backend_scope(backend):
                out = tt_embedding_bag_cached(cores, cache_ids, cache_rows, ids, row_splits,
                                              None, "sum", NUM_ROWS)
            loss = tf.reduce_sum(out * out)
        return tape.gradient(loss, cores + [cache_rows])

    def plain_fwd_bwd():
        with tf.GradientTape() as tape:
            with lookup_backend_scope("op"):
                out = tt_embedding_bag(cores, ids, row_splits, None, "sum", NUM_ROWS)
            loss = tf.reduce_sum(out * out)
        return tape.gradient(loss, cores)

    def dense_fwd_bwd():
        with tf.GradientTape() as tape:
            out = tf.nn.embedding_lookup_sparse(dense, sparse_ids, None, combiner="sum")
            loss = tf.reduce_sum(out * out)
        return tape.gradient(loss, [dense])

    cached_ms, plain_ms, dense_ms = interleaved_median_ms(
        [tf.function(lambda: cached_fwd_bwd("op")), tf.function(plain_fwd_bwd),
         tf.function(dense_fwd_bwd)], FLAGS.reps)
    tf_ms = median_ms(tf.function(lambda: cached_fwd_bwd("reference")), FLAGS.reference_reps)
    layer = TTEmbedding(NUM_ROWS, dim, tt_rank=list(shape.ranks), tt_row_shape=ROW_SHAPE,
                        tt_col_shape=shape.col_shape, cache_size=cache_size)
    print(f"{name:>4} {cache_size:>7,} {hit_rate:>6.1%} {'fwd+bwd':>8} {cached_ms:9.2f} "
          f"{plain_ms:9.2f} {tf_ms:9.2f} {dense_ms:9.2f} {cached_ms / dense_ms:12.2f} "
          f"{plain_ms / cached_ms:10.2f} {count_ms:9.2f} {layer.compression_ratio:8.0f}x",
          flush=True)


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
    print("bags: op, the pure-TF chain (tf), embedding_lookup_sparse (dense) and the fastest "
          "dense bag lookup, gather + segment_sum (gsum); per id (combiner none): the op (ids) "
          "against tf.gather")
    print(f"{'cfg':>4} {'D':>3} {'rank':>4} {'mode':>8} {'op ms':>9} {'tf ms':>9} "
          f"{'dense ms':>9} {'op/dense':>11} {'gsum ms':>9} {'op/gsum':>9} {'ids ms':>9} "
          f"{'gather ms':>9} {'ids/gath':>9} {'tf/op':>10} {'compress':>9}")
    for name in FLAGS.configs:
        run_config(name, ids, row_splits, rng)
    fractions = [float(f) for f in FLAGS.cache_fractions]
    if not fractions:
        return
    print(f"\nHot-row cache: counter over {FLAGS.cache_warmup_batches} batches, then a held-out "
          "batch; fwd+bwd ms of the cached op, the plain op, the pure-TF cached path and the "
          "dense lookup on that batch")
    print(f"{'cfg':>4} {'cache':>7} {'hits':>6} {'mode':>8} {'cached ms':>9} {'op ms':>9} "
          f"{'tf ms':>9} {'dense ms':>9} {'cached/dense':>12} {'op/cached':>10} "
          f"{'count ms':>9} {'compress':>9}")
    for name in FLAGS.configs:
        for fraction in fractions:
            run_cache_config(name, fraction, rng)


if __name__ == "__main__":
    app.run(main)
