"""The shape of a TT table (`TTShape`: row factors, column factors, ranks) and what follows
from it: parameter counts, compression ratios, the rank for a target ratio. NumPy only.
"""

import dataclasses
import math
import numbers
from typing import Optional, Sequence, Tuple, Union

from tt_keras.shape_checks import (
    MAX_CORES,
    MIN_CORES,
    as_int,
    as_int_tuple,
    check_addressable,
    check_cores,
    check_input_dim,
    check_num_cores,
    check_positive,
    format_shape,
)
from tt_keras.shape_suggestion import suggest_shapes

__all__ = [
    "RankSpec",
    "TTShape",
    "full_ranks",
    "num_params",
    "check_param_count",
    "compression_ratio",
    "plan_rank",
    "shape_of_cores",
    "MAX_PARAMS_ABOVE_DENSE",
]

# A table with more TT parameters than dense entries is refused above this many parameters:
# there the cores cost more than the table they compress (a too large tt_rank, typically),
# while small tables may keep such ranks for tests and experiments.
MAX_PARAMS_ABOVE_DENSE = 2**24

RankSpec = Union[int, Sequence[int]]


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
        row_shape = as_int_tuple(self.row_shape, "row_shape")
        col_shape = as_int_tuple(self.col_shape, "col_shape")
        ranks = as_int_tuple(self.ranks, "ranks")
        k = len(row_shape)
        if not MIN_CORES <= k <= MAX_CORES:
            raise ValueError(
                f"row_shape must have {MIN_CORES} to {MAX_CORES} factors (one per core), "
                f"got {format_shape(row_shape)} with {k}"
            )
        if len(col_shape) != k:
            raise ValueError(
                f"col_shape {format_shape(col_shape)} has {len(col_shape)} factors but row_shape "
                f"{format_shape(row_shape)} has {k}"
            )
        if len(ranks) != k + 1:
            raise ValueError(
                f"ranks must have num_cores + 1 = {k + 1} entries (r_0..r_k), "
                f"got {format_shape(ranks)} with {len(ranks)}"
            )
        if ranks[0] != 1 or ranks[-1] != 1:
            raise ValueError(
                f"ranks must start and end with 1 (r_0 = r_k = 1), got {format_shape(ranks)}")
        check_addressable(row_shape, "row_shape")
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
        num_rows = as_int(num_rows, "num_rows")
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
        num_rows = check_input_dim(num_rows)
        dim = as_int(dim, "output_dim")
        if row_shape is not None:
            row_shape = as_int_tuple(row_shape, "tt_row_shape")
            check_addressable(row_shape, "tt_row_shape")
        if col_shape is not None:
            col_shape = as_int_tuple(col_shape, "tt_col_shape")

        if num_cores is not None:
            k = check_num_cores(num_cores)
            for name, shape in (("tt_row_shape", row_shape), ("tt_col_shape", col_shape)):
                if shape is not None and len(shape) != k:
                    raise ValueError(
                        f"{name} {format_shape(shape)} has {len(shape)} factors but num_cores "
                        f"is {k}"
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
                    f"{name} must have {MIN_CORES} to {MAX_CORES} factors, got "
                    f"{format_shape(shape)}"
                )
        if row_shape is not None and col_shape is not None and len(row_shape) != len(col_shape):
            raise ValueError(
                f"tt_row_shape {format_shape(row_shape)} has {len(row_shape)} factors but "
                f"tt_col_shape {format_shape(col_shape)} has {len(col_shape)}"
            )

        if row_shape is None or col_shape is None:
            suggested_rows, suggested_cols = suggest_shapes(num_rows, dim, k)
            row_shape = suggested_rows if row_shape is None else row_shape
            col_shape = suggested_cols if col_shape is None else col_shape
        if math.prod(row_shape) < num_rows:
            raise ValueError(
                f"tt_row_shape {format_shape(row_shape)} holds {math.prod(row_shape)} rows but "
                f"input_dim is {num_rows}"
            )
        if math.prod(col_shape) != dim:
            raise ValueError(
                f"tt_col_shape {format_shape(col_shape)} multiplies to {math.prod(col_shape)} but "
                f"output_dim is {dim}"
            )
        return cls(row_shape, col_shape, full_ranks(tt_rank, k))


