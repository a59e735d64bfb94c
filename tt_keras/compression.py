"""`compress`: a trained Keras model with its large Embedding tables turned into TTEmbeddings.

    model.fit(...)                                       # keras.layers.Embedding tables
    small = tt_keras.compress(model, min_rows=100_000, tt_rank=32)
    small.compile(...); small.fit(...)                   # fine-tune the cores

Each `keras.layers.Embedding` with at least `min_rows` rows becomes a `TTEmbedding` whose
cores are the TT-SVD of the trained table (`TTEmbedding.from_dense`): the best TT
approximation of those ranks up to a factor sqrt(k - 1), and the table itself when the
ranks are full. Every other layer is rebuilt from its config, as keras.models.clone_model
does, and given the trained weights (under Keras 3 a Lambda layer holding a Python lambda
needs keras.config.enable_unsafe_deserialization() for that). The original model is not
changed.

Works under Keras 3 and legacy tf_keras, on Sequential and functional models, nested ones
included (keras.models.clone_model rebuilds them). Subclassed models have no graph of
layers to rebuild: build the TTEmbedding in the model's constructor from the trained
table instead, `TTEmbedding.from_dense(embedding.embeddings.numpy(), tt_rank)`, and copy
the other weights.
"""

import tensorflow as tf

from tt_keras._keras import keras
from tt_keras.layer import TTEmbedding
from tt_keras.shape_checks import as_int


class SubclassedModelError(TypeError):
    """compress() cannot rebuild a subclassed model (its layers are wired in Python code)."""


def _is_graph_model(model) -> bool:
    """Sequential or functional (a graph of layers that clone_model can rebuild)."""
    if isinstance(model, keras.Sequential):
        return True
    return any(cls.__name__ == "Functional" for cls in type(model).__mro__)


def _tt_from_embedding(layer, tt_rank, num_cores, tt_kwargs):
    if getattr(layer, "mask_zero", False):
        raise ValueError(f"Embedding {layer.name!r} has mask_zero=True; TTEmbedding computes "
                         "no mask, so compress() would change what the model does")
    if getattr(layer, "embeddings_constraint", None) is not None:
        raise ValueError(f"Embedding {layer.name!r} has an embeddings_constraint, which has no "
                         "counterpart on TT cores")
    table = tf.convert_to_tensor(layer.embeddings).numpy()  # Keras 3 LoRA: the merged table
    kwargs = dict(name=layer.name, dtype=layer.dtype_policy,
                  embeddings_regularizer=layer.embeddings_regularizer,
                  activity_regularizer=layer.activity_regularizer)
    kwargs.update(tt_kwargs)
    return TTEmbedding.from_dense(table, tt_rank, num_cores=num_cores, **kwargs)


def _clone(model, min_rows, tt_rank, num_cores, tt_kwargs, copies):
    """clone_model with Embeddings >= min_rows replaced; fills copies {new: original}."""

    def clone_layer(layer):
        if _is_graph_model(layer):
            new = _clone(layer, min_rows, tt_rank, num_cores, tt_kwargs, copies)
        elif isinstance(layer, keras.layers.Embedding) and layer.input_dim >= min_rows:
            return _tt_from_embedding(layer, tt_rank, num_cores, tt_kwargs)
        else:
            new = layer.__class__.from_config(layer.get_config())
            if isinstance(layer, keras.layers.Layer):  # Keras 3 also clones bare ops
                copies[id(new)] = (new, layer)
        return new

    return keras.models.clone_model(model, clone_function=clone_layer)


def compress(model, min_rows: int, tt_rank, num_cores=None, **tt_kwargs):
    """A new model in which every Embedding of >= min_rows rows is a TT-SVD'd TTEmbedding.

    Args:
      model: a built Sequential or functional Keras model (Keras 3 or tf_keras).
      min_rows: Embedding layers with input_dim >= min_rows are compressed.
      tt_rank: the TT rank (an int or the inner ranks, as for TTEmbedding); ranks above
        what a table's unfoldings allow are lowered to that bound, which reproduces the
        table exactly.
      num_cores: number of TT cores (default: TTEmbedding's).
      **tt_kwargs: more TTEmbedding arguments (e.g. lookup_backend, cache_size).

    The Embedding's regularizers carry over (an embeddings_regularizer then applies to each
    core); mask_zero=True and embeddings constraints are refused. The new model is not
    compiled: compile it to fine-tune.

    Returns:
      The new model; layer names are kept, so model.get_layer(name) finds the TTEmbedding.

    Raises:
      SubclassedModelError: the model is subclassed (see the module docstring for the way).
      ValueError: a bad min_rows, an Embedding that cannot be compressed faithfully, or
        TT arguments that TTEmbedding refuses.
    """
    min_rows = as_int(min_rows, "min_rows")
    if not _is_graph_model(model):
        raise SubclassedModelError(
            f"compress() rebuilds Sequential and functional models; {type(model).__name__} "
            "is subclassed. Create its TTEmbedding from the trained table in its "
            "constructor instead: TTEmbedding.from_dense(embedding.embeddings.numpy(), "
            "tt_rank), then copy the other layers' weights")
    if not model.built:
        raise ValueError(f"model {model.name!r} is not built: build or train it first")
    copies = {}
    new_model = _clone(model, min_rows, tt_rank, num_cores, tt_kwargs, copies)
    for new, original in copies.values():
        new.set_weights(original.get_weights())
    return new_model
