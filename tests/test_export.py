"""The exported training graph: builtins only, and LiteRT training equals Keras training step for step."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from tests.tiny import tiny_backbone
from tinytl_tf import contract, tflite_model
from tinytl_tf.backbones import TinyNet, build_model
from tinytl_tf.config import BlockConfig, ConvConfig, NetConfig
from tinytl_tf.contract import METHODS, weight_tensor_name
from tinytl_tf.export import ExportError, check_builtins_only, export_model
from tinytl_tf.train import compile_model
from tinytl_tf.transfer import prepare_transfer

pytestmark = pytest.mark.slow  # exports .tflite models and runs them in LiteRT

STEPS, LR, TOTAL = 3, 5e-2, 10


@pytest.fixture(scope="module")
def backbone():
    return tiny_backbone()


def clone(model):
    copy = TinyNet.from_config(model.get_config())
    copy.set_weights(model.get_weights())
    return copy


def batches(resolution, n=STEPS, seed=3):
    rng = np.random.default_rng(seed)
    return [
        (rng.standard_normal((1, resolution, resolution, 3)).astype(np.float32), np.array([i % 3], np.int32))
        for i in range(n)
    ]


@pytest.mark.parametrize("method,optimizer", [(m, "adam") for m in METHODS] + [("tinytl-lb", "sgd")])
def test_litert_training_equals_keras(backbone, tmp_path, method, optimizer):
    keras.utils.set_random_seed(1)
    model = prepare_transfer(backbone, method, 3, dropout=0.0)
    reference = clone(model)
    path = tmp_path / "model.tflite"
    meta = export_model(model, path, optimizer, LR, TOTAL, label_smoothing=0.1, frozen_bits=32)

    interpreter = Interpreter(model_path=str(path))
    train = interpreter.get_signature_runner(contract.SIGNATURE_TRAIN)
    infer = interpreter.get_signature_runner(contract.SIGNATURE_INFER)
    data = batches(model.net_config.resolution)
    x0 = data[0][0]
    np.testing.assert_allclose(infer(x=x0)["logits"], reference(x0), rtol=1e-5, atol=1e-5)

    compile_model(reference, LR, TOTAL, 0.1)
    if optimizer == "sgd":
        reference.compile(
            optimizer=keras.optimizers.SGD(keras.optimizers.schedules.CosineDecay(LR, TOTAL)), loss=reference.loss
        )
    for x, y in data:
        got = float(train(x=x, y=y, lr=np.float32(0))["loss"])
        want = reference.train_on_batch(x, y)
        want = float(want[0] if isinstance(want, list) else want)
        assert abs(got - want) <= 1e-4 * max(1.0, abs(want)), (got, want)

    weights = interpreter.get_signature_runner(contract.SIGNATURE_GET_WEIGHTS)(unused=np.float32(0))
    trained = {weight_tensor_name(v.path): v.numpy() for v in reference.trainable_weights}
    slots = len(contract.SLOT_SUFFIXES[optimizer])
    assert len(weights) == len(trained) * (1 + slots) + 1  # frozen weights are constants, not variables
    for name, value in trained.items():
        np.testing.assert_allclose(weights[name], value, rtol=1e-4, atol=1e-4, err_msg=name)
    assert float(weights[contract.STEP_TENSOR]) == STEPS
    # frozen weights untouched: after training the device still computes the reference (whose frozen set is fixed)
    np.testing.assert_allclose(infer(x=x0)["logits"], reference(x0), rtol=1e-4, atol=1e-4)

    fresh = Interpreter(model_path=str(path))
    fresh.get_signature_runner(contract.SIGNATURE_SET_WEIGHTS)(**weights)
    np.testing.assert_array_equal(
        fresh.get_signature_runner(contract.SIGNATURE_INFER)(x=x0)["logits"], infer(x=x0)["logits"]
    )
    assert meta["method"] == method and meta["optimizer"]["name"] == optimizer
    assert not tflite_model.custom_ops(tflite_model.read(path.read_bytes()))


def test_model_json_describes_the_file(backbone, tmp_path):
    model = prepare_transfer(backbone, "tinytl-b", 3, labels=("ant", "bee", "cat"))
    path = tmp_path / "m.tflite"
    export_model(model, path, "adam", 1e-3, 100)
    meta = json.loads((tmp_path / "m.json").read_text())
    assert set(contract.METADATA_KEYS) <= set(meta)
    assert meta["tflite"] == "m.tflite" and meta["integrity"] == contract.metadata_integrity(meta)
    import hashlib

    assert meta["fingerprint"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert meta["labels"] == ["ant", "bee", "cat"]
    r = model.net_config.resolution
    assert meta["signatures"]["train"]["inputs"]["x"] == {"shape": [1, r, r, 3], "dtype": "float32"}
    assert meta["signatures"]["train"]["inputs"]["y"] == {"shape": [1], "dtype": "int32"}
    assert meta["signatures"]["infer"]["outputs"]["probabilities"] == {"shape": [1, 3], "dtype": "float32"}
    names = {w["name"] for w in meta["weights"]}
    assert (
        names == set(meta["signatures"]["get_weights"]["outputs"]) == set(meta["signatures"]["set_weights"]["inputs"])
    )
    assert {weight_tensor_name(v.path) for v in model.trainable_weights} == {
        w["name"] for w in meta["weights"] if w["kind"] == "trainable"
    }


def test_flex_graph_is_refused():
    class NeedsFlex(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, 6, 6, 2]), tf.TensorSpec([1, 6, 6, 4])])
        def f(self, x, g):  # a weight gradient by plain autodiff: Conv2DBackpropFilter is not a builtin
            return tf.raw_ops.Conv2DBackpropFilter(
                input=x, filter_sizes=[3, 3, 2, 4], out_backprop=g, strides=[1, 1, 1, 1], padding="SAME"
            )

    m = NeedsFlex()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([m.f.get_concrete_function()], m)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
    with pytest.raises(ExportError, match="FlexConv2DBackpropFilter"):
        check_builtins_only(converter.convert())


def test_two_exports_share_a_folder_and_none_is_overwritten(backbone, tmp_path):
    """X.json describes X.tflite: a second export beside the first leaves it usable; the same name is refused."""
    from tinytl_tf.ondevice import DeviceModel

    model = prepare_transfer(backbone, "tinytl-b", 3, labels=("ant", "bee", "cat"))
    export_model(model, tmp_path / "model.tflite", "adam", 1e-3, 100)
    first = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert sorted(first) == ["model.json", "model.tflite"]
    export_model(model, tmp_path / "float.tflite", "adam", 1e-3, 100, frozen_bits=32)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name in first} == first
    assert DeviceModel(tmp_path / "model.tflite").meta["frozen_bits"] == 8
    assert DeviceModel(tmp_path / "float.tflite").meta["frozen_bits"] == 32
    with pytest.raises(FileExistsError, match="--overwrite"):
        export_model(model, tmp_path / "model.tflite", "sgd", 1e-3, 100)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name in first} == first
    export_model(model, tmp_path / "model.tflite", "sgd", 1e-3, 100, overwrite=True)
    assert DeviceModel(tmp_path / "model.tflite").meta["optimizer"]["name"] == "sgd"


def test_export_rejects_bad_output_name(backbone, tmp_path):
    with pytest.raises(ValueError, match=".tflite"):
        export_model(prepare_transfer(backbone, "ft-last", 3), tmp_path / "model.bin")


def test_frozen_weights_are_stored_at_8_bits(tmp_path):
    """The default export keeps frozen kernels as int8 (forward and backward layouts alike) and still trains."""
    keras.utils.set_random_seed(0)
    wide = NetConfig(
        name="wide",
        resolution=32,
        stem=ConvConfig(out=32, stride=2),
        blocks=(BlockConfig(3, 1, 64, mid=128), BlockConfig(3, 2, 64, mid=128, shortcut=False)),
        feature_mix=ConvConfig(out=128),
        num_classes=5,
    )
    model = prepare_transfer(build_model(wide), "tinytl-b", 3, dropout=0.0)
    big = {tuple(v.shape) for v in model.non_trainable_weights if np.prod(v.shape) >= 1024}
    files = {}
    for bits in (8, 32):
        files[bits] = tmp_path / f"m{bits}.tflite"
        meta = export_model(model, files[bits], "adam", 1e-2, 100, frozen_bits=bits)
        assert meta["frozen_bits"] == bits
    tensors = [t for sg in tflite_model.read(files[8]) for t in sg.tensors if t.buffer_bytes]
    float_shapes = {tuple(sorted(t.shape)) for t in tensors if t.dtype == "float32"}
    assert not {tuple(sorted(s)) for s in big} & float_shapes  # no float copy of a big frozen kernel, in any layout
    assert sum(t.buffer_bytes for t in tensors if t.dtype == "int8") >= sum(int(np.prod(s)) for s in big)
    # every big kernel lost at least 3 of its 4 bytes per element in at least one layout
    assert files[32].stat().st_size - files[8].stat().st_size >= 3 * sum(int(np.prod(s)) for s in big)

    interpreter = Interpreter(model_path=str(files[8]))
    x = np.random.default_rng(0).standard_normal((1, 32, 32, 3)).astype(np.float32)
    want = model(x).numpy()
    got = interpreter.get_signature_runner("infer")(x=x)["logits"]
    assert np.abs(got - want).max() <= 0.05 * np.abs(want).max()
    train = interpreter.get_signature_runner("train")
    losses = [float(train(x=x, y=np.array([2], np.int32), lr=np.float32(0))["loss"]) for _ in range(15)]
    assert losses[-1] < 0.5 * losses[0]


def test_export_command_sizes_the_schedule_and_reports_progress_on_stderr(backbone, tmp_path, capsys):
    from tinytl_tf.cli import main

    model = prepare_transfer(backbone, "tinytl-b", 3, labels=("ant", "bee", "cat"))
    model.save(tmp_path / "model.keras")
    assert (
        main(
            [
                "export",
                "--model",
                str(tmp_path / "model.keras"),
                "--out",
                str(tmp_path / "float.tflite"),
                "--frozen-bits",
                "32",
                "--epochs",
                "3",
                "--train-examples",
                "7",
            ]
        )
        == 0
    )
    out, err = capsys.readouterr()
    assert json.loads(out)["method"] == "tinytl-b"  # stdout is exactly the result
    assert "export: converting to TFLite" in err and "schedule of 21 steps" in err
    assert json.loads((tmp_path / "float.json").read_text())["optimizer"]["total_steps"] == 21


def test_variables_that_start_at_zero_have_no_constant_in_the_file(backbone, tmp_path):
    """Adam's slots start from a FILL in the initializer, not from constants of zeros that stay resident; the
    trainables still start from the Keras values."""
    model = prepare_transfer(backbone, "tinytl-lb", 3, dropout=0.0)
    path = tmp_path / "model.tflite"
    meta = export_model(model, path, "adam", 1e-3, 10, frozen_bits=32)
    data = path.read_bytes()
    assert "FILL" in meta["ops"]
    assert tflite_model.fill_zero_initial_values(data)[1] == 0  # no constant of zeros left for a variable
    weights = Interpreter(model_path=str(path)).get_signature_runner(contract.SIGNATURE_GET_WEIGHTS)(
        unused=np.float32(0)
    )
    for w in meta["weights"]:
        if w["kind"] == "trainable":
            want = next(v.numpy() for v in model.trainable_weights if weight_tensor_name(v.path) == w["name"])
            np.testing.assert_array_equal(weights[w["name"]], want, err_msg=w["name"])
        else:
            assert not np.any(weights[w["name"]]), w["name"]
