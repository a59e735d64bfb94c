"""The standard lookup workload and the timing helper the benchmarks share (NumPy only).

The largest Criteo-Kaggle table, 10,131,227 x 16 with row factors (200, 220, 250) and column
factors (2, 2, 4); batches of 2048 bags of 26 ids drawn Zipf(1.1) over its rows, summed per
bag: DLRM's lookups into its largest Kaggle table. No TensorFlow, so that the GPU benchmark
runs where there is none.
"""

import time

import numpy as np

NUM_ROWS = 10_131_227
ROW_SHAPE = (200, 220, 250)
COL_SHAPE = (2, 2, 4)
BAGS = 2048
BAG_SIZE = 26
ZIPF = 1.1


def zipf_ids(num_rows, size, exponent, order, rng):
    """Ids with P(rank k) proportional to k^-exponent over num_rows rows.

    order "rank": id k is the k-th most frequent row; "shuffled": frequencies are assigned to
    rows at random, as hashed ids would be.
    """
    weights = np.arange(1, num_rows + 1, dtype=np.float64) ** -exponent
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    ranks = np.searchsorted(cdf, rng.random(size))
    if order == "shuffled":
        return rng.permutation(num_rows)[ranks]
    return ranks


def interleaved_median_ms(fns, reps):
    """Median ms of each fn, timed in turns so that load from other processes on a shared
    machine falls on all of them alike (the ratios are what the benchmarks report)."""
    for fn in fns:
        fn()  # trace
        fn()  # warm caches and per-thread scratch
    times = [[] for _ in fns]
    for _ in range(reps):
        for fn, t in zip(fns, times):
            start = time.perf_counter()
            fn()
            t.append(time.perf_counter() - start)
    return [1000 * float(np.median(t)) for t in times]
