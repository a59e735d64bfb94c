"""One hot-row cache budget for a whole model, split across its TT tables by traffic.

Every example looks up one id in each table, so the tables see the same number of lookups;
what differs is how concentrated they are. A table whose head is heavy covers much of its
traffic with few cached rows, a flatter one needs many. `split_cache_budget` takes id
counts from a sample of the training data (ids need not be known, only how often each
was seen) and gives the cache slots to the globally most frequent ids, across tables,
until a byte budget is spent or a coverage target is reached. NumPy only.

    counts = {"C3": np.bincount(ids_c3), "C12": ..., ...}
    sizes = split_cache_budget(counts, cache_row_bytes(16), budget_bytes=3_000_000)
    layers = {name: TTEmbedding(..., cache_size=sizes[name]) for name in counts}
"""

import math
from typing import Dict, Mapping, Optional, Union

import numpy as np

# A cached row's share of its counter, as TTEmbedding sizes it (cache_counter_size
# defaults to 4 x cache_size): 4 int64 keys and 4 int64 counts.
DEFAULT_COUNTER_MULTIPLE = 4
_INT64_BYTES = 8


def cache_row_bytes(dim: int, float_size: int = 4,
                    counter_multiple: int = DEFAULT_COUNTER_MULTIPLE) -> int:
    """Bytes one cached row costs: the row, its id, and its share of the counter (keys and
    counts). TTEmbedding.cache_bytes adds 24 bytes per table (step and statistics)."""
    return dim * float_size + _INT64_BYTES + 2 * _INT64_BYTES * counter_multiple


def split_cache_budget(counts: Mapping[str, np.ndarray],
                       row_bytes: Union[int, Mapping[str, int]],
                       budget_bytes: Optional[float] = None,
                       coverage: Optional[float] = None,
                       min_count: int = 2) -> Dict[str, int]:
    """Cache rows per table: the most frequent ids over all tables, within the budget.

    Args:
      counts: {table: how often each id of the table was seen in the sample} (ids with a
        zero count may be included; the order does not matter).
      row_bytes: bytes a cached row costs (cache_row_bytes), one number or per table.
      budget_bytes: the bytes all caches may take together.
      coverage: stop once the cached ids take this fraction of the sample's lookups, over
        all tables (0 < coverage <= 1).
      min_count: ids seen fewer times are not cached: in a sample, an id seen once is as
        likely a cold id that happened to appear as a hot one.

    At least one of budget_bytes and coverage must be given; with both, the first limit
    reached decides. Ids are taken in order of count per byte of their row (with rows of
    one size: most frequent first); ids of equal counts are taken from the tables in turn,
    so that a limit reached among them splits them evenly.

    Returns:
      {table: cache size} for every table of `counts` (0 where nothing is worth caching).
    """
    if budget_bytes is None and coverage is None:
        raise ValueError("split_cache_budget needs budget_bytes or coverage (or both)")
    if budget_bytes is not None and not (math.isfinite(budget_bytes) and budget_bytes >= 0):
        raise ValueError(f"budget_bytes must be a finite number >= 0, got {budget_bytes!r}")
    if coverage is not None and not 0.0 < coverage <= 1.0:
        raise ValueError(f"coverage must be in (0, 1], got {coverage!r}")
    if isinstance(min_count, bool) or int(min_count) != min_count or min_count < 1:
        raise ValueError(f"min_count must be an integer >= 1, got {min_count!r}")
    tables = list(counts)
    costs = {t: row_bytes if isinstance(row_bytes, (int, np.integer)) else row_bytes[t]
             for t in tables}
    for t, cost in costs.items():
        if int(cost) != cost or cost <= 0:
            raise ValueError(f"row_bytes[{t!r}] must be a positive integer, got {cost!r}")

    # Candidates: every id seen min_count times or more, best count per byte first.
    table_of, count_of, turn_of = [], [], []
    total = 0
    for k, t in enumerate(tables):
        c = np.asarray(counts[t]).reshape(-1)
        if c.size and (not np.issubdtype(c.dtype, np.integer) or c.min() < 0):
            raise ValueError(f"counts[{t!r}] must be non-negative integers")
        total += int(c.sum())
        kept = np.sort(c[c >= min_count])[::-1]
        count_of.append(kept)
        table_of.append(np.full(kept.size, k))
        # Each id's place among the table's ids of the same count: ties go round the tables.
        first_of_count = np.searchsorted(-kept, -kept, side="left")
        turn_of.append(np.arange(kept.size) - first_of_count)
    count_all = np.concatenate(count_of) if count_of else np.zeros(0, np.int64)
    table_all = np.concatenate(table_of) if table_of else np.zeros(0, np.int64)
    turn_all = np.concatenate(turn_of) if turn_of else np.zeros(0, np.int64)
    cost_all = np.array([costs[tables[k]] for k in table_all], np.int64)
    order = np.lexsort((table_all, turn_all, -count_all / np.maximum(cost_all, 1)))
    count_all, table_all, cost_all = count_all[order], table_all[order], cost_all[order]

    take = count_all.size
    if budget_bytes is not None:
        take = min(take, int(np.searchsorted(np.cumsum(cost_all), budget_bytes, side="right")))
    if coverage is not None and total:
        needed = int(np.searchsorted(np.cumsum(count_all), coverage * total, side="left")) + 1
        take = min(take, needed)
    sizes = np.bincount(table_all[:take], minlength=len(tables))
    return {t: int(sizes[k]) for k, t in enumerate(tables)}
