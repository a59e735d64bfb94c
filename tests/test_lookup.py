"""tt_embedding_bag on both backends (custom op, pure TF) against the NumPy oracle."""

import re

import numpy as np
import pytest
import tensorflow as tf

from tt_keras import oracle, tt_math
from tt_keras.lookup import tt_embedding_bag
from tt_keras.ops import tt_ops_library

from tests import tolerance
from tests.concurrency import assert_concurrent_calls_match_serial

SHAPES = {
    2: tt_math.TTShape((7, 9), (2, 3), (1, 5, 1)),
    3: tt_math.TTShape((5, 6, 7), (2, 2, 2), (1, 4, 3, 1)),
    4: tt_math.TTShape((3, 4, 2, 5), (2, 1, 3, 2), (1, 3, 4, 2, 1)),
}


def make_bags(rng, num_rows, kind):
    """Ragged bags with empty ones; 'dup' reuses few ids, 'distinct' never repeats one."""
    sizes = [3, 0, 5, 1, 0, 7, 2, 4]
    if kind == "dup":
        pool = rng.choice(num_rows, size=4, replace=False)
        flat = rng.choice(pool, size=sum(sizes))
    else:
        flat = rng.choice(num_rows, size=sum(sizes), replace=False)
    splits = np.concatenate([[0], np.cumsum(sizes)])
    bags = [flat[splits[b]:splits[b + 1]].tolist() for b in range(len(sizes))]
    return flat.astype(np.int64), splits.astype(np.int64), bags


def weights_for(rng, bags):
    return [rng.uniform(0.1, 2.0, size=len(b)) for b in bags]


def run_lookup(cores, ids, splits, weights, combiner, num_rows, backend):
    core_vars = [tf.Variable(c) for c in cores]
    w_var = tf.Variable(weights.astype(np.float32)) if weights is not None else None
    with tf.GradientTape() as tape:
        out = tt_embedding_bag(core_vars, ids, splits if combiner != "none" else None, w_var,
                               combiner, num_rows, backend)
        upstream = tf.constant(np.linspace(-1, 1, out.shape[0] * out.shape[1])
                               .reshape(out.shape).astype(np.float32))
        loss = tf.reduce_sum(out * upstream)
    sources = core_vars + ([w_var] if w_var is not None else [])
    grads = [tf.convert_to_tensor(g).numpy() for g in tape.gradient(loss, sources)]
    return out.numpy(), upstream.numpy(), grads


