"""Fuzzing of the custom ops against the NumPy oracle, with a fixed seed.

Three families of random cases, each case drawn from its own generator (seed, family, case
number), so a failure is replayed alone with `-k "<family> and [<case>]"`:

- valid lookups: 2-4 cores with random row and column factors and ranks, a random num_rows,
  batches of 0 to 8 bags (so 0 ids too) with duplicate ids, int32 or int64 ids, every
  combiner, weights (zero-weight bags among them), and the cached lookup with a random cache.
  The forward and the gradients of the cores, the weights and the cache rows must match
  tt_keras.oracle.
- bad inputs, through the public lookup (its checks, then the op) and through the raw op
  (the C++ checks alone): ids negative or past num_rows, wrong dtypes, row_splits that do
  not add up, weights of the wrong length, cores whose ranks do not chain, too few or too
  many cores, bad caches, gradients of the wrong shape. Each must raise an error naming the
  argument, never crash.
- fuzzed gradient inputs: the gradient ops fed a mutated residual plan, a residual of the
  wrong size, or forged cache slots. Each must be refused with an error naming the residual
  or give the gradients of the intact residuals (a mutation that leaves a valid plan).

FUZZ_CASES (default 220, about a minute here) sets the number of cases per family, FUZZ_SEED
(default 0) the seed; `make -C custom_ops asan-fuzz` runs this file against the library built
with AddressSanitizer, with many more cases (docs/fuzzing.md).
"""

import os
import zlib

import numpy as np
import pytest
import tensorflow as tf

from tt_keras import oracle, tt_math
from tt_keras.lookup import tt_embedding_bag, tt_embedding_bag_cached
from tt_keras.ops import COMBINERS, tt_ops_library
from tt_keras.ops.loader import LIBRARY_ENV
from tt_keras.reference import EMPTY_ID

from tests import tolerance

pytestmark = pytest.mark.no_keras

FUZZ_CASES = int(os.environ.get("FUZZ_CASES", "220"))
FUZZ_SEED = int(os.environ.get("FUZZ_SEED", "0"))

# What a bad input may raise: a shape or value fault (ValueError from the Python checks,
# InvalidArgumentError from the op or a graph check) or a dtype fault (TypeError).
BAD_INPUT_ERRORS = (ValueError, TypeError, tf.errors.InvalidArgumentError)


@pytest.fixture(scope="module")
def ops():
    """The raw op module; the suite fuzzes the op, so a library that does not load fails it
    (with the loader's reason) instead of testing the pure-TF path."""
    override = os.environ.get(LIBRARY_ENV)
    if override:  # e.g. the ASan build: make sure it is the one under test
        assert tt_ops_library.path == os.path.abspath(override)
    return tt_ops_library.ops


def case_rng(family, case):
    """The generator of one case, independent of the others and of the order they run in."""
    return np.random.default_rng([FUZZ_SEED, zlib.crc32(family.encode()), case])


# --------------------------------------------------------------------------------------------
# Random valid problems
# --------------------------------------------------------------------------------------------


