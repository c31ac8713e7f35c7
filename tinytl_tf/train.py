"""Desktop training with `model.fit` (the TinyTL paper's recipe): Adam (or Adam with 8-bit moments), cosine decay per
step, label smoothing, any batch size, optionally across local devices with `tf.distribute.MirroredStrategy`."""

import contextlib
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from tinytl_tf import ops
from tinytl_tf.atomic import atomic_write
from tinytl_tf.backbones import count_params, load_backbone
from tinytl_tf.cliargs import CURVE_FILE, SPLIT_FILE, check_output_dir, json_safe
from tinytl_tf.methods import OPTIMIZERS, default_lr
from tinytl_tf.ops import adam8bit
from tinytl_tf.transfer import check_method, prepare_transfer

STRATEGIES = ("none", "mirrored")
ADAM = {"beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-8}
STALE_EXPORTS = ("model.tflite", "model.json", "model.init.npz")  # exported from a model.keras --overwrite replaces


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


def accuracy(model, dataset):
    """Top-1 accuracy of `model` over a batched (x, y) dataset, computed from the logits."""
    forward = tf.function(lambda x: model(x, training=False))  # eager calls are ~4x slower
    correct = total = 0
    for x, y in dataset:
        pred = np.argmax(forward(x), axis=-1)
        correct += int(np.sum(pred == np.reshape(y.numpy(), [-1])))
        total += int(pred.shape[0])
    return correct / max(1, total)


def plot_history(history, path):
    """Loss and accuracy per epoch, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = range(1, len(history["loss"]) + 1)
    fig, (loss, acc) = plt.subplots(1, 2, figsize=(9, 3.5))
    loss.plot(epochs, history["loss"], marker="o")
    loss.set(xlabel="epoch", ylabel="training loss")
    acc.plot(epochs, history["accuracy"], marker="o")
    acc.set(xlabel="epoch", ylabel="training accuracy", ylim=(0, 1))
    fig.tight_layout()
    try:
        atomic_write(path, lambda p: fig.savefig(p, format="png"))
    finally:
        plt.close(fig)


def train_job(
    data,
    backbone,
    method,
    out,
    resolution=None,
    epochs=10,
    batch_size=8,
    lr=None,
    label_smoothing=0.1,
    dropout=0.2,
    strategy="none",
    weights_dir=None,
    overwrite=False,
    verbose=1,
    load_data=None,
    make_model=None,
    seed=0,
    optimizer="adam",
):
    """The `train` command: backbone -> transfer method -> fit -> OUT/model.keras + OUT/metrics.json.

    `load_data(resolution, mean, std, batch_size)` returns an ImageData; `data` names it in the metrics.
    `make_model()`, when given, returns the network to train in place of `backbone` + `method`: one that already
    has its head, labels and trainable set (a searched sub-net, `train --subnet`); its config names it.
    `lr` None: the method's default (`methods.DEFAULT_LR`). A flat folder's held-out images are listed in
    OUT/split.json for `evaluate`; `overwrite` also removes a model.tflite / model.json / model.init.npz exported
    from the old model.
    `seed`: see `seed_everything`; `load_data` should draw its split and shuffling from the same seed.
    `optimizer`: one of `OPTIMIZERS`.
    """
    check_method(method)
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; valid: {', '.join(OPTIMIZERS)}")
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    out = check_output_dir(out, overwrite)
    reproducibility = seed_everything(seed)
    scope, replicas = distribution_scope(strategy)
    with scope:
        base = load_backbone(backbone, resolution, weights_dir) if make_model is None else make_model()
        cfg = base.net_config
        images = load_data(cfg.resolution, cfg.input_mean, cfg.input_std, batch_size)
        if make_model is None:
            model = prepare_transfer(base, method, len(images.class_names), labels=images.class_names, dropout=dropout)
        else:
            model, backbone, method = base, cfg.name, cfg.method
            if cfg.labels != tuple(images.class_names):
                raise ValueError(
                    f"the data's classes {list(images.class_names)} differ from the network's "
                    f"{list(cfg.labels)}; train it on the data it was searched on"
                )
        lr = default_lr(method) if lr is None else lr
        start = time.time()
        history = fit(model, images.train, epochs, lr, label_smoothing, verbose, optimizer)
    seconds = time.time() - start
    trainable, total = count_params(model)
    metrics = {
        "method": method,
        "backbone": backbone,
        "resolution": model.net_config.resolution,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "optimizer": optimizer,
        "label_smoothing": label_smoothing,
        "replicas": replicas,
        "num_classes": len(images.class_names),
        "trainable_params": trainable,
        "total_params": total,
        "train_accuracy": float(history.history["accuracy"][-1]),
        "test_accuracy": accuracy(model, images.test),
        "train_examples": images.num_train,
        "test_examples": images.num_test,
        "skipped_images": images.skipped,
        "train_seconds": round(seconds, 1),
        "data": str(data),
        "reproducibility": reproducibility,
        "history": {
            "loss": [float(v) for v in history.history["loss"]],
            "accuracy": [float(v) for v in history.history["accuracy"]],
        },
    }
    for name in STALE_EXPORTS:
        if (out / name).exists():
            os.remove(out / name)
            print(f"removed {out / name}, exported from the model.keras this run replaces", file=sys.stderr)
    # Three files cannot be replaced at once: the model goes first and the others name its hash, so a crash between
    # two writes leaves a split.json or metrics.json that says it belongs to another model, never a silent mismatch.
    atomic_write(out / "model.keras", model.save)
    metrics["model_sha256"] = _sha256(out / "model.keras")
    if images.held_out_files:
        split = {
            "data": str(Path(data).resolve()),
            "model_sha256": metrics["model_sha256"],
            "test": [os.path.relpath(f, data) for f in images.held_out_files],
        }
        atomic_write(out / SPLIT_FILE, lambda p: Path(p).write_text(json.dumps(split, indent=1)))
    elif (out / SPLIT_FILE).exists():
        os.remove(out / SPLIT_FILE)  # another run's split: this model's test images are a test/ folder
    atomic_write(out / "metrics.json", lambda p: Path(p).write_text(json.dumps(json_safe(metrics), indent=2)))
    plot_history(metrics["history"], out / CURVE_FILE)
    return model, metrics


def held_out_files(model_path, data):
    """The relative paths `train` held out of `data` for the model at `model_path` (its split.json), or None
    when the model was not trained on a split of this folder."""
    path = Path(model_path).parent / SPLIT_FILE
    try:
        split = json.loads(path.read_text())
        recorded, files = Path(split["data"]), split["test"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if recorded != Path(data).resolve() or not isinstance(files, list):
        return None
    if "model_sha256" in split and split["model_sha256"] != _sha256(model_path):  # older splits name no model
        raise ValueError(
            f"{path} belongs to another model than {model_path} (a train run stopped between the two "
            "writes); train again, or pass --all-images to score every image"
        )
    return files


def _sha256(path):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def load_trained(path):
    """Load a `.keras` file written by `train`, with a clear error for a missing or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}; pass the model.keras written by `train --out`")
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as e:  # keras raises many types for a corrupt or foreign archive
        raise ValueError(f"{path} is not a readable tinytl_tf .keras model: {e}") from None
    if not hasattr(model, "net_config"):
        raise ValueError(f"{path} is a Keras model but not one built by tinytl_tf")
    return model
