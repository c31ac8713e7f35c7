"""The six transfer methods of TinyTL (REFERENCE §1): which tensors train, and where lite residuals go."""

from tinytl_tf.backbones import build_model, copy_weights
from tinytl_tf.config import TrainableSet, with_lite_residual
from tinytl_tf.contract import METHODS

TRAINABLE = {
    "ft-last": TrainableSet(),
    "ft-norm-last": TrainableSet(main_scale=True, main_bias=True, lite_gamma=True, lite_beta=True, lite_final_beta=True),
    "ft-full": TrainableSet(main_kernel=True, main_scale=True, main_bias=True, lite_kernel=True, lite_gamma=True,
                            lite_beta=True, lite_final_beta=True),
    "tinytl-b": TrainableSet(main_bias=True, lite_beta=True, lite_final_beta=True),
    "tinytl-l": TrainableSet(lite_kernel=True, lite_gamma=True, lite_beta=True, lite_final_beta=True),
    # the last lite norm's beta adds to the same tensor as the main branch's trainable bias: redundant
    "tinytl-lb": TrainableSet(main_bias=True, lite_kernel=True, lite_gamma=True, lite_beta=True),
}
assert tuple(TRAINABLE) == METHODS
USES_LITE_RESIDUAL = ("tinytl-l", "tinytl-lb")


class UnknownMethod(ValueError):
    pass


def check_method(method):
    if method not in TRAINABLE:
        raise UnknownMethod(f"unknown transfer method {method!r}; valid: {', '.join(METHODS)}")


def prepare_transfer(model, method, num_classes, lite_residual=None, labels=(), dropout=0.2, resolution=None):
    """A new model for `method`: a fresh `num_classes` head, lite residual branches if the method uses them (or
    if `lite_residual` says so), the method's trainable set, and every other weight copied from `model`.

    New lite branches are randomly initialised with a zero last-norm scale, so before training the new model
    computes exactly the backbone's features.
    """
    check_method(method)
    cfg = model.net_config
    if lite_residual if lite_residual is not None else method in USES_LITE_RESIDUAL:
        cfg = with_lite_residual(cfg)
    cfg = cfg.replace(num_classes=num_classes, dropout=dropout, trainable=TRAINABLE[method], method=method,
                      labels=tuple(labels), resolution=resolution or cfg.resolution)
    new = build_model(cfg)
    copy_weights(model, new, skip_prefixes=("head/",))
    return new
