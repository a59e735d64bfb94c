"""One training run of a small TTEmbedding model, with or without a tf.distribute strategy;
writes every variable's value, per replica, to an .npz file. tests/test_distribute.py runs it
in subprocesses and compares the files.

    python -m tests.distributed_training --strategy=none|mirrored|multi_worker \\
        --cache_size=20 --loop=fit|custom --out=run.npz

- none: no strategy, fed the whole global batch;
- mirrored: MirroredStrategy over two logical CPUs of this process (set up before TF
  initialises, hence a process of its own);
- multi_worker: MultiWorkerMirroredStrategy, one replica per process, the cluster in
  TF_CONFIG (examples/dlrm/launch.py starts the workers). Only the chief writes `--out`;
  every worker writes `--out` with `.worker<i>` before the suffix, so the test can compare
  them.

Every run sees the same global batches (Zipf ids from a fixed seed); replica r of R takes
rows [r B/R, (r+1) B/R) of each, which is how the strategies split a batch. The loss is a sum
over the replica's examples divided by the global batch, so the all-reduced gradient is that
of the global batch's mean.

Written per variable (its name, numbered in creation order): `<i>:<name>/replica<r>`.
"""

import argparse
import json
import os
import sys


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--strategy", choices=["none", "mirrored", "multi_worker"],
                        required=True)
    parser.add_argument("--loop", choices=["fit", "custom"], default="custom")
    parser.add_argument("--cache_size", type=int, default=0)
    parser.add_argument("--backend", choices=["reference", "op", "auto"], default="reference")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--global_batch", type=int, default=16)
    parser.add_argument("--out", required=True)
    parser.add_argument("--epoch_steps", type=int, default=0,
                        help="fit: epochs of this many steps over the first this many "
                        "global batches (0: one epoch of --steps)")
    parser.add_argument("--backup_dir", default="",
                        help="fit: BackupAndRestore into this directory every 2 steps")
    parser.add_argument("--crash_at_step", type=int, default=0,
                        help="fit: the last worker dies (os._exit) after this step, once: "
                        "when <backup_dir>/crashed does not exist yet, which it creates")
    return parser.parse_args(argv)


def _setup_devices(strategy_name):
    """Logical devices must be configured before TensorFlow initialises its runtime."""
    import tensorflow as tf

    if strategy_name == "mirrored":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)


def _strategy(name):
    import tensorflow as tf

    if name == "mirrored":
        return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


NUM_ROWS, DIM, BAG = 400, 8, 3


def _batches(steps, global_batch):
    """(ids [B, BAG] int64, targets [B, 1] float32) per step: Zipf(1.2) ids, so a cache has
    hot rows to hold."""
    import numpy as np

    rng = np.random.default_rng(7)
    out = []
    for _ in range(steps):
        ids = (rng.zipf(1.2, size=(global_batch, BAG)) - 1) % NUM_ROWS
        targets = rng.normal(size=(global_batch, 1)).astype(np.float32)
        out.append((ids.astype(np.int64), targets))
    return out


def _model(args):
    import tt_keras
    from tt_keras._keras import keras

    embedding = tt_keras.TTEmbedding(
        NUM_ROWS, DIM, tt_rank=4, combiner="sum", lookup_backend=args.backend,
        cache_size=args.cache_size, cache_warmup_steps=2, cache_refresh_steps=3,
        embeddings_initializer=tt_keras.SampledGaussian(seed=3), name="embedding")
    inputs = keras.Input(shape=(BAG,), dtype="int64")
    outputs = keras.layers.Dense(1, kernel_initializer=keras.initializers.GlorotUniform(seed=5),
                                 name="head")(embedding(inputs))
    return keras.Model(inputs, outputs)


def _local_values(strategy, variable):
    """The values of every copy of `variable` held by this process, replica order."""
    import numpy as np

    value = getattr(variable, "value", variable)  # a Keras 3 variable wraps a tf one
    value = value if not callable(value) else variable
    return [np.asarray(v) for v in strategy.experimental_local_results(value)]


