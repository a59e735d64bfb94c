"""tt_keras: Tensor-Train compressed embedding tables (TT-Rec) for TensorFlow and Keras.

    import tt_keras
    layer = tt_keras.TTEmbedding(input_dim=10_131_227, output_dim=16, tt_rank=32)

The layer works under Keras 3 and under legacy tf_keras (TF_USE_LEGACY_KERAS=1, which
TensorFlow Recommenders needs). Lookups run a fused custom op when its library is built, and
a pure-TensorFlow chain of gathers and batched matmuls otherwise.
"""

from tt_keras import initializers, tt_math
from tt_keras.initializers import (
    SampledGaussian,
    TTApproxNormal,
    TTInitializer,
    TTNaiveUniform,
    TTUniform,
)
from tt_keras.compress import compress
from tt_keras.export import check_portable, export_saved_model, graph_op_types
from tt_keras.layer import TTEmbedding
from tt_keras.lookup import (
    BACKENDS,
    lookup_backend_scope,
    resolve_backend,
    tt_embedding_bag,
    tt_embedding_bag_cached,
)
from tt_keras.ops import OpLibraryUnavailable
from tt_keras.tt_math import TTShape, plan_rank, suggest_shapes, to_dense, tt_svd

__version__ = "0.1.0"

__all__ = [
    "BACKENDS",
    "OpLibraryUnavailable",
    "SampledGaussian",
    "TTApproxNormal",
    "TTEmbedding",
    "TTInitializer",
    "TTNaiveUniform",
    "TTShape",
    "TTUniform",
    "check_portable",
    "compress",
    "export_saved_model",
    "graph_op_types",
    "initializers",
    "lookup_backend_scope",
    "plan_rank",
    "resolve_backend",
    "suggest_shapes",
    "to_dense",
    "tt_embedding_bag",
    "tt_embedding_bag_cached",
    "tt_math",
    "tt_svd",
]
