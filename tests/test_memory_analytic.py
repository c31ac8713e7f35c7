"""The analytic training-memory model (TinyTL, Sec. 3.1) against the paper's ProxylessNAS-Mobile table."""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.tiny import tiny_config
from tinytl_tf.backbones import BACKBONES, UnknownBackbone, backbone_config
from tinytl_tf.config import BlockConfig, ConvConfig, NetConfig
from tinytl_tf.contract import METHODS
from tinytl_tf.memory import (
    format_table,
    leaves,
    method_table,
    param_counts,
    peak_activation_bytes,
    plot_breakdown,
    training_memory,
)
from tinytl_tf.methods import TRAINABLE, UnknownMethod, method_config

# Typed in from the TinyTL paper: ProxylessNAS-Mobile, 102-class head, lite modules present for every
# method, 1 byte per frozen parameter, MB = 1e6 B. Params MB; total MB at batch 8 for each resolution.
RESOLUTIONS = (160, 192, 224, 256, 288, 320)
PAPER = {
    "ft-full": (18.986, (208.7, 292.4, 390.8, 505.1, 633.8, 778.5)),
    "ft-last": (5.139, (18.2, 24.0, 30.8, 38.7, 47.6, 57.6)),
    "ft-norm-last": (5.264, (100.7, 142.9, 192.4, 249.9, 314.7, 387.5)),
    "tinytl-b": (5.202, (18.7, 24.7, 31.7, 39.8, 49.0, 59.3)),
    "tinytl-l": (10.588, (24.1, 30.1, 37.1, 45.2, 54.4, 64.7)),
    "tinytl-lb": (10.634, (24.2, 30.1, 37.1, 45.2, 54.4, 64.7)),
}
PAPER_LB_BATCH1 = (12.3, 13.1, 13.9, 15.0, 16.1, 17.4)
TOLERANCE_MB = 0.1


@pytest.fixture(scope="module")
def proxyless_tables():
    return {
        r: {row["method"]: row for row in method_table("proxylessnas-mobile", r, 8, num_classes=102)}
        for r in RESOLUTIONS
    }


@pytest.mark.parametrize("method", METHODS)
def test_parameter_memory_matches_the_paper(proxyless_tables, method):
    for r in RESOLUTIONS:
        assert proxyless_tables[r][method]["params_mb"] == pytest.approx(PAPER[method][0], abs=0.0006)


@pytest.mark.parametrize("resolution", RESOLUTIONS)
@pytest.mark.parametrize("method", METHODS)
def test_total_memory_at_batch_8_matches_the_paper(proxyless_tables, method, resolution):
    expected = PAPER[method][1][RESOLUTIONS.index(resolution)]
    assert proxyless_tables[resolution][method]["total_mb"] == pytest.approx(expected, abs=TOLERANCE_MB)


@pytest.mark.parametrize("resolution, expected", zip(RESOLUTIONS, PAPER_LB_BATCH1))
def test_tinytl_lb_batch_1_matches_the_paper(resolution, expected):
    (row,) = method_table("proxylessnas-mobile", resolution, 1, num_classes=102, methods=["tinytl-lb"])
    assert row["params_mb"] == pytest.approx(10.634, abs=0.0006)
    assert row["total_mb"] == pytest.approx(expected, abs=TOLERANCE_MB)


def test_rows_are_consistent(proxyless_tables):
    for rows in proxyless_tables.values():
        for row in rows.values():
            assert row["total_mb"] == pytest.approx(row["params_mb"] + row["activations_mb"])
            assert row["backbone"] == "proxylessnas-mobile" and row["batch_size"] == 8
    assert [r["method"] for r in method_table("proxylessnas-mobile", 224, 8)] == list(METHODS)


def _micro(trainable):
    """32 px: 3x3 s2 stem -> 8 ch (ReLU6), one depthwise block 8 -> 8 with an identity shortcut, 2 classes."""
    return NetConfig(
        name="micro",
        resolution=32,
        stem=ConvConfig(out=8, kernel=3, stride=2),
        blocks=(BlockConfig(kernel=3, stride=1, out=8, shortcut=True),),
        num_classes=2,
        trainable=trainable,
    )


