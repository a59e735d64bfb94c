"""tt_keras: Tensor-Train compressed embedding tables (TT-Rec) for TensorFlow and Keras.

    import tt_keras
    layer = tt_keras.TTEmbedding(input_dim=10_131_227, output_dim=16, tt_rank=32)

The layer works under Keras 3 and under legacy tf_keras (TF_USE_LEGACY_KERAS=1, which
TensorFlow Recommenders needs). Lookups run a fused custom op when its library is built, and
a pure-TensorFlow chain of gathers and batched matmuls otherwise.

Where TensorFlow is installed, `import tt_keras` imports it and Keras (which creates no op,
so a program can still configure TensorFlow afterwards: tf.distribute strategies such as
MultiWorkerMirroredStrategy must be created before any op runs) and registers TTEmbedding
and the initializers with Keras' serialization, so `keras.models.load_model` finds them.
Where it is not, the NumPy parts (`tt_keras.tt_math`, `tt_keras.oracle`) still import and
work: the other public names are resolved on first use. The op library is loaded on the
first lookup; `tt_keras.register_all()` loads it up front, which a process needs before it
loads a SavedModel traced on the op.
"""

import importlib as _importlib

__version__ = "0.1.0"

# Public name -> the submodule that defines it (relative to this package).
_ATTRIBUTES = {
    "BACKENDS": "lookup",
    "CacheConfig": "cache",
    "HotRowCache": "cache",
    "OpLibraryUnavailable": "ops",
    "SampledGaussian": "initializers",
    "TTApproxNormal": "initializers",
    "TTEmbedding": "layer",
    "TTInitializer": "initializers",
    "TTNaiveUniform": "initializers",
    "TTShape": "tt_math",
    "TTUniform": "initializers",
    "cache_row_bytes": "cache_budget",
    "check_portable": "export",
    "compress": "compression",
    "export_saved_model": "export",
    "graph_op_types": "export",
    "lookup_backend_scope": "lookup",
    "plan_rank": "tt_math",
    "register_all": "register",
    "resolve_backend": "lookup",
    "split_cache_budget": "cache_budget",
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


def _tensorflow_installed():
    try:
        import tensorflow  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    except ImportError:
        return False
    return True


if _tensorflow_installed():
    # Registration happens when the layer's module runs; a saved model names the layer by
    # its registered name only, so it must happen at `import tt_keras`.
    _importlib.import_module(f"{__name__}.layer")
