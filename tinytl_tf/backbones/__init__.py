"""Named backbones: the TF-free registry (`registry`) and the Keras models built from its entries (`builder`).

Importing the package loads no Keras, so `tinytl_tf.backbones.registry` stays TF-free: the builder's names
(`TinyNet`, `build_model`, ...) are imported from `builder` on first use.
"""

import importlib

from tinytl_tf.backbones.registry import BACKBONES, Backbone, UnknownBackbone, backbone_config, get_backbone
from tinytl_tf.config import check_resolution

_BUILDER_NAMES = ("TinyNet", "build_model", "copy_weights", "count_params", "load_weights_by_path")


def __getattr__(name):
    if name in _BUILDER_NAMES:
        return getattr(importlib.import_module("tinytl_tf.backbones.builder"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_backbone(name, resolution=None, weights_dir=None):
    """The named backbone with its ImageNet head and pretrained weights (random where none exist)."""
    from tinytl_tf.backbones.builder import build_model, load_weights_by_path

    cfg, arrays = get_backbone(name).load(weights_dir)
    if resolution is not None:
        check_resolution(resolution)
        cfg = cfg.replace(resolution=resolution)
    model = build_model(cfg)
    if arrays is not None:
        load_weights_by_path(model, arrays)
    return model


__all__ = [
    "BACKBONES",
    "Backbone",
    "TinyNet",
    "UnknownBackbone",
    "backbone_config",
    "build_model",
    "copy_weights",
    "count_params",
    "get_backbone",
    "load_backbone",
    "load_weights_by_path",
]
