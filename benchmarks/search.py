"""Feature-extractor adaptation against the fixed backbone at the same memory budget: the study behind docs/SEARCH.md.

    python -m benchmarks.search --data-root DIR [--datasets NAME ...] [--work runs/search-study]
    python -m benchmarks.search --report                   # regenerate docs/SEARCH.md from docs/search/results.json
    python -m benchmarks.search --quick --out DIR          # the whole study in miniature on the embedded caltech10

The data sets are cut as the accuracy study cuts them (benchmarks/transfer.py; DIR holds the same archives):
CIFAR-10's first 500 training images per class and its full test split, Stanford Cars' fixed 80/20 split of the
official training half, Caltech-101's official split. Per data set, two budgets: B1, the predicted train-step memory
(`tinytl_tf.supernet.space.predicted_memory_mb`: batch 1, the export's optimizer) of mcunet-5fps with TinyTL-L+B
at 128 px for the data set's classes, and B2 = 60% of B1. Per data set and budget:
  search   `search` over every backbone with pretrained MB weights at 96-160 px (5 super-net epochs, 500 pairs,
           population 100 x 100 generations per backbone, 3-epoch confirm fine-tunes of the finalists and the
           baseline); the super-nets, pairs and predictor are shared by the two budgets of a data set, the
           evolutions, the confirm phase and the result's LiteRT measurement are per budget
  train    the searched sub-net and the fixed baseline (mcunet-5fps with TinyTL-L+B at the largest searched
           resolution within the budget, else with TinyTL-B; none when neither fits) fine-tuned on the whole
           training split with the same epochs (20), batch (8) and learning-rate rule (train's default for the
           method: 1e-3 for TinyTL-L+B and TinyTL-B alike), both from the pretrained weights; test top-1. Where
           the search kept the baseline (its best finalist did not lead by two paired standard errors on the
           held-out images after the confirm fine-tune), the searched row is the baseline's run
  memory   the fixed baseline exported and its LiteRT train step measured at batch 1 (the searched sub-net's is
           the search's own measurement of the same architecture)

The compute plan (2 CPU cores shared with a training study, so about one core: process CPU time was 80-100% of
wall time), from rates measured on Caltech-101 (4,628 + 1,156 held-out images; one super-net epoch and 20 pairs
per backbone, extrapolated): super-net fine-tuning ~54 ms per training image and epoch for the three backbones
together at 96-160 px (16, 20 and 18 ms) after ~1 min of calibration and tracing per backbone; measuring a sub-net
~2.9 ms per held-out image (`SubnetEvaluator`; 4.9 ms through Keras `evaluate`); the predictor ~40 s, evolution
~10 s, the winner's export and LiteRT measurement ~50 s; TinyTL-L+B training ~60 images/s at 128 px, so the
confirm phase (up to 4 networks x 3 epochs of the 80%, per budget) ~4 x 3 x 80% of the training images / 50 per s:
  CIFAR-10 (4,000 + 1,000 held-out images): super-nets ~22 min, 500 pairs ~25 min, confirm ~16 min and the rest
    ~2 min per budget; training 2 models x 2 budgets x 20 epochs ~1.9 h.                                (~3.2 h)
  Stanford Cars (~5,200 + 1,300): ~27 + 32 + 2 x (21 + 2) min; training ~2.4 h.                         (~3.9 h)
  Caltech-101 (4,628 + 1,156): ~24 + 28 + 2 x (19 + 2) min; training ~2.3 h.                            (~3.6 h)
With one core to itself the Caltech-101 search is then ~75 minutes of wall time; with both, its phases before the
confirm took 28 min (the earlier comparison on the fine-tuned super-net) and the confirm phase is the lever
(--confirm-epochs), then the pairs and the super-net epochs. Measured on CIFAR-10 with the 2 cores to itself: each
20-epoch training 16-18 min.

Every step is keyed (`search/<data>/<budget>`, `train/<data>/<budget>/<model>`, `memory/...`) and recorded in
OUT/results.json atomically as soon as it finishes; running the script again skips finished steps, and an
interrupted search resumes inside its own folder under WORK. The report is regenerated after every step and by
--report; a step that is not in the JSON shows as not run, never as a number. No absolute path is recorded.
"""

