"""Export a trained TinyTL model to one `.tflite` that trains itself on a device (on-device learning, Cai et al. 2020).

Signatures (names in `tinytl_tf.contract`): `train(x, y, lr)` does one optimizer step on the trainable tensors
and returns {loss, logits}; `infer(x)` returns {logits, probabilities}; `get_weights(unused)` / `set_weights(...)`
move every trainable tensor, optimizer slot (float32; for "adam8bit", int8 moment codes and float32 block scales,
updated by `tinytl_tf.ops.adam8bit` as in Keras) and the step counter by name. Frozen weights become constants; only
TFLite builtin ops are allowed (Flex cannot run from Python and adds ~8 MB to an app), which the gradients of
`tinytl_tf.ops` make possible. `X.json` beside `X.tflite` describes all of it for the device side.
"""

import contextlib
import hashlib
import json
import logging
import math
import tempfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from tinytl_tf import contract, initial_values, ops, tflite_model
from tinytl_tf.atomic import atomic_write
from tinytl_tf.cliargs import check_export_target
from tinytl_tf.contract import ADAM, FLAT_MAX_ELEMENTS, slot_tensor_name, weight_tensor_name
from tinytl_tf.errors import TinyTLError
from tinytl_tf.layers.common import kernels_read_when_needed
from tinytl_tf.ops import adam8bit
from tinytl_tf.ops.conv import frozen_kernels_int8

OPTIMIZERS = ("sgd", "adam", "adam8bit")
FROZEN_BITS = (8, 32)
VERIFY_TOLERANCE = {32: 1e-4, 8: 0.3}  # LiteRT infer vs Keras: relative L2 error of the logits


class ExportError(TinyTLError, RuntimeError):
    pass


