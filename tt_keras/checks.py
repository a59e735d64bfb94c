"""Checks of the TT lookups' arguments: one function per argument, one message per fault.

The messages are the custom ops' (custom_ops/cc/kernels/tt_validation.h and the cached
kernels'), so a bad argument reads the same whichever backend runs: the op, or the pure-TF
path, which checks everything the op checks. What a static shape decides is raised while the
call is traced (ValueError; TypeError for a dtype); eagerly every shape is static. What
depends on values is checked with TF ops through `require`: at once when executing eagerly,
when the graph runs otherwise (tf.debugging.Assert, whose message carries the same text);
either way as tf.errors.InvalidArgumentError.

The messages are built with string ops, which XLA cannot compile (and XLA drops Assert ops,
so it would not check at all): TTEmbedding never asks Keras for XLA.
"""

import numbers

import tensorflow as tf

from tt_keras import tt_math

__all__ = [
    "batch_tensors",
    "batch_values",
    "cache_tensors",
    "core_tensors",
    "ids_in_range",
    "ids_tensor",
    "num_rows_value",
    "require",
    "row_splits_tensor",
    "same_entries",
    "shape_text",
    "tensor_shape_text",
    "valid_cache_ids",
    "valid_row_splits",
    "valid_segment_ids",
    "weights_tensor",
]


# --------------------------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------------------------


def shape_text(shape) -> str:
    """A static shape as the ops print one (TensorShape::DebugString): [5,1,2,4], with ?
    for an unknown dimension."""
    shape = tf.TensorShape(shape)
    if shape.rank is None:
        return "<unknown>"
    return "[" + ",".join("?" if d is None else str(d) for d in shape.as_list()) + "]"


def tensor_shape_text(tensor):
    """The run-time shape of `tensor` as a string tensor, written as shape_text writes it."""
    dims = tf.strings.as_string(tf.shape(tensor, out_type=tf.int64))
    return tf.strings.join(["[", tf.strings.reduce_join(dims, separator=","), "]"])


def _join(pieces):
    """One string tensor from Python strings, string tensors and integer tensors."""
    out = []
    for piece in pieces:
        if not isinstance(piece, str):
            piece = tf.convert_to_tensor(piece)
            if piece.dtype != tf.string:
                piece = tf.strings.as_string(piece)
        out.append(piece)
    return tf.strings.join(out)


def require(value, ok, message):
    """`value`, once the boolean scalar tensor `ok` holds; else InvalidArgumentError.

    message: a function returning the pieces of the error's text (Python strings and string
    or integer tensors). Eagerly the error is raised here and `message` is only called when
    `ok` is false; in a graph the returned value depends on an Assert carrying that text.
    """
    if tf.executing_eagerly():
        if not bool(ok):
            raise tf.errors.InvalidArgumentError(
                None, None, _join(message()).numpy().decode("utf-8"))
        return value
    check = tf.debugging.Assert(ok, [_join(message())], summarize=1)
    with tf.control_dependencies([check]):
        return tf.identity(value)


def _first(mask):
    """Position of the first true entry of a boolean vector (its length when none): what a
    message names, deterministic on every device (argmax's ties are not)."""
    size = tf.size(mask, out_type=tf.int64)
    return tf.reduce_min(tf.concat([tf.where(mask, tf.range(size), size), size[None]], 0))


def _at(vector, position):
    """vector[position] for a message: 0 past the end, so that a check that passes (and in a
    graph still builds its message) never reads out of bounds, e.g. on an empty batch."""
    padded = tf.concat([vector, tf.zeros([1], vector.dtype)], 0)
    position = tf.cast(position, tf.int64)
    return tf.gather(padded, tf.clip_by_value(position, 0, tf.size(vector, out_type=tf.int64)))


# --------------------------------------------------------------------------------------------
# The table: cores and num_rows
# --------------------------------------------------------------------------------------------


def is_variable(value):
    """True for a tf.Variable or a Keras 3 variable, except tf_keras' mixed-precision
    AutoCastVariable, whose reads are cast (it is read, as a tensor, instead)."""
    if "AutoCast" in type(value).__name__:
        return False
    return isinstance(value, tf.Variable) or getattr(value, "_should_act_as_resource_variable",
                                                     False)


