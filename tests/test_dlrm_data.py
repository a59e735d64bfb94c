"""examples/dlrm/data.py: the Criteo reader (checked against the real sample, parsed by hand
with the csv module) and the synthetic source. No TFRS needed: runs under both Kerases."""

import csv
import math
import os

import numpy as np
import pytest
import tensorflow as tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from examples.dlrm import data as D  # noqa: E402
from examples.dlrm import sources as S  # noqa: E402
from examples.dlrm.config import DataConfig  # noqa: E402
from examples.dlrm.sample import criteo_sample_path  # noqa: E402

SAMPLE = criteo_sample_path()
SMALL_SIZES = (7, 3, 1000, 500, 4, 2, 60, 13, 3, 250, 40, 2500, 30, 5, 70, 1200, 4, 45, 20,
               3, 1500, 6, 5, 200, 9, 150)


def _need_sample():
    if not os.path.exists(SAMPLE):
        pytest.skip(f"the Criteo sample is absent ({SAMPLE})")


def _rows_by_hand():
    with open(SAMPLE, newline="") as f:
        return list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def _expected(row, sizes):
    """DLRM preprocessing of one row, written out independently of data.py."""
    assert len(row) == 40
    label = float(row[0])
    dense = [math.log(max(int(x) if x else 0, 0) + 1) for x in row[1:14]]
    ids = [0 if not h else 1 + int(h, 16) % (n - 1) for h, n in zip(row[14:], sizes)]
    return label, np.array(dense, np.float32), ids


def _interesting_rows(rows):
    """Indices of rows that exercise the format: first rows, negative ints, missing ints,
    missing categoricals, the last row."""
    picks = {0, 1, 2, len(rows) - 1}
    wanted = {
        "negative": lambda r: any(x.startswith("-") for x in r[1:14]),
        "missing int": lambda r: any(x == "" for x in r[1:14]),
        "missing cat": lambda r: any(x == "" for x in r[14:]),
        "positive": lambda r: r[0] == "1",
    }
    for name, pred in wanted.items():
        hits = [i for i, r in enumerate(rows) if pred(r)]
        assert hits, f"the sample has no row with a {name} field"
        picks.update(hits[:2])
    return sorted(picks)


@pytest.mark.parametrize("sizes", [D.KAGGLE_TABLE_SIZES, SMALL_SIZES], ids=["kaggle", "small"])
def test_reader_parses_real_sample_exactly(sizes):
    _need_sample()
    rows = _rows_by_hand()
    assert len(rows) == 11609
    ds = D.criteo_tsv_dataset(SAMPLE, sizes, batch_size=4096, split="all")
    feats, labels = [], []
    for f, y in ds:
        feats.append({k: v.numpy() for k, v in f.items()})
        labels.append(y.numpy())
    got = {k: np.concatenate([f[k] for f in feats]) for k in feats[0]}
    labels = np.concatenate(labels)
    assert labels.shape == (11609,) and labels.dtype == np.float32
    assert int(labels.sum()) == 2903
    assert got["dense"].shape == (11609, 13) and got["dense"].dtype == np.float32
    for name in D.CAT_FEATURES:
        assert got[name].dtype == np.int64
        n = sizes[D.CAT_FEATURES.index(name)]
        assert got[name].min() >= 0 and got[name].max() < n
    for i in _interesting_rows(rows):
        label, dense, ids = _expected(rows[i], sizes)
        assert labels[i] == label, i
        np.testing.assert_allclose(got["dense"][i], dense, rtol=1e-6, atol=1e-7)
        assert [int(got[name][i]) for name in D.CAT_FEATURES] == ids, i


def test_reader_split_is_every_kth_line():
    _need_sample()
    rows = _rows_by_hand()
    k = 7
    seen = {}
    for split in ("train", "eval"):
        ds = D.criteo_tsv_dataset(SAMPLE, SMALL_SIZES, batch_size=2048, split=split,
                                  eval_every=k)
        seen[split] = np.concatenate([f["C3"].numpy() for f, _ in ds])
    expect = {s: [] for s in seen}
    for i, r in enumerate(rows):
        expect["eval" if i % k == k - 1 else "train"].append(_expected(r, SMALL_SIZES)[2][2])
    for split in seen:
        assert seen[split].tolist() == expect[split]


def test_reader_skip_batches_continues_the_stream():
    _need_sample()
    full = D.criteo_tsv_dataset(SAMPLE, SMALL_SIZES, batch_size=64, repeat=True)
    rest = D.criteo_tsv_dataset(SAMPLE, SMALL_SIZES, batch_size=64, repeat=True,
                                skip_batches=3)
    batches = list(full.take(5))
    nxt = next(iter(rest))
    for key in ("dense", "C1", "C26"):
        np.testing.assert_array_equal(batches[3][0][key].numpy(), nxt[0][key].numpy())