class TrainingModule(tf.Module):
    """The device program: the Keras model's forward, builtins-only backward and the optimizer, as tf.functions.

    Trainable tensors are stored in groups, each one variable (and one per optimizer slot): every tensor smaller
    than `FLAT_MAX_ELEMENTS` shares one 1-D group, every larger tensor has its own variable of its own shape. One
    group for the ~100 biases of a bias-only network lets the optimizer run a dozen vector ops instead of a dozen per
    tensor (most of
    the train step's ops); keeping large kernels apart bounds the optimizer's full-length temporaries by the
    largest kernel, and lets each kernel's update run as soon as its gradient exists (the slots are read only
    then, see `_apply`). The forward reads per-tensor
    views through a Keras `StatelessScope`; `get_weights` / `set_weights` still move each tensor by its own name.
    Keras 3 models held by a tf.Module are not tracked (the converter then reads uninitialised
    variables), so the frozen variables are referenced explicitly here.
    """

    def __init__(
        self,
        model,
        optimizer=contract.DEFAULT_OPTIMIZER,
        lr=1e-3,
        total_steps=1000,
        label_smoothing=0.1,
        schedule="cosine",
    ):
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
        sizes = [int(np.prod(s)) for s in self.shapes]
        small = [i for i, n in enumerate(sizes) if n < FLAT_MAX_ELEMENTS]
        self.groups = ([small] if small else []) + [[i] for i, n in enumerate(sizes) if n >= FLAT_MAX_ELEMENTS]
        self.group_sizes = [[sizes[i] for i in g] for g in self.groups]
        # a lone tensor's variable is the Keras variable itself: its layer's ops read it only when they run
        self.group_variables = [
            self.keras_trainable[g[0]].value
            if len(g) == 1
            else tf.Variable(self._flatten([self.keras_trainable[i].value for i in g]), name=f"trainable_{j}")
            for j, g in enumerate(self.groups)
        ]
        self.suffixes = contract.SLOT_SUFFIXES[optimizer]
        self.slot_shapes = {s: self._slot_shapes(s) for s in self.suffixes}
        self.slot_dtypes = {
            s: tf.int8 if optimizer == "adam8bit" and not self._is_scale(s) else tf.float32 for s in self.suffixes
        }
        self.group_slots = [
            [
                tf.Variable(tf.zeros(self._group_shape(j, self.slot_shapes[s]), self.slot_dtypes[s]), name=f"{s}_{j}")
                for s in self.suffixes
            ]
            for j in range(len(self.groups))
        ]
        self.step = tf.Variable(0.0, name=contract.STEP_TENSOR)
        r = model.net_config.resolution
        self.image_spec = tf.TensorSpec([1, r, r, 3], tf.float32, name=contract.INPUT_IMAGE)

    @staticmethod
    def _is_scale(suffix):
        return suffix.endswith(contract.SCALE_SLOT_SUFFIX)

    def _slot_shapes(self, suffix):
        """Per-tensor shapes of one slot: the tensor's own, or one scale per block for a per-block scale slot."""
        if self._is_scale(suffix):
            return [(adam8bit.num_blocks(int(np.prod(s))),) for s in self.shapes]
        return list(self.shapes)

    def _group_shape(self, j, shapes):
        """Shape of group `j`'s variable holding tensors of `shapes`: a lone tensor's own, else all of them 1-D."""
        g = self.groups[j]
        return shapes[g[0]] if len(g) == 1 else (sum(int(np.prod(shapes[i])) for i in g),)

    @staticmethod
    def _flatten(tensors):
        """One group's value: a lone tensor keeps its shape, several are joined 1-D."""
        if len(tensors) == 1:
            return tf.convert_to_tensor(tensors[0])
        return tf.concat([tf.reshape(t, [-1]) for t in tensors], axis=0)

    def _views(self, j, value, shapes=None):
        """[(tensor index, per-tensor value)] of group `j`'s `value` of tensors of `shapes` (the trainables')."""
        g, shapes = self.groups[j], shapes or self.shapes
        if len(g) == 1:
            return [(g[0], tf.convert_to_tensor(value))]
        parts = tf.split(value, [int(np.prod(shapes[i])) for i in g])
        return [(i, tf.reshape(part, shapes[i])) for i, part in zip(g, parts)]

    def _unflatten(self, values, shapes=None):
        """Per-tensor values (in `self.names` order) of one value per group."""
        out = [None] * len(self.names)
        for j, value in enumerate(values):
            for i, view in self._views(j, value, shapes):
                out[i] = view
        return out

    def _grouped(self, values):
        return [self._flatten([values[i] for i in g]) for g in self.groups]

    def weight_tensors(self):
        """[(name, shape, kind, dtype)] in get_weights order: trainables, their slots, the step counter."""
        out = [(n, s, "trainable", tf.float32) for n, s in zip(self.names, self.shapes)]
        for i, n in enumerate(self.names):
            out += [
                (slot_tensor_name(n, suffix), self.slot_shapes[suffix][i], "slot", self.slot_dtypes[suffix])
                for suffix in self.suffixes
            ]
        return out + [(contract.STEP_TENSOR, (), "step", tf.float32)]

    def learning_rate(self, lr):
        """`lr` > 0 overrides; otherwise the in-model schedule at the current step (Keras CosineDecay's)."""
        if self.schedule == "cosine":
            progress = tf.minimum(self.step, float(self.total_steps)) / float(self.total_steps)
            scheduled = self.lr * 0.5 * (1.0 + tf.cos(math.pi * progress))
        else:
            scheduled = tf.constant(self.lr)
        return tf.where(lr > 0.0, lr, scheduled)

    def _apply(self, j, var, value, g, slots, lr, t):
        """One update of group `j`'s variable `var` by its gradient `g`; `value` is its value read for the forward,
        or None for a lone tensor's variable, which is then read only now."""
        if value is None:
            with tf.control_dependencies([g]):
                value = var.read_value()
        if self.optimizer == "sgd":
            var.assign(value - lr * g)
            return
        b1, b2, eps = ADAM["beta_1"], ADAM["beta_2"], ADAM["epsilon"]
        alpha = adam8bit.adam_alpha(lr, t, b1, b2)
        # Read the slots once their gradient exists: otherwise the converter schedules every READ_VARIABLE at the
        # step's start and a copy of all optimizer state stays alive through the whole forward and backward.
        with tf.control_dependencies([g]):
            old = [s.read_value() for s in slots]
        if self.optimizer == "adam8bit":
            g_sizes = self.group_sizes[j]
            blocks = adam8bit.Blocks(g_sizes[0]) if len(g_sizes) == 1 else adam8bit.ConcatBlocks(g_sizes)
            flat = [tf.reshape(x, [-1]) for x in old]
            new, state = adam8bit.adam8bit_step(
                tf.reshape(value, [-1]), tf.reshape(g, [-1]), flat, alpha, blocks, b1, b2, eps
            )
            for s, x in zip(slots, state):
                s.assign(tf.reshape(x, s.shape))
            var.assign(tf.reshape(new, var.shape))
            return
        (m_var, v_var), (m_old, v_old) = slots, old
        m = m_old + (g - m_old) * (1.0 - b1)
        v = v_old + (tf.square(g) - v_old) * (1.0 - b2)
        m_var.assign(m)
        v_var.assign(v)
        var.assign(value - m * alpha / (tf.sqrt(v) + eps))

    def _shared_values(self):
        """{group index: value} of every multi-tensor group, read at the step's start (one small vector)."""
        return {j: tf.convert_to_tensor(v) for j, v in enumerate(self.group_variables) if len(self.groups[j]) > 1}

    def _forward(self, x, shared):
        """The model on `x`; the tensors of the `shared` groups reach the layers through a `StatelessScope`."""
        mapping = [(self.keras_trainable[i], view) for j, value in shared.items() for i, view in self._views(j, value)]
        with kernels_read_when_needed(), keras.StatelessScope(state_mapping=mapping):
            return self.model(x, training=False)  # no dropout on the device: a deterministic builtins graph

    def train_step(self, x, y, lr):
        shared = self._shared_values()
        sources = [shared.get(j, v) for j, v in enumerate(self.group_variables)]
        with tf.GradientTape() as tape:
            tape.watch(sources)
            logits = self._forward(x, shared)
            loss = tf.reduce_mean(ops.softmax_cross_entropy(logits, y, label_smoothing=self.label_smoothing))
        lr, t = self.learning_rate(lr), self.step + 1.0
        grads = tape.gradient(loss, sources)
        for j, (var, g, slots) in enumerate(zip(self.group_variables, grads, self.group_slots)):
            self._apply(j, var, shared.get(j), g, slots, lr, t)
        self.step.assign(t)
        return {contract.OUTPUT_LOSS: loss, contract.OUTPUT_LOGITS: logits}

    def infer_step(self, x):
        logits = self._forward(x, self._shared_values())
        return {contract.OUTPUT_LOGITS: logits, contract.OUTPUT_PROBABILITIES: tf.nn.softmax(logits)}

    def get_weights_step(self):
        values = list(self._unflatten(self.group_variables))
        slots = [
            self._unflatten([s[k] for s in self.group_slots], self.slot_shapes[suffix])
            for k, suffix in enumerate(self.suffixes)
        ]
        for i in range(len(self.names)):
            values += [slot[i] for slot in slots]
        names = [w[0] for w in self.weight_tensors()]
        return dict(zip(names, values + [tf.identity(self.step)]))

    def set_weights_step(self, **tensors):
        names = [w[0] for w in self.weight_tensors()]
        n, k = len(self.names), len(self.suffixes)
        values = [tensors[name] for name in names]
        for var, value in zip(self.group_variables, self._grouped(values[:n])):
            var.assign(value)
        for j in range(k):
            for slots, value in zip(self.group_slots, self._grouped([values[n + i * k + j] for i in range(n)])):
                slots[j].assign(value)
        self.step.assign(tensors[contract.STEP_TENSOR])
        return {contract.STEP_TENSOR: tf.identity(self.step)}

    def group_names(self):
        """The tensor names of each variable group, in `load`'s group order."""
        return [[self.names[i] for i in g] for g in self.groups]

    def load_length(self):
        """Length of `load`'s `values`: the largest group."""
        return max(sum(sizes) for sizes in self.group_sizes)

    def load_step(self, values, group):
        """Assign `values` (zero-padded) to group `group`'s variable. Each group is read, selected and assigned only
        after the previous one is assigned, so the arena holds one group's temporaries, not a copy of them all."""
        previous = []
        for j, var in enumerate(self.group_variables):
            with tf.control_dependencies(previous):
                size = sum(self.group_sizes[j])
                new = tf.reshape(values[:size], var.shape)
                previous = [var.assign(tf.where(tf.equal(group, j), new, var.read_value()), read_value=False)]
        with tf.control_dependencies(previous):
            return {contract.INPUT_LOAD_GROUP: tf.identity(group)}

    def signatures(self):
        """Concrete functions keyed by signature name."""
        train = tf.function(
            self.train_step,
            input_signature=[
                self.image_spec,
                tf.TensorSpec([1], tf.int32, name=contract.INPUT_LABEL),
                tf.TensorSpec([], tf.float32, name=contract.INPUT_LEARNING_RATE),
            ],
        )
        infer = tf.function(self.infer_step, input_signature=[self.image_spec])
        get = tf.function(
            lambda unused: self.get_weights_step(),
            input_signature=[tf.TensorSpec([], tf.float32, name=contract.INPUT_PLACEHOLDER)],
        )
        specs = {name: tf.TensorSpec(shape, dtype, name=name) for name, shape, _, dtype in self.weight_tensors()}
        setter = tf.function(lambda **kw: self.set_weights_step(**kw)).get_concrete_function(**specs)
        load = tf.function(
            self.load_step,
            input_signature=[
                tf.TensorSpec([self.load_length()], tf.float32, name=contract.INPUT_LOAD_VALUES),
                tf.TensorSpec([], tf.int32, name=contract.INPUT_LOAD_GROUP),
            ],
        )
        return {
            contract.SIGNATURE_TRAIN: train.get_concrete_function(),
            contract.SIGNATURE_INFER: infer.get_concrete_function(),
            contract.SIGNATURE_GET_WEIGHTS: get.get_concrete_function(),
            contract.SIGNATURE_SET_WEIGHTS: setter,
            contract.SIGNATURE_LOAD: load.get_concrete_function(),
        }


