"""TT-SVD: a dense table decomposed into TT cores. NumPy only."""

import math
from typing import Sequence

import numpy as np

from tt_keras.shape_checks import as_int_tuple, check_num_cores, format_shape
from tt_keras.tt_shape import RankSpec, full_ranks

__all__ = ["tt_svd"]


def tt_svd(
    table,
    row_shape: Sequence[int],
    col_shape: Sequence[int],
    max_rank: RankSpec,
    pad_ranks: bool = False,
):
    """Decompose a dense [N, D] table into TT cores by TT-SVD (Oseledets, 2011).

    The table is padded with zero rows to prod(row_shape), viewed as a tensor with mode pairs
    (p_1, q_1), (p_2, q_2), ..., and split by k-1 successive truncated SVDs. Each truncation
    keeps the largest singular values, so the result is the quasi-optimal TT approximation of
    those ranks (error at most sqrt(k-1) times the best).

    Args:
      table: array [N, D] with N <= prod(row_shape) and D == prod(col_shape).
      row_shape, col_shape: the factors (p_t) and (q_t).
      max_rank: an int for every inner rank, or k-1 inner ranks.
      pad_ranks: the ranks are min(max_rank, the unfolding's rank bound); with pad_ranks=True
        the cores are padded with zeros up to max_rank exactly, which represents the same
        table and gives the shapes a layer with that rank expects.

    Returns:
      A list of k float64 cores shaped (p_t, r_{t-1}, q_t, r_t).
    """
    table = np.asarray(table, dtype=np.float64)
    if table.ndim != 2:
        raise ValueError(f"table must be 2-D [num_rows, dim], got shape {table.shape}")
    row_shape = as_int_tuple(row_shape, "row_shape")
    col_shape = as_int_tuple(col_shape, "col_shape")
    k = len(row_shape)
    check_num_cores(k, "len(row_shape)")
    if len(col_shape) != k:
        raise ValueError(
            f"col_shape {format_shape(col_shape)} has {len(col_shape)} factors but row_shape "
            f"{format_shape(row_shape)} has {k}"
        )
    num_rows, dim = table.shape
    padded = math.prod(row_shape)
    if num_rows > padded:
        raise ValueError(
            f"row_shape {format_shape(row_shape)} holds {padded} rows but the table has {num_rows}"
        )
    if dim != math.prod(col_shape):
        raise ValueError(
            f"col_shape {format_shape(col_shape)} multiplies to {math.prod(col_shape)} but the "
            f"table has {dim} columns"
        )
    inner = full_ranks(max_rank, k)[1:-1]

    full = np.zeros((padded, dim))
    full[:num_rows] = table
    # (p_1..p_k, q_1..q_k) -> (p_1, q_1, p_2, q_2, ...): core t owns the mode pair (p_t, q_t).
    tensor = full.reshape(row_shape + col_shape)
    tensor = tensor.transpose([a for t in range(k) for a in (t, k + t)])

    cores = []
    r_prev = 1
    rest = tensor.reshape(-1)
    for t in range(k - 1):
        unfolding = rest.reshape(r_prev * row_shape[t] * col_shape[t], -1)
        u, s, vt = np.linalg.svd(unfolding, full_matrices=False)
        r = min(inner[t], len(s))
        core = u[:, :r].reshape(r_prev, row_shape[t], col_shape[t], r)
        cores.append(core.transpose(1, 0, 2, 3))
        rest = s[:r, None] * vt[:r]
        r_prev = r
    last = rest.reshape(r_prev, row_shape[-1], col_shape[-1], 1)
    cores.append(last.transpose(1, 0, 2, 3))

    if pad_ranks:
        for t in range(k - 1):
            extra = inner[t] - cores[t].shape[3]
            if extra > 0:
                cores[t] = np.pad(cores[t], [(0, 0), (0, 0), (0, 0), (0, extra)])
                cores[t + 1] = np.pad(cores[t + 1], [(0, 0), (0, extra), (0, 0), (0, 0)])
    return [np.ascontiguousarray(c) for c in cores]
