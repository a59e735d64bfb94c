"""The package's import contract.

The NumPy parts (tt_math, the oracle, the CUDA bindings) import and run where TensorFlow is
missing; where it is installed, `import tt_keras` registers the layer with Keras (a saved
model loads after a plain `import tt_keras`) and creates no TensorFlow op, so a program can
still configure TensorFlow (threads, devices, a MultiWorkerMirroredStrategy) afterwards.
Fresh processes: this one has TensorFlow loaded already.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

import tt_keras

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The public API: tt_keras 0.1.0's, and register_all.
PUBLIC_API = {
    "BACKENDS", "CacheConfig", "HotRowCache", "OpLibraryUnavailable", "SampledGaussian",
    "TTApproxNormal", "TTEmbedding", "TTInitializer", "TTNaiveUniform", "TTShape", "TTUniform",
    "cache_row_bytes", "check_portable", "compress", "split_cache_budget",
    "export_saved_model", "graph_op_types", "initializers", "lookup_backend_scope",
    "plan_rank", "register_all", "resolve_backend", "suggest_shapes", "to_dense",
    "tt_embedding_bag", "tt_embedding_bag_cached", "tt_math", "tt_svd",
}


def run_python(code):
    """Runs code in a fresh interpreter at the repository root; returns its last stdout
    line, parsed as JSON."""
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.no_keras
def test_numpy_parts_import_without_tensorflow():
    loaded = run_python("""
        import importlib.abc, json, sys

        class NoTensorFlow(importlib.abc.MetaPathFinder):
            # A machine without TensorFlow: the GPU machines the CUDA checks run on.
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] in ("tensorflow", "keras", "tf_keras"):
                    raise ImportError(f"no module named {name!r} (blocked)")

        sys.meta_path.insert(0, NoTensorFlow())
        import numpy as np
        import tt_keras
        import tt_keras.tt_math
        from tt_keras import oracle
        from custom_ops.cuda import bindings
        shape = tt_keras.tt_math.TTShape((2, 3), (2, 2), (1, 2, 1))
        table = oracle.dense_table(oracle.random_cores(shape, np.random.default_rng(0)))
        print(json.dumps({"table": list(table.shape), "heavy": sorted(
            m for m in ("tensorflow", "keras", "tf_keras") if m in sys.modules)}))
    """)
    assert loaded == {"table": [6, 4], "heavy": []}


def test_public_names_leave_tensorflow_unconfigured():
    """Every public name imported, then what must happen before TensorFlow runs anything:
    set its thread pools and create a MultiWorkerMirroredStrategy, then use the layer in it."""
    result = run_python("""
        import json
        import tt_keras
        from tt_keras import *  # noqa: F403 -- every public name: TF, Keras, the layer, ops
        import tensorflow as tf
        tf.config.threading.set_inter_op_parallelism_threads(1)  # raises once TF has run
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        with strategy.scope():
            layer = TTEmbedding(input_dim=100, output_dim=8, tt_rank=2, combiner="sum")
            out = layer(tf.constant([[1, 2], [3, 4], [5, 6]]))
        print(json.dumps({"replicas": strategy.num_replicas_in_sync,
                          "shape": list(out.shape)}))
    """)
    assert result == {"replicas": 1, "shape": [3, 8]}


def test_every_public_name_resolves_lazily():
    assert set(tt_keras.__all__) == PUBLIC_API
    assert set(tt_keras.__all__) <= set(dir(tt_keras))
    assert tt_keras.__doc__.startswith("tt_keras: Tensor-Train compressed embedding tables")
    for name in tt_keras.__all__:
        namespace = {}
        exec(f"from tt_keras import {name}", namespace)  # pylint: disable=exec-used
        assert namespace[name] is getattr(tt_keras, name), name
    from tt_keras import layer, lookup, tt_math  # pylint: disable=import-outside-toplevel

    assert tt_keras.TTEmbedding is layer.TTEmbedding
    assert tt_keras.BACKENDS is lookup.BACKENDS
    assert tt_keras.tt_math is tt_math
    with pytest.raises(AttributeError, match="no_such_name"):
        tt_keras.no_such_name  # pylint: disable=pointless-statement


def test_saved_model_loads_after_a_plain_import():
    """Keras finds TTEmbedding by its registered name after `import tt_keras` alone; a
    legacy Keras SavedModel also holds the graphs traced on the op, which register_all loads."""
    keras_dir = "keras3" if tt_keras.layer.IS_KERAS_3 else "legacy"
    name = "model_cached.keras" if keras_dir == "keras3" else "model_cached_tf"
    path = os.path.join(ROOT, "tests", "fixtures", "v0.1.0", keras_dir, name)
    result = run_python(f"""
        import json
        import numpy as np
        import tt_keras
        from tt_keras._keras import IS_KERAS_3, keras
        if not IS_KERAS_3:
            assert tt_keras.register_all()
        model = keras.models.load_model({path!r})
        out = model.predict(np.array([[1, 2, 7]]), verbose=0)
        print(json.dumps({{"shape": list(out.shape)}}))
    """)
    assert result == {"shape": [1, 12]}
