"""The backbone registry: TF-free, and the one place a backbone is added (the CLI, the memory model and the search
space take a new entry with nothing else changed)."""

import json
import subprocess
import sys

import pytest

from tinytl_tf import cli
from tinytl_tf.backbones import registry
from tinytl_tf.contract import DEFAULT_OPTIMIZER
from tinytl_tf.memory import method_table, predicted_table
from tinytl_tf.supernet import space


def test_registry_and_memory_model_import_no_tensorflow():
    code = (
        "import sys, tinytl_tf.memory, tinytl_tf.backbones.registry; "
        "sys.exit(int('tensorflow' in sys.modules or 'keras' in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.fixture
def fictional(monkeypatch):
    """A backbone that exists only as one registry entry: two MB blocks after a fixed first one, random weights."""
    from tinytl_tf.config import BlockConfig, ConvConfig, NetConfig

    cfg = NetConfig(
        name="fictional",
        resolution=48,
        stem=ConvConfig(out=8, kernel=3, stride=2),
        blocks=(BlockConfig(3, 1, 8), BlockConfig(5, 2, 16, mid=48), BlockConfig(3, 1, 16, mid=48, shortcut=True)),
        num_classes=10,
    )
    monkeypatch.setitem(
        registry.BACKBONES,
        "fictional",
        registry.Backbone("a test-only net", lambda: cfg, lambda weights_dir: (cfg, None)),
    )
    return cfg


def test_one_registry_entry_adds_a_backbone(fictional, capsys):
    assert registry.backbone_config("fictional") == fictional
    assert cli.main(["train", "--help"]) == 0
    assert "fictional" in capsys.readouterr().out
    assert cli.main(["memory", "--backbone", "fictional", "--json", "--methods", "tinytl-lb"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["backbone"], r["method"]) for r in rows] == [("fictional", "tinytl-lb")]
    (predicted,) = predicted_table("fictional", methods=["tinytl-lb"])
    assert rows == [
        {**r, "predicted_train_mb": predicted.total_mb, "optimizer": DEFAULT_OPTIMIZER}
        for r in method_table("fictional", methods=["tinytl-lb"])
    ]
    spec = space.super_spec(fictional, "fictional", (32, 48))
    assert space.memory_mb(spec, space.backbone_arch(spec)) > 0


def test_unknown_name_lists_the_registered_ones(fictional, capsys):
    assert cli.main(["memory", "--backbone", "resnet-50"]) == 2
    err = capsys.readouterr().err
    assert "resnet-50" in err and all(name in err for name in registry.BACKBONES)
