"""ProxylessNAS-Mobile, the main backbone of TinyTL's experiments (Cai et al., NeurIPS 2020). Architecture only:
its pretrained weights cannot be had offline, so it is built with random weights for the memory model and engine
measurements."""

from tinytl_tf.config import BlockConfig, ConvConfig, NetConfig

IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
# (kernel, expand, stride, out) of blocks 1..21; blocks 3 and 4 are skipped (None)
BLOCKS = [
    (5, 3, 2, 32),
    (3, 3, 1, 32),
    None,
    None,
    (7, 3, 2, 40),
    (3, 3, 1, 40),
    (5, 3, 1, 40),
    (5, 3, 1, 40),
    (7, 6, 2, 80),
    (5, 3, 1, 80),
    (5, 3, 1, 80),
    (5, 3, 1, 80),
    (5, 6, 1, 96),
    (5, 3, 1, 96),
    (5, 3, 1, 96),
    (5, 3, 1, 96),
    (7, 6, 2, 192),
    (7, 6, 1, 192),
    (7, 3, 1, 192),
    (7, 3, 1, 192),
    (7, 6, 1, 320),
]


def config():
    blocks, c = [BlockConfig(kernel=3, stride=1, out=16)], 16
    for spec in BLOCKS:
        if spec is None:
            continue
        k, e, s, o = spec
        blocks.append(BlockConfig(kernel=k, stride=s, out=o, mid=c * e, shortcut=(s == 1 and c == o)))
        c = o
    return NetConfig(
        name="proxylessnas-mobile",
        resolution=224,
        stem=ConvConfig(out=32, kernel=3, stride=2),
        blocks=tuple(blocks),
        feature_mix=ConvConfig(out=1280, kernel=1),
        num_classes=1000,
        input_mean=IMAGENET_MEAN,
        input_std=IMAGENET_STD,
    )


def load(weights_dir=None):
    del weights_dir
    return config(), None
