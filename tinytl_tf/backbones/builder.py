"""One builder for every network: a `NetConfig` in, a Keras functional model out."""

import keras
import numpy as np

from tinytl_tf.config import NetConfig
from tinytl_tf.layers import Classifier, FoldedConv2D, MBBlock


@keras.saving.register_keras_serializable(package="tinytl_tf")
class TinyNet(keras.Model):
    """A functional Keras model that is fully described by its `net_config` (so `.keras` files rebuild it).

    Layers are named `stem`, `block_{i}`, `feature_mix`, `head`; weight paths such as
    `block_3/depthwise/bias` are stable across methods and resolutions, which is how weights are copied.
    Input: float32 [N, R, R, 3] already normalized with `input_mean` / `input_std`. Output: logits.
    """

    def __init__(self, net_config, **kwargs):
        cfg = net_config if isinstance(net_config, NetConfig) else NetConfig.from_dict(net_config)
        t = cfg.trainable
        inputs = keras.Input((cfg.resolution, cfg.resolution, 3), name="image")
        x = folded_conv_layer(cfg.stem, "stem", cfg.padding, t)(inputs)
        for i, b in enumerate(cfg.blocks):
            x = MBBlock(b, cfg.padding, t, name=f"block_{i}")(x)
        if cfg.feature_mix is not None:
            x = folded_conv_layer(cfg.feature_mix, "feature_mix", cfg.padding, t)(x)
        outputs = head_layer(cfg, t)(x)
        kwargs.setdefault("name", cfg.name.replace("-", "_").replace(".", "_"))
        super().__init__(inputs, outputs, **kwargs)
        self.net_config = cfg

    def get_config(self):
        return {"net_config": self.net_config.to_dict(), "name": self.name}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        return cls(**config)


def folded_conv_layer(conv, name, padding, trainable_set):
    """The layer of the stem or feature-mix `ConvConfig` `conv`; the super-net builds its fixed parts with it too."""
    return FoldedConv2D(
        conv.out,
        conv.kernel,
        conv.stride,
        activation=conv.act,
        name=name,
        padding=padding,
        **trainable_set.main_flags(),
    )


def head_layer(cfg, trainable_set):
    """The classifier of network `cfg` (dropout, then a dense layer to `num_classes` logits)."""
    return Classifier(cfg.num_classes, cfg.dropout, train=trainable_set.head, name="head")


def build_model(cfg):
    """Build the Keras model of a network config (random weights; see `load_weights_by_path`)."""
    return TinyNet(cfg)


def weights_by_path(model):
    return {v.path: v for v in model.weights}


def copy_weights(src, dst, skip_prefixes=()):
    """Copy every weight of `src` into the weight of `dst` with the same path and shape.

    Paths, not positions: freezing changes the order of `model.weights`. Returns the paths of `dst` left as
    initialised (new layers such as a new head or lite residual branches).
    """
    source = weights_by_path(src)
    fresh = []
    for v in dst.weights:
        s = source.get(v.path)
        if s is None or any(v.path.startswith(p) for p in skip_prefixes):
            fresh.append(v.path)
            continue
        if tuple(s.shape) != tuple(v.shape):
            raise ValueError(f"weight {v.path}: shape {tuple(s.shape)} in the source, {tuple(v.shape)} in the target")
        v.assign(s)
    return fresh


def load_weights_by_path(model, arrays):
    """Assign `{path: array}` to the model; every model weight must be given exactly once with its shape."""
    targets = weights_by_path(model)
    missing = sorted(set(targets) - set(arrays))
    extra = sorted(set(arrays) - set(targets))
    if missing or extra:
        raise ValueError(f"weights do not match the network: missing {missing[:5]}, unexpected {extra[:5]}")
    for path, array in arrays.items():
        v = targets[path]
        if tuple(v.shape) != np.shape(array):
            raise ValueError(f"weight {path}: expected shape {tuple(v.shape)}, got {np.shape(array)}")
        v.assign(np.asarray(array, dtype="float32"))
    return model


def count_params(model):
    """(trainable, total) parameter counts."""
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    return trainable, sum(int(np.prod(v.shape)) for v in model.weights)
