"""On-device training of an exported tinytl_tf model with LiteRT, numpy and Pillow only: never TensorFlow or Keras,
so it runs on a Raspberry Pi-class device. `python -m tinytl_tf.ondevice --help` for the command line.

    model = DeviceModel("model.tflite")          # checked against model.json (model.py)
    trainer = Trainer(model)                     # validated, rollback-protected steps (trainer.py)
    x = model.preprocessing.eval_tensor(imagefiles.load_rgb("cat.jpg"))
    trainer.train_step(x, label)                 # -> StepResult(loss, logits, rolled_back)
    trainer.predict(x)                           # -> probabilities

`train_folder` (folder_training.py) streams a class-per-folder tree with exact resume from `CheckpointStore`
checkpoints (checkpoint.py); `evaluate_folder` and `predict_images` (evaluation.py) run the trained weights.
"""

from tinytl_tf.ondevice.checkpoint import CheckpointError, CheckpointStore
from tinytl_tf.ondevice.evaluation import evaluate_folder, predict_images
from tinytl_tf.ondevice.folder_training import train_folder
from tinytl_tf.ondevice.model import DeviceModel, ModelError
from tinytl_tf.ondevice.trainer import InputError, StepResult, Trainer

__all__ = [
    "CheckpointError",
    "CheckpointStore",
    "DeviceModel",
    "InputError",
    "ModelError",
    "StepResult",
    "Trainer",
    "evaluate_folder",
    "predict_images",
    "train_folder",
]
