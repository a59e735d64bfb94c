r"""DLRM training throughput, dense against TT, timed in turns in one process.

    TF_USE_LEGACY_KERAS=1 python -m benchmarks.dlrm_step                # batch 128, 512, 2048
    TF_USE_LEGACY_KERAS=1 python -m benchmarks.dlrm_step --batch_sizes=128 --reps=40

The models are the trainer's (examples/dlrm/model.py: TFRS Ranking, SGD 0.1, DLRM's Kaggle
table sizes unless --table_scale): the dense DLRM, the TT DLRM with the --tt_tables largest
tables at rank --tt_rank and no cache, and the quality study's pick (RECOMMENDED_TT: 10 TT
tables at rank 8 with hot-row caches from a budget that leaves all embedding memory 100x
smaller than dense), its counters seeded from the plan's sample so that the caches fill at
the first step: what is timed is the cached steady state, not the warm-up. One call is
--steps_per_call training steps (`model.train_step` in a tf.function, as `fit` runs it) over
batches of the synthetic stream, cycled; the models' calls alternate
(benchmarks/workload.interleaved_median_ms), so load from other processes falls on all of
them alike. Printed: median examples/s per model
and its ratio to dense.
"""

import os

if __name__ == "__main__":
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import itertools  # noqa: E402

import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from benchmarks.workload import interleaved_median_ms  # noqa: E402
from examples.dlrm import cache_plan, data, sources  # noqa: E402
from examples.dlrm import model as dlrm_model  # noqa: E402
from examples.dlrm.config import RECOMMENDED_TT, DataConfig, DLRMConfig  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("batch_sizes", ["128", "512", "2048"], "Training batch sizes.")
flags.DEFINE_integer("tt_tables", 7, "TT-compress this many of the largest tables.")
flags.DEFINE_integer("tt_rank", 32, "TT rank.")
flags.DEFINE_bool("cached", True, "Also time the recommended cached TT model "
                  "(examples/dlrm/config.py RECOMMENDED_TT).")
flags.DEFINE_float("table_scale", 1.0, "Divide DLRM's Kaggle table sizes by this.")
flags.DEFINE_integer("steps_per_call", 10, "Training steps per timed call.")
flags.DEFINE_integer("reps", 20, "Timed calls of each model per batch size.")
flags.DEFINE_integer("distinct_batches", 20, "Batches of the stream the steps cycle over.")
flags.DEFINE_integer("seed", 0, "Seed of the stream and the models.")


def model_configs(sizes, source):
    """{label: (DLRMConfig, cache plan sample)}: dense, TT without a cache, and the
    recommended cached TT model (planned from `source`, the stream the steps train on)."""
    base = DLRMConfig(table_sizes=sizes, tt_tables=0)
    configs = {"dense": (base, {}),
               "tt": (base.replace(tt_tables=FLAGS.tt_tables, tt_rank=FLAGS.tt_rank), {})}
    if FLAGS.cached:
        # Filled at the first step from the sample, as RECOMMENDED_TT is: every timed step is
        # the steady state, with no counting (cache_updates.schedule stops the counter after
        # the fill when there is no refresh).
        cached = base.replace(**RECOMMENDED_TT)
        configs["recommended"] = cache_plan.plan_cache_sizes(cached, source)
    return configs


def build(config, sample):
    tf.keras.utils.set_random_seed(FLAGS.seed)
    model = dlrm_model.build_model(config, "sgd", 0.1)
    cache_plan.seed_counters(model, config, sample)
    return model


def stepper(model, batches):
    """A call of `steps_per_call` training steps of `model` over `batches`, cycled."""
    train_step = tf.function(model.train_step)
    cycle = itertools.cycle(batches)

    def call():
        for _ in range(FLAGS.steps_per_call):
            logs = train_step(next(cycle))
        return float(logs["loss"])  # waits for the last step
    return call


def main(argv):
    del argv
    sizes = data.scale_table_sizes(data.KAGGLE_TABLE_SIZES, FLAGS.table_scale)
    source = sources.make_source(DataConfig(), sizes, FLAGS.seed)
    planned = model_configs(sizes, source)
    models = {}
    for label, (config, sample) in planned.items():
        models[label] = build(config, sample)
        print(f"{label}: {model_summary(models[label])}")
    labels = list(models)
    print(f"\nexamples/s, median of {FLAGS.reps} calls of {FLAGS.steps_per_call} steps each, "
          "the models in turns; ratio: to dense")
    print(f"{'batch':>6} " + " ".join(f"{label:>12} {'ratio':>6}" for label in labels))
    for batch_size in [int(b) for b in FLAGS.batch_sizes]:
        batches = list(source.train(0, batch_size).take(FLAGS.distinct_batches))
        calls = [stepper(models[label], batches) for label in labels]
        ms = interleaved_median_ms(calls, FLAGS.reps)
        rates = [batch_size * FLAGS.steps_per_call / (t / 1000) for t in ms]
        print(f"{batch_size:>6} " + " ".join(f"{r:>12,.0f} {r / rates[0]:>6.2f}"
                                             for r in rates), flush=True)


def model_summary(model) -> str:
    emb = model.embeddings
    cached = sum(int(emb.tables[name].cache_size) for name in emb.config.tt_features)
    ratio = emb.uncompressed_bytes / emb.embedding_bytes
    return (f"{len(emb.config.tt_features)} TT tables, {cached:,} cached rows, embeddings "
            f"{emb.embedding_bytes / 1e6:.1f} MB ({ratio:.1f}x)")


if __name__ == "__main__":
    app.run(main)
