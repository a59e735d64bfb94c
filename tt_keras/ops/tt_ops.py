"""Python wrappers of the custom TT ops and their registered gradients.

The ops compute in float32; the cores' gradient comes from TTEmbeddingBagGrad, and the
gradient of per-id weights (rarely needed: weights are usually data) is derived here from
per-id rows, which keeps the C++/CUDA backward free of the combiners' quotient rules.
"""

import tensorflow as tf

from tt_keras.ops.loader import tt_ops_library
from tt_keras.tt_math import COMBINERS  # noqa: F401  (re-exported by tt_keras.ops)

__all__ = ["COMBINERS", "bag_op_inputs", "optional_weights_grad", "tt_embedding_bag",
           "unsupported_second_order", "weights_grad"]


def tt_embedding_bag(cores, indices, row_splits, weights, num_rows, combiner):
    """Calls `TTKeras>TTEmbeddingBag` (see docs/ops.md); arguments already validated.

    Returns the looked-up rows; the op's other outputs (residuals for its gradient) stay in
    the graph for the registered gradient to pick up.
    """
    return tt_ops_library.ops.tt_keras_tt_embedding_bag(
        cores=cores,
        indices=indices,
        row_splits=row_splits,
        weights=weights,
        num_rows=num_rows,
        combiner=combiner,
    )[0]


def weights_grad(op, grad, rows):
    """d loss / d weights for a pooled lookup, given per-id rows (nnz x D)."""
    combiner = op.get_attr("combiner").decode()
    row_splits = op.inputs[-2]
    weights = op.inputs[-1]
    num_bags = tf.shape(row_splits)[0] - 1
    bag = tf.ragged.row_splits_to_segment_ids(row_splits, out_type=tf.int64)
    grad_per_id = tf.gather(grad, bag)
    g_dot_row = tf.reduce_sum(grad_per_id * rows, axis=1)
    if combiner == "sum":
        return g_dot_row
    if combiner == "mean":
        norm = tf.math.unsorted_segment_sum(weights, bag, num_bags)
    else:
        norm = tf.sqrt(tf.math.unsorted_segment_sum(tf.square(weights), bag, num_bags))
    out = op.outputs[0]
    g_dot_out = tf.gather(tf.reduce_sum(grad * out, axis=1), bag)
    norm_per_id = tf.gather(norm, bag)
    if combiner == "mean":
        # out = S / W: d out / d w_i = (row_i - out) / W
        return tf.math.divide_no_nan(g_dot_row - g_dot_out, norm_per_id)
    # out = S / n, n = sqrt(sum w^2): d out / d w_i = row_i / n - out * w_i / n^2
    return tf.math.divide_no_nan(g_dot_row, norm_per_id) - tf.math.divide_no_nan(
        g_dot_out * weights, tf.square(norm_per_id)
    )


def bag_op_inputs(op):
    """(cores, the inputs after them, num_rows, combiner) of a TT bag op, for its gradient."""
    num_cores = op.get_attr("N")
    return (list(op.inputs[:num_cores]), list(op.inputs[num_cores:]), op.get_attr("num_rows"),
            op.get_attr("combiner").decode())


def optional_weights_grad(op, grad, combiner, weights, per_id_rows):
    """The weights' gradient, or None without weights (an empty vector means none).

    `per_id_rows()` computes the unpooled rows once more, only for this rarely needed
    gradient.
    """
    if combiner == "none" or weights.shape.num_elements() == 0:
        return None
    return weights_grad(op, grad, per_id_rows())


@tf.RegisterGradient("TTKeras>TTEmbeddingBag")
def _tt_embedding_bag_grad(op, grad, *unused_residual_grads):
    cores, (indices, row_splits, weights), num_rows, combiner = bag_op_inputs(op)
    core_grads = tt_ops_library.ops.tt_keras_tt_embedding_bag_grad(
        grad=grad, cores=cores, indices=indices, row_splits=row_splits, weights=weights,
        residual_plan=op.outputs[1], residual_partials=op.outputs[2], num_rows=num_rows,
        combiner=combiner)
    weights_gradient = optional_weights_grad(
        op, grad, combiner, weights,
        lambda: tt_embedding_bag(cores, indices, row_splits, weights[:0], num_rows, "none"))
    return list(core_grads) + [None, None, weights_gradient]


def unsupported_second_order(forward_op):
    """A gradient function for the gradient op of `forward_op` that refuses clearly: the
    gradient ops have no gradient of their own (second-order derivatives need the pure-TF
    lookup, which TF differentiates any number of times)."""
    def refuse(op, *unused_grads):
        raise tf.errors.UnimplementedError(
            None, None,
            f"second-order gradients of {forward_op} are not supported (no gradient of "
            f"{op.type}); use lookup_backend='reference' (pure TF) to differentiate twice")
    return refuse


tf.RegisterGradient("TTKeras>TTEmbeddingBagGrad")(
    unsupported_second_order("TTKeras>TTEmbeddingBag"))
