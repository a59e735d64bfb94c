"""NumPy oracles shared by the tests: dense tables, pooled lookups and their exact gradients.

Every TT implementation (pure TF, CPU op, GPU op) is checked against these. They are built on
`tt_math.to_dense` -- lookups and gradients of a TT table must equal those of the dense table
it reconstructs (spec section 1) -- and compute in float64 so that float32 implementations can
be compared with tight tolerances. They favour obvious correctness over speed: use tiny tables.

Bags are ragged Python lists of ids (`[[3, 1], [], [7]]`); weights, when given, are lists of
the same raggedness. Combiners follow tf.nn.embedding_lookup_sparse and docs/ops.md:
out_b = sum_i w_i W[id_i] / norm_b with norm_b = 1 ("sum"), sum_i w_i ("mean"),
sqrt(sum_i w_i^2) ("sqrtn"); an empty bag or a zero norm gives a zero row. "none" returns the
row of every id, bags concatenated, and takes no weights.
"""

import math

import numpy as np

from tt_keras import tt_math

COMBINERS = ("none", "sum", "mean", "sqrtn")


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


def sampled_rows(cores, ids, chunk=2048):
    """W[ids] for many ids without building the table: the chain, vectorized over ids.

    For tables too large for dense_table (statistics of initializers). Checked against
    tt_math.tt_rows in the tests.
    """
    cores = [np.asarray(c, dtype=np.float64) for c in cores]
    ids = np.asarray(ids).reshape(-1)
    row_shape = [c.shape[0] for c in cores]
    dim = math.prod(c.shape[2] for c in cores)
    out = np.empty((len(ids), dim))
    for start in range(0, len(ids), chunk):
        digs = tt_math.digits(ids[start : start + chunk], row_shape)
        acc = cores[0][digs[0]][:, 0]  # (n, q_1, r_1)
        for g, d in zip(cores[1:], digs[1:]):
            n, cols, _ = acc.shape
            acc = np.einsum("ncr,nrju->ncju", acc, g[d]).reshape(n, cols * g.shape[2], -1)
        out[start : start + chunk] = acc[:, :, 0]
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


def _bags_and_weights(ids_list_of_bags, weights_list_or_None, combiner):
    if combiner not in COMBINERS:
        raise ValueError(f"combiner must be one of {COMBINERS}, got {combiner!r}")
    bags = [np.asarray(b, dtype=np.int64).reshape(-1) for b in ids_list_of_bags]
    if weights_list_or_None is None:
        weights = [np.ones(len(b)) for b in bags]
    else:
        if combiner == "none":
            raise ValueError('weights must be None with combiner "none"')
        weights = [np.asarray(w, dtype=np.float64).reshape(-1) for w in weights_list_or_None]
        if len(weights) != len(bags) or any(len(w) != len(b) for w, b in zip(weights, bags)):
            raise ValueError("weights must have exactly the raggedness of the bags")
    return bags, weights


def _norm(w, combiner):
    if combiner == "mean":
        return w.sum()
    if combiner == "sqrtn":
        return math.sqrt((w**2).sum())
    return 1.0


def pooled_oracle(table, ids_list_of_bags, weights_list_or_None=None, combiner="sum"):
    """Pooled lookup of a dense table: [num_bags, D] ([nnz, D] for combiner "none")."""
    table = np.asarray(table, dtype=np.float64)
    bags, weights = _bags_and_weights(ids_list_of_bags, weights_list_or_None, combiner)
    if combiner == "none":
        ids = np.concatenate(bags) if bags else np.zeros(0, np.int64)
        return table[ids]
    out = np.zeros((len(bags), table.shape[1]))
    for b, (ids, w) in enumerate(zip(bags, weights)):
        norm = _norm(w, combiner)
        if len(ids) and norm != 0:
            out[b] = (w[:, None] * table[ids]).sum(axis=0) / norm
    return out


