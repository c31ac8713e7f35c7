"""The named backbones, TF-free (numpy only): each name's description, architecture and weights loader.

Everything that takes a backbone name asks this table (the CLI, the memory model, the search space, the model
builder), so adding a backbone is adding its entry here. Importing it loads neither Keras nor TensorFlow, which is
what lets the CLI answer `--help` and argument mistakes, and the memory model and the search run, without them.
"""

from collections.abc import Callable
from dataclasses import dataclass

from tinytl_tf.backbones import mobilenet_v1, proxylessnas, tiny_training
from tinytl_tf.errors import TinyTLError


@dataclass(frozen=True)
class Backbone:
    """`config()`: the architecture with its ImageNet head; `load(weights_dir)`: (that architecture, its weights by
    layer path, or None where the backbone has no pretrained weights)."""

    description: str
    config: Callable
    load: Callable


def _tiny_training(name, title):
    return Backbone(
        f"{title}, ImageNet 8-bit weights (vendored), 128 px",
        lambda: tiny_training.load(name)[0],
        lambda weights_dir: tiny_training.load(name),
    )


BACKBONES = {
    "mcunet-5fps": _tiny_training("mcunet-5fps", "MCUNet-5fps"),
    "proxyless-w0.3": _tiny_training("proxyless-w0.3", "ProxylessNAS-w0.3"),
    "mbv2-w0.35": _tiny_training("mbv2-w0.35", "MobileNetV2-w0.35"),
    "mobilenet-v1": Backbone(
        "MobileNetV1-1.0, ImageNet float weights (from --weights-dir), 224 px", mobilenet_v1.config, mobilenet_v1.load
    ),
    "proxylessnas-mobile": Backbone(
        "ProxylessNAS-Mobile architecture, random weights (none offline), 224 px",
        proxylessnas.config,
        proxylessnas.load,
    ),
}


class UnknownBackbone(TinyTLError, ValueError):
    pass


def get_backbone(name):
    """The registry entry of `name`; an unknown name is an error listing the valid ones."""
    if name not in BACKBONES:
        raise UnknownBackbone(f"unknown backbone {name!r}; valid: {', '.join(BACKBONES)}")
    return BACKBONES[name]


def backbone_config(name):
    """The architecture of a named backbone without building it."""
    return get_backbone(name).config()
