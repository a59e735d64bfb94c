"""split_cache_budget: one cache budget split across tables by the sample's id counts."""

import numpy as np
import pytest

from tt_keras.cache_budget import cache_row_bytes, split_cache_budget

pytestmark = pytest.mark.no_keras

COUNTS = {"a": np.array([10, 5, 1, 0]), "b": np.array([7, 2, 7])}


def test_row_bytes_count_the_row_its_id_and_its_counter_share():
    # 16 float32 + one int64 id + 4 counter entries of an int64 key and an int64 count.
    assert cache_row_bytes(16) == 64 + 8 + 64
    assert cache_row_bytes(16, float_size=2, counter_multiple=2) == 32 + 8 + 32


def test_budget_goes_to_the_most_frequent_ids_over_all_tables():
    # Candidates by count: a:10, b:7, b:7, a:5, b:2 (a:1 is below min_count).
    assert split_cache_budget(COUNTS, 100, budget_bytes=350) == {"a": 1, "b": 2}
    assert split_cache_budget(COUNTS, 100, budget_bytes=400) == {"a": 2, "b": 2}
    assert split_cache_budget(COUNTS, 100, budget_bytes=10_000) == {"a": 2, "b": 3}
    assert split_cache_budget(COUNTS, 100, budget_bytes=99) == {"a": 0, "b": 0}
    assert split_cache_budget(COUNTS, 100, budget_bytes=10_000, min_count=1) == {"a": 3, "b": 3}


def test_coverage_target_stops_at_the_first_ids_that_reach_it():
    total = 32  # lookups in the sample, both tables
    assert split_cache_budget(COUNTS, 100, coverage=17 / total) == {"a": 1, "b": 1}
    assert split_cache_budget(COUNTS, 100, coverage=18 / total) == {"a": 1, "b": 2}
    # Unreachable with ids seen twice or more: every such id, no more.
    assert split_cache_budget(COUNTS, 100, coverage=1.0) == {"a": 2, "b": 3}
    # Both limits: the first one reached.
    assert split_cache_budget(COUNTS, 100, budget_bytes=150, coverage=1.0) == {"a": 1, "b": 0}


def test_equal_counts_are_shared_out_between_tables():
    ones = {"a": np.ones(5, np.int64), "b": np.ones(3, np.int64), "c": np.array([9])}
    assert split_cache_budget(ones, 1, budget_bytes=5, min_count=1) == {"a": 2, "b": 2, "c": 1}
    assert split_cache_budget(ones, 1, budget_bytes=8, min_count=1) == {"a": 4, "b": 3, "c": 1}


def test_rows_of_different_sizes_go_by_count_per_byte():
    # a costs 50 per row, b 100: a:10 (0.2/B), a:5 (0.1), b:7 (0.07), b:7, b:2.
    sizes = split_cache_budget(COUNTS, {"a": 50, "b": 100}, budget_bytes=200)
    assert sizes == {"a": 2, "b": 1}


def test_the_split_follows_the_traffic_of_skewed_tables():
    rng = np.random.default_rng(0)
    heavy = np.bincount(rng.zipf(2.0, 100_000) % 50_000, minlength=50_000)
    flat = np.bincount(rng.integers(0, 2_000, 100_000), minlength=2_000)
    sizes = split_cache_budget({"heavy": heavy, "flat": flat}, 10, coverage=0.8)
    # The flat table's 2,000 ids each take 1/2,000 of its traffic: the heavy table covers
    # its share with far fewer rows per unit of traffic.
    assert sizes["flat"] > sizes["heavy"] > 0
    covered = (np.sort(heavy)[::-1][:sizes["heavy"]].sum()
               + np.sort(flat)[::-1][:sizes["flat"]].sum())
    assert covered >= 0.8 * (heavy.sum() + flat.sum())


@pytest.mark.parametrize("kwargs,needle", [
    ({}, "budget_bytes or coverage"),
    ({"budget_bytes": -1}, "budget_bytes must be"),
    ({"budget_bytes": float("nan")}, "budget_bytes must be"),
    ({"coverage": 0.0}, "coverage must be in"),
    ({"coverage": 1.5}, "coverage must be in"),
    ({"coverage": 0.5, "min_count": 0}, "min_count must be"),
])
def test_bad_arguments_are_named(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        split_cache_budget(COUNTS, 100, **kwargs)


def test_bad_counts_and_row_bytes_are_named():
    with pytest.raises(ValueError, match=r"counts\['a'\] must be non-negative integers"):
        split_cache_budget({"a": np.array([1.5])}, 100, coverage=0.5)
    with pytest.raises(ValueError, match=r"counts\['a'\] must be non-negative integers"):
        split_cache_budget({"a": np.array([-1, 3])}, 100, coverage=0.5)
    with pytest.raises(ValueError, match=r"row_bytes\['b'\] must be a positive integer"):
        split_cache_budget(COUNTS, {"a": 10, "b": 0}, coverage=0.5)
