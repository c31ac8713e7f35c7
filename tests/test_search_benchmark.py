"""The search study (benchmarks/search.py): its budgets, its report, and its quick mode end to end on the embedded
caltech10 with a micro MB backbone registered as the only pretrained one (tracing and exporting cost most of it)."""

import json
from pathlib import Path

import pytest

import benchmarks.search as bench
from tinytl_tf.config import BlockConfig, ConvConfig, NetConfig

ROOT = Path(__file__).resolve().parents[1]


def test_budgets_are_the_reference_networks_predicted_memory_and_60_percent():
    from tinytl_tf.backbones import backbone_config
    from tinytl_tf.methods import method_config
    from tinytl_tf.supernet.space import predicted_memory_mb

    budgets = bench.budgets_mb([f"c{i}" for i in range(10)])
    reference = predicted_memory_mb(method_config(backbone_config("mcunet-5fps"), "tinytl-lb", 10, resolution=128))
    assert budgets["B1"] - 0.001 < reference <= budgets["B1"]  # the reference fits its own budget
    assert budgets["B2"] - 0.001 < 0.6 * reference <= budgets["B2"]
    assert bench.budgets_mb([f"c{i}" for i in range(102)])["B1"] > budgets["B1"]  # a larger head


def _search_record(budget, baseline_resolution, chosen="search"):
    config = {
        "backbone": "mbv2-w0.35",
        "resolution": 112,
        "depths": [1, 2, 3],
        "kernels": [3] * 6,
        "expands": [6] * 6,
        "lites": [1, 0, 1, 1, 0, 1],
        "lite_groups": [2] * 6,
        "lite_kernels": [5] * 6,
    }
    ranker = {"spearman": 0.5, "kendall": 0.4, "pairs": 20}
    finalist = {
        "config": config,
        "predicted_accuracy": 0.6,
        "supernet_holdout_accuracy": 0.055,
        "holdout_accuracy": 0.70,
        "predicted_memory_mb": budget - 0.1,
    }
    return {
        "config": config,
        "holdout_accuracy": 0.70,
        "chosen": chosen,
        "candidate": finalist,
        "finalists": [finalist],
        "holdout_lead": None if baseline_resolution is None else 0.04,
        "holdout_lead_error": None if baseline_resolution is None else (0.015 if chosen == "search" else 0.025),
        "budget_mb": budget,
        "predicted_memory_mb": budget - 0.1,
        "measured": {"measured_train_mb": 9.87},
        "baseline": {"config": None, "note": "none"}
        if baseline_resolution is None
        else {
            "config": {},
            "backbone": "mcunet-5fps",
            "method": "tinytl-lb",
            "resolution": baseline_resolution,
            "predicted_memory_mb": 4.5,
            "predicted_accuracy": 0.62,
            "supernet_holdout_accuracy": 0.048,
            "holdout_accuracy": 0.66,
        },
        "objective": "predicted_memory",
        "predictor": {
            "train_pairs": 80,
            "test_pairs": 20,
            "rankers": {"predictor": ranker, "predicted_memory": {**ranker, "spearman": 0.7}, "resolution": ranker},
        },
        "phase_seconds": {"supernet/mbv2-w0.35": 60.0, "evolution": 6.0},
        **CONTEXT,
    }


CONTEXT = {"command": "python benchmarks/search.py --data-root data", "commit": "abc123", "hardware": "a CPU"}