def convert(module, allow_flex=False, frozen_bits=8, converting=contextlib.nullcontext):
    """SavedModel -> TFLite bytes with resource variables; builtins only unless `allow_flex`.

    `converting()` is entered around tracing, the SavedModel round trip and the converter's run (the export's
    memory peak and most of its time): a caller running several exports at once passes a shared lock there, so
    that they overlap only in starting up, building the model and writing files.

    `frozen_bits=8`: the converter's dynamic-range quantization stores every large constant conv / dense kernel
    as int8 with per-channel scales, and runs those ops as hybrid int8 kernels; the input gradients dequantize the
    same int8 bytes (`ops.conv.frozen_kernels_int8`), stored once; trainable tensors are variables and stay
    float32. Outputs then differ from float Keras by about 1% (activations are quantized on the fly).
    `frozen_bits=32` keeps float32 constants and matches Keras to ~1e-6. tensorflow-model-optimization cannot do
    this: 0.8.1 rejects Keras 3 models, and its fake-quant training would not change what the file stores.

    Every float variable then starts at zero from a FILL, not from a constant in the file
    (`tflite_model.fill_zero_initial_values`): the trainables' initial values go beside the model and are loaded
    with the `load` signature (`tinytl_tf.initial_values`).
    """
    if frozen_bits not in FROZEN_BITS:
        raise ValueError(f"frozen_bits must be one of {FROZEN_BITS}, got {frozen_bits!r}")
    with converting(), tempfile.TemporaryDirectory() as tmp, _quiet_about_unsaved_gradients():
        with frozen_kernels_int8() if frozen_bits == 8 else contextlib.nullcontext():
            sigs = module.signatures()
        # The train signature already holds its gradients: the SavedModel need not trace each custom gradient
        # again for a later tape (two thirds of the export's time otherwise).
        options = tf.saved_model.SaveOptions(experimental_custom_gradients=False)
        tf.saved_model.save(module, tmp, signatures=sigs, options=options)
        keys = list(sigs)
        del sigs  # the traced graphs: the converter reads the SavedModel
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=keys)
        converter.experimental_enable_resource_variables = True
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS] + (
            [tf.lite.OpsSet.SELECT_TF_OPS] if allow_flex else []
        )
        if frozen_bits == 8:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        try:
            data = converter.convert()
        except Exception as e:  # the converter reports unsupported ops in a long ConverterError
            raise ExportError(f"TFLite conversion with builtin ops only failed: {str(e)[-2000:]}") from None
    data = tflite_model.share_identical_buffers(data)[0]  # the int8 frozen kernels' second (gradient) constants
    return tflite_model.fill_zero_initial_values(data, nonzero=True)[0]


