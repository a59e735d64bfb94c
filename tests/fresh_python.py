"""Serving SavedModels from a Python that never imports tt_keras, as TF Serving would."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np

# Requests and results travel through .npz files; the last line printed says whether
# tt_keras got imported (it must not: the exports must stand on stock TensorFlow).
_SERVER = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    for job in json.loads(sys.argv[1]):
        fn = tf.saved_model.load(job["model"]).signatures["serving_default"]
        out = {}
        for i, path in enumerate(job["requests"]):
            request = np.load(path, allow_pickle=False)
            result = fn(**{k: tf.constant(request[k]) for k in request.files})
            out.update({f"{i}/{k}": v.numpy() for k, v in result.items()})
        np.savez(job["outputs"], **out)
    print(json.dumps({"tt_keras_imported": "tt_keras" in sys.modules}))
""")


def serve_in_fresh_python(tmp_path, jobs):
    """jobs: [(saved_model_dir, [{input: array}])] -> for each job, [{output: array}] (one
    dict a request), computed by `serving_default` in one fresh Python for all jobs."""
    spec = []
    for j, (model_dir, requests) in enumerate(jobs):
        paths = []
        for i, request in enumerate(requests):
            paths.append(str(tmp_path / f"request_{j}_{i}.npz"))
            np.savez(paths[-1], **{k: np.asarray(v) for k, v in request.items()})
        spec.append({"model": str(model_dir), "requests": paths,
                     "outputs": str(tmp_path / f"outputs_{j}.npz")})
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    proc = subprocess.run([sys.executable, "-c", _SERVER, json.dumps(spec)], cwd=str(tmp_path),
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"tt_keras_imported": False}
    results = []
    for job, (_, requests) in zip(spec, jobs):
        data = np.load(job["outputs"])
        served = [{} for _ in requests]
        for key in data.files:
            i, name = key.split("/", 1)
            served[int(i)][name] = data[key]
        results.append(served)
    return results
