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

With --id_orders=hashed,frequency the TT models are also timed on frequency-ordered ids
("tt/frequency", "recommended/frequency": id k the k-th most frequent, as a vocabulary
sorted by counts numbers them; examples/dlrm/data.py), in the same turns. The dense model
trains on hashed ids only: renaming its rows changes neither its work nor what it learns.
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
flags.DEFINE_list("id_orders", ["hashed"], "The synthetic id orders the TT models train on "
                  f"({', '.join(data.ID_ORDERS)}); dense trains on hashed ids.")


def model_configs(sizes, sources_by_order):
    """{label: (DLRMConfig, cache plan sample, id order)}: dense, and for each id order of
    `sources_by_order` ({order: source}) TT without a cache and the recommended cached TT
    model (planned from that order's stream, the one its steps train on)."""
    base = DLRMConfig(table_sizes=sizes, tt_tables=0)
    configs = {"dense": (base, {}, "hashed")}
    for order, source in sources_by_order.items():
        suffix = "" if order == "hashed" else f"/{order}"
        tt = base.replace(tt_tables=FLAGS.tt_tables, tt_rank=FLAGS.tt_rank)
        configs["tt" + suffix] = (tt, {}, order)
        if FLAGS.cached:
            # Filled at the first step from the sample, as RECOMMENDED_TT is: every timed
            # step is the steady state, with no counting (cache_updates.schedule stops the
            # counter after the fill when there is no refresh).
            cached = base.replace(**RECOMMENDED_TT)
            configs["recommended" + suffix] = (
                *cache_plan.plan_cache_sizes(cached, source), order)
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
    unknown = set(FLAGS.id_orders) - set(data.ID_ORDERS)
    if unknown:
        raise app.UsageError(f"--id_orders: unknown {sorted(unknown)}; known: "
                             f"{list(data.ID_ORDERS)}")
    streams = {order: sources.make_source(DataConfig(id_order=order), sizes, FLAGS.seed)
               for order in dict.fromkeys(["hashed", *FLAGS.id_orders])}
    planned = model_configs(sizes, {o: streams[o] for o in FLAGS.id_orders})
    models, orders = {}, {}
    for label, (config, sample, order) in planned.items():
        models[label], orders[label] = build(config, sample), order
        print(f"{label}: {model_summary(models[label])}")
    labels = list(models)
    print(f"\nexamples/s, median of {FLAGS.reps} calls of {FLAGS.steps_per_call} steps each, "
          "the models in turns; ratio: to dense")
    widths = [max(12, len(label)) for label in labels]
    print(f"{'batch':>6} " + " ".join(f"{label:>{w}} {'ratio':>6}"
                                       for label, w in zip(labels, widths)))
    for batch_size in [int(b) for b in FLAGS.batch_sizes]:
        batches = {order: list(stream.train(0, batch_size).take(FLAGS.distinct_batches))
                   for order, stream in streams.items()}
        calls = [stepper(models[label], batches[orders[label]]) for label in labels]
        ms = interleaved_median_ms(calls, FLAGS.reps)
        rates = [batch_size * FLAGS.steps_per_call / (t / 1000) for t in ms]
        print(f"{batch_size:>6} " + " ".join(f"{r:>{w},.0f} {r / rates[0]:>6.2f}"
                                             for r, w in zip(rates, widths)), flush=True)


def model_summary(model) -> str:
    emb = model.embeddings
    cached = sum(int(emb.tables[name].cache_size) for name in emb.config.tt_features)
    ratio = emb.uncompressed_bytes / emb.embedding_bytes
    return (f"{len(emb.config.tt_features)} TT tables, {cached:,} cached rows, embeddings "
            f"{emb.embedding_bytes / 1e6:.1f} MB ({ratio:.1f}x)")


if __name__ == "__main__":
    app.run(main)
