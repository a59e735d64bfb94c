"""TTEmbedding under tf.distribute (docs/distribution.md): every copy of every variable stays
equal, and equal to a run without a strategy on the same global batches.

Runs tests/distributed_training.py in subprocesses (logical devices and collective ops must
be configured before TensorFlow initialises, once per process), under the Keras of this
process (TF_USE_LEGACY_KERAS is inherited):
- fast tier: MirroredStrategy over two logical CPUs, in one process;
- two-process tier: two MultiWorkerMirroredStrategy workers on loopback, started by
  examples/dlrm/launch.py, compared by a hash of each variable.
Without the fix in tt_keras/replicas.py the cached layer's runs die of SIGSEGV during the
warm-up (TF all-gathers the cache rows' empty sparse gradient).
"""

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tt_keras._keras import IS_KERAS_3

from examples.dlrm import launch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_TIMEOUT_S = 240
TOLERANCE = dict(rtol=1e-5, atol=1e-6)


def _tail(text, lines=30):
    return "\n".join(line for line in text.splitlines()
                     if not line.startswith(("I0000", "W0000")))[-4000:]


def run_training(out, strategy, cache_size, loop, backend):
    """Runs the worker script in a subprocess; returns its variables (see _load)."""
    command = [sys.executable, "-m", "tests.distributed_training", f"--strategy={strategy}",
               f"--cache_size={cache_size}", f"--loop={loop}", f"--backend={backend}",
               f"--out={out}"]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S)
    assert proc.returncode == 0, (
        f"{' '.join(command[2:])} exited with status {proc.returncode}:\n"
        f"{_tail(proc.stdout + proc.stderr)}")
    return _load(out)


def _load(path):
    """{variable name: [value of each copy in the file]}."""
    values = {}
    with np.load(path) as data:
        for key in data.files:
            name, _ = key.rsplit("/replica", 1)
            values.setdefault(name, []).append(data[key])
    return values


def _value(values, name):
    """The first copy of the variable called `name` (Keras 3 names it by its path, tf_keras
    by its name with a ':0' suffix)."""
    (found,) = [v[0] for key, v in values.items()
                if key.split(":", 1)[1].rsplit("/", 1)[-1].split(":")[0] == name]
    return found


def assert_same_training(reference, copies):
    """Every copy of each variable equals its first copy exactly, and the reference run's
    value: integers (the cache's ids, counter, step, statistics) exactly, floats within
    float32 summation-order tolerance."""
    assert list(copies) == list(reference)
    for name, values in copies.items():
        for r, value in enumerate(values[1:], 1):
            np.testing.assert_array_equal(value, values[0],
                                          err_msg=f"{name}: copy {r} differs from copy 0")
        expected = reference[name][0]
        if np.issubdtype(expected.dtype, np.integer):
            np.testing.assert_array_equal(values[0], expected, err_msg=name)
        else:
            np.testing.assert_allclose(values[0], expected, err_msg=name, **TOLERANCE)


@pytest.fixture(scope="module")
def reference_runs(tmp_path_factory):
    """The runs without a strategy, once per (cache_size, loop, backend)."""
    runs = {}

    def get(cache_size, loop, backend):
        key = (cache_size, loop, backend)
        if key not in runs:
            out = tmp_path_factory.mktemp("reference") / "run.npz"
            runs[key] = run_training(out, "none", cache_size, loop, backend)
        return runs[key]
    return get


# (cache_size, loop, backend): the plain and the cached layer, fit and a custom loop, both
# lookup backends (the crash happened on both).
MIRRORED_CASES = [
    (0, "custom", "reference"),
    (20, "custom", "reference"),
    (20, "fit", "reference"),
    (20, "custom", "op"),
    (0, "fit", "op"),
]


@pytest.mark.parametrize("cache_size,loop,backend", MIRRORED_CASES)
def test_mirrored_equals_single_device(tmp_path, reference_runs, cache_size, loop, backend):
    copies = run_training(tmp_path / "run.npz", "mirrored", cache_size, loop, backend)
    assert all(len(values) == 2 for values in copies.values())
    reference = reference_runs(cache_size, loop, backend)
    if cache_size:
        # The run reached the cache's fill and a refresh (with its fold into the cores).
        assert int(_value(reference, "cache_step")) == 8
        assert int(_value(reference, "cache_last_hits")) > 0
    assert_same_training(reference, copies)


def _hashes(values):
    return {name: hashlib.sha256(v[0].tobytes()).hexdigest() for name, v in values.items()}


# Keras 3's model.fit cannot run under MultiWorkerMirroredStrategy (it passes the
# distributed batch on as a PerReplica value, "unsupported type ... to a Tensor"): with
# Keras 3 a multi-worker program trains with a custom loop.
MULTI_WORKER_LOOPS = ["custom"] + ([] if IS_KERAS_3 else ["fit"])


@pytest.mark.parametrize("loop", MULTI_WORKER_LOOPS)
def test_two_workers_equal_one(tmp_path, reference_runs, loop):
    out = tmp_path / "run.npz"
    lines = []
    status = launch.launch(
        "tests.distributed_training",
        ["--strategy=multi_worker", "--cache_size=20", f"--loop={loop}",
         "--backend=reference", f"--out={out}"],
        num_workers=2, timeout=RUN_TIMEOUT_S, log=lines.append)
    assert status == 0, _tail("\n".join(lines))
    workers = [_load(tmp_path / f"run.worker{i}.npz") for i in range(2)]
    assert _hashes(workers[0]) == _hashes(workers[1])
    assert_same_training(reference_runs(20, loop, "reference"), workers[0])


