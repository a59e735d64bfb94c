"""DLRM for Keras 3 on keras-rs, with TT-compressed embeddings for the largest tables.

    features {"dense": [B, 13], "C1".."C26": [B]}            (examples/dlrm/data.py's format)
      -> one table per categorical feature: tt_keras.TTEmbedding for the `tt_tables`
         largest, keras.layers.Embedding for the rest                 -> 26 x [B, D]
      -> bottom MLP 13-512-256-64-D (ReLU) on the dense features      -> [B, D]
      -> keras_rs.layers.DotInteraction over the 27 vectors           -> [B, 27*26/2]
      -> top MLP 512-256-1 (ReLU, sigmoid) on [bottom output, interactions] -> [B]

A functional keras.Model (so `tt_keras.compress` can rebuild it), compiled with BCE, SGD and
AUC, trained with `model.fit` on the datasets of examples/dlrm/data.py. The same network as
examples/dlrm/model.py (TFRS Ranking), which needs legacy tf_keras; this one needs Keras 3
(keras-rs is built on it) and the TensorFlow backend (TTEmbedding is a TensorFlow layer).

The shape is examples/dlrm/config.py's `DLRMConfig` (the TFRS trainer's); the model carries it
(`model.config`), so `examples.dlrm.export.export_dlrm` exports it exactly like the TFRS DLRM.
"""

from typing import Optional

import keras
import keras_rs

import tt_keras

from examples.dlrm import data as dlrm_data
from examples.dlrm.config import DLRMConfig

CAT_FEATURES = dlrm_data.CAT_FEATURES


def tiny_config(**changes) -> DLRMConfig:
    """A small DLRM for tests and quick runs: Kaggle's tables / 1000, D = 8, narrow MLPs."""
    fields = dict(table_sizes=dlrm_data.scale_table_sizes(dlrm_data.KAGGLE_TABLE_SIZES, 1000),
                  embedding_dim=8, bottom_mlp=(16,), top_mlp=(16,), tt_tables=3, tt_rank=4)
    fields.update(changes)
    return DLRMConfig(**fields)


def _mlp(x, widths, final_activation, prefix):
    for i, width in enumerate(widths):
        activation = final_activation if i == len(widths) - 1 else "relu"
        x = keras.layers.Dense(width, activation=activation, name=f"{prefix}_{i}")(x)
    return x


def _table(config: DLRMConfig, name: str, num_rows: int):
    if name in config.tt_features:
        cache = {}
        if config.cache_size:  # only passed when used
            cache = dict(cache_size=config.cache_size,
                         cache_warmup_steps=config.cache_warmup_steps,
                         cache_refresh_steps=config.cache_refresh_steps)
        return tt_keras.TTEmbedding(num_rows, config.embedding_dim, tt_rank=config.tt_rank,
                                    num_cores=config.tt_cores,
                                    embeddings_initializer=config.tt_initializer,
                                    lookup_backend=config.lookup_backend, name=f"tt_{name}",
                                    **cache)
    initializer = config.dense_initializer
    if initializer == "dlrm":  # U(-1/sqrt(N), 1/sqrt(N)), the variance TT tables start with
        a = 1.0 / float(num_rows) ** 0.5
        initializer = keras.initializers.RandomUniform(-a, a)
    return keras.layers.Embedding(num_rows, config.embedding_dim,
                                  embeddings_initializer=initializer, name=f"emb_{name}")


def build_model(config: DLRMConfig, learning_rate: float = 0.1,
                name: Optional[str] = None) -> keras.Model:
    """A compiled functional DLRM; `model.config` is `config`."""
    inputs = {"dense": keras.Input(shape=(dlrm_data.NUM_DENSE,), dtype="float32", name="dense")}
    inputs.update({f: keras.Input(shape=(), dtype="int64", name=f) for f in CAT_FEATURES})
    embeddings = [_table(config, f, n)(inputs[f])
                  for f, n in zip(CAT_FEATURES, config.table_sizes)]
    bottom = _mlp(inputs["dense"], list(config.bottom_mlp) + [config.embedding_dim], "relu",
                  "bottom")
    interaction = keras_rs.layers.DotInteraction(name="interaction")(embeddings + [bottom])
    top = _mlp(keras.layers.Concatenate(name="top_input")([bottom, interaction]),
               list(config.top_mlp) + [1], "sigmoid", "top")
    outputs = keras.ops.squeeze(top, axis=-1)  # [B, 1] -> [B], like the labels
    model = keras.Model(inputs, outputs, name=name or "dlrm")
    model.compile(optimizer=keras.optimizers.SGD(learning_rate), loss="binary_crossentropy",
                  metrics=[keras.metrics.AUC(name="auc", num_thresholds=2000),
                           keras.metrics.BinaryAccuracy(name="accuracy")])
    model.config = config
    return model
