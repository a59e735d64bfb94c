"""Criteo input pipelines for DLRM, as streaming tf.data datasets.

Two sources, one output format. Every dataset yields `(features, label)` batches with

    features = {"dense": float32 [B, 13], "C1": int64 [B], ..., "C26": int64 [B]}
    label    = float32 [B]

1. `criteo_tsv_dataset`: the Criteo Kaggle `train.txt` format (also Terabyte's day files):
   tab-separated, no header, 40 fields: label, I1..I13 integers (may be negative or empty),
   C1..C26 8-hex-digit ids (may be empty). Parsed with `tf.data.TextLineDataset` +
   `tf.io.decode_csv` on whole batches of lines (no Python per-row code), with DLRM's
   preprocessing:

   - integer features: missing -> 0, then x -> log(max(x, 0) + 1)   (`transform_dense`)
   - categorical features: the hex string is read as an unsigned 32-bit integer h
     (`hex_to_int`, pure TF ops: decode_raw of the zero-padded string) and hashed into the
     feature's table of N rows: **missing -> id 0 (reserved), else id = 1 + h mod (N - 1)**
     (`categorical_ids`). Id 0 is thus only ever "missing" and never collides with a real
     value. The Criteo hex values are themselves hashes (uniform), so the modulo is a fair
     hash; with N much smaller than the number of distinct values, values collide, as with
     any hashing trick (DLRM's own preprocessing instead builds a per-feature dictionary,
     which needs a full pass over the data).
   - held-out split: deterministic, by line number: every `eval_every`-th line (line index
     i with i % eval_every == eval_every - 1, counted over the concatenated files) is
     held out; "train" is all other lines. `eval_fold` j holds out the lines with
     i % eval_every == j instead: folds 0..eval_every-1 partition the lines
     (cross-validation).
   - malformed lines (a field count other than 40, a label other than 0/1, a count that is
     not an integer, an id that is not at most 8 hex digits): an error naming the file and
     the line number, or with `skip_bad_lines` dropped and counted
     (examples/dlrm/line_checks.py).

   The same `transform_dense` / `categorical_ids` functions run inside the exported serving
   graph (see `examples/dlrm/export.py`), so served requests are preprocessed identically.

2. `SyntheticCriteo`: a Criteo-like source for table sizes where no real data is at hand
   (DLRM's Kaggle or Terabyte table sizes, optionally scaled down and capped):

   - ids: per table, Zipf-like (bounded power law P(rank k) ~ k^-a, drawn by inverse CDF,
     fully vectorised in TF), then mapped through a fixed per-table permutation
     (id = (rank * P + c) mod N with P prime to N), so hot ids are spread over the table
     rather than all having small indices, as hashed ids are. With id_order="frequency"
     the features carry the ranks instead: the ids a vocabulary sorted by frequency would
     give (id k the k-th most frequent; what NVTabular's Categorify and Keras'
     IntegerLookup.adapt produce), exact rather than estimated from a sample. The teacher
     still sees the hashed ids, so the labels, dense features and effects are the same in
     both orders, batch for batch: only the ids the model is given are renamed;
   - dense features: 13 log-normal counts (some missing = 0), with the same log transform;
   - label: Bernoulli(sigmoid(logit)) from a fixed random "teacher": a bias, a linear term
     on the dense features' latent Gaussians, one random effect per (table, id) obtained
     by hashing the id (so no table of N effects is stored), and a few pairwise products of
     such effects between tables (something for the dot interaction to find). The bias is
     set for a positive rate of about 25%, like Criteo.
   - two teachers. "independent" (the default, and the hard case for any compressed
     table): every id's effect is its own, unrelated to any other id's. "clustered": an
     assumption of structure, as real ids have it (ads of one advertiser, items of one
     category): each id belongs to one of `num_clusters` latent clusters, assigned at
     random by hashing, and its effect is sqrt(s) times its cluster's effect plus
     sqrt(1 - s) times its own residual, s = cluster_share; the total variance is the
     same as the independent teacher's.
   - deterministic: batch i of stream s is a pure function of (seed, s, i) (stateless RNG),
     so runs can be repeated and a resumed run continues with batch i. The "train" and
     "eval" streams use different s (disjoint random draws of the same teacher).
"""

