"""Export a trained TinyTL model to one `.tflite` that trains itself on a device (REFERENCE §7).

Signatures (names in `tinytl_tf.contract`): `train(x, y, lr)` does one optimizer step on the trainable tensors
and returns {loss, logits}; `infer(x)` returns {logits, probabilities}; `get_weights(unused)` / `set_weights(...)`
move every trainable tensor, optimizer slot and the step counter by name. Frozen weights become constants; only
TFLite builtin ops are allowed (Flex cannot run from Python and adds ~8 MB to an app), which the gradients of
`tinytl_tf.ops` make possible. `model.json` beside the file describes all of it for the device side.
"""

import hashlib
import json
import math
import tempfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from tinytl_tf import contract, ops, tflite_model
from tinytl_tf.atomic import atomic_write
from tinytl_tf.contract import slot_tensor_name, weight_tensor_name

OPTIMIZERS = ("sgd", "adam")
FROZEN_BITS = (8, 32)
VERIFY_RTOL = {32: 1e-4, 8: 0.05}  # LiteRT infer vs Keras, relative to the largest logit
ADAM = {"beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-8}


class ExportError(RuntimeError):
    pass


class TrainingModule(tf.Module):
    """The device program: the Keras model's forward, builtins-only backward and the optimizer, as tf.functions.

    Every trainable tensor lives in one flat variable (and each optimizer slot in another of the same length):
    the optimizer then runs a dozen vector ops instead of a dozen per tensor, which on a bias-only network with
    ~100 small tensors was most of the train step's op count. The forward reads per-tensor views of it through a
    Keras `StatelessScope`; `get_weights` / `set_weights` still move each tensor by its own name.
    Keras 3 models held by a tf.Module are not tracked (REFERENCE §7 trap: the converter then reads uninitialised
    variables), so the frozen variables are referenced explicitly here.
    """

    def __init__(self, model, optimizer="adam", lr=1e-3, total_steps=1000, label_smoothing=0.1, schedule="cosine"):
        super().__init__()
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
        if schedule not in ("cosine", "constant"):
            raise ValueError(f"unknown schedule {schedule!r}; valid: cosine, constant")
        self.model = model
        self.optimizer, self.lr, self.total_steps = optimizer, float(lr), int(max(1, total_steps))
        self.label_smoothing, self.schedule = float(label_smoothing), schedule
        self.keras_trainable = list(model.trainable_weights)
        self.frozen_variables = [v.value for v in model.non_trainable_weights]  # tracked: they become constants
        self.names = [weight_tensor_name(v.path) for v in self.keras_trainable]
        self.shapes = [tuple(v.shape) for v in self.keras_trainable]
        self.sizes = [int(np.prod(s)) for s in self.shapes]
        self.flat = tf.Variable(self._flatten([v.value for v in self.keras_trainable]), name="trainable")
        self.flat_slots = [tf.Variable(tf.zeros_like(self.flat), name=f"slot_{s}") for s in contract.SLOT_SUFFIXES[optimizer]]
        self.step = tf.Variable(0.0, name=contract.STEP_TENSOR)
        r = model.net_config.resolution
        self.image_spec = tf.TensorSpec([1, r, r, 3], tf.float32, name=contract.INPUT_IMAGE)

    @staticmethod
    def _flatten(tensors):
        return tf.concat([tf.reshape(t, [-1]) for t in tensors], axis=0)

    def _unflatten(self, flat):
        return [tf.reshape(t, s) for t, s in zip(tf.split(flat, self.sizes), self.shapes)]

    def weight_tensors(self):
        """[(name, shape, kind)] in get_weights order: trainables, their slots, the step counter."""
        out = [(n, s, "trainable") for n, s in zip(self.names, self.shapes)]
        for n, s in zip(self.names, self.shapes):
            out += [(slot_tensor_name(n, suffix), s, "slot") for suffix in contract.SLOT_SUFFIXES[self.optimizer]]
        return out + [(contract.STEP_TENSOR, (), "step")]

    def _named_values(self):
        """{name: tensor} of every weight tensor, in `weight_tensors` order."""
        parts = [self._unflatten(self.flat)] + [self._unflatten(slot) for slot in self.flat_slots]
        values = list(parts[0])
        for i in range(len(self.names)):
            values += [p[i] for p in parts[1:]]
        names = [n for n, _, _ in self.weight_tensors()]
        return dict(zip(names, values + [tf.identity(self.step)]))

    def learning_rate(self, lr):
        """`lr` > 0 overrides; otherwise the in-model schedule at the current step (Keras CosineDecay's)."""
        if self.schedule == "cosine":
            progress = tf.minimum(self.step, float(self.total_steps)) / float(self.total_steps)
            scheduled = self.lr * 0.5 * (1.0 + tf.cos(math.pi * progress))
        else:
            scheduled = tf.constant(self.lr)
        return tf.where(lr > 0.0, lr, scheduled)

    def _apply(self, flat, g, lr):
        t = self.step + 1.0
        if self.optimizer == "sgd":
            self.flat.assign(flat - lr * g)
        else:
            b1, b2, eps = ADAM["beta_1"], ADAM["beta_2"], ADAM["epsilon"]
            alpha = lr * tf.sqrt(1.0 - tf.pow(b2, t)) / (1.0 - tf.pow(b1, t))
            m_var, v_var = self.flat_slots
            m = m_var + (g - m_var) * (1.0 - b1)
            v = v_var + (tf.square(g) - v_var) * (1.0 - b2)
            m_var.assign(m)
            v_var.assign(v)
            self.flat.assign(flat - m * alpha / (tf.sqrt(v) + eps))
        self.step.assign(t)

    def _forward(self, x, flat):
        with keras.StatelessScope(state_mapping=list(zip(self.keras_trainable, self._unflatten(flat)))):
            return self.model(x, training=False)  # no dropout on the device: a deterministic builtins graph

    def train_step(self, x, y, lr):
        flat = tf.convert_to_tensor(self.flat)
        with tf.GradientTape() as tape:
            tape.watch(flat)
            logits = self._forward(x, flat)
            loss = tf.reduce_mean(ops.softmax_cross_entropy(logits, y, label_smoothing=self.label_smoothing))
        self._apply(flat, tape.gradient(loss, flat), self.learning_rate(lr))
        return {contract.OUTPUT_LOSS: loss, contract.OUTPUT_LOGITS: logits}

    def infer_step(self, x):
        logits = self._forward(x, tf.convert_to_tensor(self.flat))
        return {contract.OUTPUT_LOGITS: logits, contract.OUTPUT_PROBABILITIES: tf.nn.softmax(logits)}

    def get_weights_step(self):
        return self._named_values()

    def set_weights_step(self, **tensors):
        n = len(self.names)
        order = [name for name, _, _ in self.weight_tensors()]
        values = [tensors[name] for name in order]
        slots = len(self.flat_slots)
        self.flat.assign(self._flatten(values[:n]))
        for j, slot in enumerate(self.flat_slots):
            slot.assign(self._flatten([values[n + i * slots + j] for i in range(n)]))
        self.step.assign(tensors[contract.STEP_TENSOR])
        return {contract.STEP_TENSOR: tf.identity(self.step)}

    def signatures(self):
        """Concrete functions keyed by signature name."""
        train = tf.function(self.train_step, input_signature=[
            self.image_spec, tf.TensorSpec([1], tf.int32, name=contract.INPUT_LABEL),
            tf.TensorSpec([], tf.float32, name=contract.INPUT_LEARNING_RATE)])
        infer = tf.function(self.infer_step, input_signature=[self.image_spec])
        get = tf.function(lambda unused: self.get_weights_step(),
                          input_signature=[tf.TensorSpec([], tf.float32, name=contract.INPUT_PLACEHOLDER)])
        specs = {name: tf.TensorSpec(shape, tf.float32, name=name) for name, shape, _ in self.weight_tensors()}
        setter = tf.function(lambda **kw: self.set_weights_step(**kw)).get_concrete_function(**specs)
        return {contract.SIGNATURE_TRAIN: train.get_concrete_function(),
                contract.SIGNATURE_INFER: infer.get_concrete_function(),
                contract.SIGNATURE_GET_WEIGHTS: get.get_concrete_function(),
                contract.SIGNATURE_SET_WEIGHTS: setter}


def convert(module, allow_flex=False, frozen_bits=8):
    """SavedModel -> TFLite bytes with resource variables; builtins only unless `allow_flex`.

    `frozen_bits=8`: the converter's dynamic-range quantization stores every large constant conv / dense kernel
    (the frozen weights, and the flipped copies their input gradients use) as int8 with per-channel scales, and
    runs those ops as hybrid int8 kernels; trainable tensors are variables and stay float32. Outputs then differ
    from float Keras by about 1% (activations are quantized on the fly). `frozen_bits=32` keeps float32
    constants and matches Keras to ~1e-6. tensorflow-model-optimization cannot do this: 0.8.1 rejects Keras 3
    models, and its fake-quant training would not change what the file stores.
    """
    if frozen_bits not in FROZEN_BITS:
        raise ValueError(f"frozen_bits must be one of {FROZEN_BITS}, got {frozen_bits!r}")
    with tempfile.TemporaryDirectory() as tmp:
        sigs = module.signatures()
        tf.saved_model.save(module, tmp, signatures=sigs)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=list(sigs))
        converter.experimental_enable_resource_variables = True
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS] + (
            [tf.lite.OpsSet.SELECT_TF_OPS] if allow_flex else [])
        if frozen_bits == 8:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        try:
            return converter.convert()
        except Exception as e:  # the converter reports unsupported ops in a long ConverterError
            raise ExportError(f"TFLite conversion with builtin ops only failed: {str(e)[-2000:]}") from None


