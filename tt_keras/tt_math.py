"""Tensor-Train (TT) arithmetic for embedding tables, in NumPy only.

This module is the single source of truth for the TT conventions of tt_keras (spec section 1):

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

Argument names in error messages follow the Keras layer (input_dim, output_dim, tt_rank,
tt_row_shape, tt_col_shape, num_cores) where a function mirrors a layer argument, so a user who
mistypes a layer argument reads the name they typed.
"""

import bisect
import dataclasses
import math
import numbers
from typing import Optional, Sequence, Tuple, Union

import numpy as np

from tt_keras.factorization import divisors

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
]

MIN_CORES = 2
MAX_CORES = 4
# The most rows a TT table may address (padding included). Ids are int64, and the ops check
# prod(p) <= 2^62 so that their digit arithmetic never overflows (TTDims::Finalize).
MAX_ROWS = 2**62
# A table with more TT parameters than dense entries is refused above this many parameters:
# there the cores cost more than the table they compress (a too large tt_rank, typically),
# while small tables may keep such ranks for tests and experiments.
MAX_PARAMS_ABOVE_DENSE = 2**24

# How a bag's rows are pooled: "none" returns each id's row, the others follow
# tf.nn.embedding_lookup_sparse. The Keras layer spells "none" as None.
COMBINERS = ("none", "sum", "mean", "sqrtn")

RankSpec = Union[int, Sequence[int]]


# --------------------------------------------------------------------------------------------
# Argument checking
# --------------------------------------------------------------------------------------------


def _as_int(value, name: str, minimum: int = 1) -> int:
    """`value` as a Python int >= minimum, or a ValueError naming `name` and the value.

    Integral floats (16.0, as JSON configs may hold) are accepted; bool is refused although it
    is an int subclass, since `tt_rank=True` is a mistake rather than rank 1.
    """
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        result = int(value)
    elif isinstance(value, numbers.Real) and not isinstance(value, bool) and float(
        value
    ).is_integer():
        result = int(value)
    else:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if result < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return result


