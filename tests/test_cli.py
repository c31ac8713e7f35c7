"""The front door: `train` writes model.keras + metrics.json, `evaluate` agrees, user mistakes exit 2 cleanly."""

import json

import pytest

from tinytl_tf.backbones import count_params
from tinytl_tf.cli import main
from tinytl_tf.contract import METHODS
from tinytl_tf.train import load_trained

REQUIRED = ("method", "backbone", "resolution", "epochs", "trainable_params", "total_params", "train_accuracy", "test_accuracy")


@pytest.fixture
def data_dir(image_tree):
    train = image_tree({"cat": 6, "dog": 6, "owl": 6}, root="data/train")
    image_tree({"cat": 3, "dog": 3, "owl": 3}, root="data/test", seed=1)
    return train.parent


def train_args(data, out, *extra):
    return ["train", "--data", str(data), "--backbone", "mcunet-5fps", "--method", "tinytl-lb", "--resolution", "64",
            "--epochs", "1", "--batch-size", "4", "--out", str(out), *extra]


def test_train_then_evaluate(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_args(data_dir, out)) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(REQUIRED) <= set(metrics)
    model = load_trained(out / "model.keras")
    assert (metrics["trainable_params"], metrics["total_params"]) == count_params(model)
    assert (metrics["method"], metrics["backbone"], metrics["resolution"], metrics["epochs"]) == ("tinytl-lb", "mcunet-5fps", 64, 1)
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


@pytest.mark.parametrize("extra,message", [
    (["--method", "tinytl-x"], METHODS[-1]),
    (["--backbone", "resnet-50"], "mobilenet-v1"),
    (["--resolution", "31"], "resolution"),
])
def test_bad_names_exit_2_with_the_valid_choices(data_dir, tmp_path, capsys, extra, message):
    assert main(train_args(data_dir, tmp_path / "run", *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and "Traceback" not in err
    assert not (tmp_path / "run" / "model.keras").exists()


def test_missing_data_and_model(tmp_path, capsys):
    assert main(train_args(tmp_path / "nowhere", tmp_path / "run")) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(tmp_path / "none.keras"), "--data", str(tmp_path)]) == 2
    assert "no model file" in capsys.readouterr().err
