"""Suggested row and column factors for a TT table (`suggest_shapes`). Pure Python."""

import bisect
import math
from typing import Tuple

from tt_keras.factorization import divisors
from tt_keras.shape_checks import MAX_ROWS, as_int, check_input_dim, check_num_cores

__all__ = ["suggest_shapes"]


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
    balance criterion would trade the documented (200, 220, 250) for odd factors or 65% padding.
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
    num_rows = check_input_dim(num_rows)
    dim = as_int(dim, "output_dim")
    k = check_num_cores(num_cores)
    return _suggest_row_shape(num_rows, k), _balanced_factorization(dim, k)[0]