def _as_int_tuple(values, name: str, minimum: int = 1) -> Tuple[int, ...]:
    """A sequence of ints >= minimum as a tuple, or a ValueError naming `name` and the value."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise ValueError(f"{name} must be a sequence of integers, got {values!r}")
    values = tuple(values)
    out = []
    for v in values:
        try:
            out.append(_as_int(v, name, minimum))
        except ValueError:
            raise ValueError(
                f"{name} must hold integers >= {minimum}, got {_fmt(values)}"
            ) from None
    return tuple(out)


def _fmt(values) -> str:
    """Format a shape as a plain tuple, so numpy ints do not print as np.int64(3)."""
    try:
        return str(tuple(int(v) for v in values))
    except (TypeError, ValueError):
        return repr(values)


def _check_input_dim(num_rows) -> int:
    num_rows = _as_int(num_rows, "input_dim")
    if num_rows > MAX_ROWS:
        raise ValueError(f"input_dim = {num_rows} exceeds 2^62 = {MAX_ROWS}, the most rows a "
                         "TT table can address")
    return num_rows


def _check_addressable(row_shape: Tuple[int, ...], name: str):
    rows = math.prod(row_shape)
    if rows > MAX_ROWS:
        raise ValueError(f"{name} {_fmt(row_shape)} holds {rows} rows, more than 2^62 = "
                         f"{MAX_ROWS}, the most a TT table can address")


def _check_num_cores(num_cores, name: str = "num_cores") -> int:
    if isinstance(num_cores, bool) or not isinstance(num_cores, numbers.Integral) or not (
        MIN_CORES <= num_cores <= MAX_CORES
    ):
        raise ValueError(
            f"{name} must be an integer in [{MIN_CORES}, {MAX_CORES}], got {num_cores!r}"
        )
    return int(num_cores)


# --------------------------------------------------------------------------------------------
# TTShape
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TTShape:
    """The shape of a TT-compressed table: row factors, column factors and ranks.

    Attributes:
      row_shape: (p_1..p_k); their product is the padded row count, >= the table's rows.
      col_shape: (q_1..q_k); their product is the embedding dimension D.
      ranks: (r_0..r_k) with r_0 == r_k == 1.

    Sequences are normalised to tuples of Python ints. Use `TTShape.create` to build one from
    a table size and a rank, with suggested factors.
    """

    row_shape: Tuple[int, ...]
    col_shape: Tuple[int, ...]
    ranks: Tuple[int, ...]

    def __post_init__(self):
        row_shape = _as_int_tuple(self.row_shape, "row_shape")
        col_shape = _as_int_tuple(self.col_shape, "col_shape")
        ranks = _as_int_tuple(self.ranks, "ranks")
        k = len(row_shape)
        if not MIN_CORES <= k <= MAX_CORES:
            raise ValueError(
                f"row_shape must have {MIN_CORES} to {MAX_CORES} factors (one per core), "
                f"got {_fmt(row_shape)} with {k}"
            )
        if len(col_shape) != k:
            raise ValueError(
                f"col_shape {_fmt(col_shape)} has {len(col_shape)} factors but row_shape "
                f"{_fmt(row_shape)} has {k}"
            )
        if len(ranks) != k + 1:
            raise ValueError(
                f"ranks must have num_cores + 1 = {k + 1} entries (r_0..r_k), "
                f"got {_fmt(ranks)} with {len(ranks)}"
            )
        if ranks[0] != 1 or ranks[-1] != 1:
            raise ValueError(f"ranks must start and end with 1 (r_0 = r_k = 1), got {_fmt(ranks)}")
        _check_addressable(row_shape, "row_shape")
        # Frozen dataclass: normalised values must be written through object.__setattr__.
        object.__setattr__(self, "row_shape", row_shape)
        object.__setattr__(self, "col_shape", col_shape)
        object.__setattr__(self, "ranks", ranks)

    @property
    def num_cores(self) -> int:
        """k, the number of cores."""
        return len(self.row_shape)

    @property
    def padded_rows(self) -> int:
        """prod(row_shape): the rows the cores can address, padding included."""
        return math.prod(self.row_shape)

    @property
    def dim(self) -> int:
        """prod(col_shape): the embedding dimension D."""
        return math.prod(self.col_shape)

    @property
    def inner_ranks(self) -> Tuple[int, ...]:
        """(r_1..r_{k-1})."""
        return self.ranks[1:-1]

    @property
    def core_shapes(self):
        """Shapes (p_t, r_{t-1}, q_t, r_t) of the k cores, as a list of tuples."""
        return [
            (p, self.ranks[t], q, self.ranks[t + 1])
            for t, (p, q) in enumerate(zip(self.row_shape, self.col_shape))
        ]

    @property
    def num_params(self) -> int:
        """sum_t p_t * r_{t-1} * q_t * r_t."""
        return sum(math.prod(s) for s in self.core_shapes)

    def compression_ratio(self, num_rows: int) -> float:
        """num_rows * dim / num_params: how many times smaller than the dense table."""
        num_rows = _as_int(num_rows, "num_rows")
        return num_rows * self.dim / self.num_params

    @classmethod
    def create(
        cls,
        num_rows: int,
        dim: int,
        tt_rank: RankSpec,
        row_shape: Optional[Sequence[int]] = None,
        col_shape: Optional[Sequence[int]] = None,
        num_cores: Optional[int] = None,
    ) -> "TTShape":
        """Build the TT shape of a num_rows x dim table, suggesting factors that are omitted.

        Args:
          num_rows: N, rows of the table (the layer's input_dim).
          dim: D, the embedding dimension (the layer's output_dim).
          tt_rank: an int (every inner rank), a list of k-1 inner ranks, or a list of k+1
            ranks with 1 at both ends.
          row_shape: row factors (the layer's tt_row_shape); product must be >= num_rows.
            Suggested by `suggest_shapes` when None.
          col_shape: column factors (tt_col_shape); product must equal dim exactly.
            Suggested by `suggest_shapes` when None.
          num_cores: k in 2..4. None means: the length of a given row_shape/col_shape,
            else 3. Given explicitly, it must agree with the given shapes.

        Raises:
          ValueError naming the offending argument (input_dim, output_dim, tt_rank,
          tt_row_shape, tt_col_shape, num_cores) and its value.
        """
        num_rows = _check_input_dim(num_rows)
        dim = _as_int(dim, "output_dim")
        if row_shape is not None:
            row_shape = _as_int_tuple(row_shape, "tt_row_shape")
            _check_addressable(row_shape, "tt_row_shape")
        if col_shape is not None:
            col_shape = _as_int_tuple(col_shape, "tt_col_shape")

        if num_cores is not None:
            k = _check_num_cores(num_cores)
            for name, shape in (("tt_row_shape", row_shape), ("tt_col_shape", col_shape)):
                if shape is not None and len(shape) != k:
                    raise ValueError(
                        f"{name} {_fmt(shape)} has {len(shape)} factors but num_cores is {k}"
                    )
        elif row_shape is not None:
            k = len(row_shape)
        elif col_shape is not None:
            k = len(col_shape)
        else:
            k = 3
        for name, shape in (("tt_row_shape", row_shape), ("tt_col_shape", col_shape)):
            if shape is not None and not MIN_CORES <= len(shape) <= MAX_CORES:
                raise ValueError(
                    f"{name} must have {MIN_CORES} to {MAX_CORES} factors, got {_fmt(shape)}"
                )
        if row_shape is not None and col_shape is not None and len(row_shape) != len(col_shape):
            raise ValueError(
                f"tt_row_shape {_fmt(row_shape)} has {len(row_shape)} factors but "
                f"tt_col_shape {_fmt(col_shape)} has {len(col_shape)}"
            )

        if row_shape is None or col_shape is None:
            suggested_rows, suggested_cols = suggest_shapes(num_rows, dim, k)
            row_shape = suggested_rows if row_shape is None else row_shape
            col_shape = suggested_cols if col_shape is None else col_shape
        if math.prod(row_shape) < num_rows:
            raise ValueError(
                f"tt_row_shape {_fmt(row_shape)} holds {math.prod(row_shape)} rows but "
                f"input_dim is {num_rows}"
            )
        if math.prod(col_shape) != dim:
            raise ValueError(
                f"tt_col_shape {_fmt(col_shape)} multiplies to {math.prod(col_shape)} but "
                f"output_dim is {dim}"
            )
        return cls(row_shape, col_shape, _full_ranks(tt_rank, k))


def _full_ranks(tt_rank: RankSpec, k: int) -> Tuple[int, ...]:
    """(1, r_1..r_{k-1}, 1) from an int, k-1 inner ranks or k+1 full ranks."""
    if isinstance(tt_rank, numbers.Real) and not isinstance(tt_rank, bool):
        r = _as_int(tt_rank, "tt_rank")
        return (1,) + (r,) * (k - 1) + (1,)
    if isinstance(tt_rank, bool) or isinstance(tt_rank, (str, bytes)) or not hasattr(
        tt_rank, "__iter__"
    ):
        raise ValueError(f"tt_rank must be an int or a list of ints, got {tt_rank!r}")
    ranks = tuple(tt_rank)
    try:
        ranks = _as_int_tuple(ranks, "tt_rank")
    except ValueError:
        raise ValueError(f"tt_rank must hold positive integers, got {_fmt(ranks)}") from None
    if len(ranks) == k - 1:
        return (1,) + ranks + (1,)
    if len(ranks) == k + 1:
        if ranks[0] != 1 or ranks[-1] != 1:
            raise ValueError(
                f"tt_rank {_fmt(ranks)} has k+1 = {k + 1} entries, so it must start and "
                f"end with 1"
            )
        return ranks
    raise ValueError(
        f"tt_rank {_fmt(ranks)} has {len(ranks)} entries; with num_cores = {k} give an int, "
        f"{k - 1} inner ranks or {k + 1} ranks with 1 at both ends"
    )


# --------------------------------------------------------------------------------------------
# Shape suggestion
# --------------------------------------------------------------------------------------------


def _balanced_factorization(n: int, k: int) -> Tuple[Tuple[int, ...], float]:
    """The k factors of n (ascending, 1s allowed) with the least spread of their logarithms.

    Spread = sum_t log(f_t)^2; as sum_t log(f_t) = log(n) is fixed, that is the variance of the
    log-factors up to constants: 0 for equal factors. Ties go to the lexicographically
    smallest factor tuple, which keeps the result deterministic. Returns (factors, spread).

    A branch-and-bound search: each factor is tried from the most balanced candidate down,
    and a branch stops once even an equal split of what is left cannot beat the best found
    (numbers near 2^62 have up to ~10^5 divisors; an exhaustive search took a minute).
    """
    divs = divisors(n)
    best = [None, math.inf]

    def offer(factors: tuple, total: float):
        if total < best[1] - 1e-12 or (total <= best[1] + 1e-12 and factors < best[0]):
            best[0], best[1] = factors, total

    def search(rest: int, parts: int, lo: int, chosen: tuple, cost: float):
        if parts == 1:
            if rest >= lo:
                offer(chosen + (rest,), cost + math.log(rest) ** 2)
            return
        # Ascending factors: d is the smallest of the remaining `parts`, so d^parts <= rest.
        top = bisect.bisect_right(divs, _integer_root(rest, parts))
        for i in range(top - 1, bisect.bisect_left(divs, lo) - 1, -1):
            d = divs[i]
            if rest % d:
                continue
            cost_d = cost + math.log(d) ** 2
            # The rest split evenly is the best any completion can do, and it only gets
            # worse as d shrinks further below the balanced point.
            if cost_d + math.log(rest // d) ** 2 / (parts - 1) > best[1] + 1e-12:
                break
            search(rest // d, parts - 1, d, chosen + (d,), cost_d)

    search(n, k, 1, (), 0.0)
    factors = best[0]
    mean = math.log(n) / k
    spread = sum((math.log(f) - mean) ** 2 for f in factors)
    return factors, spread


def _integer_root(n: int, k: int) -> int:
    """The largest r with r^k <= n."""
    r = int(round(n ** (1.0 / k)))
    while r**k > n:
        r -= 1
    while (r + 1) ** k <= n:
        r += 1
    return r


def _row_candidates(num_rows: int):
    """Totals >= num_rows that _suggest_row_shape considers, ascending.

    num_rows rounded up to a multiple of 10^i for every i with 10^i <= num_rows (the
    reference's candidates). Round numbers have many small prime factors and so split evenly,
    and every candidate is below 2 * num_rows, so padding at most doubles the rows.

    Why not every n in a window above num_rows, or multiples of 2^i: those contain splits more
    balanced than the round ones (216 * 217 * 217 = 10,171,224, or 256^3 for 10,131,227), so a
    balance criterion would trade the spec's (200, 220, 250) for odd factors or 65% padding.
    """
    cands = set()
    step = 1
    while step <= num_rows:
        cands.add(-(-num_rows // step) * step)
        step *= 10
    # Near 2^62 rounding up can leave the addressable range; num_rows itself always remains.
    return sorted(c for c in cands if c <= MAX_ROWS)


def _suggest_row_shape(num_rows: int, k: int) -> Tuple[int, ...]:
    best, best_spread = None, math.inf
    for total in _row_candidates(num_rows):
        factors, spread = _balanced_factorization(total, k)
        # Strictly better only: on ties the smaller total (less padding) wins.
        if spread < best_spread - 1e-12:
            best, best_spread = factors, spread
    return best


def suggest_shapes(
    num_rows: int, dim: int, num_cores: int = 3
) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """Suggest row and column factors for a num_rows x dim table with num_cores cores.

    Rule for rows: among the candidate totals n >= num_rows -- num_rows rounded up to a multiple
    of 10^i, for each i with 10^i <= num_rows (so n < 2 * num_rows) -- take the one whose most
    balanced k-factor split is the most balanced, balance being the variance of the factors'
    logarithms; ties go to the smaller total. Like FBTT-Embedding (whose candidates these are)
    this rounds N up to a round number that splits evenly: 10,131,227 -> 11,000,000 =
    200 * 220 * 250. Balance is the only criterion, so a more even split may cost some
    padding (2,202,608 rows with 2 cores -> (1600, 1875) = 3,000,000); pass explicit shapes to
    control it.
    Rows below 10 have no candidate but themselves (7 -> (1, 1, 7)).

    Rule for columns: the most balanced split of dim itself, so prod == dim exactly for every
    dim (96 -> (4, 4, 6), 128 -> (4, 4, 8)); a prime dim gives (1, .., 1, dim).

    Factors are returned in ascending order, and may be 1 when the number is small or prime.

    Args:
      num_rows: N >= 1 (the layer's input_dim).
      dim: D >= 1 (the layer's output_dim).
      num_cores: k in 2..4.

    Returns:
      (row_shape, col_shape), tuples of k ints with prod(row_shape) >= num_rows and
      prod(col_shape) == dim.
    """
    num_rows = _check_input_dim(num_rows)
    dim = _as_int(dim, "output_dim")
    k = _check_num_cores(num_cores)
    return _suggest_row_shape(num_rows, k), _balanced_factorization(dim, k)[0]


# --------------------------------------------------------------------------------------------
# Digits, sizes, ranks
# --------------------------------------------------------------------------------------------


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
    row_shape = _as_int_tuple(row_shape, "row_shape")
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
            f"row_shape {_fmt(row_shape)}"
        )
    return [(ids // stride) % p for p, stride in zip(row_shape, row_strides(row_shape))]


def num_params(tt_shape: TTShape) -> int:
    """Number of TT parameters, sum_t p_t * r_{t-1} * q_t * r_t."""
    return tt_shape.num_params


def check_param_count(tt_shape: TTShape, num_rows: int) -> int:
    """tt_shape's parameter count, or a ValueError naming it when the cores would hold more
    parameters than both the dense num_rows x dim table and MAX_PARAMS_ABOVE_DENSE: such
    cores cost more than the table they stand for (a too large tt_rank, typically), and
    allocating them may not even be possible."""
    count = tt_shape.num_params
    dense = _as_int(num_rows, "input_dim") * tt_shape.dim
    if count > max(dense, MAX_PARAMS_ABOVE_DENSE):
        raise ValueError(
            f"tt_rank {_fmt(tt_shape.ranks)} gives {count:,} TT parameters, more than the "
            f"{dense:,} entries of the dense {num_rows} x {tt_shape.dim} table they compress; "
            "lower tt_rank")
    return count


def compression_ratio(num_rows: int, dim: int, tt_shape: TTShape) -> float:
    """num_rows * dim / num_params(tt_shape); checks that dim matches the shape."""
    dim = _as_int(dim, "output_dim")
    if dim != tt_shape.dim:
        raise ValueError(f"output_dim is {dim} but tt_shape.col_shape gives {tt_shape.dim}")
    return tt_shape.compression_ratio(num_rows)


def plan_rank(
    num_rows: int,
    dim: int,
    target_ratio: float,
    row_shape: Optional[Sequence[int]] = None,
    col_shape: Optional[Sequence[int]] = None,
    num_cores: Optional[int] = None,
) -> int:
    """The largest uniform TT rank whose compression ratio is still >= target_ratio.

    Shapes are as in `TTShape.create` (suggested when omitted). The ratio falls strictly as the
    rank grows (parameters grow like r^2), so the answer is found by doubling then bisection.
    A small target may give a rank larger than the unfoldings can use; that is the caller's
    trade-off to make.

    Raises:
      ValueError if target_ratio is not a positive number, or if even rank 1 compresses less
      than target_ratio (the message gives the rank-1 ratio).
    """
    if (
        isinstance(target_ratio, bool)
        or not isinstance(target_ratio, numbers.Real)
        or not math.isfinite(target_ratio)
        or target_ratio <= 0
    ):
        raise ValueError(f"target_ratio must be a positive finite number, got {target_ratio!r}")

    def ratio(r: int) -> float:
        shape = TTShape.create(num_rows, dim, r, row_shape, col_shape, num_cores)
        return shape.compression_ratio(num_rows)

    best = ratio(1)
    if best < target_ratio:
        shape = TTShape.create(num_rows, dim, 1, row_shape, col_shape, num_cores)
        raise ValueError(
            f"target_ratio {target_ratio} is unreachable: rank 1 with tt_row_shape "
            f"{_fmt(shape.row_shape)} and tt_col_shape {_fmt(shape.col_shape)} compresses "
            f"only {best:.4g}x"
        )
    lo, hi = 1, 2  # invariant: ratio(lo) >= target
    while ratio(hi) >= target_ratio:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ratio(mid) >= target_ratio:
            lo = mid
        else:
            hi = mid
    return lo


# --------------------------------------------------------------------------------------------
# Dense reconstruction (the oracle)
# --------------------------------------------------------------------------------------------


def _check_cores(cores, name: str = "cores", dtype=np.float64):
    """Cores as arrays (cast to dtype unless None), checked to be 4-D, chained by rank and
    with end ranks 1."""
    cores = [np.asarray(c) for c in cores]
    if not MIN_CORES <= len(cores) <= MAX_CORES:
        raise ValueError(f"{name} must hold {MIN_CORES} to {MAX_CORES} cores, got {len(cores)}")
    for t, c in enumerate(cores):
        if c.ndim != 4:
            raise ValueError(
                f"{name}[{t}] must have shape (p_t, r_(t-1), q_t, r_t), got shape {c.shape}"
            )
    if cores[0].shape[1] != 1 or cores[-1].shape[3] != 1:
        raise ValueError(
            f"the first core's r_0 and the last core's r_k must be 1, got shapes "
            f"{cores[0].shape} and {cores[-1].shape}"
        )
    for t in range(len(cores) - 1):
        if cores[t].shape[3] != cores[t + 1].shape[1]:
            raise ValueError(
                f"{name}[{t}] has shape {cores[t].shape} and {name}[{t + 1}] has shape "
                f"{cores[t + 1].shape}: rank {cores[t].shape[3]} != {cores[t + 1].shape[1]}"
            )
    return cores if dtype is None else [c.astype(dtype) for c in cores]


def shape_of_cores(cores) -> TTShape:
    """The TTShape that a list of cores (p_t, r_{t-1}, q_t, r_t) has."""
    cores = _check_cores(cores, dtype=None)
    return TTShape(
        tuple(c.shape[0] for c in cores),
        tuple(c.shape[2] for c in cores),
        (1,) + tuple(c.shape[3] for c in cores),
    )


def to_dense(cores, num_rows: Optional[int] = None) -> np.ndarray:
    """The dense table that TT cores represent, computed in float64.

    Args:
      cores: k arrays shaped (p_t, r_{t-1}, q_t, r_t).
      num_rows: keep only the first num_rows rows (default: all prod(p) rows, padding too).

    Returns:
      float64 array [num_rows or prod(p), prod(q)].
    """
    cores = _check_cores(cores)
    padded = math.prod(c.shape[0] for c in cores)
    if num_rows is not None:
        num_rows = _as_int(num_rows, "num_rows")
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
    cores = _check_cores(cores)
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


# --------------------------------------------------------------------------------------------
# TT-SVD
# --------------------------------------------------------------------------------------------


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
    row_shape = _as_int_tuple(row_shape, "row_shape")
    col_shape = _as_int_tuple(col_shape, "col_shape")
    k = len(row_shape)
    _check_num_cores(k, "len(row_shape)")
    if len(col_shape) != k:
        raise ValueError(
            f"col_shape {_fmt(col_shape)} has {len(col_shape)} factors but row_shape "
            f"{_fmt(row_shape)} has {k}"
        )
    num_rows, dim = table.shape
    padded = math.prod(row_shape)
    if num_rows > padded:
        raise ValueError(
            f"row_shape {_fmt(row_shape)} holds {padded} rows but the table has {num_rows}"
        )
    if dim != math.prod(col_shape):
        raise ValueError(
            f"col_shape {_fmt(col_shape)} multiplies to {math.prod(col_shape)} but the table "
            f"has {dim} columns"
        )
    inner = _full_ranks(max_rank, k)[1:-1]

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


# --------------------------------------------------------------------------------------------
# FBTT-Embedding interchange
# --------------------------------------------------------------------------------------------


def cores_from_fbtt(fbtt_cores, tt_shape: TTShape):
    """Cores from FBTT-Embedding's storage [p_t, r_{t-1} * q_t * r_t] (a pure reshape).

    A leading num_tables axis of size 1 (TableBatchedTTEmbeddingBag's [1, p_t, ...]) is
    accepted and dropped. Raises ValueError when a core's size does not match tt_shape.
    """
    if not isinstance(tt_shape, TTShape):
        raise ValueError(f"tt_shape must be a TTShape, got {tt_shape!r}")
    fbtt_cores = [np.asarray(c) for c in fbtt_cores]
    if len(fbtt_cores) != tt_shape.num_cores:
        raise ValueError(
            f"fbtt_cores has {len(fbtt_cores)} cores but tt_shape has {tt_shape.num_cores}"
        )
    out = []
    for t, (c, shape) in enumerate(zip(fbtt_cores, tt_shape.core_shapes)):
        expected = (shape[0], shape[1] * shape[2] * shape[3])
        got = c.shape[1:] if c.ndim == 3 and c.shape[0] == 1 else c.shape
        if tuple(got) != expected:
            raise ValueError(
                f"fbtt_cores[{t}] has shape {c.shape} but tt_shape needs {expected} "
                f"(p_t, r_(t-1) * q_t * r_t)"
            )
        out.append(c.reshape(shape))
    return out


def cores_to_fbtt(cores):
    """Cores in FBTT-Embedding's storage [p_t, r_{t-1} * q_t * r_t] (a pure reshape)."""
    cores = _check_cores(cores, dtype=None)
    return [c.reshape(c.shape[0], -1) for c in cores]