@contextlib.contextmanager
def _quiet_about_unsaved_gradients():
    """Drop the loader's warning, once per function, that the SavedModel's custom gradients were not saved: they
    were left out on purpose (see `convert`), and nothing asks for them."""

    def keep(record):
        return "unsaved custom gradients" not in record.getMessage()

    logger = logging.getLogger("absl")
    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


def check_builtins_only(tflite_bytes):
    """Raise ExportError naming every Flex/custom op: such a model cannot run from Python or a lean app."""
    bad = tflite_model.custom_ops(tflite_model.read(tflite_bytes))
    if bad:
        raise ExportError(
            f"the exported graph needs non-builtin ops {bad}: Flex (Select TF ops) cannot run with "
            f"ai-edge-litert from Python and adds ~8 MB to an Android app; every op must be a builtin"
        )


def _spec_json(details):
    return {"shape": [int(d) for d in details["shape"]], "dtype": np.dtype(details["dtype"]).name}


def signature_json(interpreter):
    """Inputs and outputs of every signature, as model.json records them."""
    out = {}
    for key in interpreter.get_signature_list():
        runner = interpreter.get_signature_runner(key)
        out[key] = {
            "inputs": {n: _spec_json(d) for n, d in runner.get_input_details().items()},
            "outputs": {n: _spec_json(d) for n, d in runner.get_output_details().items()},
        }
    return out


