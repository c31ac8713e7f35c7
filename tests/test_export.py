"""The exported training graph: builtins only, and LiteRT training equals Keras training step for step."""

import json
import logging

import keras
import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from tests.tiny import tiny_backbone
from tinytl_tf import contract, export, tflite_model
from tinytl_tf.backbones import TinyNet, build_model
from tinytl_tf.config import BlockConfig, ConvConfig, NetConfig
from tinytl_tf.contract import METHODS, weight_tensor_name
from tinytl_tf.export import ExportError, check_builtins_only, export_model
from tinytl_tf.initial_values import open_interpreter
from tinytl_tf.ops import adam8bit
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


@pytest.mark.parametrize(
    "method,optimizer",
    [(m, "adam") for m in METHODS] + [("tinytl-lb", "sgd"), ("tinytl-lb", "adam8bit"), ("ft-full", "adam8bit")],
)
def test_litert_training_equals_keras(backbone, tmp_path, monkeypatch, method, optimizer):
    if optimizer == "adam8bit":  # tensors of 300+ values get variables of their own: both layouts of 8-bit state
        monkeypatch.setattr(export, "FLAT_MAX_ELEMENTS", 300)
    keras.utils.set_random_seed(1)
    model = prepare_transfer(backbone, method, 3, dropout=0.0)
    reference = clone(model)
    path = tmp_path / "model.tflite"
    meta = export_model(model, path, optimizer, LR, TOTAL, label_smoothing=0.1, frozen_bits=32)

    interpreter = open_interpreter(path)
    train = interpreter.get_signature_runner(contract.SIGNATURE_TRAIN)
    infer = interpreter.get_signature_runner(contract.SIGNATURE_INFER)
    data = batches(model.net_config.resolution)
    x0 = data[0][0]
    np.testing.assert_allclose(infer(x=x0)["logits"], reference(x0), rtol=1e-5, atol=1e-5)

    compile_model(reference, LR, TOTAL, 0.1, optimizer="adam8bit" if optimizer == "adam8bit" else "adam")
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
    if optimizer == "adam8bit":  # the 8-bit state too: scales to float rounding, codes equal but for a value
        # on a rounding boundary, where LiteRT's and TF's last float bit may round it to the neighbouring code
        states = reference.optimizer._states
        for v, state in zip(reference.trainable_weights, states):
            for suffix, want in zip(contract.SLOT_SUFFIXES[optimizer], state):
                got, want = weights[contract.slot_tensor_name(weight_tensor_name(v.path), suffix)], want.numpy()
                assert got.dtype == want.dtype and got.shape == want.shape, suffix
                if got.dtype == np.float32:
                    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
                else:
                    off = np.abs(got.astype(int) - want.astype(int))
                    assert off.max() <= 1 and np.count_nonzero(off) <= 0.01 * off.size, (suffix, off.max())
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
    """X.json and X.init.npz belong to X.tflite: a second export beside the first leaves it usable; the same name is
    refused."""
    from tinytl_tf.ondevice import DeviceModel

    model = prepare_transfer(backbone, "tinytl-b", 3, labels=("ant", "bee", "cat"))
    export_model(model, tmp_path / "model.tflite", "adam", 1e-3, 100)
    first = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert sorted(first) == ["model.init.npz", "model.json", "model.tflite"]
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
    """The default export keeps every frozen conv kernel once, as int8: the input gradient reads the forward's
    copy (no second, flipped / transposed constant), no float copy of it exists, and the model still trains."""
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
    kernels = [v for v in model.non_trainable_weights if v.path.endswith("kernel")]
    big = [tuple(v.shape) for v in kernels if np.prod(v.shape) >= 1024]
    files = {}
    for bits in (8, 32):
        files[bits] = tmp_path / f"m{bits}.tflite"
        meta = export_model(model, files[bits], "adam", 1e-2, 100, frozen_bits=bits)
        assert meta["frozen_bits"] == bits
    subgraphs, links = tflite_model.read(files[8].read_bytes()), tflite_model.links(files[8].read_bytes())
    constants = {links.buffers[s][t]: tensor for s, sg in enumerate(subgraphs) for t, tensor in enumerate(sg.tensors)}
    constants = [t for t in constants.values() if t.buffer_bytes]
    float_shapes = {tuple(sorted(t.shape)) for t in constants if t.dtype == "float32"}
    assert not {tuple(sorted(s)) for s in big} & float_shapes  # no float copy of a big frozen kernel, in any layout
    # each big frozen kernel's bytes once: the int8 constants are exactly one byte per element
    assert sum(t.buffer_bytes for t in constants if t.dtype == "int8") == sum(int(np.prod(s)) for s in big)
    assert files[32].stat().st_size - files[8].stat().st_size >= 3 * sum(int(np.prod(s)) for s in big)

    interpreter = open_interpreter(files[8])
    x = np.random.default_rng(0).standard_normal((1, 32, 32, 3)).astype(np.float32)
    want = model(x).numpy()
    got = interpreter.get_signature_runner("infer")(x=x)["logits"]
    assert np.abs(got - want).max() <= 0.05 * np.abs(want).max()
    train = interpreter.get_signature_runner("train")
    losses = [float(train(x=x, y=np.array([2], np.int32), lr=np.float32(0))["loss"]) for _ in range(15)]
    assert losses[-1] < 0.5 * losses[0]


