"""ReLU and ReLU6. Their backward needs only a mask of where the input was inside the linear range.

The mask is computed in the forward and is all the backward keeps, packed 8 elements per byte (TinyTL's 1-bit
mask; autodiff would keep the float input and emit ReluGrad/Relu6Grad, which need Flex). Packing and unpacking are
builtins: CAST, RESHAPE, MUL, SUM to pack; FLOOR_DIV, FLOOR_MOD, SELECT_V2 to apply.
"""

import tensorflow as tf

# Python lists, not module-level tensors: an eager constant captured by a custom gradient cannot be saved.
_BIT_VALUES = [1, 2, 4, 8, 16, 32, 64, 128]
_PACK_WEIGHTS = [1, 2, 4, 8, 16, 32, 64, -128]  # the byte as two's complement int8


def _pack_mask(mask):
    """int8 [..., ceil(n/8)]: bit j of byte i holds element 8i+j of the mask's last axis (or of the whole mask,
    flattened and zero-padded, when the last axis is not a multiple of 8). int8 rather than uint8 because
    TFLite's SELECT_V2 in `_apply_mask` takes int8 only."""
    bits = tf.cast(mask, tf.int32)
    if mask.shape[-1] % 8:
        bits = tf.reshape(bits, [-1])
        bits = tf.pad(bits, [[0, tf.math.floormod(-tf.size(bits), 8)]])
    bits = tf.reshape(bits, tf.concat([tf.shape(bits)[:-1], [bits.shape[-1] // 8 if bits.shape[-1] else -1, 8]], 0))
    return tf.cast(tf.reduce_sum(bits * tf.constant(_PACK_WEIGHTS, tf.int32), axis=-1), tf.int8)


def _apply_mask(packed, dy):
    """dy where the stored mask is set, else 0.

    The unpacking starts with a select gated by a scalar read from dy: the converter schedules every op as soon as
    its inputs exist, so an unpacking that read the packed bytes alone would run in the forward pass and keep an
    int32 mask alive until the backward instead of the packed bytes."""
    corner = tf.reshape(dy, [-1])[:1]
    gate = tf.reshape(tf.equal(corner, corner), [1] * packed.shape.rank)  # true unless dy is NaN
    bytes_ = tf.cast(tf.where(gate, packed, tf.zeros([], tf.int8)), tf.int32)
    # floor division reads the bits of a negative (two's complement) byte correctly: 256 / 2**j is even
    bits = tf.math.floormod(tf.math.floordiv(tf.expand_dims(bytes_, -1), tf.constant(_BIT_VALUES, tf.int32)), 2)
    bits = tf.reshape(bits, [-1])[: tf.size(dy)] if dy.shape[-1] % 8 else bits
    return tf.where(tf.reshape(bits, tf.shape(dy)) > 0, dy, tf.zeros([], dy.dtype))


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
