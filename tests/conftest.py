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


def pytest_report_header(config):
    """The settings that change float32 summation order, so a failure can be replayed."""
    from tt_keras._keras import IS_KERAS_3

    settings = {name: os.environ.get(name, "(unset)")
                for name in ("TF_USE_LEGACY_KERAS", "TF_ENABLE_ONEDNN_OPTS",
                             "TF_NUM_INTRAOP_THREADS")}
    return "tt_keras: " + ", ".join(
        [f"Keras {'3' if IS_KERAS_3 else 'legacy'}"] + [f"{k}={v}" for k, v in settings.items()])


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "no_keras: needs neither Keras nor TensorFlow (C++ and CUDA-emulator checks); "
        "`make test` runs these once, under Keras 3, not again under legacy Keras")
