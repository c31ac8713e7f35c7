"""Layers: math against stock Keras/TF, config round trips, lite residual starting as an exact no-op."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tinytl_tf.config import BlockConfig, LiteConfig, TrainableSet
from tinytl_tf.layers import Classifier, FoldedConv2D, GroupNorm, LiteResidual, MBBlock

RNG = np.random.default_rng(0)


def rand(*shape):
    return RNG.standard_normal(shape).astype("float32")


@pytest.mark.parametrize("size,kernel,stride", [(8, 3, 2), (9, 3, 2), (8, 5, 1), (7, 7, 2), (8, 1, 1)])
def test_same_padding_matches_tf_same(size, kernel, stride):
    x = rand(2, size, size, 4)
    layer = FoldedConv2D(6, kernel, stride, padding="same", use_scale=False, use_bias=False)
    y = layer(x)
    expected = tf.nn.conv2d(x, layer.kernel, stride, "SAME")
    np.testing.assert_allclose(y, expected, atol=1e-5)


def test_symmetric_padding_grouped_and_depthwise():
    x = rand(1, 9, 9, 4)
    grouped = FoldedConv2D(6, 3, 2, groups=2, use_scale=False, use_bias=False)
    y = grouped(x)
    xp = np.pad(x, [(0, 0), (1, 1), (1, 1), (0, 0)])
    k = grouped.kernel.numpy()
    expected = np.concatenate(
        [tf.nn.conv2d(xp[..., :2], k[..., :3], 2, "VALID"), tf.nn.conv2d(xp[..., 2:], k[..., 3:], 2, "VALID")], axis=-1
    )
    np.testing.assert_allclose(y, expected, atol=1e-5)
    dw = FoldedConv2D(4, 3, 1, depthwise=True, use_scale=False, use_bias=False)
    np.testing.assert_allclose(dw(x), tf.nn.depthwise_conv2d(xp, dw.kernel, [1, 1, 1, 1], "VALID"), atol=1e-5)


def test_scale_bias_activation():
    x = rand(1, 4, 4, 3) * 10
    layer = FoldedConv2D(3, 1, activation="relu6", use_scale=True)
    layer.build(x.shape)
    layer.scale.assign([2.0, -1.0, 0.5])
    layer.bias.assign([1.0, 0.0, -1.0])
    expected = np.clip(tf.nn.conv2d(x, layer.kernel, 1, "VALID").numpy() * [2, -1, 0.5] + [1, 0, -1], 0, 6)
    np.testing.assert_allclose(layer(x), expected, atol=1e-5)


def test_group_norm_matches_keras():
    x = rand(2, 5, 5, 16) * 3 + 1
    ours = GroupNorm(channels_per_group=8, epsilon=1e-5)
    ref = keras.layers.GroupNormalization(groups=2, epsilon=1e-5)
    ours.build(x.shape)
    ref.build(x.shape)
    g, b = rand(16), rand(16)
    ours.gamma.assign(g), ours.beta.assign(b), ref.gamma.assign(g), ref.beta.assign(b)
    np.testing.assert_allclose(ours(x), ref(x), atol=1e-4)


def test_freeze_flags_are_weight_trainability():
    layer = FoldedConv2D(4, 3, train_kernel=False, train_scale=True, train_bias=False)
    layer.build((None, 8, 8, 4))
    assert [w.name for w in layer.trainable_weights] == ["scale"]
    norm = GroupNorm(train_gamma=False, train_beta=True)
    norm.build((None, 4, 4, 16))
    assert [w.name for w in norm.trainable_weights] == ["beta"]


@pytest.mark.parametrize(
    "layer",
    [
        FoldedConv2D(8, 5, 2, groups=2, activation="relu", train_kernel=True, train_scale=True, train_bias=False),
        GroupNorm(4, train_gamma=False, gamma_initializer="zeros"),
        LiteResidual(16, 3, 2, groups=4, train_final_beta=False),
        MBBlock(
            BlockConfig(5, 1, 8, mid=24, shortcut=True, lite=LiteConfig(3, 2)), "same", TrainableSet(main_bias=True)
        ),
        Classifier(7, dropout=0.3, train=False),
    ],
)
def test_config_round_trip(layer):
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config


def test_lite_residual_starts_as_no_op_and_block_output():
    block_cfg = BlockConfig(3, 1, 8, mid=16, shortcut=True)
    plain = MBBlock(block_cfg)
    lite = MBBlock(BlockConfig(3, 1, 8, mid=16, shortcut=True, lite=LiteConfig(5, 2)))
    x = rand(2, 9, 9, 8)
    plain.build(x.shape)
    lite.build(x.shape)
    for name in ("expand", "depthwise", "project"):
        for a, b in zip(getattr(plain, name).weights, getattr(lite, name).weights):
            b.assign(a)
    np.testing.assert_array_equal(plain(x), lite(x))
    # once the last norm's scale moves, the branch contributes, resized to the main branch's size
    lite.lite.norm2.gamma.assign(np.ones(8, "float32"))
    branch = lite.lite(x, size=(9, 9))
    assert branch.shape == (2, 9, 9, 8)
    np.testing.assert_allclose(lite(x), plain(x) + branch, atol=1e-5)
    assert np.abs(branch).max() > 1e-3
