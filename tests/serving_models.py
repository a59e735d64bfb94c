"""Trained tiny DLRMs for the serving tests, under whichever Keras this process runs, and a
fresh Python (one that never imports tt_keras) to serve their exports.

Under legacy tf_keras the DLRM is examples/dlrm's (TFRS Ranking); under Keras 3 it is
examples/keras3_dlrm's (keras-rs). Both export through examples.dlrm.export.export_dlrm with
the same raw signature, so the serving checks are the same for both.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from tt_keras._keras import IS_KERAS_3

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from examples.dlrm import data as dlrm_data  # noqa: E402
from examples.dlrm import export as dlrm_export  # noqa: E402

SAMPLE = os.path.join(REPO, "..", "shared", "data", "criteo_kaggle_sample.tsv")


def train_tiny_dlrm(tt_tables=3, steps=3, batch_size=32, seed=5):
    """A small DLRM (TT on the `tt_tables` largest tables) after `steps` SGD steps."""
    if IS_KERAS_3:
        k3_model = pytest.importorskip(
            "examples.keras3_dlrm.model", reason="keras-rs is not installed")
        model = k3_model.build_model(k3_model.tiny_config(tt_tables=tt_tables),
                                     learning_rate=0.5)
    else:
        from examples.dlrm import model as tfrs_model  # pylint: disable=g-import-not-at-top

        model = tfrs_model.build_model(tfrs_model.tiny_config(tt_tables=tt_tables), "sgd", 0.5)
    source = dlrm_data.SyntheticCriteo(model.config.table_sizes, seed=seed)
    model.fit(source.dataset(batch_size), steps_per_epoch=steps, epochs=1, shuffle=False,
              verbose=0)
    assert int(model.optimizer.iterations.numpy()) == steps
    return model


def expected_predictions(model, feed):
    """The model's predictions on raw inputs, preprocessed by the export's own function."""
    features = dlrm_export.raw_to_features({k: tf.constant(v) for k, v in feed.items()},
                                           model.config.table_sizes)
    return model(features, training=False).numpy()


# Serves SavedModels in a process that never imports tt_keras; requests/outputs as .npz.
_SERVER = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    job = json.loads(sys.argv[1])
    fn = tf.saved_model.load(job["model"]).signatures["serving_default"]
    out = {}
    for i, path in enumerate(job["requests"]):
        request = np.load(path, allow_pickle=False)
        result = fn(**{k: tf.constant(request[k]) for k in request.files})
        out.update({f"{i}/{k}": v.numpy() for k, v in result.items()})
    np.savez(job["outputs"], **out)
    print(json.dumps({"tt_keras_imported": "tt_keras" in sys.modules}))
""")


def serve_in_fresh_python(tmp_path, model_dir, requests):
    """[{input: array}] -> [{output: array}], served by a Python without tt_keras."""
    paths = []
    for i, request in enumerate(requests):
        paths.append(str(tmp_path / f"request_{i}.npz"))
        np.savez(paths[-1], **{k: np.asarray(v) for k, v in request.items()})
    outputs = str(tmp_path / "outputs.npz")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    job = json.dumps({"model": str(model_dir), "requests": paths, "outputs": outputs})
    proc = subprocess.run([sys.executable, "-c", _SERVER, job], cwd=str(tmp_path), env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"tt_keras_imported": False}
    data = np.load(outputs)
    served = [{} for _ in requests]
    for key in data.files:
        i, name = key.split("/", 1)
        served[int(i)][name] = data[key]
    return served