def test_parse_lines_handles_missing_negative_and_hex_case():
    line = "\t".join(["1", "-3", "", "5"] + ["0"] * 10 + ["FFFFFFFF", "", "0000000a"]
                     + ["68fd1e64"] * 23)
    feats, label = D.parse_lines(tf.constant([line]), SMALL_SIZES)
    assert label.numpy().tolist() == [1.0]
    np.testing.assert_allclose(feats["dense"].numpy()[0, :3], [0.0, 0.0, math.log(6)],
                               rtol=1e-6)
    assert feats["C1"].numpy()[0] == 1 + 0xFFFFFFFF % (SMALL_SIZES[0] - 1)
    assert feats["C2"].numpy()[0] == 0  # missing -> reserved id 0
    assert feats["C3"].numpy()[0] == 1 + 10 % (SMALL_SIZES[2] - 1)


def test_hex_to_int():
    got = D.hex_to_int(tf.constant(["", "0", "1f", "68fd1e64", "ffffffff", "ABCDEF01"]))
    assert got.numpy().tolist() == [0, 0, 31, 0x68FD1E64, 0xFFFFFFFF, 0xABCDEF01]


def test_scale_table_sizes():
    assert D.scale_table_sizes((10, 3, 1001), 10) == (2, 2, 101)
    assert D.scale_table_sizes(D.KAGGLE_TABLE_SIZES) == D.KAGGLE_TABLE_SIZES
    assert max(D.scale_table_sizes(D.TERABYTE_TABLE_SIZES, 1, max_size=1000)) == 1000
    assert sum(D.KAGGLE_TABLE_SIZES) == 33762577


def test_synthetic_is_deterministic_and_in_range():
    src = D.SyntheticCriteo(SMALL_SIZES, seed=3)
    again = D.SyntheticCriteo(SMALL_SIZES, seed=3)
    other = D.SyntheticCriteo(SMALL_SIZES, seed=4)
    a = list(src.dataset(256).take(3))
    b = list(again.dataset(256).take(3))
    c = next(iter(other.dataset(256)))
    for (fa, la), (fb, lb) in zip(a, b):
        for key in fa:
            np.testing.assert_array_equal(fa[key].numpy(), fb[key].numpy())
        np.testing.assert_array_equal(la.numpy(), lb.numpy())
    assert not np.array_equal(a[0][0]["C3"].numpy(), c[0]["C3"].numpy())
    f, y = a[0]
    assert f["dense"].shape == (256, 13) and f["dense"].dtype == tf.float32
    assert y.dtype == tf.float32 and set(np.unique(y.numpy())) <= {0.0, 1.0}
    for name, n in zip(D.CAT_FEATURES, SMALL_SIZES):
        ids = f[name].numpy()
        assert f[name].dtype == tf.int64 and f[name].shape == (256,)
        assert ids.min() >= 0 and ids.max() < n
    # Continuation: batch 2 of the stream equals the first batch started at 2.
    cont = next(iter(src.dataset(256, start_batch=2)))
    np.testing.assert_array_equal(cont[0]["C12"].numpy(), a[2][0]["C12"].numpy())
    # The held-out stream is a different draw.
    held = next(iter(src.dataset(256, split="eval")))
    assert not np.array_equal(held[0]["C12"].numpy(), a[0][0]["C12"].numpy())


def test_synthetic_ids_are_skewed_and_labels_near_target_rate():
    sizes = D.scale_table_sizes(D.KAGGLE_TABLE_SIZES, 100)
    src = D.SyntheticCriteo(sizes, seed=0)
    ids, labels = [], []
    for f, y in src.dataset(1024).take(4):
        ids.append(f["C3"].numpy())
        labels.append(y.numpy())
    ids = np.concatenate(ids)
    _, counts = np.unique(ids, return_counts=True)
    assert counts.max() > 50  # a hot id: power law, not uniform over 101k rows
    assert 0.2 < len(counts) / len(ids) < 0.9
    assert 0.2 < np.mean(np.concatenate(labels)) < 0.3


# ---------------------------------------------------------------------------------------
# The trainer's sources (examples/dlrm/sources.py)
# ---------------------------------------------------------------------------------------

def _same_batch(a, b):
    for key in ("dense", "C1", "C26"):
        np.testing.assert_array_equal(a[0][key].numpy(), b[0][key].numpy())
    np.testing.assert_array_equal(a[1].numpy(), b[1].numpy())


def test_synthetic_source():
    data = DataConfig(batch_size=16, eval_batch_size=32, eval_examples=100, zipf_a=1.2)
    source = S.make_source(data, SMALL_SIZES, seed=3)
    assert isinstance(source, S.SyntheticSource)
    stream = D.SyntheticCriteo(SMALL_SIZES, seed=3, zipf_a=1.2)
    _same_batch(next(iter(source.train(start_step=2))), stream.batch(2, 16, stream=0))
    held = list(source.held_out())
    assert len(held) == 4 and all(y.shape == (32,) for _, y in held)  # 100 -> 4 batches
    _same_batch(held[1], stream.batch(1, 32, stream=1))
    assert len(list(source.held_out(33))) == 2


