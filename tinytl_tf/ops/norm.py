"""Group normalization (batch independent, so batch-1 training works)."""

import tensorflow as tf


def group_norm(x, gamma, beta, *, groups, epsilon=1e-5, gamma_grad=True):
    """x: [N, H, W, C] with static H, W, C; statistics per example over (H, W, C // groups)."""
    del gamma_grad
    _, h, w, c = x.shape
    g = tf.reshape(x, [-1, h * w, groups, c // groups])
    mean, var = tf.nn.moments(g, axes=[1, 3], keepdims=True)
    g = (g - mean) * tf.math.rsqrt(var + epsilon)
    return tf.reshape(g, [-1, h, w, c]) * gamma + beta
