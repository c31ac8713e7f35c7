"""The six transfer methods compared in the TinyTL paper (Cai et al., NeurIPS 2020) as data: which tensors train, and
where lite residuals go.

TF-free, so the memory model and the search can turn a backbone config into a method's config without Keras;
`tinytl_tf.transfer.prepare_transfer` builds the Keras model of the same config.
"""

from tinytl_tf.backbones.registry import backbone_config
from tinytl_tf.config import TrainableSet, check_resolution, with_lite_residual
from tinytl_tf.contract import METHODS
from tinytl_tf.errors import TinyTLError

TRAINABLE = {
    "ft-last": TrainableSet(),
    "ft-norm-last": TrainableSet(
        main_scale=True, main_bias=True, lite_gamma=True, lite_beta=True, lite_final_beta=True
    ),
    "ft-full": TrainableSet(
        main_kernel=True,
        main_scale=True,
        main_bias=True,
        lite_kernel=True,
        lite_gamma=True,
        lite_beta=True,
        lite_final_beta=True,
    ),
    "tinytl-b": TrainableSet(main_bias=True, lite_beta=True, lite_final_beta=True),
    "tinytl-l": TrainableSet(lite_kernel=True, lite_gamma=True, lite_beta=True, lite_final_beta=True),
    # the last lite norm's beta adds to the same tensor as the main branch's trainable bias: redundant
    "tinytl-lb": TrainableSet(main_bias=True, lite_kernel=True, lite_gamma=True, lite_beta=True),
}
assert tuple(TRAINABLE) == METHODS
# Peak Adam learning rate of `train` when --lr is not given, per method: the best holdout top-1 of the accuracy
# study's grid on CIFAR-10 (mcunet-5fps, 128 px, batch 8, 5 epochs; docs/RESULTS.md): FT-Last 3e-3 (tied with 1e-2),
# FT-Full 3e-4 (1e-3 diverges), TinyTL-B 1e-3, TinyTL-L+B 1e-3, each an interior optimum. FT-Norm+Last and TinyTL-L
# keep the values an earlier Caltech-101 holdout chose until the study's grid covers them.
DEFAULT_LR = {
    "ft-last": 3e-3,
    "ft-norm-last": 3e-3,
    "ft-full": 3e-4,
    "tinytl-b": 1e-3,
    "tinytl-l": 3e-3,
    "tinytl-lb": 1e-3,
}
assert tuple(DEFAULT_LR) == METHODS
# The optimizers of `train` (model.fit): float Adam, and Adam with block-wise 8-bit moments (tinytl_tf.ops.adam8bit).
OPTIMIZERS = ("adam", "adam8bit")
USES_LITE_RESIDUAL = ("tinytl-l", "tinytl-lb")


class UnknownMethod(TinyTLError, ValueError):
    pass


def check_method(method):
    if method not in TRAINABLE:
        raise UnknownMethod(f"unknown transfer method {method!r}; valid: {', '.join(METHODS)}")


def default_lr(method):
    check_method(method)
    return DEFAULT_LR[method]


def method_config(cfg, method, num_classes, lite_residual=None, labels=(), dropout=0.2, resolution=None):
    """`cfg` (a NetConfig, or a backbone name of `tinytl_tf.backbones.registry`) turned into `method`'s network,
    without building anything: a new `num_classes` head, lite residual branches where the method uses them (or
    every method, `lite_residual=True`; none, `False`), and the method's trainable set."""
    if isinstance(cfg, str):
        cfg = backbone_config(cfg)
    check_method(method)
    if resolution is not None:
        check_resolution(resolution)
    if lite_residual if lite_residual is not None else method in USES_LITE_RESIDUAL:
        cfg = with_lite_residual(cfg)
    return cfg.replace(
        num_classes=num_classes,
        dropout=dropout,
        trainable=TRAINABLE[method],
        method=method,
        labels=tuple(labels),
        resolution=resolution or cfg.resolution,
    )
