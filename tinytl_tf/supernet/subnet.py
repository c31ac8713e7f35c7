"""`subnet.json`, the search's result: a sub-net of a super-net's space, validated on reading, and turned back into a
plain `TinyNet` with the pretrained weights the search started from (`train --subnet`)."""

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import keras

from tinytl_tf.config import ConfigError
from tinytl_tf.supernet import space
from tinytl_tf.supernet.supernet import SuperNet

SUBNET_FORMAT = "tinytl_tf/subnet-v3"
SUBNET_REQUIRED = ("format", "backbone", "config", "resolution", "spec", "start")
SUBNET_OPTIONAL = (
    "predicted_accuracy",
    "holdout_accuracy",
    "predicted_memory_mb",
    "budget_mb",
    "measured",
    "chosen",
    "candidate",
    "finalists",
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
    start_path: Path  # the calibrated, not fine-tuned, super-net the search started every finalist from


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
        raise ConfigError(
            f"subnet.format: expected {SUBNET_FORMAT!r}, got {d['format']!r}; run the same `search` command again "
            f"to rewrite it (finished phases are kept)"
        )
    if not isinstance(d["spec"], dict):
        raise ConfigError("subnet.spec: expected an object")
    spec = space.SuperSpec.from_dict(d["spec"])
    arch = space.arch_from_dict(spec, d["config"], "subnet.config")
    if d["resolution"] != arch.resolution:
        raise ConfigError(
            f"subnet.resolution: {d['resolution']!r} differs from subnet.config.resolution {arch.resolution}"
        )
    if not isinstance(d["start"], str):
        raise ConfigError("subnet.start: expected the path of the search's start super-net (<backbone>/start.keras)")
    return Subnet(str(d["backbone"]), spec, arch, path.parent / d["start"])


def _note(message):
    print(message, file=sys.stderr)


def load_subnet(path, method="tinytl-lb", resolution=None, weights_dir=None, log=_note):
    """The searched sub-net as a plain `TinyNet` for `method`, with the weights its finalist was fine-tuned from in
    the search: the pretrained backbone's, calibrated (without the checkpoint: uncalibrated, saying so through
    `log`; that changes only cropped kernels' and dropped channels' mean compensation)."""
    sub = read_subnet(path)
    if resolution is not None and resolution != sub.arch.resolution:
        raise ValueError(
            f"--resolution {resolution} differs from the searched sub-net's {sub.arch.resolution} px "
            f"({path}); drop --resolution"
        )
    if sub.start_path.is_file():
        net = keras.saving.load_model(sub.start_path, compile=False)
    else:
        log(
            f"note: no start super-net at {sub.start_path}; the sub-net starts from the pretrained {sub.backbone} "
            f"weights without the search's mean calibration"
        )
        b = sub.spec.base
        elastic = any(len(s.kernels) > 1 or len(s.expands) > 1 for s in sub.spec.slots)
        net = SuperNet.from_backbone(
            sub.backbone, b.num_classes, b.labels, sub.spec.resolutions, b.dropout, weights_dir, elastic
        )
    if net.spec != sub.spec:
        raise ConfigError(
            f"subnet.spec: differs from the super-net's ({sub.start_path}); the file was edited "
            f"or belongs to another search"
        )
    return net.extract_subnet(sub.arch, method)
