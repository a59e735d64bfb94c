"""`python -m tt_keras.info`: its report, parsed, matches what this process finds."""

import json
import os
import re
import shutil
import struct
import subprocess
import sys

import pytest
import tensorflow as tf

import tt_keras
from tt_keras import info as tt_info
from tt_keras import lookup
from tt_keras._keras import IS_KERAS_3
from tt_keras.ops import tt_ops_library
from tt_keras.ops.loader import LazyOpLibrary

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-m", "tt_keras.info", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _parse(text):
    report = {}
    for line in text.strip().splitlines():
        key, sep, value = line.partition(":")
        assert sep and key and " " not in key, line
        assert key not in report, f"{key} printed twice"
        report[key] = value.strip()
    return report


def _check_stamp(stamp):
    """The build's stamp (custom_ops/Makefile): TF version, ISA, the library's size and
    sha256, as the loader checks them."""
    if not os.path.exists(tt_ops_library.path):
        assert stamp == {}
        return
    assert stamp["stamp.tensorflow"] == tf.__version__
    assert stamp["stamp.isa"].split()[0] in ("x86-64-v2", "native"), stamp
    assert stamp["stamp.size"] == str(os.path.getsize(tt_ops_library.path))
    assert re.fullmatch(r"[0-9a-f]{64}", stamp["stamp.sha256"]), stamp


def _has_fatbin_section(path):
    readelf = shutil.which("readelf")
    if readelf is None:
        pytest.skip("readelf not found")
    out = subprocess.run([readelf, "-S", "-W", path], capture_output=True, text=True).stdout
    return ".nv_fatbin" in out


@pytest.fixture(scope="module")
def report():
    return _parse(_run())


def test_report_matches_this_process(report):
    assert report["tt_keras"] == tt_keras.__version__
    assert report["tensorflow"] == tf.__version__
    assert report["keras"].endswith("(Keras 3)" if IS_KERAS_3 else "(legacy tf_keras)")
    assert report["op_library"] == tt_ops_library.path
    exists = os.path.exists(tt_ops_library.path)
    assert report["op_library_exists"] == ("yes" if exists else "no")
    loaded = tt_ops_library.available(warn=False)
    assert report["op_loaded"] == ("yes" if loaded else "no")
    assert ("op_unavailable_reason" in report) == (not loaded)
    assert report["auto_backend"] == lookup.resolve_backend("auto")
    stamp = {k: v for k, v in report.items() if k.startswith("stamp.")}
    _check_stamp(stamp)


def test_cuda_archs_follow_the_fatbin_section(report):
    if not os.path.exists(tt_ops_library.path):
        pytest.skip("no op library")
    if shutil.which("objcopy") is None:
        assert report["cuda_archs"].startswith("unknown")
        return
    archs = report["cuda_archs"].split()
    if not _has_fatbin_section(tt_ops_library.path):
        assert archs == ["none"]
        return
    assert archs and all(re.fullmatch(r"(sm|compute)_\d+", a) for a in archs), archs
    if shutil.which("nvcc"):  # custom_ops/cuda builds sm_80 and sm_90 SASS + compute_90 PTX
        assert {"sm_80", "sm_90", "compute_90"} <= set(archs)


def test_json_holds_the_same_report(report):
    assert json.loads(_run("--json")) == report
    assert tt_info.main(["--bogus"]) == 2


def test_missing_and_unloadable_libraries_say_why(tmp_path):
    missing = tt_info.collect(LazyOpLibrary(str(tmp_path / "none")))
    assert missing["op_library_exists"] == "no" and missing["op_loaded"] == "no"
    assert "missing" in missing["op_unavailable_reason"]
    assert missing["auto_backend"] == "reference" and "cuda_archs" not in missing

    (tmp_path / "_tt_ops.so").write_bytes(b"not a library")
    (tmp_path / "_tt_ops.version").write_text(
        f"{tf.__version__}\nisa: x86-64-v2\nvariants : avx2, avx512\n")
    broken = tt_info.collect(LazyOpLibrary(str(tmp_path)))
    assert broken["stamp.tensorflow"] == tf.__version__
    assert broken["stamp.isa"] == "x86-64-v2"
    assert broken["stamp.variants"] == "avx2, avx512"
    assert broken["op_loaded"] == "no" and broken["auto_backend"] == "reference"
    assert str(tmp_path) in broken["op_unavailable_reason"]


def _container(entries):
    body = b""
    for kind, arch, payload in entries:
        header = struct.pack("<HHIQ", kind, 0, 64, len(payload)) + bytes(12)
        header += struct.pack("<I", arch) + bytes(64 - 32)
        body += header + payload
    return struct.pack("<IHHQ", 0xBA55ED50, 1, 16, len(body)) + body


def test_fatbin_entries_parses_containers():
    data = _container([(2, 80, b"x" * 40), (1, 90, b"ptx")]) + _container([(2, 90, b"")])
    assert tt_info.fatbin_entries(data) == [("sm", 80), ("compute", 90), ("sm", 90)]
    assert tt_info.fatbin_entries(b"") == []
    assert tt_info.fatbin_entries(b"\0" * 64) == []