@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("combiner", ["none", "sum", "mean", "sqrtn"])
@pytest.mark.parametrize("with_weights", [False, True])
@pytest.mark.parametrize("kind", ["dup", "distinct"])
def test_forward_and_gradients_match_oracle(backend, k, combiner, with_weights, kind):
    if combiner == "none" and with_weights:
        pytest.skip("weights need a combiner")
    rng = np.random.default_rng(k * 100 + len(combiner))
    shape = SHAPES[k]
    num_rows = shape.padded_rows - 2
    cores = oracle.random_cores(shape, rng)
    ids, splits, bags = make_bags(rng, num_rows, kind)
    w_bags = weights_for(rng, bags) if with_weights else None
    w_flat = np.concatenate(w_bags) if with_weights else None
    out, upstream, grads = run_lookup(cores, ids, splits, w_flat, combiner, num_rows, backend)

    table = oracle.dense_table(cores, num_rows)
    expect = oracle.pooled_oracle(table, bags, w_bags, combiner)
    np.testing.assert_allclose(out, expect, rtol=1e-4, atol=1e-5)
    for got, want in zip(grads[:k], oracle.core_grads_oracle(cores, bags, w_bags, combiner,
                                                             upstream)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    if with_weights:
        want_w = np.concatenate(oracle.pooled_grad_wrt_weights(table, bags, w_bags, combiner,
                                                               upstream))
        np.testing.assert_allclose(grads[k], want_w, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_id_dtypes(backend, dtype):
    rng = np.random.default_rng(1)
    shape = SHAPES[3]
    cores = oracle.random_cores(shape, rng)
    ids, splits, bags = make_bags(rng, shape.padded_rows, "dup")
    out = tt_embedding_bag(cores, ids.astype(dtype), splits, None, "sum", backend=backend)
    expect = oracle.pooled_oracle(oracle.dense_table(cores), bags, None, "sum")
    np.testing.assert_allclose(out.numpy(), expect, rtol=1e-4, atol=1e-5)


# Shapes that steer the CPU kernels down each of their paths (docs/ops.md): the last core
# read parent by parent with 8-wide dot products (rank % 8 == 0, core within L2) or digit by
# digit (a bigger core, or another rank); dP @ G^T as dot products (q * r_out % 8 == 0) or
# through transposed slices; a parent's gradient summed directly or through per-node shares
# (an inner core bigger than L2); odd row counts and q < 4 for the tiles' tails; row widths
# that pool in registers or in memory.
KERNEL_PATH_SHAPES = {
    "siblings": tt_math.TTShape((30, 40, 50), (2, 2, 4), (1, 16, 16, 1)),
    "tile_tails": tt_math.TTShape((30, 40, 50), (1, 3, 3), (1, 8, 8, 1)),
    "big_last_core": tt_math.TTShape((2, 3, 300), (1, 1, 16), (1, 4, 16, 1)),
    "big_inner_core": tt_math.TTShape((40, 300, 6), (2, 2, 2), (1, 16, 16, 1)),
    "k4": tt_math.TTShape((5, 6, 7, 8), (2, 1, 3, 2), (1, 8, 16, 8, 1)),
    "k2": tt_math.TTShape((50, 60), (4, 4), (1, 8, 1)),
    "mixed_ranks": tt_math.TTShape((30, 40, 50), (2, 3, 2), (1, 12, 8, 1)),
    # 64-wide rows: pooling and gradient sums held in eight registers (SumRows).
    "wide_rows": tt_math.TTShape((30, 40, 50), (4, 4, 4), (1, 8, 8, 1)),
}


@pytest.mark.parametrize("name", sorted(KERNEL_PATH_SHAPES))
def test_kernel_paths_match_oracle(backend, name):
    shape = KERNEL_PATH_SHAPES[name]
    rng = np.random.default_rng(len(name))
    cores = oracle.random_cores(shape, rng)
    num_rows = shape.padded_rows
    # Zipf-like ids: repeats, siblings under one prefix, and lone ids.
    ids = np.minimum(rng.zipf(1.3, size=600) - 1, num_rows - 1)
    ids[::7] = rng.integers(0, num_rows, size=ids[::7].size)
    splits = np.arange(0, 601, 12)
    bags = [ids[splits[b]:splits[b + 1]].tolist() for b in range(50)]
    out, upstream, grads = run_lookup(cores, ids.astype(np.int64), splits, None, "sum",
                                      num_rows, backend)
    table = oracle.dense_table(cores, num_rows)
    np.testing.assert_allclose(out, oracle.pooled_oracle(table, bags, None, "sum"),
                               rtol=1e-4, atol=1e-5)
    for got, want in zip(grads, oracle.core_grads_oracle(cores, bags, None, "sum", upstream)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_backends_agree_on_a_skewed_batch(backend):
    """A bigger, Zipf-like batch: many repeats and shared leading digits."""
    rng = np.random.default_rng(2)
    shape = tt_math.TTShape((20, 30, 40), (2, 2, 4), (1, 8, 8, 1))
    cores = oracle.random_cores(shape, rng)
    ids = np.minimum(rng.zipf(1.2, size=2000) - 1, shape.padded_rows - 1)
    splits = np.arange(0, 2001, 20)
    out = tt_embedding_bag(cores, ids, splits, None, "mean", backend=backend).numpy()
    bags = [ids[splits[b]:splits[b + 1]] for b in range(100)]
    expect = oracle.pooled_oracle(oracle.dense_table(cores), bags, None, "mean")
    np.testing.assert_allclose(out, expect, rtol=1e-4, atol=1e-5)


def test_compute_gradient_numerically(backend):
    rng = np.random.default_rng(3)
    shape = tt_math.TTShape((3, 4, 2), (2, 1, 2), (1, 2, 3, 1))
    cores = [tf.constant(c, tf.float64) for c in oracle.random_cores(shape, rng, dtype=np.float64)]
    ids = tf.constant([0, 5, 5, 23, 7, 1], tf.int64)
    splits = tf.constant([0, 2, 2, 6], tf.int64)
    weights = tf.constant([0.5, 1.0, 2.0, 0.3, 1.5, 0.7], tf.float64)

    def f(c0, c1, c2, w):
        # The op computes in float32; compute_gradient's float64 inputs are cast inside.
        return tf.cast(tt_embedding_bag([c0, c1, c2], ids, splits, w, "sqrtn", backend=backend),
                       tf.float64)

    theoretical, numerical = tf.test.compute_gradient(f, cores + [weights], delta=1e-3)
    for t, n in zip(theoretical, numerical):
        np.testing.assert_allclose(t, n, rtol=2e-2, atol=2e-3)


def test_concurrent_calls_give_identical_results(backend):
    rng = np.random.default_rng(4)
    shape = tt_math.TTShape((20, 30, 40), (2, 2, 4), (1, 8, 8, 1))
    cores = [tf.constant(c) for c in oracle.random_cores(shape, rng)]
    batches = [rng.integers(0, shape.padded_rows, size=600) for _ in range(4)]
    splits = np.arange(0, 601, 6)

    @tf.function
    def lookup(ids):
        return tt_embedding_bag(cores, ids, splits, None, "sum", backend=backend)

    assert_concurrent_calls_match_serial(lambda b: lookup(tf.constant(b)).numpy(), batches)


def test_float16_cores_are_accepted(backend):
    rng = np.random.default_rng(5)
    shape = SHAPES[3]
    cores = oracle.random_cores(shape, rng)
    ids = np.array([1, 2, 3, 200], np.int64)
    out = tt_embedding_bag([tf.constant(c, tf.float16) for c in cores], ids, backend=backend)
    assert out.dtype == tf.float16
    expect = oracle.dense_table(cores)[ids]
    np.testing.assert_allclose(out.numpy().astype(np.float64), expect, rtol=2e-2, atol=2e-2)


# ---------------------------------------------------------------- bad input

def _cores():
    return [tf.constant(c) for c in oracle.random_cores(SHAPES[3], np.random.default_rng(0))]


@pytest.mark.parametrize("graph", [False, True])
@pytest.mark.parametrize("bad_id", [-1, 200, 10**6])
def test_out_of_range_ids_name_position_and_value(backend, graph, bad_id):
    cores = _cores()
    ids = tf.constant([0, 3, bad_id, 5], tf.int64)

    def call():
        return tt_embedding_bag(cores, ids, [0, 2, 4], None, "sum", num_rows=200,
                                backend=backend)

    with pytest.raises(tf.errors.InvalidArgumentError) as err:
        (tf.function(call) if graph else call)()
    message = str(err.value)
    assert "indices[" in message and "2" in message and str(bad_id) in message
    assert "out of range" in message


@pytest.mark.parametrize("graph", [False, True])
def test_segment_ids_give_the_same_bags_as_row_splits(backend, graph):
    rng = np.random.default_rng(5)
    shape = SHAPES[3]
    cores = oracle.random_cores(shape, rng)
    ids = rng.integers(0, shape.padded_rows, size=9)
    weights = rng.uniform(0.5, 2.0, size=9).astype(np.float32)
    # Bags 1, 4 and the two after the last id are empty.
    segment_ids = np.array([0, 0, 2, 2, 2, 3, 5, 5, 5])
    splits = np.array([0, 2, 2, 5, 6, 6, 9, 9, 9])

    def by_segments():
        return tt_embedding_bag(cores, ids, weights=weights, combiner="mean", backend=backend,
                                segment_ids=segment_ids, num_bags=8)

    got = (tf.function(by_segments) if graph else by_segments)().numpy()
    want = tt_embedding_bag(cores, ids, splits, weights, "mean", backend=backend).numpy()
    if graph and backend == "reference":
        # Grappler and oneDNN may reorder the pure-TF pooling's sums inside a graph.
        tolerance.assert_reordered_close(got, want)
    else:
        # Eagerly, or on the op, segment ids become row splits and then run the very same
        # lookup: the results must be identical.
        np.testing.assert_array_equal(got, want)
    bags = [ids[splits[b]:splits[b + 1]].tolist() for b in range(8)]
    w_bags = [weights[splits[b]:splits[b + 1]] for b in range(8)]
    np.testing.assert_allclose(
        got, oracle.pooled_oracle(oracle.dense_table(cores), bags, w_bags, "mean"),
        rtol=1e-4, atol=1e-5)
    # Without num_bags the last named bag is the last one.
    default = tt_embedding_bag(cores, ids, combiner="sum", backend=backend,
                               segment_ids=segment_ids)
    assert default.shape == (6, shape.dim)


@pytest.mark.parametrize("graph", [False, True])
@pytest.mark.parametrize("segment_ids,num_bags,needle", [
    ([0, 2, 1, 3], None, "sorted"),
    ([-1, 0, 0, 1], None, "negative"),
    ([0, 0, 1, 4], 3, "num_bags"),
])
def test_bad_segment_ids_are_rejected(backend, graph, segment_ids, num_bags, needle):
    shape = SHAPES[3]
    cores = oracle.random_cores(shape, np.random.default_rng(0))

    def call():
        return tt_embedding_bag(cores, [1, 2, 3, 4], combiner="sum", backend=backend,
                                segment_ids=tf.constant(segment_ids), num_bags=num_bags)

    with pytest.raises(tf.errors.InvalidArgumentError, match=needle):
        (tf.function(call) if graph else call)()


def test_segment_id_argument_errors(backend):
    cores = oracle.random_cores(SHAPES[3], np.random.default_rng(0))
    with pytest.raises(ValueError, match="not both"):
        tt_embedding_bag(cores, [1, 2], [0, 2], combiner="sum", segment_ids=[0, 0],
                         backend=backend)
    with pytest.raises(ValueError, match=re.escape("segment_ids has shape [3] but indices has 2 "
                                                   "entries")):
        tt_embedding_bag(cores, [1, 2], combiner="sum", segment_ids=[0, 0, 1], backend=backend)
    with pytest.raises(TypeError, match="segment_ids must be integers"):
        tt_embedding_bag(cores, [1, 2], combiner="sum", segment_ids=[0.0, 1.0],
                         backend=backend)
    with pytest.raises(ValueError, match="num_bags goes with segment_ids"):
        tt_embedding_bag(cores, [1, 2], [0, 2], combiner="sum", num_bags=1, backend=backend)


@pytest.mark.parametrize("splits,needle", [
    ([1, 2, 4], "row_splits"),
    ([0, 3, 2, 4], "decrease"),
    ([0, 2, 3], "row_splits"),
])
def test_bad_row_splits_are_rejected(backend, splits, needle):
    with pytest.raises(tf.errors.InvalidArgumentError, match=needle):
        tt_embedding_bag(_cores(), [0, 1, 2, 3], splits, None, "sum", backend=backend)


def test_weights_of_the_wrong_length_are_rejected(backend):
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="weights"):
        tt_embedding_bag(_cores(), [0, 1, 2, 3], [0, 4], [1.0, 2.0], "sum", backend=backend)


def test_argument_errors(backend):
    cores = _cores()
    with pytest.raises(TypeError, match="ids must be integers.*float32"):
        tt_embedding_bag(cores, tf.constant([1.0, 2.0]), backend=backend)
    with pytest.raises(ValueError, match="combiner"):
        tt_embedding_bag(cores, [1, 2], [0, 2], None, "max", backend=backend)
    with pytest.raises(ValueError, match="row_splits"):
        tt_embedding_bag(cores, [1, 2], None, None, "sum", backend=backend)
    with pytest.raises(ValueError, match="weights need a combiner"):
        tt_embedding_bag(cores, [1, 2], None, [1.0, 1.0], "none", backend=backend)
    with pytest.raises(ValueError, match="cores hold 210 rows but num_rows is 500"):
        tt_embedding_bag(cores, [1, 2], num_rows=500, backend=backend)
    with pytest.raises(TypeError, match="weights must be floats"):
        tt_embedding_bag(cores, [1, 2], [0, 2], tf.constant([1, 2]), "sum", backend=backend)


def test_op_rejects_cores_whose_ranks_do_not_chain():
    from tt_keras.ops import tt_embedding_bag as op
    rng = np.random.default_rng(0)
    cores = [rng.normal(size=s).astype(np.float32) for s in [(5, 1, 2, 4), (6, 3, 2, 3),
                                                             (7, 3, 2, 1)]]
    with pytest.raises(tf.errors.InvalidArgumentError, match="input rank 3"):
        op(cores, tf.constant([1], tf.int64), tf.zeros([0], tf.int64), tf.zeros([0]), 10,
           "none")


def test_rejected_call_leaves_no_trace(backend):
    """A rejected call must not change the cores or later results."""
    cores = [tf.Variable(c) for c in _cores()]
    before = [c.numpy().copy() for c in cores]
    good = tt_embedding_bag(cores, [1, 2], [0, 2], None, "sum", backend=backend).numpy()
    with pytest.raises(tf.errors.InvalidArgumentError):
        tt_embedding_bag(cores, [1, 999], [0, 2], None, "sum", num_rows=200, backend=backend)
    after = tt_embedding_bag(cores, [1, 2], [0, 2], None, "sum", backend=backend).numpy()
    np.testing.assert_array_equal(good, after)
    for b, c in zip(before, cores):
        np.testing.assert_array_equal(b, c.numpy())


def _op_cores_types(fn):
    """Tcores of the TT ops in fn's graph, and the ops that read a variable densely."""
    graph = tf.function(fn).get_concrete_function().graph
    types = [op.get_attr("Tcores") for op in graph.get_operations()
             if op.type.startswith("TTKeras>")]
    reads = [op for op in graph.get_operations() if op.type == "ReadVariableOp"]
    return types, reads


def test_float32_variables_are_read_in_place_and_tensors_as_given():
    """Variables reach the op as resource handles (read in place: no ReadVariableOp, which
    copies a whole variable once an optimizer has updated it sparsely); tensors, float64
    variables and lookups under a strategy take float32 tensors."""
    rng = np.random.default_rng(3)
    shape = SHAPES[3]
    cores = oracle.random_cores(shape, rng)
    ids, splits = np.array([1, 5, 9], np.int64), np.array([0, 2, 3], np.int64)
    variables = [tf.Variable(c) for c in cores]

    def lookup(values):
        return lambda: tt_embedding_bag(values, ids, splits, None, "sum", None, "op")

    types, reads = _op_cores_types(lookup(variables))
    assert types == [tf.resource] and not reads
    assert _op_cores_types(lookup([tf.constant(c) for c in cores]))[0] == [tf.float32]
    types, reads = _op_cores_types(lookup([tf.Variable(c.astype(np.float64)) for c in cores]))
    assert types == [tf.float32] and reads
    with tf.distribute.OneDeviceStrategy("/cpu:0").scope():
        assert _op_cores_types(lookup(variables))[0] == [tf.float32]
    # Same rows and gradients either way.
    with tf.GradientTape() as tape:
        in_place = tt_embedding_bag(variables, ids, splits, None, "sum", None, "op")
        loss = tf.reduce_sum(in_place * in_place)
    grads = tape.gradient(loss, variables)
    tensors = [tf.constant(c) for c in cores]
    with tf.GradientTape() as tape:
        tape.watch(tensors)
        read = tt_embedding_bag(tensors, ids, splits, None, "sum", None, "op")
        loss = tf.reduce_sum(read * read)
    np.testing.assert_array_equal(in_place.numpy(), read.numpy())
    for a, b in zip(grads, tape.gradient(loss, tensors)):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_op_refuses_a_variable_that_is_not_float32():
    cores = oracle.random_cores(SHAPES[2], np.random.default_rng(0))
    handles = [tf.Variable(cores[0].astype(np.float64)).handle, tf.Variable(cores[1]).handle]
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"cores\[0\] must be a float32 "
                                                               r"variable, got double"):
        tt_ops_library.ops.tt_keras_tt_embedding_bag(
            cores=handles, indices=tf.constant([1], tf.int64), row_splits=tf.zeros([0], tf.int64),
            weights=tf.zeros([0]), num_rows=63, combiner="none")


def test_gradient_op_uses_or_rebuilds_the_forward_residuals():
    """The gradient from the forward's residuals equals the one rebuilt from scratch, and a
    corrupted residual is rejected rather than trusted."""
    from tt_keras.ops import tt_ops_library
    ops = tt_ops_library.ops
    rng = np.random.default_rng(6)
    cores = [tf.constant(c) for c in oracle.random_cores(SHAPES[3], rng)]
    ids = tf.constant(rng.integers(0, 200, size=60), tf.int64)
    splits = tf.constant(np.arange(0, 61, 6), tf.int64)
    weights = tf.zeros([0])
    out, plan, partials = ops.tt_keras_tt_embedding_bag(
        cores=cores, indices=ids, row_splits=splits, weights=weights, num_rows=200,
        combiner="sum")
    assert plan.shape[0] > 0 and partials.shape[0] > 0
    grad = tf.constant(rng.normal(size=out.shape).astype(np.float32))

    def grads(plan, partials):
        return [g.numpy() for g in ops.tt_keras_tt_embedding_bag_grad(
            grad=grad, cores=cores, indices=ids, row_splits=splits, weights=weights,
            residual_plan=plan, residual_partials=partials, num_rows=200, combiner="sum")]

    with_residuals = grads(plan, partials)
    rebuilt = grads(tf.zeros([0], tf.int64), tf.zeros([0]))
    for a, b in zip(with_residuals, rebuilt):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    bad_plan = tf.tensor_scatter_nd_update(plan, [[5]], [10**9])
    with pytest.raises(tf.errors.InvalidArgumentError, match="residual_plan"):
        grads(bad_plan, partials)
    with pytest.raises(tf.errors.InvalidArgumentError, match="residual_partials"):
        grads(plan, partials[1:])