def test_rules_by_hand():
    """Every rule of the analytic memory model on a network small enough to do by hand (bytes, batch 1)."""
    full = _micro(TRAINABLE["ft-full"])
    # stem conv in 32*32*3 = 3072, out 16*16*8 = 2048; block input 2048 is held while inside the block
    # saved after stem: conv 4*3072 + norm 4*2048 + mask 2048/8 = 20736; depthwise conv (groups 8): tmp 4*2048 +
    # 4*2048/8, saved 8192 -> norm saved 8192 -> mask 256 -> project conv tmp 4*(2048+2048) on 20736 + 8192 +
    # 8192 + 256 saved plus the 8192-byte residual = 61952 (the peak; the project norm ties it).
    assert peak_activation_bytes(full) == 61952
    # FT-Last: nothing saved before the head; the peak is the project conv's tmp + the residual.
    last = _micro(TRAINABLE["ft-last"])
    assert peak_activation_bytes(last) == 4 * (2048 + 2048) + 4 * 2048
    # parameters: stem 216 + 8 + 8, depthwise 72 + 8 + 8, project 64 + 8 + 8, head 16 + 2 = 418
    assert param_counts(full) == (418, 0)
    assert param_counts(last) == (18, 400)
    report = training_memory(last, batch_size=3)
    assert report.params_bytes == 4 * 18 + 400
    assert report.activation_bytes == 3 * 24576
    assert report.total_bytes == report.params_bytes + report.activation_bytes
    kinds = [(leaf.kind, leaf.name) for leaf in leaves(full)]
    assert kinds == [
        ("conv", "stem/conv"),
        ("norm", "stem/norm"),
        ("relu6", "stem/relu6"),
        ("conv", "block_0/depthwise/conv"),
        ("norm", "block_0/depthwise/norm"),
        ("relu6", "block_0/depthwise/relu6"),
        ("conv", "block_0/project/conv"),
        ("norm", "block_0/project/norm"),
        ("add", "block_0/shortcut"),
        ("pool", "head/pool"),
        ("linear", "head/linear"),
    ]
    head = leaves(full)[-1]
    assert (head.in_numel, head.out_numel, head.saved_bytes, head.tmp_bytes) == (8, 2, 32, 40)


def test_bias_only_norm_and_relu_masks():
    """TinyTL-B: a bias-only norm saves nothing, ReLU masks are 1 bit; FT-Last keeps no masks."""
    b = {leaf.name: leaf for leaf in leaves(_micro(TRAINABLE["tinytl-b"]))}
    assert b["stem/norm"].saved_bytes == 0 and b["stem/conv"].saved_bytes == 0
    assert b["stem/relu6"].saved_bytes == 2048 // 8
    last = {leaf.name: leaf for leaf in leaves(_micro(TRAINABLE["ft-last"]))}
    assert last["stem/relu6"].saved_bytes == 0
    assert last["block_0/depthwise/conv"].tmp_bytes == 4 * 2048 + 4 * 2048 // 8  # groups = channels
    assert last["block_0/depthwise/conv"].residual_numel == 2048
    assert last["stem/conv"].residual_numel == 0


def test_activations_scale_linearly_with_batch_and_params_do_not():
    cfg = method_config("proxylessnas-mobile", "tinytl-lb", 102, resolution=224, lite_residual=True)
    one = training_memory(cfg, 1)
    for batch in (2, 8, 32):
        r = training_memory(cfg, batch)
        assert r.activation_bytes == batch * one.activation_bytes
        assert r.params_bytes == one.params_bytes
        assert r.peak_bytes == one.peak_bytes


def test_frozen_bits():
    cfg = method_config("proxylessnas-mobile", "tinytl-b", 102, resolution=224)
    r8, r32 = training_memory(cfg, 8, frozen_bits=8), training_memory(cfg, 8, frozen_bits=32)
    assert r32.params_bytes == 4 * (r32.trainable_params + r32.frozen_params)
    assert r8.params_bytes == 4 * r8.trainable_params + r8.frozen_params
    assert r32.activation_bytes == r8.activation_bytes
    with pytest.raises(ValueError, match="frozen_bits"):
        training_memory(cfg, 8, frozen_bits=7)
    with pytest.raises(ValueError, match="batch_size"):
        training_memory(cfg, 0)


@pytest.mark.parametrize("name", list(BACKBONES))
def test_every_backbone(name):
    res = backbone_config(name).resolution
    rows = {r["method"]: r for r in method_table(name, None, 8, num_classes=10)}
    assert set(rows) == set(METHODS)
    for r in rows.values():
        assert r["resolution"] == res and r["params_mb"] > 0 and r["activations_mb"] > 0
    act = {m: r["activations_mb"] for m, r in rows.items()}
    assert act["ft-full"] > act["ft-norm-last"] > act["tinytl-b"] > act["ft-last"]
    assert act["tinytl-lb"] >= act["tinytl-b"]
    # without lite modules on every method, only the TinyTL-L / L+B networks keep them
    plain = {r["method"]: r for r in method_table(name, None, 8, num_classes=10, lite_for_all=False)}
    for m in METHODS:
        if m in ("tinytl-l", "tinytl-lb"):
            assert plain[m] == rows[m]
        else:
            assert plain[m]["params_mb"] < rows[m]["params_mb"]


