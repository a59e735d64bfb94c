"""The exported serving signature checks its requests (tt_keras.export.validated_inputs):
features of unequal lengths, NaN / Inf floats and requests over max_batch_size are refused
with an error naming the input, by the loaded SavedModel itself (what TF Serving runs).
The DLRM half needs TFRS (legacy Keras) and is skipped under Keras 3."""

import os

import numpy as np
import pytest
import tensorflow as tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from tt_keras import export as E  # noqa: E402

from tests.test_export import SIGNATURE, make_inputs, make_model  # noqa: E402

BadRequest = tf.errors.InvalidArgumentError


def _signature(path):
    return tf.saved_model.load(str(path)).signatures["serving_default"]


def _call(fn, feed):
    return fn(**{k: tf.constant(v) for k, v in feed.items()})


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The test model exported with a small max_batch_size, and without any checks."""
    model = make_model()
    root = tmp_path_factory.mktemp("serving_validation")
    E.export_saved_model(model, str(root / "checked"), SIGNATURE, max_batch_size=8)
    E.export_saved_model(model, str(root / "unchecked"), SIGNATURE, validate_inputs=False)
    return model, _signature(root / "checked"), _signature(root / "unchecked")


def test_good_requests_serve_as_before(exported):
    model, checked, unchecked = exported
    for batch in (0, 1, 8):
        feed = make_inputs(batch, seed=batch)
        expected = np.asarray(model(feed, training=False)).reshape(batch, 1)
        np.testing.assert_allclose(_call(checked, feed)["predictions"].numpy(), expected,
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(_call(unchecked, feed)["predictions"].numpy(), expected,
                                   rtol=1e-5, atol=1e-6)


def test_unequal_lengths_name_the_input(exported):
    _, checked, _ = exported
    feed = make_inputs(5, seed=1)
    feed["x"] = feed["x"][:4]
    with pytest.raises(BadRequest, match="input x has a different number of rows than "
                                         "input ids"):
        _call(checked, feed)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_name_the_input(exported, bad):
    _, checked, unchecked = exported
    feed = make_inputs(4, seed=2)
    feed["x"][2, 1] = bad
    with pytest.raises(BadRequest, match="input x holds NaN or Inf"):
        _call(checked, feed)
    # What an unchecked export does: a prediction, from a NaN or an infinity.
    _call(unchecked, feed)


def test_requests_over_max_batch_size_are_refused(exported):
    _, checked, unchecked = exported
    feed = make_inputs(9, seed=3)
    with pytest.raises(BadRequest, match="input ids has more rows than max_batch_size=8"):
        _call(checked, feed)
    assert _call(unchecked, feed)["predictions"].shape[0] == 9


def test_default_bound_and_bad_bounds(tmp_path):
    model = make_model()
    E.export_saved_model(model, str(tmp_path / "m"), SIGNATURE)
    fn = _signature(tmp_path / "m")
    rows = E.DEFAULT_MAX_BATCH_SIZE + 1
    feed = {"ids": np.zeros((rows, 4), np.int64), "x": np.zeros((rows, 3), np.float32)}
    with pytest.raises(BadRequest, match=f"max_batch_size={E.DEFAULT_MAX_BATCH_SIZE}"):
        _call(fn, feed)
    for bad in (-1, 2.5, True, "8"):
        with pytest.raises(ValueError, match="max_batch_size"):
            E.export_saved_model(model, str(tmp_path / "bad"), SIGNATURE, max_batch_size=bad)


# ---------------------------------------------------------------------------------------
# The DLRM's raw-feature signature (legacy Keras)
# ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dlrm_signature(tmp_path_factory):
    try:
        import tensorflow_recommenders  # noqa: F401  pylint: disable=g-import-not-at-top
    except ImportError as e:  # TFRS 0.7.7 needs TF_USE_LEGACY_KERAS=1
        pytest.skip(f"the DLRM needs TFRS, which cannot import here ({e})")
    from examples.dlrm import export as X  # pylint: disable=g-import-not-at-top
    from examples.dlrm import model as M  # pylint: disable=g-import-not-at-top

    model = M.build_model(M.tiny_config(tt_tables=3), "sgd", 0.5)
    path = tmp_path_factory.mktemp("dlrm_validation") / "raw"
    X.export_dlrm(model, str(path), max_batch_size=16)
    return _signature(path)


def _raw_rows(batch):
    from serving.criteo_requests import random_rows  # pylint: disable=g-import-not-at-top

    return random_rows(batch, seed=4)


def test_dlrm_good_request(dlrm_signature):
    out = _call(dlrm_signature, _raw_rows(5))["predictions"].numpy()
    assert out.shape == (5,) and np.all((out >= 0) & (out <= 1))


def test_dlrm_bad_requests_name_the_feature(dlrm_signature):
    feed = _raw_rows(5)
    feed["C7"] = feed["C7"][:3]
    with pytest.raises(BadRequest, match="input C7 has a different number of rows"):
        _call(dlrm_signature, feed)
    feed = _raw_rows(5)
    feed["I4"][1] = np.nan
    with pytest.raises(BadRequest, match="input I4 holds NaN or Inf"):
        _call(dlrm_signature, feed)
    feed = _raw_rows(5)
    feed["I13"][0] = np.inf
    with pytest.raises(BadRequest, match="input I13 holds NaN or Inf"):
        _call(dlrm_signature, feed)
    with pytest.raises(BadRequest, match="max_batch_size=16"):
        _call(dlrm_signature, _raw_rows(17))
