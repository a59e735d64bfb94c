"""Tensor-Train (TT) arithmetic for embedding tables, in NumPy only.

This module is the single source of truth for the TT conventions of tt_keras:

- A table W with N rows and D columns is stored as k cores (k = 2, 3 or 4).
- Row factors p = (p_1..p_k) with prod(p) >= N; the extra rows are padding, never looked up.
- Column factors q = (q_1..q_k) with prod(q) == D.
- Ranks r_0 = 1, r_1..r_{k-1}, r_k = 1.
- Core t has shape (p_t, r_{t-1}, q_t, r_t); row-major, byte-identical to FBTT-Embedding's
  [p_t, r_{t-1} * q_t * r_t].
- Row digits, most significant first: i_t = (idx // prod(p_{t+1..k})) % p_t (`row_strides`,
  `digits`).
- Column index: j = sum_t j_t * prod(q_{t+1..k}).
- W[idx, j] = G_1[i_1][0, j_1, :] @ G_2[i_2][:, j_2, :] @ ... @ G_k[i_k][:, j_k, 0].
- Combiners (`COMBINERS`), as in tf.nn.embedding_lookup_sparse plus "none" (one row per id);
  the CUDA launchers number them by their position in that tuple.

`to_dense` defines the result every TT implementation must reproduce (tt_keras.oracle builds
the test oracle on it; `tt_rows` is its independent cross-check). Nothing here imports
TensorFlow, so the oracle can run anywhere NumPy does.

The conventions and the dense reconstruction live here; the rest of the NumPy TT math is in
modules of its own and importable from here too: `tt_keras.tt_shape` (TTShape, parameter
counts, rank planning), `tt_keras.shape_suggestion` (suggest_shapes),
`tt_keras.decomposition` (tt_svd), `tt_keras.fbtt_layout` (FBTT-Embedding interchange) and
`tt_keras.shape_checks` (the argument checks, whose messages name the Keras layer's
arguments).
"""

import math
from typing import Optional, Sequence

import numpy as np

from tt_keras.decomposition import tt_svd
from tt_keras.fbtt_layout import cores_from_fbtt, cores_to_fbtt
from tt_keras.shape_checks import (
    MAX_CORES,
    MAX_ROWS,
    MIN_CORES,
    as_int,
    as_int_tuple,
    check_cores,
    format_shape,
)
from tt_keras.shape_suggestion import suggest_shapes
from tt_keras.tt_shape import (
    MAX_PARAMS_ABOVE_DENSE,
    RankSpec,
    TTShape,
    check_param_count,
    compression_ratio,
    num_params,
    plan_rank,
    shape_of_cores,
)

__all__ = [
    "COMBINERS",
    "TTShape",
    "suggest_shapes",
    "row_strides",
    "digits",
    "num_params",
    "compression_ratio",
    "plan_rank",
    "to_dense",
    "tt_rows",
    "shape_of_cores",
    "tt_svd",
    "cores_from_fbtt",
    "cores_to_fbtt",
    "check_param_count",
    "MAX_ROWS",
    # Also defined elsewhere and kept importable from here: the core-count limits, the
    # parameter limit and the rank argument's type.
    "MIN_CORES",
    "MAX_CORES",
    "MAX_PARAMS_ABOVE_DENSE",
    "RankSpec",
]

# How a bag's rows are pooled: "none" returns each id's row, the others follow
# tf.nn.embedding_lookup_sparse. The Keras layer spells "none" as None.
COMBINERS = ("none", "sum", "mean", "sqrtn")


def row_strides(row_shape: Sequence[int]):
    """prod(p_{t+1..k}) for each core t: digit t of an id is (id // stride_t) % p_t.

    Plain Python ints (row_shape may be numpy or TF dimensions), so that callers in any
    framework can use them as constants.
    """
    strides = []
    stride = 1
    for p in reversed(row_shape):
        strides.append(stride)
        stride *= int(p)
    return strides[::-1]