def core_tensors(cores):
    """The cores as tensors, checked as the ops check them: 2 to 4 of them, each of static
    rank-4 shape (p, r_in, q, r_out), ranks that chain and are 1 at both ends, no empty
    dimension, at most 2^62 rows in all. Returns (cores, padded rows, dim)."""
    # Variables are kept (their static shape and dtype are checked without reading them):
    # the ops can read them in place (tt_keras.lookup).
    cores = [c if is_variable(c) else tf.convert_to_tensor(c) for c in cores]
    k = len(cores)
    if not tt_math.MIN_CORES <= k <= tt_math.MAX_CORES:
        raise ValueError(f"cores: expected 2 to 4 cores, got {k}")
    shapes = []
    for t, core in enumerate(cores):
        dtype, core_shape = tf.as_dtype(core.dtype), tf.TensorShape(core.shape)
        if not dtype.is_floating:
            # tf.cast below would turn integer cores into a table silently.
            raise TypeError(f"cores[{t}] must be floats, got dtype {dtype.name}")
        if core_shape.rank != 4:
            raise ValueError(f"cores[{t}] must have rank 4 (p, r_in, q, r_out), got shape "
                             f"{shape_text(core_shape)}")
        if not core_shape.is_fully_defined():
            raise ValueError(f"cores[{t}] must have a static shape (p, r_in, q, r_out), got "
                             f"shape {shape_text(core_shape)}")
        shape = tuple(core_shape.as_list())
        if t and shape[1] != shapes[-1][3]:
            raise ValueError(f"cores[{t}] has input rank {shape[1]} but cores[{t - 1}] has "
                             f"output rank {shapes[-1][3]}")
        shapes.append(shape)
    span = f" (shapes {shape_text(shapes[0])} ... {shape_text(shapes[-1])})"
    if shapes[0][1] != 1 or shapes[-1][3] != 1:
        raise ValueError("cores: the first and last TT ranks must be 1" + span)
    padded_rows, dim = 1, 1
    for t, (p, _, q, r_out) in enumerate(shapes):
        if p < 1 or q < 1 or r_out < 1:
            raise ValueError(f"cores: core {t} has an empty dimension" + span)
        if padded_rows > tt_math.MAX_ROWS // p:
            raise ValueError("cores: row factors overflow int64" + span)
        padded_rows *= p
        dim *= q
    return cores, padded_rows, dim


def num_rows_value(num_rows, padded_rows):
    """num_rows as an int in [1, padded_rows] (default: padded_rows). The op's attr would
    truncate 50.5 to 50; here it is refused."""
    if num_rows is None:
        return padded_rows
    if isinstance(num_rows, bool) or not isinstance(num_rows, numbers.Integral) or \
            num_rows < 1:
        raise ValueError(f"num_rows must be an integer >= 1, got {num_rows!r}")
    num_rows = int(num_rows)
    if padded_rows < num_rows:
        raise ValueError(f"cores hold {padded_rows} rows but num_rows is {num_rows}")
    return num_rows


# --------------------------------------------------------------------------------------------
# The batch: ids, bags, weights
# --------------------------------------------------------------------------------------------


def ids_tensor(ids):
    """ids as an int32 or int64 vector."""
    ids = tf.convert_to_tensor(ids)
    if not ids.dtype.is_integer:
        raise TypeError(f"ids must be integers, got ids of dtype {ids.dtype.name}")
    if ids.dtype not in (tf.int32, tf.int64):
        ids = tf.cast(ids, tf.int64)
    if ids.shape.rank != 1:
        raise ValueError(f"indices must be a vector, got shape {shape_text(ids.shape)}")
    return ids


def ids_in_range(ids, num_rows):
    """ids, checked to lie in [0, num_rows); the first one outside is named."""
    wide = tf.cast(ids, tf.int64)
    bad = tf.logical_or(wide < 0, wide >= num_rows)
    first = _first(bad)
    return require(ids, tf.logical_not(tf.reduce_any(bad)), lambda: (
        "indices[", first, "] = ", _at(wide, first), f" is out of range [0, {num_rows})"))


def _int64_vector(values, name):
    """values as an int64 vector: integers of a static rank 1, else an error naming `name`."""
    values = tf.convert_to_tensor(values)
    if not values.dtype.is_integer:
        raise TypeError(f"{name} must be integers, got dtype {values.dtype.name}")
    if values.shape.rank != 1:
        raise ValueError(f"{name} must be a vector, got shape {shape_text(values.shape)}")
    return tf.cast(values, tf.int64)