import argparse
import dataclasses
import functools
import json
import math
import os
import sys
import time
from pathlib import Path

import benchmarks.transfer as study
from tinytl_tf.atomic import atomic_write
from tinytl_tf.supernet.space import METHOD_LABELS

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = "python -m benchmarks.search"
FORMAT = "tinytl_tf/search-results-v1"
DEFAULT_OUT = ROOT / "docs" / "search"
DEFAULT_DOC = ROOT / "docs" / "SEARCH.md"
DEFAULT_WORK = ROOT / "runs" / "search-study"
BUDGET_NETWORK = ("mcunet-5fps", 128)  # the network whose predicted memory sets the budgets: backbone, resolution
BUDGETS = (("B1", 1.0), ("B2", 0.6))  # name, fraction of the reference's predicted memory
QUICK_NAME = "caltech10"
VERDICT = ("chosen", "candidate", "finalists", "baseline", "holdout_lead", "holdout_lead_error")  # subnet.json's


@dataclasses.dataclass(frozen=True)
class Plan:
    datasets: tuple = tuple(study.DATASETS)
    resolutions: tuple = (96, 112, 128, 144, 160)
    search_epochs: int = 5
    search_lr: float = 3e-3
    pairs: int = 500
    population: int = 100
    generations: int = 100
    predictor_epochs: int = 200
    confirm_epochs: int = 3
    epochs: int = 20
    batch_size: int = 8
    lr: float | None = None  # None: train's default for each model's method
    quick: bool = False


QUICK_PLAN = Plan(
    datasets=(QUICK_NAME,),
    resolutions=(64, 96),
    search_epochs=2,
    pairs=30,
    population=12,
    generations=5,
    predictor_epochs=50,
    confirm_epochs=1,
    epochs=2,
    quick=True,
)


class Records:
    """OUT/results.json: finished steps by key, each rewritten atomically as soon as it finishes."""

    def __init__(self, path):
        self.path = Path(path)
        self.runs = {}
        if self.path.exists():
            data = json.loads(self.path.read_text())
            if data.get("format") != FORMAT:
                raise ValueError(f"{self.path} is not a results file of benchmarks/search.py; pass another --out")
            self.runs = data["runs"]

    def get(self, key):
        return self.runs.get(key)

    def add(self, key, record):
        self.runs[key] = record
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"format": FORMAT, "runs": self.runs}, indent=1)
        atomic_write(self.path, lambda p: Path(p).write_text(text))


def _progress(message):
    print(f"[search study] {message}", file=sys.stderr, flush=True)


def budgets_mb(class_names):
    """{budget name: MB}: the reference network's predicted train-step memory for these classes, and 60% of it."""
    from tinytl_tf.backbones import backbone_config
    from tinytl_tf.methods import method_config
    from tinytl_tf.supernet.space import predicted_memory_mb

    backbone, resolution = BUDGET_NETWORK
    cfg = method_config(backbone_config(backbone), "tinytl-lb", len(class_names), resolution=resolution)
    reference = predicted_memory_mb(cfg)
    # rounded up to the kB: B1 must admit the reference network itself
    return {name: math.ceil(reference * fraction * 1000) / 1000 for name, fraction in BUDGETS}


SHARED_PHASES = ("supernet/", "pairs/", "predictor")


def _share_search(first, folder):
    """A budget's search folder that reuses the data set's first one's super-nets, pairs and predictor (and their
    wall times; the budget's own phases are timed afresh)."""
    from tinytl_tf.jobs.search import PHASES_FILE

    folder.mkdir(parents=True, exist_ok=True)
    for item in first.iterdir():
        target = folder / item.name
        if target.exists():
            continue
        if item.is_dir():
            target.symlink_to(os.path.relpath(item, folder))
        elif item.name.startswith("predictor."):
            target.write_bytes(item.read_bytes())
        elif item.name == PHASES_FILE:
            shared = {k: v for k, v in json.loads(item.read_text()).items() if k.startswith(SHARED_PHASES)}
            target.write_text(json.dumps(shared, indent=2))


