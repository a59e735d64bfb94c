r"""The quality study: TT configurations against the dense DLRM, on the same data and seeds.

    python -m benchmarks.quality --quick        # minutes: tables / 100, 1,500 steps
    python -m benchmarks.quality                # Kaggle sizes, 10,000 steps of batch 128
    python -m benchmarks.quality --grid=screen --seeds=0 --optimizers=sgd
    python -m benchmarks.quality --data=criteo_sample --folds=5   # the real rows, 5-fold CV

Every configuration of the grid is trained beside the dense model for each optimizer and
seed, for the same steps, on the synthetic Criteo stream of that seed (examples/dlrm): one
`python -m examples.dlrm.train --model=dense|tt` subprocess per model (legacy Keras for
TFRS; a fresh process returns each model's memory), whose results.json lands in
<out_dir>/runs/<run>/. A run whose results.json exists is not trained again, so a stopped
study resumes where it stopped. Then the summary (benchmarks/quality_report.py): AUC and log
loss gaps to dense, paired by seed, with 95% intervals; compression counting all embedding
memory (cores, cache, counter); examples/s. It is printed, written to
<out_dir>/quality.json, and plotted as AUC gap against compression in <out_dir>/pareto.png.

With --data naming files (the real Criteo sample), the study cross-validates instead:
--folds=k trains every model k times, holding out fold j (the trainer's --eval_every=k
--eval_fold=j) with one seed, and the folds take the place of the seeds in the pairing. Its
defaults are sized for the 11,609-row sample (CV_DEFAULTS) and its grid is "cv".
"""

import json
import os
import subprocess
import sys
import time
from typing import Dict, List, Tuple

from absl import app, flags

from benchmarks import quality_report
from examples.dlrm.config import RECOMMENDED_TT

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The optimizers of the study and their learning rates: DLRM's SGD, and Adagrad.
OPTIMIZERS = {"sgd": 0.1, "adagrad": 0.05}

# screen2's pick: 10 tables at rank 8, caches from a 19.5 MB budget (100x), filled after a
# 1,000-step warm-up.
WARMUP_PICK = {"tt_tables": 10, "tt_rank": 8, "cache_budget_mb": 19.5,
               "cache_counter_multiple": 1, "cache_warmup_steps": 1000,
               "cache_plan_batches": 2000, "cache_plan_min_count": 1}
# screen4's pick (RECOMMENDED_TT with its budget written out): the same caches, filled at
# the first step from the hottest ids of the budget's sample.
PREFILL_PICK = dict(WARMUP_PICK, cache_warmup_steps=0, cache_prefill=True)

