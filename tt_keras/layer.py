"""TTEmbedding: a Keras embedding layer whose table is stored as Tensor-Train cores."""

import threading

import numpy as np
import tensorflow as tf

from tt_keras import cache as tt_cache
from tt_keras import checks, replicas, tt_math
from tt_keras import initializers as tt_initializers
from tt_keras._keras import IS_KERAS_3, keras, register_serializable
from tt_keras.lookup import BACKENDS, tt_embedding_bag

COMBINERS = (None,) + tt_math.COMBINERS[1:]  # the layer spells "none" as None

# Builds take turns: threads making the first calls of an unbuilt layer would otherwise each
# add the cores (Keras checks `built` before it calls build, and sets it after).
_BUILD_LOCK = threading.RLock()


def _check_ids_dtype(dtype, what="ids"):
    dtype = tf.as_dtype(dtype)
    if not dtype.is_integer:
        raise TypeError(
            f"TTEmbedding expects integer {what}, got {what} of dtype {dtype.name}; cast them "
            "with tf.cast(ids, tf.int64) if they hold whole numbers"
        )


def _dense_weights(weights, ids):
    """Weights of dense ids, checked to have the ids' shape: statically when both shapes are
    known, else when the graph runs (right size, wrong shape is refused too)."""
    weights = tf.convert_to_tensor(weights)
    if weights.shape.is_fully_defined() and ids.shape.is_fully_defined():
        if weights.shape != ids.shape:
            raise ValueError(f"weights of shape {checks.shape_text(weights.shape)} do not "
                             f"match ids of shape {checks.shape_text(ids.shape)}")
        return weights
    return checks.require(
        weights, checks.same_entries(tf.shape(weights), tf.shape(ids)),
        lambda: ("weights of shape ", checks.tensor_shape_text(weights),
                 " do not match ids of shape ", checks.tensor_shape_text(ids)))


def _check_weights(weights, ids_kind):
    if weights is None:
        return None
    kind = type(weights).__name__
    if ids_kind == "ragged" and not isinstance(weights, tf.RaggedTensor):
        raise TypeError(f"weights must be a RaggedTensor like the ids, got {kind}")
    if ids_kind == "sparse" and not isinstance(weights, tf.SparseTensor):
        raise TypeError(f"weights must be a SparseTensor like the ids, got {kind}")
    values = weights.values if ids_kind == "sparse" else weights
    if not tf.as_dtype(values.dtype).is_floating:
        raise TypeError(f"weights must be floats, got weights of dtype {values.dtype.name}")
    return weights


