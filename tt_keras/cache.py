"""The hot-row cache of TTEmbedding: its settings, and the module that owns its state.

Ids of recommendation data are power-law distributed, so a few rows take most lookups.
The cache keeps those rows uncompressed in front of the TT chain: a
heavy-hitter counter counts id frequencies during a warm-up, then the `cache_size` most
frequent ids are filled from the current TT product and trained as ordinary rows, and
lookups of them skip the chain. See docs/cache.md.

- `CacheConfig`: the layer's cache_* arguments, checked; the variables' shapes and bytes,
  known without creating any variable.
- `HotRowCache`: a Keras layer (Keras 3 or tf_keras, whichever this process uses) that owns
  the cache's variables, so they are tracked like any sublayer's: `layer.weights`,
  tf.train.Checkpoint, tf.saved_model.save, Keras files. It offers the cached lookup with
  the state update of a training call, the cache's bytes and its hit rate.

The state changes are pure functions in tt_keras.cache_updates; the lookup itself is
tt_keras.lookup.tt_embedding_bag_cached (the op, or its pure-TF twin in reference.py).
"""

import contextlib
import dataclasses
import math
import numbers
import threading
from typing import ClassVar, Optional

import numpy as np
import tensorflow as tf

from tt_keras import cache_fold, cache_updates, checks, replicas
from tt_keras._keras import keras
from tt_keras.lookup import tt_embedding_bag, tt_embedding_bag_cached
from tt_keras.reference import EMPTY_ID

__all__ = ["EMPTY_ID", "CacheConfig", "HotRowCache"]

# Eager training calls from several threads take turns to update a cache's state: its
# variables are assigned one by one, and the assignments of two calls would interleave.
_EAGER_UPDATE_LOCK = threading.Lock()


def _as_count(value, name, minimum=0):
    """`value` as an int >= minimum, or a ValueError naming `name` and the value.

    Integral floats (16.0, as JSON configs may hold) are accepted; bool is refused.
    """
    integral = isinstance(value, numbers.Integral) or (
        isinstance(value, numbers.Real) and float(value).is_integer())
    if isinstance(value, bool) or not integral:
        raise ValueError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _empty_ids_initializer(shape, dtype=None, **kwargs):
    del dtype, kwargs
    return tf.fill(shape, tf.constant(EMPTY_ID, tf.int64))


