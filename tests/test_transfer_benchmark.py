"""The accuracy study (benchmarks/transfer.py) in its quick mode: every phase in miniature on 3 classes of the
embedded subset, with a micro network registered as a backbone so the test stays fast (tracing and exporting cost
most of it). Checks the results file and curves, the learning-rate choice (made on the holdout, the test split never
read, a grid extended past its edge), the report and plots, that a re-run trains nothing and that an interrupted run
resumes from its last finished epoch."""

import dataclasses
import json
import math
from pathlib import Path

import pytest
from PIL import Image

from benchmarks import transfer as bench
from tinytl_tf.config import BlockConfig, ConvConfig, NetConfig

pytestmark = pytest.mark.slow  # runs the accuracy study in miniature

ROOT = Path(__file__).resolve().parents[1]
QUICK_GRID = {"ft-last": (1e-2, 3e-2), "tinytl-lb": (3e-3,)}
HOLDOUT_PER_RUN = 3 * 2  # 3 classes, 20% of 10 training images each
TEST_PER_RUN = 3 * 4
CURVE_PER_RUN = 3 * 2
EPOCHS = 2


def tiny_backbone(monkeypatch):
    """Registers "tiny": a stem and two MB blocks (the second gets a lite residual), random weights."""
    from tinytl_tf import backbones

    cfg = NetConfig(
        name="tiny",
        resolution=64,
        stem=ConvConfig(out=8, kernel=3, stride=2),
        blocks=(BlockConfig(3, 1, 8), BlockConfig(3, 2, 16, mid=16)),
        num_classes=3,
    )
    monkeypatch.setitem(
        backbones.BACKBONES,
        "tiny",
        backbones.Backbone("micro test net, random weights", lambda: cfg, lambda d: (cfg, None)),
    )


def guard_test_split(monkeypatch, test_reads, holdout_loads):
    """Loads with a holdout (the lr phase) get a test split that records being read and fails."""
    import tensorflow as tf

    from tinytl_tf import data

    real = data.load_image_folder

    def load(*args, holdout_fraction=None, **kwargs):
        images = real(*args, holdout_fraction=holdout_fraction, **kwargs)
        if holdout_fraction is None:
            return images
        holdout_loads.append(images.num_holdout)

        def read():
            test_reads.append(1)
            raise AssertionError("the lr phase read the test split")
            yield

        spec = images.test.element_spec
        return dataclasses.replace(images, test=tf.data.Dataset.from_generator(read, output_signature=spec))

    monkeypatch.setattr(data, "load_image_folder", load)


def test_quick_mode(tmp_path, monkeypatch):
    """One quick run checked from every side (a single test, so `pytest -n 2` does not run it once per worker)."""
    out = tmp_path / "out"
    argv = ["--quick", "--out", str(out), "--backbone", "tiny"]
    test_reads, holdout_loads = [], []
    tiny_backbone(monkeypatch)
    with pytest.MonkeyPatch.context() as mp:
        guard_test_split(mp, test_reads, holdout_loads)
        assert bench.main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    quick = {
        "out": out,
        "argv": argv,
        "results": results,
        "runs": results["runs"],
        "test_reads": test_reads,
        "holdout_loads": holdout_loads,
    }
    check_every_run_is_recorded_with_finite_numbers(quick)
    check_learning_rate_is_chosen_on_the_holdout_only(quick)
    check_report_lists_every_run_with_its_command_and_time(quick)
    check_plots_are_valid_images(quick)
    check_report_shows_missing_runs_as_missing(quick, tmp_path)
    check_memory_of_another_engine_is_stale(quick, tmp_path)
    check_rerun_skips_finished_runs(quick, monkeypatch)
    check_interrupted_run_resumes_from_its_last_epoch(quick, monkeypatch)


def trials(runs, method):
    return {
        r["lr"]: r["metrics"]["holdout_accuracy"] for r in runs.values() if r["phase"] == "lr" and r["method"] == method
    }


def best_lr(runs, method):
    scores = trials(runs, method)
    return max(scores, key=lambda lr: (scores[lr], -lr))


def expected_keys(runs):
    lr_last, lr_lb = best_lr(runs, "ft-last"), best_lr(runs, "tinytl-lb")
    d, tail = "caltech10-quick/tiny", "48px/b8"
    keys = {f"lr/{d}/{m}/{tail}/s0/lr{lr:g}/e1" for m in QUICK_GRID for lr in trials(runs, m)}
    keys |= {
        f"main/{d}/{m}/{tail}/s{s}/lr{lr:g}/e{EPOCHS}"
        for m, lr in (("ft-last", lr_last), ("tinytl-lb", lr_lb))
        for s in (0, 1)
    }
    keys |= {f"memory/{d}/{m}/48px/b1/s0/lr-/e0" for m in QUICK_GRID}
    keys |= {f"{phase}/{d}/tinytl-lb/48px/b1/s0/lr{lr_lb / 8:g}/e{EPOCHS}" for phase in ("batch", "device")}
    keys.add(f"adam8bit/{d}/tinytl-lb/{tail}/s0/lr{lr_lb:g}/e{EPOCHS}")
    return keys


