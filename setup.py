"""pip-installable tt_keras; building the package compiles the op library with make.

    pip install .                                   # builds tt_keras/ops/_tt_ops.so
    pip wheel . --no-deps --no-build-isolation -w dist

The op library must be built against the TensorFlow it runs with (a custom op library only
loads into the TensorFlow it was compiled against), so it is compiled at install time against
the installed TF. It is built portable (an x86-64-v2
baseline, the hot kernels also for x86-64-v3 and x86-64-v4, chosen at run time: docs/ops.md),
so a wheel runs on other x86-64 machines; TT_KERAS_MARCH=-march=native builds one for this
machine only. MARCH and CXXFLAGS in the environment are ignored here: a compiler
environment's own flags (conda sets CXXFLAGS) would otherwise replace the library's.
"""

import os
import subprocess
import sys

from setuptools import Distribution, find_packages, setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


class BuildWithOps(build_py):
    """Runs `make -C custom_ops` before copying the package, so the .so is included."""

    def run(self):
        env = {k: v for k, v in os.environ.items()
               if k not in ("MARCH", "CXXFLAGS", "EXTRA_CXXFLAGS")}
        command = ["make", "-C", os.path.join(HERE, "custom_ops"), f"PYTHON={sys.executable}"]
        if os.environ.get("TT_KERAS_MARCH"):
            command.append(f"MARCH={os.environ['TT_KERAS_MARCH']}")
        subprocess.check_call(command, env=env)
        super().run()


class BinaryDistribution(Distribution):
    """The wheel holds a compiled library: tag it for this platform and Python."""

    def has_ext_modules(self):
        return True


setup(
    name="tt_keras",
    version="0.1.0",
    description="Tensor-Train compressed embedding tables (TT-Rec) for TensorFlow and Keras",
    packages=find_packages(include=["tt_keras", "tt_keras.*"]),
    package_data={"tt_keras.ops": ["_tt_ops.so", "_tt_ops.version"]},
    python_requires=">=3.9",
    install_requires=["tensorflow>=2.21,<2.22", "numpy"],
    extras_require={"legacy": ["tf_keras>=2.21,<2.22"],
                    "examples": ["tensorflow-recommenders==0.7.7", "absl-py", "matplotlib",
                                 "tensorboard>=2.21,<2.22"]},
    cmdclass={"build_py": BuildWithOps},
    distclass=BinaryDistribution,
)
