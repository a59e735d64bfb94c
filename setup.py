"""pip-installable tt_keras; building the package compiles the op library with make.

    pip install .             # builds tt_keras/ops/_tt_ops.so against the installed TF

The op library must be built against the TensorFlow it runs with (spec section 8), so it is
compiled at install time rather than shipped.
"""

import os
import subprocess
import sys

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


class BuildWithOps(build_py):
    """Runs `make -C custom_ops` before copying the package, so the .so is included."""

    def run(self):
        subprocess.check_call(["make", "-C", os.path.join(HERE, "custom_ops"),
                               f"PYTHON={sys.executable}"])
        super().run()


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
)
