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

The model carries its `config` (`model.config`), so `examples.dlrm.export.export_dlrm`
exports it exactly like the TFRS DLRM.
"""

import dataclasses
from typing import Optional, Tuple

import keras
import keras_rs

import tt_keras
from examples.dlrm import data as dlrm_data

CAT_FEATURES = dlrm_data.CAT_FEATURES


@dataclasses.dataclass(frozen=True)
class DLRMConfig:
    """The network's shape.

    Attributes:
      table_sizes: 26 table sizes, in C1..C26 order.
      embedding_dim: D.
      bottom_mlp, top_mlp: hidden widths (a last layer of width D, resp. 1, is appended).
      tt_tables: how many of the largest tables are TTEmbedding (0: a dense DLRM).
      tt_rank, tt_num_cores, lookup_backend: passed to every TTEmbedding.
    """

    table_sizes: Tuple[int, ...] = dlrm_data.KAGGLE_TABLE_SIZES
    embedding_dim: int = 16
    bottom_mlp: Tuple[int, ...] = (512, 256, 64)
    top_mlp: Tuple[int, ...] = (512, 256)
    tt_tables: int = 0
    tt_rank: int = 16
    tt_num_cores: int = 3
    lookup_backend: str = "auto"

    def __post_init__(self):
        if len(self.table_sizes) != len(CAT_FEATURES):
            raise ValueError(f"table_sizes must hold {len(CAT_FEATURES)} sizes, got "
                             f"{len(self.table_sizes)}")
        if not 0 <= self.tt_tables <= len(CAT_FEATURES):
            raise ValueError(f"tt_tables must be in [0, {len(CAT_FEATURES)}], got "
                             f"{self.tt_tables}")
        object.__setattr__(self, "table_sizes", tuple(int(n) for n in self.table_sizes))

    @property
    def tt_features(self) -> Tuple[str, ...]:
        """The `tt_tables` largest tables' features (ties: the lower feature index)."""
        order = sorted(range(len(CAT_FEATURES)), key=lambda i: (-self.table_sizes[i], i))
        return tuple(CAT_FEATURES[i] for i in sorted(order[: self.tt_tables]))


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
        return tt_keras.TTEmbedding(num_rows, config.embedding_dim, tt_rank=config.tt_rank,
                                    num_cores=config.tt_num_cores,
                                    lookup_backend=config.lookup_backend, name=f"tt_{name}")
    # DLRM's U(-1/sqrt(N), 1/sqrt(N)), the variance TTEmbedding's default initializer matches.
    a = 1.0 / float(num_rows) ** 0.5
    return keras.layers.Embedding(num_rows, config.embedding_dim,
                                  embeddings_initializer=keras.initializers.RandomUniform(-a, a),
                                  name=f"emb_{name}")


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