def check_every_run_is_recorded_with_finite_numbers(quick):
    runs = quick["runs"]
    assert set(runs) == expected_keys(runs)
    assert quick["results"]["failed"] == {}
    for key, r in runs.items():
        m = r["metrics"]
        accuracy = m.get("holdout_accuracy", m.get("test_accuracy"))
        if r["phase"] == "memory":
            assert accuracy is None
            for name in ("measured_train_mb", "measured_infer_mb", "static_peak_mb", "tflite_mb"):
                assert math.isfinite(m[name]) and m[name] > 0, (key, name)
        else:
            assert 0.0 <= accuracy <= 1.0 and m["reproducibility"]["seed"] == r["seed"], key
        if r["phase"] in ("lr", "main", "batch", "adam8bit"):
            assert m["optimizer"] == ("adam8bit" if r["phase"] == "adam8bit" else "adam"), key
            assert len(m["curve"]) == r["epochs"] and all(0 <= a <= 1 for a in m["curve"]), key
            assert m["resumed_at_epoch"] == 0, key
        assert r["seconds"] > 0 and r["command"].startswith("python -m benchmarks.transfer --quick"), key
    device = next(r for r in runs.values() if r["phase"] == "device")["metrics"]
    assert device["steps"] == 30 * EPOCHS and device["test_examples"] == TEST_PER_RUN  # 3 classes x 10 images


def check_learning_rate_is_chosen_on_the_holdout_only(quick):
    runs = quick["runs"]
    lr_runs = [r for r in runs.values() if r["phase"] == "lr"]
    for method, grid in QUICK_GRID.items():
        tried = sorted(trials(runs, method))
        assert set(grid) <= set(tried)
        if len(grid) > 1:  # a grid is extended past an edge until its best value is inside it (or 3 times)
            best = best_lr(runs, method)
            assert tried[0] < best < tried[-1] or len(tried) == len(grid) + bench.LR_EXTENSIONS
    for r in lr_runs:
        assert r["metrics"]["holdout_examples"] == HOLDOUT_PER_RUN
        assert "test_accuracy" not in r["metrics"]
        assert r["metrics"]["holdout_accuracy"] == r["metrics"]["curve"][-1]
    assert quick["test_reads"] == [] and quick["holdout_loads"] == [HOLDOUT_PER_RUN] * len(lr_runs)
    for r in runs.values():
        if r["phase"] == "main":
            assert r["lr"] == best_lr(runs, r["method"])
            assert (r["metrics"]["test_examples"], r["metrics"]["curve_examples"]) == (TEST_PER_RUN, CURVE_PER_RUN)


def check_report_lists_every_run_with_its_command_and_time(quick):
    text = (quick["out"] / "RESULTS.md").read_text()
    lines = text.splitlines()
    for key, r in quick["runs"].items():
        row = [line for line in lines if f"`{key}`" in line]
        assert len(row) == 1 and f"| {r['seconds']} |" in row[0] and f"`{r['command']}`" in row[0], key
    lb = [
        r["metrics"]["test_accuracy"]
        for r in quick["runs"].values()
        if r["phase"] == "main" and r["method"] == "tinytl-lb"
    ]
    assert f"{100 * sum(lb) / 2:.1f} ({100 * min(lb):.1f}-{100 * max(lb):.1f}, 2 seeds)" in text
    assert "Hardware: " in text and "| missing" not in text.split("## Runs")[0]
    assert "TinyTL-L+B - ft-last = " in text.split("## What this shows")[1]
    eight = next(r for r in quick["runs"].values() if r["phase"] == "adam8bit")["metrics"]["test_accuracy"]
    gap = 100 * (eight - sum(lb) / 2)
    assert f"Adam, 8-bit moments (seed 0) | {100 * eight:.1f} |" in text
    assert f"8-bit minus float Adam (mean of 2 seeds): {gap:+.1f} points." in text


def check_plots_are_valid_images(quick):
    with Image.open(quick["out"] / "curves_caltech10-quick.png") as im:
        im.verify()
        assert im.format == "PNG" and im.size[0] >= 400 and im.size[1] >= 300


def check_rerun_skips_finished_runs(quick, monkeypatch):
    import keras

    from tinytl_tf import export

    def never(*args, **kwargs):
        raise AssertionError("a finished run was trained or exported again")

    with monkeypatch.context() as mp:
        mp.setattr(keras.Model, "fit", never)
        mp.setattr(export, "export_model", never)
        assert bench.main(quick["argv"]) == 0
    assert json.loads((quick["out"] / "results.json").read_text()) == quick["results"]


