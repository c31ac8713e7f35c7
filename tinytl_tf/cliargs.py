"""What the command lines share, TF-free: argument types and ranges, cheap checks of paths, and a quiet
TensorFlow start. Every user mistake is answered here, before TensorFlow's seconds of start-up."""

import argparse
import contextlib
import logging
import math
import os
import sys
from pathlib import Path

from tinytl_tf.errors import TinyTLError

DEBUG_ENV = "TINYTL_DEBUG"
SPLIT_FILE = "split.json"  # beside model.keras: the images a flat folder's split held out, for `evaluate`
CURVE_FILE = "training_curve.png"
TRAIN_OUTPUTS = ("model.keras", "metrics.json", SPLIT_FILE, CURVE_FILE)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error (`error: ...` and where to look, exit 2) instead of usage + error."""

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def count(minimum):
    """An argparse type: an integer >= `minimum`."""

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def _number(text):
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def positive_float(text):
    """An argparse type: a finite number > 0 (a learning rate, a budget, a timeout)."""
    value = _number(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
    return value


def fraction(text):
    """An argparse type: a number strictly between 0 and 1."""
    value = _number(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive), got {text}")
    return value


def unit_interval(text):
    """An argparse type: a number in [0, 1) (label smoothing, dropout)."""
    value = _number(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 0 and below 1, got {text}")
    return value


def json_safe(value):
    """`value` with every NaN or infinite float replaced by None: `json.dumps` would write bare NaN, not JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def debug():
    return bool(os.environ.get(DEBUG_ENV))


USER_ERRORS = (TinyTLError, ValueError, OSError)  # this package's errors; bad paths, data, names and numbers


def run_command(command):
    """The one error wrapper of every command line: runs `command()` and returns its exit status, 0 or, for a
    user error, the error's status (2 unless a `TinyTLError` says otherwise) after one `error:` line on stderr.
    With $TINYTL_DEBUG the error propagates with its traceback."""
    try:
        command()
    except USER_ERRORS as e:
        if debug():
            raise
        print(f"error: {e}", file=sys.stderr)
        return getattr(e, "exit_status", 2)
    return 0


def quiet_tensorflow(verbose=False):
    """Import TensorFlow without its C++/absl start-up log (oneDNN, CUDA probing, a `cuInit` "E" line that reads
    like a failure) and without its Python warnings (e.g. the retracing notice when `search` traces one function
    per measured sub-net, as it must). `verbose` or $TINYTL_DEBUG keeps everything. The lines absl prints before its
    logging is initialised ignore every setting, so stderr's file descriptor points at /dev/null during the import
    itself."""
    if verbose or debug() or "tensorflow" in sys.modules:
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"  # also over a laxer inherited level: quiet means quiet
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        import tensorflow
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    tensorflow.get_logger().setLevel(logging.ERROR)


@contextlib.contextmanager
def stdout_to_stderr():
    """Progress printed to stdout (Keras' progress bars) goes to stderr, so stdout carries only the result."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def check_export_target(out, overwrite=False):
    """Refuse, before minutes of converting, an `out` that is no `.tflite` file name, or whose `.tflite`, metadata
    or initial-values file exists when `overwrite` is False; returns (tflite path, metadata path)."""
    from tinytl_tf import initial_values
    from tinytl_tf.contract import model_json_path

    out = Path(out)
    meta_path = Path(model_json_path(out))
    if out.suffix != ".tflite":
        raise ValueError(f"--out must name a .tflite file, got {out}")
    files = (out, meta_path, Path(initial_values.path_for(out)))
    for path in files:
        if path.is_dir():
            raise IsADirectoryError(f"{path} is a directory; pass a .tflite file name for --out")
    existing = [str(p) for p in files if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{' and '.join(existing)} already exist; pass --overwrite to replace them or choose another --out"
        )
    return out, meta_path


def check_output_dir(out, overwrite, create=True):
    """Refuse an `out` holding any file `train` writes unless `overwrite`; with `create`, make the folder and
    remove the temp files of a killed save."""
    from tinytl_tf.atomic import remove_leftovers

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file; pass a folder")
    existing = [name for name in TRAIN_OUTPUTS if (out / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{out / existing[0]} already exists; pass --overwrite to replace "
            f"{', '.join(existing)} or choose another --out"
        )
    if not create:
        return out
    out.mkdir(parents=True, exist_ok=True)
    for name in TRAIN_OUTPUTS:
        for leftover in remove_leftovers(out / name):
            print(f"removed {leftover}, left by an interrupted save", file=sys.stderr)
    return out
