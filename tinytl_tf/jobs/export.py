"""The `export` job: a trained model.keras -> one on-device training X.tflite and its metadata X.json beside it
(model.json for model.tflite), by `tinytl_tf.export`.

The in-model cosine schedule spans the steps the device will train at batch size 1: --total-steps, else --epochs x
the training images (--train-examples, the train split of --data, or the train_examples in the metrics.json written
with --model).
"""

import json
from pathlib import Path


def device_steps(model_path, epochs, total_steps=None, train_examples=None, data=None):
    """(steps of the schedule, where the number comes from): given, or `epochs` x the device's training images.
    TF-free, so a command can refuse a model it cannot size before TensorFlow starts."""
    if total_steps:
        return total_steps, "--total-steps"
    if train_examples:
        return epochs * train_examples, "--epochs x --train-examples"
    if data:
        from tinytl_tf.imagefiles import count_train_images

        return epochs * count_train_images(data), f"--epochs x the training images of {data}"
    metrics = Path(model_path).parent / "metrics.json"
    try:
        examples = int(json.loads(metrics.read_text())["train_examples"])
    except (OSError, ValueError, KeyError, TypeError):
        raise ValueError(
            f"cannot tell how many steps the device will train: {metrics} has no train_examples; pass "
            "--data DIR (the device's training images), --train-examples N or --total-steps N"
        ) from None
    return epochs * examples, f"--epochs x train_examples of {metrics}"


def export_job(model_path, out, **options):
    """Load the model.keras at `model_path` and export it to `out` with `options` (those of
    `tinytl_tf.export.export_model`: optimizer, lr, total_steps, ...); returns the metadata written beside it."""
    from tinytl_tf.export import export_model
    from tinytl_tf.train import load_trained

    return export_model(load_trained(model_path), out, **options)
