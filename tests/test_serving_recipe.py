"""docs/serving.md's recipe for building TF Serving with the op names real Bazel targets.

Bazel cannot run here, so custom_ops/BUILD is evaluated as the Python subset of Starlark it
is written in (package, licenses, glob, cc_library, cc_binary recorded), and checked against
the recipe and against custom_ops/Makefile, which builds the library the tests load."""

import glob as globlib
import os
import re

import pytest

pytestmark = pytest.mark.no_keras

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUSTOM_OPS = os.path.join(REPO, "custom_ops")
DOC = os.path.join(REPO, "docs", "serving.md")
SYSTEM_PREFIXES = ("tensorflow/", "absl/", "xla/", "tsl/", "Eigen/", "unsupported/",
                   "third_party/")


def _glob(patterns, exclude=()):
    def expand(pattern_list):
        return {os.path.relpath(p, CUSTOM_OPS) for pattern in pattern_list
                for p in globlib.glob(os.path.join(CUSTOM_OPS, pattern))}
    return sorted(expand(patterns) - expand(exclude))


def load_build():
    """{target name: (rule, attributes)} of custom_ops/BUILD."""
    targets = {}

    def rule(kind):
        def record(name, **attrs):
            assert name not in targets, f"target {name} defined twice"
            targets[name] = (kind, attrs)
        return record

    scope = {"package": lambda **_: None, "licenses": lambda *_: None, "glob": _glob,
             "cc_library": rule("cc_library"), "cc_binary": rule("cc_binary")}
    with open(os.path.join(CUSTOM_OPS, "BUILD")) as f:
        exec(compile(f.read(), "custom_ops/BUILD", "exec"), scope)  # pylint: disable=exec-used
    return targets


def makefile_cpu_sources():
    with open(os.path.join(CUSTOM_OPS, "Makefile")) as f:
        text = f.read().replace("\\\n", " ")
    match = re.search(r"^CPU_SRCS\s*:?=(.*)$", text, re.M)
    assert match, "custom_ops/Makefile has no CPU_SRCS"
    return sorted(match.group(1).split())


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
    targets = load_build()
    package, labels = recipe()
    for label_package, name in labels:
        assert label_package == package, (label_package, package)
        assert name in targets, f"custom_ops/BUILD has no target {name!r}"
        kind, attrs = targets[name]
        assert kind == "cc_library" and attrs.get("alwayslink") == 1, (name, kind, attrs)
        assert "@org_tensorflow//tensorflow/core:framework" in attrs["deps"]


def test_the_library_compiles_what_the_makefile_compiles():
    targets = load_build()
    _, labels = recipe()
    for _, name in labels:
        srcs = targets[name][1]["srcs"]
        sources = sorted(s for s in srcs if s.endswith(".cc"))
        assert sources == makefile_cpu_sources()
        assert not [s for s in srcs if s.endswith("_gpu.cc")]
        # Every local header the sources include (transitively) is in srcs, so the
        # sandboxed compile finds it.
        seen, todo = set(), list(sources)
        while todo:
            path = todo.pop()
            for include in _local_includes(path):
                header = os.path.normpath(os.path.join(os.path.dirname(path), include))
                assert header in srcs, f"{path} includes {include}, which is not in srcs"
                if header not in seen:
                    seen.add(header)
                    todo.append(header)
