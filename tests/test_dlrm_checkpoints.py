"""examples/dlrm/checkpoints.py: no good checkpoint is lost (garbage state file, truncated
checkpoints, a kill between the checkpoint and the state file), one trainer per model_dir,
and a resume with other options is refused (legacy Keras only)."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

# TFRS 0.7.7 imports only under legacy Keras (TF_USE_LEGACY_KERAS=1).
pytest.importorskip("tensorflow_recommenders", exc_type=ImportError,
                    reason="the DLRM example needs TF_USE_LEGACY_KERAS=1")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from examples.dlrm import callbacks as dlrm_callbacks  # noqa: E402
from examples.dlrm import checkpoints as K  # noqa: E402
from examples.dlrm import data as D  # noqa: E402
from examples.dlrm import model as M  # noqa: E402
from examples.dlrm import sources as S  # noqa: E402
from examples.dlrm import training  # noqa: E402
from tests.test_dlrm_train import _config  # noqa: E402

CFG = M.tiny_config(tt_tables=2)


def _model():
    return M.build_model(CFG, "sgd", 0.5)


@pytest.fixture
def run_dir(tmp_path):
    """A run directory with checkpoints at steps 1, 2 and 3 (the manager's state file), and
    a copy of the state file as it was after step 2."""
    run = tmp_path / "run"
    model = _model()
    manager, step = K.restore(model, str(run))
    assert step == 0
    data = iter(D.SyntheticCriteo(CFG.table_sizes, seed=1).dataset(16))
    for step in (1, 2, 3):
        model.train_on_batch(*next(data))
        assert dlrm_callbacks.global_step(model) == step
        manager.save(checkpoint_number=step)
        if step == 2:
            state_after_2 = (run / "checkpoints" / "checkpoint").read_bytes()
    (tmp_path / "state_after_2").write_bytes(state_after_2)
    return run


def _ckpt_dir(run):
    return run / "checkpoints"


def _restore(run):
    model = _model()
    manager, step = K.restore(model, str(run))
    return model, manager, step


def test_a_plain_resume(run_dir):
    _, manager, step = _restore(run_dir)
    assert step == 3 and len(manager.checkpoints) == 3


@pytest.mark.parametrize("garbage", [b"\x00\xff garbage \x13\x37", b"model_checkpoint_path: ",
                                     b""])
def test_a_garbage_state_file_falls_back_to_the_checkpoints(run_dir, garbage, capsys):
    (_ckpt_dir(run_dir) / "checkpoint").write_bytes(garbage)
    _, manager, step = _restore(run_dir)
    assert step == 3  # the old trainer started again from step 0 and overwrote them
    assert [os.path.basename(p) for p in manager.checkpoints] == ["ckpt-1", "ckpt-2", "ckpt-3"]
    out = capsys.readouterr().out
    if garbage.strip(b" ").startswith(b"\x00"):
        assert (_ckpt_dir(run_dir) / "checkpoint.corrupt").read_bytes() == garbage
        assert "checkpoint does not parse" in out
    assert "rebuilt" in out


def test_killed_between_the_checkpoint_and_the_state_file(run_dir, tmp_path):
    (_ckpt_dir(run_dir) / "checkpoint").write_bytes((tmp_path / "state_after_2").read_bytes())
    _, manager, step = _restore(run_dir)
    assert step == 3 and os.path.basename(manager.latest_checkpoint) == "ckpt-3"
    os.remove(_ckpt_dir(run_dir) / "checkpoint")  # killed before the first state file
    assert _restore(run_dir)[2] == 3


# Saves ckpt-1, then SIGKILLs itself after writing ckpt-2 and before its state file.
_KILLED_SAVE = textwrap.dedent("""
    import os, signal, sys
    from tensorflow.python.checkpoint import checkpoint_management
    from examples.dlrm import checkpoints, data, model as M
    from tests.test_dlrm_checkpoints import CFG, _model
    model = _model()
    manager, _ = checkpoints.restore(model, sys.argv[1])
    batches = iter(data.SyntheticCriteo(CFG.table_sizes, seed=1).dataset(16))
    model.train_on_batch(*next(batches))
    manager.save(checkpoint_number=1)
    model.train_on_batch(*next(batches))
    checkpoint_management.update_checkpoint_state_internal = (
        lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL))
    manager.save(checkpoint_number=2)
    print("NOT KILLED")
