"""Pixels -> the float32 [1, S, S, 3] tensor a model's `train` / `infer` take, by calling `tinytl_tf.imagefiles`.

The desktop tf.data pipeline calls the same imagefiles functions, so the device sees exactly the desktop's pixels;
nothing here re-implements a transform.
"""

from dataclasses import dataclass

from tinytl_tf import imagefiles


@dataclass(frozen=True)
class Preprocessing:
    """A model's input recipe from model.json `input`: square size S and per-channel mean/std on [0, 255] pixels."""

    size: int
    mean: tuple
    std: tuple

    def eval_tensor(self, image):
        """uint8 [H, W, 3] -> resize the shorter side, centre crop, normalize; batch of one."""
        return imagefiles.normalize(imagefiles.eval_transform(image, self.size), self.mean, self.std)[None]

    def train_tensor(self, image, rng):
        """uint8 [H, W, 3] -> random-resized crop + flip drawn from the numpy Generator `rng`, normalize; batch of
        one."""
        return imagefiles.normalize(imagefiles.train_transform(image, self.size, rng), self.mean, self.std)[None]
