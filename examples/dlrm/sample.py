"""Where the real Criteo sample is: one place for the trainer, the demo, the tests and docs.

The sample is 11,609 rows of Criteo Kaggle's train.txt. Its path is the environment variable
TT_KERAS_CRITEO_SAMPLE when set (absolute, or relative to the current directory), else
`../shared/data/criteo_kaggle_sample.tsv` relative to the repository root. The trainer reads
it for `--data=criteo_sample`.

    python -m examples.dlrm.sample      # prints the path it resolves to

Imports no TensorFlow, so the demo can ask for the path cheaply.
"""

import os

ENV_VAR = "TT_KERAS_CRITEO_SAMPLE"
DEFAULT_PATH = os.path.join("..", "shared", "data", "criteo_kaggle_sample.tsv")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def criteo_sample_path() -> str:
    """The absolute path of the Criteo sample ($TT_KERAS_CRITEO_SAMPLE, else the default);
    the file may be absent."""
    path = os.environ.get(ENV_VAR) or os.path.join(REPO_ROOT, DEFAULT_PATH)
    return os.path.normpath(os.path.abspath(path))


if __name__ == "__main__":
    print(criteo_sample_path())
