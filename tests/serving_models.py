"""Trained tiny DLRMs for the serving tests, under whichever Keras this process runs, and a
fresh Python (one that never imports tt_keras) to serve their exports.

Under legacy tf_keras the DLRM is examples/dlrm's (TFRS Ranking); under Keras 3 it is
examples/keras3_dlrm's (keras-rs). Both export through examples.dlrm.export.export_dlrm with
the same raw signature, so the serving checks are the same for both.
"""

import os

import pytest
import tensorflow as tf

from tt_keras._keras import IS_KERAS_3

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from examples.dlrm import data as dlrm_data  # noqa: E402
from examples.dlrm import export as dlrm_export  # noqa: E402

SAMPLE = os.path.join(REPO, "..", "shared", "data", "criteo_kaggle_sample.tsv")


def train_tiny_dlrm(tt_tables=3, steps=3, batch_size=32, seed=5):
    """A small DLRM (TT on the `tt_tables` largest tables) after `steps` SGD steps."""
    if IS_KERAS_3:
        k3_model = pytest.importorskip(
            "examples.keras3_dlrm.model", reason="keras-rs is not installed")
        model = k3_model.build_model(k3_model.tiny_config(tt_tables=tt_tables),
                                     learning_rate=0.5)
    else:
        from examples.dlrm import model as tfrs_model  # pylint: disable=g-import-not-at-top

        model = tfrs_model.build_model(tfrs_model.tiny_config(tt_tables=tt_tables), "sgd", 0.5)
    source = dlrm_data.SyntheticCriteo(model.config.table_sizes, seed=seed)
    model.fit(source.dataset(batch_size), steps_per_epoch=steps, epochs=1, shuffle=False,
              verbose=0)
    assert int(model.optimizer.iterations.numpy()) == steps
    return model


def expected_predictions(model, feed):
    """The model's predictions on raw inputs, preprocessed by the export's own function."""
    features = dlrm_export.raw_to_features({k: tf.constant(v) for k, v in feed.items()},
                                           model.config.table_sizes)
    return model(features, training=False).numpy()