# Configurations: name -> trainer options (examples/dlrm/config.py) that differ from the
# study's common ones. "dense" is the reference every gap is measured against; the others
# train the TT model unless they say "model": "dense".
GRIDS: Dict[str, Dict[str, dict]] = {
    "default": {
        "dense": {},
        "tt7_r32": {"tt_tables": 7, "tt_rank": 32},
        "tt7_r32_cache10k": {"tt_tables": 7, "tt_rank": 32, "cache_size": 10_000},
    },
    "screen": {
        "dense": {},
        "tt7_r32": {"tt_tables": 7, "tt_rank": 32},
        "tt7_r32_cache10k": {"tt_tables": 7, "tt_rank": 32, "cache_size": 10_000},
        "tt7_r32_cache20k_w1000": {"tt_tables": 7, "tt_rank": 32, "cache_size": 20_000,
                                   "cache_warmup_steps": 1000},
        "tt7_r32_cache10k_refresh1000": {"tt_tables": 7, "tt_rank": 32, "cache_size": 10_000,
                                         "cache_refresh_steps": 1000},
        "tt7_r16": {"tt_tables": 7, "tt_rank": 16},
        "tt7_r64": {"tt_tables": 7, "tt_rank": 64},
    },
    "screen2": {
        "dense": {},
        "tt10_r8_b19.5_m1": WARMUP_PICK,
        "tt7_r8_b11.8_m1": dict(WARMUP_PICK, tt_tables=7, cache_budget_mb=11.8),
        "tt10_r8_b19.5_m1_counting": dict(WARMUP_PICK, cache_refresh_steps=1000),
        "tt7_r32_cores_adagrad": {"tt_tables": 7, "tt_rank": 32, "tt_optimizer": "adagrad",
                                  "tt_learning_rate": 0.01},
        "tt7_r32_init100": {"tt_tables": 7, "tt_rank": 32, "tt_init_scale": 100.0},
    },
    "screen3": {
        "dense": {},
        "tt10_r8_b19.5_m1_prefill": PREFILL_PICK,
        "tt10_r8_b19.5_m1_counting_drop": dict(WARMUP_PICK, cache_refresh_steps=1000,
                                               cache_fold_sweeps=0),
    },
    # Where the gap of screen2's pick comes from. Twice its cache budget (52.6x, the most
    # that rows half as costly could buy at 100x) did not close it; caches filled at the
    # first step from the sample's hottest ids (prefill) did. With zero cores (the caches
    # alone, every uncached row zero): does the TT product cost quality?
    "screen4": {
        "dense": {},
        "tt10_r8_b19.5_m1": WARMUP_PICK,
        "tt10_r8_b39_m1": dict(WARMUP_PICK, cache_budget_mb=39.0),
        "tt10_r8_b19.5_m1_prefill": PREFILL_PICK,
        "tt10_r8_b19.5_m1_prefill_zeros": dict(PREFILL_PICK, tt_initializer="zeros"),
    },
    # Frequency-ordered ids (--id_order=frequency: id k the k-th most frequent, the exact
    # order a vocabulary sorted by counts would give) against hashed ones, where the TT
    # product carries the lookups (7 tables at rank 32, no cache) and in the pick. Dense is
    # given frequency-ordered ids too, to show that renaming its rows changes nothing.
    "screen5": {
        "dense": {},
        "dense_freq": {"model": "dense", "id_order": "frequency"},
        "tt7_r32": {"tt_tables": 7, "tt_rank": 32},
        "tt7_r32_freq": {"tt_tables": 7, "tt_rank": 32, "id_order": "frequency"},
        "tt10_r8_b19.5_m1_prefill": PREFILL_PICK,
        "tt10_r8_b19.5_m1_prefill_freq": dict(PREFILL_PICK, id_order="frequency"),
        # Rank 64 instead of 8 in the pick, with the same caches: does a larger TT product
        # add anything where the caches hold the hot ids?
        "tt10_r64_b19.5_m1_prefill": dict(PREFILL_PICK, tt_rank=64),
    },
    # The configuration make demo trains (examples/dlrm/config.py RECOMMENDED_TT): screen4's
    # tt10_r8_b19.5_m1_prefill with its budget derived from the 100x target instead of
    # written out.
    "recommended": {"dense": {}, "recommended": dict(RECOMMENDED_TT)},
    # The real rows' cross-validation (--folds): RECOMMENDED_TT with its plan sized to a
    # 400-step run on a fold's 9,287 training lines instead of 10,000 steps of an endless
    # stream: 72 batches of 128, one pass over the training lines (2,000 would count each
    # line 27 times, the same split and the same prefilled ids for 27x the time).
    # Everything else as RECOMMENDED_TT.
    "cv": {"dense": {}, "recommended": dict(RECOMMENDED_TT, cache_plan_batches=72)},
    "quick": {
        "dense": {},
        "tt7_r8": {"tt_tables": 7, "tt_rank": 8},
        "tt7_r8_cache300": {"tt_tables": 7, "tt_rank": 8, "cache_size": 300,
                            "cache_warmup_steps": 20},
    },
}

