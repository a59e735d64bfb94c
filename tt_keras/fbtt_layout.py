"""TT cores to and from FBTT-Embedding's storage [p_t, r_{t-1} * q_t * r_t]. NumPy only."""

import numpy as np

from tt_keras.shape_checks import check_cores
from tt_keras.tt_shape import TTShape

__all__ = ["cores_from_fbtt", "cores_to_fbtt"]


def cores_from_fbtt(fbtt_cores, tt_shape: TTShape):
    """Cores from FBTT-Embedding's storage [p_t, r_{t-1} * q_t * r_t] (a pure reshape).

    A leading num_tables axis of size 1 (TableBatchedTTEmbeddingBag's [1, p_t, ...]) is
    accepted and dropped. Raises ValueError when a core's size does not match tt_shape.
    """
    if not isinstance(tt_shape, TTShape):
        raise ValueError(f"tt_shape must be a TTShape, got {tt_shape!r}")
    fbtt_cores = [np.asarray(c) for c in fbtt_cores]
    if len(fbtt_cores) != tt_shape.num_cores:
        raise ValueError(
            f"fbtt_cores has {len(fbtt_cores)} cores but tt_shape has {tt_shape.num_cores}"
        )
    out = []
    for t, (c, shape) in enumerate(zip(fbtt_cores, tt_shape.core_shapes)):
        expected = (shape[0], shape[1] * shape[2] * shape[3])
        got = c.shape[1:] if c.ndim == 3 and c.shape[0] == 1 else c.shape
        if tuple(got) != expected:
            raise ValueError(
                f"fbtt_cores[{t}] has shape {c.shape} but tt_shape needs {expected} "
                f"(p_t, r_(t-1) * q_t * r_t)"
            )
        out.append(c.reshape(shape))
    return out


def cores_to_fbtt(cores):
    """Cores in FBTT-Embedding's storage [p_t, r_{t-1} * q_t * r_t] (a pure reshape)."""
    cores = check_cores(cores, dtype=None)
    return [c.reshape(c.shape[0], -1) for c in cores]
