"""The DLRM trainer's configuration: dataclasses whose option fields are its absl flags.

    Config
      data     DataConfig      where examples come from, batching, the held-out split
      tables   TablesConfig    the table sizes and D (DLRM's Kaggle / Terabyte ones, scaled)
      model    DLRMConfig      the DLRM's shape: MLPs, which tables are TT, rank, cache, ...
      training TrainingConfig  steps, optimizer, seed
      output   OutputConfig    checkpoints, TensorBoard, exports, results
      run      RunConfig       what to do: which models, the initializer ablation, sizes only

An option is a field declared once with `option(default, help)`: `define_flags` defines one
flag per option (named as the field, typed from its annotation: bool, int, float, str, a
str with `choices` as an enum, a tuple as a comma-separated list), and `config_from_flags`
builds the Config back. Option names are unique across sections, so a Config is also a flat
{option: value} mapping (`Config.options`, `Config.override`). Adding an option is adding
one field. Fields declared without `option` (the model's table sizes and D, its dense
initializer) are not flags: `Config.dlrm_config()` fills the first two from `tables`.
"""

import dataclasses
import typing
from typing import Any, Dict, List, Tuple

from absl import flags

import tt_keras
from tt_keras import export as tt_export

from examples.dlrm import data as dlrm_data
from examples.dlrm import distribution, sample
from examples.dlrm import export as dlrm_export

INIT_ABLATION = ("sampled_gaussian", "tt_uniform", "tt_naive_uniform", "tt_approx_normal")
OPTIMIZERS = ("sgd", "adagrad", "adam")
CRITEO_SAMPLE = "criteo_sample"  # --data keyword for sample.criteo_sample_path()
# The TT configuration the quality study picks at Kaggle sizes (docs/quality.md): the 10
# largest tables in TT at rank 8, and hot-row caches from one budget that keeps all embedding
# memory 100x smaller than dense, split by traffic. The caches are filled at the first step
# with the hottest ids of the budget's sample (no warm-up): a cache filled after a 1,000-step
# warm-up trails dense by 0.0015 AUC, because its rows miss the steps in which dense rows
# learn most, not for want of rows (twice the budget did not help). `make demo` trains it
# beside dense.
RECOMMENDED_TT = {"tt_tables": 10, "tt_rank": 8, "cache_compression": 100.0,
                  "cache_counter_multiple": 1, "cache_warmup_steps": 0, "cache_prefill": True,
                  "cache_plan_batches": 2000, "cache_plan_min_count": 1}


def option(default, help_text: str, choices=None, minimum=None):
    """A config field that is also a command-line flag.

    Args:
      default: the default, written here only.
      help_text: the flag's help.
      choices: allowed values (the flag is then an enum).
      minimum: the smallest allowed value (numbers; each element of a tuple).
    """
    metadata = {"help": help_text, "choices": choices, "minimum": minimum}
    return dataclasses.field(default=default, metadata=metadata)


def option_fields(section) -> List[dataclasses.Field]:
    """The fields of a config section (class or instance) that are options."""
    return [f for f in dataclasses.fields(section) if "help" in f.metadata]


