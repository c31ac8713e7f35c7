"""The demo end to end on its embedded CIFAR-10 subset: TinyTL-L+B beats FT-Last by a margin that is not noise,
both models export and measure, and the LiteRT trainer continues the TinyTL-L+B model."""

import json

from tinytl_tf.data import demo_data_dir
from tinytl_tf.jobs.demo import run_demo

MARGIN = 0.04  # 12 of the 300 test images; measured here: +5.3 points (16 images), room for another CPU's rounding


def test_demo_shows_tinytl_beating_ft_last(tmp_path, capsys):
    rows = run_demo(tmp_path / "demo", verbose=0)
    last, lb = ({r["method"]: r for r in rows}[m] for m in ("ft-last", "tinytl-lb"))
    assert last["test_examples"] == lb["test_examples"] == 300
    assert lb["test_accuracy"] >= last["test_accuracy"] + MARGIN, (lb["test_accuracy"], last["test_accuracy"])
    assert 0 < last["measured_train_mb"] < lb["measured_train_mb"]
    out = capsys.readouterr().out
    assert "TinyTL-L+B - FT-Last: +" in out
    device = json.loads(out.strip().splitlines()[-1])
    assert device["device_steps"] == 1000 and 0.0 <= device["device_accuracy_after"] <= 1.0
    assert (tmp_path / "demo" / "tinytl-lb" / "device_checkpoint.npz").is_file()
    assert len(list((demo_data_dir() / "test").glob("*/*.jpg"))) == 300