# The cross-validation's defaults, where their flags are not given: sized for the 11,609
# real rows. 400 steps of 128 are 5.5 passes over a fold's 9,287 training lines (the README's
# run of the sample). Tables / 100: the largest keeps 101k rows for the at most 5,700
# distinct values a column has in the sample, so few collide and the dense model learns as
# at full size (where 99.9% of its rows would never be touched); and the 100x budget is 24
# KB of caches, 276 rows covering a quarter of the TT tables' lookups, so the TT cores carry
# the rest. At full size the 19.5 MB budget would cache every distinct id of the sample,
# a dense model in disguise. The held-out fold is evaluated whole.
CV_DEFAULTS = {"grid": "cv", "steps": 400, "batch_size": 128, "table_scale": 100.0,
               "out_dir": "runs/quality_cv"}

FLAGS = flags.FLAGS
flags.DEFINE_enum("grid", "default", list(GRIDS), "Which grid of configurations to run "
                  "(with --folds: cv).")
flags.DEFINE_list("configs", [], "Run only these configurations of the grid (and dense).")
flags.DEFINE_list("optimizers", list(OPTIMIZERS), "Optimizers: " + ", ".join(OPTIMIZERS))
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (data, teacher and model init); with "
                  "--folds one seed (default 0).")
flags.DEFINE_string("data", "synthetic", "'synthetic' (the synthetic Criteo stream, paired by "
                    "seed), or files to cross-validate on with --folds: 'criteo_sample' (the "
                    "real Criteo sample) or Criteo train.txt-format file(s), comma-separated.")
flags.DEFINE_integer("folds", 0, "With files: k-fold cross-validation, fold j holding out the "
                     "lines i with i % k == j (the trainer's --eval_every=k --eval_fold=j); "
                     "gaps are paired by fold.", lower_bound=0)
flags.DEFINE_integer("steps", 10_000, "Training steps of every model (with --folds: 400).")
flags.DEFINE_integer("batch_size", 128, "Training batch size.")
flags.DEFINE_integer("eval_examples", 500_000,
                     "Held-out examples of the final evaluation (the same for every run; "
                     "synthetic only: a fold is evaluated whole).")
flags.DEFINE_float("table_scale", 1.0, "Divide DLRM's Kaggle table sizes by this (with "
                   "--folds: 100).")
flags.DEFINE_string("teacher", "", "The synthetic teacher (the trainer's --teacher), if set.")
flags.DEFINE_bool("quick", False,
                  "Minutes, not hours: the quick grid, tables / 100, 1,500 steps, 2 seeds, "
                  "50,000 held-out examples.")
flags.DEFINE_string("out_dir", "runs/quality", "Where runs, quality.json and pareto.png go "
                    "(with --folds: runs/quality_cv).")
flags.DEFINE_bool("summary_only", False, "Summarize the runs already in --out_dir.")


def _given(name: str):
    """The flag's value where given on the command line, else None."""
    return FLAGS[name].value if FLAGS[name].present else None


def study_settings() -> dict:
    """The flags that define the study (the --quick preset overrides its parts, and the
    cross-validation's defaults replace those of flags not given)."""
    settings = {"grid": FLAGS.grid, "steps": FLAGS.steps, "batch_size": FLAGS.batch_size,
                "eval_examples": FLAGS.eval_examples, "table_scale": FLAGS.table_scale,
                "seeds": [int(s) for s in FLAGS.seeds], "optimizers": list(FLAGS.optimizers),
                "teacher": FLAGS.teacher, "data": FLAGS.data, "folds": FLAGS.folds,
                "out_dir": FLAGS.out_dir}
    if FLAGS.quick:
        settings.update(grid="quick", steps=1500, eval_examples=50_000, table_scale=100.0,
                        seeds=settings["seeds"][:2])
    unknown = set(settings["optimizers"]) - set(OPTIMIZERS)
    if unknown:
        raise app.UsageError(f"--optimizers: unknown {sorted(unknown)}; known: "
                             f"{sorted(OPTIMIZERS)}")
    if settings["data"] != "synthetic" or settings["folds"]:
        cross_validation_settings(settings)
    return settings


