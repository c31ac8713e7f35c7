"""The network config: JSON round trip and errors that name the field."""

import json

import pytest

from tinytl_tf.backbones import backbone_config
from tinytl_tf.config import ConfigError, NetConfig, with_lite_residual


def test_json_round_trip_of_every_backbone_with_lite():
    for name in ("mcunet-5fps", "mobilenet-v1", "proxylessnas-mobile"):
        cfg = with_lite_residual(backbone_config(name))
        assert NetConfig.from_json(cfg.to_json()) == cfg


@pytest.mark.parametrize(
    "edit,field",
    [
        (lambda d: d.update(colour="red"), "colour"),
        (lambda d: d["blocks"][2].update(kernel=4), "blocks[2].kernel"),
        (lambda d: d["blocks"][1].update(depth=5), "blocks[1]: unknown field"),
        (lambda d: d["blocks"][1].update(shortcut=True), "blocks[1].shortcut"),
        (lambda d: d["stem"].update(stride=3), "stem.stride"),
        (lambda d: d.update(resolution=100000), "resolution"),
        (lambda d: d.update(labels=["a"]), "labels"),
        (lambda d: d["trainable"].update(everything=True), "trainable: unknown field"),
    ],
)
def test_bad_config_names_the_field(edit, field):
    d = json.loads(backbone_config("mcunet-5fps").to_json())
    edit(d)
    with pytest.raises(ConfigError, match=field.replace("[", r"\[").replace("]", r"\]")):
        NetConfig.from_dict(d)


def test_not_json():
    with pytest.raises(ConfigError, match="not valid JSON"):
        NetConfig.from_json("{blocks: [")
