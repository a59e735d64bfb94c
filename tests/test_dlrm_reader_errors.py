"""The Criteo reader on mangled files (examples/dlrm/line_checks.py, data.py, sources.py): a
malformed line is an error naming its file and its line in that file, or with
skip_bad_lines is dropped and counted; an empty --data, an empty file or too few lines for a
batch are errors naming the flags. No TFRS needed: runs under both Kerases."""

import os

import numpy as np
import pytest
import tensorflow as tf
from absl import app

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from examples.dlrm import data as D  # noqa: E402
from examples.dlrm import line_checks as L  # noqa: E402
from examples.dlrm import sources as S  # noqa: E402
from examples.dlrm import train as T  # noqa: E402
from examples.dlrm.config import Config, DataConfig  # noqa: E402

SIZES = D.scale_table_sizes(D.KAGGLE_TABLE_SIZES, 1000)


def good_lines(n, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        ints = [str(v) if rng.random() > 0.2 else "" for v in rng.integers(-2, 3000, 13)]
        hexes = [f"{v:08x}" if rng.random() > 0.1 else "" for v in rng.integers(0, 2**32, 26)]
        out.append("\t".join([str(int(rng.random() < 0.25))] + ints + hexes))
    return out


def _field(line, index, value):
    fields = line.split("\t")
    fields[index] = value
    return "\t".join(fields)


# (what to do to a good line, the error's reason)
BAD = {
    "39_fields": (lambda s: s.rsplit("\t", 1)[0], "expected 40 tab-separated fields, got 39"),
    "41_fields": (lambda s: s + "\t", "expected 40 tab-separated fields, got 41"),
    "empty_line": (lambda s: "", "expected 40 tab-separated fields, got 1"),
    "label_2": (lambda s: _field(s, 0, "2"), "the label must be 0 or 1, got `2`"),
    "label_-1": (lambda s: _field(s, 0, "-1"), "the label must be 0 or 1, got `-1`"),
    "label_empty": (lambda s: _field(s, 0, ""), "the label must be 0 or 1, got ``"),
    "count_float": (lambda s: _field(s, 5, "1.5"), "I5 must be an integer"),
    "count_word": (lambda s: _field(s, 13, "abc"), "I13 must be an integer"),
    "id_not_hex": (lambda s: _field(s, 14 + 6, "zzzzzzzz"),
                   "C7 must be an id of at most 8 hex digits or empty, got `zzzzzzzz`"),
    "id_too_long": (lambda s: _field(s, 39, "123456789"),
                    "C26 must be an id of at most 8 hex digits"),
}


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def _read_all(paths, **kwargs):
    ds = D.criteo_tsv_dataset(paths, SIZES, batch_size=16, split="all", **kwargs)
    return sum(int(label.shape[0]) for _, label in ds)


def test_good_lines_all_read(tmp_path):
    lines = good_lines(50)
    assert all(tf.strings.regex_full_match(lines, L.LINE_PATTERN).numpy())
    assert _read_all([_write(tmp_path / "a.txt", lines)]) == 50


@pytest.mark.parametrize("kind", sorted(BAD))
def test_a_bad_line_names_its_file_and_line(tmp_path, kind):
    mangle, reason = BAD[kind]
    first = _write(tmp_path / "first.txt", good_lines(30, seed=1))
    lines = good_lines(100, seed=2)
    lines[65] = mangle(lines[65])  # line 66 of the second file, line 96 of the stream
    second = _write(tmp_path / "second.txt", lines)
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        _read_all([first, second])
    message = str(info.value)
    assert f"{second} line 66: {reason}" in message, message
    assert "--skip_bad_lines" in message


def test_the_line_number_survives_the_split_and_shuffling(tmp_path):
    lines = good_lines(200, seed=3)
    lines[139] = BAD["label_2"][0](lines[139])  # line 140: index 139, held out with k=7
    path = _write(tmp_path / "a.txt", lines)
    for split in ("eval", "all"):
        ds = D.criteo_tsv_dataset(path, SIZES, 8, split=split, eval_every=7,
                                  shuffle_buffer=50)
        with pytest.raises(tf.errors.InvalidArgumentError, match=f"{path} line 140: the label"):
            list(ds)
    assert sum(int(y.shape[0]) for _, y in D.criteo_tsv_dataset(path, SIZES, 8,
                                                                 eval_every=7)) == 200 - 28


def test_skip_bad_lines_counts_and_reports(tmp_path, capfd):
    lines = good_lines(120, seed=4)
    bad_at = {}
    for i, kind in zip(range(3, 120, 9), sorted(BAD)):
        lines[i] = BAD[kind][0](lines[i])
        bad_at[i + 1] = BAD[kind][1]
    path = _write(tmp_path / "a.txt", lines)
    counter = L.BadLineCounter()
    assert _read_all([path], skip_bad_lines=True, bad_lines=counter) == 120 - len(bad_at)
    assert counter.count == len(bad_at)
    printed = capfd.readouterr().err
    for number, reason in bad_at.items():
        assert f"{path} line {number}: {reason}" in printed
    # Only the first MAX_REPORTED are printed one by one.
    lines = [BAD["label_2"][0](line) for line in good_lines(40, seed=5)]
    counter = L.BadLineCounter()
    assert _read_all([_write(tmp_path / "b.txt", lines + good_lines(3))], skip_bad_lines=True,
                     bad_lines=counter) == 3
    assert counter.count == 40
    assert capfd.readouterr().err.count("the label must be 0 or 1") == L.MAX_REPORTED


def test_the_source_skips_with_the_flag(tmp_path):
    lines = good_lines(300, seed=6)
    lines[10] = "garbage"
    path = _write(tmp_path / "a.txt", lines)
    data = DataConfig(data=path, batch_size=16, eval_batch_size=16)
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"{path} line 11: expected 40"):
        list(S.make_source(data, SIZES, seed=0).train().take(3))
    source = S.make_source(DataConfig(data=path, batch_size=16, eval_batch_size=16,
                                      skip_bad_lines=True), SIZES, seed=0)
    assert len(list(source.train().take(3))) == 3 and source.bad_lines.count == 1


