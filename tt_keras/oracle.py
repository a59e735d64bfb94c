"""The NumPy oracle: dense tables, pooled lookups, the cached lookup and their exact gradients.

Every TT implementation (pure TF, CPU op, GPU kernels) is checked against these. They are
built on `tt_math.to_dense` -- lookups and gradients of a TT table must equal those of the
dense table it reconstructs -- and compute in float64 so that float32 implementations can
be compared with tight tolerances. They favour obvious correctness over speed: use small
tables. Two functions serve tables too large to reconstruct, both checked against to_dense
in the tests: `sampled_rows` (the rows of given ids) and `core_grads_oracle`, which works
from the distinct ids that were looked up. NumPy only: no TensorFlow, so the CUDA kernels
are checked with it on machines that have none.

Bags are ragged lists of ids (`[[3, 1], [], [7]]`; `split_bags` makes them from the ops'
flat ids and row_splits); weights, when given, are lists of the same raggedness. Combiners
(tt_math.COMBINERS) follow tf.nn.embedding_lookup_sparse and docs/ops.md:
out_b = sum_i w_i W[id_i] / norm_b with norm_b = 1 ("sum"), sum_i w_i ("mean"),
sqrt(sum_i w_i^2) ("sqrtn"); an empty bag or a zero norm gives a zero row. "none" returns the
row of every id, bags concatenated, and takes no weights.

The cache (docs/cache.md) is a list of cache ids, one per slot, with a row each; ids >=
num_rows mark empty slots. A cached lookup reads each cached id's row from its slot instead
of the TT product, so its gradient reaches the cores from the misses only and the cache rows
slot by slot.
"""

import math

import numpy as np

from tt_keras import tt_math


def dense_table(cores, num_rows=None):
    """The dense [num_rows or padded rows, D] float64 table of cores (any array-likes)."""
    return tt_math.to_dense([np.asarray(c) for c in cores], num_rows)


def random_cores(tt_shape, rng, scale=None, dtype=np.float32):
    """Random cores for tt_shape, i.i.d. N(0, scale^2).

    scale defaults to the sampled-Gaussian value for a table of unit variance,
    (1 / prod(r_1..r_{k-1}))^(1/(2k)), so table entries are O(1) whatever the ranks: float32
    round-off stays relative to 1 and tolerances need no per-test tuning.
    """
    if scale is None:
        scale = (1.0 / math.prod(tt_shape.inner_ranks)) ** (1.0 / (2 * tt_shape.num_cores))
    return [rng.normal(0.0, scale, s).astype(dtype) for s in tt_shape.core_shapes]


def _chain(cores, digs, n):
    """Per id, the product of consecutive cores at its digits: (n, r_in, cols, r_out).

    Column indices keep the earlier core's digit most significant, as in to_dense. No cores
    give the empty product, ones of shape (n, 1, 1, 1).
    """
    if not cores:
        return np.ones((n, 1, 1, 1))
    acc = cores[0][digs[0]]
    for g, d in zip(cores[1:], digs[1:]):
        _, r_in, cols, _ = acc.shape
        _, _, q, r_out = g.shape
        acc = np.einsum("nacr,nrjs->nacjs", acc, g[d]).reshape(n, r_in, cols * q, r_out)
    return acc


def sampled_rows(cores, ids, chunk=2048):
    """W[ids] for many ids without building the table: the chain, vectorized over ids.

    For tables too large for dense_table (statistics of initializers, ids past 2^32).
    Checked against to_dense in the tests.
    """
    cores = [np.asarray(c, dtype=np.float64) for c in cores]
    ids = np.asarray(ids).reshape(-1)
    row_shape = [c.shape[0] for c in cores]
    dim = math.prod(c.shape[2] for c in cores)
    out = np.empty((len(ids), dim))
    for start in range(0, len(ids), chunk):
        part = ids[start : start + chunk]
        out[start : start + chunk] = _chain(cores, tt_math.digits(part, row_shape),
                                            len(part))[:, 0, :, 0]
    return out


def table_moments(cores):
    """(mean, variance) of all entries of the padded table, exactly, without building it.

    The mean is the product of the cores summed over (p_t, q_t); the mean square is
    ||W||_F^2 / size, with ||W||_F^2 contracted core by core through r x r Gram matrices.
    Lets initializer statistics use cores far too large to reconstruct.
    """
    cores = [np.asarray(c, dtype=np.float64) for c in cores]
    size = math.prod(c.shape[0] * c.shape[2] for c in cores)
    total = np.ones((1, 1))
    gram = np.ones((1, 1))
    for g in cores:
        total = total @ g.sum(axis=(0, 2))
        # gram'[c, d] = sum_{a, b, i, j} gram[a, b] g[i, a, j, c] g[i, b, j, d]
        left = np.tensordot(gram, g, axes=([0], [1]))  # (b, i, j, c)
        gram = np.tensordot(left, g.transpose(1, 0, 2, 3), axes=([0, 1, 2], [0, 1, 2]))
    mean = total[0, 0] / size
    return mean, gram[0, 0] / size - mean**2


