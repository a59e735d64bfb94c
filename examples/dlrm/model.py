"""DLRM on TFRS's Ranking model, with TT-compressed embeddings for the largest tables.

    features {"dense": [B, 13], "C1".."C26": [B]}
      -> DLRMEmbeddings: one table per categorical feature; tt_keras.TTEmbedding for the
         `tt_tables` largest tables, keras Embedding for the rest -> {"Ck": [B, D]}
      -> bottom MLP 13-512-256-64-D (ReLU) on the dense features
      -> DotInteraction over the 26 embeddings + the bottom MLP output (27 vectors)
      -> top MLP 512-256-1 (ReLU, sigmoid) on [bottom output, interactions]

`DLRM` subclasses `tfrs.experimental.models.Ranking` and keeps its task, loss, metrics,
`compute_loss`, train and test steps (see `_global_loss` for what it adds to the logs of
the last two under a tf.distribute strategy). It overrides `call` to fix a batch of one:
Ranking.call runs `tf.squeeze` (no axis) on every embedding, which turns a (1, D) batch into
(D,) and then fails in the interaction. Our call reshapes each embedding to (-1, D) instead,
and otherwise does what Ranking.call does. It also accepts the flat feature dict of
`examples.dlrm.data` as well as Ranking's {"dense_features", "sparse_features"} layout.

TFRS 0.7.7 needs legacy Keras (TF_USE_LEGACY_KERAS=1, tf_keras installed).
"""

from typing import Optional

import tensorflow as tf
import tensorflow_recommenders as tfrs

import tt_keras

from examples.dlrm import data as dlrm_data
from examples.dlrm.config import OPTIMIZERS, DLRMConfig

keras = tf.keras  # tf_keras under TF_USE_LEGACY_KERAS=1, which TFRS needs

CAT_FEATURES = dlrm_data.CAT_FEATURES


def tiny_config(**changes) -> DLRMConfig:
    """A scaled-down DLRM for tests: small tables, D = 8, narrow MLPs, 3 rank-4 TT tables."""
    sizes = (37, 11, 3000, 900, 7, 4, 60, 13, 3, 250, 40, 2500, 30, 5, 70, 1200, 4, 45, 20,
             3, 1500, 6, 5, 200, 9, 150)
    cfg = DLRMConfig(table_sizes=sizes, embedding_dim=8, bottom_mlp=(16,), top_mlp=(16,),
                     tt_tables=3, tt_rank=4)
    return cfg.replace(**changes)


def _dense_initializer(config: DLRMConfig, num_rows: int):
    if config.dense_initializer == "dlrm":
        a = 1.0 / float(num_rows) ** 0.5
        return keras.initializers.RandomUniform(-a, a)
    return config.dense_initializer


def _tt_initializer(config: DLRMConfig, num_rows: int):
    if config.tt_initializer == "sampled_gaussian" and config.tt_init_scale != 1.0:
        # DLRM's dense rows are U(-1/sqrt(N), 1/sqrt(N)): variance 1 / (3 N).
        return tt_keras.SampledGaussian(variance=config.tt_init_scale ** 2 / (3.0 * num_rows))
    return config.tt_initializer


def _cache_arguments(config: DLRMConfig, feature: str) -> dict:
    """TTEmbedding's cache arguments for TT table `feature` (none without a cache)."""
    size = config.table_cache_size(feature)
    if not size:
        return {}
    return {"cache_size": size, "cache_warmup_steps": config.cache_warmup_steps,
            "cache_refresh_steps": config.cache_refresh_steps,
            "cache_fold_sweeps": config.cache_fold_sweeps,
            "cache_counter_size": min(config.cache_counter_multiple * size,
                                      config.table_sizes[CAT_FEATURES.index(feature)])}


