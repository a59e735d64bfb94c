"""examples/dlrm/model.py: the TFRS DLRM with TTEmbedding tables (legacy Keras only)."""

import inspect
import os

import numpy as np
import pytest
import tensorflow as tf

# TFRS 0.7.7 imports only under legacy Keras (TF_USE_LEGACY_KERAS=1).
pytest.importorskip("tensorflow_recommenders", exc_type=ImportError,
                    reason="the DLRM example needs TF_USE_LEGACY_KERAS=1")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import tt_keras  # noqa: E402

from examples.dlrm import data as D  # noqa: E402
from examples.dlrm import model as M  # noqa: E402
from examples.dlrm.config import INIT_ABLATION  # noqa: E402


def _batch(cfg, batch_size, seed=0, index=0):
    src = D.SyntheticCriteo(cfg.table_sizes, seed=seed)
    return src.batch(index, batch_size)


def test_tt_features_are_the_largest_tables():
    cfg = M.DLRMConfig(tt_tables=3)
    assert cfg.tt_features == ("C3", "C12", "C21")
    assert M.DLRMConfig(tt_tables=7).tt_features == ("C3", "C4", "C12", "C16", "C21", "C24",
                                                      "C26")
    terabyte = M.DLRMConfig(table_sizes=D.TERABYTE_TABLE_SIZES, tt_tables=5)
    assert terabyte.tt_features == ("C1", "C10", "C20", "C21", "C22")
    with pytest.raises(ValueError):
        M.DLRMConfig(tt_tables=27)


def test_layers_and_sizes():
    cfg = M.tiny_config()
    model = M.build_model(cfg)
    emb = model.embeddings
    for name in M.CAT_FEATURES:
        layer = emb.tables[name]
        if name in cfg.tt_features:
            assert isinstance(layer, tt_keras.TTEmbedding)
            assert layer.input_dim == cfg.table_sizes[M.CAT_FEATURES.index(name)]
        else:
            assert not isinstance(layer, tt_keras.TTEmbedding)
    tt_bytes = sum(emb.tables[n].embedding_bytes for n in cfg.tt_features)
    dense_part = 4 * cfg.embedding_dim * sum(
        n for name, n in zip(M.CAT_FEATURES, cfg.table_sizes) if name not in cfg.tt_features)
    assert emb.embedding_bytes == tt_bytes + dense_part
    assert emb.embedding_bytes < emb.uncompressed_bytes
    dense = M.build_model(cfg.replace(tt_tables=0))
    assert dense.embeddings.embedding_bytes == dense.embeddings.uncompressed_bytes
    # Bottom MLP ends at D; top MLP ends at 1.
    assert model._bottom_stack._sublayers[-1].units == cfg.embedding_dim
    assert model._top_stack._sublayers[-1].units == 1


@pytest.mark.parametrize("kind", ["dense", "tt"])
def test_one_training_step(kind):
    cfg = M.tiny_config(tt_tables=3 if kind == "tt" else 0)
    model = M.build_model(cfg, "sgd", 0.5)
    watched = [v for v in model.embeddings.trainable_variables]
    before = [v.numpy().copy() for v in watched]
    feats, labels = _batch(cfg, 32)
    logs = model.train_on_batch(feats, labels, return_dict=True)
    assert np.isfinite(logs["loss"])
    assert int(model.optimizer.iterations.numpy()) == 1
    changed = [not np.array_equal(b, v.numpy()) for b, v in zip(before, watched)]
    assert any(changed)
    if kind == "tt":
        for name in cfg.tt_features:
            cores = model.embeddings.tables[name].cores
            idx = [i for i, v in enumerate(watched) if any(v is c for c in cores)]
            assert idx and all(changed[i] for i in idx), name
    preds = model.predict(feats, verbose=0)
    assert preds.shape == (32,) and np.all((preds >= 0) & (preds <= 1))


@pytest.mark.parametrize("kind", ["dense", "tt"])
def test_batch_of_one(kind):
    cfg = M.tiny_config(tt_tables=3 if kind == "tt" else 0)
    model = M.build_model(cfg)
    feats, labels = _batch(cfg, 3)
    full = model(feats, training=False).numpy()
    one = {k: v[:1] for k, v in feats.items()}
    out = model(one, training=False)
    assert out.shape == (1,)
    np.testing.assert_allclose(out.numpy(), full[:1], rtol=1e-5, atol=1e-6)
    # Ids shaped [B, 1] work too, and so does TFRS's own input layout.
    col = {k: (tf.reshape(v, [-1, 1]) if k != "dense" else v) for k, v in one.items()}
    np.testing.assert_allclose(model(col).numpy(), full[:1], rtol=1e-5, atol=1e-6)
    tfrs_layout = {"dense_features": one["dense"],
                   "sparse_features": {k: one[k] for k in M.CAT_FEATURES}}
    np.testing.assert_allclose(model(tfrs_layout).numpy(), full[:1], rtol=1e-5, atol=1e-6)
    # Training and evaluation on batches of one.
    ds = tf.data.Dataset.from_tensor_slices((feats, labels)).batch(1)
    model.fit(ds, epochs=1, verbose=0)
    assert int(model.optimizer.iterations.numpy()) == 3
    result = model.evaluate(ds, return_dict=True, verbose=0)
    assert np.isfinite(result["logloss"])


