"""Softmax cross-entropy with label smoothing, on integer labels."""

import tensorflow as tf


def softmax_cross_entropy(logits, labels, *, label_smoothing=0.0):
    """Per-example loss. logits: [N, K] float, labels: [N] int. Smoothing spreads `label_smoothing` uniformly."""
    k = logits.shape[-1]
    target = tf.one_hot(tf.cast(labels, tf.int32), k) * (1.0 - label_smoothing) + label_smoothing / k
    return -tf.reduce_sum(target * tf.nn.log_softmax(logits), axis=-1)
