"""Pooling and resizing."""

import tensorflow as tf


def avg_pool_2x2(x):
    """2x2 average pool, stride 2, VALID (odd sizes drop the last row/column)."""
    return tf.nn.avg_pool2d(x, 2, 2, "VALID")


def resize_bilinear(x, size):
    """Bilinear resize with half-pixel centres to the static `size` (height, width)."""
    return tf.compat.v1.image.resize_bilinear(x, size, half_pixel_centers=True)


def global_avg_pool(x):
    """[N, H, W, C] -> [N, C]."""
    return tf.reduce_mean(x, axis=[1, 2])
