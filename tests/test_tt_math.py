"""Tests of tt_keras.tt_math (the NumPy TT arithmetic) and of the shared NumPy oracles."""

import math
import time

import numpy as np
import pytest

from tt_keras import factorization, oracle, tt_math
from tt_keras.tt_math import TTShape

# The documented example: the largest Criteo-Kaggle table (README, examples.layer_demo).
SPEC_N = 10_131_227
SPEC_D = 16
SPEC_P = (200, 220, 250)
SPEC_Q = (2, 2, 4)

SHAPES = [
    TTShape((3, 4), (2, 3), (1, 3, 1)),
    TTShape((2, 3, 4), (2, 1, 3), (1, 2, 3, 1)),
    TTShape((2, 3, 2, 3), (1, 2, 2, 2), (1, 2, 3, 2, 1)),
]
SHAPE_IDS = ["k2", "k3", "k4"]


# --------------------------------------------------------------------------------------------
# to_dense, the oracle of everything, against the literal entry formula (tt_rows); the
# oracle's per-id chain (sampled_rows) against to_dense
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tt_shape", SHAPES, ids=SHAPE_IDS)
def test_to_dense_matches_per_id_chain(tt_shape):
    rng = np.random.default_rng(0)
    cores = oracle.random_cores(tt_shape, rng, dtype=np.float64)
    num_rows = tt_shape.padded_rows - 2
    dense = tt_math.to_dense(cores, num_rows)
    assert dense.shape == (num_rows, tt_shape.dim)
    np.testing.assert_allclose(dense, tt_math.tt_rows(cores, np.arange(num_rows)), rtol=1e-12,
                               atol=1e-12)
    # Padding rows exist in the full reconstruction and follow the same formula.
    full = tt_math.to_dense(cores)
    assert full.shape == (tt_shape.padded_rows, tt_shape.dim)
    np.testing.assert_allclose(full[num_rows:], tt_math.tt_rows(cores, [num_rows, num_rows + 1]),
                               rtol=1e-12, atol=1e-12)
    ids = rng.integers(0, num_rows, 50)
    np.testing.assert_allclose(oracle.sampled_rows(cores, ids, chunk=7), dense[ids], rtol=1e-12,
                               atol=1e-12)


