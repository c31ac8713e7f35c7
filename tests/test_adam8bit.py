"""Adam with block-wise 8-bit moments: the quantization map's error, one step against float Adam within the error
that map allows (a bound derived below, element by element), and the state it keeps per parameter."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tinytl_tf.ops import adam8bit as q
from tinytl_tf.train import Adam8bit

B1, B2, EPS = 0.9, 0.999, 1e-8


def wide_range_gradients(rng, n, steps):
    """Gradients whose scale differs by up to 1e3 within a block, as between channels of one kernel."""
    scale = 10.0 ** rng.uniform(-3, 0, n)
    return [(rng.standard_normal(n) * scale + 0.3 * scale).astype(np.float32) for _ in range(steps)]


def float_adam_state(grads):
    """(m, v) of float64 Adam after `grads`."""
    m = v = np.zeros_like(grads[0], np.float64)
    for g in grads:
        m = m + (g - m) * (1 - B1)
        v = v + (np.square(g.astype(np.float64)) - v) * (1 - B2)
    return m, v


def block_absmax(x, n):
    return np.array([np.abs(x[i : i + q.BLOCK]).max() for i in range(0, n, q.BLOCK)])


def quantized(m, r, blocks):
    """The 8-bit state of float moments m and r = sqrt(v), as the optimizer stores it."""
    m, r = tf.constant(m, tf.float32), tf.constant(r, tf.float32)
    ms, rs = blocks.absmax(m), blocks.absmax(r)
    return [q.encode_moment(m, blocks.expand(ms)), ms, q.encode_root(r, blocks.expand(rs)), rs]


def map_errors(x_abs, s):
    """Per value of magnitude `x_abs` in a block of maximum `s` (per value): the largest |decoded - x| each map
    allows, (first moment, sqrt of the second moment). The code rounds y = sqrt(x / s) to a multiple h of 1 / L,
    |y_hat - y| <= h / 2, so |x_hat - x| = s |y_hat^2 - y^2| <= s (2 y (h / 2) + (h / 2)^2); below the lowest
    root level (y < 1 / 256) the code is that level: |x_hat - x| <= s (1 / 256^2 - y^2)."""
    y = np.sqrt(x_abs / s)
    half_m, half_r = 0.5 / q.M_LEVELS, 0.5 / q.ROOT_LEVELS
    floor = 1.0 / q.ROOT_LEVELS
    root = np.where(y >= floor, s * (2 * y * half_r + half_r**2), s * (floor**2 - y**2))
    return s * (2 * y * half_m + half_m**2), root


def test_round_trip_within_half_a_level_and_no_zero_root():
    n = 1000  # 4 blocks, the last one short
    rng = np.random.default_rng(0)
    m, v = float_adam_state(wide_range_gradients(rng, n, 20))
    r = np.sqrt(v)
    r[[5, 300]] = 1e-9  # below the lowest level of their blocks
    m[7] = 0.0
    blocks = q.Blocks(n)
    mc, ms, rc, rs = quantized(m, r, blocks)
    assert mc.dtype == rc.dtype == tf.int8 and ms.shape == rs.shape == (4,)
    np.testing.assert_allclose(ms, block_absmax(m, n), rtol=1e-6)
    m_hat = q.decode_moment(mc, blocks.expand(ms)).numpy()
    r_hat = q.decode_root(rc, blocks.expand(rs)).numpy()
    dm, _ = map_errors(np.abs(m), np.repeat(ms, q.BLOCK)[:n])
    _, dr = map_errors(r, np.repeat(rs, q.BLOCK)[:n])
    assert np.all(np.abs(m_hat - m) <= dm * (1 + 1e-4))
    assert np.all(np.abs(r_hat - r) <= dr * (1 + 1e-4))
    assert m_hat[7] == 0 and np.all(r_hat > 0)  # a rounded sqrt(v) is never 0 in a block that has any
    np.testing.assert_allclose(r_hat[[5, 300]], np.repeat(rs, q.BLOCK)[[5, 300]] / q.ROOT_LEVELS**2, rtol=1e-6)
    # the levels are dense near zero: a value 1e-3 of its block's maximum is kept to a few percent
    small = np.abs(m) < 1e-3 * np.repeat(ms, q.BLOCK)[:n]
    assert small.any() and np.all(np.abs(m_hat - m)[small] <= dm[small] * (1 + 1e-4))
    # the block maxima are levels: exact
    for x, x_hat in ((m, m_hat), (r, r_hat)):
        top = [i + int(np.argmax(np.abs(x[i : i + q.BLOCK]))) for i in range(0, n, q.BLOCK)]
        np.testing.assert_allclose(x_hat[top], x[top], rtol=1e-6)
    # an all-zero block (the initial state) decodes to zeros
    zero = tf.zeros([n], tf.int8), tf.zeros([4]), tf.zeros([n], tf.int8), tf.zeros([4])
    assert not np.any(q.decode_root(zero[2], blocks.expand(zero[3])))


@pytest.mark.parametrize("layout", ["blocks", "concat"])
def test_step_equals_float_adam_within_the_quantization_error(layout):
    """From float Adam's state (m, v) and from its 8-bit encoding, one step with the same gradient.

    With |m_hat - m| <= dm and |r_hat - r| <= dr (r = sqrt(v); `map_errors`), the step's moments differ by
    |m'_hat - m'| <= B1 dm =: Dm and |v'_hat - v'| = B2 |r_hat^2 - r^2| <= B2 dr (2 r + dr) =: Dv, so
    |r'_hat - r'| <= min(sqrt(Dv), Dv / r') =: Dr, and r'_hat >= L = max(r' - Dr, sqrt(B2) lowest level,
    sqrt(1 - B2) |g|).
    The updates u = alpha m' / (r' + eps) then differ by at most
        alpha (Dm / (L + eps) + |m'| Dr / ((r' + eps)(L + eps))).
    """
    sizes = [700, 90, 300]
    n = sum(sizes)
    rng = np.random.default_rng(1)
    grads = wide_range_gradients(rng, n, 30)
    m, v = float_adam_state(grads[:-1])
    g = grads[-1].astype(np.float64)
    r = np.sqrt(v)
    blocks = q.Blocks(n) if layout == "blocks" else q.ConcatBlocks(sizes)
    state = quantized(m, r, blocks)
    t, lr = 30.0, 1e-3
    alpha = float(q.adam_alpha(lr, t, B1, B2))
    value = tf.zeros([n])  # the update itself, free of the rounding of a large parameter value
    new_value, new_state = q.adam8bit_step(value, tf.constant(grads[-1]), state, alpha, blocks, B1, B2, EPS)
    got = -new_value.numpy().astype(np.float64)

    m1 = m + (g - m) * (1 - B1)
    v1 = v + (g * g - v) * (1 - B2)
    r1 = np.sqrt(v1)
    want = alpha * m1 / (r1 + EPS)

    if layout == "concat":  # per value, its own tensor's block scale

        def per_value(scale):
            return scale.numpy()[blocks.ids.numpy()]
    else:

        def per_value(scale):
            return np.repeat(scale.numpy(), q.BLOCK)[:n]

    r_level = per_value(state[3])
    dm, _ = map_errors(np.abs(m), per_value(state[1]))
    _, dr = map_errors(r, r_level)
    big_dm, big_dv = B1 * dm, B2 * dr * (2 * r + dr)
    big_dr = np.minimum(np.sqrt(big_dv), big_dv / r1)
    low = np.maximum.reduce([r1 - big_dr, np.sqrt(B2) * r_level / q.ROOT_LEVELS**2, np.sqrt(1 - B2) * np.abs(g)])
    bound = alpha * (big_dm / (low + EPS) + np.abs(m1) * big_dr / ((r1 + EPS) * (low + EPS)))

    diff = np.abs(got - want)
    assert np.all(diff <= bound * (1 + 1e-4) + 1e-6 * np.abs(want) + 1e-12), np.max(diff / bound)
    assert np.max(diff / bound) > 0.5  # the bound is tight: some value comes close to it
    assert np.median(diff / np.abs(want)) < 0.05  # a typical update is off by a few percent (here 2.3%)
    # what the step stores is the 8-bit encoding of its own float moments, each block scaled by its maximum
    m_scale = per_value(new_state[1])
    m_hat = q.decode_moment(new_state[0], m_scale).numpy()
    assert np.max(np.abs(m_hat)) <= np.max(m_scale) * (1 + 1e-6)
    m_state = m + (g - m) * (1 - B1)  # the 8-bit step's float m' (from m_hat) is within Dm of this
    bound_m = big_dm + map_errors(np.abs(m_state) + big_dm, m_scale)[0]
    assert np.all(np.abs(m_hat - m_state) <= bound_m * (1 + 1e-4))


def test_keras_optimizer_state_is_two_bytes_per_parameter_plus_block_scales():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((20,)), keras.layers.Dense(300), keras.layers.Dense(7)])
    model.compile(Adam8bit(1e-3), "mse")
    x, y = np.random.default_rng(0).standard_normal((16, 20)), np.zeros((16, 7))
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    params = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    state = [v for v in model.optimizer.variables if v.path.split("/")[-1] not in ("iteration", "learning_rate")]
    stored = sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in state)
    blocks = sum(q.num_blocks(int(np.prod(v.shape))) for v in model.trainable_variables)
    assert stored == 2 * params + 2 * 4 * blocks  # 2.03 bytes per parameter here, against 8 for float Adam
    assert any(np.any(v.numpy()) for v in state if v.dtype == "int8")  # it did train the codes