def pooled_grad_wrt_table(table_shape, ids_list_of_bags, weights_list_or_None, combiner,
                          upstream):
    """dL/dTable for L = sum(upstream * pooled_oracle(table, ...)); the weights held fixed.

    pooled is linear in the table: each id of bag b receives upstream[b] * w_i / norm_b
    (upstream row i for combiner "none"); repeated ids accumulate.
    """
    bags, weights = _bags_and_weights(ids_list_of_bags, weights_list_or_None, combiner)
    upstream = np.asarray(upstream, dtype=np.float64)
    grad = np.zeros(table_shape)
    if combiner == "none":
        ids = np.concatenate(bags) if bags else np.zeros(0, np.int64)
        np.add.at(grad, ids, upstream)
        return grad
    for b, (ids, w) in enumerate(zip(bags, weights)):
        norm = _norm(w, combiner)
        if len(ids) and norm != 0:
            np.add.at(grad, ids, (w / norm)[:, None] * upstream[b][None, :])
    return grad


def pooled_grad_wrt_weights(table, ids_list_of_bags, weights_list_or_None, combiner, upstream):
    """dL/dw for L = sum(upstream * pooled_oracle(table, ...)), as ragged lists like the bags.

    With S = sum_i w_i x_i and out = S / norm: d out / d w_i is x_i / norm for "sum";
    (x_i - out) / norm for "mean"; (x_i - out * w_i / norm) / norm for "sqrtn". Empty bags and
    zero norms are constant zero, so their weights get zero gradient.
    """
    table = np.asarray(table, dtype=np.float64)
    bags, weights = _bags_and_weights(ids_list_of_bags, weights_list_or_None, combiner)
    if combiner == "none":
        raise ValueError('combiner "none" takes no weights')
    upstream = np.asarray(upstream, dtype=np.float64)
    out = pooled_oracle(table, bags, weights, combiner)
    grads = []
    for b, (ids, w) in enumerate(zip(bags, weights)):
        norm = _norm(w, combiner)
        if not len(ids) or norm == 0:
            grads.append(np.zeros(len(ids)))
            continue
        rows = table[ids]
        if combiner == "sum":
            d = rows
        elif combiner == "mean":
            d = (rows - out[b][None, :]) / norm
        else:
            d = (rows - out[b][None, :] * (w / norm)[:, None]) / norm
        grads.append(d @ upstream[b])
    return grads


def _partial_chain(cores):
    """Contract consecutive cores into one (r_in, P, Q, r_out) block; empty -> ones(1,1,1,1).

    Row and column indices keep the earlier core's digit most significant, as in to_dense.
    """
    if not cores:
        return np.ones((1, 1, 1, 1))
    acc = cores[0].transpose(1, 0, 2, 3)
    for g in cores[1:]:
        s, rows, cols, _ = acc.shape
        acc = np.einsum("sACr,irju->sAiCju", acc, g).reshape(
            s, rows * g.shape[0], cols * g.shape[2], g.shape[3]
        )
    return acc


def core_grads_oracle(cores, ids_list_of_bags, weights_list_or_None, combiner, upstream):
    """dL/dG_t for every core, L = sum(upstream * pooled_oracle(dense_table(cores), ...)).

    W is linear in each core alone: W[(A, i, B), (C, j, D)] = sum_{a, b} Left[A, C, a]
    G_t[i, a, j, b] Right[b, B, D], where Left contracts the cores before t and Right those
    after it (A, C: leading row and column digits; B, D: trailing ones). Hence
    dL/dG_t[i, a, j, b] = sum dW[A, i, B, C, j, D] Left[A, C, a] Right[b, B, D], with dW from
    pooled_grad_wrt_table. Returns float64 arrays shaped like the cores.
    """
    cores = [np.asarray(c, dtype=np.float64) for c in cores]
    tt_shape = tt_math.shape_of_cores(cores)
    d_table = pooled_grad_wrt_table(
        (tt_shape.padded_rows, tt_shape.dim), ids_list_of_bags, weights_list_or_None, combiner,
        upstream,
    )
    grads = []
    for t, g in enumerate(cores):
        left = _partial_chain(cores[:t])[0]  # (A, C, r_{t-1})
        right = _partial_chain(cores[t + 1 :])[..., 0]  # (r_t, B, D)
        p, _, q, _ = g.shape
        d6 = d_table.reshape(left.shape[0], p, right.shape[1], left.shape[1], q, right.shape[2])
        grads.append(np.einsum("AiBCjD,ACa,bBD->iajb", d6, left, right, optimize=True))
    return grads
