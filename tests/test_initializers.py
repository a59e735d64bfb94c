"""Tests of tt_keras.initializers; run under Keras 3 and under TF_USE_LEGACY_KERAS=1."""

import math

import numpy as np
import pytest

from tt_keras import initializers as tti
from tt_keras import oracle
from tt_keras._keras import keras
from tt_keras.tt_math import TTShape

SPEC_SHAPE = TTShape((200, 220, 250), (2, 2, 4), (1, 32, 32, 1))
SPEC_N = 10_131_227


def draw_cores(init, tt_shape, num_rows, dtype="float32"):
    """Cores as the layer makes them: one core_initializer per core, called with its shape."""
    return [
        np.asarray(init.core_initializer(tt_shape, num_rows, t)(shape, dtype=dtype))
        for t, shape in enumerate(tt_shape.core_shapes)
    ]


def big_core_shape(k, rank, min_entries=40_000):
    """A TT shape whose every core has >= min_entries entries.

    The table's empirical variance fluctuates around its expectation mostly through each
    core's own sample of entries, by about sqrt(2 / entries) per core: 40k entries keep the
    total near 1.5% even for k = 4, so a 10% tolerance is a safe 7 sigma.
    """
    col_shape = {2: (4, 4), 3: (2, 2, 4), 4: (2, 2, 2, 2)}[k]
    ranks = (1,) + (rank,) * (k - 1) + (1,)
    row_shape = tuple(
        max(1, -(-min_entries // (ranks[t] * col_shape[t] * ranks[t + 1]))) for t in range(k)
    )
    return TTShape(row_shape, col_shape, ranks)


# --------------------------------------------------------------------------------------------
# SampledGaussian: the table gets the target variance
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rank", [4, 8, 16, 32, 64])
@pytest.mark.parametrize("k", [2, 3, 4])
def test_sampled_gaussian_table_variance_matches_dlrm_default(k, rank):
    tt_shape = big_core_shape(k, rank)
    num_rows = tt_shape.padded_rows - 5
    cores = draw_cores(tti.SampledGaussian(seed=100 * k + rank), tt_shape, num_rows)
    mean, var = oracle.table_moments(cores)
    target = 1.0 / (3.0 * num_rows)  # DLRM: U(-1/sqrt(N), 1/sqrt(N))
    assert abs(var / target - 1.0) < 0.10, (var / target, tt_shape)
    assert abs(mean) < 0.05 * math.sqrt(target)


@pytest.mark.parametrize("kwargs, target", [
    ({"variance": 0.01}, 0.01),
    ({"uniform_range": 0.05}, 0.05**2 / 3.0),  # Keras' default Embedding initializer
    ({"variance": 2.5}, 2.5),
])
@pytest.mark.parametrize("k", [2, 3, 4])
def test_sampled_gaussian_explicit_targets(kwargs, target, k):
    tt_shape = big_core_shape(k, 16)
    cores = draw_cores(tti.SampledGaussian(seed=7, **kwargs), tt_shape, 1000)
    _, var = oracle.table_moments(cores)
    assert abs(var / target - 1.0) < 0.10, var / target
    init = tti.SampledGaussian(**kwargs)
    assert init.target_variance(1000) == pytest.approx(target)


def test_sampled_gaussian_sampled_rows_are_near_gaussian_with_target_variance():
    # The moments above are exact over the whole table; here the entries themselves: 20k rows
    # of a 4M-row table, looked up through the chain.
    tt_shape = TTShape((160, 160, 160), (2, 2, 4), (1, 16, 16, 1))
    num_rows = 4_000_000
    cores = draw_cores(tti.SampledGaussian(seed=3), tt_shape, num_rows)
    ids = np.random.default_rng(0).integers(0, num_rows, 20_000)
    entries = oracle.sampled_rows(cores, ids).reshape(-1)
    target = 1.0 / (3.0 * num_rows)
    assert abs(entries.var() / target - 1.0) < 0.10
    # Near-Gaussian: an entry x^T M y of Gaussian x (r), M (r x r), y (r) has kurtosis
    # 3 (1 + 2/r)^2 = 3.80 for r = 16, against 3 for a Gaussian (1.8 for a uniform).
    kurtosis = np.mean((entries - entries.mean()) ** 4) / entries.var() ** 2
    assert kurtosis == pytest.approx(3 * (1 + 2 / 16) ** 2, rel=0.08)
    # Signs balanced, unlike the naive initializers below.
    assert 0.45 < np.mean(entries > 0) < 0.55


def test_sampled_gaussian_small_dense_table_over_seeds():
    # A table small enough for to_dense: average the entry variance over seeds (each draw of
    # small cores fluctuates by several percent).
    tt_shape = TTShape((20, 20, 20), (2, 2, 4), (1, 8, 8, 1))
    num_rows = 7_777
    ratios = []
    for seed in range(8):
        table = oracle.dense_table(
            draw_cores(tti.SampledGaussian(seed=seed), tt_shape, num_rows), num_rows)
        ratios.append(table.var() * 3.0 * num_rows)
    assert abs(np.mean(ratios) - 1.0) < 0.10, ratios


def test_sampled_gaussian_core_stddev_formula():
    init = tti.SampledGaussian()
    v = 1.0 / (3.0 * SPEC_N)
    assert init.core_stddev(SPEC_SHAPE, SPEC_N) == pytest.approx((v / 1024.0) ** (1.0 / 6.0))
    core = draw_cores(tti.SampledGaussian(seed=1), SPEC_SHAPE, SPEC_N)[1]
    assert core.std() == pytest.approx(init.core_stddev(SPEC_SHAPE, SPEC_N), rel=0.01)


# --------------------------------------------------------------------------------------------
# The reference's initializers, reproduced for ablations
# --------------------------------------------------------------------------------------------


def test_tt_uniform_is_all_positive():
    tt_shape = TTShape((10, 10, 10), (2, 2, 4), (1, 8, 8, 1))
    init = tti.TTUniform(seed=0)
    cores = draw_cores(init, tt_shape, 1000)
    high = math.sqrt(2.0 / (1000 + 16)) ** (1 / 3) * math.prod(
        r ** (-1 / 6) for r in tt_shape.ranks)
    for c in cores:
        assert c.min() >= 0 and c.max() <= high
        assert c.max() > 0.9 * high
    table = oracle.dense_table(cores, 1000)
    assert table.min() > 0  # every entry positive: nothing like a zero-mean table


def test_tt_naive_uniform_entries_vanish():
    cores = draw_cores(tti.TTNaiveUniform(seed=0), SPEC_SHAPE, SPEC_N)
    for c in cores:
        assert c.min() >= 0 and c.max() <= 1 / math.sqrt(SPEC_N)
    ids = np.random.default_rng(1).integers(0, SPEC_N, 200)
    entries = oracle.sampled_rows(cores, ids)
    # r^2 * (1 / (2 sqrt(N)))^3 = 4e-9, where the target's standard deviation is 1.8e-4.
    assert entries.min() > 0
    assert 1e-9 < np.median(entries) < 1e-8


def test_tt_approx_normal_keeps_tails_and_is_far_too_large():
    scale = (1.0 / math.sqrt(3.0 * SPEC_N)) ** (1.0 / 3.0)
    cores = draw_cores(tti.TTApproxNormal(seed=0), SPEC_SHAPE, SPEC_N)
    tail_second_moment = 1.0 + 2.0 * math.exp(-2.0) / math.sqrt(2 * math.pi) / (
        0.5 * math.erfc(2.0 / math.sqrt(2.0)))  # E[x^2 | |x| >= 2] = 5.746
    for c in cores:
        x = c / scale
        assert np.abs(x).min() >= 2.0 * (1 - 1e-6)
        assert np.mean(x**2) == pytest.approx(tail_second_moment, rel=0.03)
        assert abs(np.mean(x > 0) - 0.5) < 0.02
    _, var = oracle.table_moments(cores)
    target = 1.0 / (3.0 * SPEC_N)
    # Ranks ignored: var = 32^2 * 5.746^3 * target, about 440x the target's std.
    expected = 1024 * tail_second_moment**3
    assert var / target == pytest.approx(expected, rel=0.2)
    assert math.sqrt(var / target) > 100


# --------------------------------------------------------------------------------------------
# Seeds, dtypes, errors
# --------------------------------------------------------------------------------------------


ALL_CLASSES = [tti.SampledGaussian, tti.TTUniform, tti.TTNaiveUniform, tti.TTApproxNormal]
SMALL = TTShape((4, 5, 6), (2, 2, 4), (1, 3, 4, 1))


@pytest.mark.parametrize("cls", ALL_CLASSES)
def test_seeds_are_reproducible_and_streams_differ(cls):
    a = draw_cores(cls(seed=11), SMALL, 100)
    b = draw_cores(cls(seed=11), SMALL, 100)
    c = draw_cores(cls(seed=12), SMALL, 100)
    for x, y, z in zip(a, b, c):
        np.testing.assert_array_equal(x, y)
        assert not np.array_equal(x, z)
    # Cores of the same shape still get different streams.
    same = TTShape((6, 6), (4, 4), (1, 1, 1))
    first, second = draw_cores(cls(seed=11), same, 36)
    assert first.shape == second.shape and not np.array_equal(first, second)
    # Unseeded draws differ from call to call.
    u1 = draw_cores(cls(), SMALL, 100)
    u2 = draw_cores(cls(), SMALL, 100)
    assert not np.array_equal(u1[1], u2[1])


def test_unseeded_follows_keras_global_seed():
    keras.utils.set_random_seed(1234)
    a = draw_cores(tti.SampledGaussian(), SMALL, 100)
    keras.utils.set_random_seed(1234)
    b = draw_cores(tti.SampledGaussian(), SMALL, 100)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64", None])
def test_dtypes(dtype):
    import tensorflow as tf

    init = tti.SampledGaussian(seed=0).core_initializer(SMALL, 100, 0)
    value = init(SMALL.core_shapes[0], dtype=dtype)
    expected = tf.as_dtype(dtype or keras.backend.floatx())
    assert value.dtype == expected
    assert tuple(value.shape) == SMALL.core_shapes[0]
    # Any layout with the right number of entries is accepted (FBTT's [p, r*q*r] too).
    flat = init((4, 6), dtype="float32")
    np.testing.assert_array_equal(np.asarray(flat).reshape(-1),
                                  np.asarray(init(SMALL.core_shapes[0], "float32")).reshape(-1))
    with pytest.raises(ValueError, match=r"made for a core of 24 entries.*shape \(5, 5\)"):
        init((5, 5))


@pytest.mark.parametrize("cls", ALL_CLASSES)
def test_calling_a_tt_initializer_directly_is_a_type_error(cls):
    with pytest.raises(TypeError, match="initializes the cores of a TT-compressed table.*"
                                        "TTEmbedding"):
        cls()((100, 16))


def test_argument_validation():
    with pytest.raises(ValueError, match="at most one of variance and uniform_range.*"
                                         "variance=0.1 and uniform_range=0.05"):
        tti.SampledGaussian(variance=0.1, uniform_range=0.05)
    with pytest.raises(ValueError, match="variance must be a positive finite number, got -1"):
        tti.SampledGaussian(variance=-1)
    with pytest.raises(ValueError, match="uniform_range must be a positive finite number, got 0"):
        tti.SampledGaussian(uniform_range=0)
    with pytest.raises(ValueError, match="seed must be a non-negative integer or None, got -3"):
        tti.TTUniform(seed=-3)
    init = tti.SampledGaussian()
    with pytest.raises(ValueError, match=r"core_index must be an integer in \[0, 3\), got 3"):
        init.core_initializer(SMALL, 100, 3)
    with pytest.raises(ValueError, match=r"num_rows must be an integer in \[1, 120\].*got 121"):
        init.core_initializer(SMALL, 121, 0)
    with pytest.raises(TypeError, match="tt_shape must be a tt_math.TTShape"):
        init.core_initializer((4, 5, 6), 100, 0)


# --------------------------------------------------------------------------------------------
# Serialization and get()
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("init", [
    tti.SampledGaussian(), tti.SampledGaussian(variance=0.3, seed=5),
    tti.SampledGaussian(uniform_range=0.05), tti.TTUniform(seed=1), tti.TTNaiveUniform(),
    tti.TTApproxNormal(seed=2),
], ids=lambda i: type(i).__name__)
def test_config_round_trips(init):
    config = init.get_config()
    again = type(init).from_config(config)
    assert again.get_config() == config
    for restored in (tti.get(tti.serialize(init)), keras.initializers.deserialize(
            tti.serialize(init)), tti.get({"class_name": type(init).__name__, "config": config})):
        assert type(restored) is type(init)
        assert restored.get_config() == config
    if config.get("seed") is not None:
        for x, y in zip(draw_cores(init, SMALL, 100), draw_cores(again, SMALL, 100)):
            np.testing.assert_array_equal(x, y)


def test_core_sampler_config_round_trips():
    sampler = tti.SampledGaussian(seed=4).core_initializer(SMALL, 100, 1)
    again = tti.TTCoreSampler.from_config(sampler.get_config())
    np.testing.assert_array_equal(np.asarray(sampler(SMALL.core_shapes[1])),
                                  np.asarray(again(SMALL.core_shapes[1])))


@pytest.mark.parametrize("identifier, cls", [
    ("sampled_gaussian", tti.SampledGaussian), ("tt_uniform", tti.TTUniform),
    ("tt_naive_uniform", tti.TTNaiveUniform), ("tt_approx_normal", tti.TTApproxNormal),
    ("Sampled-Gaussian", tti.SampledGaussian), ("SampledGaussian", tti.SampledGaussian),
    ("tt_keras>TTApproxNormal", tti.TTApproxNormal), (None, tti.SampledGaussian),
    (tti.TTUniform, tti.TTUniform),
])
def test_get_resolves_tt_initializers(identifier, cls):
    assert type(tti.get(identifier)) is cls


def test_get_passes_instances_and_keras_identifiers_through():
    init = tti.SampledGaussian(variance=0.2)
    assert tti.get(init) is init
    glorot = tti.get("glorot_uniform")
    assert isinstance(glorot, keras.initializers.Initializer)
    assert not isinstance(glorot, tti.TTInitializer)
    normal = tti.get({"class_name": "RandomNormal", "config": {"stddev": 0.1}})
    assert isinstance(normal, keras.initializers.RandomNormal)
    assert normal.get_config()["stddev"] == pytest.approx(0.1)
    plain = keras.initializers.Constant(0.5)
    assert tti.get(plain) is plain
    with pytest.raises(ValueError, match="Could not interpret initializer identifier 'nope'.*"
                                         "sampled_gaussian"):
        tti.get("nope")


def test_for_core():
    init = tti.SampledGaussian(seed=2)
    a = tti.for_core(init, SMALL, 100, 1)
    b = init.core_initializer(SMALL, 100, 1)
    np.testing.assert_array_equal(np.asarray(a(SMALL.core_shapes[1])),
                                  np.asarray(b(SMALL.core_shapes[1])))
    same = TTShape((6, 6), (4, 4), (1, 1, 1))  # two cores of one shape
    for plain in (keras.initializers.RandomNormal(stddev=0.1),
                  keras.initializers.RandomNormal(stddev=0.1, seed=3)):
        first = tti.for_core(plain, same, 36, 0)
        second = tti.for_core(plain, same, 36, 1)
        assert first is not plain and type(first) is type(plain)
        x, y = (np.asarray(i(same.core_shapes[0], dtype="float32")) for i in (first, second))
        assert not np.array_equal(x, y)
    seeded = keras.initializers.RandomNormal(stddev=0.1, seed=3)
    np.testing.assert_array_equal(
        np.asarray(tti.for_core(seeded, same, 36, 1)((6, 1, 4, 1), dtype="float32")),
        np.asarray(tti.for_core(seeded, same, 36, 1)((6, 1, 4, 1), dtype="float32")))