def cross_validation_settings(settings: dict) -> None:
    """Checks and completes `settings` for --folds: CV_DEFAULTS where no flag was given, one
    seed, and none of the synthetic stream's options."""
    folds, data = settings["folds"], settings["data"]
    if data == "synthetic":
        raise app.UsageError(
            f"--folds={folds} cross-validates over the lines of files: give "
            "--data=criteo_sample or Criteo train.txt-format file(s); the synthetic study "
            "pairs by --seeds instead")
    if folds < 2:
        raise app.UsageError(f"--data={data} is cross-validated: give --folds=k with k >= 2 "
                             f"(e.g. 5), got --folds={folds}")
    for name in ("quick", "teacher", "eval_examples"):
        if FLAGS[name].present and FLAGS[name].value:
            raise app.UsageError(f"--{name} is the synthetic study's; --folds={folds} trains "
                                 f"on the labelled lines of --data={data} and evaluates each "
                                 "held-out fold whole")
    if len(settings["seeds"]) > 1 and FLAGS["seeds"].present:
        raise app.UsageError(f"--folds={folds} pairs by fold with one seed; got --seeds="
                             f"{','.join(map(str, settings['seeds']))}")
    for name, default in CV_DEFAULTS.items():
        given = _given(name)
        settings[name] = default if given is None else given
    settings.update(seeds=settings["seeds"][:1], teacher="", eval_examples=None)


def replicates(settings: dict) -> List[Tuple[int, dict]]:
    """What each gap to dense is paired over: [(replicate, the trainer options that make
    it)]: the seeds of the synthetic stream, or the folds of the files with one seed."""
    if settings["folds"]:
        k, seed = settings["folds"], settings["seeds"][0]
        return [(j, {"seed": seed, "eval_every": k, "eval_fold": j}) for j in range(k)]
    return [(seed, {"seed": seed}) for seed in settings["seeds"]]


def replicate_kind(settings: dict) -> str:
    return "fold" if settings["folds"] else "seed"


def planned_runs(settings: dict) -> List[Tuple[str, str, int, dict]]:
    """[(configuration, optimizer, replicate, trainer options)], dense first in each
    group; a replicate is a seed, or with --folds a fold."""
    grid = GRIDS[settings["grid"]]
    names = [n for n in grid if not FLAGS.configs or n in FLAGS.configs or
             n == quality_report.DENSE]
    files = bool(settings["folds"])
    # Every run of a fold evaluates the whole fold at each epoch's end, in 5 epochs.
    steps_per_epoch = settings["steps"] // (5 if files else 10)
    runs = []
    for replicate, data_options in replicates(settings):
        for optimizer in settings["optimizers"]:
            for name in names:
                options = {"data": settings["data"], "steps": settings["steps"],
                           "batch_size": settings["batch_size"],
                           "table_scale": settings["table_scale"], **data_options,
                           "optimizer": optimizer, "learning_rate": OPTIMIZERS[optimizer],
                           "steps_per_epoch": max(1, steps_per_epoch),
                           "model": "dense" if name == quality_report.DENSE else "tt",
                           **grid[name]}
                if not files:
                    options["eval_examples"] = settings["eval_examples"]
                if settings["teacher"]:
                    options["teacher"] = settings["teacher"]
                runs.append((name, optimizer, replicate, options))
    return runs


def run_id(name: str, optimizer: str, replicate: int, kind: str = "seed") -> str:
    """The run's directory name: <configuration>-<optimizer>-s<seed> or -f<fold>."""
    return f"{name}-{optimizer}-{kind[0]}{replicate}"


