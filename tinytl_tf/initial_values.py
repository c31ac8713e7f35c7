"""The trainable tensors' initial values, kept beside an exported model (`X.init.npz` beside `X.tflite`), not in it.

Inside the `.tflite` every variable starts from zeros (a FILL in the initializer), so no page of the model file holds
a value that training overwrites; the device then loads these values once with the model's `load` signature. Kept
in the file, they would be read once by the initializer and then stay resident beside the variables for the whole
run (7.9 MB for TinyTL-L+B on ProxylessNAS-Mobile). `set_weights` cannot load them instead: its inputs (every
trainable tensor and optimizer slot) stay allocated in its arena after the call, a second full copy.

`load(values, group)` takes one variable group's value at a time (`initial_values.groups` in X.json: the tensors
of each group, whose flattened values concatenated and zero-padded to the signature's length make `values`), so
what stays allocated is one group's worth.

File layout, the device checkpoint's (`tinytl_tf.ondevice.checkpoint`): an uncompressed `.npz` with `weight/<name>`
per trainable tensor and `meta`, a JSON string {"format": FORMAT, "fingerprint": sha256 of the `.tflite`}.
TF-free: numpy, json and hashlib only (the memory probe imports it).
"""

import hashlib
import io
import json
import os

import numpy as np

from tinytl_tf import contract
from tinytl_tf.errors import TinyTLError

FORMAT = "tinytl_tf/initial-values-v1"
SUFFIX = ".init.npz"
WEIGHT_PREFIX = "weight/"
META_KEY = "meta"


class InitialValuesError(TinyTLError, ValueError):
    """The initial-values file is missing, damaged or another model's; the message says which and what to do."""


def path_for(tflite_path):
    """`X.init.npz` beside `X.tflite`."""
    root, _ = os.path.splitext(os.fspath(tflite_path))
    return root + SUFFIX


def encode(fingerprint, weights):
    """The file's bytes for {name: array}, the initial values of the model with sha256 `fingerprint`."""
    meta = json.dumps({"format": FORMAT, "fingerprint": fingerprint})
    buffer = io.BytesIO()
    np.savez(buffer, **{META_KEY: np.array(meta)}, **{WEIGHT_PREFIX + k: np.asarray(v) for k, v in weights.items()})
    return buffer.getvalue()


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read(path, spec, fingerprint):
    """{name: array} (read on access) from `path`, checked against X.json's `initial_values` entry `spec` and the
    model's `fingerprint`: the file's sha256, format, model and every group tensor present."""
    if not os.path.exists(path):
        raise InitialValuesError(
            f"the model's initial values {path} are missing: copy the {os.path.basename(path)} exported with the "
            ".tflite next to it"
        )
    if file_sha256(path) != spec["sha256"]:
        raise InitialValuesError(
            f"{path} is not the initial-values file exported with this model (its sha256 differs from the "
            "metadata's); copy the one exported with the .tflite next to it"
        )
    try:
        z = np.load(path, allow_pickle=False)
        meta = json.loads(str(z[META_KEY][()]))
    except Exception as e:  # zipfile, numpy and json each signal damaged bytes their own way
        raise InitialValuesError(f"{path} is unreadable ({type(e).__name__}: {e})") from None
    if meta.get("format") != FORMAT or meta.get("fingerprint") != fingerprint:
        raise InitialValuesError(f"{path} holds the initial values of another model (or another format)")
    missing = [n for group in spec["groups"] for n in group if WEIGHT_PREFIX + n not in z.files]
    if missing:
        raise InitialValuesError(f"{path} lacks the tensors {missing[:5]}")
    return _Tensors(z)


class _Tensors:
    """{name: array} read from the archive on access, so loading holds one group's values at a time."""

    def __init__(self, archive):
        self.archive = archive

    def __getitem__(self, name):
        return self.archive[WEIGHT_PREFIX + name]


def group_values(spec, weights):
    """(group index, float32 vector) per variable group: its tensors flattened, concatenated, zero-padded to
    `spec["length"]`."""
    for j, names in enumerate(spec["groups"]):
        flat = np.concatenate([np.asarray(weights[n], np.float32).reshape(-1) for n in names])
        values = np.zeros(spec["length"], np.float32)
        values[: flat.size] = flat
        yield j, values


def load(interpreter, spec, weights):
    """Assign every group through the `load` signature of a LiteRT `interpreter`."""
    runner = interpreter.get_signature_runner(contract.SIGNATURE_LOAD)
    for j, values in group_values(spec, weights):
        runner(**{contract.INPUT_LOAD_VALUES: values, contract.INPUT_LOAD_GROUP: np.int32(j)})


def spec_beside(tflite_path):
    """(path of X.init.npz, X.json's `initial_values` entry) of the model at `tflite_path` when its X.json names
    them (a model exported by tinytl_tf), else None."""
    meta_path = contract.model_json_path(tflite_path)
    if not os.path.exists(meta_path):
        return None
    with open(meta_path, encoding="utf-8") as f:
        spec = json.load(f).get("initial_values")
    if not spec:
        return None
    return os.path.join(os.path.dirname(os.path.abspath(tflite_path)), os.path.basename(spec["file"])), spec


def load_beside(interpreter, tflite_path):
    """Load the initial values of the model at `tflite_path` into its `interpreter` when its X.json names them
    (a model exported by tinytl_tf); other models are left as they are. Returns whether it loaded them."""
    found = spec_beside(tflite_path)
    if found is None:
        return False
    values_path, spec = found
    load(interpreter, spec, read(values_path, spec, file_sha256(tflite_path)))
    return True


def open_interpreter(tflite_path, **kwargs):
    """A LiteRT Interpreter of an exported model (keyword arguments go to it) with its initial values loaded."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=os.fspath(tflite_path), **kwargs)
    load_beside(interpreter, tflite_path)
    return interpreter