# --------------------------------------------------------------------------------------------
# Pooled lookups and their gradients
# --------------------------------------------------------------------------------------------


def split_bags(values, row_splits):
    """Flat values (ids or weights) and row_splits [num_bags + 1] as a ragged list of bags."""
    values = np.asarray(values).reshape(-1)
    row_splits = np.asarray(row_splits, dtype=np.int64).reshape(-1)
    return [values[a:b] for a, b in zip(row_splits[:-1], row_splits[1:])]


def _positions(ids_list_of_bags, weights_list_or_None, combiner):
    """The lookup position by position: (ids, bag of each, weight of each, norm of each bag).

    For combiner "none" every position is its own output row, with weight and norm 1.
    """
    if combiner not in tt_math.COMBINERS:
        raise ValueError(f"combiner must be one of {tt_math.COMBINERS}, got {combiner!r}")
    bags = [np.asarray(b, dtype=np.int64).reshape(-1) for b in ids_list_of_bags]
    ids = np.concatenate(bags) if bags else np.zeros(0, np.int64)
    if combiner == "none":
        if weights_list_or_None is not None:
            raise ValueError('weights must be None with combiner "none"')
        return ids, np.arange(len(ids)), np.ones(len(ids)), np.ones(len(ids))
    if weights_list_or_None is None:
        weights = np.ones(len(ids))
    else:
        w_bags = [np.asarray(w, dtype=np.float64).reshape(-1) for w in weights_list_or_None]
        if len(w_bags) != len(bags) or any(len(w) != len(b) for w, b in zip(w_bags, bags)):
            raise ValueError("weights must have exactly the raggedness of the bags")
        weights = np.concatenate(w_bags) if w_bags else np.zeros(0)
    bag_of = np.repeat(np.arange(len(bags)), [len(b) for b in bags])
    if combiner == "sum":
        norm = np.ones(len(bags))
    elif combiner == "mean":
        norm = np.bincount(bag_of, weights, minlength=len(bags)).astype(np.float64)
    else:
        norm = np.sqrt(np.bincount(bag_of, weights**2, minlength=len(bags)).astype(np.float64))
    return ids, bag_of, weights, norm


def _divide(x, y):
    """x / y, and 0 where y == 0 (an empty bag or a zero norm)."""
    return np.divide(x, y, out=np.zeros(np.broadcast(x, y).shape), where=y != 0)


def _position_grads(bag_of, weights, norm, upstream):
    """d L / d row of each position: w_i / norm_b times its output row's upstream gradient."""
    upstream = np.asarray(upstream, dtype=np.float64)
    return _divide(weights, norm[bag_of])[:, None] * upstream[bag_of]


def pooled_oracle(table, ids_list_of_bags, weights_list_or_None=None, combiner="sum"):
    """Pooled lookup of a dense table: [num_bags, D] ([nnz, D] for combiner "none")."""
    table = np.asarray(table, dtype=np.float64)
    ids, bag_of, weights, norm = _positions(ids_list_of_bags, weights_list_or_None, combiner)
    sums = np.zeros((len(norm), table.shape[1]))
    np.add.at(sums, bag_of, weights[:, None] * table[ids])
    return _divide(sums, norm[:, None])


def pooled_grad_wrt_table(table_shape, ids_list_of_bags, weights_list_or_None, combiner,
                          upstream):
    """dL/dTable for L = sum(upstream * pooled_oracle(table, ...)); the weights held fixed.

    pooled is linear in the table: each id of bag b receives upstream[b] * w_i / norm_b
    (upstream row i for combiner "none"); repeated ids accumulate.
    """
    ids, bag_of, weights, norm = _positions(ids_list_of_bags, weights_list_or_None, combiner)
    grad = np.zeros(table_shape)
    np.add.at(grad, ids, _position_grads(bag_of, weights, norm, upstream))
    return grad


def pooled_grad_wrt_weights(table, ids_list_of_bags, weights_list_or_None, combiner, upstream):
    """dL/dw for L = sum(upstream * pooled_oracle(table, ...)), as ragged lists like the bags.

    With S = sum_i w_i x_i and out = S / norm: d out / d w_i is x_i / norm for "sum";
    (x_i - out) / norm for "mean"; (x_i - out * w_i / norm) / norm for "sqrtn". Empty bags and
    zero norms are constant zero, so their weights get zero gradient.
    """
    if combiner == "none":
        raise ValueError('combiner "none" takes no weights')
    table = np.asarray(table, dtype=np.float64)
    ids, bag_of, weights, norm = _positions(ids_list_of_bags, weights_list_or_None, combiner)
    out = pooled_oracle(table, ids_list_of_bags, weights_list_or_None, combiner)[bag_of]
    d = table[ids]
    if combiner == "mean":
        d = d - out
    elif combiner == "sqrtn":
        d = d - out * _divide(weights, norm[bag_of])[:, None]
    upstream = np.asarray(upstream, dtype=np.float64)
    grads = _divide((d * upstream[bag_of]).sum(axis=1), norm[bag_of])
    if not len(norm):
        return []
    return np.split(grads, np.cumsum([len(b) for b in ids_list_of_bags])[:-1])


