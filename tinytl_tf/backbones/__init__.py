"""Named backbones: a table of loaders, each returning (NetConfig, weights by path or None).

Adding a backbone is adding a loader and a table entry; `build_model` builds all of them.
"""

from tinytl_tf.backbones import mcu, mobilenet_v1, proxylessnas
from tinytl_tf.backbones.builder import TinyNet, build_model, copy_weights, count_params, load_weights_by_path
from tinytl_tf.config import check_resolution

BACKBONES = {
    "mcunet-5fps": ("MCUNet-5fps, ImageNet 8-bit weights (vendored), 128 px", lambda d: mcu.load("mcunet-5fps")),
    "proxyless-w0.3": ("ProxylessNAS-w0.3, ImageNet 8-bit weights (vendored), 128 px", lambda d: mcu.load("proxyless-w0.3")),
    "mbv2-w0.35": ("MobileNetV2-w0.35, ImageNet 8-bit weights (vendored), 128 px", lambda d: mcu.load("mbv2-w0.35")),
    "mobilenet-v1": ("MobileNetV1-1.0, ImageNet float weights (from --weights-dir), 224 px", mobilenet_v1.load),
    "proxylessnas-mobile": ("ProxylessNAS-Mobile architecture, random weights (none offline), 224 px", proxylessnas.load),
}


class UnknownBackbone(ValueError):
    pass


def backbone_config(name):
    """The architecture of a named backbone without loading weights."""
    _check_name(name)
    return {"mobilenet-v1": mobilenet_v1.config, "proxylessnas-mobile": proxylessnas.config}.get(
        name, lambda: mcu.load(name)[0])()


def load_backbone(name, resolution=None, weights_dir=None):
    """The named backbone with its ImageNet head and pretrained weights (random where none exist)."""
    _check_name(name)
    cfg, arrays = BACKBONES[name][1](weights_dir)
    if resolution is not None:
        check_resolution(resolution)
        cfg = cfg.replace(resolution=resolution)
    model = build_model(cfg)
    if arrays is not None:
        load_weights_by_path(model, arrays)
    return model


def _check_name(name):
    if name not in BACKBONES:
        raise UnknownBackbone(f"unknown backbone {name!r}; valid: {', '.join(BACKBONES)}")


__all__ = ["BACKBONES", "TinyNet", "UnknownBackbone", "backbone_config", "build_model", "copy_weights",
           "count_params", "load_backbone", "load_weights_by_path"]