def test_report_shows_recorded_numbers_and_dashes_for_the_rest(tmp_path):
    records = bench.Records(tmp_path / "results.json")
    records.add("search/cifar10/B1", _search_record(5.2, 128))
    records.add("train/cifar10/B1/searched", {"test_accuracy": 0.801, **CONTEXT})
    records.add("train/cifar10/B1/baseline", {"test_accuracy": 0.783, **CONTEXT})
    records.add("memory/cifar10/B1/baseline", {"measured_train_mb": 10.81, **CONTEXT})
    records.add("search/cifar10/B2", _search_record(3.1, None))
    records.add("search/cars/B1", _search_record(12.0, 128))
    records.add("train/cars/B1/searched", {"test_accuracy": 0.70, **CONTEXT})
    records.add("train/cars/B1/baseline", {"test_accuracy": 0.75, **CONTEXT})
    records.add("search/cars/B2", _search_record(7.2, 112, chosen="baseline"))
    records.add("train/cars/B2/baseline", {"test_accuracy": 0.72, **CONTEXT})
    records.add("train/cars/B2/searched", {"test_accuracy": 0.72, "kept": True, **CONTEXT})
    records.add("search/caltech101/B1", {**_search_record(9.0, 128, chosen="baseline"), "holdout_lead": -0.052})
    doc = bench.report(bench.Records(tmp_path / "results.json"), bench.Plan(), tmp_path / "SEARCH.md")
    text = doc.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| cifar10 | B1"))
    assert "mcunet-5fps TinyTL-L+B 128 px | 78.3 | 4.50 / 10.81" in row and "80.1 | 5.10 / 9.87 | +1.8 |" in row
    assert "mbv2-w0.35 112 px, depths 1-2-3, 4/6 lite branches" in row
    b2 = next(line for line in text.splitlines() if line.startswith("| cifar10 | B2"))
    assert "fits at no resolution" in b2 and b2.endswith("| — |")
    assert "| caltech101 | B2 | — |" in text  # not run: no number
    cars_b2 = next(line for line in text.splitlines() if line.startswith("| cars | B2"))
    assert "| kept the baseline | 72.0 |" in cars_b2 and cars_b2.endswith("| +0.0 |")
    findings = [line for line in text.splitlines() if line.startswith("- ")]
    assert findings[0] == (
        "- cifar10 B1: the searched sub-net measured 9.87 MB, over the 5.20 MB budget; it reaches the fixed "
        "baseline's test top-1 (+1.8 points after the full fine-tune), where the search's confirm fine-tune had it "
        "+4.0 points on the held-out images. Over these 2 networks the predicted accuracy and the confirm "
        "fine-tune's held-out accuracy have Spearman -1.00."
    )
    assert findings[1].endswith("over the 3.10 MB budget; no fixed baseline fits this budget.")
    assert findings[2].startswith("- cars B1: the searched sub-net measured 9.87 MB, within the 12.00 MB budget")
    assert "does not reach the fixed baseline's test top-1 (-5.0 points" in findings[2]
    assert "the short fine-tune's ranking did not carry over to the full one." in findings[2]
    assert findings[3] == (
        "- cars B2: the search's result, the baseline, measured 9.87 MB, over the 7.20 MB budget; the search kept "
        "it: its best finalist (mbv2-w0.35 112 px, depths 1-2-3, 4/6 lite branches) led it by 4.0 points on "
        "the held-out images after the confirm fine-tune, under two standard errors of the paired difference (5.0), "
        "so no gain over the baseline is shown. Over these 2 networks the predicted accuracy and the confirm "
        "fine-tune's held-out accuracy have Spearman -1.00."
    )
    assert (
        "best finalist (mbv2-w0.35 112 px, depths 1-2-3, 4/6 lite branches) trailed it by 5.2 points on the "
        "held-out images after the confirm fine-tune, so no gain over the baseline is shown." in findings[4]
    )
    # every finalist and the baseline with the super-net's and the confirm fine-tune's held-out accuracy, best first
    finalists = [line for line in text.splitlines() if line.startswith("| cars | B2 |")]
    assert finalists == [
        "| cars | B2 | mbv2-w0.35 112 px, depths 1-2-3, 4/6 lite branches | 60.0 | 5.5 | 70.0 | 7.10 |",
        "| cars | B2 | baseline (TinyTL-L+B 112 px) | 62.0 | 4.8 | 66.0 | 4.50 |",
    ]
    assert "| cifar10 | 80/20 | 0.50 / 0.40 | 0.70 / 0.40 | 0.50 / 0.40 | predicted_memory |" in text
    # wall time: the first budget every phase, the second only its own (the shared ones were copied)
    assert "- cifar10 B1: supernet/mbv2-w0.35 60, evolution 6 (total 1.1 min)" in text
    assert "- cifar10 B2: evolution 6 (total 0.1 min)" in text
    assert "python benchmarks/search.py --data-root data" in text and str(tmp_path) not in text


