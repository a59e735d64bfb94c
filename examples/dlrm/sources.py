"""The trainer's data sources: a training stream and a held-out set, the same for every model.

`make_source` picks the synthetic Criteo-like stream or Criteo train.txt-format files from
the data section of the config; the readers themselves are in examples/dlrm/data.py. Both
sources' training streams are endless and start at a given batch, which is how a resumed run
continues with the batches it has not seen.
"""

import math
from typing import Optional, Sequence

import tensorflow as tf

from examples.dlrm import data as dlrm_data
from examples.dlrm import line_checks
from examples.dlrm.config import DataConfig


def num_batches(examples: int, batch_size: int) -> int:
    """Batches that hold `examples` examples (at least one)."""
    return max(1, math.ceil(examples / batch_size))


class SyntheticSource:
    """`SyntheticCriteo`: a deterministic stream per seed; held out: its "eval" stream."""

    def __init__(self, data: DataConfig, table_sizes: Sequence[int], seed: int):
        self.data = data
        self.stream = dlrm_data.SyntheticCriteo(
            tuple(table_sizes), seed=seed, zipf_a=data.zipf_a, teacher=data.teacher,
            num_clusters=data.teacher_clusters, cluster_share=data.teacher_cluster_share,
            id_order=data.id_order)

    def describe(self) -> str:
        order = ", frequency-ordered ids" if self.stream.id_order == "frequency" else ""
        return (f"synthetic Criteo-like stream (seed {self.stream.seed}, "
                f"zipf a={self.stream.zipf_a}, {self.stream.teacher} teacher{order})")

    def train(self, start_step: int = 0, batch_size: Optional[int] = None,
              shard_index: int = 0, shard_count: int = 1) -> tf.data.Dataset:
        """The endless training stream, from batch `start_step` on; batch_size defaults
        to --batch_size; part shard_index of shard_count disjoint streams (a distributed
        worker's own)."""
        return self.stream.dataset(batch_size or self.data.batch_size, "train",
                                   start_batch=start_step, shard_index=shard_index,
                                   shard_count=shard_count)

    def held_out(self, examples: Optional[int] = None) -> tf.data.Dataset:
        """The first `examples` (default: eval_examples) held-out examples, rounded up to
        whole batches."""
        b = self.data.eval_batch_size
        n = num_batches(examples or self.data.eval_examples, b)
        return self.stream.dataset(b, "eval", num_batches=n)


class FileSource:
    """Criteo train.txt-format files; held out: every eval_every-th line (or fold eval_fold).

    Malformed lines are an error naming the file and line, or with --skip_bad_lines
    skipped and counted in `bad_lines` (examples/dlrm/line_checks.py)."""

    def __init__(self, data: DataConfig, table_sizes: Sequence[int], seed: int):
        self.data = data
        self.table_sizes = tuple(table_sizes)
        self.seed = seed
        self.paths = data.paths
        if not self.paths:
            raise ValueError(f"--data names no file: {data.data!r}")
        for p in self.paths:
            if not tf.io.gfile.exists(p):
                raise FileNotFoundError(f"--data file not found: {p}")
        check_enough_lines(data, self.paths)
        self.bad_lines = line_checks.BadLineCounter() if data.skip_bad_lines else None

    def describe(self) -> str:
        d = self.data
        held = (f"every {d.eval_every}-th line" if d.eval_fold < 0 else
                f"fold {d.eval_fold}: lines i with i % {d.eval_every} == {d.eval_fold}")
        return f"{', '.join(self.paths)} (held out: {held})"

    def train(self, start_step: int = 0, batch_size: Optional[int] = None,
              shard_index: int = 0, shard_count: int = 1) -> tf.data.Dataset:
        """The training lines, repeated endlessly, from batch `start_step` on; batch_size
        defaults to --batch_size; with shard_count > 1 only every shard_count-th line from
        line shard_index (a distributed worker's own)."""
        d = self.data
        return dlrm_data.criteo_tsv_dataset(
            self.paths, self.table_sizes, batch_size or d.batch_size, split="train",
            eval_every=d.eval_every, eval_fold=d.eval_fold, repeat=True, skip_batches=start_step,
            shuffle_buffer=d.shuffle_buffer, seed=self.seed, drop_remainder=True,
            skip_bad_lines=d.skip_bad_lines, bad_lines=self.bad_lines,
            shard_index=shard_index, shard_count=shard_count)

    def held_out(self, examples: Optional[int] = None) -> tf.data.Dataset:
        """The held-out split, whole or limited to `examples` (rounded up to batches)."""
        b = self.data.eval_batch_size
        ds = dlrm_data.criteo_tsv_dataset(self.paths, self.table_sizes, b, split="eval",
                                          eval_every=self.data.eval_every,
                                          eval_fold=self.data.eval_fold,
                                          skip_bad_lines=self.data.skip_bad_lines,
                                          bad_lines=self.bad_lines)
        return ds.take(num_batches(examples, b)) if examples else ds


def check_enough_lines(data: DataConfig, paths: Sequence[str]) -> None:
    """Raises ValueError naming --data unless its files hold one training batch and one
    held-out line. Reads only as many lines as that takes (the files may be huge)."""
    k, held, needed_train = data.eval_every, data.held_out_residue, data.batch_size
    lines = train = held_out = 0
    for path in paths:
        with tf.io.gfile.GFile(path, "r") as f:
            for _ in f:
                held_out += lines % k == held
                train += lines % k != held
                lines += 1
                if train >= needed_train and held_out:
                    return
    # Training line number T (from 1) is slot (T - 1) % (k - 1) of the k - 1 training slots
    # of block (T - 1) // (k - 1) of k lines; the first held-out line is line `held`.
    block, slot = divmod(needed_train - 1, k - 1)
    needed = max(block * k + slot + (slot >= held) + 1, held + 1)
    which = (f"every --eval_every={k}-th" if data.eval_fold < 0 else
             f"--eval_fold={data.eval_fold} of --eval_every={k}")
    raise ValueError(
        f"--data={data.data!r} holds {lines} lines ({train} for training, {held_out} held "
        f"out): one training batch of --batch_size={data.batch_size} and one held-out line "
        f"({which}) need at least {needed} lines")


def make_source(data: DataConfig, table_sizes: Sequence[int], seed: int):
    """The source --data names: SyntheticSource for 'synthetic', else FileSource."""
    source = SyntheticSource if data.synthetic else FileSource
    return source(data, table_sizes, seed)