def check_builtins_only(tflite_bytes):
    """Raise ExportError naming every Flex/custom op: such a model cannot run from Python or a lean app."""
    bad = tflite_model.custom_ops(tflite_model.read(tflite_bytes))
    if bad:
        raise ExportError(f"the exported graph needs non-builtin ops {bad}: Flex (Select TF ops) cannot run with "
                          f"ai-edge-litert from Python and adds ~8 MB to an Android app; every op must be a builtin")


def _spec_json(details):
    return {"shape": [int(d) for d in details["shape"]], "dtype": np.dtype(details["dtype"]).name}


def signature_json(interpreter):
    """Inputs and outputs of every signature, as model.json records them."""
    out = {}
    for key in interpreter.get_signature_list():
        runner = interpreter.get_signature_runner(key)
        out[key] = {"inputs": {n: _spec_json(d) for n, d in runner.get_input_details().items()},
                    "outputs": {n: _spec_json(d) for n, d in runner.get_output_details().items()}}
    return out


def verify_infer(model, interpreter, n=3, seed=0, rtol=1e-4):
    """LiteRT `infer` must equal Keras on random inputs (to `rtol` of the largest logit); returns the largest
    difference. Catches the converter's silent failures (uninitialised variables give garbage, not errors)."""
    runner = interpreter.get_signature_runner(contract.SIGNATURE_INFER)
    r = model.net_config.resolution
    rng = np.random.default_rng(seed)
    worst = 0.0
    for _ in range(n):
        x = rng.standard_normal((1, r, r, 3)).astype(np.float32)
        got = runner(**{contract.INPUT_IMAGE: x})[contract.OUTPUT_LOGITS]
        want = np.asarray(model(x, training=False))
        worst = max(worst, float(np.abs(got - want).max()))
    if not worst <= rtol * max(1.0, float(np.abs(want).max())):
        raise ExportError(f"LiteRT infer differs from Keras by {worst:.3g}: the converted model is wrong")
    return worst


