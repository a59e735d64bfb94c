"""The op library's build: Bazel files in step with the Makefile, and a portable library.

- custom_ops/BUILD and the top-level BUILD list the sources, headers and code-generation
  options custom_ops/Makefile builds with (evaluated as the Python they nearly are);
- the default build's library runs on any x86-64-v2 CPU: AVX, AVX2, AVX-512 and the other
  x86-64-v3 instructions appear only in the kernels compiled for those levels (objdump),
  and the C++ unit tests, linked from the library's own objects, pass on an emulated
  Nehalem CPU and pick the x86-64-v3 kernels on an emulated Haswell (qemu-x86_64).

None of this depends on the Keras version (marker no_keras: run once); the checks skip
without objdump or qemu, and the portability ones unless the library here was built with the
portable default.
"""

import glob
import os
import platform
import re
import shutil
import subprocess
import sys

import pytest

from tt_keras.ops.loader import read_stamp

from tests.bazel_build import evaluate_build, make_variables, rule_files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUSTOM_OPS = os.path.join(ROOT, "custom_ops")
LIBRARY = os.path.join(ROOT, "tt_keras", "ops", "_tt_ops.so")
STAMP = os.path.join(ROOT, "tt_keras", "ops", "_tt_ops.version")
CC_TEST = os.path.join(CUSTOM_OPS, "build", "tt_core_test")

pytestmark = pytest.mark.no_keras


def test_custom_ops_build_lists_what_the_makefile_builds():
    make = make_variables("CORE_SRCS", "OP_SRCS", "GPU_SRCS", "DRIVER_SRCS")
    rules = evaluate_build(os.path.join(CUSTOM_OPS, "BUILD"))
    assert rule_files(rules["tt_core"], ".cc") == sorted(make["CORE_SRCS"])
    for name in ("_tt_ops.so", "tt_ops_kernels"):
        assert ":tt_core" in rules[name]["deps"]
        assert rule_files(rules[name], ".cc") == sorted(make["OP_SRCS"])
    assert rule_files(rules["tt_driver"], ".cc") == sorted(make["DRIVER_SRCS"])
    # Every header is declared by some rule, except the GPU kernels' (built by the Makefile
    # only, with nvcc): a new file must be added to both builds.
    declared = set()
    for rule in rules.values():
        declared.update(rule_files(rule, ".h"))
        declared.update(rule_files(rule, ".cc"))
    on_disk = {os.path.relpath(f, CUSTOM_OPS)
               for f in glob.glob(os.path.join(CUSTOM_OPS, "cc", "**", "*.[ch]*"), recursive=True)}
    gpu_only = set(make["GPU_SRCS"]) | {"cc/kernels/tt_gpu_util.h"}
    assert declared == on_disk - gpu_only
    assert not declared & gpu_only


def test_build_compiles_with_the_makefile_code_generation_flags():
    make = make_variables("OPT_FLAGS", "MARCH")
    copts = set(evaluate_build(os.path.join(CUSTOM_OPS, "BUILD"))["tt_core"]["copts"])
    expected = set(make["OPT_FLAGS"])
    if platform.machine() == "x86_64":  # the Makefile's portable default
        expected |= set(make["MARCH"])
    assert expected <= copts, expected - copts
    assert not any(flag.startswith("-march=native") for flag in copts)


def test_asan_build_is_a_library_of_its_own():
    """`make asan` builds beside the normal library, not over it, with the sanitizer on in
    both compile and link (the link checks undefined symbols: -Wl,-z,defs)."""
    make = make_variables("ASAN_OUT", "ASAN_FLAGS")
    asan_out = os.path.normpath(os.path.join(CUSTOM_OPS, make["ASAN_OUT"][0]))
    assert asan_out == os.path.join(CUSTOM_OPS, "build", "asan", "_tt_ops.so")
    assert asan_out != LIBRARY
    assert "-fsanitize=address" in make["ASAN_FLAGS"]
    dry_run = subprocess.run(["make", "-n", "-C", CUSTOM_OPS, "asan"], capture_output=True,
                             text=True, check=True, timeout=120).stdout
    assert 'EXTRA_LDFLAGS="-fsanitize=address"' in dry_run, dry_run


def test_top_level_build_packages_the_library_and_the_cc_tests():
    make = make_variables("CCTEST_SRCS", "OUT")
    rules = evaluate_build(os.path.join(ROOT, "BUILD"))
    assert rules["tt_keras"]["data"] == ["//custom_ops:_tt_ops.so"]
    assert os.path.normpath(os.path.join(CUSTOM_OPS, make["OUT"][0])) == LIBRARY
    assert "_tt_ops.so" in evaluate_build(os.path.join(CUSTOM_OPS, "BUILD"))
    cc_test = rules["tt_core_test"]
    assert rule_files(cc_test, ".cc") == sorted(
        os.path.relpath(os.path.join(CUSTOM_OPS, f), ROOT) for f in make["CCTEST_SRCS"])
    assert cc_test["deps"] == ["//custom_ops:tt_standalone"]