def _core_grads(cores, ids, row_grads):
    """dL/dG_t for every core, given dL/dW[id] for each looked-up position.

    W is linear in each core alone: W[idx, (C, j, D)] = sum_{a, b} L[C, a] G_t[i_t][a, j, b]
    R[b, D], where L is the product of the cores before t at idx's digits and R that of the
    cores after it (C, D: the leading and trailing column digits). Hence
    dL/dG_t[i, a, j, b] = sum over the distinct idx with i_t = i of
    sum_{C, D} dW[idx, (C, j, D)] L[C, a] R[b, D]. Only looked-up rows are touched, so
    this works for tables of any size.
    """
    cores = [np.asarray(c, dtype=np.float64) for c in cores]
    row_shape = [c.shape[0] for c in cores]
    unique_ids, inverse = np.unique(np.asarray(ids, dtype=np.int64), return_inverse=True)
    n = len(unique_ids)
    d_rows = np.zeros((n, math.prod(c.shape[2] for c in cores)))
    np.add.at(d_rows, inverse.reshape(-1), row_grads)
    digs = tt_math.digits(unique_ids, row_shape)
    grads = []
    for t, g in enumerate(cores):
        left = _chain(cores[:t], digs[:t], n)[:, 0]  # (n, C, r_{t-1})
        right = _chain(cores[t + 1 :], digs[t + 1 :], n)[..., 0]  # (n, r_t, D)
        d = d_rows.reshape(n, left.shape[1], g.shape[2], right.shape[2])
        x = np.einsum("nCjD,nCa->najD", d, left)
        grad = np.zeros(g.shape)
        for i in np.unique(digs[t]):
            ids_at_i = digs[t] == i
            grad[i] = np.tensordot(x[ids_at_i], right[ids_at_i], axes=([0, 3], [0, 2]))
        grads.append(grad)
    return grads


def core_grads_oracle(cores, ids_list_of_bags, weights_list_or_None, combiner, upstream):
    """dL/dG_t for every core, L = sum(upstream * pooled_oracle(dense_table(cores), ...)).

    float64 arrays shaped like the cores; see `_core_grads` for the contraction.
    """
    ids, bag_of, weights, norm = _positions(ids_list_of_bags, weights_list_or_None, combiner)
    return _core_grads(cores, ids, _position_grads(bag_of, weights, norm, upstream))


# --------------------------------------------------------------------------------------------
# The cached lookup
# --------------------------------------------------------------------------------------------


def _slot_of_id(cache_ids, num_rows):
    """{cached id: its slot}; ids >= num_rows are empty slots, the others must be distinct."""
    slots = {}
    for slot, i in enumerate(np.asarray(cache_ids, dtype=np.int64).reshape(-1).tolist()):
        if i < 0:
            raise ValueError(f"cache_ids[{slot}] = {i} is negative")
        if i >= num_rows:
            continue
        if i in slots:
            raise ValueError(f"cache_ids holds row {i} twice (slots {slots[i]} and {slot})")
        slots[i] = slot
    return slots


def cache_slots(cache_ids, ids, num_rows):
    """Each id's cache slot, or -1 where it is not cached (int64, shaped like ids)."""
    slots = _slot_of_id(cache_ids, num_rows)
    ids = np.asarray(ids, dtype=np.int64)
    return np.array([slots.get(i, -1) for i in ids.reshape(-1).tolist()],
                    dtype=np.int64).reshape(ids.shape)


def cached_table(cores, num_rows, cache_ids, cache_rows):
    """The table a cached lookup reads: dense_table(cores, num_rows), cached rows swapped in.

    num_rows None means every padded row (and then no cache id marks an empty slot, except
    ids past the padding).
    """
    table = dense_table(cores, num_rows)
    cache_rows = np.asarray(cache_rows, dtype=np.float64)
    for i, slot in _slot_of_id(cache_ids, len(table)).items():
        table[i] = cache_rows[slot]
    return table


def cached_grads_oracle(cores, num_rows, cache_ids, ids_list_of_bags, weights_list_or_None,
                        combiner, upstream):
    """(core grads, cache-row grads) of L = sum(upstream * pooled_oracle(cached_table(...))).

    The cores get the gradient of the cache misses only; cache row s gets the summed
    gradient of the positions whose id sits in slot s ([len(cache_ids), D], zero for slots
    not hit). num_rows None means every padded row, as for cached_table.
    """
    if num_rows is None:
        num_rows = math.prod(np.shape(c)[0] for c in cores)
    ids, bag_of, weights, norm = _positions(ids_list_of_bags, weights_list_or_None, combiner)
    row_grads = _position_grads(bag_of, weights, norm, upstream)
    slots = cache_slots(cache_ids, ids, num_rows)
    hit = slots >= 0
    slot_grads = np.zeros((len(np.asarray(cache_ids).reshape(-1)), row_grads.shape[1]))
    np.add.at(slot_grads, slots[hit], row_grads[hit])
    return _core_grads(cores, ids[~hit], row_grads[~hit]), slot_grads
