"""docs/serving.md's recipe for building TF Serving with the op names real Bazel targets.

Bazel cannot run here, so custom_ops/BUILD is evaluated as the Python subset of Starlark it
is written in (tests/bazel_build.py), and checked against the recipe and against
custom_ops/Makefile, which builds the library the tests load."""

import os
import re

import pytest

from tests.bazel_build import CUSTOM_OPS, ROOT, evaluate_build, local_closure, make_variables

pytestmark = pytest.mark.no_keras

DOC = os.path.join(ROOT, "docs", "serving.md")
SYSTEM_PREFIXES = ("tensorflow/", "absl/", "xla/", "tsl/", "Eigen/", "unsupported/",
                   "third_party/")


def recipe():
    """(the package the doc's `cp` creates, the tt_keras labels it adds)."""
    with open(DOC) as f:
        text = f.read()
    copy = re.search(r"cp -r \S+/custom_ops (tensorflow_serving/\S+)", text)
    assert copy, "docs/serving.md does not copy custom_ops into the serving tree"
    labels = re.findall(r'"//(tensorflow_serving/custom_ops/[\w/]+):(\w+)"', text)
    assert labels, "docs/serving.md adds no target to SUPPORTED_TENSORFLOW_OPS"
    return copy.group(1), labels


def _local_includes(path):
    with open(os.path.join(CUSTOM_OPS, path)) as f:
        names = re.findall(r'^\s*#include\s+"([^"]+)"', f.read(), re.M)
    return [n for n in names if not n.startswith(SYSTEM_PREFIXES)]


def test_recipe_labels_name_alwayslink_libraries_in_the_copied_package():
    rules = evaluate_build(os.path.join(CUSTOM_OPS, "BUILD"))
    package, labels = recipe()
    for label_package, name in labels:
        assert label_package == package, (label_package, package)
        assert name in rules, f"custom_ops/BUILD has no target {name!r}"
        rule = rules[name]
        assert rule["kind"] == "cc_library" and rule.get("alwayslink") == 1, (name, rule)
        assert "@org_tensorflow//tensorflow/core:framework" in rule["deps"]


def test_the_library_compiles_what_the_makefile_compiles():
    rules = evaluate_build(os.path.join(CUSTOM_OPS, "BUILD"))
    _, labels = recipe()
    cpu_sources = sorted(make_variables("CPU_SRCS")["CPU_SRCS"])
    for _, name in labels:
        files = local_closure(rules, name)
        sources = sorted(f for f in files if f.endswith(".cc"))
        assert sources == cpu_sources
        assert not [f for f in files if f.endswith("_gpu.cc")]
        # Every local header the sources include (transitively) is declared, so the
        # sandboxed compile finds it.
        seen, todo = set(), list(sources)
        while todo:
            path = todo.pop()
            for include in _local_includes(path):
                header = os.path.normpath(os.path.join(os.path.dirname(path), include))
                assert header in files, f"{path} includes {include}, which is not declared"
                if header not in seen:
                    seen.add(header)
                    todo.append(header)
