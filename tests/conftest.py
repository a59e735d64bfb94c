"""Shared fixtures: the lookup backends every lookup test runs on."""

import os

import pytest

from tt_keras.ops import tt_ops_library

# CI builds the op library, so a missing one is a failure there; a developer without a
# compiler can set TT_KERAS_ALLOW_NO_OPS=1 to run the pure-TF half of the suite.
ALLOW_NO_OPS = os.environ.get("TT_KERAS_ALLOW_NO_OPS") == "1"


def _backends():
    return ["reference", "op"]


@pytest.fixture(params=_backends())
def backend(request):
    if request.param == "op" and not tt_ops_library.available(warn=False):
        if ALLOW_NO_OPS:
            pytest.skip("op library not built (TT_KERAS_ALLOW_NO_OPS=1)")
        tt_ops_library.ops  # raises with the reason
    return request.param
