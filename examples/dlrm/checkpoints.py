"""The trainer's checkpoints: restore the newest readable one, one trainer per model_dir, and
the run's configuration recorded beside them.

- `restore` never starts a model over while it has a good checkpoint. Its candidates are the
  checkpoints the `checkpoint` state file lists and every `ckpt-<step>.index` in the
  directory (a process killed after writing a checkpoint but before the state file still
  left a complete checkpoint). Newest first, each is read whole (every tensor, whose
  checksums TF verifies) before it is restored; an unreadable one is named with its error
  and the next one tried, and the fall-back is announced. A state file that does not parse
  is moved aside (`checkpoint.corrupt`) and rebuilt from the readable checkpoints, so the
  CheckpointManager keeps rotating them rather than starting a new list that would
  overwrite them. Checkpoints but none readable is an error naming each file.
- `lock_model_dir` holds an exclusive `fcntl` lock on `<model_dir>/.lock` for the run; a
  second trainer on the same model_dir is refused with the holder's pid. The kernel drops
  the lock when its process dies, even by SIGKILL, so no stale lock is left.
- `check_run_config` records the options a model's checkpoints depend on in
  `<run_dir>/run_config.json` and refuses a resume with other values, showing each
  difference. `RESUMABLE_OPTIONS` may change between runs (how long and how verbosely to
  train and evaluate, where outputs go, which models to train).
"""

import contextlib
import dataclasses
import fcntl
import json
import os
import re
import socket
from typing import Dict, Iterator, List, Optional, Tuple

import tensorflow as tf
from absl import logging
from google.protobuf import text_format
from tensorflow.python.checkpoint import checkpoint_management  # pylint: disable=g-direct-tensorflow-import

from examples.dlrm import callbacks as dlrm_callbacks

LOCK_FILE = ".lock"
RUN_CONFIG_FILE = "run_config.json"
STATE_FILE = "checkpoint"
MAX_TO_KEEP = 3

# Options that may differ on resume: the total steps and the epoch length (the step count
# continues from the checkpoint either way), evaluation sizes, verbosity, where outputs go,
# which of the models to train, the lookup kernel (the same arithmetic), and the reader's
# handling of bad lines. Every other option shapes the model or the data it sees.
RESUMABLE_OPTIONS = frozenset({
    "steps", "steps_per_epoch", "verbose", "eval_examples", "periodic_eval_examples",
    "eval_batch_size", "model_dir", "export_dir", "export_format", "export_portable",
    "export_max_batch_size", "out_dir", "model", "init_ablation", "report_only",
    "lookup_backend", "skip_bad_lines",
})


class CheckpointError(RuntimeError):
    """A model directory whose checkpoints cannot be used."""


class ModelDirInUse(RuntimeError):
    """Another trainer holds the model_dir's lock."""


class RunConfigMismatch(ValueError):
    """A resume with options other than those the checkpoints were trained with."""


# ---------------------------------------------------------------------------------------
# One trainer per model_dir
# ---------------------------------------------------------------------------------------

