"""The one tolerance for comparing two float32 computations of the same math.

Bit-exact comparisons are kept where the computation is the same sequence of operations: a
checkpoint round trip, the same op or function run twice, integer outputs, NumPy reshapes.
Where the operations may run in another order -- a function traced into a graph (Grappler
rewrites), oneDNN's CPU kernels (chosen by the CPU model and TF_ENABLE_ONEDNN_OPTS), another
intra-op thread count, a SavedModel's re-traced graph -- float32 sums differ in their last
bits, by a few ulps of the O(1) entries the test tables have. `assert_reordered_close` is
tight enough that any real mistake (a wrong row, weight or bag) still fails it.
"""

import numpy as np

# A few float32 ulps (1.2e-7 at 1.0) of O(1) values: sums of up to ~100 terms reordered.
RTOL = 1e-5
ATOL = 1e-6


def assert_reordered_close(actual, desired):
    """Two float32 results of the same math whose operations may have been reordered."""
    np.testing.assert_allclose(np.asarray(actual), np.asarray(desired), rtol=RTOL, atol=ATOL)



def assert_close_to_oracle(actual, desired, magnitude):
    """A float32 result against the float64 oracle. Each entry is a sum whose float32
    round-off is a few ulps of the sum of its terms' magnitudes, not of the result, which
    cancellation can leave near zero (a gradient summed over many ids, a mean's weight
    gradient): `magnitude` is that sum, entry by entry (the same math on absolute values).
    Each entry must then lie within RTOL of it (plus ATOL)."""
    actual = np.asarray(actual, dtype=np.float64)
    desired = np.asarray(desired, dtype=np.float64)
    assert actual.shape == desired.shape, (actual.shape, desired.shape)
    error = np.abs(actual - desired)
    allowed = RTOL * np.abs(np.asarray(magnitude, dtype=np.float64)) + ATOL
    bad = np.argwhere(~(error <= allowed))
    if len(bad):
        worst = [f"{tuple(int(i) for i in b)}: {actual[tuple(b)]!r} (actual), "
                 f"{desired[tuple(b)]!r} (desired), allowed {allowed[tuple(b)]:.3g}"
                 for b in bad[:5]]
        raise AssertionError(f"{len(bad)} of {error.size} entries differ:\n" + "\n".join(worst))
