"""ReLU and ReLU6. Their backward needs only a mask of where the input was inside the linear range.

The mask is computed in the forward and is all the backward keeps, packed 8 elements per byte (TinyTL's 1-bit
mask; autodiff would keep the float input and emit ReluGrad/Relu6Grad, which need Flex). The forward makes the
mask from the activation's output with float arithmetic and packs it by a float matrix product on an [n/8, 8] view
(exact for these small integers), all of which XNNPACK runs; the backward unpacks it by a table lookup. Measured
alternatives: integer FLOOR_DIV/FLOOR_MOD with broadcasting run reference code some 25x slower than the mask
itself; a float FLOOR/MUL/SUB parity unpacking took 1.7x the lookup's time and twice its temporaries (XNNPACK's
broadcasting multiply is slow); comparisons + LOGICAL_AND + CAST for the mask took an eighth of a train step.
"""

import numpy as np
import tensorflow as tf

_PACK = [[float(2**j)] for j in range(8)]  # bit j -> byte value
_BITS = [[bool(byte >> j & 1) for j in range(8)] for byte in range(256)]  # byte value -> its 8 bits


def _pack_mask(bits):
    """uint8 [ceil(n/8), 1] from a float 0/1 mask: bit j of byte i is element 8i+j of the flattened mask
    (zero-padded to a multiple of 8)."""
    n = bits.shape.num_elements()
    if n is None or n % 8:
        bits = tf.pad(tf.reshape(bits, [-1]), [[0, tf.math.floormod(-tf.size(bits), 8)]])
    return tf.cast(tf.matmul(tf.reshape(bits, [-1, 8]), tf.constant(_PACK, bits.dtype)), tf.uint8)


def _apply_mask(packed, dy):
    """dy where the stored mask is set, else 0: each byte looks up its 8 bits in a 256 x 8 table (one GATHER),
    then one SELECT.

    The lookup waits for dy: the converter schedules each op as soon as its inputs exist, so an unpacking that
    read the packed bytes alone would run in the forward and keep an unpacked mask alive until the backward."""
    with tf.control_dependencies([dy]):
        index = tf.cast(tf.reshape(packed, [-1]), tf.int32)
    bits = tf.reshape(tf.gather(tf.constant(np.array(_BITS)), index), [-1])
    if dy.shape.num_elements() is None or dy.shape.num_elements() % 8:
        bits = bits[: tf.size(dy)]
    return tf.where(tf.reshape(bits, tf.shape(dy)), dy, tf.zeros([], dy.dtype))


def _masked(fn, inside, x):
    """y = fn(x); dx = dy * inside(y), keeping only the packed mask. `inside(y)` is the float 0/1 mask computed
    from the output with arithmetic that XNNPACK runs along with the activation (comparisons, LOGICAL_AND and a
    bool-to-float CAST are not delegated: they took an eighth of a train step)."""

    @tf.custom_gradient
    def op(x):
        y = fn(x)
        stored = _pack_mask(inside(y))
        return y, lambda dy: _apply_mask(stored, dy)

    return op(tf.convert_to_tensor(x))


def relu(x):
    # y > 0 <=> ceil(y) >= 1
    return _masked(tf.nn.relu, lambda y: tf.minimum(tf.math.ceil(y), 1.0), x)


def relu6(x):
    # 0 < y < 6 <=> y * (6 - y) > 0 (and it is at most 9)
    return _masked(tf.nn.relu6, lambda y: tf.minimum(tf.math.ceil(y * (6.0 - y)), 1.0), x)