def test_file_source():
    _need_sample()
    data = DataConfig(data="criteo_sample", batch_size=64, eval_batch_size=256, eval_every=7)
    source = S.make_source(data, SMALL_SIZES, seed=0)
    assert isinstance(source, S.FileSource) and source.paths == [SAMPLE]
    train = D.criteo_tsv_dataset(SAMPLE, SMALL_SIZES, 64, split="train", eval_every=7,
                                 repeat=True, drop_remainder=True)
    _same_batch(next(iter(source.train(start_step=5))), list(train.take(6))[5])
    held = list(source.held_out())
    assert sum(int(y.shape[0]) for _, y in held) == 11609 // 7  # lines 6, 13, ...
    assert len(list(source.held_out(300))) == 2


def test_file_source_names_a_missing_file(tmp_path):
    missing = str(tmp_path / "nope.tsv")
    with pytest.raises(FileNotFoundError, match="nope.tsv"):
        S.make_source(DataConfig(data=missing), SMALL_SIZES, seed=0)
    with pytest.raises(ValueError, match="--data names no file"):
        S.make_source(DataConfig(data=","), SMALL_SIZES, seed=0)


def test_clustered_teacher_shares_effects_within_a_cluster():
    sizes = D.scale_table_sizes(D.KAGGLE_TABLE_SIZES, 1000)
    clustered = D.SyntheticCriteo(sizes, seed=3, teacher="clustered", num_clusters=4,
                                  cluster_share=0.75)
    independent = D.SyntheticCriteo(sizes, seed=3)
    ids = tf.constant(np.arange(4000, dtype=np.int64).reshape(-1, 1) * np.ones((1, 26),
                                                                              np.int64))
    ids = tf.math.floormod(ids, tf.constant(sizes, tf.int64))
    salts = tf.constant(clustered._salts)  # pylint: disable=protected-access
    c = clustered._effects(ids, salts).numpy()[:, 2]  # pylint: disable=protected-access
    i = independent._effects(ids, salts).numpy()[:, 2]  # pylint: disable=protected-access
    # Unit variance either way; with 4 clusters and share 0.75, two ids' effects correlate
    # by 0.75 when they share a cluster and 0 otherwise: about 0.75 / 4 over random pairs.
    assert np.var(c) == pytest.approx(1.0, abs=0.1) and np.var(i) == pytest.approx(1.0, abs=0.1)
    pairs = np.corrcoef(c[:2000], c[2000:])[0, 1], np.corrcoef(i[:2000], i[2000:])[0, 1]
    same = np.mean(np.abs(np.subtract.outer(c[:200], c[:200])) < 1e-6)
    assert abs(pairs[1]) < 0.1
    grouped = np.round(c - np.sqrt(0.25) * i, 5)  # the cluster's part of each effect
    assert len(np.unique(grouped)) == 4
    assert same < 0.05  # the residuals keep the ids apart
    with pytest.raises(ValueError, match="teacher must be one of"):
        D.SyntheticCriteo(sizes, teacher="nope")


def test_frequency_ordered_ids_rename_the_hashed_ones():
    """id_order="frequency" gives the model each id's frequency rank: the same batch, labels
    and dense features, and ids that the stream's permutation maps to the hashed ones."""
    sizes = D.scale_table_sizes(D.KAGGLE_TABLE_SIZES, 1000)
    hashed = D.SyntheticCriteo(sizes, seed=4)
    ranked = D.SyntheticCriteo(sizes, seed=4, id_order="frequency")
    counts = np.zeros(sizes[2], np.int64)
    for i in range(4):
        (fh, yh), (fr, yr) = hashed.batch(i, 512), ranked.batch(i, 512)
        np.testing.assert_array_equal(yh.numpy(), yr.numpy())
        np.testing.assert_array_equal(fh["dense"].numpy(), fr["dense"].numpy())
        for k, name in enumerate(D.CAT_FEATURES):
            rank = fr[name].numpy()
            assert rank.min() >= 0 and rank.max() < sizes[k]
            # pylint: disable-next=protected-access
            renamed = (rank * ranked._primes[k] + ranked._offsets[k]) % sizes[k]
            np.testing.assert_array_equal(renamed, fh[name].numpy())
        counts += np.bincount(fr["C3"].numpy(), minlength=sizes[2])
    # Id k is the k-th most frequent: counts fall with the id (up to sampling noise).
    assert counts[0] == counts.max() and counts[:10].sum() > 10 * counts[10:100].mean()
    assert np.argmax(counts) == 0 and counts[:50].sum() > counts[-50:].sum()
    with pytest.raises(ValueError, match="id_order must be one of"):
        D.SyntheticCriteo(sizes, id_order="sorted")


def test_frequency_order_is_the_synthetic_streams_option():
    source = S.make_source(DataConfig(id_order="frequency"), SMALL_SIZES, seed=0)
    assert "frequency-ordered ids" in source.describe()
    with pytest.raises(ValueError, match="--id_order=frequency numbers the synthetic"):
        DataConfig(data="criteo_sample", id_order="frequency")
