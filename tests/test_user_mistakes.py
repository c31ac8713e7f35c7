"""Each user mistake, run as a user would (a fresh process): exit code 2, one `error:` line, no existing file
changed, and, for the desktop commands, no TensorFlow imported (the answer comes before its start-up)."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

pytestmark = pytest.mark.slow  # starts TensorFlow in subprocesses and exports

ROOT = Path(__file__).resolve().parents[1]
# runs `main(argv)` of a module, or a script as `python SCRIPT argv` would (the package importable as when
# installed), then reports whether TensorFlow was imported, on stderr's last line
RUNNER = """
import runpy, sys
module, argv = sys.argv[1], sys.argv[2:]
try:
    if module.endswith(".py"):
        sys.argv = [module, *argv]
        runpy.run_path(module, run_name="__main__")
        code = 0
    else:
        code = __import__(module, fromlist=["main"]).main(argv)
except SystemExit as e:  # a script's exit status, or argparse's refusals
    code = e.code
print("tensorflow imported" if "tensorflow" in sys.modules else "tensorflow not imported", file=sys.stderr)
sys.exit(code)
"""


def run(module, *argv, cwd=ROOT):
    env = {k: v for k, v in os.environ.items() if k != "TINYTL_DEBUG"}
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, module, *map(str, argv)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**env, "PYTHONPATH": str(ROOT)},
    )
    *lines, tf_line = done.stderr.strip().splitlines() or [""]
    return done.returncode, lines, tf_line, done.stdout


def snapshot(folder):
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in Path(folder).rglob("*") if p.is_file()}


def images(root, classes, n=2):
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("RGB", (20, 20), (40 * i, 90, 0)).save(root / c / f"{i}.png")
    return root


@pytest.fixture
def work(tmp_path):
    images(tmp_path / "flat", ["cat", "dog"])
    images(tmp_path / "one", ["cat"])
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text('{"mine": 1}')
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "model.keras").write_bytes(b"PK not really")
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "model.tflite").write_bytes(b"old model")
    (tmp_path / "exp" / "model.json").write_text("{}")
    (tmp_path / "exp" / "dir.tflite").mkdir()
    return tmp_path


def train(work, *extra, data="flat", out="new"):
    return ("tinytl_tf.cli", "train", "--data", work / data, "--out", work / out, *extra)


MISTAKES = {
    "one class": (lambda w: train(w, data="one"), "only one class folder"),
    "negative lr": (lambda w: train(w, "--lr", "-1"), "argument --lr: must be a positive finite number"),
    "zero lr": (lambda w: train(w, "--lr", "0"), "argument --lr: must be a positive finite number"),
    "val fraction 1.5": (
        lambda w: train(w, "--val-fraction", "1.5"),
        "argument --val-fraction: must be between 0 and 1",
    ),
    "zero epochs": (lambda w: train(w, "--epochs", "0"), "argument --epochs: must be at least 1"),
    "batch size 0": (lambda w: train(w, "--batch-size", "0"), "argument --batch-size: must be at least 1"),
    "missing data": (lambda w: train(w, data="nowhere"), "does not exist"),
    "unknown method": (lambda w: train(w, "--method", "tinytl-x"), "unknown transfer method 'tinytl-x'"),
    "odd resolution": (lambda w: train(w, "--resolution", "31"), "resolution"),
    "unrelated metrics.json in --out": (lambda w: train(w, out="run"), "metrics.json already exists; pass --overwrite"),
    "existing model.keras": (lambda w: train(w, out="done"), "model.keras already exists; pass --overwrite"),
    "evaluate a missing model": (
        lambda w: ("tinytl_tf.cli", "evaluate", "--model", w / "none.keras", "--data", w / "flat"),
        "no model file",
    ),
    "memory batch 0": (lambda w: ("tinytl_tf.cli", "memory", "--batch-size", "0"), "must be at least 1"),
    "memory of a missing model": (
        lambda w: ("tinytl_tf.cli", "memory", "--model", w / "exp" / "none.tflite"),
        "no model file",
    ),
    "memory of a file that is not a model": (
        lambda w: ("tinytl_tf.cli", "memory", "--model", w / "exp" / "model.tflite"),
        "is not a TFLite model",
    ),
    "export over an existing pair": (
        lambda w: (
            ROOT / "export" / "to_tflite.py",
            "--model",
            w / "done" / "model.keras",
            "--out",
            w / "exp" / "model.tflite",
        ),
        "already exist; pass --overwrite",
    ),
    "export to a directory": (
        lambda w: (
            ROOT / "export" / "to_tflite.py",
            "--model",
            w / "done" / "model.keras",
            "--out",
            w / "exp" / "dir.tflite",
        ),
        "is a directory",
    ),
    "export subcommand over an existing pair": (
        lambda w: (
            "tinytl_tf.cli",
            "export",
            "--model",
            w / "done" / "model.keras",
            "--out",
            w / "exp" / "model.tflite",
        ),
        "already exist; pass --overwrite",
    ),
    "import-ofa to a file that is no .npz": (
        lambda w: ("tinytl_tf.cli", "import-ofa", "--checkpoint", w / "none", "--out", w / "exp" / "ofa.bin"),
        "--out must end in .npz",
    ),
    "export with lr 0": (
        lambda w: (
            ROOT / "export" / "to_tflite.py",
            "--model",
            w / "done" / "model.keras",
            "--out",
            w / "exp" / "new.tflite",
            "--lr",
            "0",
        ),
        "must be a positive",
    ),
    "caltech prepare without tarballs": (
        lambda w: ("tinytl_tf.cli", "caltech", "prepare", w / "nowhere", w / "caltech"),
        "no Caltech-101 tarballs",
    ),
}


@pytest.mark.parametrize("case", sorted(MISTAKES))
def test_mistake_is_one_line_exit_2_nothing_changed_no_tensorflow(work, case):
    make, message = MISTAKES[case]
    before = snapshot(work)
    code, lines, tf_line, stdout = run(*make(work))
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert tf_line == "tensorflow not imported" and stdout == ""
    assert snapshot(work) == before
    assert not (work / "new").exists() and not (work / "caltech").exists()


def test_export_without_a_step_count_asks_for_one(work):
    before = snapshot(work)
    code, lines, tf_line, _ = run(
        ROOT / "export" / "to_tflite.py",
        "--model",
        work / "done" / "model.keras",
        "--out",
        work / "done" / "model.tflite",
    )
    assert code == 2 and len(lines) == 1 and "cannot tell how many steps the device will train" in lines[0], lines
    assert tf_line == "tensorflow not imported" and snapshot(work) == before


def test_tensorflow_starts_quietly_unless_verbose():
    script = (
        "import sys; from tinytl_tf import cliargs; cliargs.quiet_tensorflow(sys.argv[1] == 'verbose'); "
        "import tensorflow as tf; print(int(tf.reduce_sum(tf.constant([1, 2])))); tf.get_logger().warning('noise')"
    )
    quiet, loud = (
        subprocess.run(
            [sys.executable, "-c", script, mode],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        for mode in ("quiet", "verbose")
    )
    assert quiet.stdout == loud.stdout == "3\n"
    assert quiet.stderr == "" and loud.stderr != "" and "noise" in loud.stderr
