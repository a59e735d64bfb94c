"""`register_all`: what a process needs before it loads a model saved with tt_keras.

Modelled on tensorflow_addons.register_all: `import tt_keras` already registers the Keras
objects, but the op library is loaded lazily, on the first lookup. A SavedModel traced on
the op (a native export, or a legacy Keras SavedModel of a model whose layers used the op)
names `TTKeras>` ops, and TensorFlow refuses to load it ("Op type not registered") unless
the library was loaded first.
"""

import importlib


def register_all(keras_objects=True, custom_kernels=True):
    """Registers tt_keras' Keras objects and custom ops with TensorFlow's global registries.

    Args:
      keras_objects: register TTEmbedding and the initializers with Keras' serialization.
      custom_kernels: load the op library, so graphs holding `TTKeras>` ops can be loaded.

    Returns:
      True when the op library is loaded (or was not asked for); False when it cannot be
      used here, which is warned about once (graphs of standard ops still load).
    """
    if keras_objects:
        importlib.import_module("tt_keras.layer")
    if not custom_kernels:
        return True
    from tt_keras.ops import tt_ops_library  # pylint: disable=import-outside-toplevel

    return tt_ops_library.available(warn=True)
