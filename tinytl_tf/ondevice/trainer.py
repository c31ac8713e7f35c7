"""`Trainer`: the device boundary. Validated, rollback-protected training steps and predictions on a `DeviceModel`.

LiteRT checks nothing: a label outside [0, num_classes) one-hot encodes to zeros and trains anyway, and one NaN
pixel turns every weight into NaN. So inputs are checked before the interpreter sees them (`InputError`, weights
untouched), and a step whose loss or updated weights are not finite (a learning rate that is too large, an
overflow) is undone and counted instead of poisoning the run.
"""

import math
from dataclasses import dataclass

import numpy as np

from tinytl_tf.errors import TinyTLError


class InputError(TinyTLError, ValueError):
    """An image tensor, label, learning rate or weight set the model cannot take; nothing was changed."""


@dataclass(frozen=True)
class StepResult:
    loss: float  # of the forward pass before the update (NaN/Inf when rolled back for it)
    logits: np.ndarray  # [1, num_classes], before the update
    rolled_back: bool  # the update was undone: the weights are those from before the step


class Trainer:
    """Owns a `DeviceModel`'s weights: every change goes through here, so the last good weights are always known.

    Rollback cost: each step reads back every variable through `get_weights` (trainables, optimizer slots, step),
    scans LiteRT's outputs in place for NaN/Inf and only then copies them over the capture the next step rolls back
    to, so one copy is kept beside the signature's outputs (not a second, fresh one per step) and `weights` (what
    checkpoints store) is free. A rollback is one `set_weights`.
    """

    def __init__(self, model):
        self.model = model
        self.rolled_back = 0
        self._good = _owned(model.get_weights())

    @property
    def weights(self):
        """{name: array} after the last accepted step (or set_weights); do not modify."""
        return self._good

    def set_weights(self, weights):
        problem = self.model.weights_mismatch(weights)
        if problem:
            raise InputError(f"weights do not fit this model: {problem}")
        if not _all_finite(weights):
            raise InputError("weights contain NaN or Inf values")
        self.model.set_weights(weights)
        self._good = _owned(self.model.get_weights())

    def train_step(self, x, y, lr=0.0):
        """One optimizer step on a normalized image tensor x ([S, S, 3] or [1, S, S, 3]) with class index y.

        `lr` > 0 overrides the learning rate; <= 0 uses the model's own schedule. Raises InputError before any
        change for a bad x, y or lr.
        """
        x, y, lr = self.check_image(x), self.check_label(y), _check_lr(lr)
        loss, logits = self.model.train(x, y, lr)
        if math.isfinite(loss):
            after = self.model.weight_views()
            if _all_finite(after):
                for name, value in after.items():
                    np.copyto(self._good[name], value)
                return StepResult(loss, logits, False)
        self.model.set_weights(self._good)
        self.rolled_back += 1
        return StepResult(loss, logits, True)

    def predict(self, x):
        """Class probabilities [num_classes] of a normalized image tensor."""
        return self.model.infer(self.check_image(x))[0]

    def check_image(self, x):
        """float32 [1, S, S, 3] from a float array of that shape or [S, S, 3]; InputError for NaN/Inf or wrong shape."""
        x = np.asarray(x)
        shape = self.model.image_shape
        if x.dtype.kind != "f":
            raise InputError(
                f"image tensor has dtype {x.dtype}; the model takes normalized float32 {list(shape)} "
                "(preprocess images with DeviceModel.preprocessing)"
            )
        if x.shape == shape[1:]:
            x = x[None]
        if x.shape != shape:
            raise InputError(f"image tensor has shape {list(x.shape)}; the model takes {list(shape)}")
        with np.errstate(over="ignore"):  # float64 beyond float32's range becomes Inf, rejected just below
            x = x.astype(np.float32)
        if not np.isfinite(x).all():
            raise InputError(
                f"image tensor has {int(np.size(x) - np.isfinite(x).sum())} NaN/Inf values "
                "(after conversion to float32)"
            )
        return x

    def check_label(self, y):
        """int32 [1] from one integer class index; InputError outside [0, num_classes)."""
        y = np.asarray(y)
        if y.shape not in ((), (1,)) or y.dtype.kind not in "iu":
            raise InputError(f"label must be one integer class index, got {y.dtype} array of shape {list(y.shape)}")
        label, n = int(y.reshape(())), self.model.num_classes
        if not 0 <= label < n:
            raise InputError(f"label {label} is outside [0, {n}) (classes {list(self.model.labels)})")
        return np.array([label], np.int32)


def _check_lr(lr):
    try:
        with np.errstate(over="ignore"):  # beyond float32's range becomes Inf, rejected below
            value = np.float32(lr)
    except (TypeError, ValueError):
        value = np.float32("nan")
    if not np.isfinite(value):
        raise InputError(f"learning rate {lr!r} is not a finite float32")
    return value


def _owned(weights):
    """`get_weights`' fresh copies as arrays that can be overwritten in place (a scalar, the step, comes as a numpy
    scalar)."""
    return {name: np.asarray(value) for name, value in weights.items()}


def _all_finite(weights):
    return all(np.isfinite(v).all() for v in weights.values())