def row_splits_tensor(row_splits, combiner):
    """The bag boundaries as an int64 vector (empty for combiner "none", which has none)."""
    if combiner == "none":
        return tf.zeros([0], tf.int64)
    if row_splits is None:
        raise ValueError(f"combiner={combiner!r} needs row_splits (bag boundaries)")
    return _int64_vector(row_splits, "row_splits")


def valid_row_splits(row_splits, num_ids):
    """row_splits, checked to hold an entry, start at 0, never decrease and end at num_ids
    (an int64 scalar tensor), in that order."""
    size = tf.size(row_splits, out_type=tf.int64)
    row_splits = require(row_splits, size >= 1,
                         lambda: ("row_splits must hold at least one entry (0)",))
    start = _at(row_splits, 0)
    row_splits = require(row_splits, tf.equal(start, 0),
                         lambda: ("row_splits[0] = ", start, " must be 0"))
    drops = row_splits[1:] < row_splits[:-1]
    b = _first(drops)
    row_splits = require(row_splits, tf.logical_not(tf.reduce_any(drops)), lambda: (
        "row_splits must not decrease: row_splits[", b + 1, "] = ", _at(row_splits, b + 1),
        " < row_splits[", b, "] = ", _at(row_splits, b)))
    end = _at(row_splits, size - 1)
    return require(row_splits, tf.equal(end, num_ids), lambda: (
        "row_splits[-1] = ", end, " must equal the number of indices, ", num_ids))


def batch_tensors(ids, row_splits, weights, combiner):
    """ids, int64 row_splits and float32 weights (or None), checked as far as their shapes
    go: what both backends check before a lookup."""
    ids = ids_tensor(ids)
    return ids, row_splits_tensor(row_splits, combiner), weights_tensor(weights, ids, combiner)


def batch_values(ids, row_splits, combiner, num_rows, check_splits=True):
    """ids and row_splits (from batch_tensors) with the checks of their values that the ops
    make themselves: ids in range, then the splits unless check_splits is False."""
    ids = ids_in_range(ids, num_rows)
    if combiner != "none" and check_splits:
        row_splits = valid_row_splits(row_splits, tf.size(ids, out_type=tf.int64))
    return ids, row_splits


def _one_entry_per_id(name, values, ids):
    """values (a vector with one entry per id), checked statically where the shapes decide
    it, else when run: "<name> has shape [3] but indices has 4 entries"."""
    num_ids = ids.shape[0]
    if values.shape.rank is not None and num_ids is not None and (
            values.shape.rank != 1 or values.shape[0] is not None):
        if values.shape.rank != 1 or values.shape[0] != num_ids:
            raise ValueError(f"{name} has shape {shape_text(values.shape)} but indices has "
                             f"{num_ids} entries")
        return values
    ok = tf.logical_and(tf.equal(tf.rank(values), 1),
                        tf.equal(tf.size(values, out_type=tf.int64),
                                 tf.size(ids, out_type=tf.int64)))
    values = require(values, ok, lambda: (
        f"{name} has shape ", tensor_shape_text(values), " but indices has ",
        tf.size(ids, out_type=tf.int64), " entries"))
    return tf.reshape(values, [-1])


def weights_tensor(weights, ids, combiner):
    """Per-id weights as a float32 vector of one entry per id, or None."""
    if weights is None:
        return None
    if combiner == "none":
        raise ValueError("weights need a combiner (sum, mean or sqrtn); combiner is none")
    weights = tf.convert_to_tensor(weights)
    if not weights.dtype.is_floating:
        raise TypeError(f"weights must be floats, got dtype {weights.dtype.name}")
    return _one_entry_per_id("weights", tf.cast(weights, tf.float32), ids)


def valid_segment_ids(segment_ids, ids, num_bags):
    """segment_ids (int64, one per id), checked to be non-negative, sorted and below
    num_bags (an int64 scalar tensor), each fault naming the first entry at fault."""
    segment_ids = _one_entry_per_id("segment_ids", segment_ids, ids)
    negative = segment_ids < 0
    i = _first(negative)
    segment_ids = require(segment_ids, tf.logical_not(tf.reduce_any(negative)), lambda: (
        "segment_ids[", i, "] = ", _at(segment_ids, i), " is negative"))
    drops = segment_ids[1:] < segment_ids[:-1]
    j = _first(drops) + 1
    segment_ids = require(segment_ids, tf.logical_not(tf.reduce_any(drops)), lambda: (
        "segment_ids must be sorted: segment_ids[", j, "] = ", _at(segment_ids, j),
        " < segment_ids[", j - 1, "] = ", _at(segment_ids, j - 1)))
    too_big = segment_ids >= num_bags
    n = _first(too_big)
    return require(segment_ids, tf.logical_not(tf.reduce_any(too_big)), lambda: (
        "segment_ids[", n, "] = ", _at(segment_ids, n), " is not below num_bags = ",
        num_bags))