def search_step(plan, tree, folder, budget):
    from tinytl_tf.jobs.search import SUBNET_FILE, search_job

    subnet = search_job(
        tree,
        None,
        budget,
        folder,
        plan.resolutions,
        plan.search_epochs,
        plan.pairs,
        plan.population,
        plan.generations,
        batch_size=plan.batch_size,
        lr=plan.search_lr,
        predictor_epochs=plan.predictor_epochs,
        verbose=study.keras_verbosity(),
        confirm_epochs=plan.confirm_epochs,
    )
    keep = ("backbone", "config", "resolution", "predicted_accuracy", "holdout_accuracy", "predicted_memory_mb")
    return {
        **{k: subnet[k] for k in keep + VERDICT + ("budget_mb", "measured", "objective", "predictor", "phase_seconds")},
        "search": {k: v for k, v in subnet["search"].items() if k != "data"},
        "subnet_file": os.path.relpath(folder / SUBNET_FILE, folder.parents[1]),
    }


def train_step(plan, tree, out, method="tinytl-lb", **model):
    from tinytl_tf.data import load_image_folder
    from tinytl_tf.jobs.train import train_job

    def load_data(resolution, mean, std, batch_size):
        return load_image_folder(tree, resolution, mean, std, batch_size, seed=0)

    _, metrics = train_job(
        tree,
        method=method,
        out=out,
        epochs=plan.epochs,
        batch_size=plan.batch_size,
        lr=plan.lr,
        load_data=load_data,
        overwrite=True,
        verbose=study.keras_verbosity(),
        **model,
    )
    keep = ("backbone", "resolution", "epochs", "lr", "test_accuracy", "train_accuracy", "test_examples")
    return {**{k: metrics[k] for k in keep}, "train_seconds": metrics["train_seconds"]}


def measure_step(model_file):
    from tinytl_tf.jobs.memory import measure_model
    from tinytl_tf.train import load_trained

    row = measure_model(load_trained(model_file), progress=lambda stage: _progress(f"  {stage}"))
    return {k: v for k, v in row.items() if k.startswith(("measured_train", "static"))}


def run_dataset(records, plan, name, tree, work, context, recorded=lambda: None):
    """Every step of one data set, each skipped when recorded; `recorded()` runs after each new record."""
    from tinytl_tf.data import load_image_folder
    from tinytl_tf.supernet.subnet import load_subnet

    classes = load_image_folder(tree, 32, (0.0,) * 3, (1.0,) * 3, 1, seed=0).class_names
    first = None
    for budget_name, budget in budgets_mb(classes).items():
        folder = work / "search" / name / budget_name
        models = work / "train" / name / budget_name
        if first is None:
            first = folder
        else:
            _share_search(first, folder)
        key = f"{name}/{budget_name}"
        record = functools.partial(_record, records, context=context, recorded=recorded, budget=budget)
        record(f"search/{key}", functools.partial(search_step, plan, tree, folder, budget))
        searched = records.get(f"search/{key}")
        baseline = searched["baseline"]
        if baseline["config"] is not None:
            fixed = dict(backbone=baseline["backbone"], resolution=baseline["resolution"], method=baseline["method"])
            record(f"train/{key}/baseline", functools.partial(train_step, plan, tree, models / "baseline", **fixed))
            record(f"memory/{key}/baseline", functools.partial(measure_step, models / "baseline" / "model.keras"))
        if searched["chosen"] == "baseline":  # the search's answer is the baseline: nothing else to train
            record(f"train/{key}/searched", lambda key=key: {**records.get(f"train/{key}/baseline"), "kept": True})
            continue
        subnet = functools.partial(load_subnet, folder / "subnet.json")
        record(
            f"train/{key}/searched",
            functools.partial(train_step, plan, tree, models / "searched", backbone=None, make_model=subnet),
        )