def digits(ids, row_shape: Sequence[int]):
    """Split row ids into their k digits, most significant first.

    i_t = (id // prod(p_{t+1..k})) % p_t. Ids must lie in [0, prod(row_shape)): digits of an
    out-of-range id would silently wrap around to another row.

    Returns:
      A list of k int64 arrays shaped like `ids`.
    """
    row_shape = as_int_tuple(row_shape, "row_shape")
    ids = np.asarray(ids)
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"ids must be integers, got dtype {ids.dtype}")
    ids = ids.astype(np.int64)
    total = math.prod(row_shape)
    bad = np.flatnonzero((ids < 0) | (ids >= total))
    if bad.size:
        pos = int(bad[0])
        raise ValueError(
            f"ids[{pos}] = {int(ids.reshape(-1)[pos])} is out of range [0, {total}) for "
            f"row_shape {format_shape(row_shape)}"
        )
    return [(ids // stride) % p for p, stride in zip(row_shape, row_strides(row_shape))]


def to_dense(cores, num_rows: Optional[int] = None) -> np.ndarray:
    """The dense table that TT cores represent, computed in float64.

    Args:
      cores: k arrays shaped (p_t, r_{t-1}, q_t, r_t).
      num_rows: keep only the first num_rows rows (default: all prod(p) rows, padding too).

    Returns:
      float64 array [num_rows or prod(p), prod(q)].
    """
    cores = check_cores(cores)
    padded = math.prod(c.shape[0] for c in cores)
    if num_rows is not None:
        num_rows = as_int(num_rows, "num_rows")
        if num_rows > padded:
            raise ValueError(f"num_rows is {num_rows} but the cores hold only {padded} rows")
    # acc[a, c, r]: a = row index over the cores so far, c = column index, r = open rank.
    acc = cores[0][:, 0, :, :]
    for g in cores[1:]:
        rows, cols, _ = acc.shape
        p, _, q, r = g.shape
        # New row index a * p + i and column index c * q + j: the earlier core's digit is the
        # more significant one, as the convention requires.
        acc = np.einsum("acs,isjr->aicjr", acc, g).reshape(rows * p, cols * q, r)
    table = acc[:, :, 0]
    return table if num_rows is None else table[:num_rows]


def tt_rows(cores, ids) -> np.ndarray:
    """W[ids] computed entry by entry with the literal chain formula: to_dense's cross-check.

    W[idx, j] = G_1[i_1][0, j_1, :] @ G_2[i_2][:, j_2, :] @ ... @ G_k[i_k][:, j_k, 0], with the
    digits of idx and j taken one at a time, spelled out here rather than taken from
    `digits`. Deliberately shares no code path with to_dense so that each can check the
    other. Slow: use only on a handful of ids.

    Returns:
      float64 array [len(ids), prod(q)].
    """
    cores = check_cores(cores)
    row_shape = [c.shape[0] for c in cores]
    col_shape = [c.shape[2] for c in cores]
    ids = np.asarray(ids).reshape(-1)
    total_rows = math.prod(row_shape)
    dim = math.prod(col_shape)
    out = np.empty((len(ids), dim), dtype=np.float64)
    for n, idx in enumerate(ids):
        idx = int(idx)
        if not 0 <= idx < total_rows:
            raise ValueError(f"ids[{n}] = {idx} is out of range [0, {total_rows})")
        row_digits = []
        for t, p in enumerate(row_shape):
            row_digits.append((idx // math.prod(row_shape[t + 1:])) % p)
        for j in range(dim):
            col_digits = []
            for t, q in enumerate(col_shape):
                col_digits.append((j // math.prod(col_shape[t + 1:])) % q)
            vec = np.ones((1, 1))
            for t, g in enumerate(cores):
                vec = vec @ g[row_digits[t], :, col_digits[t], :]
            out[n, j] = vec[0, 0]
    return out
