"""Requests for the DLRM exports' raw signature (examples/dlrm/export.py): one named input
per Criteo feature, "I1".."I13" float32 counts and "C1".."C26" hex-id strings, shape [B].

    feed = random_rows(64, seed=0)            # {"I1": float32 [64], ..., "C26": str [64]}
    feed = sample_rows(path, 16)              # the first 16 rows of a train.txt-format file
    {"instances": instances(feed)}            # TF Serving's REST row form
    {"inputs": columns(feed)}                 # and its columnar form
"""

from typing import Dict, List

import numpy as np
import tensorflow as tf

from examples.dlrm import data as dlrm_data


def random_rows(batch: int, seed: int) -> Dict[str, np.ndarray]:
    """Criteo-like raw rows: counts (some negative, a fifth 0) and 8-hex-digit ids (some "",
    i.e. missing)."""
    rng = np.random.default_rng(seed)
    feed = {}
    for name in dlrm_data.DENSE_FEATURES:
        counts = rng.integers(-3, 2000, size=batch).astype(np.float32)
        counts[rng.random(batch) < 0.2] = 0.0
        feed[name] = counts
    for name in dlrm_data.CAT_FEATURES:
        hexes = np.array([f"{x:08x}" for x in rng.integers(0, 2 ** 32, size=batch)])
        hexes[rng.random(batch) < 0.15] = ""
        feed[name] = hexes
    return feed


def sample_rows(path: str, count: int) -> Dict[str, np.ndarray]:
    """The first `count` rows of a train.txt-format file, as raw inputs (missing counts 0)."""
    with open(path) as f:
        lines = [line.rstrip("\n") for _, line in zip(range(count), f)]
    _, ints, hexes = dlrm_data.decode_raw_lines(tf.constant(lines))
    feed = {n: c.numpy().astype(np.float32) for n, c in zip(dlrm_data.DENSE_FEATURES, ints)}
    feed.update({n: c.numpy().astype(str) for n, c in zip(dlrm_data.CAT_FEATURES, hexes)})
    return feed


def _json_scalar(value):
    if isinstance(value, np.floating) and float(value).is_integer():
        return int(value)  # counts are sent as JSON integers, as in the README's example
    return value.item() if isinstance(value, np.generic) else value


def instances(feed: Dict[str, np.ndarray]) -> List[dict]:
    """A feed as TF Serving's row form: one object per example."""
    batch = len(next(iter(feed.values())))
    return [{name: _json_scalar(values[i]) for name, values in feed.items()}
            for i in range(batch)]


def columns(feed: Dict[str, np.ndarray]) -> Dict[str, list]:
    """A feed as TF Serving's columnar form: one list per input."""
    return {name: [_json_scalar(v) for v in values] for name, values in feed.items()}