import math

import numpy as np
import tensorflow as tf

from examples.dlrm import line_checks

NUM_DENSE = 13
NUM_SPARSE = 26
DENSE_FEATURES = tuple(f"I{i}" for i in range(1, NUM_DENSE + 1))
CAT_FEATURES = tuple(f"C{i}" for i in range(1, NUM_SPARSE + 1))
NUM_FIELDS = 1 + NUM_DENSE + NUM_SPARSE

# DLRM's Criteo-Kaggle table sizes, in C1..C26 order.
KAGGLE_TABLE_SIZES = (
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27,
    14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
)
TERABYTE_TABLE_SIZES = (
    9980333, 36084, 17217, 7378, 20134, 3, 7112, 1442, 61, 9758201, 1333352, 313829, 10,
    2208, 11156, 122, 4, 970, 14, 9994222, 7267859, 9946608, 415421, 12420, 101, 36,
)
TABLE_SIZES = {"kaggle": KAGGLE_TABLE_SIZES, "terabyte": TERABYTE_TABLE_SIZES}
DEFAULT_EMBEDDING_DIM = {"kaggle": 16, "terabyte": 64}


def scale_table_sizes(sizes, scale=1.0, max_size=0, min_size=2):
    """Table sizes divided by `scale` (rounded up), capped at `max_size` (0: no cap).

    Every table keeps at least `min_size` rows (id 0 is reserved for "missing").
    """
    out = []
    for n in sizes:
        m = int(math.ceil(n / float(scale)))
        if max_size:
            m = min(m, int(max_size))
        out.append(max(m, int(min_size)))
    return tuple(out)


# ---------------------------------------------------------------------------------------
# Preprocessing (pure TF ops; shared by the reader and the serving graph)
# ---------------------------------------------------------------------------------------

def transform_dense(x):
    """DLRM's dense transform: log(max(x, 0) + 1), as float32 (missing must already be 0)."""
    x = tf.cast(x, tf.float32)
    return tf.math.log1p(tf.maximum(x, 0.0))


def hex_to_int(s):
    """Hex strings (any shape) -> int64 values in [0, 2^32). Empty string -> 0.

    Strings are right-aligned into 8 digits (shorter ones zero-padded on the left, longer
    ones keep their last 8 digits, i.e. the value mod 2^32). Upper- and lower-case digits
    are accepted; other characters are not validated.
    """
    s = tf.convert_to_tensor(s, tf.string)
    padded = tf.strings.substr(tf.strings.join(["00000000", s]), -8, 8)
    chars = tf.cast(tf.io.decode_raw(padded, tf.uint8), tf.int64)  # s.shape + [8]
    digits = tf.where(chars <= 57, chars - 48, tf.bitwise.bitwise_or(chars, 32) - 87)
    digits = tf.clip_by_value(digits, 0, 15)
    weights = tf.constant([16 ** (7 - k) for k in range(8)], tf.int64)
    return tf.reduce_sum(digits * weights, axis=-1)


def hash_to_table(values, missing, table_size):
    """Integer values -> ids in a table of `table_size` rows: missing -> 0, else 1 + v mod (N-1)."""
    table_size = int(table_size)
    if table_size < 2:
        return tf.zeros_like(values, tf.int64)
    ids = 1 + tf.math.floormod(tf.cast(values, tf.int64), table_size - 1)
    return tf.where(missing, tf.zeros_like(ids), ids)


def categorical_ids(hex_strings, table_size):
    """Raw Criteo categorical strings (8 hex digits, '' = missing) -> int64 table ids."""
    hex_strings = tf.convert_to_tensor(hex_strings, tf.string)
    missing = tf.equal(tf.strings.length(hex_strings), 0)
    return hash_to_table(hex_to_int(hex_strings), missing, table_size)


