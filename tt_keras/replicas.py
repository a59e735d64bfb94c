"""What the layer does differently inside a tf.distribute replica (docs/distribution.md).

Under a strategy (MirroredStrategy, MultiWorkerMirroredStrategy) every replica holds a copy
of every variable, and the copies must stay equal. Trainable variables stay equal because
the optimizer applies the same all-reduced gradient to each. The hot-row cache's state (its
counter, ids and, at a fill, its rows, and at a refresh the cores it folds into) is instead
written by the layer from the batch's ids, which differ per replica. So:

- `gather_ids`: every replica sees the ids of all replicas' batches (in replica order, which
  is the order of the global batch), so every replica computes the same update;
- `assign_local`: each replica then writes that value into its own copy, with no cross-replica
  aggregation (it is equal everywhere already, and an aggregating assign inside a tf.cond
  would be a collective that only some steps run);
- `sum_over_replicas`: the cache's hit statistics are those of the global batch;
- `dense_gradient`: gradients of the cache rows (and, on the pure-TF path, of the cores) are
  tf.IndexedSlices; strategies all-gather those, and TF 2.21's CollectiveGatherV2 crashes the
  process (SIGSEGV) when every worker gathers an empty one, as the cache rows' gradient is
  during the warm-up. A dense gradient is all-reduced instead, at a fixed size (the cache
  rows and the cores are small).

Outside a strategy every helper is the identity (or a plain assign), so single-device
training keeps its sparse updates.
"""

import tensorflow as tf

__all__ = ["assign_local", "dense_gradient", "gather_ids", "replica_context",
           "sum_over_replicas"]


def replica_context():
    """The replica context of a non-default strategy when called inside one (in
    strategy.run or model.fit's step), else None (no strategy, or its cross-replica
    context, where assignments reach every copy anyway)."""
    if not tf.distribute.has_strategy():
        return None
    return tf.distribute.get_replica_context()


def gather_ids(ids, sentinel):
    """The concatenation of every replica's int64 vector `ids`, in replica order (ids
    itself outside a replica context).

    Each replica adds one `sentinel` before the gather and the sentinels are dropped after
    it, so no replica ever gathers an empty tensor (see the module docstring); sentinel must
    be a value no id takes.
    """
    context = replica_context()
    if context is None:
        return ids
    padded = tf.concat([ids, tf.constant([sentinel], ids.dtype)], 0)
    gathered = context.all_gather(padded, axis=0)
    return tf.boolean_mask(gathered, tf.not_equal(gathered, sentinel))


def sum_over_replicas(value):
    """The sum of a tensor over the replicas (value itself outside a replica context)."""
    context = replica_context()
    if context is None:
        return value
    return context.all_reduce(tf.distribute.ReduceOp.SUM, value)


def assign_local(variable, value):
    """Assigns `value` to this replica's copy of `variable` only; returns the op (None when
    eager).

    Used for state that every replica computes identically (from gathered ids). It writes
    through the variable's handle, which inside a replica is that replica's component, so no
    aggregation or merge_call runs whatever the variable's `aggregation` (tf.keras and Keras
    3 create weights with different ones); outside a strategy it is a plain assign.
    """
    value = tf.cast(value, variable.dtype)
    return tf.raw_ops.AssignVariableOp(resource=variable.handle, value=value)


@tf.custom_gradient
def _densified(x):
    def grad(upstream):
        return tf.convert_to_tensor(upstream)
    return tf.identity(x), grad


def reads_in_place(compute_dtype):
    """Whether a layer's TT lookup hands the op its variables, which the op then reads in
    place (tt_keras.lookup): outside any strategy, computing in float32. Otherwise it hands
    over tensors: in a replica context with a dense gradient (dense_gradient), and under
    mixed precision read with the autocast."""
    return not tf.distribute.has_strategy() and tf.as_dtype(compute_dtype) == tf.float32


def lookup_values(variables, in_place):
    """`variables` as a layer's TT lookup takes them (see reads_in_place)."""
    return list(variables) if in_place else [dense_gradient(v) for v in variables]


def dense_gradient(value):
    """`value` (a variable or tensor) as a tensor whose gradient reaches it dense, inside a
    replica context; as a plain tensor otherwise (its gradient left as the lookup makes it,
    sparse for the cache rows)."""
    value = tf.convert_to_tensor(value)
    if replica_context() is None:
        return value
    return _densified(value)
