"""--init_from: start the TT DLRM from a trained dense DLRM's checkpoint.

    python -m examples.dlrm.train --model=dense --model_dir=runs/ckpt ...   # train dense
    python -m examples.dlrm.train --model=tt --init_from=runs/ckpt ...      # compress, tune

`initialize(tt_model, config, source)` restores the dense DLRM of this run's flags from the
checkpoint, evaluates it, and gives the TT model its weights: each TT table gets the TT-SVD
of the trained dense table (`tt_keras.tt_svd`, truncated to the layer's ranks and padded
with zeros up to them where the table's unfoldings have lower rank, so the cores fit the
layer as built), every other table and both MLPs are copied. The TT model is then evaluated
before any fine-tuning. `tt_keras.compress` does the same for Sequential and functional
models, but refuses this subclassed TFRS model, hence this module.

The checkpoint holds no flags, so its variables' shapes are checked against this run's
dense DLRM first: a different --embedding_dim, table sizes (--synthetic_sizes,
--table_scale, --max_table_size), --bottom_mlp or --top_mlp is reported with the flag, the
checkpoint's value and this run's, instead of TensorFlow's shape error on restore.
"""

import os
from typing import Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf

import tt_keras

from examples.dlrm import data as dlrm_data
from examples.dlrm import model as dlrm_model
from examples.dlrm.config import Config, DLRMConfig

# Checkpoint keys of a DLRM saved as tf.train.Checkpoint(model=..., ...), as the trainer
# saves it: the object path of each variable through the TFRS Ranking model's attributes.
_PREFIX = "model/"
_VALUE = "/.ATTRIBUTES/VARIABLE_VALUE"
_TABLE_KEY = _PREFIX + "_embedding_layer/tables/{}/embeddings" + _VALUE
_MLP_KERNEL_KEY = _PREFIX + "{}/_sublayers/{}/kernel" + _VALUE
# Rows looked up per call when measuring a TT table's error against the dense one.
_ERROR_CHUNK_ROWS = 1 << 20


class InitFromError(ValueError):
    """The --init_from checkpoint does not fit this run's flags (the message says how)."""


def find_checkpoint(path: str) -> str:
    """The checkpoint `path` names: a checkpoint prefix, or the latest checkpoint of a
    checkpoints directory, of a run directory (<model_dir>/dense, with checkpoints/ in it)
    or of a --model_dir whose dense/ run holds one."""
    if not path:
        raise InitFromError("--init_from is empty")
    if tf.io.gfile.exists(path + ".index"):
        return path
    candidates = [path, os.path.join(path, "checkpoints"),
                  os.path.join(path, "dense", "checkpoints")]
    for directory in candidates:
        if tf.io.gfile.isdir(directory):
            latest = tf.train.latest_checkpoint(directory)
            if latest:
                return latest
    raise FileNotFoundError(f"--init_from={path}: no checkpoint there (looked for a "
                            f"checkpoint prefix and in {', '.join(candidates)})")


def _mlp_widths(shapes: Dict[str, list], stack: str) -> Tuple[int, ...]:
    """The output widths of an MLP's layers in a checkpoint (the last one included)."""
    widths, i = [], 0
    while _MLP_KERNEL_KEY.format(stack, i) in shapes:
        widths.append(int(shapes[_MLP_KERNEL_KEY.format(stack, i)][1]))
        i += 1
    return tuple(widths)


def check_shapes(checkpoint: str, dense_config: DLRMConfig, config: Config) -> None:
    """Raises InitFromError naming the flag when the checkpoint's DLRM is not the dense
    DLRM of this run's flags."""
    shapes = dict(tf.train.list_variables(checkpoint))
    missing = [n for n in dlrm_data.CAT_FEATURES if _TABLE_KEY.format(n) not in shapes]
    if missing:
        raise InitFromError(
            f"--init_from={checkpoint}: not a dense DLRM checkpoint: it has no dense table "
            f"for {', '.join(missing)} (a TT model's checkpoint holds cores instead)")
    rows = [int(shapes[_TABLE_KEY.format(n)][0]) for n in dlrm_data.CAT_FEATURES]
    dims = {int(shapes[_TABLE_KEY.format(n)][1]) for n in dlrm_data.CAT_FEATURES}
    tables = config.tables
    if dims != {dense_config.embedding_dim}:
        raise InitFromError(
            f"--embedding_dim: the checkpoint {checkpoint} has D={sorted(dims)}, this run has "
            f"D={dense_config.embedding_dim} (--embedding_dim={tables.embedding_dim}, "
            f"--synthetic_sizes={tables.synthetic_sizes}); give the dense run's value")
    if tuple(rows) != tuple(dense_config.table_sizes):
        differ = [f"{n}: {a} vs {b}" for n, a, b in
                  zip(dlrm_data.CAT_FEATURES, rows, dense_config.table_sizes) if a != b]
        raise InitFromError(
            f"table sizes: the checkpoint {checkpoint} and this run (--synthetic_sizes="
            f"{tables.synthetic_sizes} --table_scale={tables.table_scale:g} "
            f"--max_table_size={tables.max_table_size}) differ (checkpoint vs this run) in "
            f"{len(differ)} tables: {'; '.join(differ[:5])}{' ...' if len(differ) > 5 else ''}"
            "; give the dense run's table flags")
    for flag, stack, hidden, last in (
            ("bottom_mlp", "_bottom_stack", dense_config.bottom_mlp, dense_config.embedding_dim),
            ("top_mlp", "_top_stack", dense_config.top_mlp, 1)):
        found = _mlp_widths(shapes, stack)
        if found != tuple(hidden) + (last,):
            raise InitFromError(
                f"--{flag}: the checkpoint {checkpoint} has layer widths {list(found)}, this "
                f"run {list(hidden) + [last]} (--{flag}={','.join(map(str, hidden))} plus the "
                "last layer); give the dense run's value")