@contextlib.contextmanager
def lock_model_dir(model_dir: str) -> Iterator[None]:
    """Holds `<model_dir>/.lock` exclusively (no-op without a model_dir).

    Raises ModelDirInUse naming the directory and the holder's pid."""
    if not model_dir:
        yield
        return
    os.makedirs(model_dir, exist_ok=True)
    path = os.path.join(model_dir, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            raise ModelDirInUse(
                f"model_dir {model_dir} is in use by another trainer ({holder}; lock file "
                f"{path}); wait for it or give another --model_dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


# ---------------------------------------------------------------------------------------
# The run's configuration
# ---------------------------------------------------------------------------------------

def run_options(config, model_config) -> Dict[str, object]:
    """What a model's checkpoints depend on: the options outside RESUMABLE_OPTIONS, with the
    model section replaced by the model's own DLRMConfig (table sizes and caches included),
    as JSON values."""
    options = {k: v for k, v in config.options().items() if k not in RESUMABLE_OPTIONS}
    model_fields = {f.name for f in dataclasses.fields(model_config)}
    options = {k: v for k, v in options.items() if k not in model_fields}
    options.update({k: v for k, v in dataclasses.asdict(model_config).items()
                    if k not in RESUMABLE_OPTIONS})
    return json.loads(json.dumps(options))


def _differences(recorded: dict, current: dict) -> List[str]:
    lines = []
    for name in sorted(set(recorded) | set(current)):
        if recorded.get(name, "(absent)") != current.get(name, "(absent)"):
            lines.append(f"  --{name}: {recorded.get(name, '(absent)')!r} in the "
                         f"checkpoints' run, {current.get(name, '(absent)')!r} now")
    return lines


def _write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
    os.replace(tmp, path)  # a reader sees the old record or the new one


def check_run_config(run_dir: str, config, model_config) -> None:
    """Records the run's options in <run_dir>/run_config.json; with a record there already,
    raises RunConfigMismatch listing each option that differs (RESUMABLE_OPTIONS aside)."""
    if not run_dir:
        return
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, RUN_CONFIG_FILE)
    current = run_options(config, model_config)
    if os.path.exists(path):
        try:
            with open(path) as f:
                recorded = json.load(f)["options"]
        except (ValueError, KeyError, TypeError) as e:
            raise RunConfigMismatch(
                f"{path} does not parse ({e}): cannot check that this run continues the "
                "checkpoints' configuration; restore it or move it away") from e
        diff = _differences(recorded, current)
        if diff:
            raise RunConfigMismatch(
                f"{run_dir} holds checkpoints of another configuration ({path}); resuming "
                "with other options would mix two runs:\n" + "\n".join(diff) + "\nUse the "
                "recorded values or another --model_dir. Options that may change on resume: "
                + ", ".join(sorted(RESUMABLE_OPTIONS)))
    elif _checkpoint_prefixes(os.path.join(run_dir, "checkpoints")):
        logging.warning("%s has checkpoints but no %s (an older trainer): recording this "
                        "run's options without checking them", run_dir, RUN_CONFIG_FILE)
    _write_json(path, {"options": current,
                       "resumable_options": sorted(RESUMABLE_OPTIONS)})


# ---------------------------------------------------------------------------------------
# Restoring the newest readable checkpoint
# ---------------------------------------------------------------------------------------

_CKPT = re.compile(r"^ckpt-(\d+)\.index$")


def _checkpoint_prefixes(directory: str) -> List[str]:
    """Every ckpt-<step> with an index file in `directory`, newest first."""
    if not os.path.isdir(directory):
        return []
    steps = [int(m.group(1)) for m in map(_CKPT.match, os.listdir(directory)) if m]
    return [os.path.join(directory, f"ckpt-{s}") for s in sorted(steps, reverse=True)]


def _read_state(directory: str) -> Tuple[Optional[object], Optional[str]]:
    """(the parsed state file or None, an error message when it exists but is garbage)."""
    path = os.path.join(directory, STATE_FILE)
    if not os.path.exists(path):
        return None, None
    try:
        with open(path) as f:
            state = text_format.Parse(f.read(), checkpoint_management.CheckpointState())
    except (text_format.ParseError, UnicodeDecodeError) as e:
        return None, f"{path} does not parse ({e})"
    return state, None


def unreadable_reason(prefix: str) -> Optional[str]:
    """None if every tensor of checkpoint `prefix` reads back (checksums verified), else why
    not."""
    try:
        reader = tf.train.load_checkpoint(prefix)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    # A short or corrupt file surfaces as IndexError ("Read less bytes than requested"),
    # DataLossError ("not an sstable") or another OpError, depending on where it breaks.
    except (tf.errors.OpError, ValueError, IndexError, RuntimeError) as e:
        return f"{type(e).__name__}: {str(e).strip().splitlines()[0]}"
    return None


def restore(model, run_dir: str, write_dir: Optional[str] = None
            ) -> Tuple[Optional[tf.train.CheckpointManager], int]:
    """A checkpoint manager in <write_dir>/checkpoints (None without a run_dir; write_dir
    defaults to run_dir: a distributed worker other than the chief writes to a scratch
    directory, distribution.Worker.write_dir), and the global step of the newest readable
    checkpoint of run_dir, restored into `model` (0 when there is none). Only the process
    that writes to run_dir itself repairs its state file.

    Raises CheckpointError when the directory has checkpoints and none of them reads."""
    if not run_dir:
        return None, 0
    write_dir = write_dir or run_dir
    owner = write_dir == run_dir
    directory = os.path.join(run_dir, "checkpoints")
    state, state_error = _read_state(directory)
    listed = [p if os.path.isabs(p) else os.path.join(directory, p)
              for p in (state.all_model_checkpoint_paths if state else [])]
    by_step = {_step_of(p): p for p in listed + _checkpoint_prefixes(directory)
               if tf.io.gfile.exists(p + ".index")}  # one per step, however it is spelled
    candidates = [by_step[s] for s in sorted(by_step, reverse=True)]
    bad, chosen = [], None
    for prefix in candidates:
        reason = unreadable_reason(prefix)
        if reason is None:
            chosen = prefix
            break
        bad.append(f"{prefix}: {reason}")
        logging.warning("checkpoint %s is unreadable (%s)", prefix, reason)
        print(f"  WARNING: checkpoint {prefix} is unreadable ({reason})")
    if candidates and chosen is None:
        raise CheckpointError(
            f"no readable checkpoint in {directory}:\n  " + "\n  ".join(bad)
            + "\nMove them away to train this model from step 0.")
    if state_error and owner:
        os.replace(os.path.join(directory, STATE_FILE),
                   os.path.join(directory, STATE_FILE + ".corrupt"))
        print(f"  WARNING: {state_error}; moved it to {STATE_FILE}.corrupt")
    latest = state.model_checkpoint_path if state and not state_error else ""
    if owner and chosen and _step_of(latest) != _step_of(chosen):
        # The manager rotates the checkpoints its state file lists: make it list the chosen
        # one and those before it (the unreadable newer ones are overwritten when training
        # reaches their step again).
        # The manager rotates those with a timestamp after last_preserved_timestamp.
        kept = candidates[candidates.index(chosen):][::-1]
        stamps = [os.path.getmtime(p + ".index") for p in kept]
        checkpoint_management.update_checkpoint_state_internal(
            directory, kept[-1], all_model_checkpoint_paths=kept,
            all_model_checkpoint_timestamps=stamps,
            last_preserved_timestamp=min(stamps) - 1.0, save_relative_paths=True)
        print(f"  rebuilt {os.path.join(directory, STATE_FILE)}: "
              + ", ".join(os.path.basename(p) for p in kept))
    ckpt = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
    manager = tf.train.CheckpointManager(ckpt, os.path.join(write_dir, "checkpoints"),
                                         max_to_keep=MAX_TO_KEEP)
    if chosen is None:
        return manager, 0
    try:
        ckpt.restore(chosen).assert_existing_objects_matched()
    except AssertionError as e:
        raise CheckpointError(f"checkpoint {chosen} does not match this model: {e}") from e
    step = dlrm_callbacks.global_step(model)
    if bad:
        print(f"  fell back to {chosen} (step {step}), the newest readable checkpoint")
    print(f"  restored {chosen} (step {step})")
    return manager, step


def _step_of(prefix: str) -> int:
    m = re.search(r"ckpt-(\d+)$", prefix)
    return int(m.group(1)) if m else -1
