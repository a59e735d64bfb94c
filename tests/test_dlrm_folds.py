"""--eval_fold (examples/dlrm/config.py, data.py, sources.py): fold j of eval_every = k holds
out the lines i with i % k == j, so folds 0..k-1 partition a file's lines for
cross-validation; the default (-1) is every k-th line, as before. Checked on a small TSV
whose lines carry their own index, against the lines as written. No TFRS needed."""

import os

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from examples.dlrm import config as C  # noqa: E402
from examples.dlrm import data as D  # noqa: E402
from examples.dlrm import sources as S  # noqa: E402
from examples.dlrm.config import DataConfig  # noqa: E402

# Tables of 1,000 rows: C1's id of line i (C1 = hex(i)) is 1 + i, with no collision.
SIZES = (1000,) * D.NUM_SPARSE
LINES = 23  # not a multiple of any k below: the last block is partial


@pytest.fixture(name="tsv")
def _tsv(tmp_path):
    """(path, [(label, C1 id, I1)] of line i): random labels and counts, C1 = the index."""
    rng = np.random.default_rng(0)
    lines, expected = [], []
    for i in range(LINES):
        label, count = int(rng.random() < 0.4), int(rng.integers(0, 1000))
        hexes = [f"{i:08x}"] + [f"{int(v):08x}" for v in rng.integers(0, 2**32, 25)]
        lines.append("\t".join([str(label), str(count)] + ["0"] * 12 + hexes))
        expected.append((float(label), 1 + i, np.float32(np.log1p(count))))
    path = tmp_path / "rows.tsv"
    path.write_text("".join(line + "\n" for line in lines))
    return str(path), expected


def _lines_of(batches):
    """[(label, C1 id, I1)] of every example of the batches, in order."""
    out = []
    for features, label in batches:
        out += zip(label.numpy().tolist(), features["C1"].numpy().tolist(),
                   features["dense"].numpy()[:, 0].tolist())
    return out


def _expect(expected, indices):
    return [(y, c, pytest.approx(float(x), rel=1e-6)) for y, c, x in
            (expected[i] for i in indices)]


def test_folds_partition_the_lines(tsv):
    path, expected = tsv
    k, held_out_anywhere = 3, []
    for j in range(k):
        mine = [i for i in range(LINES) if i % k == j]
        others = [i for i in range(LINES) if i % k != j]
        # Fold j holds out its lines, and trains on exactly the others (one training batch
        # is one pass over them, in order, as nothing is shuffled).
        data = DataConfig(data=path, batch_size=len(others), eval_batch_size=8, eval_every=k,
                          eval_fold=j)
        source = S.make_source(data, SIZES, seed=0)
        held = _lines_of(source.held_out())
        assert held == _expect(expected, mine)
        assert _lines_of(source.train().take(1)) == _expect(expected, others)
        assert f"fold {j}: lines i with i % {k} == {j}" in source.describe()
        held_out_anywhere += [c - 1 for _, c, _ in held]
    assert sorted(held_out_anywhere) == list(range(LINES))  # each line once, over the folds


def test_the_default_is_every_kth_line(tsv):
    path, expected = tsv
    source = S.make_source(DataConfig(data=path, batch_size=4), SIZES, seed=0)
    assert DataConfig().eval_fold == -1
    assert _lines_of(source.held_out()) == _expect(expected, [9, 19])
    assert "every 10-th line" in source.describe()
    ds = D.criteo_tsv_dataset(path, SIZES, 8, split="eval", eval_every=5)  # no eval_fold
    assert _lines_of(ds) == _expect(expected, [4, 9, 14, 19])


def test_bad_folds_are_named(tmp_path):
    path = str(tmp_path / "rows.tsv")
    with pytest.raises(ValueError, match=r"--eval_fold=5 must be in \[0, 5\) for "
                                         r"--eval_every=5 \(or -1\)"):
        DataConfig(data=path, eval_every=5, eval_fold=5)
    with pytest.raises(ValueError, match="eval_fold must be >= -1, got -2"):
        DataConfig(data=path, eval_fold=-2)
    with pytest.raises(ValueError, match="--eval_fold=0 picks held-out lines of files; "
                                         "--data=synthetic"):
        DataConfig(eval_fold=0)
    with pytest.raises(ValueError, match=r"--eval_fold=10 must be in \[0, 10\)"):
        C.Config.from_options({"data": path, "eval_fold": 10})
    with pytest.raises(ValueError, match=r"eval_fold must be in \[0, 5\) or -1, got 5"):
        D.criteo_tsv_dataset(path, SIZES, 4, split="eval", eval_every=5, eval_fold=5)
    assert DataConfig(data=path, eval_every=5, eval_fold=4).held_out_residue == 4
    assert DataConfig(data=path, eval_every=5).held_out_residue == 4


@pytest.mark.parametrize("fold", [0, 2, 4, -1])
def test_too_few_lines_for_a_fold(tmp_path, tsv, fold):
    """The shortest file that holds one training batch and one line of the fold, counted
    by brute force, is what the error asks for; one line less is refused."""
    k, batch = 5, 6
    residue = k - 1 if fold < 0 else fold

    def enough(m):
        held = sum(i % k == residue for i in range(m))
        return held >= 1 and m - held >= batch

    needed = next(m for m in range(1, 100) if enough(m))
    with open(tsv[0]) as f:
        src = f.read().splitlines()
    for m, ok in ((needed, True), (needed - 1, False)):
        path = tmp_path / f"rows{m}.tsv"
        path.write_text("".join(line + "\n" for line in src[:m]))
        data = DataConfig(data=str(path), batch_size=batch, eval_every=k, eval_fold=fold)
        if ok:
            S.make_source(data, SIZES, seed=0)
        else:
            which = "every --eval_every=5-th" if fold < 0 else f"--eval_fold={fold} of"
            with pytest.raises(ValueError, match=f"{which}.* need at least {needed} lines"):
                S.make_source(data, SIZES, seed=0)
