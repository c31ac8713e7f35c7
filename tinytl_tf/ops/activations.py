"""ReLU and ReLU6. Their backward needs only a mask of where the input was inside the linear range.

The mask is computed in the forward and is all the backward keeps (autodiff would keep the float input and emit
ReluGrad/Relu6Grad, which need Flex). How it is stored lives in `_pack_mask`/`_apply_mask` alone.
"""

import tensorflow as tf


def _pack_mask(mask):
    """Storage of a bool mask for the backward: one bool per element (TinyTL counts 1 bit; packing goes here)."""
    return mask


def _apply_mask(stored, dy):
    """dy where the mask is set, else 0. A select that reads the stored mask together with dy: a cast of the mask
    alone would be hoisted into the forward by the TFLite converter, keeping a float mask alive instead."""
    return tf.where(stored, dy, tf.zeros([], dy.dtype))


def _masked(fn, inside, x):
    """y = fn(x); dx = dy * inside(x), keeping only the packed mask."""

    @tf.custom_gradient
    def op(x):
        stored = _pack_mask(inside(x))
        return fn(x), lambda dy: _apply_mask(stored, dy)

    return op(tf.convert_to_tensor(x))


def relu(x):
    return _masked(tf.nn.relu, lambda x: x > 0, x)


def relu6(x):
    return _masked(tf.nn.relu6, lambda x: tf.logical_and(x > 0, x < 6), x)