@pytest.mark.parametrize("init", INIT_ABLATION)
def test_ablation_initializers_build(init):
    cfg = M.tiny_config(tt_initializer=init)
    model = M.build_model(cfg)
    feats, _ = _batch(cfg, 4)
    assert np.all(np.isfinite(model(feats).numpy()))


def test_hot_row_cache_is_trained_through_the_model():
    if "cache_size" not in inspect.signature(tt_keras.TTEmbedding.__init__).parameters:
        pytest.skip("this TTEmbedding has no hot-row cache (cache_size) yet")
    cfg = M.tiny_config(cache_size=16, cache_warmup_steps=1)
    model = M.build_model(cfg)
    no_cache = M.build_model(cfg.replace(cache_size=0))
    for name in cfg.tt_features:
        assert (model.embeddings.tables[name].embedding_bytes
                >= no_cache.embeddings.tables[name].embedding_bytes + 16 * 4 * cfg.embedding_dim)
    assert model.embeddings.embedding_bytes > no_cache.embeddings.embedding_bytes
    src = D.SyntheticCriteo(cfg.table_sizes, seed=2)
    # fit passes training=True down to the TT tables: warm-up, then the cache fills.
    model.fit(src.dataset(64), steps_per_epoch=3, epochs=1, verbose=0)
    rates = model.embeddings.cache_hit_rates()
    assert set(rates) == set(cfg.tt_features)
    assert all(r > 0 for r in rates.values()), rates  # power-law ids: hot rows are hit
    # Inference only reads the cache.
    layer = model.embeddings.tables[cfg.tt_features[0]]
    step = int(layer.cache.cache_step.numpy())
    feats, _ = _batch(cfg, 8)
    model(feats, training=False)
    model.predict(feats, verbose=0)
    assert int(layer.cache.cache_step.numpy()) == step


def test_separate_optimizer_for_the_tt_cores():
    """tt_optimizer: the cores get their own optimizer (Adagrad here: accumulators for the
    cores alone), everything else -- cached rows included -- the model's SGD; one step
    counts as one."""
    cfg = M.tiny_config(cache_size=20, cache_warmup_steps=0)
    model = M.build_model(cfg, "sgd", 0.1, tt_optimizer="adagrad", tt_learning_rate=0.01)
    cores = model.embeddings.tt_core_variables()
    assert len(cores) == 3 * cfg.tt_tables
    sgd, adagrad = model.optimizer.optimizers
    assert isinstance(sgd, tf.keras.optimizers.legacy.SGD)
    assert isinstance(adagrad, tf.keras.optimizers.legacy.Adagrad)
    assert float(adagrad.learning_rate) == pytest.approx(0.01)
    before = [c.numpy().copy() for c in cores]
    model.fit(tf.data.Dataset.from_tensors(_batch(cfg, 32)).repeat(2), epochs=1, verbose=0)
    assert int(model.optimizer.iterations.numpy()) == 2
    for core in cores:  # Adagrad's slots: the cores' and nothing else's
        assert adagrad.get_slot(core, "accumulator").shape == core.shape
    assert len(adagrad.weights) == len(cores) + 1  # + its iterations
    assert [v.name for v in sgd.weights] == [sgd.iterations.name]
    assert all(not np.allclose(b, c.numpy()) for b, c in zip(before, cores))
    with pytest.raises(ValueError, match="must be one of"):
        M.build_model(cfg, "sgd", 0.1, tt_optimizer="rmsprop")


def test_tt_init_scale_scales_the_rows_standard_deviation():
    cfg = M.tiny_config(tt_init_scale=8.0)
    init = M.DLRMEmbeddings(cfg).tables[cfg.tt_features[0]].embeddings_initializer
    rows = cfg.table_sizes[M.CAT_FEATURES.index(cfg.tt_features[0])]
    assert isinstance(init, tt_keras.SampledGaussian)
    assert init.target_variance(rows) == pytest.approx(64.0 / (3.0 * rows))
    default = M.DLRMEmbeddings(cfg.replace(tt_init_scale=1.0)).tables[
        cfg.tt_features[0]].embeddings_initializer
    assert default.target_variance(rows) == pytest.approx(1.0 / (3.0 * rows))


