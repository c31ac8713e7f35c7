"""Adam with block-wise 8-bit moments (Dettmers et al., "8-bit Optimizers via Block-wise Quantization", 2021): the
update rule that the Keras optimizer and the exported `train` signature both call, so the two agree.

State per trainable tensor of n values: two int8 code tensors of n values and two float32 scales per block of
`BLOCK` consecutive values: 2 + 8 / BLOCK bytes per parameter (Adam's float slots: 8). Each step dequantizes the
codes, does Adam's float update (Kingma & Ba, Algorithm 1, in Keras' form), applies it to the parameter, and
quantizes the new moments again, each block scaled by its own absolute maximum (the paper's block-wise absmax).

The quantization map is linear, not the paper's dynamic tree: a linear map is a multiply and a ROUND, where the
tree's nearest-code search has no TFLite builtin. Two choices keep it sound where a plain linear map is not:
- the second moment is stored as sqrt(v), the quantity the update divides by, which halves its dynamic range
  (a linear code of sqrt(v) spans 1 : 256 of the block maximum, the square of that for v);
- its codes exclude zero (levels k / 256 of the block maximum, k = 1..256; the zero-point problem of Li et al.,
  "Memory Efficient Optimizers with 4-bit States", 2023): a small sqrt(v) rounds up, never to 0, so a rounded
  state can only shrink a step, never divide a first moment by ~0.
The first moment is signed: levels j / 127 of the block maximum, j = -127..127.
"""

import math

import tensorflow as tf

BLOCK = 256
M_LEVELS = 127  # first moment: codes -127..127, value = code / 127 * scale
ROOT_LEVELS = 256  # sqrt of the second moment: stored code q in -128..127 means k = q + 129 in 1..256, k / 256 * scale
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
    return tf.where(scale > 0.0, scale, tf.ones_like(scale))


def encode_moment(m, scale):
    """int8 codes of the first moment `m` given each value's block scale (absmax)."""
    q = tf.round(m / _safe(scale) * float(M_LEVELS))
    return tf.cast(tf.clip_by_value(q, -float(M_LEVELS), float(M_LEVELS)), tf.int8)


def decode_moment(codes, scale):
    return tf.cast(codes, tf.float32) * (scale / float(M_LEVELS))


def encode_root(r, scale):
    """int8 codes of r = sqrt(v) >= 0 given each value's block scale: level k in 1..256, never 0."""
    k = tf.clip_by_value(tf.round(r / _safe(scale) * float(ROOT_LEVELS)), 1.0, float(ROOT_LEVELS))
    return tf.cast(k - float(ROOT_OFFSET), tf.int8)


def decode_root(codes, scale):
    return (tf.cast(codes, tf.float32) + float(ROOT_OFFSET)) * (scale / float(ROOT_LEVELS))


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
