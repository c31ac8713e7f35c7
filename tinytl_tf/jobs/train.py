"""The `train` job: a pretrained backbone -> a transfer method -> `model.fit` -> OUT/model.keras, metrics.json,
split.json (a flat folder's held-out images) and the training curve."""

import hashlib
import json
import os
import sys
import time
from pathlib import Path

from tinytl_tf.atomic import atomic_write
from tinytl_tf.backbones import count_params, load_backbone
from tinytl_tf.cliargs import CURVE_FILE, SPLIT_FILE, check_output_dir, json_safe
from tinytl_tf.methods import OPTIMIZERS, default_lr
from tinytl_tf.train import accuracy, distribution_scope, fit, seed_everything
from tinytl_tf.transfer import check_method, prepare_transfer

STALE_EXPORTS = ("model.tflite", "model.json", "model.init.npz")  # exported from a model.keras --overwrite replaces


def data_loader(data_dir, tfds=None, val_fraction=0.2, seed=0):
    """The `load_data` of `train_job` for a class-per-folder tree (a flat one split by `val_fraction` and `seed`),
    or, with `tfds`, for the prepared tensorflow-datasets set of that name in `data_dir`."""
    from tinytl_tf import data

    def load(resolution, mean, std, batch_size):
        if tfds:
            return data.load_tfds(tfds, data_dir, resolution, mean, std, batch_size, seed=seed)
        return data.load_image_folder(data_dir, resolution, mean, std, batch_size, val_fraction=val_fraction, seed=seed)

    return load


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
    metrics["model_sha256"] = file_sha256(out / "model.keras")
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


def file_sha256(path):
    """The hex SHA-256 of a file: `split.json` and `metrics.json` name the model.keras they belong to."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


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