class _Options:
    """Checks every option of a section against its choices and minimum."""

    def __post_init__(self):
        for field in option_fields(self):
            value, meta = getattr(self, field.name), field.metadata
            if meta["choices"] is not None and value not in meta["choices"]:
                raise ValueError(f"{field.name} must be one of {tuple(meta['choices'])}, "
                                 f"got {value!r}")
            values = value if isinstance(value, tuple) else (value,)
            if meta["minimum"] is not None and any(v < meta["minimum"] for v in values):
                raise ValueError(f"{field.name} must be >= {meta['minimum']}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class DataConfig(_Options):
    """Where the examples come from, how they are batched and which are held out."""

    data: str = option("synthetic", "'synthetic'; 'criteo_sample' (the real Criteo sample: "
                       f"${sample.ENV_VAR}, default {sample.DEFAULT_PATH} from the repository "
                       "root); or Criteo train.txt-format file(s), comma-separated.")
    batch_size: int = option(128, "Training batch size.", minimum=1)
    eval_examples: int = option(50000, "Held-out examples for the final evaluation (synthetic "
                                "stream; a file's held-out split is used whole).", minimum=1)
    periodic_eval_examples: int = option(
        8192, "Held-out examples for the evaluation at the end of each epoch.", minimum=1)
    eval_batch_size: int = option(1024, "Evaluation batch size.", minimum=1)
    eval_every: int = option(10, "Files: every eval_every-th line is held out.", minimum=2)
    eval_fold: int = option(
        -1, "Files: hold out the lines i with i % eval_every == eval_fold instead (0 <= "
        "eval_fold < eval_every), so that folds 0..eval_every-1 partition the lines for "
        "cross-validation; -1: eval_every - 1, every eval_every-th line.", minimum=-1)
    shuffle_buffer: int = option(0, "Files: shuffle lines with this buffer (0: off).",
                                 minimum=0)
    skip_bad_lines: bool = option(
        False, "Files: skip malformed lines (a field count other than 40, a label other than "
        "0/1, a non-integer count, an id that is not at most 8 hex digits), print the first "
        "10 and report how many; without it a malformed line is an error naming its file and "
        "line.")
    zipf_a: float = option(1.05, "Synthetic ids: power-law exponent.")
    teacher: str = option(
        "independent", "Synthetic labels: 'independent' effects per id (the hard case), or "
        "'clustered' (each id's effect is its latent cluster's plus its own residual; "
        "see examples/dlrm/data.py).", choices=dlrm_data.TEACHERS)
    id_order: str = option(
        "hashed", "Synthetic ids: 'hashed' (hot ids spread over the table, as hashing "
        "spreads them) or 'frequency' (id k the k-th most frequent, as a vocabulary sorted by "
        "frequency numbers them; the same labels).", choices=dlrm_data.ID_ORDERS)
    teacher_clusters: int = option(1000, "Clustered teacher: latent clusters per table.",
                                   minimum=1)
    teacher_cluster_share: float = option(
        0.75, "Clustered teacher: the share of an id's effect variance that is its cluster's.",
        minimum=0.0)

    def __post_init__(self):
        super().__post_init__()
        if not self.data.strip():
            raise ValueError(f"--data is empty ({self.data!r}): give 'synthetic', "
                             f"'{CRITEO_SAMPLE}' or Criteo train.txt-format file(s)")
        if self.eval_fold >= self.eval_every:
            raise ValueError(f"--eval_fold={self.eval_fold} must be in [0, {self.eval_every}) "
                             f"for --eval_every={self.eval_every} (or -1)")
        if self.id_order != "hashed" and not self.synthetic:
            raise ValueError(f"--id_order={self.id_order} numbers the synthetic stream's ids; "
                             f"--data={self.data} gives the ids its reader hashes")
        # Silently ignoring it would let a cross-validation over the synthetic stream
        # evaluate every "fold" on the same held-out stream.
        if self.eval_fold >= 0 and self.synthetic:
            raise ValueError(f"--eval_fold={self.eval_fold} picks held-out lines of files; "
                             "--data=synthetic holds out a stream of its own")

    @property
    def synthetic(self) -> bool:
        return self.data == "synthetic"

    @property
    def held_out_residue(self) -> int:
        """Files: line i is held out where i % eval_every equals this."""
        return self.eval_fold if self.eval_fold >= 0 else self.eval_every - 1

    @property
    def paths(self) -> List[str]:
        """The files of --data (the Criteo sample for 'criteo_sample')."""
        if self.data == CRITEO_SAMPLE:
            return [sample.criteo_sample_path()]
        return [p for p in self.data.split(",") if p]


@dataclasses.dataclass(frozen=True)
class TablesConfig(_Options):
    """The 26 table sizes and the embedding dimension D."""

    synthetic_sizes: str = option(
        "kaggle", "Table sizes: DLRM's Kaggle or Terabyte ones (for the synthetic source, and "
        "the hashing moduli of a file's categorical features).",
        choices=tuple(dlrm_data.TABLE_SIZES))
    table_scale: float = option(1.0, "Divide every table size by this (rounded up).")
    max_table_size: int = option(0, "Cap every table at this many rows (0: no cap).", minimum=0)
    embedding_dim: int = option(0, "D; 0: 16 for kaggle sizes, 64 for terabyte.", minimum=0)

    def table_sizes(self) -> Tuple[int, ...]:
        return dlrm_data.scale_table_sizes(dlrm_data.TABLE_SIZES[self.synthetic_sizes],
                                           self.table_scale, self.max_table_size)

    def dim(self) -> int:
        return self.embedding_dim or dlrm_data.DEFAULT_EMBEDDING_DIM[self.synthetic_sizes]


@dataclasses.dataclass(frozen=True)
class DLRMConfig(_Options):
    """Everything that defines a DLRM's shape (not its training).

    Attributes:
      table_sizes: 26 table sizes, in C1..C26 order.
      embedding_dim: D.
      bottom_mlp: hidden widths of the bottom MLP; a last layer of width D is appended.
      top_mlp: hidden widths of the top MLP; a last layer of width 1 (sigmoid) is appended.
      tt_tables: how many of the largest tables are TT-compressed (0: a dense DLRM).
      tt_rank, tt_cores, tt_initializer, lookup_backend: passed to every tt_keras.TTEmbedding
        (tt_cores as num_cores).
      cache_size, cache_warmup_steps, cache_refresh_steps: the TT tables' hot-row cache
        (rows per table; 0: none), passed to TTEmbedding when cache_size > 0.
      cache_budget_mb, cache_coverage, cache_plan_batches, cache_plan_min_count: instead of
        one cache_size for every table, one budget for all their caches, split by the id
        counts of the first cache_plan_batches training batches (tt_keras.cache_budget);
        the trainer fills in cache_sizes, one per TT table in tt_features order.
      cache_counter_multiple: each cache's heavy-hitter counter has this many entries per
        cached row (TTEmbedding's cache_counter_size).
      cache_fold_sweeps: TTEmbedding's cache_fold_sweeps.
      cache_prefill: seed the counters with the plan sample's counts (HotRowCache.seed_counter).
      tt_init_scale: the TT tables' sampled-Gaussian initializer matches this times the
        standard deviation of DLRM's dense rows.
      dense_initializer: the keras Embedding initializer of the uncompressed tables; "dlrm"
        (default) is DLRM's U(-1/sqrt(N), 1/sqrt(N)) for a table of N rows, the variance
        TTEmbedding's default "sampled_gaussian" matches, so dense and TT start alike.
    """

    table_sizes: Tuple[int, ...] = dlrm_data.KAGGLE_TABLE_SIZES
    embedding_dim: int = 16
    bottom_mlp: Tuple[int, ...] = option(
        (512, 256, 64), "Bottom MLP hidden widths (a last layer of width D is appended).",
        minimum=1)
    top_mlp: Tuple[int, ...] = option(
        (512, 256), "Top MLP hidden widths (a last layer of width 1 is appended).", minimum=1)
    tt_tables: int = option(3, "TT-compress this many of the largest tables.", minimum=0)
    tt_rank: int = option(16, "TT rank of the TT tables.", minimum=1)
    tt_cores: int = option(3, "Number of TT cores (2..4).")
    cache_size: int = option(0, "Hot-row cache rows per TT table (0: no cache).", minimum=0)
    cache_warmup_steps: int = option(
        100, "Training steps that only count id frequencies before the cache fills.",
        minimum=0)
    cache_refresh_steps: int = option(
        0, "Refill the cache with the current hot ids every this many steps (0: never).",
        minimum=0)
    cache_budget_mb: float = option(
        0.0, "One budget (MB, 10^6 bytes) for all TT tables' caches, split by the id counts "
        "of a sample of the training data (0: --cache_size per table).", minimum=0.0)
    cache_compression: float = option(
        0.0, "Instead of --cache_budget_mb: the budget that leaves all embedding memory (dense "
        "tables, TT cores, caches with their counters) this many times smaller than the dense "
        "model's tables, split the same way (0: off).", minimum=0.0)
    cache_coverage: float = option(
        0.0, "Alternatively (or also), cache the ids that serve this fraction of the sample's "
        "lookups, over all TT tables (0: no coverage target).", minimum=0.0)
    cache_plan_batches: int = option(
        1000, "Training batches counted to split --cache_budget_mb / --cache_coverage.",
        minimum=1)
    cache_plan_min_count: int = option(
        2, "Ids seen fewer times in that sample are not worth a cache row.", minimum=1)
    cache_counter_multiple: int = option(
        4, "Heavy-hitter counter entries per cached row.", minimum=1)
    cache_fold_sweeps: int = option(
        1, "At a refresh, fold the rows leaving the cache back into the cores with this many "
        "sweeps (0: they revert to the TT product).", minimum=0)
    cache_prefill: bool = option(
        False, "Seed each cache's counter with the id counts of the budget's sample, so "
        "that the fill ranks the sample's hottest ids first (with --cache_warmup_steps=0 the "
        "cache fills at the first step). Needs --cache_budget_mb or --cache_coverage.")
    tt_initializer: str = option("sampled_gaussian", "TTEmbedding initializer.")
    tt_init_scale: float = option(
        1.0, "With the sampled_gaussian initializer: the TT rows' standard deviation as a "
        "multiple of DLRM's dense rows' (1/sqrt(3 N)).", minimum=0.0)
    lookup_backend: str = option("auto", "TTEmbedding lookup backend for training.",
                                 choices=tt_keras.BACKENDS)
    dense_initializer: str = "dlrm"
    cache_sizes: Tuple[int, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "table_sizes", tuple(int(n) for n in self.table_sizes))
        object.__setattr__(self, "bottom_mlp", tuple(int(n) for n in self.bottom_mlp))
        object.__setattr__(self, "top_mlp", tuple(int(n) for n in self.top_mlp))
        object.__setattr__(self, "cache_sizes", tuple(int(n) for n in self.cache_sizes))
        super().__post_init__()
        features = dlrm_data.CAT_FEATURES
        if len(self.table_sizes) != len(features):
            raise ValueError(f"need {len(features)} table sizes, got {len(self.table_sizes)}")
        if self.tt_tables > len(features):
            raise ValueError(f"tt_tables must be in [0, {len(features)}], got {self.tt_tables}")
        if self.cache_compression and self.cache_budget_mb:
            raise ValueError(f"give cache_budget_mb ({self.cache_budget_mb}) or "
                             f"cache_compression ({self.cache_compression}), not both")
        if 0 < self.cache_compression <= 1:
            raise ValueError("cache_compression is a compression ratio and must exceed 1, got "
                             f"{self.cache_compression}")
        if self.cache_size and self.plans_cache:
            raise ValueError(f"give cache_size ({self.cache_size}) or cache_budget_mb / "
                             "cache_coverage, not both")
        if self.cache_prefill and not self.plans_cache:
            raise ValueError("cache_prefill seeds the caches from the budget's sample: give "
                             "cache_budget_mb, cache_compression or cache_coverage")
        if self.cache_coverage > 1.0:
            raise ValueError(f"cache_coverage must be at most 1, got {self.cache_coverage}")
        if self.cache_sizes and len(self.cache_sizes) != self.tt_tables:
            raise ValueError(f"cache_sizes has {len(self.cache_sizes)} entries for "
                             f"{self.tt_tables} TT tables")

    @property
    def plans_cache(self) -> bool:
        """Whether the TT tables' cache sizes come from a budget split (cache_sizes)."""
        return bool(self.cache_budget_mb or self.cache_compression or self.cache_coverage)

    def table_cache_size(self, feature: str) -> int:
        """The cache rows of TT table `feature`: its share of a planned budget, or
        cache_size."""
        if self.cache_sizes:
            return self.cache_sizes[self.tt_features.index(feature)]
        return self.cache_size

    def replace(self, **changes) -> "DLRMConfig":
        return dataclasses.replace(self, **changes)

    @property
    def tt_features(self) -> Tuple[str, ...]:
        """The `tt_tables` largest tables' feature names (ties: the lower feature index)."""
        features = dlrm_data.CAT_FEATURES
        order = sorted(range(len(features)), key=lambda i: (-self.table_sizes[i], i))
        return tuple(features[i] for i in sorted(order[: self.tt_tables]))


@dataclasses.dataclass(frozen=True)
class TrainingConfig(_Options):
    """How long and how each model trains."""

    steps: int = option(1000, "Total training steps (a resumed run continues to it).",
                        minimum=0)
    steps_per_epoch: int = option(
        200, "Keras 'epoch' length: periodic held-out evaluation and checkpoint.", minimum=1)
    learning_rate: float = option(0.1, "Learning rate.")
    optimizer: str = option("sgd", "Optimizer.", choices=OPTIMIZERS)
    tt_optimizer: str = option(
        "", "A separate optimizer for the TT cores ('': --optimizer trains them too).",
        choices=("",) + OPTIMIZERS)
    tt_learning_rate: float = option(
        0.0, "The TT cores' learning rate, with a separate optimizer (0: --learning_rate).",
        minimum=0.0)
    seed: int = option(0, "Seed of the synthetic data, the shuffling and the models.")
    distribution: str = option(
        "none", "tf.distribute strategy: none; mirrored (this machine's devices); "
        "multi_worker (MultiWorkerMirroredStrategy over the cluster in TF_CONFIG; "
        "python -m examples.dlrm.launch --num_workers=N -- ... starts local workers); "
        "parameter_server (ParameterServerStrategy, dense model only: its large tables "
        "sharded over the ps tasks of TF_CONFIG; launch --num_workers=N --num_ps=M). "
        "--batch_size is the global batch; each worker reads its own part of the data.",
        choices=distribution.DISTRIBUTIONS)
    verbose: int = option(1, "Keras fit verbosity (1: progress bars, 2: one line/epoch).",
                          minimum=0)


@dataclasses.dataclass(frozen=True)
class OutputConfig(_Options):
    """What a run leaves behind."""

    model_dir: str = option("", "Checkpoints + TensorBoard (one subdir per model).")
    export_dir: str = option("", "Export a SavedModel per model here (subdir per model).")
    export_format: str = option("raw", "Serving signature inputs.",
                                choices=dlrm_export.INPUT_FORMATS)
    export_portable: bool = option(
        True, "Portable export (standard TF ops only); false keeps the custom ops.")
    export_max_batch_size: int = option(
        tt_export.DEFAULT_MAX_BATCH_SIZE, "The most rows one serving request may hold; the "
        "export's signature refuses larger ones (0: no bound).", minimum=0)
    out_dir: str = option("runs/dlrm", "Where the curves PNG and results JSON go.")


@dataclasses.dataclass(frozen=True)
class RunConfig(_Options):
    """What the trainer does."""

    model: str = option("both", "Which DLRM(s) to train.", choices=("dense", "tt", "both"))
    init_ablation: bool = option(
        False, "Train the TT model with each of: " + ", ".join(INIT_ABLATION) + ".")
    init_from: str = option(
        "", "Start the TT model from a trained dense DLRM: its checkpoint (prefix), "
        "checkpoints directory, run directory or --model_dir (its dense/ run). Each TT table "
        "gets the TT-SVD of the trained table, the rest is copied, then --steps fine-tune it "
        "(needs --model=tt and the dense run's table and MLP flags; "
        "examples/dlrm/init_from.py).")
    report_only: bool = option(
        False, "Print model sizes and compression ratios for the full Kaggle and Terabyte "
        "tables (3/5/7 TT tables x ranks 8/16/32/64; also <out_dir>/size_report.json) and "
        "exit.")


@dataclasses.dataclass(frozen=True)
class Config:
    """One trainer run: a section per concern (see the module doc)."""

    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    tables: TablesConfig = dataclasses.field(default_factory=TablesConfig)
    model: DLRMConfig = dataclasses.field(default_factory=DLRMConfig)
    training: TrainingConfig = dataclasses.field(default_factory=TrainingConfig)
    output: OutputConfig = dataclasses.field(default_factory=OutputConfig)
    run: RunConfig = dataclasses.field(default_factory=RunConfig)

    @classmethod
    def sections(cls) -> Dict[str, type]:
        """{section name: its dataclass}."""
        hints = typing.get_type_hints(cls)
        return {f.name: hints[f.name] for f in dataclasses.fields(cls)}

    @classmethod
    def from_options(cls, values: Dict[str, Any]) -> "Config":
        """A Config from {option: value}; options left out keep their defaults."""
        return cls().override(**values)

    def options(self) -> Dict[str, Any]:
        """{option: value} over all sections."""
        return {f.name: getattr(getattr(self, s), f.name)
                for s in self.sections() for f in option_fields(getattr(self, s))}

    def override(self, **changes) -> "Config":
        """A copy with options changed by name, e.g. override(steps=5, tt_rank=8)."""
        unknown = set(changes) - set(self.options())
        if unknown:
            raise ValueError(f"unknown options {sorted(unknown)}")
        replaced = {}
        for name in self.sections():
            section = getattr(self, name)
            mine = {f.name: changes[f.name] for f in option_fields(section) if f.name in changes}
            replaced[name] = dataclasses.replace(section, **mine) if mine else section
        return Config(**replaced)

    def dlrm_config(self) -> DLRMConfig:
        """The model section with the table sizes and D of the tables section."""
        return self.model.replace(table_sizes=self.tables.table_sizes(),
                                  embedding_dim=self.tables.dim())


# ---------------------------------------------------------------------------------------
# absl flags
# ---------------------------------------------------------------------------------------

_DEFINE = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer, float: flags.DEFINE_float,
           str: flags.DEFINE_string}


