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


def assert_close_to_oracle(actual, desired, scale=1.0):
    """A float32 result against the float64 oracle, where the result is a difference of sums
    whose terms reach `scale` in magnitude (a mean's weight gradient subtracts the bag's mean
    row from each row): float32 round-off is then a few ulps of `scale`, however close to
    zero cancellation leaves the result, so the absolute tolerance grows with it."""
    np.testing.assert_allclose(np.asarray(actual), np.asarray(desired), rtol=RTOL,
                               atol=ATOL * max(1.0, float(scale)))