def _record(records, key, compute, context, recorded, **extra):
    """`compute()` recorded under `key` with the run's context, unless already recorded; then `recorded()`."""
    if records.get(key) is not None:
        _progress(f"{key}: recorded, skipped")
        return
    _progress(f"{key}: running")
    start = time.time()
    result = compute()
    records.add(key, {**result, **extra, "wall_seconds": round(time.time() - start, 1), **context})
    _progress(f"{key}: done in {time.time() - start:.0f} s")
    recorded()


# ------------------------------------------------------------------------------------------------ report


def _pct(x):
    return "—" if x is None else f"{100 * x:.1f}"


def _mb(x):
    return "—" if x is None else f"{x:.2f}"


def _findings(records, names):
    """One plain sentence per recorded search: its memory against the budget, and the searched sub-net against the
    fixed baseline on the test split and, as the search saw them, on the held-out images."""
    found = []
    for name in names:
        for budget_name, _ in BUDGETS:
            s = records.get(f"search/{name}/{budget_name}")
            if s is None:
                continue
            budget, measured = s["budget_mb"], s["measured"] and s["measured"]["measured_train_mb"]
            kept = s["chosen"] == "baseline"
            subject = "the search's result, the baseline," if kept else "the searched sub-net"
            text = f"{name} {budget_name}: {subject} "
            if measured is None:
                text += "was not measured"
            else:
                where = "within" if measured <= budget else "over"
                text += f"measured {measured:.2f} MB, {where} the {budget:.2f} MB budget"
            b = s["baseline"]
            if b["config"] is None:
                found.append(text + "; no fixed baseline fits this budget.")
                continue
            held = 100 * s["holdout_lead"]
            if kept and not s["finalists"]:
                found.append(text + "; every backbone's best predicted sub-net was the baseline itself.")
                continue
            if kept:
                best = f"its best finalist ({_arch_text(s['candidate'])})"
                if held <= 0:
                    reason = (
                        f"{best} trailed it by {-held:.1f} points on the held-out images after the confirm fine-tune"
                    )
                else:
                    reason = (
                        f"{best} led it by {held:.1f} points on the held-out images after the confirm fine-tune, "
                        f"under two standard errors of the paired difference ({200 * s['holdout_lead_error']:.1f})"
                    )
                found.append(
                    text + f"; the search kept it: {reason}, so no gain over the baseline is shown." + (_order_note(s))
                )
                continue
            ts, tb = (records.get(f"train/{name}/{budget_name}/{m}") for m in ("searched", "baseline"))
            if ts is None or tb is None:
                found.append(
                    text + f"; on the held-out images after the confirm fine-tune it was {held:+.1f} points "
                    "against the baseline; "
                    "its test top-1 against the baseline's is not recorded yet."
                )
                continue
            test = 100 * (ts["test_accuracy"] - tb["test_accuracy"])
            verdict = "reaches" if test >= 0 else "does not reach"
            text += (
                f"; it {verdict} the fixed baseline's test top-1 ({test:+.1f} points after the full fine-tune), "
                f"where the search's confirm fine-tune had it {held:+.1f} points on the held-out images"
            )
            if (test >= 0) != (held > 0):
                text += ": the short fine-tune's ranking did not carry over to the full one"
            found.append(text + "." + _order_note(s))
    return found


def _networks(search):
    """A recorded search's finalists, then its fixed baseline (marked "fixed") when one fits the budget."""
    b = search["baseline"]
    return list(search["finalists"]) + ([] if b["config"] is None else [{**b, "fixed": True}])


