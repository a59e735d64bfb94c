"""`make demo`: the DLRM comparison, dense vs TT-compressed tables (examples/dlrm/README.md).

1. synthetic Criteo-like data on DLRM's full Kaggle table sizes, 10,000 steps each, the TT
   model in the quality study's configuration (examples/dlrm/config.py RECOMMENDED_TT: 10
   TT tables at rank 8 with hot-row caches, 100x smaller than dense in all; about 10 minutes
   on 2 cores);
2. the real Criteo sample (`--data=criteo_sample`: $TT_KERAS_CRITEO_SAMPLE, else
   ../shared/data/criteo_kaggle_sample.tsv from the repository root), where present.

Extra arguments go to both runs (absl flags; later ones win), e.g.
`python -m examples.demo --steps=2000 --table_scale=10`. Results, curves (PNG) and JSON land
in runs/dlrm/synthetic and runs/dlrm/sample.
"""

import os
import subprocess
import sys

from examples.dlrm.config import RECOMMENDED_TT
from examples.dlrm.sample import REPO_ROOT, criteo_sample_path


def main(argv):
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1")  # TFRS needs legacy Keras
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    recommended = [f"--{k}={v}" for k, v in RECOMMENDED_TT.items()]
    runs = [["--data=synthetic", "--model=both", "--steps=10000", "--steps_per_epoch=1000",
             "--out_dir=runs/dlrm/synthetic"] + recommended]
    if os.path.exists(criteo_sample_path()):
        runs.append(["--data=criteo_sample", "--model=both", "--steps=400",
                     "--steps_per_epoch=80", "--out_dir=runs/dlrm/sample"])
    else:
        print(f"(no Criteo sample at {criteo_sample_path()}: synthetic run only)")
    for args in runs:
        cmd = [sys.executable, "-m", "examples.dlrm.train", "--verbose=2"] + args + argv
        print("$ " + " ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, cwd=REPO_ROOT, env=env, check=True)


if __name__ == "__main__":
    main(sys.argv[1:])
