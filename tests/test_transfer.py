"""Trainable sets of the six methods, counted independently from the weight file's own architecture."""

import json

import numpy as np
import pytest

from tinytl_tf.backbones import count_params, load_backbone
from tinytl_tf.backbones.tiny_training import FILES, WEIGHTS_DIR
from tinytl_tf.contract import METHODS
from tinytl_tf.transfer import UnknownMethod, prepare_transfer

K = 10


def expected_counts():
    """Count mcunet-5fps parameters from arch.json, independently of the builder."""
    arch = json.loads(str(np.load(WEIGHTS_DIR / FILES["mcunet-5fps"])["arch.json"]))
    convs = [arch["first_conv"]] + [
        c for b in arch["blocks"] for c in (b["pointwise1"], b["depthwise"], b["pointwise2"]) if c
    ]
    kernels = sum(c["out_channel"] * c["in_channel"] // c["groups"] * c["kernel_size"][0] ** 2 for c in convs)
    channels = sum(c["out_channel"] for c in convs)  # one bias (and one folded-norm scale) per output channel
    head = arch["classifier"]["in_channel"] * K + K
    lite, last_betas, size = 0, 0, arch["input_size"] // arch["first_conv"]["stride"]
    for i, b in enumerate(arch["blocks"]):
        cin, cout = (
            b["depthwise"]["in_channel"] if b["pointwise1"] is None else b["pointwise1"]["in_channel"],
            b["pointwise2"]["out_channel"],
        )
        if i > 0:  # pool -> kxk conv (groups 2, cin -> cin) -> GN -> ReLU -> 1x1 (cin -> cout) -> GN
            k = 5 if size >= 5 else 3
            lite += k * k * cin * (cin // 2) + 2 * cin + cin * cout + 2 * cout
            last_betas += cout
        size //= b["depthwise"]["stride"]
    return (
        {
            "ft-last": head,
            "ft-norm-last": head + 2 * channels,
            "ft-full": kernels + 2 * channels + head,
            "tinytl-b": head + channels,
            "tinytl-l": head + lite,
            "tinytl-lb": head + channels + lite - last_betas,
        },
        kernels + 2 * channels + head,
        lite,
    )


@pytest.fixture(scope="module")
def backbone():
    return load_backbone("mcunet-5fps")


@pytest.mark.parametrize("method", METHODS)
def test_exact_trainable_parameter_count(backbone, method):
    counts, plain_total, lite = expected_counts()
    model = prepare_transfer(backbone, method, K)
    trainable, total = count_params(model)
    assert trainable == counts[method]
    assert total == plain_total + (lite if method in ("tinytl-l", "tinytl-lb") else 0)
    assert model.net_config.method == method


# The TinyTL paper's figures: ProxylessNAS-Mobile, 102 classes, lite modules present for every method, 4 B per
# trainable and 1 B per frozen parameter, MB = 1e6 B.
PAPER_PARAM_MB = {
    "ft-full": 18.986,
    "ft-last": 5.139,
    "ft-norm-last": 5.264,
    "tinytl-b": 5.202,
    "tinytl-l": 10.588,
    "tinytl-lb": 10.634,
}


@pytest.mark.parametrize("method", METHODS)
def test_parameter_memory_matches_the_paper(method):
    model = prepare_transfer(load_backbone("proxylessnas-mobile"), method, 102, lite_residual=True)
    trainable, total = count_params(model)
    assert abs((4 * trainable + (total - trainable)) / 1e6 - PAPER_PARAM_MB[method]) < 0.0006


def test_backbone_weights_are_copied_and_features_unchanged(backbone):
    import keras

    x = np.random.default_rng(1).standard_normal((2, 128, 128, 3)).astype("float32")
    before = keras.Model(backbone.input, backbone.get_layer("block_13").output)(x)
    for method in ("tinytl-lb", "ft-full"):
        model = prepare_transfer(backbone, method, K)
        after = keras.Model(model.input, model.get_layer("block_13").output)(x)
        np.testing.assert_array_equal(before, after)  # zero-initialised lite scale: exactly the same features


def test_unknown_method_lists_valid_names(backbone):
    with pytest.raises(UnknownMethod) as e:
        prepare_transfer(backbone, "tinytl-x", K)
    assert all(m in str(e.value) for m in METHODS)
