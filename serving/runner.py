"""Python side of saved_model_runner (serving/saved_model_runner.cc): build it, send it
requests, read back its outputs, latencies, load time and peak memory.

    from serving import runner
    binary = runner.build()                                 # make -C serving
    result = runner.run_saved_model(export_dir, [{"ids": ids}], binary=binary)
    result.outputs[0]["predictions"]                        # NumPy arrays
    result.latencies[0]                                     # seconds, one per timed run

Requests and outputs travel as TFRecord files of tensorflow.NamedTensorProto records, one
record per named tensor (tf.make_tensor_proto / tf.make_ndarray on this side).
"""

import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import named_tensor_pb2

SERVING_DIR = os.path.dirname(os.path.abspath(__file__))
BINARY = os.path.join(SERVING_DIR, "saved_model_runner")
LOADER_HEADER = os.path.join("tensorflow", "cc", "saved_model", "loader.h")


class RunnerUnavailable(RuntimeError):
    """saved_model_runner cannot be built here (no g++, or TensorFlow without C++ headers)."""


def missing_prerequisite() -> Optional[str]:
    """Why the runner cannot be built here, or None when it can."""
    if shutil.which("g++") is None:
        return "g++ is not installed"
    if shutil.which("make") is None:
        return "make is not installed"
    include = tf.sysconfig.get_include()
    if not os.path.exists(os.path.join(include, LOADER_HEADER)):
        return f"this TensorFlow has no C++ SavedModel loader header ({LOADER_HEADER})"
    return None


def build(python: str = sys.executable, timeout: float = 1200) -> str:
    """Builds (or finds up to date) saved_model_runner with `make -C serving`; returns its path.

    Raises RunnerUnavailable when a prerequisite is missing, RuntimeError when make fails.
    """
    reason = missing_prerequisite()
    if reason:
        raise RunnerUnavailable(reason)
    proc = subprocess.run(["make", "-C", SERVING_DIR, f"PYTHON={python}"],
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError("building saved_model_runner failed:\n"
                           + proc.stdout[-3000:] + proc.stderr[-5000:])
    return BINARY


def write_tensors(path: str, tensors: Mapping[str, object]) -> None:
    """{name: array-like} -> a TFRecord file of NamedTensorProto (strings as bytes)."""
    with tf.io.TFRecordWriter(path) as writer:
        for name, value in tensors.items():
            named = named_tensor_pb2.NamedTensorProto(name=name)
            named.tensor.CopyFrom(tf.make_tensor_proto(value))
            writer.write(named.SerializeToString())


def read_tensors(path: str) -> Dict[str, np.ndarray]:
    """A TFRecord file of NamedTensorProto -> {name: NumPy array}."""
    out = {}
    for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
        named = named_tensor_pb2.NamedTensorProto.FromString(record)
        out[named.name] = tf.make_ndarray(named.tensor)
    return out


@dataclasses.dataclass
class RunResult:
    """What one saved_model_runner process returned.

    outputs: per request, {signature output key: array}.
    latencies: per request, seconds of each timed Session::Run.
    load_seconds: LoadSavedModel's time (graph import, variable restore).
    peak_rss_bytes: the process's peak resident memory.
    """

    outputs: List[Dict[str, np.ndarray]]
    latencies: List[np.ndarray]
    load_seconds: float
    peak_rss_bytes: int


def run_saved_model(
    model_dir: str,
    requests: Sequence[Mapping[str, object]],
    binary: str = BINARY,
    op_libraries: Sequence[str] = (),
    signature: str = "serving_default",
    warmup: int = 0,
    repeats: int = 1,
    timeout: float = 1800,
    env: Optional[Mapping[str, str]] = None,
) -> RunResult:
    """Serves `requests` ({input key: array} each) from `model_dir` in one runner process.

    op_libraries are loaded before the SavedModel (a native export needs tt_keras's).
    Raises RuntimeError with the runner's message when it fails (e.g. an op that is not
    registered, a missing input).
    """
    if not requests:
        raise ValueError("requests must hold at least one request")
    with tempfile.TemporaryDirectory(prefix="saved_model_runner_") as tmp:
        inputs, outputs = [], []
        for i, request in enumerate(requests):
            inputs.append(os.path.join(tmp, f"request_{i}.tfrecord"))
            outputs.append(os.path.join(tmp, f"outputs_{i}.tfrecord"))
            write_tensors(inputs[-1], request)
        report = os.path.join(tmp, "report.tfrecord")
        cmd = [binary, f"--model_dir={model_dir}", f"--signature={signature}",
               f"--inputs={','.join(inputs)}", f"--outputs={','.join(outputs)}",
               f"--warmup={int(warmup)}", f"--repeats={int(repeats)}", f"--report={report}"]
        if op_libraries:
            cmd.append(f"--op_library={','.join(op_libraries)}")
        proc_env = dict(os.environ if env is None else env)
        proc_env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env=proc_env)
        if proc.returncode != 0:
            raise RuntimeError(f"saved_model_runner failed ({proc.returncode}): "
                               + proc.stderr[-4000:])
        stats = read_tensors(report)
        return RunResult(
            outputs=[read_tensors(path) for path in outputs],
            latencies=[stats[f"latency_seconds_{i}"] for i in range(len(requests))],
            load_seconds=float(stats["load_seconds"]),
            peak_rss_bytes=int(stats["peak_rss_bytes"]),
        )
