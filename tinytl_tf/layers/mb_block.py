"""The inverted-residual (MB) block of MobileNetV2 / ProxylessNAS / MCUNet, with an optional lite residual."""

import keras

from tinytl_tf.config import BlockConfig, TrainableSet, parse
from tinytl_tf.layers.conv import FoldedConv2D
from tinytl_tf.layers.lite_residual import LiteResidual


@keras.saving.register_keras_serializable(package="tinytl_tf")
class MBBlock(keras.layers.Layer):
    """[1x1 expand] -> kxk depthwise -> 1x1 project, + lite residual, + identity shortcut.

    `block` is a `BlockConfig` (or its dict) and `trainable` a `TrainableSet` (or its dict): the block is
    configured by exactly the data the network config holds, so `get_config` is that data.
    """

    def __init__(self, block, padding="symmetric", trainable_set=None, **kwargs):
        super().__init__(**kwargs)
        if isinstance(block, dict):
            block = parse(BlockConfig, block, "block")
        if trainable_set is None or isinstance(trainable_set, dict):
            trainable_set = parse(TrainableSet, trainable_set or {}, "trainable_set")
        self.block, self.padding, self.trainable_set = block, padding, trainable_set

    def build(self, input_shape):
        b, t = self.block, self.trainable_set
        flags = dict(padding=self.padding, **t.main_flags())
        x_shape = input_shape
        if b.mid is not None:
            self.expand = FoldedConv2D(b.mid, 1, activation=b.act, name="expand", **flags)
            self.expand.build(x_shape)
            x_shape = self.expand.compute_output_shape(x_shape)
        else:
            self.expand = None
        self.depthwise = FoldedConv2D(
            x_shape[-1], b.kernel, b.stride, depthwise=True, activation=b.act, name="depthwise", **flags
        )
        self.depthwise.build(x_shape)
        x_shape = self.depthwise.compute_output_shape(x_shape)
        self.project = FoldedConv2D(b.out, 1, activation=b.project_act, name="project", **flags)
        self.project.build(x_shape)
        if b.lite is not None:
            self.lite = LiteResidual(
                b.out,
                b.lite.kernel,
                b.stride,
                b.lite.groups,
                b.lite.channels_per_group,
                name="lite",
                **t.lite_flags(),
            )
            self.lite.build(input_shape)
        else:
            self.lite = None

    def call(self, x):
        y = x if self.expand is None else self.expand(x)
        y = self.project(self.depthwise(y))
        if self.lite is not None:
            y = y + self.lite(x, size=(y.shape[1], y.shape[2]))
        if self.block.shortcut:
            y = y + x
        return y

    def compute_output_shape(self, input_shape):
        n, h, w, _ = input_shape
        out = lambda s: None if s is None else -(-s // self.block.stride)  # noqa: E731
        return (n, out(h), out(w), self.block.out)

    def get_config(self):
        from dataclasses import asdict

        return {
            **super().get_config(),
            "block": asdict(self.block),
            "padding": self.padding,
            "trainable_set": asdict(self.trainable_set),
        }