# ---------------------------------------------------------------------------------------
# Criteo Kaggle / Terabyte text files
# ---------------------------------------------------------------------------------------

def _record_defaults():
    return ([tf.constant([0.0], tf.float32)]
            + [tf.constant([0], tf.int64)] * NUM_DENSE
            + [tf.constant([""], tf.string)] * NUM_SPARSE)


def decode_raw_lines(lines):
    """A batch of train.txt lines -> (label float32 [B], ints: 13 x int64 [B],
    hex: 26 x string [B]).

    Empty fields take the defaults: 0 for the label and the integer features, "" for the
    categorical ones.
    """
    cols = tf.io.decode_csv(lines, record_defaults=_record_defaults(), field_delim="\t",
                            use_quote_delim=False)
    return cols[0], cols[1:1 + NUM_DENSE], cols[1 + NUM_DENSE:]


def preprocess_raw(ints, hexes, table_sizes):
    """Raw columns (13 numeric tensors, 26 hex-string tensors, same shape [B]) -> features."""
    if len(table_sizes) != NUM_SPARSE:
        raise ValueError(f"need {NUM_SPARSE} table sizes, got {len(table_sizes)}")
    features = {"dense": tf.stack([transform_dense(c) for c in ints], axis=-1)}
    for name, col, size in zip(CAT_FEATURES, hexes, table_sizes):
        features[name] = categorical_ids(col, size)
    return features


def parse_lines(lines, table_sizes):
    """A batch of train.txt lines -> (features, label), with DLRM preprocessing."""
    label, ints, hexes = decode_raw_lines(lines)
    return preprocess_raw(ints, hexes, table_sizes), label


def criteo_tsv_dataset(paths, table_sizes, batch_size, split="train", eval_every=10,
                       eval_fold=-1, repeat=False, skip_batches=0, shuffle_buffer=0, seed=0,
                       drop_remainder=False, skip_bad_lines=False, bad_lines=None,
                       shard_index=0, shard_count=1):
    """Streams Criteo train.txt-format file(s) as batches of (features, label).

    Args:
      paths: a file path or a list of them (read in order, as one stream of lines).
      table_sizes: 26 table sizes, the modulus of each categorical feature's hashing.
      batch_size: lines per batch.
      split: "train" (all lines but every `eval_every`-th), "eval" (every
        `eval_every`-th line: line index i with i % eval_every == eval_every - 1), "all".
      eval_every: the held-out fraction is 1 / eval_every.
      eval_fold: hold out the lines i with i % eval_every == eval_fold instead
        (0 <= eval_fold < eval_every); -1: eval_every - 1.
      repeat: loop over the file(s) forever (for step-based training).
      skip_batches: skip this many batches first (without decoding them): how a resumed
        run continues where it stopped.
      shuffle_buffer: if > 0, shuffle lines with this buffer (seeded, deterministic;
        reshuffled on each pass).
      drop_remainder: drop a last partial batch.
      skip_bad_lines: drop malformed lines (examples/dlrm/line_checks.py), counting them in
        `bad_lines`; False: a malformed line is an InvalidArgumentError naming its file and
        line number. Either way the split is by line index, bad lines included, so the
        held-out lines do not depend on which lines are bad.
      bad_lines: the line_checks.BadLineCounter skipped lines are counted in (a new one if
        None; pass one to read the count).
      shard_index, shard_count: read only the split's lines i with i % shard_count ==
        shard_index (a distributed worker's own part).
    """
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index must be in [0, {shard_count}), got {shard_index}")
    if isinstance(paths, (str, bytes)):
        paths = [paths]
    table_sizes = tuple(int(n) for n in table_sizes)
    ds = line_checks.numbered_lines(paths)
    if split != "all":
        if split not in ("train", "eval"):
            raise ValueError(f"split must be 'train', 'eval' or 'all', got {split!r}")
        k = int(eval_every)
        held = k - 1 if eval_fold == -1 else int(eval_fold)
        if not 0 <= held < k:
            raise ValueError(f"eval_fold must be in [0, {k}) or -1, got {eval_fold}")
        ds = ds.enumerate()
        if split == "eval":
            ds = ds.filter(lambda i, line: tf.equal(i % k, held))
        else:
            ds = ds.filter(lambda i, line: tf.not_equal(i % k, held))
        ds = ds.map(lambda i, line: line)
    if shard_count > 1:
        ds = ds.shard(shard_count, shard_index)
    if skip_bad_lines:
        counter = bad_lines or line_checks.BadLineCounter()
        ds = ds.batch(line_checks.CHUNK).map(counter.drop_bad).unbatch()
    if shuffle_buffer:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    if skip_batches:
        ds = ds.skip(skip_batches)

    def parse(path, number, lines):
        if not skip_bad_lines:
            lines = line_checks.assert_good_lines(path, number, lines)
        return parse_lines(lines, table_sizes)

    ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


