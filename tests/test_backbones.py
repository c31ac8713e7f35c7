"""Pretrained backbones reproduce ImageNet predictions; the ProxylessNAS-Mobile architecture is the paper's."""

import numpy as np
import pytest
import skimage.data
from PIL import Image

from tinytl_tf.backbones import BACKBONES, UnknownBackbone, count_params, load_backbone
from tinytl_tf.backbones.mobilenet_v1 import find_weights
from tinytl_tf.config import ConfigError

CATS = {285, 281, 282}  # Egyptian cat, tabby, tiger cat
ESPRESSO = 967


def imagenet_top(model, image, k, offset=0):
    r = model.net_config.resolution
    x = np.asarray(Image.fromarray(image).resize((r, r), Image.BILINEAR), dtype="float32")
    x = (x - np.array(model.net_config.input_mean)) / np.array(model.net_config.input_std)
    logits = np.asarray(model(x[None].astype("float32")))[0]
    return [int(i) - offset for i in np.argsort(-logits)[:k]]


@pytest.mark.parametrize("name", ["mcunet-5fps", "proxyless-w0.3", "mbv2-w0.35"])
def test_mcu_nets_predict_imagenet(name):
    model = load_backbone(name)
    assert model.net_config.resolution == 128
    assert set(imagenet_top(model, skimage.data.chelsea(), 3)) == CATS
    assert imagenet_top(model, skimage.data.coffee(), 1) == [ESPRESSO]


def test_mobilenet_v1_predicts_imagenet(shared_assets):
    try:
        weights = find_weights(shared_assets / "weights").parent
    except FileNotFoundError:
        pytest.skip(
            f"mobilenet_v1_1.0_224_imagenet.npz is in neither {shared_assets / 'weights'} nor $TINYTL_WEIGHTS_DIR"
        )
    model = load_backbone("mobilenet-v1", weights_dir=weights)
    # index 0 is "background": ImageNet class i is logit i + 1
    assert set(imagenet_top(model, skimage.data.chelsea(), 3, offset=1)) == CATS
    assert imagenet_top(model, skimage.data.coffee(), 1, offset=1) == [ESPRESSO]


def test_mobilenet_v1_missing_weights_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYTL_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="--weights-dir"):
        load_backbone("mobilenet-v1")


def test_proxylessnas_mobile_has_the_papers_parameter_count():
    # ProxylessNAS-Mobile as TinyTL uses it: 4,080,512 parameters with a 1000-class head (BatchNorm gamma/beta =
    # folded scale/bias)
    assert count_params(load_backbone("proxylessnas-mobile"))[1] == 4_080_512


def test_other_resolution_keeps_weights_and_predictions():
    model = load_backbone("mcunet-5fps", resolution=160)
    assert model.input_shape == (None, 160, 160, 3)
    assert set(imagenet_top(model, skimage.data.chelsea(), 3)) == CATS


def test_unknown_backbone_lists_valid_names():
    with pytest.raises(UnknownBackbone) as e:
        load_backbone("resnet-50")
    for name in BACKBONES:
        assert name in str(e.value)


@pytest.mark.parametrize("resolution", [16, 127, 4096, "128"])
def test_bad_resolution_is_rejected(resolution):
    with pytest.raises(ConfigError, match="resolution"):
        load_backbone("mcunet-5fps", resolution=resolution)
