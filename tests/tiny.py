"""A tiny network with every layer kind (stride 2, odd sizes, shortcut, expand, lite residual), for fast tests."""

from tinytl_tf.backbones import build_model
from tinytl_tf.config import BlockConfig, ConvConfig, NetConfig


def tiny_config(resolution=36, num_classes=3):
    blocks = (
        BlockConfig(3, 1, 8),
        BlockConfig(5, 2, 16, mid=24),
        BlockConfig(3, 1, 16, mid=32, shortcut=True),
        BlockConfig(7, 2, 16, mid=32),
    )
    return NetConfig(
        name="tiny",
        resolution=resolution,
        stem=ConvConfig(out=8, kernel=3, stride=2),
        blocks=blocks,
        feature_mix=ConvConfig(out=24),
        num_classes=num_classes,
    )


def tiny_backbone(resolution=36, seed=0):
    import keras

    keras.utils.set_random_seed(seed)
    model = build_model(tiny_config(resolution))
    for v in model.weights:  # non-trivial folded-norm scales and biases
        if v.path.endswith("/scale") or v.path.endswith("/bias"):
            v.assign(
                keras.random.uniform(v.shape, 0.5, 1.5, seed=seed)
                if v.path.endswith("scale")
                else keras.random.normal(v.shape, stddev=0.1, seed=seed)
            )
    return model