class DLRMEmbeddings(keras.layers.Layer):
    """{"C1": ids, ...} -> {"C1": (B, D), ...}: one embedding table per categorical feature.

    Ids may have shape [B] or [B, 1]. TT tables are `tt_keras.TTEmbedding`, the others
    `keras.layers.Embedding`.
    """

    def __init__(self, config: DLRMConfig, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        self.dim = config.embedding_dim
        tt_features = set(config.tt_features)
        self.tables = {}
        for name, n in zip(CAT_FEATURES, config.table_sizes):
            if name in tt_features:
                layer = tt_keras.TTEmbedding(
                    n, self.dim, tt_rank=config.tt_rank, num_cores=config.tt_cores,
                    embeddings_initializer=_tt_initializer(config, n),
                    lookup_backend=config.lookup_backend, name=f"tt_{name}",
                    **_cache_arguments(config, name))
            else:
                layer = keras.layers.Embedding(
                    n, self.dim, embeddings_initializer=_dense_initializer(config, n),
                    name=f"emb_{name}")
            self.tables[name] = layer

    def call(self, inputs, training=None):
        out = {}
        for name in CAT_FEATURES:
            ids = tf.reshape(inputs[name], [-1])
            if self.is_tt(name):  # training=True lets a TT table's hot-row cache learn
                rows = self.tables[name](ids, training=training)
            else:
                rows = self.tables[name](ids)
            out[name] = tf.reshape(rows, [-1, self.dim])
        return out

    def cache_hit_rates(self) -> dict:
        """{feature: hit rate of the last training batch} of the TT tables with a cache."""
        return {name: float(self.tables[name].cache_hit_rate)
                for name in self.config.tt_features if self.config.table_cache_size(name)}

    def tt_core_variables(self) -> list:
        """The TT tables' cores (not their caches' rows, which train like dense rows)."""
        return [core for name in self.config.tt_features for core in self.tables[name].cores]

    def is_tt(self, name) -> bool:
        return name in self.config.tt_features

    def table_bytes(self) -> dict:
        """float32 bytes per table as stored (TT: cores + cache, via layer.embedding_bytes)."""
        out = {}
        for name, n in zip(CAT_FEATURES, self.config.table_sizes):
            layer = self.tables[name]
            out[name] = int(layer.embedding_bytes) if self.is_tt(name) else 4 * n * self.dim
        return out

    @property
    def embedding_bytes(self) -> int:
        return sum(self.table_bytes().values())

    @property
    def cache_bytes(self) -> int:
        """Bytes of the TT tables' hot-row caches (part of embedding_bytes)."""
        return sum(int(self.tables[name].cache_bytes) for name in self.config.tt_features)

    @property
    def uncompressed_bytes(self) -> int:
        """float32 bytes of the same tables all stored dense."""
        return 4 * self.dim * sum(self.config.table_sizes)


def split_features(inputs):
    """Flat {"dense", "C1".."C26"} or Ranking's layout -> (dense [B, 13], {"Ck": ids})."""
    if "dense_features" in inputs:
        return inputs["dense_features"], inputs["sparse_features"]
    return inputs["dense"], {name: inputs[name] for name in CAT_FEATURES}


def make_task() -> tfrs.tasks.Ranking:
    """BCE loss; held-out metrics AUC, accuracy (threshold 0.5) and log loss."""
    return tfrs.tasks.Ranking(
        loss=keras.losses.BinaryCrossentropy(reduction=keras.losses.Reduction.NONE),
        metrics=[
            keras.metrics.AUC(name="auc", num_thresholds=2000),
            keras.metrics.BinaryAccuracy(name="accuracy"),
            keras.metrics.BinaryCrossentropy(name="logloss"),
        ],
        prediction_metrics=[keras.metrics.Mean("prediction_mean")],
        label_metrics=[keras.metrics.Mean("label_mean")],
    )


class DLRM(tfrs.experimental.models.Ranking):
    """DLRM = tfrs Ranking(DLRMEmbeddings, bottom MLP, DotInteraction, top MLP)."""

    def __init__(self, config: DLRMConfig, name: Optional[str] = None):
        super().__init__(
            embedding_layer=DLRMEmbeddings(config, name="embeddings"),
            bottom_stack=tfrs.layers.blocks.MLP(
                units=list(config.bottom_mlp) + [config.embedding_dim],
                final_activation="relu"),
            feature_interaction=tfrs.layers.feature_interaction.DotInteraction(),
            top_stack=tfrs.layers.blocks.MLP(
                units=list(config.top_mlp) + [1], final_activation="sigmoid"),
            task=make_task(),
        )
        if name:
            self._name = name
        self.config = config
        # Under a strategy the metric results a step returns are already the cluster's
        # (their variables are summed over the replicas when read), so they are taken from
        # the first replica; the default ("auto": a sum over replicas) would multiply them
        # by the number of replicas. The loss is summed in _global_loss instead.
        self.distribute_reduction_method = "first"

    @staticmethod
    def _global_loss(logs):
        """Ranking's compute_loss is the replica's mean loss divided by the number of
        replicas; summed over the replicas it is the global batch's mean loss (the logs'
        "loss", and the regularization added to it in "total_loss")."""
        context = tf.distribute.get_replica_context()
        if not tf.distribute.has_strategy() or context is None:
            return logs
        logs = dict(logs)
        logs["loss"] = context.all_reduce(tf.distribute.ReduceOp.SUM, logs["loss"])
        if "total_loss" in logs and "regularization_loss" in logs:
            logs["total_loss"] = logs["loss"] + logs["regularization_loss"]
        return logs

    def train_step(self, inputs):
        return self._global_loss(super().train_step(inputs))

    def test_step(self, inputs):
        return self._global_loss(super().test_step(inputs))

    @property
    def embeddings(self) -> DLRMEmbeddings:
        return self._embedding_layer

    def call(self, inputs, training=None):
        # Ranking.call, with tf.reshape(-1, D) instead of tf.squeeze (batch of 1).
        dense_features, sparse_features = split_features(inputs)
        sparse_embeddings = tf.nest.flatten(
            self._embedding_layer(sparse_features, training=training))
        dim = self.config.embedding_dim
        sparse_vecs = [tf.reshape(e, [-1, dim]) for e in sparse_embeddings]
        dense_vec = self._bottom_stack(dense_features)
        interaction = self._feature_interaction(sparse_vecs + [dense_vec])
        if self._concat_dense:
            interaction = tf.concat([dense_vec, interaction], axis=1)
        return tf.reshape(self._top_stack(interaction), [-1])


def dummy_features(config: DLRMConfig, batch_size: int = 2):
    """A valid feature batch (all ids 0) to build a model's variables."""
    feats = {"dense": tf.zeros([batch_size, dlrm_data.NUM_DENSE], tf.float32)}
    for name in CAT_FEATURES:
        feats[name] = tf.zeros([batch_size], tf.int64)
    return feats


def make_optimizer(name: str = "sgd", learning_rate: float = 0.1):
    """SGD (DLRM's), Adagrad or Adam, from tf_keras' *legacy* optimizers.

    The legacy ones apply an embedding's IndexedSlices gradient as a sparse update. tf_keras'
    new SGD keeps a momentum buffer for every variable even at momentum 0 and updates it and
    the table densely each step: measured here, 405 ms per step for one 2M x 16 table instead
    of 0.4 ms (and twice the table's memory).
    """
    name = name.lower()
    optimizers = keras.optimizers.legacy
    if name == "sgd":
        return optimizers.SGD(learning_rate=learning_rate)
    if name == "adagrad":
        return optimizers.Adagrad(learning_rate=learning_rate)
    if name == "adam":
        return optimizers.Adam(learning_rate=learning_rate)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")


def build_model(config: DLRMConfig, optimizer="sgd", learning_rate: float = 0.1,
                name: Optional[str] = None, tt_optimizer: str = "",
                tt_learning_rate: float = 0.0) -> DLRM:
    """A compiled, built DLRM (variables exist, so a checkpoint can be restored into it).

    With tt_optimizer or tt_learning_rate, the TT cores get an optimizer of their own
    (tt_optimizer, default the same kind; tt_learning_rate, default learning_rate) through
    TFRS's CompositeOptimizer; everything else, cached rows included, gets `optimizer`.
    """
    model = DLRM(config, name=name)
    model(dummy_features(config), training=False)
    if isinstance(optimizer, str):
        kind, optimizer = optimizer, make_optimizer(optimizer, learning_rate)
        if (tt_optimizer or tt_learning_rate) and config.tt_tables:
            cores = model.embeddings.tt_core_variables()
            core_refs = {v.ref() for v in cores}
            optimizer = tfrs.experimental.optimizers.CompositeOptimizer([
                # First: the one whose step counter is the model's (it updates every step).
                (optimizer, lambda: [v for v in model.trainable_variables
                                     if v.ref() not in core_refs]),
                (make_optimizer(tt_optimizer or kind, tt_learning_rate or learning_rate),
                 lambda: cores),
            ])
    model.compile(optimizer=optimizer)
    return model


def dense_param_count(model: DLRM) -> int:
    """Trainable parameters outside the embedding tables (the MLPs)."""
    return int(sum(int(tf.size(v)) for v in model.dense_trainable_variables))