def test_quick_without_out_exits_2(capsys):
    assert bench.main(["--quick"]) == 2
    assert "pass --out DIR" in capsys.readouterr().err


TINY = NetConfig(
    name="tiny-mb",
    resolution=48,
    stem=ConvConfig(out=8, kernel=3, stride=2),
    blocks=(
        BlockConfig(3, 1, 8),
        BlockConfig(5, 2, 16, mid=48),
        BlockConfig(3, 1, 16, mid=48, shortcut=True),
        BlockConfig(3, 2, 24, mid=48),
    ),
    feature_mix=ConvConfig(out=32),
    num_classes=1000,
)


@pytest.mark.slow
def test_quick_mode_records_every_step_and_resumes(tmp_path, monkeypatch):
    import keras

    from tinytl_tf import backbones
    from tinytl_tf.jobs import search

    keras.utils.set_random_seed(0)
    arrays = {v.path: v.numpy() for v in backbones.build_model(TINY).weights}
    entry = backbones.Backbone("micro test net", lambda: TINY, lambda d: (TINY, arrays))
    monkeypatch.setitem(backbones.BACKBONES, "tiny-mb", entry)
    monkeypatch.setattr(search, "default_backbones", lambda weights_dir=None: ["tiny-mb"])
    monkeypatch.setattr(bench, "BUDGET_NETWORK", ("tiny-mb", 48))
    # the micro net's predicted memory is mostly the runtime's fixed part, so 60% of it admits no sub-net (the
    # search refuses such a budget); its second budget here is 90%
    monkeypatch.setattr(bench, "BUDGETS", (("B1", 1.0), ("B2", 0.9)))
    small = bench.QUICK_PLAN.__class__(**{**bench.QUICK_PLAN.__dict__, "resolutions": (40, 48), "search_epochs": 1})
    monkeypatch.setattr(bench, "QUICK_PLAN", small)
    out = tmp_path / "quick"
    assert bench.main(["--quick", "--out", str(out)]) == 0
    results = (out / "results.json").read_text()
    runs = json.loads(results)["runs"]
    for budget in ("B1", "B2"):
        s = runs[f"search/caltech10/{budget}"]
        assert s["predicted_memory_mb"] <= s["budget_mb"] and s["measured"]["measured_train_mb"] > 0
        assert 0 <= runs[f"train/caltech10/{budget}/searched"]["test_accuracy"] <= 1
        assert not Path(s["subnet_file"]).is_absolute()
    # B1 is the reference's own memory: the fixed baseline fits at its resolution and is trained and measured
    assert runs["search/caltech10/B1"]["baseline"]["resolution"] == 48
    assert runs["search/caltech10/B1"]["baseline"]["method"] == "tinytl-lb"
    assert runs["train/caltech10/B1/baseline"]["resolution"] == 48
    assert runs["memory/caltech10/B1/baseline"]["measured_train_mb"] > 0
    assert runs["search/caltech10/B2"]["budget_mb"] == pytest.approx(
        0.9 * runs["search/caltech10/B1"]["budget_mb"], 1e-3
    )
    # the second budget reused the first one's super-net
    assert (out / "work" / "search" / "caltech10" / "B2" / "tiny-mb").is_symlink()
    assert set(runs["search/caltech10/B2"]["phase_seconds"]) == set(runs["search/caltech10/B1"]["phase_seconds"])
    doc = (out / "SEARCH.md").read_text()
    assert "| caltech10 | B1" in doc and "(no runs recorded)" not in doc
    for text in (doc, results):
        assert str(tmp_path) not in text and str(ROOT) not in text  # no absolute path of the run or checkout
    # a second run finds every step recorded and computes nothing
    assert bench.main(["--quick", "--out", str(out)]) == 0
    assert (out / "results.json").read_text() == results
