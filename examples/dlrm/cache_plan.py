"""Sizing the TT tables' hot-row caches from one budget, by the traffic of a data sample.

`plan_cache_sizes` counts how often each id of every TT table appears in the first batches
of the training stream, then splits the budget (bytes, or a coverage target) across the
tables with tt_keras.cache_budget: the most frequent ids over all tables get the rows.
"""

import numpy as np

from tt_keras.cache_budget import cache_row_bytes, split_cache_budget

from examples.dlrm.config import DLRMConfig

MB = 1e6


def sample_id_counts(dataset, features, num_batches: int) -> dict:
    """{feature: counts of its distinct ids} over the first num_batches of `dataset`
    (batches of (features, label), as examples/dlrm's sources give)."""
    seen = {name: [] for name in features}
    for features_batch, _ in dataset.take(num_batches):
        for name in features:
            seen[name].append(np.asarray(features_batch[name]).reshape(-1))
    return {name: np.unique(np.concatenate(ids), return_counts=True)[1]
            for name, ids in seen.items()}


def plan_cache_sizes(model_config: DLRMConfig, source) -> DLRMConfig:
    """model_config with cache_sizes split from its budget (unchanged without one)."""
    if not (model_config.plans_cache and model_config.tt_tables):
        return model_config
    features = model_config.tt_features
    counts = sample_id_counts(source.train(0), features, model_config.cache_plan_batches)
    row_bytes = cache_row_bytes(model_config.embedding_dim,
                                counter_multiple=model_config.cache_counter_multiple)
    sizes = split_cache_budget(
        counts, row_bytes, budget_bytes=model_config.cache_budget_mb * MB or None,
        coverage=model_config.cache_coverage or None,
        min_count=model_config.cache_plan_min_count)
    return model_config.replace(cache_sizes=tuple(sizes[name] for name in features))
