"""Import the official once-for-all `ofa_proxyless_d234_e346_k357_w1.3` PyTorch checkpoint as a super-net
backbone file that `SuperNet.from_backbone` (and so `tinytl search --backbone FILE.npz`) reads.

    tinytl import-ofa --checkpoint ofa_proxyless_d234_e346_k357_w1.3 --out runs/ofa-proxyless.npz

torch is needed only to read the checkpoint (`pip install torch`); nothing is downloaded. The file holds the
largest sub-net as a backbone `NetConfig` (kernel 7, expand 6, depth 4, 224 px, ImageNet normalization) and its
weights by path with every BatchNorm folded into the conv's scale and bias, plus the kernel transform matrices
(`block_i/depthwise/transform_7to5`, `..._5to3`). Once-for-all already trained its narrower sub-nets on the
first expanded channels, so the super-net keeps that order instead of sorting them again.
"""

import os

import numpy as np

from tinytl_tf.errors import TinyTLError

NAME = "ofa-proxyless-w1.3"
BN_EPSILON = 1e-3  # OFAProxylessNASNets' default bn_param (0.1, 1e-3), kept by the model zoo
STAGE_DEPTHS = (4, 4, 4, 4, 4, 1)  # blocks per stage after block 0, at the largest depth
STAGE_STRIDES = (2, 2, 2, 1, 2, 1)  # stride of each stage's first block (not stored in the state dict)
RESOLUTION = 224
# older checkpoints name the same tensors with these doubled or legacy segments
KEY_ALIASES = (
    (".mobile_inverted_conv.", ".conv."),
    (".bn.bn.", ".bn."),
    (".conv.conv.", ".conv."),
    (".linear.linear.", ".linear."),
)


class TorchMissing(TinyTLError, ModuleNotFoundError):
    """torch, needed only to read the checkpoint, is not installed."""


class NotAnOFACheckpoint(TinyTLError, ValueError):
    """The checkpoint is not an `ofa_proxyless_d234_e346_k357_w1.3` state dict; the message says what is off."""


def load_checkpoint(path):
    """The checkpoint's state dict as {name: numpy array}. torch is imported here only."""
    try:
        import torch
    except ModuleNotFoundError:
        raise TorchMissing("reading a PyTorch checkpoint needs torch, an optional extra: pip install torch") from None
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}; pass the file ofa_proxyless_d234_e346_k357_w1.3")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a foreign or corrupt file
        raise NotAnOFACheckpoint(f"{path} is not a readable PyTorch checkpoint: {e}") from None
    state = data.get("state_dict", data) if isinstance(data, dict) else None
    if not isinstance(state, dict):
        raise NotAnOFACheckpoint(f"{path} holds no state dict")
    return {k: v.detach().cpu().numpy() for k, v in state.items() if hasattr(v, "detach")}


def _canonical(state):
    out = {}
    for key, value in state.items():
        for old, new in KEY_ALIASES:
            key = key.replace(old, new)
        out[key] = np.asarray(value, np.float64)
    return out


def convert_state_dict(state):
    """(NetConfig of the largest sub-net with the 1000-class head, {weight path: array}) of a state dict."""
    from tinytl_tf.backbones.proxylessnas import IMAGENET_MEAN, IMAGENET_STD
    from tinytl_tf.config import BlockConfig, ConvConfig, NetConfig

    sd = _canonical(state)

    def get(key):
        if key not in sd:
            raise NotAnOFACheckpoint(f"missing tensor {key!r}: not an {NAME} once-for-all checkpoint")
        return sd[key]

    arrays = {}

    def put(layer, prefix, depthwise=False):
        """OIHW conv + BatchNorm -> HWIO kernel, folded scale and bias; returns the kernel's OIHW shape."""
        w = get(f"{prefix}.conv.weight")
        scale = get(f"{prefix}.bn.weight") / np.sqrt(get(f"{prefix}.bn.running_var") + BN_EPSILON)
        arrays[f"{layer}/kernel"] = w.transpose(2, 3, 0, 1) if depthwise else w.transpose(2, 3, 1, 0)
        arrays[f"{layer}/scale"] = scale
        arrays[f"{layer}/bias"] = get(f"{prefix}.bn.bias") - get(f"{prefix}.bn.running_mean") * scale
        return w.shape

    stem = put("stem", "first_conv")
    kernel = put("block_0/depthwise", "blocks.0.conv.depth_conv", depthwise=True)[-1]
    c = put("block_0/project", "blocks.0.conv.point_linear")[0]
    blocks = [BlockConfig(kernel=kernel, stride=1, out=c)]
    i = 1
    for depth, stride in zip(STAGE_DEPTHS, STAGE_STRIDES):
        for j in range(depth):
            p = f"blocks.{i}.conv"
            mid = put(f"block_{i}/expand", f"{p}.inverted_bottleneck")[0]
            kernel = put(f"block_{i}/depthwise", f"{p}.depth_conv", depthwise=True)[-1]
            out = put(f"block_{i}/project", f"{p}.point_linear")[0]
            for big, small in ((7, 5), (5, 3)):
                if big <= kernel:
                    arrays[f"block_{i}/depthwise/transform_{big}to{small}"] = get(
                        f"{p}.depth_conv.conv.{big}to{small}_matrix"
                    )
            s = stride if j == 0 else 1
            blocks.append(BlockConfig(kernel=kernel, stride=s, out=out, mid=mid, shortcut=s == 1 and c == out))
            c, i = out, i + 1
    if any(k.startswith(f"blocks.{i}.") for k in sd):
        raise NotAnOFACheckpoint(f"the checkpoint has more than {i} blocks: not an {NAME} once-for-all checkpoint")
    feature = put("feature_mix", "feature_mix_layer")[0]
    head = get("classifier.linear.weight")
    arrays["head/kernel"], arrays["head/bias"] = head.T, get("classifier.linear.bias")
    cfg = NetConfig(
        name=NAME,
        resolution=RESOLUTION,
        stem=ConvConfig(out=stem[0], kernel=stem[-1], stride=2),
        blocks=tuple(blocks),
        feature_mix=ConvConfig(out=feature, kernel=1),
        num_classes=head.shape[0],
        input_mean=IMAGENET_MEAN,
        input_std=IMAGENET_STD,
    )
    return cfg, {k: v.astype(np.float32) for k, v in arrays.items()}


def check_target(out, overwrite=False):
    """Refuse an `out` that is no .npz file name, or exists when `overwrite` is False (TF-free, cheap)."""
    if not str(out).endswith(".npz"):
        raise ValueError(f"--out must end in .npz (SuperNet.from_backbone recognises the file by it), got {out}")
    if os.path.exists(out) and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")


def import_checkpoint(checkpoint, out, overwrite=False):
    """Convert the checkpoint file `checkpoint` into the super-net backbone file `out` (.npz); returns (its
    NetConfig, {weight path: array}). An existing `out` is refused unless `overwrite`, before the checkpoint is read."""
    from tinytl_tf.supernet.supernet import write_weights_file

    check_target(out, overwrite)
    cfg, arrays = convert_state_dict(load_checkpoint(checkpoint))
    write_weights_file(out, NAME, cfg, arrays)
    return cfg, arrays