def _portable_build():
    """Skips unless the library here was built by the default, portable build."""
    if platform.machine() != "x86_64":
        pytest.skip("the dispatched kernels exist on x86-64 only")
    if not os.path.exists(LIBRARY):
        pytest.skip("op library not built")
    isa = read_stamp(STAMP).get("isa", "")
    if not isa.startswith("x86-64-v2"):
        pytest.skip(f"library not built with the portable default (stamp: {isa!r})")
    assert isa.endswith("dispatched at run time: x86-64-v3 x86-64-v4"), isa


# Instructions an x86-64-v2 CPU does not have: VEX/EVEX-encoded SIMD (all spelled v...),
# the VEX-encoded BMI1/BMI2 integer instructions and the other x86-64-v3 additions.
_V3_INTEGER = {"andn", "bextr", "blsi", "blsmsk", "blsr", "bzhi", "mulx", "pdep", "pext",
               "rorx", "sarx", "shlx", "shrx", "lzcnt", "tzcnt", "movbe"}
_NOT_SIMD = {"verr", "verw", "vmcall", "vmlaunch", "vmresume", "vmxoff", "vmxon", "vmread",
             "vmwrite", "vmptrld", "vmptrst", "vmclear", "vmfunc"}


def _functions_beyond_v2(path):
    """{demangled function name: instructions an x86-64-v2 CPU lacks} in `path`."""
    objdump = shutil.which("objdump")
    if objdump is None:
        pytest.skip("objdump not found")
    listing = subprocess.run([objdump, "-d", "--no-show-raw-insn", "-C", path],
                             capture_output=True, text=True, check=True).stdout
    found, function = {}, None
    header = re.compile(r"^[0-9a-f]+ <(.*)>:$")
    for line in listing.splitlines():
        m = header.match(line)
        if m:
            function = m.group(1)
            continue
        parts = line.split("\t")
        if len(parts) < 2 or not parts[0].strip().endswith(":"):
            continue
        mnemonic, _, operands = parts[1].strip().partition(" ")
        beyond = ((mnemonic.startswith("v") and mnemonic not in _NOT_SIMD)
                  or mnemonic in _V3_INTEGER or re.search(r"%(ymm|zmm|k[0-7])", operands))
        if beyond:
            found.setdefault(function, []).append(parts[1].strip())
    return found


def test_wide_instructions_only_in_the_dispatched_kernels():
    _portable_build()
    found = _functions_beyond_v2(LIBRARY)
    outside = sorted(f for f in found if "isa_x86_64_v3::" not in f and "isa_x86_64_v4::" not in f)
    assert not outside, outside[:20]
    v3 = [f for f in found if "isa_x86_64_v3::" in f]
    v4 = [f for f in found if "isa_x86_64_v4::" in f]
    assert any("ComputeRows" in f for f in v3) and any("BackpropCores" in f for f in v4)
    # The x86-64-v4 kernels are AVX-512 code: EVEX registers (ymm16-31, zmm, masks) appear.
    evex = re.compile(r"%(zmm|ymm(1[6-9]|2[0-9]|3[01])|k[1-7])\b")
    assert any(evex.search(i) for f in v4 for i in found[f])


def _cc_test_binary():
    # The interpreter's TF flags, as `make test` passes them: other flags would rebuild.
    result = subprocess.run(["make", "-C", CUSTOM_OPS, f"PYTHON={sys.executable}",
                             "build/tt_core_test"],
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return CC_TEST


def _qemu(cpu, *args, timeout=1200):
    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        pytest.skip("qemu-x86_64 not found (apt-get install qemu-user)")
    return subprocess.run([qemu, "-cpu", cpu, _cc_test_binary(), *args], capture_output=True,
                          text=True, timeout=timeout)


def test_core_runs_on_an_x86_64_v2_cpu():
    _portable_build()
    listed = _qemu("Nehalem", "--list-isas")
    assert listed.returncode == 0, listed.stderr[-3000:]
    assert listed.stdout.split() == ["baseline"]
    result = _qemu("Nehalem")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "== kernels: baseline" in result.stdout
    assert result.stdout.strip().endswith("all C++ tests passed")


def test_core_dispatches_to_avx2_on_an_x86_64_v3_cpu():
    _portable_build()
    listed = _qemu("Haswell", "--list-isas")
    if listed.returncode != 0:
        pytest.skip(f"this qemu cannot emulate Haswell: {listed.stderr[-300:]}")
    assert listed.stdout.split() == ["baseline", "x86-64-v3"]
    result = _qemu("Haswell", "PlainLookupMatchesReference")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "== kernels: x86-64-v3" in result.stdout
    assert result.stdout.strip().endswith("all C++ tests passed")
