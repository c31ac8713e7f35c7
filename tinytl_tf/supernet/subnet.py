"""`subnet.json`, the search's result: a sub-net of a super-net's space, validated on reading, and turned back into a
plain `TinyNet` with the fine-tuned super-net's weights (`train --subnet`)."""

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import keras

from tinytl_tf.config import ConfigError
from tinytl_tf.supernet import space
from tinytl_tf.supernet.supernet import SuperNet

SUBNET_FORMAT = "tinytl_tf/subnet-v2"
SUBNET_REQUIRED = ("format", "backbone", "config", "resolution", "spec", "supernet")
SUBNET_OPTIONAL = (
    "predicted_accuracy",
    "holdout_accuracy",
    "predicted_memory_mb",
    "budget_mb",
    "measured",
    "chosen",
    "candidate",
    "holdout_lead",
    "holdout_lead_error",
    "baseline",
    "objective",
    "predictor",
    "phase_seconds",
    "search",
)


@dataclass(frozen=True)
class Subnet:
    """A validated `subnet.json`."""

    backbone: str
    spec: space.SuperSpec
    arch: space.Arch
    supernet_path: Path  # the fine-tuned super-net checkpoint it was searched with


def read_subnet(path):
    """Read and validate a `subnet.json`; a hand-edited or foreign file raises ConfigError naming the field."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no sub-net file at {path}; pass the subnet.json written by `search --out`")
    try:
        d = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(d, dict):
        raise ConfigError(f"subnet: expected an object, got {type(d).__name__}")
    unknown = sorted(set(d) - set(SUBNET_REQUIRED) - set(SUBNET_OPTIONAL))
    missing = [k for k in SUBNET_REQUIRED if k not in d]
    if unknown or missing:
        raise ConfigError(
            f"subnet: unknown field(s) {unknown}, missing field(s) {missing}; valid fields: "
            f"{list(SUBNET_REQUIRED + SUBNET_OPTIONAL)}"
        )
    if d["format"] != SUBNET_FORMAT:
        raise ConfigError(f"subnet.format: expected {SUBNET_FORMAT!r}, got {d['format']!r}")
    if not isinstance(d["spec"], dict):
        raise ConfigError("subnet.spec: expected an object")
    spec = space.SuperSpec.from_dict(d["spec"])
    arch = space.arch_from_dict(spec, d["config"], "subnet.config")
    if d["resolution"] != arch.resolution:
        raise ConfigError(
            f"subnet.resolution: {d['resolution']!r} differs from subnet.config.resolution {arch.resolution}"
        )
    if not isinstance(d["supernet"], str):
        raise ConfigError("subnet.supernet: expected the path of the fine-tuned super-net")
    return Subnet(str(d["backbone"]), spec, arch, path.parent / d["supernet"])


def _note(message):
    print(message, file=sys.stderr)


def load_subnet(path, method="tinytl-lb", resolution=None, weights_dir=None, log=_note):
    """The searched sub-net as a plain `TinyNet` for `method`, with the fine-tuned super-net's weights (the
    pretrained backbone's when the checkpoint is gone, saying so through `log`)."""
    sub = read_subnet(path)
    if resolution is not None and resolution != sub.arch.resolution:
        raise ValueError(
            f"--resolution {resolution} differs from the searched sub-net's {sub.arch.resolution} px "
            f"({path}); drop --resolution"
        )
    if sub.supernet_path.is_file():
        net = keras.saving.load_model(sub.supernet_path, compile=False)
    else:
        log(
            f"note: no fine-tuned super-net at {sub.supernet_path}; the sub-net starts from the pretrained "
            f"{sub.backbone} weights instead"
        )
        b = sub.spec.base
        elastic = any(len(s.kernels) > 1 or len(s.expands) > 1 for s in sub.spec.slots)
        net = SuperNet.from_backbone(
            sub.backbone, b.num_classes, b.labels, sub.spec.resolutions, b.dropout, weights_dir, elastic
        )
    if net.spec != sub.spec:
        raise ConfigError(
            f"subnet.spec: differs from the super-net's ({sub.supernet_path}); the file was edited "
            f"or belongs to another search"
        )
    return net.extract_subnet(sub.arch, method)
