"""`python export/to_tflite.py ...` is `tinytl export ...`: export a trained model.keras to an on-device training
.tflite and its .json metadata (see `tinytl export --help`). Needs the package installed (`pip install -e .`, which
`requirements.txt` does)."""

import sys

from tinytl_tf.cli import main

if __name__ == "__main__":
    sys.exit(main(["export", *sys.argv[1:]]))
