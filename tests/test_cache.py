"""The hot-row cache (docs/cache.md): the cached lookup on both backends, the counter, and
the layer's cache life cycle, all against the NumPy oracle. Run under Keras 3 and under
TF_USE_LEGACY_KERAS=1."""

import os
import re
import threading

import numpy as np
import pytest
import tensorflow as tf

import tt_keras
from tt_keras import cache as tt_cache
from tt_keras import cache_updates, oracle, tt_math
from tt_keras._keras import IS_KERAS_3, keras
from tt_keras.cache import EMPTY_ID
from tt_keras.lookup import lookup_backend_scope, tt_embedding_bag_cached

from tests import test_cache_fold, tolerance
from tests.concurrency import assert_concurrent_calls_match_serial
from tests.keras_saved_model import saved_model_predictions

SHAPES = {
    2: tt_math.TTShape((7, 9), (2, 3), (1, 5, 1)),
    3: tt_math.TTShape((5, 6, 7), (2, 2, 2), (1, 4, 3, 1)),
    4: tt_math.TTShape((3, 4, 2, 5), (2, 1, 3, 2), (1, 3, 4, 2, 1)),
}
N, D = 300, 12  # the layer tests' table


# ---------------------------------------------------------------- oracle helpers

def mixed_table(cores, num_rows, cache):
    """The table a cached layer represents: the TT product, cached ids replaced.

    cache: {id: row}."""
    return oracle.cached_table(cores, num_rows, list(cache), list(cache.values()))


def cached_grads_oracle(cores, cache_ids, bags, weights, combiner, upstream):
    """(core grads, {id: cache row grad}) of L = sum(upstream * pooled lookup).

    The table gradient of the cached ids goes to their cache rows; the rest reaches the
    cores."""
    core_grads, slot_grads = oracle.cached_grads_oracle(cores, None, cache_ids, bags, weights,
                                                        combiner, upstream)
    return core_grads, {int(i): g for i, g in zip(cache_ids, slot_grads)}


def make_bags(rng, num_rows, cached):
    """Bags (with empty ones) mixing cached ids, repeated and fresh uncached ids."""
    sizes = [3, 0, 5, 1, 0, 7, 2, 4]
    uncached = np.setdiff1d(np.arange(num_rows), cached)
    pool = np.concatenate([cached, rng.choice(uncached, size=6, replace=False)])
    flat = rng.choice(pool, size=sum(sizes)).astype(np.int64)
    splits = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    bags = [flat[splits[b]:splits[b + 1]].tolist() for b in range(len(sizes))]
    return flat, splits, bags


def cache_arrays(rng, num_rows, dim, cached, empty_slots=2):
    ids = np.concatenate([np.sort(cached), np.full(empty_slots, EMPTY_ID)]).astype(np.int64)
    rows = rng.normal(size=(len(ids), dim)).astype(np.float32)
    return ids, rows


# ---------------------------------------------------------------- the cached lookup

