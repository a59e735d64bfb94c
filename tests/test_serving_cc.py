"""The DLRM exports served by C++ (serving/saved_model_runner.cc): TF Serving's SavedModel
loader, no Python. The portable export runs on stock TensorFlow; the native one runs once
the op library is loaded first, and fails without it, as in a stock TF Serving. Outputs
equal Python's at batch 1, 64 and 1024."""

import os
import subprocess

import numpy as np
import pytest

from tt_keras import export as tt_export
from tt_keras.ops import tt_ops_library

from examples.dlrm import export as dlrm_export
from serving import criteo_requests, runner
from tests import serving_models
from tests.conftest import ALLOW_NO_OPS
from tests.tolerance import assert_reordered_close

_MISSING = runner.missing_prerequisite()
pytestmark = pytest.mark.skipif(_MISSING is not None,
                                reason=f"saved_model_runner cannot be built: {_MISSING}")

BATCHES = (1, 64, 1024)


@pytest.fixture(scope="session")
def runner_binary():
    return runner.build()


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """{"portable" | "native": export dir} of one trained tiny DLRM, and the model."""
    if not tt_ops_library.available(warn=False):
        if ALLOW_NO_OPS:
            pytest.skip("op library not built (TT_KERAS_ALLOW_NO_OPS=1)")
        tt_ops_library.ops  # raises with the reason
    model = serving_models.train_tiny_dlrm()
    root = tmp_path_factory.mktemp("cc_exports")
    dirs = {}
    for kind in ("portable", "native"):
        dirs[kind] = str(root / kind)
        ops = dlrm_export.export_dlrm(model, dirs[kind], portable=kind == "portable")
        has_op = any(op.startswith(tt_export.CUSTOM_OP_PREFIX) for op in ops)
        assert has_op == (kind == "native"), ops
    return model, dirs


@pytest.fixture(scope="module")
def requests():
    return [criteo_requests.random_rows(b, seed=100 + b) for b in BATCHES]


@pytest.mark.parametrize("kind", ["portable", "native"])
def test_cc_runner_serves_the_python_predictions(runner_binary, exports, requests, kind):
    model, dirs = exports
    libraries = [tt_ops_library.path] if kind == "native" else []
    result = runner.run_saved_model(dirs[kind], requests, binary=runner_binary,
                                    op_libraries=libraries, repeats=2)
    assert len(result.outputs) == len(BATCHES)
    for batch, feed, outputs, latencies in zip(BATCHES, requests, result.outputs,
                                               result.latencies):
        assert sorted(outputs) == ["predictions"]
        got = outputs["predictions"]
        assert got.shape == (batch,) and got.dtype == np.float32
        assert_reordered_close(got, serving_models.expected_predictions(model, feed))
        assert latencies.shape == (2,) and np.all(latencies > 0)
    assert result.load_seconds > 0 and result.peak_rss_bytes > 0


def test_native_export_needs_the_op_library(runner_binary, exports, requests):
    _, dirs = exports
    with pytest.raises(RuntimeError, match="TTKeras>TTEmbeddingBag"):
        runner.run_saved_model(dirs["native"], requests[:1], binary=runner_binary)


def test_runner_names_a_missing_input(runner_binary, exports, requests):
    _, dirs = exports
    request = dict(requests[0])
    del request["C7"]
    with pytest.raises(RuntimeError, match="lacks input 'C7'"):
        runner.run_saved_model(dirs["portable"], [request], binary=runner_binary)
    request["C7x"] = requests[0]["C7"]
    with pytest.raises(RuntimeError, match="names input 'C7x'"):
        runner.run_saved_model(dirs["portable"], [request], binary=runner_binary)


def test_tensor_files_round_trip(tmp_path):
    tensors = {"f": np.arange(6, dtype=np.float32).reshape(2, 3),
               "s": np.array([b"68fd1e64", b""], dtype=object),
               "i": np.array([-1, 2**40], dtype=np.int64)}
    path = str(tmp_path / "t.tfrecord")
    runner.write_tensors(path, tensors)
    back = runner.read_tensors(path)
    assert sorted(back) == sorted(tensors)
    for name, value in tensors.items():
        assert back[name].dtype == value.dtype
        np.testing.assert_array_equal(back[name], value)


def test_runner_rejects_bad_flags(runner_binary, exports, requests, tmp_path):
    _, dirs = exports
    request = str(tmp_path / "r.tfrecord")
    runner.write_tensors(request, requests[0])
    proc = subprocess.run([runner_binary, f"--model_dir={dirs['portable']}",
                           f"--inputs={request}", "--repeats=0"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--repeats" in proc.stderr
    proc = subprocess.run([runner_binary, f"--model_dir={os.path.join(dirs['portable'], 'x')}",
                           f"--inputs={request}"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "saved_model_runner:" in proc.stderr
