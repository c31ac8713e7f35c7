"""The front door: `train` writes model.keras + metrics.json, `evaluate` agrees, user mistakes exit 2 cleanly."""

import hashlib
import json
import os
import stat

import keras
import pytest

from tinytl_tf.backbones import count_params
from tinytl_tf.cli import main
from tinytl_tf.contract import METHODS
from tinytl_tf.methods import DEFAULT_LR
from tinytl_tf.train import load_trained

pytestmark = pytest.mark.slow  # trains and evaluates through the CLI

REQUIRED = (
    "method",
    "backbone",
    "resolution",
    "epochs",
    "trainable_params",
    "total_params",
    "train_accuracy",
    "test_accuracy",
)


@pytest.fixture
def data_dir(image_tree):
    train = image_tree({"cat": 6, "dog": 6, "owl": 6}, root="data/train")
    image_tree({"cat": 3, "dog": 3, "owl": 3}, root="data/test", seed=1)
    return train.parent


def train_args(data, out, *extra):
    return [
        "train",
        "--data",
        str(data),
        "--backbone",
        "mcunet-5fps",
        "--method",
        "tinytl-lb",
        "--resolution",
        "64",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--out",
        str(out),
        *extra,
    ]


def test_train_then_evaluate(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_args(data_dir, out)) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(REQUIRED) <= set(metrics)
    model = load_trained(out / "model.keras")
    assert (metrics["trainable_params"], metrics["total_params"]) == count_params(model)
    assert (metrics["method"], metrics["backbone"], metrics["resolution"], metrics["epochs"]) == (
        "tinytl-lb",
        "mcunet-5fps",
        64,
        1,
    )
    assert model.net_config.labels == ("cat", "dog", "owl") and metrics["test_examples"] == 9
    capsys.readouterr()

    assert main(["evaluate", "--model", str(out / "model.keras"), "--data", str(data_dir)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["examples"] == 9
    assert result["accuracy"] == pytest.approx(metrics["test_accuracy"])  # same test split, same preprocessing

    before = (out / "model.keras").read_bytes()
    assert main(train_args(data_dir, out)) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "model.keras").read_bytes() == before


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--method", "tinytl-x"], METHODS[-1]),
        (["--backbone", "resnet-50"], "mobilenet-v1"),
        (["--resolution", "31"], "resolution"),
        (["--optimizer", "adam16"], "adam8bit"),
    ],
)
def test_bad_names_exit_2_with_the_valid_choices(data_dir, tmp_path, capsys, extra, message):
    assert main(train_args(data_dir, tmp_path / "run", *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and "Traceback" not in err
    assert not (tmp_path / "run" / "model.keras").exists()


def test_train_with_8bit_adam_records_it_and_trains_int8_moments(data_dir, tmp_path):
    out = tmp_path / "run8"
    assert main(train_args(data_dir, out, "--optimizer", "adam8bit")) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["optimizer"] == "adam8bit"
    saved = keras.saving.load_model(out / "model.keras")  # with its optimizer: the int8 state is saved too
    codes = [v for v in saved.optimizer.variables if v.dtype == "int8"]
    assert type(saved.optimizer).__name__ == "Adam8bit" and len(codes) == 2 * len(saved.trainable_weights)
    assert any(v.numpy().any() for v in codes)


def test_missing_data_and_model(tmp_path, capsys):
    assert main(train_args(tmp_path / "nowhere", tmp_path / "run")) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(tmp_path / "none.keras"), "--data", str(tmp_path)]) == 2
    assert "no model file" in capsys.readouterr().err


def test_flat_folder_split_is_recorded_and_evaluate_scores_the_held_out_part(image_tree, tmp_path, capsys):
    flat, out = image_tree({"cat": 5, "dog": 5}, root="flat"), tmp_path / "run"
    (out / "model.tflite").parent.mkdir()
    old_umask = os.umask(0o027)
    try:
        assert (
            main(
                [
                    "train",
                    "--data",
                    str(flat),
                    "--method",
                    "ft-last",
                    "--resolution",
                    "64",
                    "--epochs",
                    "2",
                    "--batch-size",
                    "4",
                    "--val-fraction",
                    "0.4",
                    "--out",
                    str(out),
                ]
            )
            == 0
        )
    finally:
        os.umask(old_umask)
    captured = capsys.readouterr()
    metrics = json.loads(captured.out)  # stdout is exactly the result; Keras' progress went to stderr
    assert "Epoch 1/2" in captured.err
    assert metrics["lr"] == DEFAULT_LR["ft-last"] and len(metrics["history"]["loss"]) == 2
    assert len(metrics["history"]["accuracy"]) == 2 and metrics["test_examples"] == 4
    assert (out / "training_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert stat.S_IMODE((out / "model.keras").stat().st_mode) == 0o640  # the umask's mode, not mkstemp's 0600
    held_out = json.loads((out / "split.json").read_text())["test"]
    assert len(held_out) == 4 and all((flat / p).is_file() for p in held_out)

    assert main(["evaluate", "--model", str(out / "model.keras"), "--data", str(flat)]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert "scoring the 4 images train held out" in captured.err
    assert result["examples"] == 4 and result["held_out_only"]
    assert result["accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert main(["evaluate", "--model", str(out / "model.keras"), "--data", str(flat), "--all-images"]) == 0
    assert json.loads(capsys.readouterr().out)["examples"] == 10

    # a run stopped after its model.keras but before its split.json: the old split names another model's hash
    assert metrics["model_sha256"] == hashlib.sha256((out / "model.keras").read_bytes()).hexdigest()
    good = (out / "model.keras").read_bytes()
    (out / "model.keras").write_bytes(good + b"\0")
    assert main(["evaluate", "--model", str(out / "model.keras"), "--data", str(flat)]) == 2
    assert "belongs to another model" in capsys.readouterr().err
    (out / "model.keras").write_bytes(good)

    # --overwrite: the old model's export goes with it, a killed save's temp file is cleaned up
    (out / "model.tflite").write_bytes(b"exported from the old model")
    (out / "model.json").write_text("{}")
    (out / ".model.keras.abc123.keras").write_bytes(b"half a model")
    assert (
        main(
            [
                "train",
                "--data",
                str(flat),
                "--method",
                "ft-last",
                "--resolution",
                "64",
                "--epochs",
                "1",
                "--batch-size",
                "4",
                "--out",
                str(out),
                "--overwrite",
                "--lr",
                "0.05",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert not (out / "model.tflite").exists() and not (out / "model.json").exists()
    assert not (out / ".model.keras.abc123.keras").exists() and "interrupted save" in err
    assert json.loads((out / "metrics.json").read_text())["lr"] == 0.05


def test_every_commands_help_renders_without_format_escapes(capsys):
    """`--help` of each command prints its description and options as a user reads them: no '%%' escapes left
    (argparse formats option help with %, but not a description)."""
    import argparse

    from tinytl_tf import cli

    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert {"train", "search", "memory", "export"} <= set(commands)
    for name, sub in commands.items():
        text = sub.format_help()
        assert "%%" not in text and "%(" not in text, name