def _train_custom(strategy, model, batches, global_batch, args):
    import tensorflow as tf

    from tt_keras._keras import keras

    optimizer = keras.optimizers.SGD(0.5)
    replicas = strategy.num_replicas_in_sync

    def replica_step(ids, targets):
        with tf.GradientTape() as tape:
            predictions = model(ids, training=True)
            loss = tf.reduce_sum(tf.square(predictions - targets)) / global_batch
        variables = model.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))

    @tf.function
    def step(ids, targets):
        strategy.run(replica_step, args=(ids, targets))

    per_replica = global_batch // replicas

    def distribute(array):
        """Replica r's rows of a global batch."""
        def piece(context):
            r = context.replica_id_in_sync_group
            return tf.constant(array[r * per_replica:(r + 1) * per_replica])
        return strategy.experimental_distribute_values_from_function(piece)

    for ids, targets in batches:
        step(distribute(ids), distribute(targets))


def _crash_callback(args, epoch_steps):
    """Kills the last worker after step --crash_at_step, the first time only."""
    from tt_keras._keras import keras

    task = json.loads(os.environ.get("TF_CONFIG", "{}"))
    workers = len(task.get("cluster", {}).get("worker", [None]))
    last = task.get("task", {}).get("index", 0) == workers - 1
    marker = os.path.join(args.backup_dir, "crashed")

    class Crash(keras.callbacks.Callback):
        epoch = 0

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            step = self.epoch * epoch_steps + batch + 1  # `batch` restarts every epoch
            if last and step == args.crash_at_step and not os.path.exists(marker):
                with open(marker, "w") as f:
                    f.write(str(step))
                os._exit(3)  # as a killed worker: no cleanup, no goodbye to the others
    return Crash()


def _train_fit(strategy, model, batches, global_batch, args):
    import numpy as np
    import tensorflow as tf

    from tt_keras._keras import keras

    epoch_steps = args.epoch_steps or len(batches)
    if len(batches) % epoch_steps:
        raise ValueError(f"--epoch_steps = {epoch_steps} must divide --steps = {len(batches)}")
    ids = np.concatenate([b[0] for b in batches[:epoch_steps]])
    targets = np.concatenate([b[1] for b in batches[:epoch_steps]])
    dataset = tf.data.Dataset.from_tensor_slices((ids, targets)).batch(global_batch)
    options = tf.data.Options()
    # Every worker reads the whole stream and takes its slice of each global batch.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    dataset = dataset.with_options(options)
    with strategy.scope():
        model.compile(optimizer=keras.optimizers.SGD(0.5),
                      loss=keras.losses.MeanSquaredError())
    # The epochs run, in the log: a restarted run shows where it resumed.
    callbacks = [keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs: print(f"epoch {epoch} begins", flush=True))]
    if args.backup_dir:
        callbacks.append(keras.callbacks.BackupAndRestore(args.backup_dir, save_freq=2))
    if args.crash_at_step:
        callbacks.append(_crash_callback(args, epoch_steps))
    model.fit(dataset, epochs=len(batches) // epoch_steps, verbose=0, shuffle=False,
              callbacks=callbacks)


def main(argv=None):
    args = _parse(argv if argv is not None else sys.argv[1:])
    _setup_devices(args.strategy)
    import numpy as np

    strategy = _strategy(args.strategy)  # before any op runs (MultiWorkerMirroredStrategy)
    batches = _batches(args.steps, args.global_batch)
    with strategy.scope():
        model = _model(args)
    train = _train_fit if args.loop == "fit" else _train_custom
    if args.loop == "custom" and (args.backup_dir or args.crash_at_step):
        raise ValueError("--backup_dir and --crash_at_step need --loop=fit")
    train(strategy, model, batches, args.global_batch, args)

    arrays = {}
    for i, variable in enumerate(model.variables):
        name = getattr(variable, "path", variable.name)
        for r, value in enumerate(_local_values(strategy, variable)):
            arrays[f"{i}:{name}/replica{r}"] = value
    out = args.out
    task = json.loads(os.environ.get("TF_CONFIG", "{}")).get("task")
    if task is not None:
        root, ext = os.path.splitext(out)
        out = f"{root}.worker{task['index']}{ext}"
    np.savez(out, **arrays)


if __name__ == "__main__":
    main()