def export_model(model, out, optimizer="adam", lr=1e-3, total_steps=1000, label_smoothing=0.1, schedule="cosine",
                 allow_flex=False, verify=True, frozen_bits=8):
    """Write `out` (.tflite) and model.json beside it; returns the metadata dict."""
    from ai_edge_litert.interpreter import Interpreter

    out = Path(out)
    if out.suffix != ".tflite":
        raise ValueError(f"--out must name a .tflite file, got {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    module = TrainingModule(model, optimizer, lr, total_steps, label_smoothing, schedule)
    data = convert(module, allow_flex, frozen_bits)
    if not allow_flex:
        check_builtins_only(data)
    interpreter = Interpreter(model_content=data)
    if verify:
        verify_infer(model, interpreter, rtol=VERIFY_RTOL[frozen_bits])
    cfg = model.net_config
    meta = {
        "format": contract.METADATA_FORMAT, "fingerprint": hashlib.sha256(data).hexdigest(), "tflite": out.name,
        "backbone": cfg.name, "method": cfg.method, "num_classes": cfg.num_classes, "frozen_bits": frozen_bits,
        "labels": list(cfg.labels) or [str(i) for i in range(cfg.num_classes)], "batch_size": 1,
        "input": {"height": cfg.resolution, "width": cfg.resolution, "channels": 3, "layout": "NHWC",
                  "mean": list(cfg.input_mean), "std": list(cfg.input_std), "crop_fraction": contract.CROP_FRACTION,
                  "resize": "bilinear"},
        "signatures": signature_json(interpreter),
        "weights": [{"name": n, "shape": list(shape), "dtype": "float32", "kind": k} for n, shape, k in module.weight_tensors()],
        "optimizer": {"name": optimizer, "lr": lr, "schedule": schedule, "total_steps": module.total_steps,
                      "label_smoothing": label_smoothing, **(ADAM if optimizer == "adam" else {})},
        "ops": tflite_model.op_names(tflite_model.read(data)),
    }
    atomic_write(out, lambda p: Path(p).write_bytes(data))
    atomic_write(contract.model_json_path(out), lambda p: Path(p).write_text(json.dumps(meta, indent=2)))
    return meta