def same_entries(a, b):
    """A boolean scalar tensor: a and b hold the same number of entries, equal one for one
    (b cast to a's dtype). Safe for any two shapes, e.g. to compare two shape vectors."""
    a, b = tf.reshape(a, [-1]), tf.reshape(tf.cast(b, a.dtype), [-1])
    n = tf.minimum(tf.size(a), tf.size(b))
    return tf.logical_and(tf.equal(tf.size(a), tf.size(b)),
                          tf.reduce_all(tf.equal(a[:n], b[:n])))


# --------------------------------------------------------------------------------------------
# The cache
# --------------------------------------------------------------------------------------------


def cache_tensors(cache_ids, cache_rows, dim):
    """cache_ids as an int64 vector and cache_rows as float32 [len(cache_ids), dim]; a
    float32 variable of a static shape stays a variable (the ops read it in place)."""
    cache_ids = _int64_vector(cache_ids, "cache_ids")
    keep = (is_variable(cache_rows) and tf.as_dtype(cache_rows.dtype) == tf.float32
            and tf.TensorShape(cache_rows.shape).is_fully_defined())
    if not keep:
        cache_rows = tf.convert_to_tensor(cache_rows)
    if not tf.as_dtype(cache_rows.dtype).is_floating:
        raise TypeError(f"cache_rows must be floats, got dtype "
                        f"{tf.as_dtype(cache_rows.dtype).name}")
    if not keep:
        cache_rows = tf.cast(cache_rows, tf.float32)
    slots = cache_ids.shape[0]
    rows_shape = tf.TensorShape(cache_rows.shape)
    if slots is not None and rows_shape.is_fully_defined():
        if rows_shape != (slots, dim):
            raise ValueError(f"cache_rows has shape {shape_text(rows_shape)} but "
                             f"cache_ids has {slots} slots and the cores give rows of {dim} "
                             f"columns: expected [{slots},{dim}]")
        return cache_ids, cache_rows
    if keep:
        cache_rows = tf.convert_to_tensor(cache_rows)
    num_slots = tf.size(cache_ids, out_type=tf.int64)
    shape = tf.concat([tf.shape(cache_rows, out_type=tf.int64), [-1, -1]], 0)
    ok = tf.logical_and(tf.equal(tf.rank(cache_rows), 2),
                        tf.logical_and(tf.equal(shape[0], num_slots), tf.equal(shape[1], dim)))
    cache_rows = require(cache_rows, ok, lambda: (
        "cache_rows has shape ", tensor_shape_text(cache_rows), " but cache_ids has ",
        num_slots, f" slots and the cores give rows of {dim} columns: expected [", num_slots,
        f",{dim}]"))
    return cache_ids, tf.reshape(cache_rows, [-1, dim])


def valid_cache_ids(cache_ids, num_rows):
    """cache_ids, checked as the cached op checks them: slot by slot, the first slot that is
    negative, below its predecessor, or a second slot of a row (< num_rows) is named."""
    negative = cache_ids < 0
    lower = tf.concat([[False], cache_ids[1:] < cache_ids[:-1]], 0)
    twin = tf.concat([[False], tf.logical_and(tf.equal(cache_ids[1:], cache_ids[:-1]),
                                              cache_ids[1:] < num_rows)], 0)
    faults = tf.logical_or(negative, tf.logical_or(lower, twin))
    s = _first(faults)

    def message():
        value, previous = _at(cache_ids, s), _at(cache_ids, s - 1)
        slot, before = tf.strings.as_string(s), tf.strings.as_string(s - 1)
        text = tf.where(
            _at(negative, s),
            _join(["cache_ids[", slot, "] = ", value,
                   " is negative (empty slots hold ids >= num_rows, e.g. INT64_MAX)"]),
            tf.where(_at(lower, s),
                     _join(["cache_ids must be sorted: cache_ids[", slot, "] = ", value,
                            " < cache_ids[", before, "] = ", previous]),
                     _join(["cache_ids[", before, "] and cache_ids[", slot,
                            "] both hold row ", value])))
        return (text,)

    return require(cache_ids, tf.logical_not(tf.reduce_any(faults)), message)
