"""Files written by earlier versions of tt_keras still load.

tests/fixtures/make_compat_fixtures.py wrote them.

Restored variables must equal the saved ones exactly; outputs equal those recorded when the
files were written, up to float32 reordering (the recording machine's CPU may differ).
"""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

import tt_keras
from tt_keras._keras import IS_KERAS_3, keras
from tt_keras.ops import tt_ops_library

from tests import tolerance

VERSIONS = ["v0.1.0"]
HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


def fixture_dir(version):
    return os.path.join(HERE, version, "keras3" if IS_KERAS_3 else "legacy")


def load_expected(version):
    directory = fixture_dir(version)
    with open(os.path.join(directory, "config.json")) as f:
        config = json.load(f)
    return directory, config, dict(np.load(os.path.join(directory, "expected.npz")))


def assert_variables_equal(layer, expected, kind):
    """Every variable the old file held has the same value in the layer, found by name."""
    saved = {k.split("/", 1)[1]: v for k, v in expected.items() if k.startswith(kind + "/")}
    assert saved
    values = {v.name.split("/")[-1].split(":")[0]: np.asarray(v) for v in layer.weights}
    for name, value in saved.items():
        assert name in values, f"{name} not among {sorted(values)}"
        np.testing.assert_array_equal(values[name], value, err_msg=name)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("kind", ["plain", "cached"])
def test_checkpoint_restores(version, kind):
    directory, config, expected = load_expected(version)
    layer = tt_keras.TTEmbedding(**config[kind], name="embedding")
    layer.build()
    status = tf.train.Checkpoint(embedding=layer).read(os.path.join(directory, f"ckpt_{kind}-1"))
    status.assert_existing_objects_matched()
    assert_variables_equal(layer, expected, kind)
    tolerance.assert_reordered_close(layer(expected["ids"], training=False).numpy(),
                                     expected[f"{kind}_out"])


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("name,kind", [("savedmodel_plain_portable", "plain"),
                                       ("savedmodel_cached_portable", "cached"),
                                       ("savedmodel_cached_native", "cached")])
def test_savedmodel_serves(version, name, kind):
    directory, _, expected = load_expected(version)
    if name.endswith("native"):
        tt_ops_library.ops  # the native graph holds TTKeras> ops: register them first
    loaded = tf.saved_model.load(os.path.join(directory, name))
    tolerance.assert_reordered_close(loaded.serve(tf.constant(expected["ids"])).numpy(),
                                     expected[f"{kind}_out"])


@pytest.mark.parametrize("version", VERSIONS)
def test_keras_model_loads(version):
    directory, _, expected = load_expected(version)
    path = os.path.join(directory, "model_cached.keras" if IS_KERAS_3 else "model_cached_tf")
    model = keras.models.load_model(path)
    layer = [x for x in model.layers if isinstance(x, tt_keras.TTEmbedding)][0]
    assert_variables_equal(layer, expected, "cached")
    tolerance.assert_reordered_close(model.predict(expected["ids"], verbose=0),
                                     expected["cached_out"])
