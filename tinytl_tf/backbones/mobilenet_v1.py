"""MobileNetV1-1.0-224 from the TF-slim ImageNet checkpoint (float, BatchNorm unfolded; TF SAME padding).

The frozen BatchNorm becomes the conv's per-channel scale gamma/sqrt(var + eps) and bias beta - mean * scale.
The head has 1001 classes: index 0 is "background", index i is ImageNet class i - 1.
"""

import os
from pathlib import Path

import numpy as np

from tinytl_tf.config import BlockConfig, ConvConfig, NetConfig

FILE = "mobilenet_v1_1.0_224_imagenet.npz"
BN_EPSILON = 1e-3
# (stride, out) of the 13 depthwise-separable blocks
BLOCKS = [(1, 64), (2, 128), (1, 128), (2, 256), (1, 256), (2, 512)] + [(1, 512)] * 5 + [(2, 1024), (1, 1024)]


def config():
    blocks = tuple(BlockConfig(kernel=3, stride=s, out=o, project_act="relu6") for s, o in BLOCKS)
    return NetConfig(
        name="mobilenet-v1",
        resolution=224,
        stem=ConvConfig(out=32, kernel=3, stride=2),
        blocks=blocks,
        num_classes=1001,
        padding="same",
    )


def find_weights(weights_dir=None):
    """The checkpoint is not vendored (17 MB): look in `weights_dir`, else in $TINYTL_WEIGHTS_DIR."""
    for d in (weights_dir, os.environ.get("TINYTL_WEIGHTS_DIR")):
        if d and (Path(d) / FILE).is_file():
            return Path(d) / FILE
    raise FileNotFoundError(
        f"mobilenet-v1 needs its ImageNet weights {FILE}, which are not shipped with the package. "
        f"Pass --weights-dir DIR (or set TINYTL_WEIGHTS_DIR) to the folder that holds it."
    )


def load(weights_dir=None):
    z = np.load(find_weights(weights_dir))
    arrays = {}

    def put(layer, prefix, kernel):
        bn = f"{prefix}/BatchNorm"
        scale = z[f"{bn}/gamma"] / np.sqrt(z[f"{bn}/moving_variance"] + BN_EPSILON)
        arrays[f"{layer}/kernel"] = kernel
        arrays[f"{layer}/scale"] = scale
        arrays[f"{layer}/bias"] = z[f"{bn}/beta"] - z[f"{bn}/moving_mean"] * scale

    put("stem", "MobilenetV1/Conv2d_0", z["MobilenetV1/Conv2d_0/weights"])
    for i in range(len(BLOCKS)):
        dw, pw = f"MobilenetV1/Conv2d_{i + 1}_depthwise", f"MobilenetV1/Conv2d_{i + 1}_pointwise"
        put(f"block_{i}/depthwise", dw, z[f"{dw}/depthwise_weights"])
        put(f"block_{i}/project", pw, z[f"{pw}/weights"])
    arrays["head/kernel"] = z["MobilenetV1/Logits/Conv2d_1c_1x1/weights"][0, 0]
    arrays["head/bias"] = z["MobilenetV1/Logits/Conv2d_1c_1x1/biases"]
    return config(), arrays
