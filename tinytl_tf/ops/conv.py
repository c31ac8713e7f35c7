"""Convolutions, dense and the per-channel affine of a folded normalization."""

import tensorflow as tf


def _pad(x, pads):
    (top, bottom), (left, right) = pads
    if top or bottom or left or right:
        x = tf.pad(x, [[0, 0], [top, bottom], [left, right], [0, 0]])
    return x


def conv2d(x, kernel, *, stride=1, pads=((0, 0), (0, 0)), groups=1, kernel_grad=True):
    """Zero-pad by `pads` ((top, bottom), (left, right)), then a VALID conv.

    kernel: [k, k, Cin // groups, Cout]. Grouped convs are split into `groups` plain convs and concatenated
    (TFLite's CONV_2D has no reliable grouped form).
    """
    del kernel_grad  # gradients are built by autodiff for now
    x = _pad(x, pads)
    if groups == 1:
        return tf.nn.conv2d(x, kernel, stride, "VALID")
    xs = tf.split(x, groups, axis=-1)
    ks = tf.split(kernel, groups, axis=-1)
    return tf.concat([tf.nn.conv2d(a, k, stride, "VALID") for a, k in zip(xs, ks)], axis=-1)


def depthwise_conv2d(x, kernel, *, stride=1, pads=((0, 0), (0, 0)), kernel_grad=True):
    """Zero-pad, then a VALID depthwise conv. kernel: [k, k, C, 1]."""
    del kernel_grad
    x = _pad(x, pads)
    return tf.nn.depthwise_conv2d(x, kernel, [1, stride, stride, 1], "VALID")


def dense(x, kernel, *, kernel_grad=True):
    """x: [N, Cin], kernel: [Cin, Cout]."""
    del kernel_grad
    return tf.matmul(x, kernel)


def channel_affine(x, scale, bias, *, scale_grad=True):
    """y = x * scale + bias per channel (last axis); `scale` or `bias` may be None."""
    del scale_grad
    if scale is not None:
        x = x * scale
    if bias is not None:
        x = x + bias
    return x