# ---------------------------------------------------------------------------------------
# Synthetic Criteo-like data
# ---------------------------------------------------------------------------------------

_MASK32 = 0xFFFFFFFF
TEACHERS = ("independent", "clustered")
# The synthetic ids the model is given: spread over the table ("hashed"), or the frequency
# ranks ("frequency", id k the k-th most frequent).
ID_ORDERS = ("hashed", "frequency")
_STREAMS = {"train": 0, "eval": 1}


def _hash32(x):
    """A 32-bit integer mixer on int64 tensors (values kept < 2^32, products < 2^60)."""
    x = tf.bitwise.bitwise_and(x, _MASK32)
    x = tf.bitwise.bitwise_and(
        tf.bitwise.bitwise_xor(tf.bitwise.right_shift(x, 16), x) * 0x45D9F3B, _MASK32)
    x = tf.bitwise.bitwise_and(
        tf.bitwise.bitwise_xor(tf.bitwise.right_shift(x, 16), x) * 0x45D9F3B, _MASK32)
    return tf.bitwise.bitwise_xor(tf.bitwise.right_shift(x, 16), x)


def _unit_effect(ids, salts):
    """Per-(table, id) pseudo-random effects, uniform with mean 0 and variance 1.

    ids: int64 [B, T] (< 2^32); salts: int64 [T] (< 2^32). The odd multiplier makes the
    key injective in the id for each table.
    """
    key = ids * 2654435761 + salts
    h = tf.cast(_hash32(_hash32(key) + salts), tf.float64)
    return tf.cast((h / 2.0 ** 32 - 0.5) * math.sqrt(12.0), tf.float32)


def _is_prime(n):
    if n < 2:
        return False
    i = 2
    while i * i <= n:
        if n % i == 0:
            return False
        i += 1
    return True


