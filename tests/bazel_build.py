"""BUILD files and the Makefile read by the tests that keep them in step (no Bazel here).

A BUILD file is evaluated as the Python subset of Starlark it is written in: `load` reads
the named .bzl file, `glob` expands against the package's files, and every rule is recorded
with its attributes.
"""

import glob
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUSTOM_OPS = os.path.join(ROOT, "custom_ops")


def make_variables(*names):
    """Values of custom_ops/Makefile variables, as lists of words."""
    out = subprocess.run(["make", "-s", "-C", CUSTOM_OPS] + [f"print-{n}" for n in names],
                         capture_output=True, text=True, check=True, timeout=120).stdout
    lines = out.splitlines()
    assert len(lines) == len(names), out
    return {n: line.split() for n, line in zip(names, lines)}


def evaluate_build(path):
    """The rules a BUILD file declares, {name: {"kind": rule, **attributes}}, with globs
    expanded against the files of its package."""
    package = os.path.dirname(path)
    rules = {}

    def bazel_glob(include, exclude=()):
        def expand(patterns):
            found = set()
            for pattern in patterns:
                for f in glob.glob(os.path.join(package, pattern), recursive=True):
                    found.add(os.path.relpath(f, package))
            return found
        return sorted(expand(include) - expand(exclude))

    def rule(kind):
        def declare(name, **attributes):
            assert name not in rules, f"{path}: target {name} defined twice"
            rules[name] = dict(kind=kind, **attributes)
        return declare

    def load(label, *symbols):
        package_name, _, file_name = label.lstrip("/").partition(":")
        scope = {}
        with open(os.path.join(ROOT, package_name, file_name)) as f:
            exec(compile(f.read(), file_name, "exec"), scope)  # pylint: disable=exec-used
        for symbol in symbols:
            namespace[symbol] = scope[symbol]

    namespace = {"glob": bazel_glob, "load": load, "package": lambda **_: None,
                 "licenses": lambda _: None}
    for kind in ("cc_library", "cc_binary", "cc_test", "py_library"):
        namespace[kind] = rule(kind)
    with open(path) as f:
        exec(compile(f.read(), path, "exec"), namespace)  # pylint: disable=exec-used
    return rules


def rule_files(rule, suffix=""):
    """The files a rule lists (srcs, hdrs, textual_hdrs) that end with `suffix`."""
    files = list(rule.get("srcs", [])) + list(rule.get("hdrs", []))
    files += list(rule.get("textual_hdrs", []))
    return sorted(f for f in files if f.endswith(suffix))


def local_closure(rules, name):
    """The files of rule `name` and of the rules of its package it depends on (":x")."""
    files, todo, seen = set(), [name], set()
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        files.update(rule_files(rules[current]))
        todo.extend(d[1:] for d in rules[current].get("deps", []) if d.startswith(":"))
    return files