def restore_dense(checkpoint: str, dense_config: DLRMConfig, config: Config):
    """The dense DLRM of this run's flags with the checkpoint's weights (optimizer state
    is not restored: fine-tuning starts its own)."""
    check_shapes(checkpoint, dense_config, config)
    training = config.training
    dense = dlrm_model.build_model(dense_config, training.optimizer, training.learning_rate,
                                   name="dlrm_init_from_dense")
    status = tf.train.Checkpoint(model=dense).read(checkpoint)
    status.expect_partial().assert_existing_objects_matched()
    return dense


def tt_cores_from_table(layer: tt_keras.TTEmbedding, table) -> List[np.ndarray]:
    """The TT-SVD of a dense table in the shapes of `layer`'s cores: truncated to the
    layer's ranks, zero-padded up to them where the table's unfoldings have lower rank
    (the padded cores represent the same table)."""
    shape = layer.tt_shape
    return tt_keras.tt_svd(np.asarray(table), shape.row_shape, shape.col_shape,
                           list(shape.inner_ranks), pad_ranks=True)


def relative_error(layer: tt_keras.TTEmbedding, table) -> float:
    """||table - the layer's rows||_F / ||table||_F, looked up in chunks (the layer's rows
    as it serves them, float32; no dense copy of a large table)."""
    table = np.asarray(table)
    err2 = 0.0
    for start in range(0, len(table), _ERROR_CHUNK_ROWS):
        stop = min(start + _ERROR_CHUNK_ROWS, len(table))
        rows = layer(tf.range(start, stop, dtype=tf.int64), training=False).numpy()
        err2 += float(np.sum((rows.astype(np.float64) - table[start:stop]) ** 2))
    norm = float(np.linalg.norm(table.astype(np.float64)))
    return float(np.sqrt(err2)) / norm if norm else float(np.sqrt(err2))


def copy_weights(dense, tt_model) -> List[dict]:
    """Gives tt_model the dense model's weights: TT-SVD for its TT tables, copies for the
    rest. Returns one row per TT table: feature, rows, ranks, relative error."""
    tables = []
    for name in dlrm_data.CAT_FEATURES:
        source = dense.embeddings.tables[name]
        target = tt_model.embeddings.tables[name]
        table = source.embeddings.numpy()
        if tt_model.embeddings.is_tt(name):
            target.set_cores(tt_cores_from_table(target, table))
            tables.append({"feature": name, "rows": int(table.shape[0]),
                           "ranks": list(target.tt_shape.ranks),
                           "relative_error": relative_error(target, table)})
        else:
            target.set_weights(source.get_weights())
    for stack in ("_bottom_stack", "_feature_interaction", "_top_stack"):
        getattr(tt_model, stack).set_weights(getattr(dense, stack).get_weights())
    return tables


def _metrics(model, source) -> dict:
    metrics = model.evaluate(source.held_out(), return_dict=True, verbose=0)
    return {key: float(metrics[key]) for key in ("auc", "logloss", "accuracy")}


def initialize(tt_model, config: Config, source) -> dict:
    """Gives tt_model (built, not yet trained) the TT-SVD of the --init_from checkpoint's
    dense DLRM and evaluates both on the held-out data.

    Returns {"checkpoint", "dense_steps" (the dense model's training steps, from its
    checkpoint), "dense": its held-out metrics, "tt_svd": the TT model's before fine-tuning,
    "tables": copy_weights' rows}.
    """
    checkpoint = find_checkpoint(config.run.init_from)
    dense_config = tt_model.config.replace(tt_tables=0, cache_size=0, cache_sizes=(),
                                           cache_budget_mb=0.0, cache_compression=0.0,
                                           cache_coverage=0.0, cache_prefill=False)
    dense = restore_dense(checkpoint, dense_config, config)
    reader = tf.train.load_checkpoint(checkpoint)
    step_key = "optimizer/iter" + _VALUE
    dense_steps = int(reader.get_tensor(step_key)) if reader.has_tensor(step_key) else None
    print(f"  --init_from: {checkpoint} (dense, {dense_steps} steps)")
    result = {"checkpoint": checkpoint, "dense_steps": dense_steps,
              "dense": _metrics(dense, source), "tables": copy_weights(dense, tt_model)}
    del dense
    result["tt_svd"] = _metrics(tt_model, source)
    return result


def maybe_initialize(tt_model, config: Config, source, start_step: int) -> Optional[dict]:
    """`initialize` when --init_from is given and the run starts at step 0; None otherwise
    (a resumed run continues its own fine-tuning checkpoint, which already started from
    the dense model)."""
    if not config.run.init_from:
        return None
    if start_step:
        print(f"  --init_from not applied again: resuming the fine-tuning at step {start_step}")
        return None
    return initialize(tt_model, config, source)
