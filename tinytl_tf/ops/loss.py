"""Softmax cross-entropy with label smoothing, on integer labels.

Written as log_softmax + one_hot with the gradient softmax - target (SparseSoftmaxCrossEntropyWithLogits needs
Flex).
"""

import tensorflow as tf


def softmax_cross_entropy(logits, labels, *, label_smoothing=0.0):
    """Per-example loss. logits: [N, K] float, labels: [N] int. Smoothing spreads `label_smoothing` uniformly.

    Backward keeps log_softmax(logits) ([N, K]); labels get no gradient.
    """
    logits = tf.convert_to_tensor(logits)
    k = logits.shape[-1]
    target = tf.one_hot(tf.cast(labels, tf.int32), k, dtype=logits.dtype) * (1.0 - label_smoothing)
    target = target + label_smoothing / k

    @tf.custom_gradient
    def op(logits):
        logp = tf.nn.log_softmax(logits)
        return -tf.reduce_sum(target * logp, axis=-1), lambda dl: (tf.exp(logp) - target) * tf.expand_dims(dl, -1)

    return op(logits)
