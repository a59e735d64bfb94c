"""Export a trained DLRM as a SavedModel for TF Serving (via tt_keras.export).

The serving signature ("serving_default") is flat: one named input per raw Criteo feature,
all of shape [None] (one value per example), so a TF Serving REST request sends rows
exactly as they appear in train.txt:

  input_format="raw" (default)
    "I1".."I13": float32 [None]  the raw integer counts (send 0 for a missing value; negative
                                 values are allowed: the graph applies log(max(x, 0) + 1))
    "C1".."C26": string  [None]  the raw 8-hex-digit ids ("" for missing); the graph
                                 hashes them exactly as the training reader does
                                 (missing -> 0, else 1 + int(hex) mod (N - 1))

  input_format="ids" (for clients that preprocess themselves)
    "dense":      float32 [None, 13]  log-transformed dense features
    "C1".."C26":  int64   [None]      table ids in [0, N)

Output: {"predictions": float32 [None]}, the click probability.

A request is checked before it is computed: features of unequal lengths, a NaN or Inf count
and more than --export_max_batch_size rows (default 65536) are refused with an error naming
the feature.

  curl -X POST http://localhost:8501/v1/models/dlrm:predict -d '{"instances": [
    {"I1": 1, "I2": 1, ..., "I13": 2, "C1": "68fd1e64", "C2": "80e26c9b", ..., "C26": ""}]}'
  -> {"predictions": [0.0923]}

The default export is portable (standard TF ops only, checked); portable=False keeps the
tt_keras custom op (needs a TF Serving built with it).
"""

import tensorflow as tf

from tt_keras import export as tt_export

from examples.dlrm import data as dlrm_data

INPUT_FORMATS = ("raw", "ids")


def serving_input_signature(input_format="raw"):
    """{name: tf.TensorSpec} of the serving signature (see module doc)."""
    if input_format == "raw":
        sig = {name: tf.TensorSpec([None], tf.float32, name) for name in dlrm_data.DENSE_FEATURES}
        sig.update({name: tf.TensorSpec([None], tf.string, name)
                    for name in dlrm_data.CAT_FEATURES})
        return sig
    if input_format == "ids":
        sig = {"dense": tf.TensorSpec([None, dlrm_data.NUM_DENSE], tf.float32, "dense")}
        sig.update({name: tf.TensorSpec([None], tf.int64, name)
                    for name in dlrm_data.CAT_FEATURES})
        return sig
    raise ValueError(f"input_format must be one of {INPUT_FORMATS}, got {input_format!r}")


def raw_to_features(inputs, table_sizes):
    """Raw serving inputs {"I1".., "C1"..} -> the model's features (the reader's preprocessing)."""
    ints = [inputs[name] for name in dlrm_data.DENSE_FEATURES]
    hexes = [inputs[name] for name in dlrm_data.CAT_FEATURES]
    return dlrm_data.preprocess_raw(ints, hexes, table_sizes)


def make_serving_fn(model, input_format="raw"):
    table_sizes = model.config.table_sizes

    def serve(inputs):
        if input_format == "raw":
            features = raw_to_features(inputs, table_sizes)
        else:
            features = dict(inputs)
        return {"predictions": model(features, training=False)}

    return serve


def export_dlrm(model, export_dir, input_format="raw", portable=True,
                max_batch_size=tt_export.DEFAULT_MAX_BATCH_SIZE):
    """Exports a built DLRM (examples.dlrm.model.DLRM). Returns the SavedModel's op types.

    The signature refuses a request whose features have unequal lengths, that holds a NaN
    or Inf count, or that has more than max_batch_size rows (0: no bound), naming the
    feature (tt_keras.export.validated_inputs).

    Raises tt_keras.export.NonPortableGraphError if portable and a custom op is left.
    """
    return tt_export.export_saved_model(
        model, export_dir, serving_input_signature(input_format),
        serving_fn=make_serving_fn(model, input_format), portable=portable,
        max_batch_size=max_batch_size)
