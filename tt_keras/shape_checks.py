"""Checks of the arguments that describe a TT table: integers, shapes, core counts, cores.

Each raises a ValueError that names the argument and the value. Argument names follow the
Keras layer (input_dim, output_dim, tt_rank, tt_row_shape, tt_col_shape, num_cores) where a
function mirrors a layer argument, so a user who mistypes a layer argument reads the name
they typed. NumPy only.
"""

import math
import numbers
from typing import Tuple

import numpy as np

__all__ = [
    "MIN_CORES",
    "MAX_CORES",
    "MAX_ROWS",
    "as_int",
    "as_int_tuple",
    "format_shape",
    "check_input_dim",
    "check_addressable",
    "check_num_cores",
    "check_cores",
    "check_positive",
]

MIN_CORES = 2
MAX_CORES = 4
# The most rows a TT table may address (padding included). Ids are int64, and the ops check
# prod(p) <= 2^62 so that their digit arithmetic never overflows (TTDims::Finalize).
MAX_ROWS = 2**62


def as_int(value, name: str, minimum: int = 1) -> int:
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


def as_int_tuple(values, name: str, minimum: int = 1) -> Tuple[int, ...]:
    """A sequence of ints >= minimum as a tuple, or a ValueError naming `name` and the value."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise ValueError(f"{name} must be a sequence of integers, got {values!r}")
    values = tuple(values)
    out = []
    for v in values:
        try:
            out.append(as_int(v, name, minimum))
        except ValueError:
            raise ValueError(
                f"{name} must hold integers >= {minimum}, got {format_shape(values)}"
            ) from None
    return tuple(out)


def format_shape(values) -> str:
    """Format a shape as a plain tuple, so numpy ints do not print as np.int64(3)."""
    try:
        return str(tuple(int(v) for v in values))
    except (TypeError, ValueError):
        return repr(values)


def check_input_dim(num_rows) -> int:
    num_rows = as_int(num_rows, "input_dim")
    if num_rows > MAX_ROWS:
        raise ValueError(f"input_dim = {num_rows} exceeds 2^62 = {MAX_ROWS}, the most rows a "
                         "TT table can address")
    return num_rows


def check_addressable(row_shape: Tuple[int, ...], name: str):
    rows = math.prod(row_shape)
    if rows > MAX_ROWS:
        raise ValueError(f"{name} {format_shape(row_shape)} holds {rows} rows, more than 2^62 = "
                         f"{MAX_ROWS}, the most a TT table can address")


def check_num_cores(num_cores, name: str = "num_cores") -> int:
    if isinstance(num_cores, bool) or not isinstance(num_cores, numbers.Integral) or not (
        MIN_CORES <= num_cores <= MAX_CORES
    ):
        raise ValueError(
            f"{name} must be an integer in [{MIN_CORES}, {MAX_CORES}], got {num_cores!r}"
        )
    return int(num_cores)


def check_cores(cores, name: str = "cores", dtype=np.float64):
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


def check_positive(value, name: str) -> float:
    """`value` as a float > 0, or a ValueError naming `name` and the value (bool, NaN and
    infinities refused)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)
