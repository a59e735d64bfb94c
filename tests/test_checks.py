"""tt_keras/checks.py: every bad argument of a lookup is refused with one message, the op's,
whether the lookup runs eagerly or in a graph, on the op or on the pure-TF path."""

import numpy as np
import pytest
import tensorflow as tf

from tt_keras import oracle, tt_math
from tt_keras.cache import EMPTY_ID
from tt_keras.lookup import tt_embedding_bag, tt_embedding_bag_cached
from tt_keras.ops import tt_embedding_bag as op_embedding_bag
from tt_keras.ops import tt_embedding_bag_cached as op_embedding_bag_cached

SHAPE = tt_math.TTShape((5, 6, 7), (2, 2, 2), (1, 4, 3, 1))  # 210 rows of 8
ERRORS = (ValueError, TypeError, tf.errors.InvalidArgumentError)


def cores_of(*shapes):
    rng = np.random.default_rng(0)
    return [rng.normal(size=s).astype(np.float32) for s in shapes]


CORES = cores_of(*SHAPE.core_shapes)
IDS = np.array([1, 2, 3, 4], np.int64)
SPLITS = np.array([0, 2, 4], np.int64)
CACHE_IDS = np.array([3, 7, EMPTY_ID], np.int64)
CACHE_ROWS = np.zeros((3, 8), np.float32)


def plain(cores=CORES, ids=IDS, row_splits=SPLITS, weights=None, combiner="sum", num_rows=200):
    """A lookup whose tensor arguments are inputs of the (possibly traced) call: in a graph
    their shapes are unknown, so that checks of values and of run-time shapes run there."""
    tensors = {"ids": ids, "row_splits": row_splits, "weights": weights}
    tensors = {k: v for k, v in tensors.items() if v is not None}

    def call(backend, **t):
        return tt_embedding_bag(cores, t["ids"], t.get("row_splits"), t.get("weights"),
                                combiner, num_rows, backend)
    return call, tensors


def cached(cache_ids=CACHE_IDS, cache_rows=CACHE_ROWS, ids=IDS, row_splits=SPLITS,
           num_rows=200):
    tensors = {"cache_ids": cache_ids, "cache_rows": cache_rows, "ids": ids,
               "row_splits": row_splits}

    def call(backend, **t):
        return tt_embedding_bag_cached(CORES, t["cache_ids"], t["cache_rows"], t["ids"],
                                       t["row_splits"], None, "sum", num_rows, backend)
    return call, tensors


def by_segments(segment_ids, num_bags=None):
    def call(backend, **t):
        return tt_embedding_bag(CORES, t["ids"], combiner="sum", backend=backend,
                                segment_ids=t["segment_ids"], num_bags=num_bags)
    return call, {"ids": IDS, "segment_ids": np.asarray(segment_ids, np.int64)}


NO_WEIGHTS = np.zeros([0], np.float32)


def raw_op(cores=CORES, ids=IDS, row_splits=SPLITS, weights=NO_WEIGHTS,
           num_rows=200, combiner="sum"):
    return lambda: op_embedding_bag(cores, ids, row_splits, weights, num_rows, combiner)


def raw_cached_op(cache_ids=CACHE_IDS, cache_rows=CACHE_ROWS):
    return lambda: op_embedding_bag_cached(CORES, cache_ids, cache_rows, IDS, SPLITS,
                                           np.zeros([0], np.float32), 200, "sum")


