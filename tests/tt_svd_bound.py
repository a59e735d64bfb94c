"""The TT-SVD error bound of a dense table (Oseledets, 2011), computed with NumPy.

TT-SVD truncates the t-th unfolding of the table (the mode pairs (p_1, q_1)..(p_t, q_t) as
rows) to rank r_t. With eps_t the Frobenius norm of the singular values that unfolding loses
at r_t, the TT-SVD of the table is within sqrt(sum eps_t^2) of it, and no TT of those ranks
is closer than max eps_t."""

import math

import numpy as np


def unfolding_tails(table, tt_shape):
    """(eps_t for t = 1..k-1, each unfolding's numerical rank, the table zero-padded to
    tt_shape.padded_rows rows) for a [N, D] table and a tt_math.TTShape."""
    row_shape, col_shape, k = tt_shape.row_shape, tt_shape.col_shape, tt_shape.num_cores
    padded = np.zeros((tt_shape.padded_rows, tt_shape.dim))
    padded[: len(table)] = table
    tensor = padded.reshape(row_shape + col_shape).transpose(
        [a for t in range(k) for a in (t, k + t)])
    tails, ranks = [], []
    for t in range(1, k):
        lead = math.prod(row_shape[:t]) * math.prod(col_shape[:t])
        s = np.linalg.svd(tensor.reshape(lead, -1), compute_uv=False)
        tails.append(math.sqrt(float(np.sum(s[tt_shape.ranks[t]:] ** 2))))
        ranks.append(int(np.sum(s > s[0] * 1e-12)))
    return tails, ranks, padded
