"""A `.tflite` exported by tinytl_tf, loaded with LiteRT and checked against its metadata before anything runs.

The metadata of `X.tflite` is `X.json` beside it (`model.json` for `model.tflite`; `contract.model_json_path`).

A device must not train a model it misunderstands: a wrong label order or input size would silently train garbage.
So `DeviceModel` refuses, naming what is missing or different, a file that is not a TFLite flatbuffer, has no
`model.json` beside it, has one of another format or for other bytes (sha256 `fingerprint`), or lacks a signature
or tensor that `model.json` names (or has one with another shape/dtype), or whose initial values (`X.init.npz`,
see `tinytl_tf.initial_values`) are missing or not the ones exported with it. The variables start at zero in the
file; opening a model loads the initial values into them.
"""

import hashlib
import json
import os

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from tinytl_tf import contract, initial_values
from tinytl_tf.errors import TinyTLError
from tinytl_tf.ondevice.preprocessing import Preprocessing

TFLITE_IDENTIFIER = b"TFL3"  # bytes 4..8 of every TFLite flatbuffer

# The tensors this package calls, per signature: (inputs, outputs).
REQUIRED_TENSORS = {
    contract.SIGNATURE_TRAIN: (
        {contract.INPUT_IMAGE, contract.INPUT_LABEL, contract.INPUT_LEARNING_RATE},
        {contract.OUTPUT_LOSS, contract.OUTPUT_LOGITS},
    ),
    contract.SIGNATURE_INFER: ({contract.INPUT_IMAGE}, {contract.OUTPUT_LOGITS, contract.OUTPUT_PROBABILITIES}),
    contract.SIGNATURE_GET_WEIGHTS: ({contract.INPUT_PLACEHOLDER}, {contract.STEP_TENSOR}),
    contract.SIGNATURE_SET_WEIGHTS: ({contract.STEP_TENSOR}, {contract.STEP_TENSOR}),
    contract.SIGNATURE_LOAD: ({contract.INPUT_LOAD_VALUES, contract.INPUT_LOAD_GROUP}, {contract.INPUT_LOAD_GROUP}),
}


class ModelError(TinyTLError, ValueError):
    """The file is not a usable model of this project; the message names the file and what is missing or wrong."""