# (lookup, the message, the custom op called directly with the same fault or None when the
# fault never reaches it: a Python argument, or one its shape function refuses first).
CASES = {
    "one_core": (plain(cores=cores_of((210, 1, 8, 1))),
                 "cores: expected 2 to 4 cores, got 1", None),
    "five_cores": (plain(cores=cores_of(*[(2, 1, 2, 1)] * 5)),
                   "cores: expected 2 to 4 cores, got 5",
                   raw_op(cores=cores_of(*[(2, 1, 2, 1)] * 5), num_rows=32)),
    "rank_chain": (plain(cores=cores_of((5, 1, 2, 4), (6, 3, 2, 3), (7, 3, 2, 1))),
                   "cores[1] has input rank 3 but cores[0] has output rank 4",
                   raw_op(cores=cores_of((5, 1, 2, 4), (6, 3, 2, 3), (7, 3, 2, 1)))),
    "end_ranks": (plain(cores=cores_of((5, 2, 2, 4), (6, 4, 2, 3), (7, 3, 2, 1))),
                  "cores: the first and last TT ranks must be 1 (shapes [5,2,2,4] ... "
                  "[7,3,2,1])", raw_op(cores=cores_of((5, 2, 2, 4), (6, 4, 2, 3),
                                                      (7, 3, 2, 1)))),
    "core_rank": (plain(cores=cores_of((5, 1, 2), (6, 1, 4, 1))),
                  "cores[0] must have rank 4 (p, r_in, q, r_out), got shape [5,1,2]", None),
    # Cast to float32 before the check, integer cores would be a table of whole numbers.
    "core_dtype": (plain(cores=[CORES[0], CORES[1].astype(np.int32), CORES[2]]),
                   "cores[1] must be floats, got dtype int32", None),
    "num_rows_too_big": (plain(num_rows=500), "cores hold 210 rows but num_rows is 500",
                         raw_op(num_rows=500)),
    "num_rows_fraction": (plain(num_rows=50.5), "num_rows must be an integer >= 1, got 50.5",
                          None),
    "id_out_of_range": (plain(ids=np.array([0, 3, 200, 5])),
                        "indices[2] = 200 is out of range [0, 200)",
                        raw_op(ids=np.array([0, 3, 200, 5]))),
    "id_negative": (plain(ids=np.array([0, -7, 2, 5])),
                    "indices[1] = -7 is out of range [0, 200)",
                    raw_op(ids=np.array([0, -7, 2, 5]))),
    "splits_start": (plain(row_splits=np.array([1, 2, 4])), "row_splits[0] = 1 must be 0",
                     raw_op(row_splits=np.array([1, 2, 4]))),
    "splits_decrease": (plain(row_splits=np.array([0, 3, 2, 4])),
                        "row_splits must not decrease: row_splits[2] = 2 < row_splits[1] = 3",
                        raw_op(row_splits=np.array([0, 3, 2, 4]))),
    "splits_end": (plain(row_splits=np.array([0, 2, 3])),
                   "row_splits[-1] = 3 must equal the number of indices, 4",
                   raw_op(row_splits=np.array([0, 2, 3]))),
    "splits_empty": (plain(row_splits=np.zeros([0], np.int64)),
                     "row_splits must hold at least one entry (0)",
                     raw_op(row_splits=np.zeros([0], np.int64))),
    "weights_length": (plain(weights=np.ones([3], np.float32)),
                       "weights has shape [3] but indices has 4 entries",
                       raw_op(weights=np.ones([3], np.float32))),
    "weights_shape": (plain(weights=np.ones([2, 2], np.float32)),
                      "weights has shape [2,2] but indices has 4 entries", None),
    "weights_without_combiner": (plain(weights=np.ones([4], np.float32), combiner="none"),
                                 "weights need a combiner (sum, mean or sqrtn); combiner is "
                                 "none", raw_op(weights=np.ones([4], np.float32),
                                                row_splits=np.zeros([0], np.int64),
                                                combiner="none")),
    "cache_negative": (cached(cache_ids=np.array([-4, 3, EMPTY_ID])),
                       "cache_ids[0] = -4 is negative (empty slots hold ids >= num_rows, "
                       "e.g. INT64_MAX)", raw_cached_op(np.array([-4, 3, EMPTY_ID]))),
    "cache_unsorted": (cached(cache_ids=np.array([5, 3, EMPTY_ID])),
                       "cache_ids must be sorted: cache_ids[1] = 3 < cache_ids[0] = 5",
                       raw_cached_op(np.array([5, 3, EMPTY_ID]))),
    "cache_twice": (cached(cache_ids=np.array([3, 3, EMPTY_ID])),
                    "cache_ids[0] and cache_ids[1] both hold row 3",
                    raw_cached_op(np.array([3, 3, EMPTY_ID]))),
    # The first faulty slot is named, whatever comes after it (as the op scans them).
    "cache_first_fault": (cached(cache_ids=np.array([5, 3, -1])),
                          "cache_ids must be sorted: cache_ids[1] = 3 < cache_ids[0] = 5",
                          raw_cached_op(np.array([5, 3, -1]))),
    "cache_rows_shape": (cached(cache_rows=np.zeros((3, 7), np.float32)),
                         "cache_rows has shape [3,7] but cache_ids has 3 slots and the cores "
                         "give rows of 8 columns: expected [3,8]",
                         raw_cached_op(cache_rows=np.zeros((3, 7), np.float32))),
    "segment_negative": (by_segments([-1, 0, 0, 1]), "segment_ids[0] = -1 is negative", None),
    "segment_unsorted": (by_segments([0, 2, 1, 3]),
                         "segment_ids must be sorted: segment_ids[2] = 1 < segment_ids[1] = 2",
                         None),
    "segment_too_big": (by_segments([0, 0, 1, 4], num_bags=3),
                        "segment_ids[3] = 4 is not below num_bags = 3", None),
    "segment_length": (by_segments([0, 0, 1]),
                       "segment_ids has shape [3] but indices has 4 entries", None),
}


