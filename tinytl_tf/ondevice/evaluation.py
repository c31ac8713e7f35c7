"""Accuracy on a folder and top-k predictions of single images, with a model's exported or checkpointed weights.

Images go through `DeviceModel.preprocessing.eval_tensor` (imagefiles's eval transform), exactly as the desktop
evaluates, so device and desktop accuracies of the same weights agree.
"""

import numpy as np

from tinytl_tf import imagefiles
from tinytl_tf.ondevice.checkpoint import CheckpointError, CheckpointStore
from tinytl_tf.ondevice.model import DeviceModel
from tinytl_tf.ondevice.trainer import Trainer


def load_for_inference(model_path, checkpoint=None):
    """(Trainer, checkpoint file used or None): the model with the weights of `checkpoint` (or `.prev`) if given."""
    model = DeviceModel(model_path)
    trainer = Trainer(model)
    if checkpoint is None:
        return trainer, None
    store = CheckpointStore(checkpoint, model)
    saved = store.load()
    if saved is None:
        raise CheckpointError(f"checkpoint {store.path} does not exist (nor {store.prev})")
    trainer.set_weights(saved.weights)
    return trainer, saved.source


def evaluate_folder(model_path, data, checkpoint=None):
    """Top-1 accuracy and mean cross-entropy (no label smoothing) on DIR/test/<class>/ or DIR/<class>/.

    Class folders map to the model's labels by name (a folder the model does not know is an error); unreadable
    images are left out and counted in `skipped`.
    """
    trainer, source = load_for_inference(model_path, checkpoint)
    model = trainer.model
    split = imagefiles.scan_test_folder(data, model.labels)
    correct, cross_entropy = 0, 0.0
    for path, label in split.test:
        p = trainer.predict(model.preprocessing.eval_tensor(imagefiles.load_rgb(path)))
        correct += int(np.argmax(p) == label)
        cross_entropy -= float(np.log(max(float(p[label]), np.finfo(np.float32).tiny)))
    n = len(split.test)
    return {
        "accuracy": correct / n,
        "examples": n,
        "cross_entropy": cross_entropy / n,
        "skipped": split.skipped,
        "model": str(model_path),
        "data": str(data),
        "checkpoint": source,
    }


def predict_images(model_path, images, checkpoint=None, top_k=3):
    """The `top_k` most probable labels of each image file, most probable first."""
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    trainer, source = load_for_inference(model_path, checkpoint)
    model = trainer.model
    predictions = []
    for path in images:
        p = trainer.predict(model.preprocessing.eval_tensor(imagefiles.load_rgb(path)))
        best = np.argsort(-p, kind="stable")[:top_k]
        predictions.append(
            {"image": str(path), "top": [{"label": model.labels[i], "probability": float(p[i])} for i in best]}
        )
    return {"predictions": predictions, "model": str(model_path), "checkpoint": source}