def _order_note(search):
    """How the predictor (which learnt the fine-tuned super-net's measurements) ordered the finalists and the
    baseline, against the confirm fine-tune's order of the same networks."""
    from tinytl_tf.supernet.ranking import spearman

    entries = _networks(search)
    rho = spearman([e["predicted_accuracy"] for e in entries], [e["holdout_accuracy"] for e in entries])
    if rho is None:
        return ""
    return (
        f" Over these {len(entries)} networks the predicted accuracy and the confirm fine-tune's held-out accuracy "
        f"have Spearman {rho:+.2f}."
    )


def _arch_text(entry):
    """A sub-net in a few words, from a record's entry that has its "config"."""
    config = entry["config"]
    lites = sum(config["lites"])
    return (
        f"{config['backbone']} {config['resolution']} px, depths {'-'.join(map(str, config['depths']))}, "
        f"{lites}/{len(config['lites'])} lite branches"
    )


def _rank_text(r):
    return "—" if r["spearman"] is None else f"{r['spearman']:.2f} / {r['kendall']:.2f}"


def report(records, plan, doc):
    """docs/SEARCH.md from the records (numbers only from recorded steps)."""
    title = "the embedded caltech10 (quick mode)" if plan.quick else "CIFAR-10, Stanford Cars and Caltech-101"
    lines = [
        "# Feature-extractor adaptation under a memory budget",
        "",
        f"The search (`python -m tinytl_tf search`) against the fixed backbone on {title}, generated by "
        f"`{SCRIPT}` from its recorded runs; a dash is a step not run yet."
        + ("" if records.runs else " No run is recorded yet (the compute plan is in the script's docstring)."),
        "",
        "**Search space.** The pretrained extractor (every backbone with pretrained MB weights: mcunet-5fps, "
        "proxyless-w0.3, mbv2-w0.35), the input resolution, elastic depth (trailing blocks of a stage skipped) and "
        "per block the lite residual branch (present or not, kernel 3 or 5, groups 2 or 4). Kernel sizes and "
        "expand ratios stay the backbone's: cropping kernels and dropping channels destroys the features of "
        "weights not trained as a once-for-all super-net (`search --elastic-width` turns them on).",
        "",
        "**Budget.** B1 is the predicted train-step memory of mcunet-5fps with TinyTL-L+B at 128 px (batch 1, the "
        "export's default optimizer, Adam with 8-bit moments: `tinytl_tf.memory.predict_train`, the engine's storage "
        "rules), B2 is "
        "60% of it. Both models are constrained by the prediction and then measured: *measured* is the memory a "
        "fresh LiteRT process grows by over its train steps (`python -m tinytl_tf memory --model`).",
        "",
        "| data set | budget MB | baseline | top-1 % | pred. / meas. MB | searched sub-net | top-1 % | "
        "pred. / meas. MB | Δ top-1 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    names = plan.datasets
    for name in names:
        for budget_name, _ in BUDGETS:
            s = records.get(f"search/{name}/{budget_name}")
            if s is None:
                lines.append(f"| {name} | {budget_name} | — | — | — | — | — | — | — |")
                continue
            b, tb = s["baseline"], records.get(f"train/{name}/{budget_name}/baseline")
            ts, mb = (
                records.get(f"train/{name}/{budget_name}/searched"),
                records.get(f"memory/{name}/{budget_name}/baseline"),
            )
            base_text = (
                "fits at no resolution"
                if b["config"] is None
                else f"mcunet-5fps {METHOD_LABELS[b['method']]} {b['resolution']} px"
            )
            base_acc = None if tb is None else tb["test_accuracy"]
            base_mem = (
                "—"
                if b["config"] is None
                else f"{_mb(b['predicted_memory_mb'])} / {_mb(mb and mb['measured_train_mb'])}"
            )
            searched_acc = None if ts is None else ts["test_accuracy"]
            searched_text = "kept the baseline" if s["chosen"] == "baseline" else _arch_text(s)
            measured = s["measured"] and s["measured"]["measured_train_mb"]
            delta = "—" if None in (base_acc, searched_acc) else f"{100 * (searched_acc - base_acc):+.1f}"
            lines.append(
                f"| {name} | {budget_name} {s['budget_mb']:.2f} | {base_text} | {_pct(base_acc)} | {base_mem} | "
                f"{searched_text} | {_pct(searched_acc)} | {_mb(s['predicted_memory_mb'])} / "
                f"{_mb(measured)} | {delta} |"
            )
    lines += ["", "**What this shows** (computed from the rows above):", ""]
    lines += [f"- {line}" for line in _findings(records, names)] or ["- nothing yet: no search is recorded."]
    lines += [
        "",
        "**Finalists** (held-out accuracy on the 20% of the training split; *super-net*: the fine-tuned super-net's "
        "measurement the predictor learns from, *confirm*: after the search's short fine-tune from the pretrained "
        "weights, which decides; the baseline is mcunet-5fps as in the table above):",
        "",
        "| data set | budget | network | predicted % | super-net % | confirm % | pred. MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in names:
        for budget_name, _ in BUDGETS:
            s = records.get(f"search/{name}/{budget_name}")
            if s is None:
                continue
            for e in sorted(_networks(s), key=lambda e: -e["holdout_accuracy"]):
                label = (
                    f"baseline ({METHOD_LABELS[e['method']]} {e['resolution']} px)" if e.get("fixed") else _arch_text(e)
                )
                lines.append(
                    f"| {name} | {budget_name} | {label} | {_pct(e['predicted_accuracy'])} | "
                    f"{_pct(e['supernet_holdout_accuracy'])} | {_pct(e['holdout_accuracy'])} | "
                    f"{_mb(e['predicted_memory_mb'])} |"
                )
    lines += [
        "",
        "**Accuracy predictor** (rank correlation with the measured held-out accuracy on pairs it never saw, "
        "Spearman / Kendall; the search optimises the best of the three rankers):",
        "",
        "| data set | pairs (train/test) | predictor | predicted memory alone | resolution alone | the search "
        "optimised |",
        "|---|---|---|---|---|---|",
    ]
    for name in names:
        s = records.get(f"search/{name}/B1")
        if s is None:
            continue
        p = s["predictor"]
        r = p["rankers"]
        lines.append(
            f"| {name} | {p['train_pairs']}/{p['test_pairs']} | {_rank_text(r['predictor'])} | "
            f"{_rank_text(r['predicted_memory'])} | {_rank_text(r['resolution'])} | {s['objective']} |"
        )
    lines += [
        "",
        "**Search wall time** per phase (s). The first budget's search runs every phase; the second reuses its "
        "super-nets, pairs and predictor and runs only the rest:",
        "",
    ]
    for name in names:
        for i, (budget_name, _) in enumerate(BUDGETS):
            s = records.get(f"search/{name}/{budget_name}")
            if s is not None:
                own = {k: v for k, v in s["phase_seconds"].items() if not (i and k.startswith(SHARED_PHASES))}
                phases = ", ".join(f"{k} {v:.0f}" for k, v in own.items())
                total = sum(own.values())
                lines.append(f"- {name} {budget_name}: {phases} (total {total / 60:.1f} min)")
    any_run = next(iter(records.runs.values()), None)
    lines += [
        "",
        "**Recipe.** Both models of a row train on the whole training split for "
        f"{plan.epochs} epochs at batch {plan.batch_size} with train's default learning rate for their method "
        "(1e-3 for TinyTL-L+B and TinyTL-B alike), both from the pretrained weights (the fine-tuned super-nets only "
        "rank sub-nets). The baseline is mcunet-5fps with TinyTL-L+B at the largest searched "
        "resolution within the budget; where that fits at none (the lite branches' parameters and optimizer state "
        "weigh more than what a lower resolution saves), mcunet-5fps with TinyTL-B (biases alone) at the largest "
        "that fits. The search never reads the test split: it fine-tunes the super-nets on 80% "
        "of the training split and measures sub-nets on the other 20%.",
        "",
        "**How the search decides.** Per backbone, an evolution under the budget finds the sub-net the predictor "
        "rates best (the mcunet-5fps population starts with the baseline). These finalists and the baseline are then "
        f"each fine-tuned for {plan.confirm_epochs} epochs from the pretrained weights, as the full run will "
        "fine-tune them, and scored image by image on the held-out 20%; the best finalist replaces the baseline only "
        "when it leads by two standard errors of the paired difference. The super-net's own held-out measurement "
        "ranks how fast a sub-net learns while sharing weights with all the others, which on a many-class set is not "
        "where its own fine-tuning ends; the confirm fine-tune measures the latter at a fraction of its cost.",
        "",
        "**Once-for-all weights.** `export/convert_ofa.py` converts the official once-for-all checkpoint into a "
        "super-net whose kernels and widths are elastic. It has been run only on state dicts with the official "
        "parameter names built in its tests, not on the released checkpoint (which needs a download and PyTorch), "
        "so no result here uses kernel or width elasticity.",
        "",
        "**Commands and provenance.**",
        "",
    ]
    commands = sorted({r["command"] for r in records.runs.values()})
    lines += [f"    {c}" for c in commands] or ["    (no runs recorded)"]
    if any_run:
        lines += ["", f"Commit {any_run['commit']}; {any_run['hardware']}."]
    doc = Path(doc)
    doc.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(doc, lambda p: Path(p).write_text("\n".join(lines) + "\n"))
    return doc


# ------------------------------------------------------------------------------------------------ main


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", help="folder with the data sets' archives or unpacked folders ($TINYTL_ASSETS/data)")
    p.add_argument("--datasets", nargs="+", choices=tuple(study.DATASETS), help="default: all three")
    p.add_argument("--work", help=f"working folder (default {DEFAULT_WORK.relative_to(ROOT)}; quick: OUT/work)")
    p.add_argument("--out", help=f"results folder (default {DEFAULT_OUT.relative_to(ROOT)})")
    p.add_argument("--doc", help="report file (default docs/SEARCH.md; with --out: OUT/SEARCH.md)")
    p.add_argument("--report", action="store_true", help="only regenerate the report from the recorded runs")
    p.add_argument("--quick", action="store_true", help="every step in miniature on the embedded caltech10")
    return p


def run(args, argv):
    if args.quick and not args.out:
        raise ValueError("--quick writes its miniature results into a folder of your choice: pass --out DIR")
    plan = QUICK_PLAN if args.quick else Plan(datasets=tuple(args.datasets or study.DATASETS))
    out = Path(args.out) if args.out else DEFAULT_OUT
    doc = Path(args.doc) if args.doc else (out / "SEARCH.md" if args.out else DEFAULT_DOC)
    records = Records(out / "results.json")
    if args.report:
        print(f"wrote {report(records, plan, doc)}")
        return
    work = Path(args.work) if args.work else (out / "work" if args.quick else DEFAULT_WORK)
    work.mkdir(parents=True, exist_ok=True)
    if args.quick:
        from tinytl_tf.data import default_data_dir

        trees = {QUICK_NAME: default_data_dir()}
    else:
        root = study.data_root(args)
        if not root.is_dir():
            raise FileNotFoundError(f"data root {root} does not exist; pass --data-root DIR with the archives")
        trees = {d: study.prepare_dataset(study.DATASETS[d], root, work).tree for d in plan.datasets}
    context = {
        "command": study.portable_command(SCRIPT, argv),
        "commit": study.git_commit(),
        "hardware": study.hardware(),
    }
    try:
        for name, tree in trees.items():
            run_dataset(records, plan, name, tree, work, context, recorded=lambda: report(records, plan, doc))
    finally:
        print(f"wrote {report(records, plan, doc)}", flush=True)


def main(argv=None):
    from tinytl_tf.cliargs import run_command

    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    return run_command(lambda: run(args, argv))


if __name__ == "__main__":
    sys.exit(main())
