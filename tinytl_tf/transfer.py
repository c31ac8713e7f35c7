"""Apply a transfer method (`tinytl_tf.methods`) to a Keras backbone: new head, lite residuals, trainable set."""

from tinytl_tf.backbones import build_model, copy_weights
from tinytl_tf.methods import TRAINABLE, USES_LITE_RESIDUAL, UnknownMethod, check_method, method_config

__all__ = ["TRAINABLE", "USES_LITE_RESIDUAL", "UnknownMethod", "check_method", "prepare_transfer"]


def prepare_transfer(model, method, num_classes, lite_residual=None, labels=(), dropout=0.2, resolution=None):
    """A new model for `method` with every weight of `model` copied except the head (see `method_config`).

    New lite branches are randomly initialised with a zero last-norm scale, so before training the new model
    computes exactly the backbone's features.
    """
    cfg = method_config(model.net_config, method, num_classes, lite_residual, labels, dropout, resolution)
    new = build_model(cfg)
    copy_weights(model, new, skip_prefixes=("head/",))
    return new