def train_once(run_dir: str, options: dict) -> dict:
    """Trains one model in a subprocess (log in run_dir/train.log); returns its result."""
    os.makedirs(run_dir, exist_ok=True)
    argv = [f"--{k}={v}" for k, v in options.items()]
    cmd = [sys.executable, "-m", "examples.dlrm.train", "--verbose=2",
           f"--out_dir={run_dir}", *argv]
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1",
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with open(os.path.join(run_dir, "train.log"), "w") as log:
        log.write("$ " + " ".join(cmd[1:]) + "\n")
        log.flush()
        done = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode:
        raise RuntimeError(f"training failed (exit {done.returncode}); see "
                           f"{os.path.join(run_dir, 'train.log')}")
    with open(os.path.join(run_dir, "results.json")) as f:
        return json.load(f)[0]


def load_runs(out_dir: str, planned, kind: str = "seed") -> List[dict]:
    """The planned runs that have a result in out_dir."""
    runs = []
    for name, optimizer, replicate, options in planned:
        path = os.path.join(out_dir, "runs", run_id(name, optimizer, replicate, kind),
                            "results.json")
        if os.path.exists(path):
            with open(path) as f:
                result = json.load(f)[0]
            result.pop("curve", None)
            runs.append({"config": name, "optimizer": optimizer, "replicate": replicate,
                         kind: replicate, "options": options, "result": result})
    return runs


def run_study(settings: dict, out_dir: str) -> None:
    planned, kind = planned_runs(settings), replicate_kind(settings)
    todo = [p for p in planned if not os.path.exists(
        os.path.join(out_dir, "runs", run_id(*p[:3], kind), "results.json"))]
    print(f"quality study: {len(planned)} runs, {len(planned) - len(todo)} already done, "
          f"{len(todo)} to train (logs: {os.path.join(out_dir, 'runs')}/<run>/train.log)",
          flush=True)
    start = time.time()
    for k, (name, optimizer, replicate, options) in enumerate(todo, 1):
        t0 = time.time()
        rid = run_id(name, optimizer, replicate, kind)
        print(f"[{k}/{len(todo)}] {rid} ...", end=" ", flush=True)
        result = train_once(os.path.join(out_dir, "runs", rid), options)
        elapsed = time.time() - start
        eta = elapsed / k * (len(todo) - k)
        print(f"AUC {result['auc']:.4f} logloss {result['logloss']:.4f} "
              f"{result['compression_ratio']:.1f}x ({time.time() - t0:.0f} s; "
              f"about {eta / 60:.0f} min left)", flush=True)


def summarize(settings: dict, out_dir: str) -> List[dict]:
    kind = replicate_kind(settings)
    runs = load_runs(out_dir, planned_runs(settings), kind)
    rows = quality_report.summarize(runs)
    if settings["folds"]:
        data = (f"{settings['folds']}-fold cross-validation on {settings['data']}, each fold "
                f"held out whole, seed {settings['seeds'][0]}")
    else:
        data = f"{settings['eval_examples']:,} held-out examples"
    print(f"\nQuality study ({settings['steps']} steps of batch {settings['batch_size']}, "
          f"Kaggle tables / {settings['table_scale']:g}, {data}; gaps are TT minus dense, "
          f"mean +- 95% interval over {kind}s):")
    print(quality_report.format_summary(rows))
    print(f"\nHeld-out AUC per {kind}:")
    print(quality_report.format_replicates(rows, kind))
    with open(os.path.join(out_dir, "quality.json"), "w") as f:
        json.dump({"settings": settings, "summary": rows, "runs": runs}, f, indent=1)
    png = quality_report.plot_pareto(
        rows, os.path.join(out_dir, "pareto.png"),
        f"TT vs dense DLRM: {settings['steps']} steps, Kaggle tables / "
        f"{settings['table_scale']:g}" + (f", {settings['folds']}-fold CV on "
                                         f"{settings['data']}" if settings["folds"] else ""),
        paired_over=kind)
    print(f"\n{os.path.join(out_dir, 'quality.json')}\n{png}")
    return rows


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    settings = study_settings()
    out_dir = settings["out_dir"]
    os.makedirs(out_dir, exist_ok=True)
    if not FLAGS.summary_only:
        run_study(settings, out_dir)
    summarize(settings, out_dir)


if __name__ == "__main__":
    app.run(main)