@register_serializable(package="tt_keras")
class TTEmbedding(keras.layers.Layer):
    """An embedding layer whose (input_dim, output_dim) table is a TT decomposition.

    The table W is never materialised: W[id] is the product of one slice of each of the
    2-4 cores (core t shaped (p_t, r_{t-1}, q_t, r_t); see docs/ops.md), computed by a fused
    custom op when its library is loaded and by a pure-TF gather/matmul chain otherwise.

    Inputs:
      - integer ids of any shape; with combiner=None the output is ids.shape + [output_dim],
        with a combiner the last axis is a bag and is pooled: ids.shape[:-1] + [output_dim];
      - a RaggedTensor (bags along its ragged dimension) or a SparseTensor (bags along its
        last dimension); these need a combiner. Empty bags give zero rows.
      - optional `weights` of the same structure: per-id weights, as in
        tf.nn.safe_embedding_lookup_sparse.

    Args:
      input_dim: number of rows N (ids are in [0, N)).
      output_dim: embedding dimension D.
      tt_rank: TT rank: an int, k-1 inner ranks, or k+1 ranks with 1 at both ends.
      tt_row_shape: row factors (product >= input_dim); suggested when None.
      tt_col_shape: column factors (product == output_dim); suggested when None.
      num_cores: k, 2 to 4; defaults to the length of a given tt_row_shape/tt_col_shape,
        else 3.
      embeddings_initializer: "sampled_gaussian" (variance-matched to DLRM's
        U(-1/sqrt(N), 1/sqrt(N))), any tt_keras initializer, or a Keras initializer applied
        to each core as it is.
      embeddings_regularizer: optional Keras regularizer, applied to each core.
      combiner: None, "sum", "mean" or "sqrtn".
      lookup_backend: "auto" (custom op when available, else pure TF), "op" or "reference".
      cache_size: rows kept uncompressed in a hot-row cache (0: no cache); at most
        input_dim. See docs/cache.md.
      cache_warmup_steps: training calls that only count id frequencies before the cache
        is filled (at the start of training call cache_warmup_steps + 1, from the current
        TT product).
      cache_refresh_steps: refill the cache with the then most frequent ids every this
        many training calls after the fill (0: never). Rows that stay keep what they
        learned; new rows start from the TT product; rows that leave are folded back into
        the cores (cache_fold_sweeps). The counter runs again in the cache_warmup_steps
        calls before each refresh.
      cache_counter_size: entries of the heavy-hitter counter (default min(4 * cache_size,
        input_dim)); its memory never depends on input_dim beyond that.
      cache_counter_decay: counts are multiplied by this at each fill, so that refreshes
        favour recent traffic (1.0: never forget).
      cache_fold_sweeps: at a refresh, the cores are fitted to the rows that leave the
        cache by this many line-searched sweeps over the cores, so those ids keep what they
        learned as well as the TT rank allows (tt_keras.cache_fold); 0 lets them revert to
        the TT product.

    With a cache, training calls (training=True, as model.fit passes) update the cache
    state in-graph; inference calls only read it. The cache is the sublayer `cache`
    (a tt_keras.cache.HotRowCache, None without a cache), which owns its variables.
    """

    def __init__(
        self,
        input_dim,
        output_dim,
        tt_rank=16,
        tt_row_shape=None,
        tt_col_shape=None,
        num_cores=None,
        embeddings_initializer="sampled_gaussian",
        embeddings_regularizer=None,
        combiner=None,
        lookup_backend="auto",
        cache_size=0,
        cache_warmup_steps=100,
        cache_refresh_steps=0,
        cache_counter_size=None,
        cache_counter_decay=0.5,
        cache_fold_sweeps=1,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.tt_shape = tt_math.TTShape.create(
            input_dim, output_dim, tt_rank, tt_row_shape, tt_col_shape, num_cores
        )
        tt_math.check_param_count(self.tt_shape, input_dim)
        if combiner not in COMBINERS:
            raise ValueError(f"combiner must be one of {COMBINERS}, got {combiner!r}")
        if lookup_backend not in BACKENDS:
            raise ValueError(f"lookup_backend must be one of {BACKENDS}, got {lookup_backend!r}")
        self.input_dim = int(input_dim)
        self.output_dim = int(output_dim)
        self.combiner = combiner
        self.lookup_backend = lookup_backend
        self.embeddings_initializer = tt_initializers.get(embeddings_initializer)
        self.embeddings_regularizer = keras.regularizers.get(embeddings_regularizer)
        self._cache_config = tt_cache.CacheConfig.create(
            self.input_dim, cache_size, cache_warmup_steps, cache_refresh_steps,
            cache_counter_size, cache_counter_decay, cache_fold_sweeps)
        self.cache = tt_cache.HotRowCache(
            self._cache_config, self.input_dim, self.output_dim, name="cache",
            dtype=self.dtype_policy) if self._cache_config.enabled else None
        # Keras 3 turns XLA on by default on GPUs, which cannot compile the custom ops, the
        # cache's counter (tf.unique has a data-dependent shape) or the argument checks
        # (string ops); and XLA drops Assert ops, so bad ids would go unchecked.
        self.supports_jit = False
        self._cores = []

    # ---------------------------------------------------------------- weights

    def build(self, input_shape=None):
        with _BUILD_LOCK:
            if not self._cores:
                self._build_weights()
        self.built = True

    def _build_weights(self):
        for t, shape in enumerate(self.tt_shape.core_shapes):
            core_init = tt_initializers.for_core(self.embeddings_initializer, self.tt_shape,
                                                 self.input_dim, t)
            core = self.add_weight(
                name=f"core_{t}",
                shape=shape,
                initializer=core_init,
                regularizer=self.embeddings_regularizer,
                trainable=True,
            )
            # One attribute per core: TF checkpoints track attributes, and Keras 3 wraps
            # lists in a type that tf.train.Checkpoint does not descend into.
            setattr(self, f"core_{t}", core)
            self._cores.append(core)
        if self.cache is not None:
            self.cache.build()
            # A checkpoint of tt_keras 0.1.0 restored into the unbuilt layer waits for the
            # cache variables under their old names (see _lookup_dependency).
            for name, variable in self.cache.variables_by_legacy_name().items():
                self._handle_deferred_dependencies(name=name, trackable=variable)

    @property
    def cores(self):
        """The TT cores (variables), core t shaped (p_t, r_{t-1}, q_t, r_t)."""
        if not self.built:
            self.build()
        return list(self._cores)

    def set_cores(self, cores):
        """Assigns core values (arrays in this layer's core shapes)."""
        cores = [np.asarray(c) for c in cores]
        expected = self.tt_shape.core_shapes
        if len(cores) != len(expected) or any(
            c.shape != tuple(s) for c, s in zip(cores, expected)
        ):
            raise ValueError(
                f"cores have shapes {[c.shape for c in cores]} but this layer's cores are "
                f"{[tuple(s) for s in expected]}"
            )
        for var, value in zip(self.cores, cores):
            var.assign(tf.cast(value, var.dtype))

    def to_dense(self):
        """The full (input_dim, output_dim) table as a NumPy array (small tables only)."""
        return tt_math.to_dense([np.asarray(c) for c in self.cores], self.input_dim)

    def to_fbtt_cores(self):
        """The cores in FBTT-Embedding's layout: core t as [p_t, r_{t-1} * q_t * r_t]."""
        return tt_math.cores_to_fbtt([np.asarray(c) for c in self.cores])

    @classmethod
    def from_dense(cls, table, tt_rank, tt_row_shape=None, tt_col_shape=None, num_cores=None,
                   **kwargs):
        """A layer whose cores are the TT-SVD of `table` truncated to at most `tt_rank`."""
        table = np.asarray(table, np.float32)
        if table.ndim != 2:
            raise ValueError(f"table must be 2-D (rows, dim), got shape {table.shape}")
        shape = tt_math.TTShape.create(table.shape[0], table.shape[1], tt_rank, tt_row_shape,
                                       tt_col_shape, num_cores)
        cores = tt_math.tt_svd(table, shape.row_shape, shape.col_shape, list(shape.inner_ranks))
        ranks = [1] + [int(c.shape[3]) for c in cores]
        layer = cls(table.shape[0], table.shape[1], tt_rank=ranks, tt_row_shape=shape.row_shape,
                    tt_col_shape=shape.col_shape, num_cores=shape.num_cores, **kwargs)
        layer.build()
        layer.set_cores(cores)
        return layer

    @classmethod
    def from_fbtt_cores(cls, fbtt_cores, input_dim, output_dim, tt_row_shape, tt_col_shape,
                        **kwargs):
        """A layer holding cores exported by FBTT-Embedding ([p_t, r_{t-1} * q_t * r_t])."""
        fbtt_cores = [np.asarray(c) for c in fbtt_cores]
        ranks = [1]
        for t, (c, p, q) in enumerate(zip(fbtt_cores, tt_row_shape, tt_col_shape)):
            if c.ndim != 2 or c.shape[0] != p or c.shape[1] % (ranks[-1] * q):
                raise ValueError(
                    f"fbtt_cores[{t}] has shape {c.shape}, which does not fit row factor {p}, "
                    f"column factor {q} and input rank {ranks[-1]}"
                )
            ranks.append(c.shape[1] // (ranks[-1] * q))
        shape = tt_math.TTShape(tuple(tt_row_shape), tuple(tt_col_shape), tuple(ranks))
        layer = cls(input_dim, output_dim, tt_rank=list(shape.ranks), tt_row_shape=tt_row_shape,
                    tt_col_shape=tt_col_shape, num_cores=len(tt_row_shape), **kwargs)
        layer.build()
        layer.set_cores(tt_math.cores_from_fbtt(fbtt_cores, shape))
        return layer

    # ---------------------------------------------------------------- sizes

    @property
    def num_params(self):
        """Parameters in the cores: sum_t p_t * r_{t-1} * q_t * r_t."""
        return self.tt_shape.num_params

    @property
    def _float_size(self):
        return tf.as_dtype(self.dtype or "float32").size

    @property
    def cache_size(self):
        """Rows the hot-row cache holds (0: no cache)."""
        return self._cache_config.cache_size

    @property
    def cache_bytes(self):
        """Bytes of the cache's state: rows, ids, counter keys and counts, step and stats
        (known before the layer is built)."""
        return self.cache.num_bytes if self.cache is not None else 0

    @property
    def cache_hit_rate(self):
        """Fraction of the ids of the last training call served by the cache (0.0 before
        the first training call; inference calls do not change it)."""
        return self.cache.hit_rate if self.cache is not None else 0.0

    @property
    def embedding_bytes(self):
        """Bytes the table's weights occupy: the cores (in the variables' dtype) plus the
        cache's state (cache_bytes)."""
        return self.num_params * self._float_size + self.cache_bytes

    @property
    def compression_ratio(self):
        """Dense table bytes / embedding_bytes: how many times smaller than dense, the
        cache included (input_dim * output_dim / num_params without a cache)."""
        return self.input_dim * self.output_dim * self._float_size / self.embedding_bytes

    # ---------------------------------------------------------------- lookup

    def _lookup(self, ids, row_splits, weights, combiner, check_splits=False, training=None):
        args = dict(row_splits=row_splits, weights=weights, combiner=combiner or "none",
                    backend=self.lookup_backend, check_splits=check_splits)
        # Under a tf.distribute strategy the cores' gradient must be dense (the pure-TF
        # path's gathers make it sparse), to be all-reduced (tt_keras/replicas.py).
        if self.cache is not None:
            # Outside one the cached op reads the cache rows (and cores) in place: an
            # optimizer updates the rows sparsely, after which every read through a tensor
            # copies all of them.
            in_place = replicas.reads_in_place(self.compute_dtype)
            return self.cache.lookup(self.cores, ids, training=training, in_place=in_place,
                                     **args)
        # Cores alone take dense updates, which leave reads through tensors cheap; read in
        # place they measured no faster (docs/performance.md).
        return tt_embedding_bag(replicas.lookup_values(self.cores, in_place=False), ids,
                                num_rows=self.input_dim, **args)

    def call(self, inputs, weights=None, training=None):
        if isinstance(inputs, tf.RaggedTensor):
            return self._call_ragged(inputs, _check_weights(weights, "ragged"), training)
        if isinstance(inputs, tf.SparseTensor):
            return self._call_sparse(inputs, _check_weights(weights, "sparse"), training)
        return self._call_dense(tf.convert_to_tensor(inputs), _check_weights(weights, "dense"),
                                training)

    def _need_combiner(self, kind):
        if self.combiner is None:
            raise ValueError(
                f"TTEmbedding got a {kind} of id bags but combiner=None: pass "
                "combiner='sum', 'mean' or 'sqrtn' to pool each bag"
            )

    def _call_dense(self, ids, weights, training=None):
        _check_ids_dtype(ids.dtype)
        dim = self.output_dim
        if self.combiner is None:
            if weights is not None:
                raise ValueError("weights need a combiner ('sum', 'mean' or 'sqrtn')")
            rows = self._lookup(tf.reshape(ids, [-1]), None, None, None, training=training)
            out = tf.reshape(rows, tf.concat([tf.shape(ids), [dim]], 0))
            return tf.ensure_shape(out, ids.shape.concatenate([dim]))
        if ids.shape.rank is not None and ids.shape.rank < 2:
            raise ValueError(
                f"with combiner={self.combiner!r} the last axis of dense ids is the bag; ids "
                f"of shape {ids.shape} have none (use shape [batch, bag_size])"
            )
        if weights is not None:
            weights = tf.reshape(_dense_weights(weights, ids), [-1])
        shape = tf.shape(ids, out_type=tf.int64)
        bag_size = shape[-1]
        num_bags = tf.reduce_prod(shape[:-1])
        row_splits = tf.range(num_bags + 1, dtype=tf.int64) * bag_size
        pooled = self._lookup(tf.reshape(ids, [-1]), row_splits, weights, self.combiner,
                              training=training)
        out = tf.reshape(pooled, tf.concat([tf.shape(ids)[:-1], [dim]], 0))
        return tf.ensure_shape(out, ids.shape[:-1].concatenate([dim]))

    def _call_ragged(self, ids, weights, training=None):
        self._need_combiner("RaggedTensor")
        _check_ids_dtype(ids.dtype)
        if ids.flat_values.shape.rank != 1:
            raise ValueError(
                f"ragged ids must be ragged in their last dimension, got shape {ids.shape}"
            )
        splits = ids.nested_row_splits
        flat_weights = None
        if weights is not None:
            # Equal splits are what makes the weights line up with the ids.
            same = [checks.same_entries(w, i)
                    for w, i in zip(weights.nested_row_splits, splits)]
            flat_weights = checks.require(
                weights.flat_values,
                tf.reduce_all(same) if len(weights.nested_row_splits) == len(splits)
                else tf.constant(False),
                lambda: ("weights must have the same row lengths as the ragged ids",))
        # A RaggedTensor built with validate=False may hold any splits: the innermost are
        # the bags, checked by the lookup; the outer ones are checked here by TF.
        pooled = self._lookup(ids.flat_values, tf.cast(splits[-1], tf.int64), flat_weights,
                              self.combiner, check_splits=True, training=training)
        if len(splits) == 1:
            return pooled
        return tf.RaggedTensor.from_nested_row_splits(pooled, splits[:-1], validate=True)

    def _call_sparse(self, ids, weights, training=None):
        self._need_combiner("SparseTensor")
        _check_ids_dtype(ids.dtype)
        if ids.shape.rank is not None and ids.shape.rank < 2:
            raise ValueError(f"sparse ids need a bag axis: rank >= 2, got shape {ids.shape}")
        # Bags must be contiguous runs of values; canonical (row-major) order guarantees it.
        ids = tf.sparse.reorder(ids)
        flat_weights = None
        if weights is not None:
            weights = tf.sparse.reorder(weights)
            flat_weights = checks.require(
                weights.values, checks.same_entries(weights.indices, ids.indices),
                lambda: ("weights must have the same indices as the sparse ids",))
        outer_shape = ids.dense_shape[:-1]
        num_bags = tf.reduce_prod(outer_shape)
        # Row-major bag number of each value from its leading coordinates.
        strides = tf.math.cumprod(outer_shape, exclusive=True, reverse=True)
        bag = tf.reduce_sum(ids.indices[:, :-1] * strides, axis=1)
        counts = tf.math.bincount(bag, minlength=num_bags, maxlength=num_bags, dtype=tf.int64)
        row_splits = tf.concat([[0], tf.cumsum(counts)], 0)
        pooled = self._lookup(ids.values, row_splits, flat_weights, self.combiner,
                              training=training)
        out = tf.reshape(pooled, tf.concat([outer_shape, [self.output_dim]], 0))
        static = ids.shape[:-1].concatenate([self.output_dim])
        return tf.ensure_shape(out, static)

    def compute_output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        if self.combiner is None:
            return input_shape + (self.output_dim,)
        return input_shape[:-1] + (self.output_dim,)

    # ---------------------------------------------------------------- files of tt_keras 0.1.0
    # tt_keras 0.1.0 kept the cache's variables on the layer itself. Its checkpoints and
    # SavedModels (tf.train.Checkpoint, tf_keras' SavedModel format) name them directly
    # under the layer (embedding/cache_ids, ...); its Keras 3 files list them among the
    # layer's own variables, after the cores. Both still load into the cache sublayer.

    def _lookup_dependency(self, name, cached_dependencies=None):
        """Checkpoint restoration (and tf_keras' SavedModel loader) finds a child by name:
        the old names lead to the cache's variables."""
        cache = getattr(self, "cache", None)  # also called while Keras sets the layer up
        if cache is not None:
            variable = cache.variables_by_legacy_name().get(name)
            if variable is not None:
                return variable
        return super()._lookup_dependency(name, cached_dependencies)

    def load_own_variables(self, store):
        """Keras 3 files: the cores, and in a 0.1.0 file the cache's variables after them."""
        cores = len(self.tt_shape.core_shapes)
        legacy = self.cache.variables_by_legacy_name() if self.cache is not None else {}
        if legacy and len(list(store.keys())) == cores + len(legacy):
            for t, core in enumerate(self.cores):
                core.assign(store[str(t)])
            self.cache.load_legacy_values([store[str(cores + i)] for i in range(len(legacy))])
            return
        super().load_own_variables(store)

    # ---------------------------------------------------------------- config

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "input_dim": self.input_dim,
                "output_dim": self.output_dim,
                "tt_rank": list(self.tt_shape.ranks),
                "tt_row_shape": list(self.tt_shape.row_shape),
                "tt_col_shape": list(self.tt_shape.col_shape),
                "num_cores": self.tt_shape.num_cores,
                "embeddings_initializer": keras.initializers.serialize(
                    self.embeddings_initializer
                ),
                "embeddings_regularizer": keras.regularizers.serialize(
                    self.embeddings_regularizer
                ) if self.embeddings_regularizer is not None else None,
                "combiner": self.combiner,
                "lookup_backend": self.lookup_backend,
                **self._cache_config.layer_config(),
            }
        )
        return config


__all__ = ["TTEmbedding", "IS_KERAS_3"]
