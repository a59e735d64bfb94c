r"""Train the Keras 3 DLRM (keras-rs + tt_keras.TTEmbedding) with model.fit, evaluate its
AUC, and export it as a portable SavedModel.

  # synthetic Criteo-like data at DLRM's Kaggle table sizes / 100, 7 TT tables at rank 32
  python -m examples.keras3_dlrm.train --table_scale=100 --steps=2000

  # the real Criteo sample, hashed into the Kaggle table sizes, then exported
  python -m examples.keras3_dlrm.train --data=../shared/data/criteo_kaggle_sample.tsv \
      --steps=400 --export_dir=runs/keras3_dlrm/export

Runs under Keras 3 (the default; keras-rs needs it), not with TF_USE_LEGACY_KERAS=1. The
export is examples/dlrm/export.py's: one named input per raw Criteo feature, standard TF ops
only (checked), servable by stock TF Serving.
"""

import json
import os

import tensorflow as tf
from absl import app, flags

from examples.dlrm import data as dlrm_data
from examples.dlrm import export as dlrm_export
from examples.dlrm.config import DLRMConfig

FLAGS = flags.FLAGS
flags.DEFINE_string("data", "synthetic",
                    "'synthetic', or Criteo train.txt-format file paths (comma-separated).")
flags.DEFINE_float("table_scale", 1.0, "Divide every Kaggle table size by this (rounded up).")
flags.DEFINE_integer("embedding_dim", 16, "D.")
flags.DEFINE_integer("tt_tables", 7, "TT-compress this many of the largest tables.")
flags.DEFINE_integer("tt_rank", 32, "TT rank of the TT tables.")
flags.DEFINE_integer("batch_size", 128, "Training batch size.")
flags.DEFINE_integer("steps", 1000, "Training steps.")
flags.DEFINE_integer("steps_per_epoch", 200, "Steps between held-out evaluations.")
flags.DEFINE_float("learning_rate", 0.1, "SGD learning rate (DLRM's Kaggle setting).")
flags.DEFINE_integer("eval_examples", 20000, "Held-out examples for the final evaluation.")
flags.DEFINE_integer("eval_batch_size", 1024, "Evaluation batch size.")
flags.DEFINE_integer("eval_every", 10, "Files: every eval_every-th line is held out.")
flags.DEFINE_integer("seed", 0, "Seed of the synthetic data and the model.")
flags.DEFINE_string("export_dir", "", "Export a portable SavedModel here after training.")


def datasets(table_sizes, batch_size, eval_batch_size, eval_batches):
    """(endless training dataset, held-out dataset of eval_batches batches)."""
    if FLAGS.data == "synthetic":
        source = dlrm_data.SyntheticCriteo(table_sizes, seed=FLAGS.seed)
        return (source.dataset(batch_size),
                source.dataset(eval_batch_size, split="eval", num_batches=eval_batches))
    paths = FLAGS.data.split(",")
    train = dlrm_data.criteo_tsv_dataset(paths, table_sizes, batch_size, split="train",
                                         eval_every=FLAGS.eval_every, repeat=True)
    held_out = dlrm_data.criteo_tsv_dataset(paths, table_sizes, eval_batch_size, split="eval",
                                            eval_every=FLAGS.eval_every)
    return train, held_out.take(eval_batches)


def main(argv):
    del argv
    # Imported here so that --help works without building anything.
    from examples.keras3_dlrm import model as k3_model  # pylint: disable=g-import-not-at-top

    tf.random.set_seed(FLAGS.seed)
    sizes = dlrm_data.scale_table_sizes(dlrm_data.KAGGLE_TABLE_SIZES, FLAGS.table_scale)
    config = DLRMConfig(table_sizes=sizes, embedding_dim=FLAGS.embedding_dim,
                        tt_tables=FLAGS.tt_tables, tt_rank=FLAGS.tt_rank)
    model = k3_model.build_model(config, learning_rate=FLAGS.learning_rate)
    eval_batches = max(1, FLAGS.eval_examples // FLAGS.eval_batch_size)
    train, held_out = datasets(sizes, FLAGS.batch_size, FLAGS.eval_batch_size, eval_batches)
    epochs = max(1, FLAGS.steps // FLAGS.steps_per_epoch)
    model.fit(train, steps_per_epoch=FLAGS.steps_per_epoch, epochs=epochs,
              validation_data=held_out, shuffle=False, verbose=2)
    results = model.evaluate(held_out, return_dict=True, verbose=0)
    results["tt_features"] = list(config.tt_features)
    results["steps"] = epochs * FLAGS.steps_per_epoch
    if FLAGS.export_dir:
        ops = dlrm_export.export_dlrm(model, FLAGS.export_dir)  # raises if not portable
        results["export_dir"] = FLAGS.export_dir
        results["export_op_types"] = len(ops)
    print(json.dumps(results, indent=1, sort_keys=True))


if __name__ == "__main__":
    if os.environ.get("TF_USE_LEGACY_KERAS", "").lower() in ("1", "true", "yes"):
        raise SystemExit("examples.keras3_dlrm needs Keras 3: unset TF_USE_LEGACY_KERAS")
    app.run(main)
