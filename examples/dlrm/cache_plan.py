"""Sizing the TT tables' hot-row caches from one budget, by the traffic of a data sample.

`plan_cache_sizes` counts how often each id of every TT table appears in the first batches
of the training stream, then splits the budget (bytes, or a coverage target) across the
tables with tt_keras.cache_budget: the most frequent ids over all tables get the rows.
"""

from typing import Tuple

import numpy as np

from tt_keras.cache_budget import cache_row_bytes, split_cache_budget

from examples.dlrm.config import DLRMConfig

MB = 1e6


def sample_id_counts(dataset, features, num_batches: int) -> dict:
    """{feature: (distinct ids, their counts)} over the first num_batches of `dataset`
    (batches of (features, label), as examples/dlrm's sources give)."""
    seen = {name: [] for name in features}
    for features_batch, _ in dataset.take(num_batches):
        for name in features:
            seen[name].append(np.asarray(features_batch[name]).reshape(-1))
    return {name: np.unique(np.concatenate(ids), return_counts=True)
            for name, ids in seen.items()}


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
        budget_bytes=model_config.cache_budget_mb * MB or None,
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