class SyntheticCriteo:
    """A deterministic Criteo-like source with a learnable random teacher (see module doc).

    Args:
      table_sizes: 26 table sizes (e.g. `scale_table_sizes(KAGGLE_TABLE_SIZES, 100)`).
      seed: fixes the teacher, the id permutations and all draws.
      zipf_a: the power-law exponent of the id ranks (> 0; larger = more skewed).
      sparse_std, dense_std, pair_std: standard deviations of the teacher's logit terms.
      num_pairs: number of table pairs with an interaction term.
      positive_rate: the target mean label (sets the teacher's bias).
      id_order: "hashed" (hot ids spread over the table) or "frequency" (the model is given
        each id's frequency rank; the teacher and the labels are the same).
    """

    def __init__(self, table_sizes, seed=0, zipf_a=1.05, sparse_std=1.5, dense_std=0.6,
                 pair_std=0.6, num_pairs=6, positive_rate=0.25, teacher="independent",
                 num_clusters=1000, cluster_share=0.75, id_order="hashed"):
        if len(table_sizes) != NUM_SPARSE:
            raise ValueError(f"need {NUM_SPARSE} table sizes, got {len(table_sizes)}")
        if zipf_a <= 0:
            raise ValueError("zipf_a must be > 0")
        if teacher not in TEACHERS:
            raise ValueError(f"teacher must be one of {TEACHERS}, got {teacher!r}")
        if int(num_clusters) < 1 or not 0.0 <= cluster_share <= 1.0:
            raise ValueError(f"num_clusters must be >= 1 and cluster_share in [0, 1], got "
                             f"{num_clusters!r} and {cluster_share!r}")
        if id_order not in ID_ORDERS:
            raise ValueError(f"id_order must be one of {ID_ORDERS}, got {id_order!r}")
        self.teacher = teacher
        self.id_order = id_order
        self.num_clusters = int(num_clusters)
        self.cluster_share = float(cluster_share)
        self.table_sizes = tuple(int(n) for n in table_sizes)
        self.seed = int(seed)
        self.zipf_a = float(zipf_a)
        # Every draw below is part of each seed's teacher: a new one goes after the last
        # (the clustered teacher's salts, drawn before the weights, changed seed 0's
        # teacher once; docs/quality.md).
        rng = np.random.default_rng([self.seed, 20210115])
        t = NUM_SPARSE
        # Id permutation per table: id = (rank * P + c) mod N, P prime and not dividing N.
        primes, offsets = [], []
        for n in self.table_sizes:
            p = int(rng.integers(100_000_000, 1_000_000_000))
            while not (_is_prime(p) and n % p != 0):
                p += 1
            primes.append(p)
            offsets.append(int(rng.integers(0, n)))
        self._primes = np.array(primes, np.int64)
        self._offsets = np.array(offsets, np.int64)
        self._salts = rng.integers(0, 2 ** 31, size=t).astype(np.int64)
        self._pair_salts = rng.integers(0, 2 ** 31, size=t).astype(np.int64)
        self._cluster_salts = rng.integers(0, 2 ** 31, size=t).astype(np.int64)
        # Teacher: sparse weights (total std sparse_std), dense weights, table pairs.
        w = np.abs(rng.normal(size=t)) + 0.2
        self._w_sparse = (w * sparse_std / np.sqrt(np.sum(w ** 2))).astype(np.float32)
        v = rng.normal(size=NUM_DENSE)
        self._w_dense = (v * dense_std / np.sqrt(np.sum(v ** 2))).astype(np.float32)
        pairs = set()
        while len(pairs) < min(num_pairs, t * (t - 1) // 2):
            a, b = sorted(rng.choice(t, size=2, replace=False).tolist())
            pairs.add((a, b))
        self._pairs = np.array(sorted(pairs), np.int64).reshape(-1, 2)
        self._pair_w = np.float32(pair_std / math.sqrt(max(len(pairs), 1)))
        # Dense features: raw = floor(exp(mu + sigma z)), missing (-> 0) with prob m.
        self._mu = rng.uniform(0.0, 4.0, NUM_DENSE).astype(np.float32)
        self._sigma = rng.uniform(0.5, 1.5, NUM_DENSE).astype(np.float32)
        self._missing = rng.uniform(0.0, 0.4, NUM_DENSE).astype(np.float32)
        # Bias for the target positive rate, calibrated on draws of the teacher's logit.
        self._bias = np.float32(0.0)
        z = np.concatenate([self._draw(i, 1024, stream=7)[1].numpy() for i in range(16)])
        lo, hi = -30.0, 30.0
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            if np.mean(1.0 / (1.0 + np.exp(-(mid + z)))) > positive_rate:
                hi = mid
            else:
                lo = mid
        self._bias = np.float32(0.5 * (lo + hi))

    # -- one batch ----------------------------------------------------------------------

    def _effects(self, ids, salts):
        """The teacher's unit-variance effect of every id (int64 [B, T]) for one salt set."""
        own = _unit_effect(ids, salts)
        if self.teacher == "independent":
            return own
        cluster = tf.math.floormod(_hash32(ids * 40503 + self._cluster_salts),
                                   self.num_clusters)
        shared = _unit_effect(cluster, salts + 1)
        s = self.cluster_share
        return math.sqrt(s) * shared + math.sqrt(1.0 - s) * own

    def _zipf_ranks(self, u):
        """u: float64 [B, T] in [0, 1) -> int64 ranks in [0, N_t) with P(k) ~ (k+1)^-a."""
        n = tf.constant(self.table_sizes, tf.float64)
        a = self.zipf_a
        if abs(a - 1.0) < 1e-6:
            x = tf.exp(u * tf.math.log(n + 1.0))
        else:
            e = 1.0 - a
            x = tf.pow((tf.pow(n + 1.0, e) - 1.0) * u + 1.0, 1.0 / e)
        ranks = tf.cast(tf.floor(x), tf.int64) - 1
        return tf.clip_by_value(ranks, 0, tf.constant(self.table_sizes, tf.int64) - 1)

    def _draw(self, index, batch_size, stream):
        """-> (features, teacher logit [B], seed for the label draw)."""
        index = tf.cast(index, tf.int64)
        seed = tf.stack([tf.constant(self.seed, tf.int64),
                         index * 8 + tf.constant(stream, tf.int64)])
        sub = [tf.random.experimental.stateless_fold_in(seed, k) for k in range(4)]
        b, t = int(batch_size), NUM_SPARSE
        # Ids.
        u = tf.random.stateless_uniform([b, t], seed=sub[0], dtype=tf.float64)
        ranks = self._zipf_ranks(u)
        sizes = tf.constant(self.table_sizes, tf.int64)
        ids = tf.math.floormod(ranks * self._primes + self._offsets, sizes)
        # Dense features.
        z = tf.random.stateless_normal([b, NUM_DENSE], seed=sub[1])
        present = tf.random.stateless_uniform([b, NUM_DENSE], seed=sub[2]) >= self._missing
        raw = tf.floor(tf.exp(self._mu + self._sigma * z))
        raw = tf.where(present, raw, tf.zeros_like(raw))
        features = {"dense": transform_dense(raw)}
        given = ranks if self.id_order == "frequency" else ids
        for k, name in enumerate(CAT_FEATURES):
            features[name] = given[:, k]
        # Teacher.
        effects = self._effects(ids, self._salts)                     # [B, T]
        logit = self._bias + tf.linalg.matvec(effects, self._w_sparse)
        logit += tf.linalg.matvec(tf.where(present, z, tf.zeros_like(z)), self._w_dense)
        if len(self._pairs):
            pe = self._effects(ids, self._pair_salts)
            pa = tf.gather(pe, self._pairs[:, 0], axis=1)
            pb = tf.gather(pe, self._pairs[:, 1], axis=1)
            logit += self._pair_w * tf.reduce_sum(pa * pb, axis=1)
        return features, logit, sub[3]

    def batch(self, index, batch_size, stream=0):
        """Batch `index` of stream `stream` (0 train, 1 eval) -> (features, label)."""
        features, logit, label_seed = self._draw(index, batch_size, stream)
        coin = tf.random.stateless_uniform([int(batch_size)], seed=label_seed)
        label = tf.cast(coin < tf.sigmoid(logit), tf.float32)
        return features, label

    def dataset(self, batch_size, split="train", start_batch=0, num_batches=None,
                shard_index=0, shard_count=1):
        """Batches start_batch, start_batch + 1, ... of the split's stream (endless if
        num_batches is None).

        With shard_count > 1 this is part shard_index of shard_count disjoint streams (a
        distributed worker's own): batch j is the stream's batch j * shard_count +
        shard_index, so the parts never share a batch, and part 0 of 1 is the stream.
        """
        if not 0 <= shard_index < shard_count:
            raise ValueError(f"shard_index must be in [0, {shard_count}), got {shard_index}")
        stream = _STREAMS[split]
        first = int(start_batch) * shard_count + shard_index
        stop = 2 ** 62 if num_batches is None else first + int(num_batches) * shard_count
        ds = tf.data.Dataset.range(first, stop, shard_count)
        ds = ds.map(lambda i: self.batch(i, batch_size, stream),
                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return ds.prefetch(tf.data.AUTOTUNE)
