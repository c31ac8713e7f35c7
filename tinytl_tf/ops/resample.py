"""Pooling and resizing, with backward passes of TFLite builtins (autodiff would emit AvgPoolGrad and
ResizeBilinearGrad, which need Flex). None of them keeps its input for the backward."""

import numpy as np
import tensorflow as tf


def avg_pool_2x2(x):
    """2x2 average pool, stride 2, VALID (odd sizes drop the last row/column).

    Backward: each element of dy / 4 copied to its 2x2 window (four copies stacked on channels, DEPTH_TO_SPACE),
    zero-padded back to an odd size. XNNPACK runs both ops; it does not run RESIZE_NEAREST_NEIGHBOR.
    """
    x = tf.convert_to_tensor(x)
    _, h, w, _ = x.shape

    @tf.custom_gradient
    def op(x):
        def grad(dy):
            quarter = dy * 0.25
            up = tf.nn.depth_to_space(tf.concat([quarter] * 4, axis=-1), 2)
            return tf.pad(up, [[0, 0], [0, h % 2], [0, w % 2], [0, 0]])

        return tf.nn.avg_pool2d(x, 2, 2, "VALID"), grad

    return op(x)


def _interpolation_matrix(out_size, in_size):
    """[out, in] weights of TF's half-pixel bilinear resize along one axis, in float32 arithmetic like TF's kernel:
    src = (i + 0.5) * in/out - 0.5, taps floor(src) (clamped at 0) and ceil(src) (clamped at in - 1)."""
    scale = np.float32(in_size) / np.float32(out_size)
    src = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    floor = np.floor(src)
    lerp = (src - floor).astype(np.float64)
    rows = np.arange(out_size)
    m = np.zeros((out_size, in_size))
    np.add.at(m, (rows, np.maximum(floor.astype(np.int64), 0)), 1.0 - lerp)
    np.add.at(m, (rows, np.minimum(np.ceil(src).astype(np.int64), in_size - 1)), lerp)
    return m


def resize_bilinear(x, size):
    """Bilinear resize with half-pixel centres to the static `size` (height, width).

    The resize is separable, y = A_h x A_w^T per channel, so the backward is its adjoint dx = A_h^T dy A_w with
    the constant interpolation matrices built at trace time (two BATCH_MATMULs); exact for any ratio.
    """
    x = tf.convert_to_tensor(x)
    _, hi, wi, c = x.shape
    ho, wo = size
    dtype = x.dtype  # ResizeBilinear outputs float32 whatever the input

    @tf.custom_gradient
    def op(x):
        def grad(dy):
            ah_t = tf.constant(_interpolation_matrix(ho, hi).T, dy.dtype)
            aw_t = tf.constant(_interpolation_matrix(wo, wi).T, dy.dtype)
            t = tf.matmul(ah_t, tf.reshape(dy, [-1, ho, wo * c]))  # [N, Hi, Wo*C]
            t = tf.matmul(aw_t, tf.reshape(t, [-1, wo, c]))  # [N*Hi, Wi, C]
            return tf.cast(tf.reshape(t, [-1, hi, wi, c]), dtype)

        # the raw op: the same ResizeBilinear (a TFLite builtin) that tf.compat.v1's deprecated wrapper emits
        y = tf.raw_ops.ResizeBilinear(images=x, size=tf.constant(size, tf.int32), half_pixel_centers=True)
        return y, grad

    return op(x)


def global_avg_pool(x):
    """[N, H, W, C] -> [N, C]. Backward: dy / (H*W) tiled over H and W."""
    x = tf.convert_to_tensor(x)
    _, h, w, c = x.shape

    @tf.custom_gradient
    def op(x):
        def grad(dy):
            return tf.tile(tf.reshape(dy / (h * w), [-1, 1, 1, c]), [1, h, w, 1])

        return tf.reduce_mean(x, axis=[1, 2]), grad

    return op(x)