def failure(call, tensors, backend, graph):
    """The error of the lookup, called eagerly or as a graph over inputs of unknown shape."""
    inputs = {k: tf.constant(v) for k, v in tensors.items()}
    if graph:
        traced = tf.function(lambda **t: call(backend, **t))
        specs = {k: tf.TensorSpec([None] * v.shape.rank, v.dtype) for k, v in inputs.items()}
    with pytest.raises(ERRORS) as err:
        if graph:
            traced.get_concrete_function(**specs)(**inputs)
        else:
            call(backend, **inputs)
    return err.value


@pytest.mark.parametrize("graph", [False, True])
@pytest.mark.parametrize("name", sorted(CASES))
def test_each_fault_has_one_message(backend, graph, name):
    (call, tensors), text, _ = CASES[name]
    error = failure(call, tensors, backend, graph)
    message = error.message if isinstance(error, tf.errors.OpError) else str(error)
    assert text in message, message


@pytest.mark.parametrize("name", sorted(n for n, case in CASES.items() if case[2]))
def test_the_messages_are_the_ops_own(name):
    """The op, called directly, refuses the same fault with the same words."""
    _, text, op_call = CASES[name]
    with pytest.raises(tf.errors.InvalidArgumentError) as err:
        op_call()
    assert text in err.value.message


def test_static_faults_are_raised_while_tracing_and_shapes_known_late_when_run():
    """A shape the trace already knows is refused at once, as a ValueError; the same fault in
    a graph of unknown shapes as the graph runs, as an InvalidArgumentError."""
    fn = tf.function(lambda ids, w: tt_embedding_bag(CORES, ids, SPLITS, w, "sum",
                                                     backend="reference"))
    with pytest.raises(ValueError, match=r"weights has shape \[3\] but indices has 4"):
        fn(tf.constant(IDS), tf.ones([3]))
    concrete = fn.get_concrete_function(tf.TensorSpec([None], tf.int64),
                                        tf.TensorSpec([None], tf.float32))
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=r"weights has shape \[3\] but indices has 4"):
        concrete(tf.constant(IDS), tf.ones([3]))


def test_checks_pass_what_the_op_accepts(backend):
    """The checks refuse nothing valid: boundary ids, empty bags, an all-empty cache, int32
    ids, and lookups of unknown shapes in a graph, all equal to the oracle."""
    ids = np.array([0, 199, 199, 0], np.int32)
    splits = np.array([0, 0, 3, 3, 4])
    table = oracle.dense_table(CORES, 200)
    want = oracle.pooled_oracle(table, [[], [0, 199, 199], [], [0]], None, "sum")
    fn = tf.function(lambda i, s: tt_embedding_bag_cached(
        CORES, tf.fill([2], tf.constant(EMPTY_ID, tf.int64)), tf.zeros([2, 8]), i, s, None,
        "sum", 200, backend))
    concrete = fn.get_concrete_function(tf.TensorSpec([None], tf.int32),
                                        tf.TensorSpec([None], tf.int64))
    np.testing.assert_allclose(concrete(tf.constant(ids), tf.constant(splits)).numpy(), want,
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(tt_embedding_bag(CORES, ids, splits, None, "sum", 200,
                                                backend).numpy(), want, rtol=1e-4, atol=1e-5)
