"""The Keras that TensorFlow hands out in this process: Keras 3 or legacy tf_keras.

tf.keras resolves to tf_keras when TF_USE_LEGACY_KERAS=1 (what TFRS needs) and to Keras 3
otherwise. Keras 3's `tf.keras` alias lacks `keras.saving`, so we import the real package.
Everything in tt_keras imports `keras` from here, so one process uses one Keras.
"""

import os

import tensorflow as tf


def _legacy_requested():
    return os.environ.get("TF_USE_LEGACY_KERAS", "").lower() in ("1", "true", "yes")


if _legacy_requested():
    import tf_keras as keras  # noqa: F401

    IS_KERAS_3 = False
else:
    import keras  # noqa: F401

    IS_KERAS_3 = keras.__version__.startswith("3.")

register_serializable = keras.saving.register_keras_serializable

__all__ = ["keras", "IS_KERAS_3", "register_serializable", "tf"]
