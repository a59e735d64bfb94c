"""Initializers for TT cores.

A good core initializer must know the whole TT shape: the variance of a table entry is a
product over all k cores and a sum over all inner ranks. So a TT initializer
is not a plain Keras initializer: `TTInitializer.core_initializer(tt_shape, num_rows,
core_index)` returns, for one core, a Keras initializer that the layer then calls with the
core's shape. Calling a TTInitializer directly raises a TypeError instead of producing cores
of the wrong scale.

- `SampledGaussian` (the default): variance-matched Gaussian cores, so that the dense table
  has the target variance (DLRM's U(-1/sqrt(N), 1/sqrt(N)) unless told otherwise).
- `TTUniform`, `TTNaiveUniform`, `TTApproxNormal`: the FBTT-Embedding reference's "uniform",
  "naive-uniform" and "approx-normal" (its default), kept only for ablations: their tables are
  all positive, vanishingly small, and far too large respectively.

Values are drawn with NumPy from a seed (cores are small, so this costs nothing) and handed to
the framework as a tensor: the same seed gives the same cores under Keras 3 and tf_keras.
Core t of a seeded initializer draws from the stream SeedSequence([seed, t]), so the cores are
independent of one another and reproducible. An unseeded one takes its entropy from NumPy's
global generator, which `keras.utils.set_random_seed` seeds.
"""

import math
import numbers

import numpy as np

from tt_keras._keras import keras, register_serializable, tf
from tt_keras.shape_checks import check_positive
from tt_keras.tt_math import TTShape

__all__ = [
    "TTInitializer",
    "SampledGaussian",
    "TTUniform",
    "TTNaiveUniform",
    "TTApproxNormal",
    "get",
    "serialize",
    "for_core",
]

_PACKAGE = "tt_keras"


def _check_seed(seed):
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer or None, got {seed!r}")
    return int(seed)


def _check_positive(value, name):
    return None if value is None else check_positive(value, name)


def _floatx():
    return keras.backend.floatx()


@register_serializable(package=_PACKAGE)
class TTCoreSampler(keras.initializers.Initializer):
    """The initializer of one TT core: i.i.d. entries from a fixed distribution.

    Made by `TTInitializer.core_initializer`; rarely built by hand. The layer calls it with the
    core's shape. Any shape with `size` elements is accepted (the entries are i.i.d., so the
    layout does not matter); another size means the core does not belong to the TT shape this
    sampler was made for, which is a bug worth an error.

    Args:
      distribution: "normal" (mean 0, `scale` = standard deviation), "uniform" (on
        [low, high)), or "normal_tails" (a standard normal conditioned on |x| >= `threshold`,
        times `scale`).
      size: the number of entries of the core.
      scale, low, high, threshold: parameters of the distribution, as above.
      seed: None or a non-negative int; `stream` (the core index) picks the stream.
    """

    _DISTRIBUTIONS = ("normal", "uniform", "normal_tails")

    def __init__(
        self,
        distribution,
        size,
        scale=1.0,
        low=0.0,
        high=1.0,
        threshold=2.0,
        seed=None,
        stream=0,
    ):
        if distribution not in self._DISTRIBUTIONS:
            raise ValueError(
                f"distribution must be one of {self._DISTRIBUTIONS}, got {distribution!r}"
            )
        self.distribution = distribution
        self.size = int(size)
        self.scale = float(scale)
        self.low = float(low)
        self.high = float(high)
        self.threshold = float(threshold)
        if not self.threshold > 0:
            raise ValueError(f"threshold must be positive, got {threshold!r}")
        self.seed = _check_seed(seed)
        self.stream = int(stream)

    def _rng(self):
        if self.seed is None:
            entropy = [int(x) for x in np.random.randint(0, 2**31 - 1, size=4)]
        else:
            entropy = [self.seed, self.stream]
        return np.random.default_rng(np.random.SeedSequence(entropy))

    def sample(self, size):
        """`size` float64 draws (NumPy) from this sampler's distribution and stream."""
        rng = self._rng()
        if self.distribution == "normal":
            return rng.normal(0.0, self.scale, size)
        if self.distribution == "uniform":
            return rng.uniform(self.low, self.high, size)
        return _normal_tails(rng, self.threshold, size) * self.scale

    def __call__(self, shape, dtype=None, **kwargs):
        shape = tuple(int(s) for s in shape)
        if math.prod(shape) != self.size:
            raise ValueError(
                f"this {self.distribution} core initializer was made for a core of "
                f"{self.size} entries, but was called with shape {shape}"
            )
        values = self.sample(self.size).reshape(shape)
        dtype = tf.as_dtype(dtype or _floatx())
        # Cast in TF rather than NumPy: NumPy has no bfloat16.
        return tf.cast(tf.constant(values, dtype=tf.float64), dtype)

    def get_config(self):
        return {
            "distribution": self.distribution,
            "size": self.size,
            "scale": self.scale,
            "low": self.low,
            "high": self.high,
            "threshold": self.threshold,
            "seed": self.seed,
            "stream": self.stream,
        }


