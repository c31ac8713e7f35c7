"""The three MCU-sized ImageNet nets of MIT HAN Lab's tiny-training release (MCUNet-5fps, ProxylessNAS-w0.3,
MobileNetV2-w0.35; 8-bit, BatchNorm folded), as float networks.

Conversion (assets README): W = weight * w_scales (per output channel), b = bias * x_scale * w_scales; every
conv but the projections ends in a clip to [0, 6] (ReLU6); symmetric PyTorch padding; pixels (p - 128) / 128.
"""

import json
from pathlib import Path

import numpy as np

from tinytl_tf.config import BlockConfig, ConvConfig, NetConfig

WEIGHTS_DIR = Path(__file__).parent / "weights"
FILES = {"mcunet-5fps": "mcunet-5fps.npz", "proxyless-w0.3": "proxyless-w0.3.npz", "mbv2-w0.35": "mbv2-w0.35.npz"}


def _float_conv(z, key):
    w = z[f"{key}/weight"].astype(np.float64) * z[f"{key}/w_scales"][:, None, None, None]
    b = z[f"{key}/bias"].astype(np.float64) * float(z[f"{key}/x_scale"]) * z[f"{key}/w_scales"]
    return w, b


def _hwio(w, depthwise):
    """OIHW -> HWIO; a depthwise [C, 1, k, k] -> [k, k, C, 1]."""
    return w.transpose(2, 3, 0, 1) if depthwise else w.transpose(2, 3, 1, 0)


def load(name):
    """(NetConfig with the 1000-class ImageNet head, {weight path: array})."""
    z = np.load(WEIGHTS_DIR / FILES[name])
    arch = json.loads(str(z["arch.json"]))
    first = arch["first_conv"]
    blocks = []
    for spec in arch["blocks"]:
        dw, pw1 = spec["depthwise"], spec["pointwise1"]
        blocks.append(
            BlockConfig(
                kernel=dw["kernel_size"][0],
                stride=dw["stride"],
                out=spec["pointwise2"]["out_channel"],
                mid=None if pw1 is None else pw1["out_channel"],
                shortcut=bool(spec["residual"]),
            )
        )
    cfg = NetConfig(
        name=name,
        resolution=int(arch["input_size"]),
        stem=ConvConfig(out=first["out_channel"], kernel=first["kernel_size"][0], stride=first["stride"]),
        blocks=tuple(blocks),
        num_classes=arch["classifier"]["out_channel"],
    )

    arrays = {}

    def put(layer, key, depthwise=False):
        w, b = _float_conv(z, key)
        arrays[f"{layer}/kernel"] = _hwio(w, depthwise)
        arrays[f"{layer}/scale"] = np.ones_like(b)
        arrays[f"{layer}/bias"] = b

    put("stem", "first_conv")
    for i, spec in enumerate(arch["blocks"]):
        if spec["pointwise1"] is not None:
            put(f"block_{i}/expand", f"blocks.{i}.pointwise1")
        put(f"block_{i}/depthwise", f"blocks.{i}.depthwise", depthwise=True)
        put(f"block_{i}/project", f"blocks.{i}.pointwise2")
    w, b = _float_conv(z, "classifier")
    arrays["head/kernel"] = w[:, :, 0, 0].T
    arrays["head/bias"] = b
    return cfg, arrays
