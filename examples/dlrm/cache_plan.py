"""Sizing the TT tables' hot-row caches from one budget, by the traffic of a data sample.

`plan_cache_sizes` counts how often each id of every TT table appears in the first batches
of the training stream, then splits the budget (bytes, a whole model's compression target,
or a coverage target) across the tables with tt_keras.cache_budget: the most frequent ids
over all tables get the rows.
"""

from typing import Tuple

import numpy as np

import tt_keras
from tt_keras.cache_budget import cache_row_bytes, split_cache_budget

from examples.dlrm import reports
from examples.dlrm.config import DLRMConfig
from examples.dlrm.data import CAT_FEATURES

MB = 1e6
FLOAT_BYTES = reports.FLOAT_BYTES


def sample_id_counts(dataset, features, num_batches: int) -> dict:
    """{feature: (distinct ids, their counts)} over the first num_batches of `dataset`
    (batches of (features, label), as examples/dlrm's sources give)."""
    seen = {name: [] for name in features}
    for features_batch, _ in dataset.take(num_batches):
        for name in features:
            seen[name].append(np.asarray(features_batch[name]).reshape(-1))
    return {name: np.unique(np.concatenate(ids), return_counts=True)
            for name, ids in seen.items()}


def compression_budget_bytes(model_config: DLRMConfig) -> float:
    """The caches' budget (bytes, counters included) that leaves all embedding memory --
    the dense tables, the TT cores and the caches -- cache_compression times smaller than
    the dense model's tables."""
    dim, sizes = model_config.embedding_dim, model_config.table_sizes
    tt_sizes = [sizes[CAT_FEATURES.index(f)] for f in model_config.tt_features]
    dense_bytes = FLOAT_BYTES * dim * sum(sizes)
    # A TT table with a one-row cache (and a one-entry counter), less that row: its cores
    # and its cache's fixed state (step, statistics), as TTEmbedding counts them.
    row_bytes = cache_row_bytes(dim, counter_multiple=1)
    tt_fixed = sum(
        tt_keras.TTEmbedding(n, dim, tt_rank=model_config.tt_rank,
                             num_cores=model_config.tt_cores, cache_size=1,
                             cache_counter_size=1).embedding_bytes - row_bytes
        for n in tt_sizes)
    fixed = FLOAT_BYTES * dim * (sum(sizes) - sum(tt_sizes)) + tt_fixed
    budget = dense_bytes / model_config.cache_compression - fixed
    if budget <= 0:
        raise ValueError(
            f"cache_compression={model_config.cache_compression:g}: the dense tables and TT "
            f"cores alone take {fixed / MB:.2f} MB, more than the dense model's "
            f"{dense_bytes / MB:.1f} MB / {model_config.cache_compression:g}; compress more "
            "tables (--tt_tables) or lower --cache_compression")
    return budget


def plan_cache_sizes(model_config: DLRMConfig, source) -> Tuple[DLRMConfig, dict]:
    """(model_config with cache_sizes split from its budget, the sample's
    {feature: (ids, counts)}); (model_config, {}) without a budget."""
    if not (model_config.plans_cache and model_config.tt_tables):
        return model_config, {}
    features = model_config.tt_features
    sample = sample_id_counts(source.train(0), features, model_config.cache_plan_batches)
    row_bytes = cache_row_bytes(model_config.embedding_dim,
                                counter_multiple=model_config.cache_counter_multiple)
    sizes = split_cache_budget(
        {name: counts for name, (_, counts) in sample.items()}, row_bytes,
        budget_bytes=(compression_budget_bytes(model_config) if model_config.cache_compression
                      else model_config.cache_budget_mb * MB) or None,
        coverage=model_config.cache_coverage or None,
        min_count=model_config.cache_plan_min_count)
    return model_config.replace(cache_sizes=tuple(sizes[name] for name in features)), sample


def seed_counters(model, model_config: DLRMConfig, sample: dict) -> None:
    """With cache_prefill, seeds every cached TT table's counter with the sample's counts."""
    if not model_config.cache_prefill:
        return
    for name, (ids, counts) in sample.items():
        table = model.embeddings.tables[name]
        if table.cache is not None:
            table.cache.seed_counter(ids, counts)