class DeviceModel:
    """One LiteRT interpreter holding the model's variables (trainables, optimizer slots, step counter).

    Attributes: `path`, `meta` (model.json), `fingerprint`, `labels`, `num_classes`, `image_shape` ([1, S, S, 3]),
    `weight_specs` ({name: (shape, dtype)} of every get_weights tensor) and `preprocessing`.
    The methods are thin typed wrappers of the four signatures; validation of what goes in is `Trainer`'s job.
    """

    def __init__(self, path):
        self.path = os.fspath(path)
        data = _read_tflite(self.path)
        self.meta = _read_metadata(self.path)
        self.fingerprint = hashlib.sha256(data).hexdigest()
        if self.meta["fingerprint"] != self.fingerprint:
            raise ModelError(
                f"{contract.model_json_path(self.path)} describes another file: its fingerprint is "
                f"{self.meta['fingerprint']!r} but {self.path} has sha256 {self.fingerprint}; "
                f"copy the {os.path.basename(contract.model_json_path(self.path))} exported with this "
                ".tflite next to it"
            )
        try:
            self.interpreter = Interpreter(model_content=data)  # the bytes just hashed, not a second read
        except (ValueError, RuntimeError) as e:
            raise ModelError(f"{self.path}: LiteRT cannot load it ({e})") from None
        try:
            _check_signatures(self.path, self.meta, self.interpreter)
            self.labels = tuple(self.meta["labels"])
            self.num_classes = int(self.meta["num_classes"])
            self.image_shape = tuple(
                self.meta["signatures"][contract.SIGNATURE_TRAIN]["inputs"][contract.INPUT_IMAGE]["shape"]
            )
            self.weight_specs = {w["name"]: (tuple(w["shape"]), w["dtype"]) for w in self.meta["weights"]}
            self.preprocessing = _preprocessing(self.path, self.meta, self.image_shape)
        except (KeyError, TypeError, AttributeError) as e:  # a hand-edited model.json missing nested entries
            raise ModelError(f"{contract.model_json_path(self.path)} is malformed ({type(e).__name__}: {e})") from None
        if len(self.labels) != self.num_classes:
            raise ModelError(
                f"{contract.model_json_path(self.path)} has {len(self.labels)} labels for "
                f"num_classes={self.num_classes}"
            )
        self._runners = {key: self.interpreter.get_signature_runner(key) for key in REQUIRED_TENSORS}
        spec = self.meta["initial_values"]
        try:
            values = initial_values.read(
                os.path.join(os.path.dirname(os.path.abspath(self.path)), os.path.basename(spec["file"])),
                spec,
                self.fingerprint,
            )
            initial_values.load(self.interpreter, spec, values)
        except initial_values.InitialValuesError as e:
            raise ModelError(str(e)) from None
        except (KeyError, TypeError) as e:
            raise ModelError(f"{contract.model_json_path(self.path)}: malformed 'initial_values' ({e})") from None

    def train(self, x, y, lr):
        """One optimizer step on float32 x [1, S, S, 3], int32 y [1], float32 lr (<= 0: the in-model schedule)."""
        out = self._runners[contract.SIGNATURE_TRAIN](
            **{contract.INPUT_IMAGE: x, contract.INPUT_LABEL: y, contract.INPUT_LEARNING_RATE: lr}
        )
        return float(out[contract.OUTPUT_LOSS]), out[contract.OUTPUT_LOGITS]

    def infer(self, x):
        """Class probabilities [1, num_classes] of float32 x [1, S, S, 3]."""
        return self._runners[contract.SIGNATURE_INFER](**{contract.INPUT_IMAGE: x})[contract.OUTPUT_PROBABILITIES]

    def get_weights(self):
        """{name: array} of every trainable tensor, optimizer slot and the step counter (fresh copies)."""
        return self._runners[contract.SIGNATURE_GET_WEIGHTS](**{contract.INPUT_PLACEHOLDER: np.float32(0)})

    def weight_views(self):
        """{name: array} as `get_weights`, but views of the signature's outputs where LiteRT holds them: no copy,
        valid until the next call. (The runner copies every output; on ProxylessNAS-Mobile TinyTL-L+B with Adam
        that is 23.5 MB per call.) Uses the ai_edge_litert wrapper's tensor views, as its `tensor()` does."""
        runner = self._runners[contract.SIGNATURE_GET_WEIGHTS]
        wrapper, index = self.interpreter._interpreter, runner._subgraph_index
        wrapper.AllocateTensors(index)
        wrapper.SetTensor(runner._inputs[contract.INPUT_PLACEHOLDER], np.float32(0), index)
        wrapper.Invoke(index)
        return {name: wrapper.tensor(self.interpreter, t, index) for name, t in runner._outputs}

    def set_weights(self, weights):
        self._runners[contract.SIGNATURE_SET_WEIGHTS](**weights)

    def weights_mismatch(self, weights):
        """Why `weights` ({name: array}) cannot go into set_weights, or None if it fits exactly."""
        missing, extra = sorted(set(self.weight_specs) - set(weights)), sorted(set(weights) - set(self.weight_specs))
        if missing or extra:
            return f"tensor names differ from the model's: missing {missing[:5]}, unknown {extra[:5]}"
        for name, (shape, dtype) in self.weight_specs.items():
            value = np.asarray(weights[name])
            if value.shape != shape or value.dtype != np.dtype(dtype):
                return f"tensor '{name}' is {value.dtype}{list(value.shape)}, the model's is {dtype}{list(shape)}"
        return None


def _read_tflite(path):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ModelError(f"cannot read model {path}: {e.strerror}") from None
    if data[4:8] != TFLITE_IDENTIFIER:
        raise ModelError(
            f"{path} is not a TFLite model: the flatbuffer identifier {TFLITE_IDENTIFIER.decode()!r} "
            "is missing (expected a .tflite written by export/to_tflite.py)"
        )
    return data


