"""A Keras model through a SavedModel and back, under whichever Keras this process runs."""

import tensorflow as tf

from tt_keras._keras import IS_KERAS_3, keras


def saved_model_predictions(model, path, x):
    """The model exported to `path` as a SavedModel, loaded back and applied to x: Keras 3
    exports its inference function (`model.export`), legacy Keras saves the whole model."""
    if IS_KERAS_3:
        model.export(path)
        # Held in a name: a loaded object dropped before its function runs takes the
        # function's variables with it.
        restored = tf.saved_model.load(path)
        return restored.serve(tf.constant(x)).numpy()
    model.save(path, save_format="tf")
    return keras.models.load_model(path).predict(x, verbose=0)
