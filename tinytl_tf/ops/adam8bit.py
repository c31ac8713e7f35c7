"""Adam with block-wise 8-bit moments (Dettmers et al., "8-bit Optimizers via Block-wise Quantization", 2021): the
update rule that the Keras optimizer and the exported `train` signature both call, so the two agree.

State per trainable tensor of n values: two int8 code tensors of n values and two float32 scales per block of
`BLOCK` consecutive values: 2 + 8 / BLOCK bytes per parameter (Adam's float slots: 8). Each step dequantizes the
codes, does Adam's float update (Kingma & Ba, Algorithm 1, in Keras' form), applies it to the parameter, and
quantizes the new moments again, each block scaled by its own absolute maximum (the paper's block-wise absmax).

The quantization map is neither the paper's dynamic tree nor linear, but square-root companding: the code is the
rounded square root of a value's fraction of its block maximum, so the levels are (code / L)^2 of the maximum,
dense near zero like the tree's. Why: a linear map loses the small values of a block whose values span more than
a decade (Adam divides each by its own sqrt(v), so those matter as much as the large ones); the tree keeps them
but needs a nearest-code search that no TFLite builtin does. Companding is SQRT + ROUND to encode and a multiply
to decode; in a simulation of 200 steps with gradient scales spread over 0 / 1 / 2 / 3 decades within each
block (benchmarks/adam8bit_maps.py, docs/adam8bit_maps.json) its update stayed within 2.3 / 3.7 / 7.7 / 18%
(relative L2) of float Adam's, against 2.2 / 5.9 / 10 / 24% for the dynamic tree and 1.5 / 5.4 / 32 / 63% for a
linear map.
- First moment: signed codes j = -127..127, value sign(j) (j / 127)^2 x scale.
- Second moment: stored as r = sqrt(v), the quantity the update divides by, with codes k = 1..256 (stored as
  k - 129 in int8), value (k / 256)^2 x scale: no code means zero (the zero-point problem of Li et al., "Memory
  Efficient Optimizers with 4-bit States", 2023), so a tiny r rounds up, never to 0: a rounded state can shrink a
  step but never divide a first moment by ~0.
"""

import math

import tensorflow as tf

from tinytl_tf.contract import ADAM8BIT_BLOCK

BLOCK = ADAM8BIT_BLOCK
M_LEVELS = 127  # first moment: codes j in -127..127, value sign(j) (j / 127)^2 * scale
ROOT_LEVELS = 256  # r = sqrt(v): stored code q in -128..127 means k = q + 129 in 1..256, value (k / 256)^2 * scale
ROOT_OFFSET = 129


def num_blocks(n):
    return math.ceil(n / BLOCK)


class Blocks:
    """The blocks of one tensor, flattened: `BLOCK` consecutive values each, the last one shorter."""

    def __init__(self, n):
        self.n, self.count = int(n), num_blocks(n)

    def absmax(self, x):
        """[count] absolute maximum of each block of the flat [n] tensor `x`."""
        padded = tf.pad(tf.abs(x), [[0, self.count * BLOCK - self.n]])
        return tf.reduce_max(tf.reshape(padded, [self.count, BLOCK]), axis=1)

    def expand(self, per_block):
        """[n]: each value's block's entry of `per_block` ([count])."""
        tiled = tf.tile(tf.reshape(per_block, [self.count, 1]), [1, BLOCK])
        return tf.reshape(tiled, [-1])[: self.n]


class ConcatBlocks:
    """The blocks of several tensors joined into one flat vector, each tensor blocked on its own (as `Blocks`), so
    the per-tensor codes and scales equal those of separate tensors. The block id of every value is one int32
    constant: build this inside the traced step, once, so the graph holds one copy."""

    def __init__(self, sizes):
        counts = [num_blocks(n) for n in sizes]
        self.count, self.counts = sum(counts), counts
        ids, first = [], 0
        for n, c in zip(sizes, counts):
            ids += [first + i // BLOCK for i in range(n)]
            first += c
        self.ids = tf.constant(ids, tf.int32)

    def absmax(self, x):
        return tf.math.unsorted_segment_max(tf.abs(x), self.ids, self.count)

    def expand(self, per_block):
        return tf.gather(per_block, self.ids)


def _safe(scale):
    # a scalar 1, not ones_like: the converter folds ones_like of a per-value scale into a constant of one float per
    # parameter, resident in the file (about 1 B per trainable parameter once equal shapes share it)
    return tf.where(scale > 0.0, scale, 1.0)


def encode_moment(m, scale):
    """int8 codes of the first moment `m` given each value's block scale (absmax)."""
    j = tf.round(tf.sqrt(tf.minimum(tf.abs(m) / _safe(scale), 1.0)) * float(M_LEVELS))
    return tf.cast(tf.where(m < 0.0, -j, j), tf.int8)


def decode_moment(codes, scale):
    j = tf.cast(codes, tf.float32)
    return j * tf.abs(j) * (scale / float(M_LEVELS**2))


def encode_root(r, scale):
    """int8 codes of r = sqrt(v) >= 0 given each value's block scale: level k in 1..256, never 0."""
    k = tf.clip_by_value(tf.round(tf.sqrt(tf.minimum(r / _safe(scale), 1.0)) * float(ROOT_LEVELS)), 1.0, 256.0)
    return tf.cast(k - float(ROOT_OFFSET), tf.int8)


def decode_root(codes, scale):
    k = tf.cast(codes, tf.float32) + float(ROOT_OFFSET)
    return tf.square(k) * (scale / float(ROOT_LEVELS**2))


def adam_alpha(lr, t, beta_1, beta_2):
    """Adam's step size at step `t` (1-based) with both bias corrections folded in, as Keras' Adam computes it."""
    return lr * tf.sqrt(1.0 - tf.pow(beta_2, t)) / (1.0 - tf.pow(beta_1, t))


def adam8bit_step(value, g, state, alpha, blocks, beta_1, beta_2, epsilon):
    """One step on a flat float tensor `value` ([n]) with gradient `g` ([n]).

    `state` = (m codes [n] int8, m scales [count], sqrt(v) codes [n] int8, sqrt(v) scales [count]), all zero at
    the start (they decode to m = v = 0). Returns (new value, new state). The parameter moves by the float
    moments of this step; only what is stored for the next one is rounded.
    """
    m_codes, m_scale, r_codes, r_scale = state
    m_old = decode_moment(m_codes, blocks.expand(m_scale))
    v_old = tf.square(decode_root(r_codes, blocks.expand(r_scale)))
    m = m_old + (g - m_old) * (1.0 - beta_1)
    v = v_old + (tf.square(g) - v_old) * (1.0 - beta_2)
    r = tf.sqrt(v)
    new_value = value - m * alpha / (r + epsilon)
    m_scale, r_scale = blocks.absmax(m), blocks.absmax(r)
    state = (encode_moment(m, blocks.expand(m_scale)), m_scale, encode_root(r, blocks.expand(r_scale)), r_scale)
    return new_value, state