def full_ranks(tt_rank: RankSpec, k: int) -> Tuple[int, ...]:
    """(1, r_1..r_{k-1}, 1) from an int, k-1 inner ranks or k+1 full ranks."""
    if isinstance(tt_rank, numbers.Real) and not isinstance(tt_rank, bool):
        r = as_int(tt_rank, "tt_rank")
        return (1,) + (r,) * (k - 1) + (1,)
    if isinstance(tt_rank, bool) or isinstance(tt_rank, (str, bytes)) or not hasattr(
        tt_rank, "__iter__"
    ):
        raise ValueError(f"tt_rank must be an int or a list of ints, got {tt_rank!r}")
    ranks = tuple(tt_rank)
    try:
        ranks = as_int_tuple(ranks, "tt_rank")
    except ValueError:
        raise ValueError(
            f"tt_rank must hold positive integers, got {format_shape(ranks)}") from None
    if len(ranks) == k - 1:
        return (1,) + ranks + (1,)
    if len(ranks) == k + 1:
        if ranks[0] != 1 or ranks[-1] != 1:
            raise ValueError(
                f"tt_rank {format_shape(ranks)} has k+1 = {k + 1} entries, so it must start and "
                f"end with 1"
            )
        return ranks
    raise ValueError(
        f"tt_rank {format_shape(ranks)} has {len(ranks)} entries; with num_cores = {k} give an "
        f"int, {k - 1} inner ranks or {k + 1} ranks with 1 at both ends"
    )


def num_params(tt_shape: TTShape) -> int:
    """Number of TT parameters, sum_t p_t * r_{t-1} * q_t * r_t."""
    return tt_shape.num_params


def check_param_count(tt_shape: TTShape, num_rows: int) -> int:
    """tt_shape's parameter count, or a ValueError naming it when the cores would hold more
    parameters than both the dense num_rows x dim table and MAX_PARAMS_ABOVE_DENSE: such
    cores cost more than the table they stand for (a too large tt_rank, typically), and
    allocating them may not even be possible."""
    count = tt_shape.num_params
    dense = as_int(num_rows, "input_dim") * tt_shape.dim
    if count > max(dense, MAX_PARAMS_ABOVE_DENSE):
        raise ValueError(
            f"tt_rank {format_shape(tt_shape.ranks)} gives {count:,} TT parameters, more than the "
            f"{dense:,} entries of the dense {num_rows} x {tt_shape.dim} table they compress; "
            "lower tt_rank")
    return count


def compression_ratio(num_rows: int, dim: int, tt_shape: TTShape) -> float:
    """num_rows * dim / num_params(tt_shape); checks that dim matches the shape."""
    dim = as_int(dim, "output_dim")
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
    check_positive(target_ratio, "target_ratio")

    def ratio(r: int) -> float:
        shape = TTShape.create(num_rows, dim, r, row_shape, col_shape, num_cores)
        return shape.compression_ratio(num_rows)

    best = ratio(1)
    if best < target_ratio:
        shape = TTShape.create(num_rows, dim, 1, row_shape, col_shape, num_cores)
        raise ValueError(
            f"target_ratio {target_ratio} is unreachable: rank 1 with tt_row_shape "
            f"{format_shape(shape.row_shape)} and tt_col_shape {format_shape(shape.col_shape)} "
            f"compresses only {best:.4g}x"
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


def shape_of_cores(cores) -> TTShape:
    """The TTShape that a list of cores (p_t, r_{t-1}, q_t, r_t) has."""
    cores = check_cores(cores, dtype=None)
    return TTShape(
        tuple(c.shape[0] for c in cores),
        tuple(c.shape[2] for c in cores),
        (1,) + tuple(c.shape[3] for c in cores),
    )
