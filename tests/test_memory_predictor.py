"""The engine's memory predictor: its storage terms against the rules they encode and against real exports, and the
memory room's imports (no TensorFlow, no export harness)."""

import json
import subprocess
import sys

import pytest

from tinytl_tf.config import NetConfig
from tinytl_tf.memory import param_counts, predictor
from tinytl_tf.memory.predictor import OPTIMIZER_STATE_BYTES, predict_train, predict_train_mb, predicted_table
from tinytl_tf.methods import method_config


def test_memory_room_imports_neither_tensorflow_nor_the_export_harness():
    code = (
        "import sys, tinytl_tf.memory, tinytl_tf.backbones.registry\n"
        "from tinytl_tf.memory import predict_train_mb, method_table\n"
        "predict_train_mb(tinytl_tf.methods.method_config('mcunet-5fps', 'tinytl-lb', 102))\n"
        "method_table('mcunet-5fps')\n"
        "bad = [m for m in ('tensorflow', 'keras', 'tinytl_tf.jobs', 'tinytl_tf.export', 'tinytl_tf.transfer',\n"
        "       'tinytl_tf.backbones.builder') if m in sys.modules]\n"
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_variables_are_trainables_and_optimizer_state(optimizer):
    cfg = method_config("mcunet-5fps", "tinytl-lb", 102, lite_residual=True, resolution=128)
    trainable, _ = param_counts(cfg)
    p = predict_train(cfg, optimizer)
    assert p.variables == (4 + OPTIMIZER_STATE_BYTES[optimizer]) * trainable + 4  # + the step counter
    # the initial values are not resident: what stays is `load`'s arena for the largest variable group (the
    # small tensors together, 16,320 head weights + biases here, or the largest lite kernel)
    walk = predictor._Walk(cfg, optimizer, 8)
    walk.run()
    assert sum(walk.trainable_sizes) == trainable
    assert walk.largest_load_group() == max(n for n in walk.trainable_sizes if n >= predictor.FLAT_MAX_ELEMENTS)
    assert p.initial_values == predictor.LOAD_ARENA_GROUPS * 4 * walk.largest_load_group() < 4 * trainable


def test_adam_costs_its_two_moments_over_sgd():
    cfg = method_config("proxylessnas-mobile", "ft-full", 102, lite_residual=True, resolution=224)
    trainable, _ = param_counts(cfg)
    sgd, adam = predict_train(cfg, "sgd"), predict_train(cfg, "adam")
    assert adam.variables - sgd.variables == 8 * trainable
    assert adam.total_bytes - sgd.total_bytes >= 8 * trainable  # the update's temporaries come on top


def test_frozen_kernels_are_stored_once_and_a_second_copy_is_one_rule(monkeypatch):
    last = method_config("mcunet-5fps", "ft-last", 102, lite_residual=True, resolution=128)
    bias = method_config("mcunet-5fps", "tinytl-b", 102, lite_residual=True, resolution=128)
    _, frozen = param_counts(last)
    # each frozen kernel once, int8 (small ones float32), whether or not its input gradient runs (FT-Last runs no
    # backward below the head; TinyTL-B runs it through every layer)
    assert frozen <= predict_train(last).frozen_constants < 1.2 * frozen
    once = predict_train(bias).frozen_constants
    assert frozen <= once < 1.2 * frozen
    monkeypatch.setattr(predictor, "FROZEN_KERNEL_COPIES", 2)  # the engine before the input gradient shared it
    assert predict_train(bias).frozen_constants > 1.8 * frozen


def test_methods_rank_as_their_storage():
    rows = {r["method"]: r for r in ({"method": m} for m in ("ft-last", "tinytl-b", "tinytl-lb", "ft-full"))}
    predicted = predicted_table("proxylessnas-mobile", 224, 102, list(rows))
    mb = dict(zip(rows, (p.total_mb for p in predicted)))
    assert mb["ft-last"] < mb["tinytl-b"] < mb["tinytl-lb"] < mb["ft-full"]


def test_predict_train_mb_takes_a_subnet_config_and_a_method():
    cfg = method_config("mcunet-5fps", "ft-full", 10, resolution=96)
    assert predict_train_mb(cfg, "sgd", method="tinytl-lb") == pytest.approx(
        predict_train(method_config(cfg, "tinytl-lb", 10), "sgd").total_mb
    )
    assert predict_train_mb(cfg) == pytest.approx(predict_train(cfg).total_mb)


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda cfg: predict_train(cfg, "rmsprop"), "unknown optimizer"),
        (lambda cfg: predict_train(cfg, frozen_bits=16), "8 or 32"),
        (lambda cfg: predict_train({"name": "x"}), "NetConfig"),
    ],
)
def test_bad_requests(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call(method_config("mcunet-5fps", "tinytl-lb", 102))


def test_memory_command_prints_predicted_beside_analytic(capsys):
    from tinytl_tf.cli import main

    assert main(["memory", "--backbone", "mcunet-5fps", "--batch-size", "1", "--json", "--optimizer", "sgd"]) == 0
    rows = json.loads(capsys.readouterr().out)
    expected = predicted_table("mcunet-5fps", None, 102, optimizer="sgd")
    assert [r["predicted_train_mb"] for r in rows] == pytest.approx([p.total_mb for p in expected])
    assert {"params_mb", "activations_mb", "total_mb", "trainable_params", "frozen_params"} <= set(rows[0])
    assert main(["memory", "--backbone", "mcunet-5fps"]) == 0
    text = capsys.readouterr().out
    assert "predicted" in text and "batch 8" in text


@pytest.fixture(scope="module", params=["ft-full", "tinytl-b"])
def exported(request, tmp_path_factory):
    """The tiny network (every layer kind, lite branches on every block but the first) exported for `method`."""
    from tests.tiny import tiny_backbone
    from tinytl_tf.export import export_model
    from tinytl_tf.transfer import prepare_transfer

    path = tmp_path_factory.mktemp(request.param) / "model.tflite"
    model = prepare_transfer(tiny_backbone(96), request.param, 3, lite_residual=True)
    export_model(model, path, optimizer="adam", verify=False)
    return model.net_config, path


@pytest.mark.slow
def test_storage_terms_equal_a_real_exports(exported):
    """Variables exactly; the frozen weights within 8% (or 8 kB, on this tiny network) of the file's constants (the
    rest: the ops' shape and padding constants, which the tables term carries; the initial values are not in the
    file); the arena within 15%; the file within 25% (the op count leaves out the `load` signature's ops and the
    GATHERs that read the shared int8 kernels, a known gap of the tables term)."""
    from tinytl_tf.memory import static_memory

    cfg, path = exported
    assert isinstance(cfg, NetConfig)
    p, static = predict_train(cfg, "adam"), static_memory(path)
    assert p.variables == static.variable_bytes
    assert p.frozen_constants == pytest.approx(static.constant_bytes, rel=0.08, abs=8_000)
    assert p.file_bytes == pytest.approx(static.file_bytes, rel=0.25)
    assert p.arena == pytest.approx(static.peak_activation_bytes, rel=0.15)


def test_benchmark_rewrites_only_the_readmes_memory_table(tmp_path):
    from benchmarks import memory as bench

    row = {"method": "tinytl-lb", "train_builtin_mb": 11.84, "analytic_mb": 2.52, "predicted_train_mb": 11.2}
    report = {
        "runs": {
            "mcunet-5fps@128 adam": {
                "network": "mcunet-5fps",
                "resolution": 128,
                "optimizer": "adam",
                "classes": 102,
                "commit": "0123456789abcdef",
                "rows": [row],
            }
        }
    }
    readme = tmp_path / "README.md"
    readme.write_text(f"before\n{bench.README_BEGIN}\nold table\n{bench.README_END}\nafter\n")
    bench.rewrite_readme(readme, report)
    text = readme.read_text()
    assert text.startswith("before\n") and text.endswith("after\n") and "old table" not in text
    assert "| mcunet-5fps@128, adam | 11.8 (2.5 / 11.2) |" in text and "01234567" in text
    readme.write_text("no markers\n")
    with pytest.raises(SystemExit, match="memory-table"):
        bench.rewrite_readme(readme, report)
    assert readme.read_text() == "no markers\n"


@pytest.mark.slow
def test_the_8bit_optimizers_own_ops_are_counted_per_variable_group(tmp_path, monkeypatch):
    """The 8-bit optimizer adds ops per variable group that the layer walk does not count; the predictor charges
    `ADAM8BIT_OPS_PER_GROUP` of them (counted on ProxylessNAS-Mobile): a tiny network's exports agree within 20%
    (its tensors are small, so the group threshold is lowered to give it a real network's many groups)."""
    from tests.tiny import tiny_backbone
    from tinytl_tf import export, tflite_model
    from tinytl_tf.export import export_model
    from tinytl_tf.memory import predictor
    from tinytl_tf.memory.predictor import ADAM8BIT_OPS_PER_GROUP, _Walk
    from tinytl_tf.transfer import prepare_transfer

    for module in (export, predictor):
        monkeypatch.setattr(module, "FLAT_MAX_ELEMENTS", 200)

    model = prepare_transfer(tiny_backbone(96), "ft-full", 3, lite_residual=True)
    ops = {}
    for optimizer in ("adam", "adam8bit"):
        path = tmp_path / f"{optimizer}.tflite"
        export_model(model, path, optimizer=optimizer, verify=False)
        ops[optimizer] = sum(len(sg.ops) for sg in tflite_model.read(path))
    walk = _Walk(model.net_config, "adam8bit", 8)
    walk.run()
    assert walk.groups() > 5
    per_group = (ops["adam8bit"] - ops["adam"]) / walk.groups()
    assert per_group == pytest.approx(ADAM8BIT_OPS_PER_GROUP, rel=0.2)
    cfg = model.net_config
    grown = predict_train(cfg, "adam8bit").tables - predict_train(cfg, "adam").tables
    assert grown > 0