@dataclasses.dataclass(frozen=True)
class CacheConfig:
    """The settings of a hot-row cache, checked (`CacheConfig.create`).

    Attributes:
      cache_size: C, rows the cache holds (0: no cache).
      warmup_steps: W, training calls that only count before the fill.
      refresh_steps: R, refill every R training calls after the fill (0: never).
      counter_size: K, entries of the heavy-hitter counter.
      counter_decay: counts are multiplied by this at each fill and refresh.
      fold_sweeps: at a refresh, the rows that leave the cache are folded back into the
        cores by this many line-searched sweeps over the cores (tt_keras.cache_fold); 0
        lets them revert to the TT product.
      requested_counter_size: the cache_counter_size given (None: K is the default,
        min(4 C, input_dim)), which is what the layer's config keeps.
    """

    cache_size: int = 0
    warmup_steps: int = 0
    refresh_steps: int = 0
    counter_size: int = 0
    counter_decay: float = 0.5
    fold_sweeps: int = 1
    requested_counter_size: Optional[int] = None

    DEFAULT_COUNTER_MULTIPLE: ClassVar[int] = 4

    @classmethod
    def create(cls, input_dim, cache_size=0, cache_warmup_steps=0, cache_refresh_steps=0,
               cache_counter_size=None, cache_counter_decay=0.5, cache_fold_sweeps=1):
        """The config of the layer arguments of the same names; a ValueError names a bad
        one and its value."""
        cache_size = _as_count(cache_size, "cache_size")
        if cache_size > input_dim:
            raise ValueError(f"cache_size = {cache_size} exceeds input_dim = {input_dim}: "
                             "the cache cannot hold more rows than the table has")
        warmup_steps = _as_count(cache_warmup_steps, "cache_warmup_steps")
        refresh_steps = _as_count(cache_refresh_steps, "cache_refresh_steps")
        requested = None
        if cache_counter_size is None:
            counter_size = min(cls.DEFAULT_COUNTER_MULTIPLE * cache_size, input_dim)
        else:
            counter_size = requested = _as_count(cache_counter_size, "cache_counter_size")
            if cache_size and counter_size < cache_size:
                raise ValueError(f"cache_counter_size = {counter_size} is smaller than "
                                 f"cache_size = {cache_size}: the counter must be able "
                                 "to rank at least as many ids as the cache holds")
        if isinstance(cache_counter_decay, bool) or not isinstance(cache_counter_decay,
                                                                   numbers.Real):
            raise ValueError(f"cache_counter_decay must be a number in (0, 1], got "
                             f"{cache_counter_decay!r}")
        if not 0.0 < float(cache_counter_decay) <= 1.0:
            raise ValueError(f"cache_counter_decay must be in (0, 1], got {cache_counter_decay}")
        fold_sweeps = _as_count(cache_fold_sweeps, "cache_fold_sweeps")
        return cls(cache_size, warmup_steps, refresh_steps,
                   counter_size if cache_size else 0, float(cache_counter_decay), fold_sweeps,
                   requested)

    @property
    def enabled(self):
        return self.cache_size > 0

    def variable_specs(self, dim, rows_dtype=None):
        """(name, shape, dtype, initializer, trainable) of each of the cache's variables, in
        the order they are created; rows_dtype None means the layer's variable dtype."""
        c, k = self.cache_size, self.counter_size
        return [
            ("cache_ids", (c,), "int64", _empty_ids_initializer, False),
            ("cache_rows", (c, dim), rows_dtype, "zeros", True),
            ("cache_counter_keys", (k,), "int64", _empty_ids_initializer, False),
            ("cache_counter_counts", (k,), "int64", "zeros", False),
            ("cache_step", (), "int64", "zeros", False),
            ("cache_last_hits", (), "int64", "zeros", False),
            ("cache_last_lookups", (), "int64", "zeros", False),
        ] if self.enabled else []

    def num_bytes(self, dim, float_size):
        """Bytes of the cache's variables, rows of float_size bytes: C (D f + 8) + 16 K + 24."""
        return sum(math.prod(shape) * (float_size if dtype is None else tf.as_dtype(dtype).size)
                   for _, shape, dtype, _, _ in self.variable_specs(dim))

    def layer_config(self):
        """The layer arguments that recreate this config."""
        return {
            "cache_size": self.cache_size,
            "cache_warmup_steps": self.warmup_steps,
            "cache_refresh_steps": self.refresh_steps,
            "cache_counter_size": self.requested_counter_size,
            "cache_counter_decay": self.counter_decay,
            "cache_fold_sweeps": self.fold_sweeps,
        }


def _read(variable):
    """The value of a tf or Keras 3 variable (Keras 3 variables have no read_value)."""
    return tf.convert_to_tensor(variable)


def _done(*updates):
    """A tensor that exists once `updates` ran: what tf.cond branches return (they must
    return tensors of one structure, and tf.no_op is an operation)."""
    with tf.control_dependencies([u for u in updates if u is not None]):
        return tf.constant(True)


def _nothing():
    return tf.constant(True)


def _count_up(variable):
    """Adds one to an int64 scalar variable and returns the new value. The add is one
    AssignAddVariableOp, atomic under the variable's lock: Keras 3's assign_add reads, then
    assigns, and loses the increments of calls running at the same time."""
    handle = variable.handle
    added = tf.raw_ops.AssignAddVariableOp(resource=handle, value=tf.constant(1, tf.int64))
    with tf.control_dependencies([] if added is None else [added]):
        return tf.raw_ops.ReadVariableOp(resource=handle, dtype=tf.int64)


