"""The compiled TT ops: lazy library loading, Python wrappers and gradients."""

from tt_keras.ops.cached_ops import tt_embedding_bag_cached
from tt_keras.ops.loader import OpLibraryUnavailable, tt_ops_library
from tt_keras.ops.tt_ops import COMBINERS, tt_embedding_bag

__all__ = [
    "OpLibraryUnavailable",
    "tt_ops_library",
    "COMBINERS",
    "tt_embedding_bag",
    "tt_embedding_bag_cached",
]
