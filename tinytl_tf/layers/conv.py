"""A conv whose normalization is folded into a per-channel scale and bias, each with its own freeze flag."""

import keras
import tensorflow as tf

from tinytl_tf import ops
from tinytl_tf.layers.common import activate, conv_pads, kernel_source, value


@keras.saving.register_keras_serializable(package="tinytl_tf")
class FoldedConv2D(keras.layers.Layer):
    """conv(x) * scale + bias, then an optional ReLU/ReLU6.

    Regular (`groups=1`), grouped (`groups>1`) or depthwise (`depthwise=True`, `filters` = input channels).
    The kernel is frozen unless `train_kernel`; scale and bias (a folded BatchNorm) train separately, which is
    what lets TinyTL train biases only. The freeze flags are constructor arguments, so they survive `.keras`.
    """

    def __init__(
        self,
        filters,
        kernel_size,
        strides=1,
        groups=1,
        depthwise=False,
        padding="symmetric",
        activation=None,
        use_scale=True,
        use_bias=True,
        train_kernel=False,
        train_scale=False,
        train_bias=True,
        kernel_initializer="he_normal",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters, self.kernel_size, self.strides = filters, kernel_size, strides
        self.groups, self.depthwise, self.padding, self.activation = groups, depthwise, padding, activation
        self.use_scale, self.use_bias = use_scale, use_bias
        self.train_kernel, self.train_scale, self.train_bias = train_kernel, train_scale, train_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, input_shape):
        cin = input_shape[-1]
        k = self.kernel_size
        if self.depthwise:
            if self.filters != cin:
                raise ValueError(f"{self.name}: a depthwise conv keeps its {cin} channels, got filters={self.filters}")
            shape = (k, k, cin, 1)
        else:
            if cin % self.groups or self.filters % self.groups:
                raise ValueError(
                    f"{self.name}: groups={self.groups} must divide {cin} input and {self.filters} output channels"
                )
            shape = (k, k, cin // self.groups, self.filters)
        self.kernel = self.add_weight(
            name="kernel", shape=shape, initializer=self.kernel_initializer, trainable=self.train_kernel
        )
        self.scale = (
            self.add_weight(name="scale", shape=(self.filters,), initializer="ones", trainable=self.train_scale)
            if self.use_scale
            else None
        )
        self.bias = (
            self.add_weight(name="bias", shape=(self.filters,), initializer="zeros", trainable=self.train_bias)
            if self.use_bias
            else None
        )

    def call(self, x):
        return self.convolve(x, kernel_source(self.kernel), value(self.bias))

    def convolve(self, x, kernel, bias):
        """The layer's math with `kernel` (this layer's layout) and `bias` in place of its own: the hook an elastic
        subclass calls with its active sub-kernel (as Keras's `BaseConv.convolution_op`), so no subclass restates
        the conv, the scale folding or the activation."""
        pads = conv_pads(x.shape[1], x.shape[2], self.kernel_size, self.strides, self.padding)
        scale = value(self.scale)
        if scale is not None and not (self.train_kernel or self.train_scale):
            # both frozen: fold the scale into the kernel, which the export turns into one (8-bit) constant, so
            # neither the forward nor the input gradient spends a multiply pass over the activation on it
            kernel = kernel * (tf.reshape(scale, (-1, 1)) if self.depthwise else scale)
            scale = None
        if self.depthwise:
            y = ops.depthwise_conv2d(x, kernel, stride=self.strides, pads=pads, kernel_grad=self.train_kernel)
        else:
            y = ops.conv2d(x, kernel, stride=self.strides, pads=pads, groups=self.groups, kernel_grad=self.train_kernel)
        if scale is not None or bias is not None:
            y = ops.channel_affine(y, scale, bias, scale_grad=self.train_scale)
        return activate(y, self.activation)

    def compute_output_shape(self, input_shape):
        n, h, w, _ = input_shape
        out = lambda s: None if s is None else -(-s // self.strides)  # noqa: E731 (ceil division)
        return (n, out(h), out(w), self.filters)

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "groups": self.groups,
            "depthwise": self.depthwise,
            "padding": self.padding,
            "activation": self.activation,
            "use_scale": self.use_scale,
            "use_bias": self.use_bias,
            "train_kernel": self.train_kernel,
            "train_scale": self.train_scale,
            "train_bias": self.train_bias,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
        }