# ---------------------------------------------------------------------------------------
# No data, or too little
# ---------------------------------------------------------------------------------------

def test_empty_data_flag():
    for value in ("", "  "):
        with pytest.raises(ValueError, match="--data is empty"):
            DataConfig(data=value)
    with pytest.raises(ValueError, match="--data is empty"):
        Config.from_options({"data": ""})


def test_an_empty_file_or_too_few_lines(tmp_path):
    empty = _write(tmp_path / "empty.txt", [])
    with pytest.raises(ValueError, match=f"--data='{empty}' holds 0 lines"):
        S.make_source(DataConfig(data=empty), SIZES, seed=0)
    few = _write(tmp_path / "few.txt", good_lines(9))
    with pytest.raises(ValueError, match=r"holds 9 lines \(9 for training, 0 held out\): one "
                                         r"training batch of --batch_size=128 and one held-out "
                                         r"line \(every --eval_every=10-th\) need at least 142"):
        S.make_source(DataConfig(data=few), SIZES, seed=0)
    # Exactly enough: 142 lines give 128 training lines and 14 held out.
    enough = _write(tmp_path / "enough.txt", good_lines(142))
    source = S.make_source(DataConfig(data=enough), SIZES, seed=0)
    assert int(next(iter(source.train()))[1].shape[0]) == 128
    just_short = _write(tmp_path / "short.txt", good_lines(141))
    with pytest.raises(ValueError, match="holds 141 lines"):
        S.make_source(DataConfig(data=just_short), SIZES, seed=0)
    # Spread over two files, they count together.
    a = _write(tmp_path / "a.txt", good_lines(100))
    b = _write(tmp_path / "b.txt", good_lines(42))
    S.make_source(DataConfig(data=f"{a},{b}"), SIZES, seed=0)


def test_the_trainer_reports_them_as_usage_errors(tmp_path):
    empty = _write(tmp_path / "empty.txt", [])
    config = Config.from_options({"data": empty, "model": "dense", "out_dir": ""})
    with pytest.raises(app.UsageError, match="holds 0 lines"):
        T.train(config)