def _normal_tails(rng, threshold, size):
    """Standard normal draws conditioned on |x| >= threshold.

    Marsaglia's tail method: x = sqrt(a^2 - 2 ln U) has density proportional to
    x exp(-x^2 / 2) on x >= a; accepting with probability a / x leaves exp(-x^2 / 2). For a = 2
    about 84% are accepted, where redrawing N(0, 1) until |x| >= 2 (what the reference does,
    with the same result) keeps about 4.6%.
    """
    out = np.empty(size)
    filled = 0
    while filled < size:
        need = size - filled
        n = int(need * 1.25) + 16
        x = np.sqrt(threshold**2 - 2.0 * np.log1p(-rng.random(n)))
        x = x[rng.random(n) * x <= threshold][:need]
        out[filled : filled + len(x)] = x
        filled += len(x)
    return out * rng.choice([-1.0, 1.0], size)


@register_serializable(package=_PACKAGE)
class TTInitializer(keras.initializers.Initializer):
    """Base class of initializers that need the whole TT shape to initialize one core.

    Subclasses implement `core_initializer`. The layer calls it once per core:

        init = tt_initializer.core_initializer(tt_shape, num_rows, t)
        core_t = init(tt_shape.core_shapes[t], dtype)
    """

    def core_initializer(self, tt_shape, num_rows, core_index):
        """A Keras initializer, callable as (shape, dtype), for core `core_index`.

        Args:
          tt_shape: the `tt_math.TTShape` of the table.
          num_rows: N, the table's real rows (not the padded count).
          core_index: t in [0, tt_shape.num_cores).
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement core_initializer")

    def __call__(self, shape, dtype=None, **kwargs):
        raise TypeError(
            f"{type(self).__name__} initializes the cores of a TT-compressed table and needs the "
            f"whole TT shape, so it cannot be called with a single shape {tuple(shape)}: give it "
            f"to TTEmbedding (its embeddings_initializer), which calls core_initializer(tt_shape, "
            f"num_rows, core_index) once per core."
        )

    def get_config(self):
        return {}

    @staticmethod
    def _check_args(tt_shape, num_rows, core_index):
        if not isinstance(tt_shape, TTShape):
            raise TypeError(f"tt_shape must be a tt_math.TTShape, got {tt_shape!r}")
        if isinstance(num_rows, bool) or not isinstance(num_rows, numbers.Integral) or not (
            1 <= num_rows <= tt_shape.padded_rows
        ):
            raise ValueError(
                f"num_rows must be an integer in [1, {tt_shape.padded_rows}] (the rows the "
                f"TT shape holds), got {num_rows!r}"
            )
        if isinstance(core_index, bool) or not isinstance(core_index, numbers.Integral) or not (
            0 <= core_index < tt_shape.num_cores
        ):
            raise ValueError(
                f"core_index must be an integer in [0, {tt_shape.num_cores}), got {core_index!r}"
            )
        return int(num_rows), int(core_index)

    def _sampler(self, tt_shape, core_index, distribution, **params):
        size = math.prod(tt_shape.core_shapes[core_index])
        return TTCoreSampler(
            distribution, size, seed=getattr(self, "seed", None), stream=core_index, **params
        )


@register_serializable(package=_PACKAGE)
class SampledGaussian(TTInitializer):
    """Variance-matched Gaussian cores: the dense table gets the target variance v.

    An entry of the table is a sum of prod(r_1..r_{k-1}) products of k core entries, so with
    cores i.i.d. N(0, s^2) its variance is prod(r_1..r_{k-1}) * s^(2k). Drawing the cores with
    s^2 = (v / prod(r_1..r_{k-1}))^(1/k) gives the table variance v, and entries that are
    close to Gaussian (the TT-Rec paper's "sampled Gaussian").

    Args:
      variance: the target variance v of the table's entries.
      uniform_range: alternatively, match U(-a, a): v = a^2 / 3 (Keras' default Embedding
        initializer is a = 0.05).
      seed: None or a non-negative int, for reproducible cores.

    With neither given, v = 1 / (3 N) for a table of N rows: DLRM's U(-1/sqrt(N), 1/sqrt(N)).
    """

    def __init__(self, variance=None, uniform_range=None, seed=None):
        if variance is not None and uniform_range is not None:
            raise ValueError(
                f"give at most one of variance and uniform_range, got variance={variance!r} "
                f"and uniform_range={uniform_range!r}"
            )
        self.variance = _check_positive(variance, "variance")
        self.uniform_range = _check_positive(uniform_range, "uniform_range")
        self.seed = _check_seed(seed)

    def target_variance(self, num_rows):
        """The variance v the table's entries should have, for a table of num_rows rows."""
        if self.variance is not None:
            return self.variance
        if self.uniform_range is not None:
            return self.uniform_range**2 / 3.0
        return 1.0 / (3.0 * num_rows)

    def core_stddev(self, tt_shape, num_rows):
        """s = (v / prod(r_1..r_{k-1}))^(1/(2k)), the standard deviation of every core entry."""
        v = self.target_variance(num_rows)
        return (v / math.prod(tt_shape.inner_ranks)) ** (1.0 / (2 * tt_shape.num_cores))

    def core_initializer(self, tt_shape, num_rows, core_index):
        num_rows, core_index = self._check_args(tt_shape, num_rows, core_index)
        return self._sampler(
            tt_shape, core_index, "normal", scale=self.core_stddev(tt_shape, num_rows)
        )

    def get_config(self):
        return {"variance": self.variance, "uniform_range": self.uniform_range, "seed": self.seed}


@register_serializable(package=_PACKAGE)
class TTUniform(TTInitializer):
    """FBTT-Embedding's "uniform" cores, for ablations: U(0, c), every entry positive.

    c = (2 / (N + D))^(1/(2k)) * prod_{t=0..k} r_t^(-1/(2k)), with D the embedding dimension.
    All cores positive make every table entry positive: the table is far from the zero-mean
    distribution an embedding table should start from.
    """

    def __init__(self, seed=None):
        self.seed = _check_seed(seed)

    def core_initializer(self, tt_shape, num_rows, core_index):
        num_rows, core_index = self._check_args(tt_shape, num_rows, core_index)
        k = tt_shape.num_cores
        stddev = math.sqrt(2.0 / (num_rows + tt_shape.dim))
        rank_factor = math.prod(r ** (-1.0 / (2 * k)) for r in tt_shape.ranks)
        high = stddev ** (1.0 / k) * rank_factor
        return self._sampler(tt_shape, core_index, "uniform", low=0.0, high=high)

    def get_config(self):
        return {"seed": self.seed}


@register_serializable(package=_PACKAGE)
class TTNaiveUniform(TTInitializer):
    """FBTT-Embedding's "naive-uniform" cores, for ablations: every core U(0, 1/sqrt(N)).

    Each core is scaled as if it were the whole table, so a table entry is a product of k
    such small numbers (times the ranks): about 1e-9 for a 10M-row table with 3 cores.
    """

    def __init__(self, seed=None):
        self.seed = _check_seed(seed)

    def core_initializer(self, tt_shape, num_rows, core_index):
        num_rows, core_index = self._check_args(tt_shape, num_rows, core_index)
        return self._sampler(
            tt_shape, core_index, "uniform", low=0.0, high=1.0 / math.sqrt(num_rows)
        )

    def get_config(self):
        return {"seed": self.seed}


@register_serializable(package=_PACKAGE)
class TTApproxNormal(TTInitializer):
    """FBTT-Embedding's default "approx-normal" cores, for ablations.

    Every core entry is a standard normal redrawn while |x| < 2 -- only the tails are kept, so
    E[x^2] is about 5.75 -- times (1 / sqrt(3 N))^(1/3). The exponent is 1/3 whatever the
    number of cores, and the ranks are ignored, so table entries come out hundreds of times
    larger than DLRM's U(-1/sqrt(N), 1/sqrt(N)) rows. Reproduced as the
    reference behaves, defects included.
    """

    THRESHOLD = 2.0

    def __init__(self, seed=None):
        self.seed = _check_seed(seed)

    def core_initializer(self, tt_shape, num_rows, core_index):
        num_rows, core_index = self._check_args(tt_shape, num_rows, core_index)
        scale = (1.0 / math.sqrt(3.0 * num_rows)) ** (1.0 / 3.0)
        return self._sampler(
            tt_shape, core_index, "normal_tails", scale=scale, threshold=self.THRESHOLD
        )

    def get_config(self):
        return {"seed": self.seed}


_BY_ALIAS = {
    "sampled_gaussian": SampledGaussian,
    "tt_uniform": TTUniform,
    "tt_naive_uniform": TTNaiveUniform,
    "tt_approx_normal": TTApproxNormal,
}
_BY_CLASS_NAME = {cls.__name__: cls for cls in _BY_ALIAS.values()}


def _tt_class(name):
    """The TTInitializer class that a string or serialized class name denotes, or None."""
    if not isinstance(name, str):
        return None
    alias = name.strip().lower().replace("-", "_")
    if alias in _BY_ALIAS:
        return _BY_ALIAS[alias]
    # Registered names carry the package: "tt_keras>SampledGaussian".
    package, _, class_name = name.strip().rpartition(">")
    if package in ("", _PACKAGE):
        return _BY_CLASS_NAME.get(class_name)
    return None


def get(identifier):
    """Resolve an initializer identifier for TT cores.

    Returns a `TTInitializer` for: None (the default, `SampledGaussian()`), a TTInitializer
    instance or class, the strings "sampled_gaussian", "tt_uniform", "tt_naive_uniform",
    "tt_approx_normal" (or the class names), or a serialized config dict of one of them.
    Anything else goes to `keras.initializers.get` and comes back as a plain Keras initializer,
    which the layer then applies to each core as it is (no TT-aware scaling).

    Raises:
      ValueError if the identifier is neither ours nor one Keras understands.
    """
    if identifier is None:
        return SampledGaussian()
    if isinstance(identifier, TTInitializer):
        return identifier
    if isinstance(identifier, type) and issubclass(identifier, TTInitializer):
        return identifier()
    if isinstance(identifier, str):
        cls = _tt_class(identifier)
        if cls is not None:
            return cls()
    if isinstance(identifier, dict):
        cls = _tt_class(identifier.get("registered_name")) or _tt_class(
            identifier.get("class_name")
        )
        if cls is not None:
            return cls.from_config(dict(identifier.get("config") or {}))
    try:
        return keras.initializers.get(identifier)
    except (ValueError, TypeError) as err:
        raise ValueError(
            f"Could not interpret initializer identifier {identifier!r}: it is none of "
            f"{sorted(_BY_ALIAS)} and Keras says: {err}"
        ) from None


def serialize(initializer):
    """The config dict of an initializer (ours or Keras'), which `get` turns back into it."""
    return keras.initializers.serialize(initializer)


def for_core(initializer, tt_shape, num_rows, core_index):
    """The initializer to give `add_weight` for core `core_index`, whatever `get` returned.

    A TTInitializer yields its `core_initializer`. A plain Keras initializer is cloned, with
    an integer seed moved to seed + core_index: one instance shared by all cores would make
    tf_keras return identical values for cores of equal shape (it warns about exactly that),
    and an unchanged seed would make equal-shaped cores identical in both Kerases.
    """
    if isinstance(initializer, TTInitializer):
        return initializer.core_initializer(tt_shape, num_rows, core_index)
    if not isinstance(initializer, keras.initializers.Initializer):
        return initializer  # a bare callable(shape, dtype): nothing to clone
    config = dict(initializer.get_config())
    if isinstance(config.get("seed"), numbers.Integral) and not isinstance(config["seed"], bool):
        config["seed"] = int(config["seed"]) + int(core_index)
    return type(initializer).from_config(config)