def test_tiny_config_matches_the_keras_model():
    """Feature-map sizes and parameter counts of the walk equal the built Keras model's (odd sizes, stride 2)."""
    from tinytl_tf.backbones import build_model, count_params

    cfg = method_config(tiny_config(), "tinytl-lb", 3, lite_residual=True)
    model = build_model(cfg)
    assert param_counts(cfg) == (count_params(model)[0], count_params(model)[1] - count_params(model)[0])
    by_name = {leaf.name: leaf for leaf in leaves(cfg)}
    for i, b in enumerate(cfg.blocks):
        _, h, w, c = model.get_layer(f"block_{i}").output.shape
        assert by_name[f"block_{i}/project/norm"].out_numel == h * w * c
        if b.lite is not None:
            assert by_name[f"block_{i}/lite/resize"].out_numel == h * w * c
    # 36 px: stem -> 18, block 3 (stride 2) 9 -> 5; its lite branch pools 9 -> 4, then stride 2 -> 2
    assert by_name["block_3/lite/pool"].out_numel == 4 * 4 * 16
    assert by_name["block_3/lite/conv1"].out_numel == 2 * 2 * 16
    assert by_name["block_3/lite/conv1"].groups == 2
    for m in METHODS:
        r = training_memory(method_config(tiny_config(), m, 102, lite_residual=True), 4)
        assert r.total_bytes > r.params_bytes > 0


def test_mcunet_parameter_counts_equal_keras():
    from tinytl_tf.backbones import count_params, load_backbone
    from tinytl_tf.transfer import prepare_transfer

    model = prepare_transfer(load_backbone("mcunet-5fps"), "tinytl-lb", 10)
    trainable, total = count_params(model)
    assert param_counts(method_config("mcunet-5fps", "tinytl-lb", 10)) == (trainable, total - trainable)


def test_clear_errors():
    with pytest.raises(UnknownMethod, match="tinytl-lb"):
        method_config("proxylessnas-mobile", "tinytl-x", 102)
    with pytest.raises(UnknownMethod):
        method_table("proxylessnas-mobile", 224, 8, methods=["ft-everything"])
    with pytest.raises(UnknownBackbone, match="proxylessnas-mobile"):
        method_table("resnet-50", 224, 8)
    with pytest.raises(ValueError, match="resolution"):
        method_table("proxylessnas-mobile", 225, 8)


def test_format_table_and_plot(tmp_path):
    rows = method_table("proxylessnas-mobile", 224, 8)
    text = format_table(rows)
    assert "proxylessnas-mobile, 224 px, batch 8" in text
    assert all(m in text for m in METHODS) and "37.1" in text
    out = plot_breakdown(rows, tmp_path / "breakdown.png")
    data = (tmp_path / "breakdown.png").read_bytes()
    assert out == tmp_path / "breakdown.png"
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_analytic_model_needs_no_tensorflow():
    """The super-net search calls it thousands of times: no TF import, no model construction."""
    code = (
        "import sys; from tinytl_tf.memory import training_memory; from tinytl_tf.config import *; "
        "cfg = NetConfig(name='m', resolution=64, stem=ConvConfig(out=8, kernel=3, stride=2), num_classes=2, "
        "blocks=(BlockConfig(3, 1, 8), BlockConfig(5, 2, 16, mid=24, lite=LiteConfig(kernel=3))), "
        "trainable=TrainableSet(main_bias=True, lite_kernel=True)); "
        "assert training_memory(cfg, 8).total_bytes > 0; "
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'TF imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


def test_lite_branches_follow_the_reference():
    """Lite modules on blocks 1.., kernel 5 (3 in the last stage); their leaves sit inside the block."""
    cfg = method_config("proxylessnas-mobile", "tinytl-lb", 102, resolution=224, lite_residual=True)
    assert cfg.blocks[0].lite is None and all(b.lite is not None for b in cfg.blocks[1:])
    assert [b.lite.kernel for b in cfg.blocks[-4:]] == [3, 3, 3, 3] and cfg.blocks[1].lite.kernel == 5
    by_name = {leaf.name: leaf for leaf in leaves(cfg)}
    assert by_name["block_2/lite/conv1"].residual_numel == 56 * 56 * 32  # block 2 has an identity shortcut
    assert by_name["block_1/lite/conv1"].residual_numel == 0
    assert by_name["block_1/lite/norm1"].saved_bytes == 4 * 28 * 28 * 16  # lite gamma trains in L+B
    assert by_name["block_1/lite/relu"].saved_bytes == 28 * 28 * 16 // 8


def test_a_resolution_the_network_cannot_take_is_refused():
    # mcunet-5fps halves 32 px five times: the lite branch of block 11 would pool its 1x1 input map to 0x0
    with pytest.raises(ValueError, match="cannot take 32 px.*empty feature map"):
        method_table("mcunet-5fps", 32, 1)
    assert method_table("mcunet-5fps", 64, 1)[0]["total_mb"] > 0
