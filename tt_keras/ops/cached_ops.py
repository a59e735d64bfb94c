"""Python wrapper of `TTKeras>TTEmbeddingBagCached` and its registered gradient.

The gradient op returns dense core gradients (from the cache misses only) and the cache
rows' gradient as distinct slots plus one summed row per slot; here that pair becomes a
tf.IndexedSlices, so Keras optimizers update only the cache rows that were hit.
"""

import tensorflow as tf

from tt_keras.ops.loader import tt_ops_library
from tt_keras.ops.tt_ops import bag_op_inputs, optional_weights_grad, unsupported_second_order


def tt_embedding_bag_cached(cores, cache_ids, cache_rows, indices, row_splits, weights,
                            num_rows, combiner):
    """Calls `TTKeras>TTEmbeddingBagCached` (docs/cache.md); arguments already validated.

    Returns (output, num_hits): the pooled rows and how many indices hit the cache; the op's
    other outputs (residuals for its gradient) stay in the graph for the gradient.
    """
    outputs = tt_ops_library.ops.tt_keras_tt_embedding_bag_cached(
        cores=cores, cache_ids=cache_ids, cache_rows=cache_rows, indices=indices,
        row_splits=row_splits, weights=weights, num_rows=num_rows, combiner=combiner)
    return outputs.output, outputs.num_hits


@tf.RegisterGradient("TTKeras>TTEmbeddingBagCached")
def _tt_embedding_bag_cached_grad(op, grad, *unused_other_grads):
    cores, others, num_rows, combiner = bag_op_inputs(op)
    cache_ids, cache_rows, indices, row_splits, weights = others
    outputs = tt_ops_library.ops.tt_keras_tt_embedding_bag_cached_grad(
        grad=grad, cores=cores, cache_ids=cache_ids, indices=indices, row_splits=row_splits,
        weights=weights, residual_slots=op.outputs[2], residual_plan=op.outputs[3],
        residual_partials=op.outputs[4], num_rows=num_rows, combiner=combiner)
    rows_shape = (tf.raw_ops.VariableShape(input=cache_rows, out_type=tf.int64)
                  if cache_rows.dtype == tf.resource else tf.shape(cache_rows, out_type=tf.int64))
    cache_grad = tf.IndexedSlices(outputs.cache_grad_values, outputs.cache_grad_slots,
                                  dense_shape=rows_shape)
    # Per-id rows come from the cache or the chain, as in the forward.
    weights_gradient = optional_weights_grad(
        op, grad, combiner, weights,
        lambda: tt_embedding_bag_cached(cores, cache_ids, cache_rows, indices, row_splits,
                                        weights[:0], num_rows, "none")[0])
    return list(outputs.core_grads) + [None, cache_grad, None, None, weights_gradient]


tf.RegisterGradient("TTKeras>TTEmbeddingBagCachedGrad")(
    unsupported_second_order("TTKeras>TTEmbeddingBagCached"))