""")


def test_a_real_sigkill_between_the_checkpoint_and_the_state_file(tmp_path):
    run = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-c", _KILLED_SAVE, str(run)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stdout[-2000:] + proc.stderr[-3000:]
    state = (_ckpt_dir(run) / "checkpoint").read_text()
    assert "ckpt-1" in state and "ckpt-2" not in state  # killed where it was meant to be
    _, manager, step = _restore(run)
    assert step == 2 and os.path.basename(manager.latest_checkpoint) == "ckpt-2"


@pytest.mark.parametrize("part", ["index", "data-00000-of-00001"])
def test_a_truncated_checkpoint_is_named_and_the_previous_one_restored(run_dir, part, capsys):
    path = _ckpt_dir(run_dir) / f"ckpt-3.{part}"
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    model, manager, step = _restore(run_dir)
    assert step == 2
    out = capsys.readouterr().out
    assert f"checkpoint {_ckpt_dir(run_dir) / 'ckpt-3'} is unreadable" in out
    assert "fell back to" in out and "ckpt-2 (step 2)" in out
    # Training on saves step 3 again, over the truncated one, and it reads back.
    model.train_on_batch(*next(iter(D.SyntheticCriteo(CFG.table_sizes, seed=2).dataset(16))))
    manager.save(checkpoint_number=3)
    assert K.unreadable_reason(str(_ckpt_dir(run_dir) / "ckpt-3")) is None
    assert _restore(run_dir)[2] == 3


def test_no_readable_checkpoint_is_an_error_naming_each(run_dir):
    for step in (1, 2, 3):
        path = _ckpt_dir(run_dir) / f"ckpt-{step}.data-00000-of-00001"
        with open(path, "r+b") as f:
            f.truncate(10)
    with pytest.raises(K.CheckpointError, match="no readable checkpoint") as info:
        _restore(run_dir)
    for step in (1, 2, 3):
        assert str(_ckpt_dir(run_dir) / f"ckpt-{step}") in str(info.value)


def test_the_trainer_resumes_past_a_garbage_state_file(tmp_path):
    config = _config(tmp_path)
    source = S.make_source(config.data, CFG.table_sizes, config.training.seed)
    assert training.train_model("tt", CFG, config, source)["steps"] == 3
    ckpt_dir = tmp_path / "model_dir" / "tt" / "checkpoints"
    (ckpt_dir / "checkpoint").write_text("this is not a checkpoint state\n")
    second = training.train_model("tt", CFG, config.override(steps=5), source)
    assert second["steps"] == 5 and second["trained_steps_this_run"] == 2


# ---------------------------------------------------------------------------------------
# One trainer per model_dir
# ---------------------------------------------------------------------------------------

_HOLDER = textwrap.dedent("""
    import sys, time
    from examples.dlrm import checkpoints
    with checkpoints.lock_model_dir(sys.argv[1]):
        print("LOCKED", flush=True)
        time.sleep(600)
""")


def test_a_second_trainer_on_a_model_dir_is_refused(tmp_path):
    model_dir = str(tmp_path / "model_dir")
    with K.lock_model_dir(model_dir):
        with pytest.raises(K.ModelDirInUse, match=f"model_dir {model_dir} is in use by another "
                                                  f"trainer \\(pid {os.getpid()} "):
            with K.lock_model_dir(model_dir):
                pass
    with K.lock_model_dir(model_dir):  # released on exit
        pass


def test_the_lock_of_a_killed_trainer_is_released(tmp_path):
    model_dir = str(tmp_path / "model_dir")
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, model_dir], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "LOCKED"
        with pytest.raises(K.ModelDirInUse, match=f"pid {proc.pid} "):
            with K.lock_model_dir(model_dir):
                pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    with K.lock_model_dir(model_dir):
        pass


# ---------------------------------------------------------------------------------------
# The run's configuration
# ---------------------------------------------------------------------------------------

def test_a_resume_with_other_options_is_refused(tmp_path):
    run = str(tmp_path / "run")
    config = _config(tmp_path)
    K.check_run_config(run, config, CFG)
    assert os.path.exists(os.path.join(run, K.RUN_CONFIG_FILE))
    # Resumable options may change; the record is then updated.
    K.check_run_config(run, config.override(steps=50, steps_per_epoch=7, verbose=2,
                                            lookup_backend="reference"), CFG)
    with pytest.raises(K.RunConfigMismatch) as info:
        K.check_run_config(run, config.override(seed=1, learning_rate=0.5), CFG)
    message = str(info.value)
    assert "--seed: 0 in the checkpoints' run, 1 now" in message
    assert "--learning_rate: 0.1 in the checkpoints' run, 0.5 now" in message
    assert "steps_per_epoch" in message  # listed among the options that may change
    with pytest.raises(K.RunConfigMismatch, match="--tt_rank: 4 in the checkpoints' run, 8"):
        K.check_run_config(run, config, CFG.replace(tt_rank=8))


def test_a_garbage_run_config_is_an_error(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / K.RUN_CONFIG_FILE).write_text("{not json")
    with pytest.raises(K.RunConfigMismatch, match="run_config.json does not parse"):
        K.check_run_config(str(run), _config(tmp_path), CFG)


def test_the_trainer_refuses_another_seed_on_the_same_model_dir(tmp_path):
    config = _config(tmp_path, steps=2)
    source = S.make_source(config.data, CFG.table_sizes, config.training.seed)
    training.train_model("tt", CFG, config, source)
    with pytest.raises(K.RunConfigMismatch, match="--seed: 0 in the checkpoints' run, 7 now"):
        training.train_model("tt", CFG, config.override(seed=7), source)