def _option_types() -> Dict[str, Tuple[dataclasses.Field, Any]]:
    """{option: (its field, its annotated type)} over all sections."""
    out = {}
    for section in Config.sections().values():
        hints = typing.get_type_hints(section)
        for field in option_fields(section):
            if field.name in out:
                raise TypeError(f"option {field.name!r} is declared in two sections")
            out[field.name] = (field, hints[field.name])
    return out


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines one absl flag per option, with the option's default and help."""
    for name, (field, kind) in _option_types().items():
        default, help_text = field.default, field.metadata["help"]
        if field.metadata["choices"] is not None:
            flags.DEFINE_enum(name, default, list(field.metadata["choices"]), help_text,
                              flag_values=flag_values)
        elif typing.get_origin(kind) is tuple:
            flags.DEFINE_list(name, [str(v) for v in default], help_text,
                              flag_values=flag_values)
        elif kind in _DEFINE:
            _DEFINE[kind](name, default, help_text, flag_values=flag_values)
        else:
            raise TypeError(f"option {name!r}: no flag type for {kind}")


def config_from_flags(flag_values: flags.FlagValues = flags.FLAGS) -> Config:
    """The Config of parsed flags (defined by `define_flags`)."""
    values = {}
    for name, (_, kind) in _option_types().items():
        value = flag_values[name].value
        if typing.get_origin(kind) is tuple:
            element = typing.get_args(kind)[0]
            try:
                value = tuple(element(v) for v in value)
            except ValueError as e:
                raise ValueError(f"--{name}: {value!r} is not a list of {element.__name__}") from e
        values[name] = value
    return Config.from_options(values)


def config_to_argv(config: Config) -> List[str]:
    """Command-line arguments that `config_from_flags` turns back into `config`."""
    argv = []
    for name, value in config.options().items():
        if isinstance(value, bool):
            argv.append(f"--{name}" if value else f"--no{name}")
        elif isinstance(value, tuple):
            argv.append(f"--{name}=" + ",".join(str(v) for v in value))
        else:
            argv.append(f"--{name}={value}")
    return argv
