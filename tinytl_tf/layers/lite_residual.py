"""TinyTL's lite residual branch: cheap extra capacity whose activations are 4x+ smaller than the block's."""

import keras

from tinytl_tf import ops
from tinytl_tf.layers.conv import FoldedConv2D
from tinytl_tf.layers.norm import GroupNorm


@keras.saving.register_keras_serializable(package="tinytl_tf")
class LiteResidual(keras.layers.Layer):
    """avg-pool 2x2 -> kxk group conv (stride of the block) -> GN -> ReLU -> 1x1 conv -> GN -> bilinear resize.

    Called as `lite(x, size)` with the main branch's output size. The last GroupNorm's gamma starts at zero, so
    a new branch adds exactly nothing until it trains (TinyTL, Sec. 3.2). ReLU (not ReLU6): 1-bit backward mask.
    """

    def __init__(
        self,
        filters,
        kernel_size=5,
        strides=1,
        groups=2,
        channels_per_group=8,
        train_kernel=True,
        train_gamma=True,
        train_beta=True,
        train_final_beta=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters, self.kernel_size, self.strides = filters, kernel_size, strides
        self.groups, self.channels_per_group = groups, channels_per_group
        self.train_kernel, self.train_gamma = train_kernel, train_gamma
        self.train_beta, self.train_final_beta = train_beta, train_final_beta

    def build(self, input_shape):
        cin = input_shape[-1]
        self.conv1 = self.first_conv(cin, use_scale=False, use_bias=False, train_kernel=self.train_kernel, name="conv1")
        self.norm1 = GroupNorm(
            self.channels_per_group, train_gamma=self.train_gamma, train_beta=self.train_beta, name="norm1"
        )
        self.conv2 = FoldedConv2D(
            self.filters, 1, use_scale=False, use_bias=False, train_kernel=self.train_kernel, name="conv2"
        )
        self.norm2 = GroupNorm(
            self.channels_per_group,
            train_gamma=self.train_gamma,
            train_beta=self.train_final_beta,
            gamma_initializer="zeros",
            name="norm2",
        )
        n, h, w, _ = input_shape
        pooled = (n, h // 2, w // 2, cin)
        self.conv1.build(pooled)
        mid = self.conv1.compute_output_shape(pooled)
        self.norm1.build(mid)
        self.conv2.build(mid)
        self.norm2.build(self.conv2.compute_output_shape(mid))

    def first_conv(self, cin, **flags):
        """The branch's k x k group conv; an elastic branch stores one that runs any of its sub-kernels."""
        return FoldedConv2D(cin, self.kernel_size, self.strides, groups=self.groups, **flags)

    def call(self, x, size, **conv1_choice):
        """`conv1_choice`: the active sub-kernel of an elastic branch's first conv (none for a static branch)."""
        y = ops.avg_pool_2x2(x)
        y = ops.relu(self.norm1(self.conv1(y, **conv1_choice)))
        y = self.norm2(self.conv2(y))
        return ops.resize_bilinear(y, size)

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "groups": self.groups,
            "channels_per_group": self.channels_per_group,
            "train_kernel": self.train_kernel,
            "train_gamma": self.train_gamma,
            "train_beta": self.train_beta,
            "train_final_beta": self.train_final_beta,
        }