def test_cache_budget_is_split_by_the_sample_and_built(tmp_path):
    from tt_keras.cache_budget import cache_row_bytes  # pylint: disable=import-outside-toplevel

    from examples.dlrm import cache_plan, sources  # pylint: disable=import-outside-toplevel
    from examples.dlrm import config as C  # pylint: disable=import-outside-toplevel

    cfg = M.tiny_config(cache_budget_mb=0.004, cache_plan_batches=20, cache_counter_multiple=2)
    data = C.DataConfig(batch_size=64)
    source = sources.make_source(data, cfg.table_sizes, seed=0)
    planned, sample = cache_plan.plan_cache_sizes(cfg, source)
    row = cache_row_bytes(cfg.embedding_dim, counter_multiple=2)
    assert len(planned.cache_sizes) == cfg.tt_tables
    assert 0 < sum(planned.cache_sizes) <= 4000 // row
    # The split follows the sample: each table's rows are its ids seen twice or more,
    # taken most frequent first over all tables.
    counts = {f: c for f, (_, c) in
              cache_plan.sample_id_counts(source.train(0), cfg.tt_features, 20).items()}
    assert all(np.array_equal(counts[f], sample[f][1]) for f in cfg.tt_features)
    threshold = min(np.sort(counts[f])[::-1][s - 1] for f, s in
                    zip(cfg.tt_features, planned.cache_sizes) if s)
    for f, s in zip(cfg.tt_features, planned.cache_sizes):
        assert (counts[f] > threshold).sum() <= s <= (counts[f] >= max(threshold, 2)).sum()
    model = M.build_model(planned)
    for f, s in zip(cfg.tt_features, planned.cache_sizes):
        layer = model.embeddings.tables[f]
        assert layer.cache_size == s
        assert layer.cache.config.counter_size == min(2 * s, layer.input_dim)
    assert cache_plan.plan_cache_sizes(M.tiny_config(), source) == (M.tiny_config(), {})
    with pytest.raises(ValueError, match="not both"):
        M.tiny_config(cache_size=10, cache_budget_mb=1.0)


def test_cache_prefill_seeds_the_counters_with_the_sample():
    from examples.dlrm import (
        cache_plan,  # pylint: disable=import-outside-toplevel
        sources,  # pylint: disable=import-outside-toplevel
    )
    from examples.dlrm import config as C  # pylint: disable=import-outside-toplevel

    cfg = M.tiny_config(cache_budget_mb=0.004, cache_plan_batches=20, cache_prefill=True,
                        cache_warmup_steps=0)
    source = sources.make_source(C.DataConfig(batch_size=64), cfg.table_sizes, seed=0)
    planned, sample = cache_plan.plan_cache_sizes(cfg, source)
    model = M.build_model(planned)
    cache_plan.seed_counters(model, planned, sample)
    caches = {f: model.embeddings.tables[f].cache for f in cfg.tt_features
              if model.embeddings.tables[f].cache is not None}
    assert caches
    for f, cache in caches.items():
        ids, counts = sample[f]
        keys = np.asarray(cache.cache_counter_keys)
        kept = np.asarray(cache.cache_counter_counts)
        got = {int(k): int(c) for k, c in zip(keys, kept) if c}
        # The counter holds the K ids of largest count, with their sample counts.
        assert all(counts[ids == k][0] == c for k, c in got.items())
        assert min(got.values()) >= np.sort(counts)[::-1][len(keys) - 1]
    # RECOMMENDED_TT's caches (no warm-up): the first training step fills every cache with
    # the sample's hottest ids, before its lookup, so they train as rows from that step.
    model.fit(tf.data.Dataset.from_tensors(_batch(cfg, 64)), epochs=1, verbose=0)
    for f, cache in caches.items():
        ids, counts = sample[f]
        cached = np.asarray(cache.cache_ids)
        cached = cached[cached < cache.num_rows]
        assert cached.size == cache.config.cache_size > 0
        # Every cached id is counted at least as often as every id left out.
        left_out = counts[~np.isin(ids, cached)]
        assert counts[np.isin(ids, cached)].min() >= (left_out.max() if left_out.size else 0)
        assert cache.hit_rate > 0
    with pytest.raises(ValueError, match="cache_prefill seeds the caches"):
        M.tiny_config(cache_prefill=True)
