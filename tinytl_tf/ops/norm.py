"""Group normalization (batch independent, so batch-1 training works).

Hand-written backward with 4-D reshapes: autodiff of the moments needs Flex (BroadcastGradientArgs) once the batch
is dynamic, and it would keep x and x - mean alive.
"""

import tensorflow as tf


def group_norm(x, gamma, beta, *, groups, epsilon=1e-5, gamma_grad=True):
    """x: [N, H, W, C] with static H, W, C; statistics per example over (H, W, C // groups).

    The backward keeps x-hat ([N, HW, G, C/G], one full-size tensor) and rstd ([N, 1, G, 1]) for the input
    gradient, and gamma. Keeping (x, mean, rstd) instead costs the same memory plus recomputing x-hat, so x-hat it
    is; with `gamma_grad` it also gives dgamma = sum(dy * x-hat) at no extra memory. beta always gets a gradient.
    """
    x, gamma, beta = (tf.convert_to_tensor(t) for t in (x, gamma, beta))
    _, h, w, c = x.shape
    grouped = [-1, h * w, groups, c // groups]

    @tf.custom_gradient
    def op(x, gamma, beta):
        xg = tf.reshape(x, grouped)
        mean, var = tf.nn.moments(xg, axes=[1, 3], keepdims=True)
        rstd = tf.math.rsqrt(var + epsilon)
        xhat = (xg - mean) * rstd

        def grad(dy):
            dxhat = tf.reshape(dy * gamma, grouped)
            dx = dxhat - tf.reduce_mean(dxhat, [1, 3], keepdims=True)
            dx = (dx - xhat * tf.reduce_mean(dxhat * xhat, [1, 3], keepdims=True)) * rstd
            dgamma = tf.reshape(tf.reduce_sum(tf.reshape(dy, grouped) * xhat, [0, 1]), [c]) if gamma_grad else None
            return tf.reshape(dx, [-1, h, w, c]), dgamma, tf.reduce_sum(dy, [0, 1, 2])

        return tf.reshape(xhat, [-1, h, w, c]) * gamma + beta, grad

    return op(x, gamma, beta)