def _read_metadata(tflite_path):
    path = contract.model_json_path(tflite_path)
    if not os.path.exists(path):
        raise ModelError(
            f"{tflite_path} has no {os.path.basename(path)} beside it ({path}): it is not a model "
            "exported by tinytl_tf, or its metadata file was not copied with it"
        )
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise ModelError(f"{path} is not readable JSON ({e})") from None
    except RecursionError:
        raise ModelError(f"{path} is nested too deeply to be a model's metadata") from None
    if not isinstance(meta, dict) or meta.get("format") != contract.METADATA_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ModelError(f"{path} has format {found!r}, expected {contract.METADATA_FORMAT!r}")
    missing = [k for k in contract.METADATA_KEYS if k not in meta]
    if missing:
        raise ModelError(f"{path} lacks the keys {missing}")
    try:
        intact = meta["integrity"] == contract.metadata_integrity(meta)
    except (TypeError, ValueError, KeyError):
        intact = False
    if not intact:
        raise ModelError(
            f"{path} was changed after export: its labels, input size or normalization do not match its "
            "'integrity' hash; copy the file exported with the .tflite (or export again)"
        )
    return meta


def _spec(details):
    return {"shape": [int(d) for d in details["shape"]], "dtype": np.dtype(details["dtype"]).name}


def _check_signatures(tflite_path, meta, interpreter):
    """Every signature and tensor model.json names exists in the file with the same shape and dtype, and the
    ones this package calls are among them."""
    json_path = contract.model_json_path(tflite_path)
    described, present = meta["signatures"], interpreter.get_signature_list()
    for key, (inputs, outputs) in REQUIRED_TENSORS.items():
        if key not in described:
            raise ModelError(f"{json_path} does not describe the signature '{key}' every tinytl_tf model has")
        for side, needed in (("inputs", inputs), ("outputs", outputs)):
            lacking = sorted(needed - set(described[key][side]))
            if lacking:
                raise ModelError(f"{json_path}: signature '{key}' lacks the {side} {lacking}")
    for key, spec in described.items():
        if key not in present:
            raise ModelError(
                f"signature '{key}' named in {json_path} is missing from {tflite_path} (it has {sorted(present)})"
            )
        runner = interpreter.get_signature_runner(key)
        for side, details in (("inputs", runner.get_input_details()), ("outputs", runner.get_output_details())):
            actual = {name: _spec(d) for name, d in details.items()}
            for name in sorted(set(spec[side]) | set(actual)):
                if name not in actual:
                    raise ModelError(
                        f"tensor '{name}' ({side} of signature '{key}') named in {json_path} is "
                        f"missing from {tflite_path}"
                    )
                if name not in spec[side]:
                    raise ModelError(
                        f"{tflite_path}: tensor '{name}' ({side} of signature '{key}') is not described in {json_path}"
                    )
                if actual[name] != spec[side][name]:
                    raise ModelError(
                        f"tensor '{name}' ({side} of signature '{key}'): {json_path} says "
                        f"{spec[side][name]}, {tflite_path} has {actual[name]}"
                    )
    weights = {w["name"]: {"shape": w["shape"], "dtype": w["dtype"]} for w in meta["weights"]}
    for key, side in ((contract.SIGNATURE_GET_WEIGHTS, "outputs"), (contract.SIGNATURE_SET_WEIGHTS, "inputs")):
        if described[key][side] != weights:
            raise ModelError(f"{json_path}: the 'weights' list differs from the {side} of signature '{key}'")


def _preprocessing(tflite_path, meta, image_shape):
    """The input recipe; refuses one this package would not reproduce exactly (it implements imagefiles's)."""
    spec, json_path = meta["input"], contract.model_json_path(tflite_path)
    expected = {"layout": "NHWC", "channels": 3, "resize": "bilinear", "crop_fraction": contract.CROP_FRACTION}
    wrong = {k: spec.get(k) for k, v in expected.items() if spec.get(k) != v}
    if wrong:
        raise ModelError(f"{json_path}: input {wrong} is not the preprocessing this trainer implements ({expected})")
    if image_shape != (1, spec["height"], spec["width"], 3) or spec["height"] != spec["width"]:
        raise ModelError(
            f"{json_path}: input {spec['height']}x{spec['width']} does not match the square image "
            f"tensor {list(image_shape)} of signature '{contract.SIGNATURE_TRAIN}'"
        )
    return Preprocessing(int(spec["height"]), tuple(spec["mean"]), tuple(spec["std"]))
