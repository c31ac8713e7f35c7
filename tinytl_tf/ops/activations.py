"""ReLU and ReLU6. Their backward needs only a mask of where the input was inside the linear range.

The mask is computed in the forward and is all the backward keeps, packed 8 elements per byte (TinyTL's 1-bit
mask; autodiff would keep the float input and emit ReluGrad/Relu6Grad, which need Flex). Packing is a float matrix
product on an [n/8, 8] view (exact for these small integers); unpacking is a table lookup. Measured alternatives:
integer FLOOR_DIV/FLOOR_MOD with broadcasting run reference code some 25x slower than the mask itself; a float
FLOOR/MUL/SUB parity unpacking took 1.7x the lookup's time and twice its temporaries; a mask made with float
arithmetic (which XNNPACK runs) kept two more full-size float temporaries than these comparisons.
"""

import tensorflow as tf

_PACK = [[float(2**j)] for j in range(8)]  # bit j -> byte value
_BITS = [[bool(byte >> j & 1) for j in range(8)] for byte in range(256)]  # byte value -> its 8 bits


def _pack_mask(mask):
    """uint8 [ceil(n/8), 1]: bit j of byte i is element 8i+j of the flattened mask (zero-padded to a multiple of 8)."""
    n = mask.shape.num_elements()
    if n is not None and n % 8 == 0:  # the usual case: reshape the bool mask, so only one float copy exists
        bits = tf.cast(tf.reshape(mask, [-1, 8]), tf.float32)
    else:
        bits = tf.reshape(tf.cast(mask, tf.float32), [-1])
        bits = tf.reshape(tf.pad(bits, [[0, tf.math.floormod(-tf.size(bits), 8)]]), [-1, 8])
    return tf.cast(tf.matmul(bits, tf.constant(_PACK)), tf.uint8)


def _apply_mask(packed, dy):
    """dy where the stored mask is set, else 0: each byte looks up its 8 bits in a 256 x 8 table (one GATHER),
    then one SELECT.

    The lookup waits for dy: the converter schedules each op as soon as its inputs exist, so an unpacking that
    read the packed bytes alone would run in the forward and keep an unpacked mask alive until the backward."""
    with tf.control_dependencies([dy]):
        index = tf.cast(tf.reshape(packed, [-1]), tf.int32)
    bits = tf.reshape(tf.gather(tf.constant(_BITS), index), [-1])
    if dy.shape.num_elements() is None or dy.shape.num_elements() % 8:
        bits = bits[: tf.size(dy)]
    return tf.where(tf.reshape(bits, tf.shape(dy)), dy, tf.zeros([], dy.dtype))


def _masked(fn, inside, x):
    """y = fn(x); dx = dy * inside(y), keeping only the packed mask. The mask comes from the output, so the
    pre-activation need not outlive the activation (the converter then fuses the activation into the op before it).

    The output leaves only once the mask is packed: the converter would otherwise put the packing late and keep
    every layer's output alive until then. A graph without a backward still drops the packing as dead code."""

    @tf.custom_gradient
    def op(x):
        y = fn(x)
        stored = _pack_mask(inside(y))
        with tf.control_dependencies([stored]):
            return tf.identity(y), lambda dy: _apply_mask(stored, dy)

    return op(tf.convert_to_tensor(x))


def relu(x):
    return _masked(tf.nn.relu, lambda y: y > 0, x)


def relu6(x):
    # 0 < y < 6 as (y > 0) == (y < 6), since both are never false: LOGICAL_AND runs element by element through
    # LiteRT's generic broadcasting kernel and took an eighth of a train step, EQUAL runs its optimized one
    return _masked(tf.nn.relu6, lambda y: tf.equal(y > 0, y < 6), x)