@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("combiner", ["none", "sum", "mean", "sqrtn"])
@pytest.mark.parametrize("with_weights", [False, True])
def test_cached_lookup_and_gradients_match_oracle(backend, k, combiner, with_weights):
    if combiner == "none" and with_weights:
        pytest.skip("weights need a combiner")
    rng = np.random.default_rng(10 * k + len(combiner))
    shape = SHAPES[k]
    num_rows = shape.padded_rows - 2
    cores = oracle.random_cores(shape, rng)
    cached = rng.choice(num_rows, size=4, replace=False)
    cache_ids, cache_rows = cache_arrays(rng, num_rows, shape.dim, cached)
    ids, splits, bags = make_bags(rng, num_rows, cached)
    if combiner == "none":
        bags = [[i] for i in ids]
    w_bags = [rng.uniform(0.1, 2.0, size=len(b)) for b in bags] if with_weights else None

    core_vars = [tf.Variable(c) for c in cores]
    rows_var = tf.Variable(cache_rows)
    w_var = tf.Variable(np.concatenate(w_bags).astype(np.float32)) if with_weights else None
    with tf.GradientTape() as tape:
        out, hits = tt_embedding_bag_cached(
            core_vars, cache_ids, rows_var, ids, splits if combiner != "none" else None,
            w_var, combiner, num_rows, backend, return_num_hits=True)
        upstream = tf.constant(np.linspace(-1, 1, out.shape[0] * out.shape[1])
                               .reshape(out.shape).astype(np.float32))
        loss = tf.reduce_sum(out * upstream)
    sources = core_vars + [rows_var] + ([w_var] if with_weights else [])
    grads = tape.gradient(loss, sources)

    cache = dict(zip(cache_ids[:4].tolist(), cache_rows[:4]))
    table = mixed_table(cores, num_rows, cache)
    np.testing.assert_allclose(out.numpy(), oracle.pooled_oracle(table, bags, w_bags, combiner),
                               rtol=1e-4, atol=1e-5)
    assert int(hits) == int(np.isin(ids, cached).sum())
    want_cores, want_cache = cached_grads_oracle(cores, cached, bags, w_bags, combiner,
                                                 upstream.numpy())
    for got, want in zip(grads[:k], want_cores):
        np.testing.assert_allclose(tf.convert_to_tensor(got).numpy(), want, rtol=1e-4,
                                   atol=1e-4)
    # The cache rows' gradient is sparse: only slots that were hit, as IndexedSlices.
    assert isinstance(grads[k], tf.IndexedSlices)
    hit_slots = np.unique(grads[k].indices.numpy())
    assert set(cache_ids[hit_slots].tolist()) == set(np.intersect1d(ids, cached).tolist())
    dense = tf.convert_to_tensor(grads[k]).numpy()
    for slot, i in enumerate(cache_ids):
        want = want_cache.get(int(i), np.zeros(shape.dim))
        np.testing.assert_allclose(dense[slot], want, rtol=1e-4, atol=1e-5)
    if with_weights:
        want_w = np.concatenate(oracle.pooled_grad_wrt_weights(table, bags, w_bags, combiner,
                                                               upstream.numpy()))
        np.testing.assert_allclose(grads[k + 1].numpy(), want_w, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("combiner", ["sum", "none"])
def test_a_cache_much_larger_than_the_batch_matches_the_oracle(backend, combiner):
    """A batch of fewer than a sixteenth of the cache's slots: the op searches the sorted
    cache ids for its slots and sorts its gradient's positions, instead of indexing and
    counting over the whole cache (tt_cached_core.cc); the results are the same."""
    rng = np.random.default_rng(21)
    shape = tt_math.TTShape((8, 9, 10), (2, 2, 2), (1, 3, 3, 1))
    num_rows = shape.padded_rows
    cores = oracle.random_cores(shape, rng)
    cached = rng.choice(num_rows, size=600, replace=False)
    cache_ids, cache_rows = cache_arrays(rng, num_rows, shape.dim, cached)
    ids, splits, bags = make_bags(rng, num_rows, cached[:10])
    assert len(ids) * 16 < len(cache_ids)
    if combiner == "none":
        bags = [[i] for i in ids]
    core_vars = [tf.Variable(c) for c in cores]
    rows_var = tf.Variable(cache_rows)
    with tf.GradientTape() as tape:
        out = tt_embedding_bag_cached(core_vars, cache_ids, rows_var, ids,
                                      splits if combiner != "none" else None, None, combiner,
                                      num_rows, backend)
        upstream = rng.normal(size=out.shape).astype(np.float32)
        loss = tf.reduce_sum(out * upstream)
    *core_grads, rows_grad = tape.gradient(loss, core_vars + [rows_var])
    table = mixed_table(cores, num_rows, dict(zip(cache_ids[:600].tolist(), cache_rows[:600])))
    np.testing.assert_allclose(out.numpy(), oracle.pooled_oracle(table, bags, None, combiner),
                               rtol=1e-4, atol=1e-5)
    want_cores, want_cache = cached_grads_oracle(cores, cache_ids[:600], bags, None, combiner,
                                                 upstream)
    for got, want in zip(core_grads, want_cores):
        np.testing.assert_allclose(tf.convert_to_tensor(got).numpy(), want, rtol=1e-4,
                                   atol=1e-4)
    dense = tf.convert_to_tensor(rows_grad).numpy()
    for slot, i in enumerate(cache_ids):
        np.testing.assert_allclose(dense[slot], want_cache.get(int(i), np.zeros(shape.dim)),
                                   rtol=1e-4, atol=1e-5)


def test_variables_read_in_place_see_every_optimizer_step():
    """The op reads the cores and cache rows in place (resource handles). After SGD steps
    that scatter into the cache rows and update the cores whole, each lookup gives the
    oracle's rows of the variables' current values."""
    rng = np.random.default_rng(4)
    shape = SHAPES[3]
    cores = oracle.random_cores(shape, rng)
    cached = np.array([3, 50, 120])
    cache_ids, cache_rows = cache_arrays(rng, shape.padded_rows, shape.dim, cached)
    ids = np.array([3, 7, 50, 50, 199], np.int64)
    splits = np.array([0, 2, 5], np.int64)
    core_vars = [tf.Variable(c) for c in cores]
    rows_var = tf.Variable(cache_rows)
    optimizer = keras.optimizers.SGD(learning_rate=0.02)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            out = tt_embedding_bag_cached(core_vars, cache_ids, rows_var, ids, splits,
                                          combiner="sum", backend="op")
            loss = tf.reduce_sum(out * out)
        variables = core_vars + [rows_var]
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return out

    for _ in range(3):
        out = step().numpy()
        cache = dict(zip(cached.tolist(), [rows_var.numpy()[s] for s in range(3)]))
        want = oracle.pooled_oracle(mixed_table([c.numpy() for c in core_vars], None, cache),
                                    [ids[:2], ids[2:]], None, "sum")
        # `out` is the lookup before this step's update; the next one must see the update.
        after = tt_embedding_bag_cached(core_vars, cache_ids, rows_var, ids, splits,
                                        combiner="sum", backend="op")
        np.testing.assert_allclose(after.numpy(), want, rtol=1e-4, atol=1e-5)
        assert not np.allclose(after.numpy(), out)


@pytest.mark.parametrize("case", ["all_hits", "no_hits", "empty_cache", "empty_batch"])
def test_cached_lookup_edge_cases(backend, case):
    rng = np.random.default_rng(7)
    shape = SHAPES[3]
    cores = oracle.random_cores(shape, rng)
    cached = np.array([3, 50, 120])
    cache_ids, cache_rows = cache_arrays(rng, shape.padded_rows, shape.dim, cached)
    ids = {"all_hits": [50, 3, 3, 120], "no_hits": [0, 1, 2, 199], "empty_cache": [3, 4],
           "empty_batch": []}[case]
    if case == "empty_cache":
        cache_ids, cache_rows = cache_ids[:0], cache_rows[:0]
    ids = np.array(ids, np.int64)
    splits = np.array([0, len(ids) // 2, len(ids)], np.int64)
    core_vars = [tf.Variable(c) for c in cores]
    rows_var = tf.Variable(cache_rows)
    with tf.GradientTape() as tape:
        out = tt_embedding_bag_cached(core_vars, cache_ids, rows_var, ids, splits, None, "sum",
                                      backend=backend)
        loss = tf.reduce_sum(out * out)
    grads = tape.gradient(loss, core_vars + [rows_var])
    cache = dict(zip(cache_ids[:3].tolist(), cache_rows[:3]))
    bags = [ids[:len(ids) // 2], ids[len(ids) // 2:]]
    table = mixed_table(cores, None, cache)
    expect = oracle.pooled_oracle(table, bags, None, "sum")
    np.testing.assert_allclose(out.numpy(), expect, rtol=1e-4, atol=1e-5)
    want_cores, _ = cached_grads_oracle(cores, cache_ids[:len(cache)], bags, None, "sum",
                                        2 * expect)
    for got, want in zip(grads[:3], want_cores):
        np.testing.assert_allclose(tf.convert_to_tensor(got).numpy(), want, rtol=1e-4,
                                   atol=1e-4)
    if case == "all_hits":
        assert all(not tf.convert_to_tensor(g).numpy().any() for g in grads[:3])


def test_cached_lookup_takes_segment_ids(backend):
    rng = np.random.default_rng(8)
    shape = SHAPES[3]
    cores = oracle.random_cores(shape, rng)
    cache_ids, cache_rows = cache_arrays(rng, shape.padded_rows, shape.dim, np.array([3, 50]))
    ids = np.array([3, 7, 50, 3, 9], np.int64)
    by_segments = tt_embedding_bag_cached(cores, cache_ids, cache_rows, ids, None, None, "sqrtn",
                                          backend=backend, segment_ids=[0, 0, 2, 2, 2],
                                          num_bags=4)
    by_splits = tt_embedding_bag_cached(cores, cache_ids, cache_rows, ids, [0, 2, 2, 5, 5],
                                        None, "sqrtn", backend=backend)
    np.testing.assert_array_equal(by_segments.numpy(), by_splits.numpy())


def test_cached_gradient_op_uses_or_rebuilds_the_forward_residuals():
    """The cached gradient from the forward's residuals (slots, the misses' plan and partials)
    equals the one rebuilt from scratch; corrupted residuals are rejected, never trusted."""
    from tt_keras.ops import tt_ops_library
    ops = tt_ops_library.ops
    rng = np.random.default_rng(11)
    shape = tt_math.TTShape((20, 30, 40), (2, 2, 4), (1, 8, 8, 1))
    cores = [tf.constant(c) for c in oracle.random_cores(shape, rng)]
    cache_ids, cache_rows = cache_arrays(rng, shape.padded_rows, shape.dim,
                                         np.array([0, 1, 2, 45, 900]))
    ids = tf.constant(np.concatenate([[0, 0, 1, 45, 2], rng.integers(0, 5000, size=55)]))
    splits = tf.constant(np.arange(0, 61, 6), tf.int64)
    args = dict(cores=cores, cache_ids=cache_ids, indices=ids, row_splits=splits,
                weights=tf.zeros([0]), num_rows=shape.padded_rows, combiner="sum")
    fwd = ops.tt_keras_tt_embedding_bag_cached(cache_rows=cache_rows, **args)
    assert fwd.residual_plan.shape[0] > 0 and fwd.residual_partials.shape[0] > 0
    np.testing.assert_array_equal(fwd.residual_slots.numpy()[:5], [0, 0, 1, 3, 2])
    grad = tf.constant(rng.normal(size=fwd.output.shape).astype(np.float32))

    def grads(slots, plan, partials):
        out = ops.tt_keras_tt_embedding_bag_cached_grad(
            grad=grad, residual_slots=slots, residual_plan=plan, residual_partials=partials,
            **args)
        return [g.numpy() for g in out.core_grads] + [out.cache_grad_slots.numpy(),
                                                      out.cache_grad_values.numpy()]

    with_residuals = grads(fwd.residual_slots, fwd.residual_plan, fwd.residual_partials)
    rebuilt = grads(tf.zeros([0], tf.int32), tf.zeros([0], tf.int64), tf.zeros([0]))
    for a, b in zip(with_residuals, rebuilt):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    slots = fwd.residual_slots
    for bad, needle in [(tf.tensor_scatter_nd_update(slots, [[7]], [99]), "residual_slots"),
                        (tf.tensor_scatter_nd_update(slots, [[0]], [1]), "residual_slots"),
                        (slots[1:], "residual_slots")]:
        with pytest.raises(tf.errors.InvalidArgumentError, match=needle):
            grads(bad, fwd.residual_plan, fwd.residual_partials)
    bad_plan = tf.tensor_scatter_nd_update(fwd.residual_plan, [[5]], [10**9])
    with pytest.raises(tf.errors.InvalidArgumentError, match="residual_plan"):
        grads(slots, bad_plan, fwd.residual_partials)
    with pytest.raises(tf.errors.InvalidArgumentError, match="residual_partials"):
        grads(slots, fwd.residual_plan, fwd.residual_partials[1:])


def test_backends_agree_on_a_skewed_batch():
    """A bigger Zipf batch: the op and the pure-TF path give the same rows and gradients."""
    rng = np.random.default_rng(8)
    shape = tt_math.TTShape((20, 30, 40), (2, 2, 4), (1, 8, 8, 1))
    cores = [tf.Variable(c) for c in oracle.random_cores(shape, rng)]
    ids = np.minimum(rng.zipf(1.2, size=3000) - 1, shape.padded_rows - 1)
    hot = np.unique(ids)[:50]
    cache_ids = np.concatenate([hot, [EMPTY_ID] * 14]).astype(np.int64)
    rows = tf.Variable(rng.normal(size=(64, 16)).astype(np.float32))
    splits = np.arange(0, 3001, 30)
    results = {}
    for backend in ("op", "reference"):
        with tf.GradientTape() as tape:
            out = tt_embedding_bag_cached(cores, cache_ids, rows, ids, splits, None, "mean",
                                          backend=backend)
            loss = tf.reduce_sum(out * out)
        grads = tape.gradient(loss, cores + [rows])
        results[backend] = [out.numpy()] + [tf.convert_to_tensor(g).numpy() for g in grads]
    for a, b in zip(results["op"], results["reference"]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_concurrent_calls_give_identical_results(backend):
    rng = np.random.default_rng(9)
    shape = tt_math.TTShape((20, 30, 40), (2, 2, 4), (1, 8, 8, 1))
    cores = [tf.constant(c) for c in oracle.random_cores(shape, rng)]
    cache_ids = np.sort(rng.choice(shape.padded_rows, size=40, replace=False))
    rows = tf.constant(rng.normal(size=(40, 16)).astype(np.float32))
    batches = [np.where(rng.random(600) < 0.5, rng.choice(cache_ids, 600),
                        rng.integers(0, shape.padded_rows, 600)) for _ in range(4)]
    splits = np.arange(0, 601, 6)

    @tf.function
    def lookup(ids):
        return tt_embedding_bag_cached(cores, cache_ids, rows, ids, splits, None, "sum",
                                       backend=backend)

    assert_concurrent_calls_match_serial(lambda b: lookup(tf.constant(b)).numpy(), batches)


@pytest.mark.parametrize("graph", [False, True])
@pytest.mark.parametrize("bad,needle", [
    ([5, 3, EMPTY_ID], "sorted"),
    ([3, 3, EMPTY_ID], "row"),
    ([-4, 3, EMPTY_ID], "negative"),
])
def test_bad_cache_ids_are_rejected(backend, graph, bad, needle):
    cores = oracle.random_cores(SHAPES[3], np.random.default_rng(0))
    rows = np.zeros((3, 8), np.float32)

    def call():
        return tt_embedding_bag_cached(cores, tf.constant(bad, tf.int64), rows, [1, 2], [0, 2],
                                       None, "sum", num_rows=200, backend=backend)

    with pytest.raises(tf.errors.InvalidArgumentError, match=needle):
        (tf.function(call) if graph else call)()


@pytest.mark.parametrize("bad_id", [-1, 200])
def test_out_of_range_ids_name_position_and_value(backend, bad_id):
    cores = oracle.random_cores(SHAPES[3], np.random.default_rng(0))
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=rf"indices\[2\] = {bad_id} is out of range \[0, 200\)"):
        tt_embedding_bag_cached(cores, [3, EMPTY_ID], np.zeros((2, 8), np.float32),
                                [0, 3, bad_id], [0, 3], None, "sum", num_rows=200,
                                backend=backend)


def test_cached_lookup_argument_errors(backend):
    cores = oracle.random_cores(SHAPES[3], np.random.default_rng(0))
    with pytest.raises(ValueError, match=re.escape(
            "cache_rows has shape [1,7] but cache_ids has 1 slots and the cores give rows of 8 "
            "columns: expected [1,8]")):
        tt_embedding_bag_cached(cores, [3], np.zeros((1, 7), np.float32), [1], backend=backend)
    with pytest.raises(ValueError, match=re.escape(
            "cache_rows has shape [1,8] but cache_ids has 2 slots")):
        tt_embedding_bag_cached(cores, [3, 4], np.zeros((1, 8), np.float32), [1],
                                backend=backend)
    with pytest.raises(TypeError, match="cache_ids must be integers"):
        tt_embedding_bag_cached(cores, [3.0], np.zeros((1, 8), np.float32), [1],
                                backend=backend)
    with pytest.raises(ValueError, match="cache_ids must be a vector"):
        tt_embedding_bag_cached(cores, [[3]], np.zeros((1, 8), np.float32), [1],
                                backend=backend)


def test_reference_backend_graph_has_standard_ops_only():
    cores = [tf.constant(c) for c in oracle.random_cores(SHAPES[3], np.random.default_rng(0))]
    rows = tf.Variable(np.zeros((2, 8), np.float32))

    @tf.function
    def lookup(ids):
        with tf.GradientTape() as tape:
            out = tt_embedding_bag_cached(cores, [3, EMPTY_ID], rows, ids, [0, 2], None, "sum")
        return out, tape.gradient(out, rows)

    with lookup_backend_scope("reference"):
        graph = lookup.get_concrete_function(tf.TensorSpec([2], tf.int64)).graph
    types = {op.type for op in graph.get_operations()}
    assert not any(t.startswith("TTKeras>") for t in types)
    assert {"LowerBound", "DynamicStitch"} <= types  # tf.searchsorted is LowerBound


# ---------------------------------------------------------------- the counter

def test_space_saving_counts_exactly_while_there_is_room():
    keys = tf.fill([6], tf.constant(EMPTY_ID, tf.int64))
    counts = tf.zeros([6], tf.int64)
    for batch in ([5, 5, 9, 1], [9, 5, 2]):
        keys, counts = cache_updates.space_saving_update(keys, counts,
                                                         tf.constant(batch, tf.int64))
    got = {int(k): int(c) for k, c in zip(keys.numpy(), counts.numpy()) if k != EMPTY_ID}
    assert got == {5: 3, 9: 2, 1: 1, 2: 1}
    assert (keys.numpy() == EMPTY_ID).sum() == 2


@pytest.mark.parametrize("order", ["rank", "shuffled"])
def test_counter_finds_the_true_top_c_of_a_zipf_stream(order):
    rng = np.random.default_rng(11)
    num_rows, cache_size, batches, batch = 100_000, 50, 20, 4096
    p = np.arange(1, num_rows + 1, dtype=np.float64) ** -1.1
    ranks = rng.choice(num_rows, size=batches * batch, p=p / p.sum())
    stream = rng.permutation(num_rows)[ranks] if order == "shuffled" else ranks
    layer = tt_keras.TTEmbedding(num_rows, 4, tt_rank=2, cache_size=cache_size,
                                 cache_warmup_steps=batches - 1)
    layer.build()
    step = tf.function(lambda ids: layer(ids, training=True))
    for b in range(batches):
        step(tf.constant(stream[b * batch:(b + 1) * batch], tf.int64))
    truth = np.bincount(stream, minlength=num_rows)
    cached = np.asarray(layer.cache.cache_ids)
    assert (cached != EMPTY_ID).all() and len(np.unique(cached)) == cache_size
    # Ties at the boundary may pick either id: compare the counts, which are unambiguous.
    np.testing.assert_array_equal(np.sort(truth[cached]), np.sort(truth)[-cache_size:])
    # Space-Saving never undercounts (the population halved the counts once).
    keys = np.asarray(layer.cache.cache_counter_keys)
    counts = np.asarray(layer.cache.cache_counter_counts)
    kept = keys != EMPTY_ID
    assert (2 * counts[kept] + 1 >= truth[keys[kept]]).all()
    assert layer.cache_hit_rate > 0.3


def test_counter_memory_does_not_grow_with_input_dim():
    sizes = {}
    for input_dim in (10**6, 10**9):
        layer = tt_keras.TTEmbedding(input_dim, 16, tt_rank=4, cache_size=1000)
        layer.build()
        sizes[input_dim] = {v.name.split("/")[-1].split(":")[0]: tuple(v.shape)
                            for v in layer.weights if "cache" in v.name}
        sizes[input_dim]["bytes"] = layer.cache_bytes
    assert sizes[10**6] == sizes[10**9]
    assert sizes[10**6]["cache_counter_keys"] == (4000,)
    assert sizes[10**6]["cache_rows"] == (1000, 16)


# ---------------------------------------------------------------- the layer

def make_layer(backend="auto", combiner="sum", seed=0, **cache_args):
    layer = tt_keras.TTEmbedding(N, D, tt_rank=[3, 4], tt_row_shape=(5, 6, 10),
                                 tt_col_shape=(2, 2, 3), combiner=combiner,
                                 lookup_backend=backend, **cache_args)
    layer.build()
    layer.set_cores(oracle.random_cores(layer.tt_shape, np.random.default_rng(seed)))
    return layer


def cores_of(layer):
    return [np.asarray(c, np.float64) for c in layer.cores]


def cache_of(layer):
    ids = np.asarray(layer.cache.cache_ids)
    rows = np.asarray(layer.cache.cache_rows, np.float64)
    return {int(i): rows[s] for s, i in enumerate(ids) if i != EMPTY_ID}


def full_table(layer):
    """Every row as the layer serves it (an inference call: it must not change state)."""
    return layer(tf.reshape(tf.range(N, dtype=tf.int64), [N, 1]), training=False).numpy()


def sgd_step_fn(layer, lr):
    optimizer = keras.optimizers.SGD(learning_rate=lr)
    optimizer.build(layer.trainable_variables)

    @tf.function
    def step(ids, upstream):
        with tf.GradientTape() as tape:
            out = layer(ids, training=True)
            loss = tf.reduce_sum(out * upstream)
        grads = tape.gradient(loss, layer.trainable_variables)
        optimizer.apply_gradients(zip(grads, layer.trainable_variables))
        return out

    return step


# Three training calls of warm-up-and-fill: 1, 2, 7 lead the counts (7, 6, 5) when the cache
# of 3 is filled at the start of call 3.
FILL_BATCHES = [
    [[1, 1, 1], [2, 2, 2], [7, 7, 5]],
    [[1, 1, 1], [2, 2, 7], [7, 9, 5]],
    [[1, 7, 3], [299, 0, 2], [5, 8, 8]],
    [[1, 2, 3], [4, 5, 6], [7, 7, 299]],
    [[2, 2, 2], [1, 40, 41], [3, 3, 9]],
]


def test_training_follows_the_oracle_through_warmup_fill_and_sgd(backend):
    lr = 0.1
    layer = make_layer(backend, cache_size=3, cache_warmup_steps=2)
    step = sgd_step_fn(layer, lr)
    rng = np.random.default_rng(12)
    for n, batch in enumerate(FILL_BATCHES, start=1):
        cores = cores_of(layer)
        cache_before = cache_of(layer)
        table_before = mixed_table(cores, N, cache_before)
        if n <= 2:
            assert not cache_before
            # Before the fill every output is the TT product.
            np.testing.assert_allclose(full_table(layer), oracle.dense_table(cores, N),
                                       rtol=1e-4, atol=1e-5)
        upstream = rng.normal(size=(3, D)).astype(np.float32)
        out = step(tf.constant(batch, tf.int64), tf.constant(upstream)).numpy()
        cache = cache_of(layer)
        if n == 3:
            assert sorted(cache) == [1, 2, 7]
            assert layer.cache_hit_rate == pytest.approx(3 / 9)
        # The call's output is computed after the fill: unchanged by it.
        np.testing.assert_allclose(out, oracle.pooled_oracle(table_before, batch, None, "sum"),
                                   rtol=1e-4, atol=1e-5)
        # SGD: cached rows move by their own gradient, the cores by the misses' gradient.
        core_grads, cache_grads = cached_grads_oracle(cores, list(cache), batch, None, "sum",
                                                      upstream)
        want_cores = [c - lr * g for c, g in zip(cores, core_grads)]
        for got, want in zip(cores_of(layer), want_cores):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
        source = cache_before if cache_before else dict(
            (i, oracle.dense_table(cores, N)[i]) for i in cache)
        for i, row in cache.items():
            np.testing.assert_allclose(row, source[i] - lr * cache_grads[i], rtol=1e-4,
                                       atol=1e-5)
        # Uncached rows follow the cores; cached rows are the cache's.
        np.testing.assert_allclose(full_table(layer),
                                   mixed_table(want_cores, N, cache), rtol=1e-4, atol=1e-5)
    assert int(np.asarray(layer.cache.cache_step)) == len(FILL_BATCHES)


@pytest.mark.parametrize("fold_sweeps", [0, 1])
def test_refresh_keeps_rows_that_stay(backend, fold_sweeps):
    layer = make_layer(backend, cache_size=2, cache_warmup_steps=1, cache_refresh_steps=2,
                       cache_fold_sweeps=fold_sweeps)
    step = sgd_step_fn(layer, 0.5)
    upstream = tf.ones([2, D])
    step(tf.constant([[1, 1, 1], [2, 2, 3]], tf.int64), upstream)   # call 1: count
    step(tf.constant([[1, 2, 4], [1, 2, 5]], tf.int64), upstream)   # call 2: fill {1, 2}
    assert sorted(cache_of(layer)) == [1, 2]
    step(tf.constant([[1, 2, 3], [3, 4, 4]], tf.int64), upstream)   # call 3: train
    learned = cache_of(layer)
    cores_before = cores_of(layer)
    tt_before = oracle.dense_table(cores_before, N)
    assert not np.allclose(learned[2], tt_before[2])
    # Call 4 refreshes to {2, 3}; a zero upstream leaves everything as the refresh made it.
    out = step(tf.constant([[3, 3, 3], [3, 3, 2]], tf.int64), tf.zeros([2, D])).numpy()
    cache = cache_of(layer)
    assert sorted(cache) == [2, 3]
    # Row 1 leaves: folded into the cores (the fold's own oracle is in test_cache_fold.py),
    # or, without a fold, back to the TT product.
    want_cores = test_cache_fold.fold_oracle(cores_before, np.array([1]), learned[1][None],
                                             np.array([True]), N, fold_sweeps)
    # float32 line searches against float64 ones: the folded rows agree to about 1e-4.
    for got, want in zip(cores_of(layer), want_cores):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4 * np.abs(want).max())
    tt_after = oracle.dense_table(cores_of(layer), N)
    np.testing.assert_allclose(cache[2], learned[2], rtol=0, atol=0)   # stays: keeps learning
    np.testing.assert_allclose(cache[3], tt_after[3], rtol=1e-4, atol=1e-6)  # new: TT product
    table = full_table(layer)
    np.testing.assert_allclose(table[1], tt_after[1], rtol=1e-4, atol=1e-6)  # left: TT again
    if fold_sweeps:
        assert (np.linalg.norm(table[1] - learned[1])
                < 0.5 * np.linalg.norm(tt_before[1] - learned[1]))
    else:
        np.testing.assert_allclose(table[1], tt_before[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(table[2], learned[2], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out[0], 3 * tt_after[3], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out[1], 2 * tt_after[3] + learned[2], rtol=1e-4, atol=1e-5)


def test_counter_runs_before_each_refresh_only(backend):
    """W = 2, R = 6: counting in calls 1-3 (fill at 3), then 7-9 (refresh at 9)."""
    layer = make_layer(backend, cache_size=2, cache_warmup_steps=2, cache_refresh_steps=6,
                       cache_counter_decay=1.0)

    def counted():
        keys = np.asarray(layer.cache.cache_counter_keys)
        counts = np.asarray(layer.cache.cache_counter_counts)
        return {int(k): int(c) for k, c in zip(keys, counts) if k != EMPTY_ID}

    for n in range(1, 10):
        before = counted()
        layer(tf.constant([[100 + n, 100 + n, 50]]), training=True)
        after = counted()
        if n <= 3 or n >= 7:
            assert after[100 + n] == 2 and after[50] == before.get(50, 0) + 1
        else:
            assert after == before
        if n == 3:  # 50 leads (3 counts); 101-103 tie for the second slot
            cache = sorted(cache_of(layer))
            assert cache[0] == 50 and cache[1] in (101, 102, 103)
    # The refresh at call 9 ranks 50 (6 counts) first; the ids of calls 1-3, 7-9 tie at 2.
    assert 50 in cache_of(layer) and int(np.asarray(layer.cache.cache_step)) == 9


def test_inference_never_changes_the_cache(backend):
    layer = make_layer(backend, cache_size=2, cache_warmup_steps=0)
    layer(tf.constant([[4, 4, 5]]), training=True)
    state = [np.asarray(v).copy() for v in layer.weights]
    for training in (False, None):
        layer(tf.constant([[7, 7, 7]]), training=training)
    tf.function(lambda x: layer(x))(tf.constant([[8, 8, 8]]))
    for before, v in zip(state, layer.weights):
        np.testing.assert_array_equal(before, np.asarray(v))
    assert sorted(cache_of(layer)) == [4, 5]


def test_training_flag_given_as_a_tensor(backend):
    """Legacy Keras can pass `training` as a boolean tensor: decided at run time."""
    layer = make_layer(backend, cache_size=2, cache_warmup_steps=1)
    call = tf.function(lambda ids, training: layer(ids, training=training))
    ids = tf.constant([[4, 4, 5]])
    call(ids, tf.constant(False))
    assert int(np.asarray(layer.cache.cache_step)) == 0
    call(ids, tf.constant(True))
    call(ids, tf.constant(True))  # call 2: fill
    assert int(np.asarray(layer.cache.cache_step)) == 2 and sorted(cache_of(layer)) == [4, 5]
    assert layer.cache_hit_rate == 1.0


def bad_training_batch(fault):
    """(ids, weights, error text) of a batch the lookup refuses."""
    if fault == "id":
        return tf.constant([[4, N, 5]], tf.int64), None, "out of range"
    if fault == "weights":
        return (tf.constant([[4, 4, 5], [5, 5, 4]], tf.int64), tf.ones([3, 2]),
                r"weights of shape \[3,2\] do not match ids of shape \[2,3\]")
    ids = tf.RaggedTensor.from_row_splits(tf.constant([4, 4, 5], tf.int64),
                                          tf.constant([0, 2, 1, 3], tf.int64), validate=False)
    return ids, None, "row_splits must not decrease"


@pytest.mark.parametrize("graph", [False, True])
@pytest.mark.parametrize("fault", ["id", "weights", "ragged_splits"])
def test_a_rejected_training_call_leaves_no_trace(backend, graph, fault):
    """Call 2 would fill the cache: refused, it must not, nor count, nor take a step (its
    batch is checked before the cache's update, also where shapes are known only late)."""
    layer = make_layer(backend, cache_size=2, cache_warmup_steps=1)
    layer(tf.constant([[4, 4, 5]]), training=True)
    state = [np.asarray(v).copy() for v in layer.weights]
    ids, weights, needle = bad_training_batch(fault)

    def call(ids, weights):
        return layer(ids, weights=weights, training=True)

    if graph and fault != "ragged_splits":
        specs = [tf.TensorSpec([None, None], tf.int64)] + (
            [tf.TensorSpec([None, None], tf.float32)] if weights is not None else [None])
        call = tf.function(call).get_concrete_function(*specs)
    elif graph:
        call = tf.function(call)
    # Eagerly a shape fault is a ValueError (the shapes are static), at run time an
    # InvalidArgumentError.
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError), match=needle):
        call(ids, weights)
    for before, v in zip(state, layer.weights):
        np.testing.assert_array_equal(before, np.asarray(v))


@pytest.mark.parametrize("kind", ["ragged", "sparse", "dense_none"])
def test_cached_layer_takes_every_input_kind(backend, kind):
    layer = make_layer(backend, combiner=None if kind == "dense_none" else "mean",
                       cache_size=3, cache_warmup_steps=0)
    bags = [[1, 5, 5], [], [299, 0], [5]]
    layer(tf.constant([[5, 5, 1]]), training=True)  # fills {1, 5}
    cache = cache_of(layer)
    assert sorted(cache) == [1, 5]
    table = mixed_table(cores_of(layer), N, cache)
    if kind == "dense_none":
        ids = np.array([[1, 5], [299, 0]])
        np.testing.assert_allclose(layer(tf.constant(ids)).numpy(), table[ids], rtol=1e-4,
                                   atol=1e-5)
        return
    ragged = tf.ragged.constant(bags, dtype=tf.int64)
    ids = ragged if kind == "ragged" else ragged.to_sparse()
    np.testing.assert_allclose(layer(ids).numpy(),
                               oracle.pooled_oracle(table, bags, None, "mean"),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adagrad"])
def test_model_fit_with_keras_optimizers(backend, optimizer):
    """model.fit compiles the cache's step logic into its tf.function; rows that are cached
    but never hit after the fill keep their values (sparse updates)."""
    inputs = keras.Input(shape=(3,), dtype="int64")
    layer = make_layer(backend, cache_size=6, cache_warmup_steps=2, seed=3)
    # Table entries of about 0.1 and a seeded head keep plain SGD well inside its stable range.
    layer.set_cores([0.5 * np.asarray(c) for c in layer.cores])
    head = keras.layers.Dense(1, kernel_initializer=keras.initializers.GlorotUniform(seed=1))
    model = keras.Model(inputs, head(layer(inputs)))
    opt = {"sgd": keras.optimizers.SGD(0.05), "adam": keras.optimizers.Adam(0.01),
           "adagrad": keras.optimizers.Adagrad(0.05)}[optimizer]
    model.compile(optimizer=opt, loss="mse")
    # Warm-up: ids 0-5 five or six times each, 10-19 at most twice; afterwards only 0-2 (hot)
    # and 10-19, so that the fill at call 3 caches exactly 0-5 and 3-5 are never hit again.
    cold = (np.arange(16) % 10 + 10)[:, None]
    warm = np.concatenate([(np.arange(32) % 6).reshape(16, 2), cold], axis=1)
    later = np.concatenate([(np.arange(32) % 3).reshape(16, 2), cold], axis=1)
    y = np.random.default_rng(13).normal(size=(16, 1)).astype(np.float32)
    model.fit(warm, y, batch_size=8, epochs=1, verbose=0, shuffle=False)  # calls 1, 2
    assert not cache_of(layer)
    model.fit(later[:8], y[:8], batch_size=8, epochs=1, verbose=0)  # call 3: fill
    filled = cache_of(layer)
    assert sorted(filled) == [0, 1, 2, 3, 4, 5]
    history = model.fit(later, y, batch_size=8, epochs=3, verbose=0, shuffle=False)
    assert np.isfinite(history.history["loss"]).all()
    trained = cache_of(layer)
    for i in (0, 1, 2):
        assert not np.allclose(trained[i], filled[i])
    for i in (3, 4, 5):
        np.testing.assert_array_equal(trained[i], filled[i])
    assert layer.cache_hit_rate == pytest.approx((later[8:, :2] < 6).sum() / 24)
    step = int(np.asarray(layer.cache.cache_step))
    model.predict(later, verbose=0)
    assert int(np.asarray(layer.cache.cache_step)) == step


def test_missing_library_falls_back_to_the_pure_tf_cache(tmp_path, monkeypatch):
    import tt_keras.lookup as lookup
    from tt_keras.ops.loader import LazyOpLibrary
    monkeypatch.setattr(lookup, "tt_ops_library", LazyOpLibrary(str(tmp_path)))
    layer = make_layer("auto", cache_size=2, cache_warmup_steps=0)
    with pytest.warns(RuntimeWarning, match="missing"):
        out = layer(tf.constant([[4, 4, 5]]), training=True).numpy()
    assert sorted(cache_of(layer)) == [4, 5]
    table = oracle.dense_table(cores_of(layer), N)
    np.testing.assert_allclose(out[0], 2 * table[4] + table[5], rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- saving

def trained_layer(backend="auto", seed=0):
    layer = make_layer(backend, seed=seed, cache_size=3, cache_warmup_steps=1,
                       cache_refresh_steps=2)
    step = sgd_step_fn(layer, 0.1)
    for batch in FILL_BATCHES:
        step(tf.constant(batch, tf.int64), tf.ones([3, D]))
    assert cache_of(layer)
    return layer


def test_checkpoint_round_trip(tmp_path):
    a = trained_layer(seed=5)
    b = make_layer(seed=6, cache_size=3, cache_warmup_steps=1, cache_refresh_steps=2)
    prefix = tf.train.Checkpoint(embedding=a).save(str(tmp_path / "ckpt"))
    tf.train.Checkpoint(embedding=b).restore(prefix).assert_consumed()
    for va, vb in zip(a.weights, b.weights):
        np.testing.assert_array_equal(np.asarray(va), np.asarray(vb))
    np.testing.assert_array_equal(full_table(a), full_table(b))
    # Training goes on identically: the step, counter and cache were all restored.
    batch, upstream = tf.constant(FILL_BATCHES[1], tf.int64), tf.ones([3, D])
    np.testing.assert_array_equal(sgd_step_fn(a, 0.1)(batch, upstream).numpy(),
                                  sgd_step_fn(b, 0.1)(batch, upstream).numpy())
    np.testing.assert_array_equal(full_table(a), full_table(b))


def test_config_round_trip():
    layer = make_layer(cache_size=3, cache_warmup_steps=7, cache_refresh_steps=5,
                       cache_counter_size=20, cache_counter_decay=0.25)
    config = layer.get_config()
    assert config["cache_size"] == 3 and config["cache_counter_size"] == 20
    clone = tt_keras.TTEmbedding.from_config(config)
    assert clone.get_config() == config


def _saved_op_types(path):
    from tensorflow.core.protobuf import saved_model_pb2
    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    types = set()
    for meta in proto.meta_graphs:
        types.update(n.op for n in meta.graph_def.node)
        for fn in meta.graph_def.library.function:
            types.update(n.op for n in fn.node_def)
    return types


@pytest.mark.parametrize("portable", [False, True])
def test_savedmodel_round_trip(tmp_path, portable):
    layer = trained_layer()
    module = tf.Module()
    module.embedding = layer
    module.serve = tf.function(lambda ids: layer(ids, training=False),
                               input_signature=[tf.TensorSpec([None, 3], tf.int64)])
    path = str(tmp_path / "saved")
    if portable:
        with lookup_backend_scope("reference"):
            module.serve.get_concrete_function()
            tf.saved_model.save(module, path)
    else:
        tf.saved_model.save(module, path)
    types = _saved_op_types(path)
    assert any(t.startswith("TTKeras>") for t in types) != portable
    ids = tf.constant([[1, 2, 7], [0, 4, 299]], tf.int64)
    loaded = tf.saved_model.load(path)
    tolerance.assert_reordered_close(loaded.serve(ids).numpy(), layer(ids).numpy())
    # The cache's variables travel in the SavedModel, where the cache module holds them.
    for name in ("cache_ids", "cache_rows", "cache_counter_keys", "cache_counter_counts",
                 "cache_step"):
        np.testing.assert_array_equal(getattr(loaded.embedding.cache, name).numpy(),
                                      np.asarray(getattr(layer.cache, name)), err_msg=name)


def test_keras_savedmodel_round_trip(tmp_path):
    inputs = keras.Input(shape=(3,), dtype="int64")
    layer = trained_layer()
    model = keras.Model(inputs, layer(inputs))
    ids = np.array([[1, 2, 7], [0, 4, 299]])
    path = str(tmp_path / "saved")
    got = saved_model_predictions(model, path, ids)
    tolerance.assert_reordered_close(got, model.predict(ids, verbose=0))


def test_keras_file_round_trip(tmp_path):
    if not IS_KERAS_3:
        pytest.skip(".keras files are Keras 3's format")
    inputs = keras.Input(shape=(3,), dtype="int64")
    model = keras.Model(inputs, trained_layer()(inputs))
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    ids = np.array([[1, 2, 7], [0, 4, 299]])
    np.testing.assert_array_equal(loaded.predict(ids, verbose=0), model.predict(ids, verbose=0))


# ---------------------------------------------------------------- sizes and arguments

def test_sizes_count_the_cache():
    plain = tt_keras.TTEmbedding(10_131_227, 16, tt_rank=32)
    cached = tt_keras.TTEmbedding(10_131_227, 16, tt_rank=32, cache_size=1013)
    assert plain.cache_bytes == 0 and plain.cache_size == 0
    # rows (float32) + ids + counter keys and counts (int64) + step and two statistics.
    expected = 1013 * 16 * 4 + 1013 * 8 + 2 * 4052 * 8 + 3 * 8
    assert cached.cache_bytes == expected
    assert cached.embedding_bytes == 495_360 * 4 + expected
    assert cached.compression_ratio == pytest.approx(
        10_131_227 * 16 * 4 / (495_360 * 4 + expected))
    assert cached.compression_ratio < plain.compression_ratio
    assert plain.compression_ratio == pytest.approx(10_131_227 * 16 / 495_360)


@pytest.mark.parametrize("kwargs,needle", [
    ({"cache_size": -1}, "cache_size must be >= 0, got -1"),
    ({"cache_size": N + 1}, f"cache_size = {N + 1} exceeds input_dim = {N}"),
    ({"cache_size": 2.5}, "cache_size must be an integer, got 2.5"),
    ({"cache_size": 3, "cache_warmup_steps": -2}, "cache_warmup_steps must be >= 0, got -2"),
    ({"cache_size": 3, "cache_refresh_steps": -1}, "cache_refresh_steps must be >= 0, got -1"),
    ({"cache_size": 3, "cache_counter_size": 2},
     "cache_counter_size = 2 is smaller than cache_size = 3"),
    ({"cache_size": 3, "cache_counter_decay": 0.0}, r"cache_counter_decay must be in \(0, 1\]"),
    ({"cache_size": 3, "cache_counter_decay": "half"}, "cache_counter_decay must be a number"),
    ({"cache_size": 3, "cache_fold_sweeps": -1}, "cache_fold_sweeps must be >= 0, got -1"),
    ({"cache_size": 3, "cache_fold_sweeps": 1.5}, "cache_fold_sweeps must be an integer"),
    ({"cache_size": 3, "cache_fold_sweeps": True}, "cache_fold_sweeps must be an integer"),
])
def test_bad_cache_arguments_name_the_argument(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        tt_keras.TTEmbedding(N, D, tt_rank=4, **kwargs)


# ---------------------------------------------------------------- the cache as a module

def test_the_cache_owns_its_variables(tmp_path):
    """A HotRowCache sublayer holds the cache's variables (named as in 0.1.0); the layer
    reaches them through it, and saves them under it."""
    layer = trained_layer()
    assert isinstance(layer.cache, tt_cache.HotRowCache)
    names = [v.name.split("/")[-1].split(":")[0] for v in layer.weights]
    assert names == ["core_0", "core_1", "core_2", "cache_rows", "cache_ids",
                     "cache_counter_keys", "cache_counter_counts", "cache_step",
                     "cache_last_hits", "cache_last_lookups"]
    assert [v.name.split("/")[-1].split(":")[0] for v in layer.trainable_weights] == [
        "core_0", "core_1", "core_2", "cache_rows"]
    prefix = tf.train.Checkpoint(embedding=layer).save(str(tmp_path / "ckpt"))
    saved = {n for n, _ in tf.train.list_variables(prefix)}
    assert "embedding/cache/cache_ids/.ATTRIBUTES/VARIABLE_VALUE" in saved
    assert not any(n.startswith("embedding/cache_") for n in saved)
    assert layer.cache.num_bytes == layer.cache_bytes == 3 * D * 4 + 3 * 8 + 2 * 12 * 8 + 24
    assert tt_keras.TTEmbedding(N, D, tt_rank=4).cache is None


def test_an_old_checkpoint_restores_into_an_unbuilt_layer():
    """tt_keras 0.1.0 checkpoints name the cache variables under the layer; restored before
    the layer is built, they wait for the cache's variables."""
    from tests.test_compat import load_expected
    directory, config, expected = load_expected("v0.1.0")
    layer = tt_keras.TTEmbedding(**config["cached"], name="embedding")
    status = tf.train.Checkpoint(embedding=layer).read(os.path.join(directory, "ckpt_cached-1"))
    layer.build()
    status.assert_existing_objects_matched()
    for name in ("cache_ids", "cache_rows", "cache_counter_keys", "cache_counter_counts",
                 "cache_step"):
        np.testing.assert_array_equal(np.asarray(getattr(layer.cache, name)),
                                      expected["cached/" + name], err_msg=name)


def test_concurrent_eager_training_calls_count_every_step(backend):
    """Four threads make 25 eager training calls each: 100 steps, one fill (at call 6), and
    the counter and the cache stay consistent."""
    layer = make_layer(backend, cache_size=2, cache_warmup_steps=5)
    start = threading.Barrier(4)
    errors = []

    def train():
        start.wait()
        try:
            for _ in range(25):
                layer(tf.constant([[1, 1, 2], [2, 7, 1]]), training=True)
        except Exception as e:  # pylint: disable=broad-except
            errors.append(e)

    threads = [threading.Thread(target=train) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert int(np.asarray(layer.cache.cache_step)) == 100
    assert sorted(cache_of(layer)) == [1, 2]
    # Calls 1-6 counted 1 (3 per call) and 2 (2 per call); the fill halved the counts.
    counts = dict(zip(np.asarray(layer.cache.cache_counter_keys).tolist(),
                      np.asarray(layer.cache.cache_counter_counts).tolist()))
    assert counts[1] == 9 and counts[2] == 6
    assert int(np.asarray(layer.cache.cache_last_lookups)) == 6 and layer.cache_hit_rate == 5 / 6


# ---------------------------------------------------------------- seeding the counter

def test_seeded_counter_fills_the_first_call(backend):
    """With W = 0, the first training call fills from the seeded counts plus its batch."""
    layer = make_layer(backend, cache_size=3, cache_warmup_steps=0, cache_counter_size=4,
                       cache_counter_decay=1.0)
    layer.cache.seed_counter([7, 50, 3, 11, 90], [5, 9, 1, 4, 2])
    keys = np.asarray(layer.cache.cache_counter_keys)
    counts = np.asarray(layer.cache.cache_counter_counts)
    assert dict(zip(keys.tolist(), counts.tolist())) == {50: 9, 7: 5, 11: 4, 90: 2}
    cores = cores_of(layer)
    # Batch: 90 three more times (5 in all), 3 once (a newcomer: 1 + the minimum, 2).
    layer(tf.constant([[90, 90], [90, 3]], tf.int64), training=True)
    assert sorted(cache_of(layer)) == [7, 50, 90]
    tt = oracle.dense_table(cores, N)
    for i, row in cache_of(layer).items():
        np.testing.assert_allclose(row, tt[i], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("ids,counts,needle", [
    ([1, N], [1, 1], rf"ids\[1\] = {N} is not in \[0, {N}\)"),
    ([-1], [1], r"ids\[0\] = -1 is not in"),
    ([1, 2], [1, -3], r"counts\[1\] = -3 is negative"),
    ([1, 1], [1, 2], "ids must be distinct"),
    ([1, 2], [1], "counts must be integers shaped like ids"),
    ([1.5], [1], "ids must be a vector of integers"),
])
def test_bad_seed_counts_are_named_and_change_nothing(ids, counts, needle):
    layer = make_layer(cache_size=3)
    layer.cache.seed_counter([4, 5], [2, 1])
    before = np.asarray(layer.cache.cache_counter_keys).copy()
    with pytest.raises(ValueError, match=needle):
        layer.cache.seed_counter(ids, counts)
    np.testing.assert_array_equal(np.asarray(layer.cache.cache_counter_keys), before)


def test_counter_from_counts_keeps_the_largest():
    keys, counts = cache_updates.counter_from_counts(
        tf.constant([4, 8, 15, 16], tf.int64), tf.constant([3, 0, 7, 1], tf.int64), 5)
    got = {int(k): int(c) for k, c in zip(keys.numpy(), counts.numpy()) if k != EMPTY_ID}
    assert got == {4: 3, 15: 7, 16: 1}
    keys, counts = cache_updates.counter_from_counts(
        tf.constant([4, 8, 15, 16], tf.int64), tf.constant([3, 0, 7, 1], tf.int64), 2)
    assert sorted(keys.numpy().tolist()) == [4, 15]