def check_report_shows_missing_runs_as_missing(quick, tmp_path):
    results = json.loads((quick["out"] / "results.json").read_text())
    dropped = [k for k, r in results["runs"].items() if r["phase"] == "main" and r["method"] == "ft-last"]
    for key in dropped:
        del results["runs"][key]
    out = tmp_path / "partial"
    out.mkdir()
    (out / "results.json").write_text(json.dumps(results))
    assert bench.main(["--quick", "--report", "--out", str(out), "--backbone", "tiny"]) == 0
    text = (out / "RESULTS.md").read_text()
    assert "| ft-last | " in text and "| missing |" in text.split("## Runs")[0]
    assert not any(f"`{key}`" in text for key in dropped)


def check_memory_of_another_engine_is_stale(quick, tmp_path):
    """A memory record measured on other engine code is neither shown nor counted as done."""
    results = json.loads((quick["out"] / "results.json").read_text())
    memory = {k: r for k, r in results["runs"].items() if r["phase"] == "memory"}
    assert memory and all(bench.current(r) for r in memory.values())
    key, record = next((k, r) for k, r in memory.items() if r["method"] == "tinytl-lb")
    measured = f"{record['metrics']['measured_train_mb']:.2f}"
    section = (quick["out"] / "RESULTS.md").read_text().split("## Runs")[0]
    assert f"| {measured} |" in [row for row in section.splitlines() if row.startswith("| tinytl-lb |")][0]
    record["metrics"]["engine"] = "an-older-engine"
    assert not bench.current(record)
    out = tmp_path / "stale"
    out.mkdir()
    (out / "results.json").write_text(json.dumps(results))
    assert bench.main(["--quick", "--report", "--out", str(out), "--backbone", "tiny"]) == 0
    section = (out / "RESULTS.md").read_text().split("## Runs")[0]
    row = [row for row in section.splitlines() if row.startswith("| tinytl-lb |")][0]  # the data set's table
    assert f"| {measured} |" not in row and "| missing |" in row


class Interrupted(Exception):
    pass


def check_interrupted_run_resumes_from_its_last_epoch(quick, monkeypatch):
    """A run stopped after its first epoch's backup continues from epoch 2, with the curve of both epochs."""
    import keras

    results = json.loads((quick["out"] / "results.json").read_text())
    key = next(k for k, r in results["runs"].items() if r["phase"] == "main" and r["method"] == "tinytl-lb")
    del results["runs"][key]
    (quick["out"] / "results.json").write_text(json.dumps(results))
    real = keras.callbacks.BackupAndRestore

    class StopAfterFirstBackup(real):
        def on_epoch_end(self, epoch, logs=None):
            super().on_epoch_end(epoch, logs)
            raise Interrupted

    with monkeypatch.context() as mp:
        mp.setattr(keras.callbacks, "BackupAndRestore", StopAfterFirstBackup)
        with pytest.raises(Interrupted):
            bench.main(quick["argv"] + ["--only", "main"])
    state = list((quick["out"] / "work" / "state").iterdir())
    assert len(state) == 1 and (state[0] / "curve.json").is_file()
    assert bench.main(quick["argv"] + ["--only", "main"]) == 0
    run = json.loads((quick["out"] / "results.json").read_text())["runs"][key]
    assert run["metrics"]["resumed_at_epoch"] == 1 and len(run["metrics"]["curve"]) == EPOCHS
    assert not state[0].exists()


@pytest.mark.parametrize("case", ["no data", "no data root", "corrupt results", "quick without out"])
def test_mistakes_exit_2_without_traceback(case, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TINYTL_ASSETS", raising=False)
    out = tmp_path / "out"
    argv = {
        "no data": ["--data-root", str(tmp_path / "nowhere"), "--out", str(out), "--work", str(tmp_path / "w")],
        "no data root": ["--out", str(out), "--work", str(tmp_path / "w")],
        "corrupt results": ["--report", "--out", str(out)],
        "quick without out": ["--quick"],
    }[case]
    if case == "corrupt results":
        out.mkdir()
        (out / "results.json").write_text("{not json")
    assert bench.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert {
        "no data": "nowhere",
        "no data root": "--data-root",
        "corrupt results": "results.json",
        "quick without out": "--out",
    }[case] in err
    if case == "no data":
        assert not out.exists()


def test_records_keep_no_machine_paths(tmp_path):
    argv = [
        "--data-root",
        str(tmp_path / "data"),
        f"--out={ROOT / 'docs' / 'results'}",
        "--only",
        "lr",
        "--work",
        "runs/x",
    ]
    assert (
        bench.portable_command("python benchmarks/transfer.py", argv)
        == "python benchmarks/transfer.py --data-root data --out=docs/results --only lr --work runs/x"
    )


def test_next_rate_walks_the_one_three_ten_sequence():
    assert [bench.next_rate(1e-2, True), bench.next_rate(1e-2, False)] == [3e-2, 3e-3]
    assert [bench.next_rate(3e-5, True), bench.next_rate(3e-5, False)] == [1e-4, 1e-5]