class Problem:
    """One random lookup: cores, num_rows, a batch and, maybe, a cache."""

    def __init__(self, rng, combiner=None, cached=None):
        k = int(rng.integers(2, 5))
        row_shape = rng.integers(1, 7, size=k)
        row_shape[rng.integers(k)] = max(2, row_shape[0])  # at least 2 rows
        col_shape = rng.integers(1, 4, size=k)
        ranks = [1] + rng.integers(1, 7, size=k - 1).tolist() + [1]
        self.shape = tt_math.TTShape(row_shape, col_shape, ranks)
        padded = self.shape.padded_rows
        self.num_rows = int(rng.integers(max(1, padded // 2), padded + 1))
        self.cores = oracle.random_cores(self.shape, rng)
        self.combiner = combiner or str(rng.choice(COMBINERS))
        num_bags = int(rng.choice([0, 1, 2, 3, 5, 8]))
        sizes = rng.integers(0, 6, size=num_bags)
        nnz = int(sizes.sum())
        if rng.random() < 0.5:  # few distinct ids: duplicates within and across bags
            pool = rng.integers(0, self.num_rows, size=int(rng.integers(1, 4)))
            ids = rng.choice(pool, size=nnz)
        else:
            ids = rng.integers(0, self.num_rows, size=nnz)
        self.ids = ids.astype(rng.choice([np.int32, np.int64]))
        self.row_splits = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        if self.combiner == "none":
            self.row_splits = None
        self.weights = None
        if self.combiner != "none" and rng.random() < 0.6:
            self.weights = rng.uniform(0.1, 2.0, size=nnz).astype(np.float32)
            for b in range(num_bags):  # a bag whose weights are all zero: a zero norm
                if rng.random() < 0.15:
                    self.weights[self.row_splits[b]:self.row_splits[b + 1]] = 0.0
        self.cache_ids = self.cache_rows = None
        if cached if cached is not None else rng.random() < 0.35:
            size = int(rng.integers(1, 9))
            rows = rng.choice(self.num_rows, size=min(size, self.num_rows), replace=False)
            if len(ids) and rng.random() < 0.7:  # make hits likely
                rows = np.union1d(rows, rng.choice(ids, size=min(2, len(ids))))
            empty = np.full(int(rng.integers(0, 3)), EMPTY_ID, np.int64)
            self.cache_ids = np.sort(np.concatenate([rows.astype(np.int64), empty]))
            self.cache_rows = rng.normal(size=(len(self.cache_ids), self.shape.dim)
                                         ).astype(np.float32)

    @property
    def cached(self):
        return self.cache_ids is not None

    def bags(self, values):
        if self.combiner == "none":
            return [[v] for v in np.asarray(values).tolist()]
        return oracle.split_bags(values, self.row_splits)

    def op_weights(self):
        return self.weights if self.weights is not None else np.zeros(0, np.float32)


def lookup_with_grads(p):
    """The public lookup on the op backend: rows, upstream, and the gradients of
    sum(upstream * rows) for the cores, the weights and the cache rows (dense)."""
    cores = [tf.Variable(c) for c in p.cores]
    weights = tf.Variable(p.weights) if p.weights is not None else None
    cache_rows = tf.Variable(p.cache_rows) if p.cached else None
    with tf.GradientTape() as tape:
        if p.cached:
            out = tt_embedding_bag_cached(cores, p.cache_ids, cache_rows, p.ids, p.row_splits,
                                          weights, p.combiner, p.num_rows, backend="op")
        else:
            out = tt_embedding_bag(cores, p.ids, p.row_splits, weights, p.combiner, p.num_rows,
                                   backend="op")
        upstream = tf.reshape(tf.linspace(-1.0, 1.0, tf.size(out)), tf.shape(out))
        loss = tf.reduce_sum(out * upstream)
    sources = {name: v for name, v in
               {"cores": cores, "weights": weights, "cache_rows": cache_rows}.items()
               if v is not None}
    grads = tape.gradient(loss, sources, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    dense = tf.nest.map_structure(lambda g: tf.convert_to_tensor(g).numpy(), grads)
    return out.numpy(), upstream.numpy(), dense


def _norms(p, w_bags):
    """Each bag's norm under the combiner (1 for "sum" and "none")."""
    if p.combiner in ("sum", "none"):
        return np.ones(len(p.bags(p.ids)))
    weights = w_bags if w_bags is not None else [np.ones(len(b)) for b in p.bags(p.ids)]
    if p.combiner == "mean":
        return np.array([np.sum(w, dtype=np.float64) for w in weights])
    return np.array([np.sqrt(np.sum(np.square(w, dtype=np.float64))) for w in weights])


def oracle_results(p, upstream, magnitudes=False):
    """The oracle's (rows, core grads, cache-row grads, weight grads); with `magnitudes`,
    the same sums over the terms' absolute values, which bound their float32 round-off
    (tolerance.assert_close_to_oracle)."""
    f = np.abs if magnitudes else (lambda x: x)
    cores = [f(c.astype(np.float64)) for c in p.cores]
    upstream = f(upstream.astype(np.float64))
    bags = p.bags(p.ids)
    w_bags = p.bags(p.weights) if p.weights is not None else None
    cache_grads = None
    if p.cached:
        table = oracle.cached_table(cores, p.num_rows, p.cache_ids, f(p.cache_rows))
        core_grads, cache_grads = oracle.cached_grads_oracle(
            cores, p.num_rows, p.cache_ids, bags, w_bags, p.combiner, upstream)
    else:
        table = oracle.dense_table(cores, p.num_rows)
        core_grads = oracle.core_grads_oracle(cores, bags, w_bags, p.combiner, upstream)
    rows = oracle.pooled_oracle(table, bags, w_bags, p.combiner)
    weight_grads = None
    if p.weights is not None and not magnitudes:
        weight_grads = oracle.pooled_grad_wrt_weights(table, bags, w_bags, p.combiner, upstream)
        weight_grads = np.concatenate(weight_grads) if len(weight_grads) else np.zeros(0)
    elif p.weights is not None:
        # d out_b / d w_i is (row_i - out_b) / norm_b, or with out_b * w_i / norm_b <= out_b
        # ("sqrtn"), dotted with upstream_b: terms up to (|row_i| + |out_b|) |upstream_b|.
        norms = _norms(p, w_bags)
        bag_of = np.repeat(np.arange(len(bags)), [len(b) for b in bags])
        terms = (table[p.ids] + rows[bag_of]) * upstream[bag_of]
        weight_grads = np.divide(terms.sum(axis=1), norms[bag_of],
                                 out=np.zeros(len(bag_of)), where=norms[bag_of] != 0)
    return rows, core_grads, cache_grads, weight_grads


@pytest.mark.parametrize("case", range(FUZZ_CASES))
def test_valid_lookup_matches_oracle(ops, case):
    p = Problem(case_rng("valid", case))
    out, upstream, grads = lookup_with_grads(p)
    want = oracle_results(p, upstream)
    magnitude = oracle_results(p, upstream, magnitudes=True)
    tolerance.assert_close_to_oracle(out, want[0], magnitude[0])
    for got, w, m in zip(grads["cores"], want[1], magnitude[1]):
        tolerance.assert_close_to_oracle(got, w, m)
    if p.cached:
        tolerance.assert_close_to_oracle(grads["cache_rows"], want[2], magnitude[2])
    if p.weights is not None:
        tolerance.assert_close_to_oracle(grads["weights"], want[3], magnitude[3])


# --------------------------------------------------------------------------------------------
# Bad inputs
# --------------------------------------------------------------------------------------------
# Each corruption takes a valid problem's arguments (a dict) and the generator, damages them,
# and returns the argument names that an error may cite: the public lookup's name first
# (`ids`), then the raw op's (`indices`).


def _some_position(args, rng):
    return int(rng.integers(len(args["ids"])))


def _negative_id(args, rng):
    if not len(args["ids"]):
        args["ids"] = np.zeros(1, np.int64)
        args["row_splits"] = None if args["row_splits"] is None else np.array([0, 1], np.int64)
        args["weights"] = None
    args["ids"] = args["ids"].astype(np.int64)
    args["ids"][_some_position(args, rng)] = -int(rng.choice([1, 2, 2**31, 2**62]))
    return ("ids", "indices")


def _id_out_of_range(args, rng):
    _negative_id(args, rng)
    args["ids"][_some_position(args, rng)] = args["num_rows"] + int(
        rng.choice([0, 1, 2**31, 2**62]))
    return ("ids", "indices")


def _float_ids(args, rng):
    args["ids"] = args["ids"].astype(np.float32)
    return ("ids", "indices")


def _splits_do_not_add_up(args, rng):
    if args["row_splits"] is None:
        args["combiner"] = "sum"
    nnz = len(args["ids"])
    splits = args["row_splits"] if args["row_splits"] is not None else np.array([0, nnz])
    splits = splits.astype(np.int64).copy()
    fault = rng.choice(["end", "start", "decrease"])
    if fault == "end" or len(splits) < 3:
        splits[-1] = nnz + int(rng.choice([-1, 1, 7, 2**40])) if nnz else 3
    elif fault == "start":
        splits[0] = int(rng.choice([-3, 1]))
    else:
        b = int(rng.integers(1, len(splits) - 1))
        splits[b] = splits[b - 1] - 1
    args["row_splits"] = splits
    return ("row_splits",)


def _splits_not_a_vector(args, rng):
    if args["row_splits"] is None:
        args["combiner"] = "sum"
        args["row_splits"] = np.array([0, len(args["ids"])], np.int64)
    args["row_splits"] = args["row_splits"].reshape(1, -1)
    return ("row_splits",)


def _weights_wrong_length(args, rng):
    if args["combiner"] == "none":
        args["combiner"] = "sum"
        args["row_splits"] = np.array([0, len(args["ids"])], np.int64)
    args["weights"] = np.ones(len(args["ids"]) + int(rng.choice([1, 3])), np.float32)
    return ("weights",)


def _weights_without_combiner(args, rng):
    _negative_id(args, rng)  # at least one id ...
    args["ids"] = np.abs(args["ids"]) % args["num_rows"]  # ... and a valid one
    args["combiner"] = "none"
    args["row_splits"] = None
    args["weights"] = np.ones(len(args["ids"]), np.float32)
    return ("weights",)


def _raw_input(args, name, core=0):
    """How TensorFlow's eager type check names an input of the raw op: by its position
    (`input #6(zero-based)`), not by its name."""
    cache_inputs = 2 if args["cache_ids"] is not None else 0
    position = {"cores": core, "weights": len(args["cores"]) + cache_inputs + 2}[name]
    return f"input #{position}(zero-based) was expected to be a float tensor"


def _integer_weights(args, rng):
    if args["combiner"] == "none":
        args["combiner"] = "sum"
        args["row_splits"] = np.array([0, len(args["ids"])], np.int64)
    args["weights"] = np.ones(len(args["ids"]), np.int32)
    return ("weights", _raw_input(args, "weights"))


def _ranks_do_not_chain(args, rng):
    t = int(rng.integers(1, len(args["cores"])))
    p, r_in, q, r_out = args["cores"][t].shape
    args["cores"][t] = np.ones((p, r_in + int(rng.integers(1, 3)), q, r_out), np.float32)
    return ("cores",)


def _core_not_rank_4(args, rng):
    t = int(rng.integers(len(args["cores"])))
    args["cores"][t] = args["cores"][t].reshape(args["cores"][t].shape[:2] + (-1,))
    return ("cores",)


def _wrong_core_count(args, rng):
    if rng.random() < 0.5:
        args["cores"] = [np.ones((3, 1, 2, 1), np.float32)]
    else:
        args["cores"] = [np.ones((2, 1, 1, 1), np.float32)] + [
            np.ones((2, 1, 1, 1), np.float32) for _ in range(4)]
    args["num_rows"] = 2
    args["ids"] = np.zeros(len(args["ids"]), np.int64)
    args["cache_ids"] = None
    return ("cores",)


def _outer_rank_not_1(args, rng):
    p, _, q, r_out = args["cores"][0].shape
    args["cores"][0] = np.ones((p, 2, q, r_out), np.float32)
    return ("cores",)


def _integer_cores(args, rng):
    t = int(rng.integers(len(args["cores"])))
    args["cores"][t] = args["cores"][t].astype(np.int32)
    return ("cores", _raw_input(args, "cores", t))


def _too_many_rows(args, rng):
    padded = int(np.prod([c.shape[0] for c in args["cores"]]))
    args["num_rows"] = padded + int(rng.choice([1, 2**40]))
    return ("num_rows",)


def _cache_ids_repeat(args, rng):
    if args["cache_ids"] is None:
        args["cache_ids"] = np.zeros(2, np.int64)
    else:
        args["cache_ids"] = np.concatenate([args["cache_ids"][:1], args["cache_ids"]])
    args["cache_rows"] = np.zeros((len(args["cache_ids"]), args["dim"]), np.float32)
    args["cache_ids"][rng.integers(len(args["cache_ids"]))] = int(rng.choice([0, -1, -2**40]))
    args["cache_ids"] = np.sort(args["cache_ids"])
    args["cache_ids"][:2] = args["cache_ids"][0]  # a repeat whatever was drawn
    return ("cache_ids",)


def _cache_ids_unsorted(args, rng):
    args["cache_ids"] = np.array([1, 0], np.int64) % args["num_rows"]
    if args["num_rows"] < 2:
        args["cache_ids"] = np.array([0, 0], np.int64)
    args["cache_rows"] = np.zeros((2, args["dim"]), np.float32)
    return ("cache_ids",)


def _cache_rows_wrong_shape(args, rng):
    if args["cache_ids"] is None:
        args["cache_ids"] = np.zeros(1, np.int64)
    n = len(args["cache_ids"])
    args["cache_rows"] = np.zeros(
        (n + 1, args["dim"]) if rng.random() < 0.5 else (n, args["dim"] + 1), np.float32)
    return ("cache_rows",)


CORRUPTIONS = {
    "negative_id": _negative_id,
    "id_out_of_range": _id_out_of_range,
    "float_ids": _float_ids,
    "splits_do_not_add_up": _splits_do_not_add_up,
    "splits_not_a_vector": _splits_not_a_vector,
    "weights_wrong_length": _weights_wrong_length,
    "weights_without_combiner": _weights_without_combiner,
    "integer_weights": _integer_weights,
    "ranks_do_not_chain": _ranks_do_not_chain,
    "core_not_rank_4": _core_not_rank_4,
    "wrong_core_count": _wrong_core_count,
    "outer_rank_not_1": _outer_rank_not_1,
    "integer_cores": _integer_cores,
    "too_many_rows": _too_many_rows,
}
CACHE_CORRUPTIONS = {
    "cache_ids_repeat": _cache_ids_repeat,
    "cache_ids_unsorted": _cache_ids_unsorted,
    "cache_rows_wrong_shape": _cache_rows_wrong_shape,
}


def _args(p):
    return {"cores": list(p.cores), "ids": p.ids.copy(), "row_splits": p.row_splits,
            "weights": p.weights, "combiner": p.combiner, "num_rows": p.num_rows,
            "cache_ids": p.cache_ids, "cache_rows": p.cache_rows,
            "dim": p.shape.dim}


def _public_call(a):
    if a["cache_ids"] is not None:
        return tt_embedding_bag_cached(a["cores"], a["cache_ids"], a["cache_rows"], a["ids"],
                                       a["row_splits"], a["weights"], a["combiner"],
                                       a["num_rows"], backend="op")
    return tt_embedding_bag(a["cores"], a["ids"], a["row_splits"], a["weights"], a["combiner"],
                            a["num_rows"], backend="op")


def _raw_call(ops, a):
    """The op itself, past every Python check: its own checks must hold. Arguments go in as
    tensors of their own dtype (a NumPy array would be converted to the dtype the op wants)."""
    splits = a["row_splits"] if a["row_splits"] is not None else np.zeros(1, np.int64)
    weights = a["weights"] if a["weights"] is not None else np.zeros(0, np.float32)
    common = {"cores": [tf.constant(c) for c in a["cores"]], "indices": tf.constant(a["ids"]),
              "row_splits": tf.constant(splits), "weights": tf.constant(weights),
              "num_rows": a["num_rows"], "combiner": a["combiner"]}
    if a["cache_ids"] is not None:
        return ops.tt_keras_tt_embedding_bag_cached(cache_ids=tf.constant(a["cache_ids"]),
                                                    cache_rows=tf.constant(a["cache_rows"]),
                                                    **common)
    return ops.tt_keras_tt_embedding_bag(**common)


def assert_refused(call, names, what):
    try:
        call()
    except BAD_INPUT_ERRORS as e:
        message = str(e)
    else:
        pytest.fail(f"{what}: accepted")
    assert any(name in message for name in names), (
        f"{what}: the error does not name {' or '.join(names)}: {message}")


@pytest.mark.parametrize("case", range(FUZZ_CASES))
def test_bad_input_is_refused_by_name(ops, case):
    rng = case_rng("bad", case)
    cached = rng.random() < 0.3
    p = Problem(rng, cached=cached)
    corruptions = dict(CORRUPTIONS, **(CACHE_CORRUPTIONS if cached else {}))
    name = str(rng.choice(sorted(corruptions)))
    args = _args(p)
    names = corruptions[name](args, rng)
    assert_refused(lambda: _public_call(args), names, f"{name} (public lookup)")
    assert_refused(lambda: _raw_call(ops, args), names, f"{name} (raw op)")


# --------------------------------------------------------------------------------------------
# Fuzzed gradient inputs
# --------------------------------------------------------------------------------------------


def _forward(ops, p):
    """The raw forward op: (output, residuals by name)."""
    weights = p.op_weights()
    splits = p.row_splits if p.row_splits is not None else np.zeros(1, np.int64)
    common = dict(cores=p.cores, indices=p.ids, row_splits=splits, weights=weights,
                  num_rows=p.num_rows, combiner=p.combiner)
    if p.cached:
        out = ops.tt_keras_tt_embedding_bag_cached(cache_ids=p.cache_ids,
                                                   cache_rows=p.cache_rows, **common)
        return out.output, {"residual_slots": out.residual_slots,
                            "residual_plan": out.residual_plan,
                            "residual_partials": out.residual_partials}
    out = ops.tt_keras_tt_embedding_bag(**common)
    return out[0], {"residual_plan": out[1], "residual_partials": out[2]}


def _backward(ops, p, grad, residuals):
    """The raw gradient op: the cores' gradients (and the cache's slots and values)."""
    splits = p.row_splits if p.row_splits is not None else np.zeros(1, np.int64)
    common = dict(grad=grad, cores=p.cores, indices=p.ids, row_splits=splits,
                  weights=p.op_weights(), num_rows=p.num_rows, combiner=p.combiner,
                  **residuals)
    if p.cached:
        out = ops.tt_keras_tt_embedding_bag_cached_grad(cache_ids=p.cache_ids, **common)
        return [g.numpy() for g in out.core_grads] + [out.cache_grad_slots.numpy(),
                                                      out.cache_grad_values.numpy()]
    return [g.numpy() for g in ops.tt_keras_tt_embedding_bag_grad(**common)]


def _mutate(rng, residuals, grad):
    """A damaged copy of the residuals (or of grad), and the names its refusal may cite."""
    residuals = {k: v.numpy() for k, v in residuals.items()}
    plan = residuals["residual_plan"]
    kinds = ["plan_value", "plan_length", "partials_length", "grad_shape", "plan_empty"]
    if "residual_slots" in residuals:
        kinds.append("slots")
    kind = str(rng.choice(kinds))
    if kind == "plan_value" and len(plan):
        plan = plan.copy()
        for _ in range(int(rng.integers(1, 4))):
            i = int(rng.integers(len(plan)))
            plan[i] = rng.choice([plan[i] + 1, plan[i] - 1, -1, 0, 2**31, -2**62, 2**62,
                                  rng.integers(-100, 100)])
        residuals["residual_plan"] = plan
        return residuals, grad, ("residual_plan", "residual_partials"), kind
    if kind == "plan_length" and len(plan):
        residuals["residual_plan"] = (plan[:int(rng.integers(1, len(plan)))] if rng.random() < 0.5
                                      else np.concatenate([plan, rng.integers(0, 9, 3)]))
        return residuals, grad, ("residual_plan", "residual_partials"), kind
    if kind == "partials_length" and len(plan):
        partials = residuals["residual_partials"]
        residuals["residual_partials"] = (partials[:-1] if len(partials) and rng.random() < 0.5
                                          else np.concatenate([partials, [1.0]]))
        residuals["residual_partials"] = residuals["residual_partials"].astype(np.float32)
        return residuals, grad, ("residual_partials",), kind
    if kind == "slots" and len(residuals["residual_slots"]):
        slots = residuals["residual_slots"].copy()
        i = int(rng.integers(len(slots)))
        slots[i] = rng.choice([slots[i] + 1, -2, 2**31 - 1, 0])
        residuals["residual_slots"] = slots
        return residuals, grad, ("residual_slots",), kind
    if kind == "grad_shape":
        shape = list(grad.shape)
        shape[int(rng.integers(2))] += 1
        return residuals, np.ones(shape, np.float32), ("grad",), kind
    # An empty plan means "rebuild it from the ids": the gradients must not change.
    residuals["residual_plan"] = np.zeros(0, np.int64)
    residuals["residual_partials"] = np.zeros(0, np.float32)
    return residuals, grad, (), kind


@pytest.mark.parametrize("case", range(FUZZ_CASES))
def test_fuzzed_gradient_residuals_are_refused_or_harmless(ops, case):
    rng = case_rng("grad", case)
    p = Problem(rng)
    out, residuals = _forward(ops, p)
    grad = rng.normal(size=out.shape).astype(np.float32)
    intact = _backward(ops, p, grad, residuals)
    damaged, damaged_grad, names, kind = _mutate(rng, residuals, grad)
    try:
        got = _backward(ops, p, damaged_grad, damaged)
    except tf.errors.InvalidArgumentError as e:
        assert names, f"intact inputs refused: {e}"
        assert any(name in str(e) for name in names), (
            f"the error does not name {' or '.join(names)}: {e}")
        return
    # Accepted: then the damage was not damage (an empty plan, which is rebuilt), and the
    # gradients are those of the intact residuals.
    assert damaged_grad is grad, "a gradient of the wrong shape was accepted"
    assert [g.shape for g in got] == [g.shape for g in intact]
    same = all(np.allclose(g, want, rtol=tolerance.RTOL, atol=tolerance.ATOL)
               for g, want in zip(got, intact))
    if not same and kind == "plan_value":
        # Known gap, kept visible as an xfail: DeserializePlan checks every size and index
        # of a residual plan against the cores and ids (so a forged one cannot make the
        # kernels read or write out of bounds: what ASan checks here), but not that an
        # in-range plan describes these ids; such a plan gives wrong gradients silently.
        pytest.xfail("a forged in-range residual_plan was accepted with wrong gradients")
    assert same, f"damaged by {kind}: accepted, with other gradients"
