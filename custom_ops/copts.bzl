"""Compiler options of the TT op library for Bazel, as custom_ops/Makefile's OPT_FLAGS and
default MARCH (tests/test_build.py keeps them in step): a portable x86-64-v2 baseline;
tt_core_dispatch.cc adds the x86-64-v3 and x86-64-v4 kernels and picks one at run time."""

TT_COPTS = [
    "-O3",
    "-ffp-contract=fast",
    "-fopenmp-simd",
    "-fPIC",
    "-march=x86-64-v2",
    "-mtune=generic",
    "-std=c++17",
    "-D_GLIBCXX_USE_CXX11_ABI=1",
    "-Wno-psabi",
]