def test_export_command_sizes_the_schedule_and_reports_progress_on_stderr(backbone, tmp_path, capsys, caplog):
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
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # no converter noise


@pytest.mark.parametrize("optimizer", ["adam", "adam8bit"])
def test_variables_start_at_zero_and_the_initial_values_load_beside_the_model(backbone, tmp_path, optimizer):
    """No variable's initial value is a constant in the file (FILLs in the initializer); the trainables' values are
    in X.init.npz, `load` assigns them one group at a time, and its arena holds a few groups' worth at most."""
    from tinytl_tf import initial_values
    from tinytl_tf.memory.measure import static_memory

    model = prepare_transfer(backbone, "tinytl-lb", 3, dropout=0.0)
    path = tmp_path / "model.tflite"
    meta = export_model(model, path, optimizer, 1e-3, 10, frozen_bits=32)
    data = path.read_bytes()
    assert "FILL" in meta["ops"]
    assert tflite_model.fill_zero_initial_values(data, nonzero=True)[1] == 0  # no float initial value left
    assert (tmp_path / meta["initial_values"]["file"]).exists()
    bare = Interpreter(model_path=str(path)).get_signature_runner(contract.SIGNATURE_GET_WEIGHTS)(unused=np.float32(0))
    weights = open_interpreter(path).get_signature_runner(contract.SIGNATURE_GET_WEIGHTS)(unused=np.float32(0))
    keras_values = {weight_tensor_name(v.path): v.numpy() for v in model.trainable_weights}
    for w in meta["weights"]:
        if w["kind"] == "trainable":
            np.testing.assert_array_equal(weights[w["name"]], keras_values[w["name"]], err_msg=w["name"])
        else:
            assert not np.any(weights[w["name"]]), w["name"]
    assert not any(np.any(bare[n]) for n in keras_values if bare[n].size >= 256)  # unloaded: zeros
    group_bytes = 4 * meta["initial_values"]["length"]
    assert static_memory(path, contract.SIGNATURE_LOAD).peak_activation_bytes <= 4 * group_bytes
    with pytest.raises(initial_values.InitialValuesError, match="another model"):
        initial_values.read(tmp_path / meta["initial_values"]["file"], meta["initial_values"], "0" * 64)


def test_8bit_adam_state_is_two_bytes_per_parameter_plus_block_scales(backbone, tmp_path):
    """model.json's slots of an adam8bit export: an int8 code of m and of sqrt(v) per parameter, and one float32
    scale of each per block of values of each tensor; with float Adam, 8 bytes per parameter."""
    model = prepare_transfer(backbone, "tinytl-lb", 3, dropout=0.0)
    nbytes = {}
    for optimizer in ("adam", "adam8bit"):
        meta = export_model(model, tmp_path / f"{optimizer}.tflite", optimizer, 1e-3, 10)
        sizes = {w["name"]: int(np.prod(w["shape"])) for w in meta["weights"] if w["kind"] == "trainable"}
        slots = [w for w in meta["weights"] if w["kind"] == "slot"]
        nbytes[optimizer] = sum(int(np.prod(w["shape"])) * np.dtype(w["dtype"]).itemsize for w in slots)
    params, blocks = sum(sizes.values()), sum(adam8bit.num_blocks(n) for n in sizes.values())
    assert meta["optimizer"]["block_size"] == adam8bit.BLOCK
    assert {w["dtype"] for w in slots} == {"int8", "float32"}
    assert nbytes["adam"] == 8 * params
    assert nbytes["adam8bit"] == 2 * params + 2 * 4 * blocks