def verify_infer(model, interpreter, n=3, seed=0, tolerance=1e-4):
    """LiteRT `infer` must agree with Keras on random inputs: the relative L2 error of the logits (the norm of
    the difference over max(1, the norm of Keras' logits)) at most `tolerance`. Returns the largest error.
    Catches the converter's silent failures (uninitialised variables give garbage, not errors)."""
    runner = interpreter.get_signature_runner(contract.SIGNATURE_INFER)
    r = model.net_config.resolution
    rng = np.random.default_rng(seed)
    worst = 0.0
    for _ in range(n):
        x = rng.standard_normal((1, r, r, 3)).astype(np.float32)
        got = runner(**{contract.INPUT_IMAGE: x})[contract.OUTPUT_LOGITS]
        want = np.asarray(model(x, training=False))
        worst = max(worst, float(np.linalg.norm(got - want) / max(1.0, np.linalg.norm(want))))
    if not worst <= tolerance:
        raise ExportError(
            f"LiteRT infer differs from Keras by {worst:.3g} (relative L2; allowed {tolerance:g}): "
            "the converted model is wrong"
        )
    return worst


def export_model(
    model,
    out,
    optimizer=contract.DEFAULT_OPTIMIZER,
    lr=1e-3,
    total_steps=1000,
    label_smoothing=0.1,
    schedule="cosine",
    allow_flex=False,
    verify=True,
    frozen_bits=8,
    overwrite=False,
    progress=None,
    converting=contextlib.nullcontext,
):
    """Write `out` (X.tflite), its metadata X.json and the trainables' initial values X.init.npz beside it;
    returns the metadata dict.

    An existing `out` or X.json is refused unless `overwrite`. `progress(stage)`, when given, is called before
    each slow stage (converting, checking, writing); `converting` as in `convert`.
    """
    from ai_edge_litert.interpreter import Interpreter

    out, meta_path = check_export_target(out, overwrite)
    progress = progress or (lambda stage: None)
    out.parent.mkdir(parents=True, exist_ok=True)
    module = TrainingModule(model, optimizer, lr, total_steps, label_smoothing, schedule)
    progress("converting to TFLite (builtin ops only)")
    data = convert(module, allow_flex, frozen_bits, converting)
    if not allow_flex:
        check_builtins_only(data)
    fingerprint = hashlib.sha256(data).hexdigest()
    initial = {n: v.numpy() for n, v in zip(module.names, module.keras_trainable)}
    initial_bytes = initial_values.encode(fingerprint, initial)
    init_path = Path(initial_values.path_for(out))
    spec = {
        "file": init_path.name,
        "sha256": hashlib.sha256(initial_bytes).hexdigest(),
        "length": module.load_length(),
        "groups": module.group_names(),
    }
    interpreter = Interpreter(model_content=data)
    initial_values.load(interpreter, spec, initial)
    if verify:
        progress("checking LiteRT infer against Keras")
        verify_infer(model, interpreter, tolerance=VERIFY_TOLERANCE[frozen_bits])
    cfg = model.net_config
    meta = {
        "format": contract.METADATA_FORMAT,
        "fingerprint": fingerprint,
        "tflite": out.name,
        "backbone": cfg.name,
        "method": cfg.method,
        "num_classes": cfg.num_classes,
        "frozen_bits": frozen_bits,
        "labels": list(cfg.labels) or [str(i) for i in range(cfg.num_classes)],
        "batch_size": 1,
        "input": {
            "height": cfg.resolution,
            "width": cfg.resolution,
            "channels": 3,
            "layout": "NHWC",
            "mean": list(cfg.input_mean),
            "std": list(cfg.input_std),
            "crop_fraction": contract.CROP_FRACTION,
            "resize": "bilinear",
        },
        "signatures": signature_json(interpreter),
        "weights": [
            {"name": n, "shape": list(shape), "dtype": dtype.name, "kind": k}
            for n, shape, k, dtype in module.weight_tensors()
        ],
        "optimizer": {
            "name": optimizer,
            "lr": lr,
            "schedule": schedule,
            "total_steps": module.total_steps,
            "label_smoothing": label_smoothing,
            **(ADAM if optimizer in ("adam", "adam8bit") else {}),
            **({"block_size": adam8bit.BLOCK} if optimizer == "adam8bit" else {}),
        },
        "ops": tflite_model.op_names(tflite_model.read(data)),
        "initial_values": spec,
    }
    meta["integrity"] = contract.metadata_integrity(meta)
    progress(f"writing {out}, {init_path.name} and {meta_path.name}")
    atomic_write(out, lambda p: Path(p).write_bytes(data))
    atomic_write(init_path, lambda p: Path(p).write_bytes(initial_bytes))
    atomic_write(meta_path, lambda p: Path(p).write_text(json.dumps(meta, indent=2)))
    return meta
