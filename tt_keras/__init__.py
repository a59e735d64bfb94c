"""tt_keras: Tensor-Train compressed embedding tables (TT-Rec) for TensorFlow and Keras.

    import tt_keras
    layer = tt_keras.TTEmbedding(input_dim=10_131_227, output_dim=16, tt_rank=32)

The layer works under Keras 3 and under legacy tf_keras (TF_USE_LEGACY_KERAS=1, which
TensorFlow Recommenders needs). Lookups run a fused custom op when its library is built, and
a pure-TensorFlow chain of gathers and batched matmuls otherwise.

`import tt_keras` imports neither TensorFlow nor Keras: each name below is imported on first
use, so a program can still set TensorFlow up first (tf.distribute strategies such as
MultiWorkerMirroredStrategy must be created before any op runs), and the NumPy parts
(`tt_keras.tt_math`, `tt_keras.oracle`) work where TensorFlow is not installed. Keras finds
TTEmbedding and the initializers when it loads a saved model once they have been imported:
use `tt_keras.TTEmbedding` (or any name that needs TensorFlow) before
`keras.models.load_model`.
"""

import importlib as _importlib

__version__ = "0.1.0"

# Public name -> the submodule that defines it (relative to this package).
_ATTRIBUTES = {
    "BACKENDS": "lookup",
    "OpLibraryUnavailable": "ops",
    "SampledGaussian": "initializers",
    "TTApproxNormal": "initializers",
    "TTEmbedding": "layer",
    "TTInitializer": "initializers",
    "TTNaiveUniform": "initializers",
    "TTShape": "tt_math",
    "TTUniform": "initializers",
    "check_portable": "export",
    "export_saved_model": "export",
    "graph_op_types": "export",
    "lookup_backend_scope": "lookup",
    "plan_rank": "tt_math",
    "resolve_backend": "lookup",
    "suggest_shapes": "tt_math",
    "to_dense": "tt_math",
    "tt_embedding_bag": "lookup",
    "tt_embedding_bag_cached": "lookup",
    "tt_svd": "tt_math",
}
_SUBMODULES = ("initializers", "tt_math")

__all__ = sorted(list(_ATTRIBUTES) + list(_SUBMODULES))


def __getattr__(name):
    # PEP 562: called only for names not yet in the module's namespace.
    if name in _SUBMODULES:
        return _importlib.import_module(f"{__name__}.{name}")
    if name in _ATTRIBUTES:
        value = getattr(_importlib.import_module(f"{__name__}.{_ATTRIBUTES[name]}"), name)
        globals()[name] = value  # later lookups skip __getattr__
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