@pytest.mark.skipif(IS_KERAS_3, reason="Keras 3's fit cannot run under MWMS (see above)")
def test_killed_worker_resumes_from_backup(tmp_path):
    """BackupAndRestore every 2 steps; the last worker dies after step 5; the launcher
    stops the other; both restarted resume from the step-4 backup and end exactly as an
    uninterrupted run (every variable, the cache's counters and step included).

    The epochs are 2 steps long: tf_keras resumes a backup taken mid-epoch with the right
    step count but restarts the epoch's data from its first batch."""
    args = ["--strategy=multi_worker", "--cache_size=20", "--loop=fit", "--epoch_steps=2",
            "--backup_dir=" + str(tmp_path / "backup"), "--crash_at_step=5",
            "--backend=reference"]

    def run(out, extra):
        lines = []
        status = launch.launch("tests.distributed_training", [*extra, f"--out={out}"],
                               num_workers=2, timeout=RUN_TIMEOUT_S, log=lines.append)
        return status, lines

    status, lines = run(tmp_path / "crashed.npz", args)
    assert status == 3, _tail("\n".join(lines))
    assert not list(tmp_path.glob("crashed.worker*.npz"))
    status, lines = run(tmp_path / "resumed.npz", args)
    assert status == 0, _tail("\n".join(lines))
    # Both workers restarted at epoch 2 (step 4), not at the beginning.
    first_epochs = {}
    for line in lines:
        if line.endswith(" begins"):
            worker, text = line.split("] ", 1)
            first_epochs.setdefault(worker, text)
    assert first_epochs == {"[worker 0": "epoch 2 begins", "[worker 1": "epoch 2 begins"}
    status, lines = run(tmp_path / "uninterrupted.npz", args[:4])
    assert status == 0, _tail("\n".join(lines))
    resumed = [_load(tmp_path / f"resumed.worker{i}.npz") for i in range(2)]
    expected = _hashes(_load(tmp_path / "uninterrupted.worker0.npz"))
    assert _hashes(resumed[0]) == _hashes(resumed[1]) == expected
    assert int(_value(resumed[0], "cache_step")) == 8


def test_import_creates_no_tensors(tmp_path):
    """MultiWorkerMirroredStrategy must be created before any op runs; importing tt_keras
    (and every module of it the layer uses) must leave that possible. The second program,
    which runs an op first, shows that the check can fail."""
    program = (
        "import tensorflow as tf, tt_keras\n"
        "from tt_keras import cache, cache_fold, cache_updates, lookup, replicas  # noqa\n"
        "{before}"
        "tf.distribute.MultiWorkerMirroredStrategy()\n"
        "print('created')\n")
    env = dict(os.environ, TF_CONFIG=launch.tf_config(launch.free_ports(1), 0))
    results = []
    for before in ("", "tf.constant(1.0) + 1.0\n"):
        proc = subprocess.run([sys.executable, "-c", program.format(before=before)], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
        results.append((proc.returncode, proc.stdout + proc.stderr))
    assert results[0][0] == 0 and "created" in results[0][1], _tail(results[0][1])
    assert results[1][0] != 0 and "must be configured at program startup" in results[1][1], (
        _tail(results[1][1]))


def test_launch_stops_every_worker_when_one_fails(tmp_path):
    """A failing worker stops the cluster at once (the other would wait for it forever),
    and its status is the launcher's."""
    script = tmp_path / "worker.py"
    script.write_text(
        "import json, os, sys, time\n"
        "index = json.loads(os.environ['TF_CONFIG'])['task']['index']\n"
        "print('started', index, flush=True)\n"
        "time.sleep(1 if index == 1 else 600)\n"
        "sys.exit(3)\n")
    lines = []
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    status = launch.launch("worker", [], num_workers=2, timeout=60, env=env, log=lines.append)
    assert status == 3
    assert "[worker 1] started 1" in lines and "[worker 0] started 0" in lines


def test_launch_retries_once_when_a_port_was_taken(tmp_path):
    """A worker that cannot bind its port restarts the cluster once, on fresh ports."""
    script = tmp_path / "binder.py"
    marker = tmp_path / "failed_once"
    script.write_text(
        "import json, os, sys\n"
        f"marker = {str(marker)!r}\n"
        "index = json.loads(os.environ['TF_CONFIG'])['task']['index']\n"
        "if index == 1 and not os.path.exists(marker):\n"
        "    open(marker, 'w').close()\n"
        f"    print({launch.PORT_IN_USE!r} + ': address in use', flush=True)\n"
        "    sys.exit(1)\n")
    lines = []
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    status = launch.launch("binder", [], num_workers=2, timeout=60, env=env, log=lines.append)
    assert status == 0, lines
    assert any("starting again on fresh ports" in line for line in lines)


def test_launch_timeout_kills_workers(tmp_path):
    script = tmp_path / "sleeper.py"
    script.write_text("import time\nprint('up', flush=True)\ntime.sleep(600)\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    lines = []
    status = launch.launch("sleeper", [], num_workers=2, timeout=3, env=env, log=lines.append)
    assert status == launch.TIMEOUT_STATUS
    assert any("timeout" in line for line in lines)


def test_tf_config_names_every_worker():
    config = json.loads(launch.tf_config([1234, 5678], 1))
    assert config == {"cluster": {"worker": ["127.0.0.1:1234", "127.0.0.1:5678"]},
                      "task": {"type": "worker", "index": 1}}