def test_to_dense_entry_formula_by_hand():
    # k=2, p=(2,3), q=(2,2), rank 2: W[idx, j] = G1[i1][0, j1, :] @ G2[i2][:, j2, 0] with
    # i1 = idx // 3, i2 = idx % 3, j1 = j // 2, j2 = j % 2 -- spelled out, no helper.
    rng = np.random.default_rng(1)
    g1 = rng.normal(size=(2, 1, 2, 2))
    g2 = rng.normal(size=(3, 2, 2, 1))
    dense = tt_math.to_dense([g1, g2])
    for idx in range(6):
        for j in range(4):
            expected = g1[idx // 3, 0, j // 2, :] @ g2[idx % 3, :, j % 2, 0]
            assert dense[idx, j] == pytest.approx(expected, rel=1e-12, abs=1e-12)


def _fbtt_style_full(fbtt_cores, p, q, ranks):
    """The full matrix the way FBTT-Embedding's tt_matrix_to_full builds it (our own code).

    View each [p_t, r*q*r] core as (p, r, q, r), move the rank first, chain the cores as
    (rank, everything) matrices, then un-interleave (p_1, q_1, p_2, q_2, ..) into rows and
    columns. A third formulation of the convention, from the reference's side.
    """
    k = len(p)
    res = None
    for t, c in enumerate(fbtt_cores):
        core = c.reshape(p[t], ranks[t], q[t], ranks[t + 1]).transpose(1, 0, 2, 3)
        core = core.reshape(ranks[t], -1)
        res = core if res is None else res.reshape(-1, ranks[t]) @ core
    res = res.reshape([d for t in range(k) for d in (p[t], q[t])])
    res = res.transpose(list(range(0, 2 * k, 2)) + list(range(1, 2 * k, 2)))
    return res.reshape(math.prod(p), math.prod(q))


@pytest.mark.parametrize("tt_shape", SHAPES, ids=SHAPE_IDS)
def test_fbtt_round_trip_and_layout(tt_shape):
    rng = np.random.default_rng(2)
    cores = oracle.random_cores(tt_shape, rng)
    fbtt = tt_math.cores_to_fbtt(cores)
    for c, f, (p, r0, q, r1) in zip(cores, fbtt, tt_shape.core_shapes):
        assert f.shape == (p, r0 * q * r1)
        assert f.tobytes() == c.tobytes()  # byte-identical, as FBTT-Embedding stores them
    back = tt_math.cores_from_fbtt(fbtt, tt_shape)
    for c, b in zip(cores, back):
        np.testing.assert_array_equal(c, b)
    # TableBatchedTTEmbeddingBag's [num_tables=1, p, r*q*r] is accepted too.
    back3 = tt_math.cores_from_fbtt([f[None] for f in fbtt], tt_shape)
    np.testing.assert_array_equal(back3[0], cores[0])
    np.testing.assert_allclose(
        _fbtt_style_full(fbtt, tt_shape.row_shape, tt_shape.col_shape, tt_shape.ranks),
        tt_math.to_dense(cores), rtol=1e-6, atol=1e-6)


def test_fbtt_shape_errors():
    tt_shape = SHAPES[1]
    fbtt = tt_math.cores_to_fbtt(oracle.random_cores(tt_shape, np.random.default_rng(0)))
    with pytest.raises(ValueError, match=r"fbtt_cores\[1\] has shape \(3, 5\)"):
        tt_math.cores_from_fbtt([fbtt[0], np.zeros((3, 5)), fbtt[2]], tt_shape)
    with pytest.raises(ValueError, match="2 cores but tt_shape has 3"):
        tt_math.cores_from_fbtt(fbtt[:2], tt_shape)


def test_to_dense_rejects_cores_that_do_not_chain():
    with pytest.raises(ValueError, match="rank 2 != 3"):
        tt_math.to_dense([np.zeros((2, 1, 2, 2)), np.zeros((2, 3, 2, 1))])
    with pytest.raises(ValueError, match="r_0 and the last core's r_k must be 1"):
        tt_math.to_dense([np.zeros((2, 2, 2, 2)), np.zeros((2, 2, 2, 1))])
    with pytest.raises(ValueError, match="num_rows is 5 but the cores hold only 4"):
        tt_math.to_dense([np.zeros((2, 1, 2, 2)), np.zeros((2, 2, 2, 1))], num_rows=5)


def test_digits():
    row_shape = (200, 220, 250)
    ids = np.array([0, 1, 249, 250, 220 * 250, SPEC_N - 1, 200 * 220 * 250 - 1])
    d = tt_math.digits(ids, row_shape)
    assert len(d) == 3
    recomposed = (d[0] * 220 + d[1]) * 250 + d[2]
    np.testing.assert_array_equal(recomposed, ids)
    assert [int(x[3]) for x in d] == [0, 1, 0]  # 250 = (0, 1, 0)
    assert [int(x[4]) for x in d] == [1, 0, 0]
    with pytest.raises(ValueError, match=r"ids\[1\] = 11000000 is out of range \[0, 11000000\)"):
        tt_math.digits([5, 11_000_000], row_shape)
    with pytest.raises(ValueError, match=r"ids\[0\] = -1"):
        tt_math.digits([-1], row_shape)


def test_row_strides_and_combiners():
    assert tt_math.row_strides((200, 220, 250)) == [55_000, 250, 1]
    assert tt_math.row_strides(np.array([7, 9])) == [9, 1]
    assert all(type(s) is int for s in tt_math.row_strides(np.array([7, 9])))
    # The CUDA launchers number the combiners by their place here (TT_CUDA_COMBINER_*), and
    # the layer spells the first as None.
    assert tt_math.COMBINERS == ("none", "sum", "mean", "sqrtn")


# --------------------------------------------------------------------------------------------
# Shapes, sizes, ranks
# --------------------------------------------------------------------------------------------


def test_spec_example_params_and_ratio():
    shape = TTShape.create(SPEC_N, SPEC_D, 32, SPEC_P, SPEC_Q)
    assert shape.ranks == (1, 32, 32, 1)
    assert shape.core_shapes == [(200, 1, 2, 32), (220, 32, 2, 32), (250, 32, 4, 1)]
    assert shape.num_params == 495_360
    assert tt_math.num_params(shape) == 495_360
    assert SPEC_N * SPEC_D == 162_099_632
    ratio = 162_099_632 / 495_360  # 327.236...
    assert ratio == pytest.approx(327.236, abs=1e-3)
    assert shape.compression_ratio(SPEC_N) == pytest.approx(ratio, rel=1e-12)
    assert tt_math.compression_ratio(SPEC_N, SPEC_D, shape) == pytest.approx(ratio, rel=1e-12)
    assert shape.padded_rows == 11_000_000 and shape.dim == 16 and shape.num_cores == 3
    # Suggested shapes reproduce the documented ones.
    assert TTShape.create(SPEC_N, SPEC_D, 32) == shape


def test_spec_example_suggested_shapes():
    assert tt_math.suggest_shapes(SPEC_N, SPEC_D) == (SPEC_P, SPEC_Q)
    assert tt_math.suggest_shapes(SPEC_N, SPEC_D, num_cores=3) == (SPEC_P, SPEC_Q)


@pytest.mark.parametrize("dim, expected", [
    (16, (2, 2, 4)), (96, (4, 4, 6)), (128, (4, 4, 8)), (97, (1, 1, 97)), (127, (1, 1, 127)),
    (64, (4, 4, 4)), (1, (1, 1, 1)), (2, (1, 1, 2)),
])
def test_suggested_col_shape_known_values(dim, expected):
    assert tt_math.suggest_shapes(1000, dim)[1] == expected


@pytest.mark.parametrize("k", [2, 3, 4])
def test_suggested_col_shapes_multiply_exactly(k):
    for dim in range(1, 131):
        cols = tt_math.suggest_shapes(1, dim, k)[1]
        assert len(cols) == k and math.prod(cols) == dim, (dim, cols)
        assert list(cols) == sorted(cols) and min(cols) >= 1
        # The most balanced split: no other ascending split has a smaller largest factor
        # when dim is a perfect power (checked via the log-spread definition below).
        if round(dim ** (1 / k)) ** k == dim:
            assert cols == (round(dim ** (1 / k)),) * k


@pytest.mark.parametrize("k", [2, 3, 4])
def test_suggested_row_shapes_over_many_sizes(k):
    rng = np.random.default_rng(123)
    # Log-uniform sizes in [1, 1e9], plus edge cases (primes, powers of 10, DLRM tables).
    sizes = list(np.unique(np.exp(rng.uniform(0, math.log(1e9), 60)).astype(np.int64)))
    sizes += [1, 2, 7, 9, 10, 11, 97, 100, 101, 999_999_937, 10**9, SPEC_N, 45_840_617,
              1460, 583, 305, 24, 3, 4]
    for n in sizes:
        n = int(n)
        rows = tt_math.suggest_shapes(n, 16, k)[0]
        total = math.prod(rows)
        assert len(rows) == k and list(rows) == sorted(rows), (n, rows)
        assert n <= total < 2 * n or n == total == 1, (n, rows)
        if n >= 1000:
            # Balanced: for tables worth compressing, factors within 2x of each other...
            assert rows[-1] <= 2 * rows[0], (n, rows)
            # ... and at least as balanced as the plain split of n rounded to its leading digit
            # (always a candidate).
            lead = 10 ** (len(str(n)) - 1)
            rounded = -(-n // lead) * lead
            assert _log_spread(rows) <= _log_spread(_best_split(rounded, k)) + 1e-9, (n, rows)


def _log_spread(factors):
    logs = np.log(np.asarray(factors, dtype=np.float64))
    return float(((logs - logs.mean()) ** 2).sum())


def _best_split(n, k):
    """Brute force over all ascending k-splits of n (a separate implementation for the test)."""
    best = None
    def rec(rest, parts, lo, acc):
        nonlocal best
        if parts == 1:
            if rest >= lo:
                cand = acc + (rest,)
                if best is None or _log_spread(cand) < _log_spread(best) - 1e-12:
                    best = cand
            return
        d = lo
        while d ** parts <= rest:
            if rest % d == 0:
                rec(rest // d, parts - 1, d, acc + (d,))
            d += 1
    rec(n, k, 1, ())
    return best


def test_suggested_rows_match_brute_force_for_small_sizes():
    # For every N below 1200 and every k, the candidates are N rounded up to 10^i; the chosen
    # split is the most balanced one among them (ties: smaller total).
    for k in (2, 3, 4):
        for n in range(1, 1200, 7):
            cands = sorted({-(-n // 10**i) * 10**i for i in range(len(str(n)))})
            best = None
            for c in cands:
                split = _best_split(c, k)
                if best is None or _log_spread(split) < _log_spread(best) - 1e-12:
                    best = split
            assert tt_math.suggest_shapes(n, 4, k)[0] == best, (n, k)


def test_suggest_shapes_validates():
    with pytest.raises(ValueError, match="input_dim must be an integer >= 1, got 0"):
        tt_math.suggest_shapes(0, 16)
    with pytest.raises(ValueError, match="output_dim must be an integer >= 1, got -4"):
        tt_math.suggest_shapes(10, -4)
    with pytest.raises(ValueError, match=r"num_cores must be an integer in \[2, 4\], got 5"):
        tt_math.suggest_shapes(10, 16, 5)
    with pytest.raises(ValueError, match="input_dim"):
        tt_math.suggest_shapes(2.5, 16)


def test_ttshape_validation_messages():
    with pytest.raises(ValueError, match=r"row_shape must have 2 to 4 factors.*\(10,\)"):
        TTShape((10,), (16,), (1, 1))
    with pytest.raises(ValueError, match=r"col_shape \(2, 8\) has 2 factors but row_shape"):
        TTShape((10, 10, 10), (2, 8), (1, 4, 4, 1))
    with pytest.raises(ValueError, match=r"ranks must start and end with 1.*\(2, 4, 4, 1\)"):
        TTShape((10, 10, 10), (2, 2, 4), (2, 4, 4, 1))
    with pytest.raises(ValueError, match=r"ranks must have num_cores \+ 1 = 4 entries"):
        TTShape((10, 10, 10), (2, 2, 4), (1, 4, 1))
    with pytest.raises(ValueError, match=r"ranks must hold integers >= 1, got \(1, 0, 4, 1\)"):
        TTShape((10, 10, 10), (2, 2, 4), (1, 0, 4, 1))
    with pytest.raises(ValueError, match=r"row_shape must hold integers >= 1, got \(10, 0, 10\)"):
        TTShape((10, 0, 10), (2, 2, 4), (1, 4, 4, 1))
    # Lists and numpy ints are normalised to tuples of ints (hashable, comparable).
    s = TTShape([np.int64(2), 3], [4, 4], [1, 5, 1])
    assert s.row_shape == (2, 3) and type(s.row_shape[0]) is int and hash(s)


def test_create_validation_messages():
    with pytest.raises(ValueError, match=r"tt_row_shape \(10, 10\) holds 100 rows but input_dim "
                                         r"is 1000"):
        TTShape.create(1000, 16, 4, row_shape=(10, 10), col_shape=(4, 4))
    with pytest.raises(ValueError, match=r"tt_col_shape \(2, 2, 2\) multiplies to 8 but "
                                         r"output_dim is 16"):
        TTShape.create(1000, 16, 4, col_shape=(2, 2, 2))
    with pytest.raises(ValueError, match=r"tt_rank must hold positive integers, got \(4, 0\)"):
        TTShape.create(1000, 16, [4, 0])
    with pytest.raises(ValueError, match="tt_rank must be an integer >= 1, got -3"):
        TTShape.create(1000, 16, -3)
    with pytest.raises(ValueError, match=r"tt_rank \(4, 4, 4\) has 3 entries; with num_cores = 3"):
        TTShape.create(1000, 16, [4, 4, 4])
    with pytest.raises(ValueError, match=r"tt_rank \(2, 4, 4, 1\) has k\+1 = 4 entries"):
        TTShape.create(1000, 16, [2, 4, 4, 1])
    with pytest.raises(ValueError, match=r"tt_row_shape \(10, 100\) has 2 factors but "
                                         r"num_cores is 3"):
        TTShape.create(1000, 16, 4, row_shape=(10, 100), num_cores=3)
    with pytest.raises(ValueError, match=r"tt_row_shape \(10, 100\) has 2 factors but "
                                         r"tt_col_shape \(2, 2, 4\) has 3"):
        TTShape.create(1000, 16, 4, row_shape=(10, 100), col_shape=(2, 2, 4))
    with pytest.raises(ValueError, match="input_dim must be an integer >= 1, got 0"):
        TTShape.create(0, 16, 4)
    with pytest.raises(ValueError, match="output_dim must be an integer >= 1, got 0"):
        TTShape.create(10, 0, 4)
    with pytest.raises(ValueError, match=r"num_cores must be an integer in \[2, 4\], got 1"):
        TTShape.create(10, 16, 4, num_cores=1)


def test_create_rank_forms_and_core_count():
    a = TTShape.create(1000, 16, 8)
    b = TTShape.create(1000, 16, [8, 8])
    c = TTShape.create(1000, 16, [1, 8, 8, 1])
    assert a == b == c and a.ranks == (1, 8, 8, 1)
    assert TTShape.create(1000, 16, [3, 5]).ranks == (1, 3, 5, 1)
    # num_cores follows given shapes when omitted, and defaults to 3 without them.
    assert TTShape.create(1000, 16, 4, row_shape=(4, 5, 5, 10)).num_cores == 4
    assert TTShape.create(1000, 16, 4, col_shape=(4, 4)).num_cores == 2
    assert TTShape.create(1000, 16, 4, num_cores=4).num_cores == 4
    assert TTShape.create(1000, 16, 4).num_cores == 3
    # One given shape, the other suggested.
    s = TTShape.create(1000, 16, 4, row_shape=(10, 10, 10))
    assert s.col_shape == (2, 2, 4)


def test_plan_rank():
    r = tt_math.plan_rank(SPEC_N, SPEC_D, 327.0, SPEC_P, SPEC_Q)
    assert r == 32  # rank 32 gives 327.24x, rank 33 less than 327
    assert TTShape.create(SPEC_N, SPEC_D, 33, SPEC_P, SPEC_Q).compression_ratio(SPEC_N) < 327
    for target in (3.0, 50.0, 1000.0, 20000.0):
        r = tt_math.plan_rank(SPEC_N, SPEC_D, target)
        assert TTShape.create(SPEC_N, SPEC_D, r).compression_ratio(SPEC_N) >= target
        assert TTShape.create(SPEC_N, SPEC_D, r + 1).compression_ratio(SPEC_N) < target
    with pytest.raises(ValueError,
                       match=r"target_ratio 1000000.0 is unreachable: rank 1 .* only 8.81e\+04x"):
        tt_math.plan_rank(SPEC_N, SPEC_D, 1e6)
    with pytest.raises(ValueError, match="target_ratio must be a positive finite number"):
        tt_math.plan_rank(SPEC_N, SPEC_D, 0)


# --------------------------------------------------------------------------------------------
# TT-SVD
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tt_shape", [
    TTShape((4, 5), (2, 4), (1, 3, 1)),
    TTShape((4, 5, 6), (2, 2, 4), (1, 3, 4, 1)),
    TTShape((3, 4, 3, 4), (2, 2, 2, 2), (1, 2, 3, 2, 1)),
], ids=SHAPE_IDS)
def test_tt_svd_recovers_an_exact_tt_table(tt_shape):
    rng = np.random.default_rng(5)
    cores = oracle.random_cores(tt_shape, rng, dtype=np.float64)
    # All rows: zeroing padding rows (what tt_svd does to a shorter table) would break the
    # low-rank structure.
    num_rows = tt_shape.padded_rows
    table = tt_math.to_dense(cores, num_rows)
    for max_rank in (max(tt_shape.ranks), max(tt_shape.ranks) + 2):
        got = tt_math.tt_svd(table, tt_shape.row_shape, tt_shape.col_shape, max_rank)
        for g, s in zip(got, tt_shape.core_shapes):
            assert g.shape[0] == s[0] and g.shape[2] == s[2]
        rec = tt_math.to_dense(got, num_rows)
        assert np.linalg.norm(rec - table) <= 1e-5 * np.linalg.norm(table)
    # The exact ranks as a list, and zero-padding up to a requested rank.
    got = tt_math.tt_svd(table, tt_shape.row_shape, tt_shape.col_shape,
                         list(tt_shape.inner_ranks))
    assert tt_math.shape_of_cores(got).ranks == tt_shape.ranks
    padded = tt_math.tt_svd(table, tt_shape.row_shape, tt_shape.col_shape, 40, pad_ranks=True)
    assert tt_math.shape_of_cores(padded).inner_ranks == (40,) * (tt_shape.num_cores - 1)
    np.testing.assert_allclose(tt_math.to_dense(padded, num_rows), table, atol=1e-9)


@pytest.mark.parametrize("row_shape, col_shape", [
    ((6, 7), (4, 4)), ((4, 5, 5), (2, 2, 4)), ((3, 3, 4, 4), (2, 2, 2, 2)),
], ids=SHAPE_IDS)
def test_tt_svd_error_falls_with_rank_and_vanishes_at_full_rank(row_shape, col_shape):
    rng = np.random.default_rng(6)
    num_rows = math.prod(row_shape) - 1
    table = rng.normal(size=(num_rows, math.prod(col_shape)))
    errors = []
    for rank in range(1, 65):
        cores = tt_math.tt_svd(table, row_shape, col_shape, rank)
        errors.append(np.linalg.norm(tt_math.to_dense(cores, num_rows) - table))
        ranks = tt_math.shape_of_cores(cores).ranks
        if all(r < rank for r in ranks[1:-1]):
            break  # every rank is at its bound: full rank reached
    assert all(b <= a + 1e-9 for a, b in zip(errors, errors[1:])), errors
    assert errors[0] > 0.1 * np.linalg.norm(table)
    assert errors[-1] <= 1e-10 * np.linalg.norm(table)


def test_tt_svd_validates():
    with pytest.raises(ValueError, match=r"row_shape \(2, 2\) holds 4 rows but the table has 5"):
        tt_math.tt_svd(np.zeros((5, 4)), (2, 2), (2, 2), 2)
    with pytest.raises(ValueError, match=r"col_shape \(2, 3\) multiplies to 6 but the table has"):
        tt_math.tt_svd(np.zeros((4, 4)), (2, 2), (2, 3), 2)


# --------------------------------------------------------------------------------------------
# The shared oracles
# --------------------------------------------------------------------------------------------


def test_table_moments_exact():
    rng = np.random.default_rng(7)
    for tt_shape in SHAPES:
        cores = oracle.random_cores(tt_shape, rng, dtype=np.float64)
        cores[0] = cores[0] + 0.3  # a non-zero mean, so the mean term is exercised
        dense = tt_math.to_dense(cores)
        mean, var = oracle.table_moments(cores)
        assert mean == pytest.approx(dense.mean(), rel=1e-10, abs=1e-12)
        assert var == pytest.approx(dense.var(), rel=1e-10)


def test_sampled_rows_past_2_to_the_32():
    rng = np.random.default_rng(11)
    cores = oracle.random_cores(TTShape((2000, 2000, 2000), (2, 1, 2), (1, 3, 2, 1)), rng,
                                dtype=np.float64)
    ids = np.array([2**32 + 5, 7_999_999_999, 0, 4_294_967_295])
    np.testing.assert_allclose(oracle.sampled_rows(cores, ids), tt_math.tt_rows(cores, ids),
                               rtol=1e-12, atol=1e-12)


def test_split_bags():
    bags = oracle.split_bags(np.array([4, 1, 1, 7]), [0, 0, 3, 4])
    assert [b.tolist() for b in bags] == [[], [4, 1, 1], [7]]


BAGS = [[0, 3, 3, 5], [], [7], [2, 9, 1], [4, 4]]
WEIGHTS = [[0.5, 2.0, -1.0, 1.5], [], [3.0], [1.0, -1.0, 0.0], [0.7, 0.2]]


def test_pooled_oracle_by_hand():
    table = np.arange(40, dtype=np.float64).reshape(10, 4)
    out = oracle.pooled_oracle(table, BAGS, WEIGHTS, "sum")
    np.testing.assert_allclose(out[0], 0.5 * table[0] + 1.0 * table[3] + 1.5 * table[5])
    np.testing.assert_array_equal(out[1], 0)  # empty bag
    mean = oracle.pooled_oracle(table, BAGS, WEIGHTS, "mean")
    np.testing.assert_array_equal(mean[3], 0)  # weights sum to zero
    np.testing.assert_allclose(mean[2], table[7])
    np.testing.assert_allclose(mean[4], table[4])
    sqrtn = oracle.pooled_oracle(table, BAGS, WEIGHTS, "sqrtn")
    np.testing.assert_allclose(sqrtn[3], (table[2] - table[9]) / math.sqrt(2))
    none = oracle.pooled_oracle(table, BAGS, None, "none")
    np.testing.assert_array_equal(none, table[[0, 3, 3, 5, 7, 2, 9, 1, 4, 4]])
    np.testing.assert_allclose(oracle.pooled_oracle(table, BAGS, None, "mean")[0],
                               table[[0, 3, 3, 5]].mean(axis=0))


@pytest.mark.parametrize("combiner", ["sum", "mean", "sqrtn"])
def test_pooled_oracle_matches_tf_embedding_lookup_sparse(combiner):
    tf = pytest.importorskip("tensorflow")
    rng = np.random.default_rng(8)
    table = rng.normal(size=(10, 4))
    # Non-empty bags with positive weights: where TF and our zero-row rule agree.
    bags = [[0, 3, 3, 5], [7], [2, 9, 1], [4, 4]]
    weights = [list(rng.uniform(0.1, 2.0, len(b))) for b in bags]
    upstream = rng.normal(size=(len(bags), 4))
    indices = [[b, i] for b, bag in enumerate(bags) for i in range(len(bag))]
    dense_shape = [len(bags), max(len(b) for b in bags)]
    sp_ids = tf.SparseTensor(indices, [i for bag in bags for i in bag], dense_shape)
    sp_w = tf.SparseTensor(indices, [w for ws in weights for w in ws], dense_shape)
    params = tf.Variable(table)
    with tf.GradientTape() as tape:
        out = tf.nn.embedding_lookup_sparse(params, sp_ids, sp_w, combiner=combiner)
        loss = tf.reduce_sum(out * upstream)
    grad = tf.convert_to_tensor(tape.gradient(loss, params))
    np.testing.assert_allclose(oracle.pooled_oracle(table, bags, weights, combiner), out.numpy(),
                               rtol=1e-12)
    np.testing.assert_allclose(
        oracle.pooled_grad_wrt_table(table.shape, bags, weights, combiner, upstream),
        grad.numpy(), rtol=1e-12, atol=1e-12)


def _loss(table, bags, weights, combiner, upstream):
    return float((oracle.pooled_oracle(table, bags, weights, combiner) * upstream).sum())


@pytest.mark.parametrize("combiner", ["none", "sum", "mean", "sqrtn"])
def test_pooled_grads_against_finite_differences(combiner):
    rng = np.random.default_rng(9)
    table = rng.normal(size=(10, 3))
    weights = None if combiner == "none" else WEIGHTS
    nout = sum(len(b) for b in BAGS) if combiner == "none" else len(BAGS)
    upstream = rng.normal(size=(nout, 3))
    grad = oracle.pooled_grad_wrt_table(table.shape, BAGS, weights, combiner, upstream)
    eps = 1e-6
    fd = np.zeros_like(table)
    for idx in np.ndindex(*table.shape):
        plus, minus = table.copy(), table.copy()
        plus[idx] += eps
        minus[idx] -= eps
        fd[idx] = (_loss(plus, BAGS, weights, combiner, upstream)
                   - _loss(minus, BAGS, weights, combiner, upstream)) / (2 * eps)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8)
    if combiner == "none":
        return
    wgrad = oracle.pooled_grad_wrt_weights(table, BAGS, WEIGHTS, combiner, upstream)
    for b, bag in enumerate(BAGS):
        for i in range(len(bag)):
            plus = [list(w) for w in WEIGHTS]
            minus = [list(w) for w in WEIGHTS]
            plus[b][i] += eps
            minus[b][i] -= eps
            # A weight moving off a zero norm is a discontinuity: the oracle says 0 there.
            if combiner == "mean" and b == 3:
                continue
            fd_w = (_loss(table, BAGS, plus, combiner, upstream)
                    - _loss(table, BAGS, minus, combiner, upstream)) / (2 * eps)
            assert wgrad[b][i] == pytest.approx(fd_w, rel=1e-5, abs=1e-7), (b, i)


@pytest.mark.parametrize("tt_shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("combiner", ["none", "sum", "mean", "sqrtn"])
def test_core_grads_oracle_against_finite_differences(tt_shape, combiner):
    rng = np.random.default_rng(10)
    cores = oracle.random_cores(tt_shape, rng, dtype=np.float64)
    num_rows = tt_shape.padded_rows - 1
    bags = [list(rng.integers(0, num_rows, n)) for n in (3, 0, 1, 4)]
    bags[0].append(bags[0][0])  # a repeated id
    weights = None if combiner == "none" else [list(rng.uniform(-1, 2, len(b))) for b in bags]
    nout = sum(len(b) for b in bags) if combiner == "none" else len(bags)
    upstream = rng.normal(size=(nout, tt_shape.dim))

    def loss(cs):
        return _loss(tt_math.to_dense(cs, num_rows), bags, weights, combiner, upstream)

    grads = oracle.core_grads_oracle(cores, bags, weights, combiner, upstream)
    for t, (core, fd) in enumerate(zip(cores, central_differences(loss, cores))):
        assert grads[t].shape == core.shape
        np.testing.assert_allclose(grads[t], fd, rtol=1e-6, atol=1e-8)


def central_differences(loss, arrays, eps=1e-6):
    """d loss / d every entry of every array, by central differences (loss takes the list)."""
    grads = []
    for t, a in enumerate(arrays):
        fd = np.zeros_like(a)
        for idx in np.ndindex(*a.shape):
            plus = [x.copy() for x in arrays]
            minus = [x.copy() for x in arrays]
            plus[t][idx] += eps
            minus[t][idx] -= eps
            fd[idx] = (loss(plus) - loss(minus)) / (2 * eps)
        grads.append(fd)
    return grads


def test_cache_slots():
    cache_ids = [9, 2, 11, 30, np.iinfo(np.int64).max]  # 11 and above: empty with 11 rows
    np.testing.assert_array_equal(oracle.cache_slots(cache_ids, [2, 3, 9, 11, 2], 11),
                                  [1, -1, 0, -1, 1])
    with pytest.raises(ValueError, match="row 2 twice"):
        oracle.cache_slots([2, 5, 2], [1], 11)
    with pytest.raises(ValueError, match="negative"):
        oracle.cache_slots([-1, 5], [1], 11)


@pytest.mark.parametrize("combiner", ["none", "sum", "mean", "sqrtn"])
def test_cached_oracle_against_finite_differences(combiner):
    """The cached lookup reads cached_table; its gradient: cores from the misses, cache rows
    slot by slot (an empty slot, and a slot never hit, get none)."""
    rng = np.random.default_rng(12)
    tt_shape = SHAPES[1]
    cores = oracle.random_cores(tt_shape, rng, dtype=np.float64)
    num_rows = tt_shape.padded_rows - 2
    cache_ids = np.array([1, 4, 9, num_rows, num_rows + 1])  # the last two: empty slots
    cache_rows = rng.normal(size=(len(cache_ids), tt_shape.dim))
    bags = [[4, 0, 4], [], [9, 5], [num_rows - 1, 4]]
    weights = None if combiner == "none" else [list(rng.uniform(0.2, 2, len(b))) for b in bags]
    nout = sum(len(b) for b in bags) if combiner == "none" else len(bags)
    upstream = rng.normal(size=(nout, tt_shape.dim))

    table = oracle.cached_table(cores, num_rows, cache_ids, cache_rows)
    expect = tt_math.to_dense(cores, num_rows)
    expect[[1, 4, 9]] = cache_rows[:3]
    np.testing.assert_array_equal(table, expect)

    def loss(arrays):  # the cores, then the cache rows
        return _loss(oracle.cached_table(arrays[:-1], num_rows, cache_ids, arrays[-1]), bags,
                     weights, combiner, upstream)

    core_grads, slot_grads = oracle.cached_grads_oracle(cores, num_rows, cache_ids, bags,
                                                        weights, combiner, upstream)
    fds = central_differences(loss, cores + [cache_rows])
    np.testing.assert_allclose(slot_grads, fds[-1], rtol=1e-6, atol=1e-8)
    assert not slot_grads[[0, 3, 4]].any()  # id 1 is never looked up; empty slots
    for got, fd in zip(core_grads, fds[:-1]):
        np.testing.assert_allclose(got, fd, rtol=1e-6, atol=1e-8)


# --------------------------------------------------------------------------------------------
# Limits: 2^62 rows, parameter counts, factoring large row counts
# --------------------------------------------------------------------------------------------


def test_rows_beyond_2_62_are_refused_by_name():
    # 2^64 rows: numpy's int64 product wraps to 0, Python's does not.
    with pytest.raises(ValueError, match=r"tt_row_shape \(65536, 65536, 65536, 65536\) holds "
                                         r"18446744073709551616 rows, more than 2\^62"):
        TTShape.create(100, 4, 1, row_shape=(2**16,) * 4, col_shape=(1, 1, 2, 2))
    with pytest.raises(ValueError, match=r"row_shape \(65536, 65536, 65536, 65536\) holds"):
        TTShape((2**16,) * 4, (1, 1, 2, 2), (1, 1, 1, 1, 1))
    with pytest.raises(ValueError, match=r"input_dim = 9223372036854775818 exceeds 2\^62"):
        TTShape.create(2**63 + 10, 4, 1)
    with pytest.raises(ValueError, match=r"input_dim = 4611686018427387905 exceeds 2\^62"):
        tt_math.suggest_shapes(2**62 + 1, 16)
    # The limit itself is a table.
    assert TTShape.create(2**62, 4, 1, row_shape=(2**31, 2**31)).padded_rows == 2**62


@pytest.mark.parametrize("n", [2**62 - 57, 2**62 - 5, 2**62, 2147483647**2,
                               999_999_999_989 * 1_000_003, 3 * 10**18 + 7])
def test_suggest_shapes_near_2_62_is_fast(n):
    """Row counts near 2^62: factors within [n, 2^62], found in well under a second (the
    trial division and exhaustive search of 0.1.0 took about a minute for 2^62 - 57)."""
    for k in (2, 3, 4):
        start = time.perf_counter()
        rows, cols = tt_math.suggest_shapes(n, 16, k)
        assert time.perf_counter() - start < 10, (n, k)
        assert n <= math.prod(rows) <= tt_math.MAX_ROWS and math.prod(cols) == 16
        assert len(rows) == k and list(rows) == sorted(rows)


def test_prime_factors_of_large_numbers():
    for n, want in [(2147483647**2, {2147483647: 2}),
                    (999_999_999_989 * 1_000_003, {1_000_003: 1, 999_999_999_989: 1}),
                    (2**62, {2: 62}), (11_000_000, {2: 6, 5: 6, 11: 1}), (1, {})]:
        assert factorization.prime_factors(n) == want
    rng = np.random.default_rng(7)
    for n in rng.integers(2, 2**62, size=30, dtype=np.int64):
        factors = factorization.prime_factors(int(n))
        assert math.prod(p**e for p, e in factors.items()) == n
        assert all(factorization.is_prime(p) for p in factors)
    sieve = [i for i in range(2, 2000) if all(i % d for d in range(2, int(i**0.5) + 1))]
    assert [i for i in range(2000) if factorization.is_prime(i)] == sieve
    assert factorization.divisors(360) == [d for d in range(1, 361) if 360 % d == 0]


def test_param_count_beyond_the_dense_table_is_refused():
    shape = TTShape.create(10_000, 16, 100_000)
    with pytest.raises(ValueError, match=r"tt_rank \(1, 100000, 100000, 1\) gives "
                                         r"400,014,000,000 TT parameters, more than the "
                                         r"160,000 entries of the dense 10000 x 16 table"):
        tt_math.check_param_count(shape, 10_000)
    # Small tables may keep ranks above what the dense table needs.
    small = TTShape.create(300, 12, 16)
    assert small.num_params > 300 * 12
    assert tt_math.check_param_count(small, 300) == small.num_params
