r"""What the TT product contributes to a trained cached-TT DLRM, and where lookups land.

    TF_USE_LEGACY_KERAS=1 python -m benchmarks.tt_tail <the trainer's flags of the run> \
        --model_dir=<its --model_dir>

Restores the newest checkpoint of <model_dir>/tt (a run of `examples.dlrm.train --model=tt`
with a cache budget) and evaluates it on the held-out data with every TT table's first core
multiplied by each of --alphas. That scales every uncached row by alpha and leaves the
cached rows alone: if the AUC does not move, the cores carry nothing the model uses. With
--lookups, it also counts the training ids of the run's steps and splits the held-out
lookups of each TT table into cached ids and uncached ids by how often training saw them.
With --dense_restricted (a run of --model=both), it restores <model_dir>/dense too and
evaluates it with the rows of its TT tables' ids that the TT model does not cache set to
zero: what the dense model loses without the rows the TT model could only learn in its
cores. If little, the TT model's gap is in how its cached rows trained, not in coverage.
"""

import os

if __name__ == "__main__":
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from examples.dlrm import cache_plan, checkpoints, sources  # noqa: E402
from examples.dlrm import config as dlrm_config  # noqa: E402
from examples.dlrm import model as dlrm_model  # noqa: E402

flags.DEFINE_list("alphas", ["1", "0.5", "0"], "Factors of the uncached (TT) rows.")
flags.DEFINE_bool("lookups", False, "Also split the held-out lookups (counts training ids).")
flags.DEFINE_bool("dense_restricted", False, "Also evaluate <model_dir>/dense with only the "
                  "rows of the TT model's cached ids kept in its TT tables.")

# Bins of training counts for uncached held-out ids: (name, low, high), low <= count < high.
COUNT_BINS = (("unseen", 0, 1), ("seen 1-4", 1, 5), ("seen 5-19", 5, 20),
              ("seen 20+", 20, np.inf))


def restore(config, label="tt", source=None):
    """(model, planned DLRMConfig, source, step) from <model_dir>/<label> (tt or dense);
    `source`: the data source of the run, made from config when None."""
    if source is None:
        source = sources.make_source(config.data, config.tables.table_sizes(),
                                     config.training.seed)
    model_config = config.dlrm_config()
    if label == "dense":
        model_config = model_config.replace(tt_tables=0)
    planned, _ = cache_plan.plan_cache_sizes(model_config, source)
    model = dlrm_model.build_model(planned, config.training.optimizer,
                                   config.training.learning_rate, name=f"dlrm_{label}")
    _, step = checkpoints.restore(model, os.path.join(config.output.model_dir, label))
    if not step:
        raise app.UsageError(f"no checkpoint in {config.output.model_dir}/{label}")
    return model, planned, source, step


def kept_rows(table: np.ndarray, keep_ids: np.ndarray) -> np.ndarray:
    """`table` with every row but those of keep_ids (ids >= len(table), a cache's empty
    slots, are ignored) set to zero."""
    keep_ids = keep_ids[keep_ids < table.shape[0]]
    kept = np.zeros_like(table)
    kept[keep_ids] = table[keep_ids]
    return kept


def dense_restricted(dense, tt, features, held_out):
    """(AUC, log loss) of the dense model with only the rows of the TT model's cached ids
    kept in the tables of `features`; the tables are restored afterwards."""
    tables = [dense.embeddings.tables[f].embeddings for f in features]
    saved = [t.numpy() for t in tables]
    try:
        for f, table, values in zip(features, tables, saved):
            table.assign(kept_rows(values, tt.embeddings.tables[f].cache.cache_ids.numpy()))
        return evaluate(dense, held_out)
    finally:
        for table, values in zip(tables, saved):
            table.assign(values)


def evaluate(model, held_out):
    """(AUC, log loss) of `model` on `held_out`."""
    m = model.evaluate(held_out, return_dict=True, verbose=0)
    return m["auc"], m["logloss"]


def alpha_rows(model, held_out, alphas):
    """[(alpha, AUC, log loss)] with the TT tables' uncached rows scaled by alpha."""
    tables = [model.embeddings.tables[f] for f in model.embeddings.config.tt_features]
    first = [t.cores[0].numpy() for t in tables]
    rows = []
    try:
        for alpha in alphas:
            for table, core in zip(tables, first):
                table.cores[0].assign(core * alpha)
            rows.append((alpha, *evaluate(model, held_out)))
    finally:
        for table, core in zip(tables, first):
            table.cores[0].assign(core)
    return rows


def lookup_split(model, planned, source, step, held_out):
    """{feature: {bin name: fraction of held-out lookups}}."""
    features = planned.tt_features
    train_ids = {f: [] for f in features}
    for x, _ in source.train(0).take(step):
        for f in features:
            train_ids[f].append(x[f].numpy().ravel())
    eval_ids = {f: [] for f in features}
    for x, _ in held_out:
        for f in features:
            eval_ids[f].append(x[f].numpy().ravel())
    split = {}
    for f in features:
        seen = np.concatenate(train_ids[f])
        ids = np.concatenate(eval_ids[f])
        uniq, counts = np.unique(seen, return_counts=True)
        pos = np.clip(np.searchsorted(uniq, ids), 0, len(uniq) - 1)
        count = np.where(uniq[pos] == ids, counts[pos], 0)
        cached = np.isin(ids, model.embeddings.tables[f].cache.cache_ids.numpy())
        split[f] = {"cached": float(cached.mean())}
        for name, low, high in COUNT_BINS:
            split[f][f"uncached {name}"] = float((~cached & (count >= low) &
                                                  (count < high)).mean())
    return split


def main(argv):
    del argv
    config = dlrm_config.config_from_flags(flags.FLAGS)
    model, planned, source, step = restore(config)
    held_out = source.held_out()
    print(f"restored step {step}; held-out AUC / log loss with the uncached rows scaled:")
    for alpha, auc, logloss in alpha_rows(model, held_out,
                                          [float(a) for a in flags.FLAGS.alphas]):
        print(f"  alpha {alpha:<5g} AUC {auc:.4f}  log loss {logloss:.4f}")
    if flags.FLAGS.dense_restricted:
        dense, *_ = restore(config, "dense", source)
        auc, logloss = evaluate(dense, held_out)
        r_auc, r_logloss = dense_restricted(dense, model, planned.tt_features, held_out)
        print(f"dense: AUC {auc:.4f}  log loss {logloss:.4f}; with only the TT model's "
              f"cached rows in its TT tables: AUC {r_auc:.4f}  log loss {r_logloss:.4f}")
    if flags.FLAGS.lookups:
        print("held-out lookups per TT table (fractions):")
        for f, shares in lookup_split(model, planned, source, step, held_out).items():
            print(f"  {f:>4}: " + ", ".join(f"{k} {v:.3f}" for k, v in shares.items()))


if __name__ == "__main__":
    dlrm_config.define_flags(flags.FLAGS)
    flags.adopt_module_key_flags(dlrm_config)
    app.run(main)
