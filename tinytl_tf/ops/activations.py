"""ReLU and ReLU6. Their backward needs only a mask of where the input was inside the linear range.

The mask is computed in the forward and is all the backward keeps, packed 8 elements per byte (TinyTL's 1-bit
mask; autodiff would keep the float input and emit ReluGrad/Relu6Grad, which need Flex). Packing and unpacking are
float matrix products and FLOOR on [n/8, 8] views: exact for these small integers, and TFLite's optimized kernels,
where integer FLOOR_DIV/FLOOR_MOD with broadcasting run reference code some 25x slower than the mask itself.
"""

import tensorflow as tf

_PACK = [[1.0], [2.0], [4.0], [8.0], [16.0], [32.0], [64.0], [-128.0]]  # bit j -> byte, as two's complement int8
_UNPACK = [[2.0 ** -j for j in range(8)]]  # byte -> byte / 2**j; its floor's parity is bit j (also when negative)


def _pack_mask(mask):
    """int8 [ceil(n/8), 1]: bit j of byte i is element 8i+j of the flattened mask (zero-padded to a multiple of 8).
    int8, not uint8: TFLite's SELECT_V2 in `_apply_mask` takes no uint8."""
    bits = tf.reshape(tf.cast(mask, tf.float32), [-1])
    bits = tf.reshape(tf.pad(bits, [[0, tf.math.floormod(-tf.size(bits), 8)]]), [-1, 8])
    return tf.cast(tf.matmul(bits, tf.constant(_PACK)), tf.int8)


def _apply_mask(packed, dy):
    """dy where the stored mask is set, else 0.

    The unpacking starts with a select gated by a comparison of one element of dy: the converter schedules each op
    as soon as its inputs exist, so an unpacking that read the packed bytes alone would run in the forward and keep
    an unpacked float mask alive until the backward instead of the bytes. (x == x would be folded away.)"""
    gate = tf.reshape(tf.reshape(dy, [-1])[:1] < 3.0e38, [1, 1])  # true unless dy is NaN or inf
    byte = tf.cast(tf.where(gate, packed, tf.zeros([], tf.int8)), tf.float32)
    shifted = tf.floor(tf.matmul(byte, tf.constant(_UNPACK)))
    bits = tf.reshape(shifted - 2.0 * tf.floor(shifted * 0.5), [-1])
    if dy.shape.num_elements() is None or dy.shape.num_elements() % 8:
        bits = bits[: tf.size(dy)]
    return dy * tf.cast(tf.reshape(bits, tf.shape(dy)), dy.dtype)


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
