"""Desktop training with `model.fit` (the TinyTL paper's recipe): Adam (or Adam with 8-bit moments), cosine decay per
step, label smoothing, any batch size, optionally across local devices with `tf.distribute.MirroredStrategy`."""

import contextlib
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from tinytl_tf import ops
from tinytl_tf.contract import ADAM
from tinytl_tf.methods import OPTIMIZERS
from tinytl_tf.ops import adam8bit

STRATEGIES = ("none", "mirrored")


def seed_everything(seed, deterministic=True):
    """Seed every source of randomness a run draws from and, when `deterministic`, make TensorFlow's ops
    deterministic, so the same command with the same seed repeats exactly on one machine and TensorFlow version.

    `keras.utils.set_random_seed` seeds Python, NumPy and TensorFlow's global generator; the last derives every
    op-level seed (head and lite-branch initialisers, dropout, the super-net's in-graph sub-net sampling) and the
    tf.data pipeline's shuffle and per-image augmentation seeds. `enable_op_determinism` makes the remaining
    multithreaded kernels pick a fixed reduction order and keeps tf.data's parallel `map` in order.
    Returns what was done, for `metrics.json`."""
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    keras.utils.set_random_seed(seed)
    if deterministic:  # TensorFlow has no public switch back: it stays on for the rest of the process
        tf.config.experimental.enable_op_determinism()
    return {
        "seed": seed,
        "op_determinism": bool(deterministic),
        "seeded": ["python", "numpy", "tensorflow", "keras", "tf.data shuffle and augmentation"],
    }


@keras.saving.register_keras_serializable(package="tinytl_tf")
class SmoothedCrossEntropy(keras.losses.Loss):
    """Softmax cross-entropy on integer labels with label smoothing, through the same op the export uses."""

    def __init__(self, label_smoothing=0.1, name="smoothed_cross_entropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = label_smoothing

    def call(self, y_true, y_pred):
        labels = tf.reshape(y_true, [-1])
        return ops.softmax_cross_entropy(y_pred, labels, label_smoothing=self.label_smoothing)

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


@keras.saving.register_keras_serializable(package="tinytl_tf")
class Adam8bit(keras.optimizers.Optimizer):
    """Adam whose two moments are stored as block-wise 8-bit codes: ~2 bytes of state per parameter instead of 8.

    Per trained variable: int8 codes of m and of sqrt(v) in the variable's shape and one float32 scale of each per
    block of `adam8bit.BLOCK` values; the update rule is `tinytl_tf.ops.adam8bit`, the one the exported `train`
    signature runs, so desktop and device training take the same steps.
    """

    def __init__(self, learning_rate=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-8, name="adam8bit", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._states = []
        for var in var_list:
            prefix, blocks = var.path.replace("/", "_"), [adam8bit.num_blocks(int(np.prod(var.shape)))]
            m, r = (self.add_variable(var.shape, "zeros", "int8", name=f"{prefix}_{s}") for s in ("m", "sqrt_v"))
            m_scale, r_scale = (self.add_variable(blocks, "zeros", name=f"{prefix}_{s}_scale") for s in ("m", "sqrt_v"))
            self._states.append((m, m_scale, r, r_scale))

    def update_step(self, gradient, variable, learning_rate):
        state = self._states[self._get_variable_index(variable)]
        t = tf.cast(self.iterations + 1, tf.float32)
        alpha = adam8bit.adam_alpha(tf.cast(learning_rate, tf.float32), t, self.beta_1, self.beta_2)
        value, new_state = adam8bit.adam8bit_step(
            tf.reshape(variable, [-1]),
            tf.reshape(tf.cast(gradient, tf.float32), [-1]),
            [tf.reshape(s, [-1]) for s in state],
            alpha,
            adam8bit.Blocks(int(np.prod(variable.shape))),
            self.beta_1,
            self.beta_2,
            self.epsilon,
        )
        self.assign(variable, tf.reshape(value, variable.shape))
        for s, new in zip(state, new_state):
            self.assign(s, tf.reshape(new, s.shape))

    def get_config(self):
        return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon}


def make_optimizer(name, learning_rate):
    """The `OPTIMIZERS` entry `name` with Adam's (0.9, 0.999, 1e-8) and `learning_rate` (a float or a schedule)."""
    if name == "adam":
        return keras.optimizers.Adam(learning_rate, **ADAM)
    if name == "adam8bit":
        return Adam8bit(learning_rate, **ADAM)
    raise ValueError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")


def distribution_scope(strategy):
    """A context in which to build and compile the model: "none" or "mirrored" (all local devices)."""
    if strategy in (None, "none"):
        return contextlib.nullcontext(), 1
    if strategy == "mirrored":
        s = tf.distribute.MirroredStrategy()
        return s.scope(), s.num_replicas_in_sync
    raise ValueError(f"unknown strategy {strategy!r}; valid: {', '.join(STRATEGIES)}")


def compile_model(model, lr, total_steps, label_smoothing=0.1, optimizer="adam"):
    """Adam (0.9, 0.999, 1e-8; `optimizer` "adam8bit": with 8-bit moments) with the learning rate decayed to 0 by a
    per-step cosine, no warm-up."""
    schedule = keras.optimizers.schedules.CosineDecay(lr, decay_steps=max(1, total_steps), alpha=0.0)
    model.compile(
        optimizer=make_optimizer(optimizer, schedule),
        loss=SmoothedCrossEntropy(label_smoothing),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )
    # built now, not inside the first traced step: creating the slots there makes tf.function trace it twice
    model.optimizer.build(model.trainable_variables)
    return model


def steps_per_epoch(dataset):
    steps = int(dataset.cardinality())
    if steps < 0:  # unknown cardinality: count once
        steps = sum(1 for _ in dataset)
    return steps


def fit(model, dataset, epochs, lr, label_smoothing=0.1, verbose=1, optimizer="adam"):
    """Compile `model` for the recipe and train it on a batched (x, y) dataset; returns the Keras history."""
    compile_model(model, lr, epochs * steps_per_epoch(dataset), label_smoothing, optimizer)
    return model.fit(dataset, epochs=epochs, verbose=verbose, shuffle=False)  # tf.data shuffles; Keras warns otherwise


def hits(model, dataset):
    """Per image of a batched (x, y) dataset, in its order: whether `model`'s top-1 is the label (bool array)."""
    forward = tf.function(lambda x: model(x, training=False))  # eager calls are ~4x slower
    rows = [np.argmax(forward(x), axis=-1) == np.reshape(y.numpy(), [-1]) for x, y in dataset]
    return np.concatenate(rows) if rows else np.zeros(0, bool)


def accuracy(model, dataset):
    """Top-1 accuracy of `model` over a batched (x, y) dataset, computed from the logits (0 when it is empty)."""
    right = hits(model, dataset)
    return float(right.mean()) if right.size else 0.0


def load_trained(path):
    """Load a `.keras` file written by `train`, with a clear error for a missing or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}; pass the model.keras written by `train --out`")
    from tinytl_tf.backbones import builder  # noqa: F401  registers TinyNet and its layers with Keras' loader

    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as e:  # keras raises many types for a corrupt or foreign archive
        raise ValueError(f"{path} is not a readable tinytl_tf .keras model: {e}") from None
    if not hasattr(model, "net_config"):
        raise ValueError(f"{path} is a Keras model but not one built by tinytl_tf")
    return model