def _training_flag(training):
    """True, False, or a boolean tensor (legacy Keras may pass one) decided at run time.
    None is how a direct call without `training` arrives: inference."""
    if training is None or isinstance(training, (bool, int, np.bool_)):
        return bool(training)
    return training


class HotRowCache(keras.layers.Layer):
    """The hot-row cache in front of a TT table: a Keras layer that owns the cache's state.

    Variables (created by `build`, attributes of the same names): `cache_rows` [C, D]
    (trainable), `cache_ids` [C] int64 (sorted, EMPTY_ID in empty slots),
    `cache_counter_keys` and `cache_counter_counts` [K] int64, and the int64 scalars
    `cache_step` (training calls seen), `cache_last_hits` and `cache_last_lookups` (of the
    last training call). The names are those of tt_keras 0.1.0, whose layer held these
    variables itself.

    Steps are training calls. Call n (1-based) counts its batch, then fills the cache when
    n == W + 1 and refills it when R > 0 and n = W + 1 + j R (j >= 1), before its own lookup
    (cache_updates.schedule); so W = 0 fills the cache from the first training batch.

    Args:
      config: a CacheConfig with cache_size >= 1.
      num_rows: rows of the table; ids lie in [0, num_rows).
      dim: the width D of a row.
      **kwargs: Keras layer arguments (name; dtype: the rows' dtype policy).
    """

    def __init__(self, config, num_rows, dim, **kwargs):
        super().__init__(**kwargs)
        if not config.enabled:
            raise ValueError(f"a HotRowCache needs cache_size >= 1, got {config.cache_size}")
        self.config = config
        self.num_rows = int(num_rows)
        self.dim = int(dim)
        self._values_from_layer = False

    def build(self, input_shape=None):
        """Creates the variables (once)."""
        if self.built:
            return
        for name, shape, dtype, initializer, trainable in self.config.variable_specs(self.dim):
            setattr(self, name, self.add_weight(name=name, shape=shape, dtype=dtype,
                                                initializer=initializer, trainable=trainable))
        self.built = True

    # ---------------------------------------------------------------- sizes and statistics

    @property
    def num_bytes(self):
        """Bytes of the cache's variables (known before they exist)."""
        return self.config.num_bytes(self.dim, tf.as_dtype(self.dtype or "float32").size)

    @property
    def hit_rate(self):
        """Fraction of the ids of the last training call served by the cache (0.0 before the
        first training call; inference calls do not change it)."""
        if not self.built:
            return 0.0
        lookups = int(np.asarray(self.cache_last_lookups))
        return int(np.asarray(self.cache_last_hits)) / lookups if lookups else 0.0

    # ---------------------------------------------------------------- lookup

    def lookup(self, cores, ids, row_splits=None, weights=None, combiner="none",
               backend="auto", check_splits=True, training=None, in_place=False):
        """The cached lookup of `ids` (tt_embedding_bag_cached's arguments), after the state
        update of a training call.

        cores: the layer's core variables (a refresh folds into them).
        training: True for a training call (it counts, fills or refreshes as scheduled, and
        records its hits); False or None for inference, which only reads the cache; or a
        boolean tensor, decided when the graph runs. A training call checks its batch before
        it changes any state, so a rejected call leaves no trace.
        in_place: the op reads the cores and cache rows as variables, in place
        (tt_keras.replicas.reads_in_place); else as tensors.
        """
        training = _training_flag(training)
        if training is False:
            *core_values, cache_rows = replicas.lookup_values([*cores, self.cache_rows],
                                                               in_place)
            return tt_embedding_bag_cached(
                core_values, self.cache_ids, cache_rows, ids, row_splits=row_splits,
                weights=weights, combiner=combiner, num_rows=self.num_rows, backend=backend,
                check_splits=check_splits)
        ids, row_splits, weights = checks.batch_tensors(ids, row_splits, weights, combiner)
        ids, row_splits = checks.batch_values(ids, row_splits, combiner, self.num_rows,
                                              check_splits)

        def tt_rows(some_cores, some_ids):
            return tt_embedding_bag(some_cores, some_ids, combiner="none",
                                    num_rows=self.num_rows, backend=backend)

        eager = tf.executing_eagerly()
        with _EAGER_UPDATE_LOCK if eager else contextlib.nullcontext():
            # In a graph, the update waits for the checks above.
            checked = [ids, row_splits] + ([weights] if weights is not None else [])
            with tf.control_dependencies(checked):
                # Under a tf.distribute strategy every replica updates the state from the
                # ids of all replicas, so the copies stay equal (tt_keras/replicas.py). The
                # gather runs outside the update's tf.cond: a collective must run in every
                # step of every replica alike.
                all_ids = replicas.gather_ids(tf.cast(ids, tf.int64), EMPTY_ID)
                updates = self.update(all_ids, cores, tt_rows, training)
            # The lookup reads the cache (and the cores, which a refresh may fold into) as
            # this call's update left it (filled or refreshed before the lookup, so this
            # call's gradient reaches the rows it used).
            # Variables read in place (the layer hands them over outside a strategy) are
            # ordered after the update by TF's automatic control dependencies, which chain
            # the ops on one resource in program order.
            with tf.control_dependencies(updates):
                cache_ids = tf.identity(self.cache_ids)
                *core_values, cache_rows = replicas.lookup_values([*cores, self.cache_rows],
                                                                   in_place)
        out, num_hits = tt_embedding_bag_cached(
            core_values, cache_ids, cache_rows, ids, row_splits=row_splits, weights=weights,
            combiner=combiner, num_rows=self.num_rows, backend=backend, check_splits=False,
            return_num_hits=True)
        num_hits = replicas.sum_over_replicas(num_hits)
        num_lookups = replicas.sum_over_replicas(tf.size(ids, out_type=tf.int64))
        with _EAGER_UPDATE_LOCK if eager else contextlib.nullcontext():
            recorded = self._record(num_hits, num_lookups, training)
        with tf.control_dependencies([recorded]):
            return tf.identity(out)

    def update(self, ids, cores, tt_rows, training=True):
        """The state changes of one training call, before its lookup; returns the tensors
        the lookup must depend on.

        ids: int64 vector of the batch, already checked (under a tf.distribute strategy,
        the batches of all replicas: tt_keras.replicas.gather_ids); cores: the layer's core
        variables (a refresh folds the rows that leave the cache into them); tt_rows(cores,
        ids): the TT rows of the given core values (what the cache is filled from);
        training: True, False, or a boolean tensor to decide at run time.
        """
        if training is False:
            return []
        if training is not True:
            return [tf.cond(training, lambda: _done(*self.update(ids, cores, tt_rows)),
                            _nothing)]
        config = self.config
        call = _count_up(self.cache_step)  # this call's number, 1-based
        count, populate = cache_updates.schedule(call, config.warmup_steps,
                                                 config.refresh_steps)

        def do_count():
            keys, counts = cache_updates.space_saving_update(
                _read(self.cache_counter_keys), _read(self.cache_counter_counts), ids)
            return _done(replicas.assign_local(self.cache_counter_keys, keys),
                         replicas.assign_local(self.cache_counter_counts, counts))

        def do_populate():
            keys, counts = _read(self.cache_counter_keys), _read(self.cache_counter_counts)
            new_ids = cache_updates.top_ids(keys, counts, config.cache_size)
            old_ids, old_rows = _read(self.cache_ids), _read(self.cache_rows)
            core_values = [_read(core) for core in cores]
            folded = []
            # The first fill evicts nothing: without refreshes the graph has no fold at all.
            if config.refresh_steps and config.fold_sweeps:
                leaving = cache_fold.leaving_rows(old_ids, new_ids)
                core_values = cache_fold.fold_rows(
                    core_values, tf.where(leaving, old_ids, tf.zeros_like(old_ids)), old_rows,
                    leaving, tt_rows, config.fold_sweeps)
                folded = [replicas.assign_local(core, value)
                          for core, value in zip(cores, core_values)]
            with tf.control_dependencies(folded):
                rows = cache_updates.repopulate(
                    old_ids, old_rows, new_ids, lambda some_ids: tt_rows(core_values, some_ids))
            keys, counts = cache_updates.decay_counts(keys, counts, config.counter_decay)
            return _done(*folded, replicas.assign_local(self.cache_ids, new_ids),
                         replicas.assign_local(self.cache_rows, rows),
                         replicas.assign_local(self.cache_counter_keys, keys),
                         replicas.assign_local(self.cache_counter_counts, counts))

        counted = tf.cond(count, do_count, _nothing)
        with tf.control_dependencies([counted]):
            populated = tf.cond(populate, do_populate, _nothing)
        return [counted, populated]

    def seed_counter(self, ids, counts):
        """Replaces the heavy-hitter counter's contents with given id counts.

        For example the counts of a sample of the training data: the fill at training call
        W + 1 then ranks ids by them plus what the warm-up counted, and with
        cache_warmup_steps=0 the first training call fills the cache with the sample's
        hottest ids, so they train as dense rows from the first step. The
        cache_counter_size ids of largest count are kept.

        ids: distinct ids in [0, num_rows); counts: non-negative, one per id. A ValueError
        names a bad argument and leaves the counter as it was.
        """
        ids = np.asarray(ids)
        counts = np.asarray(counts)
        if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"ids must be a vector of integers, got dtype {ids.dtype} and "
                             f"shape {ids.shape}")
        if counts.shape != ids.shape or not np.issubdtype(counts.dtype, np.integer):
            raise ValueError(f"counts must be integers shaped like ids {ids.shape}, got dtype "
                             f"{counts.dtype} and shape {counts.shape}")
        bad = np.flatnonzero((ids < 0) | (ids >= self.num_rows))
        if bad.size:
            raise ValueError(f"ids[{bad[0]}] = {ids[bad[0]]} is not in [0, {self.num_rows})")
        if counts.size and counts.min() < 0:
            at = int(np.argmin(counts))
            raise ValueError(f"counts[{at}] = {counts[at]} is negative")
        if np.unique(ids).size != ids.size:
            raise ValueError("ids must be distinct (one count per id)")
        self.build()
        keys, kept = cache_updates.counter_from_counts(
            tf.constant(ids, tf.int64), tf.constant(counts, tf.int64), self.config.counter_size)
        self.cache_counter_keys.assign(keys)
        self.cache_counter_counts.assign(kept)

    def _record(self, num_hits, num_lookups, training):
        """Stores the hits and lookups of a training call (what hit_rate reports)."""
        def record():
            return _done(replicas.assign_local(self.cache_last_hits, num_hits),
                         replicas.assign_local(self.cache_last_lookups, num_lookups))
        return record() if training is True else tf.cond(training, record, _nothing)

    # ---------------------------------------------------------------- files of tt_keras 0.1.0

    def variables_by_legacy_name(self):
        """{name: variable}: in tt_keras 0.1.0 the layer held these variables itself, under
        the same names (cache_ids, ...), which is how its checkpoints and SavedModels refer
        to them from the layer. Empty before build."""
        if not self.built:
            return {}
        return {spec[0]: getattr(self, spec[0]) for spec in self.config.variable_specs(self.dim)}

    def load_legacy_values(self, values):
        """Assigns values listed as a tt_keras 0.1.0 Keras file lists them among the layer's
        own variables (trainable first: the rows; then ids, counter keys and counts, step,
        last hits and lookups). This cache's own entry of such a file is then empty."""
        variables = list(self.trainable_weights) + list(self.non_trainable_weights)
        if len(values) != len(variables):
            raise ValueError(f"expected {len(variables)} cache values, got {len(values)}")
        for variable, value in zip(variables, values):
            variable.assign(value)
        self._values_from_layer = True

    def load_own_variables(self, store):
        if self._values_from_layer and not list(store.keys()):
            return
        super().load_own_variables(store)
