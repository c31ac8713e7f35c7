"""The results benchmark (issue 7): the paper's six-method comparison redone on Caltech-101 with this implementation,
with real (LiteRT) training memory beside the analytic one; writes a JSON file, docs/RESULTS.md and its plots.

    python benchmarks/transfer.py [--data DIR]          # every phase (about 75-80 min on 2 idle cores); resumable
    python benchmarks/transfer.py --only lr main        # some phases
    python benchmarks/transfer.py --report              # regenerate docs/RESULTS.md and the plots from the JSON
    python benchmarks/transfer.py --quick --out DIR     # every phase in miniature on the embedded subset

Phases, with their estimated minutes for the default run on 2 idle cores (a shared machine takes 2-4x longer):
  lr      (~12) learning rate of each method from a grid, by accuracy on a holdout split carved from the training
                images (20% per class): mcunet-5fps, 150 steps of batch 8 on the rest (a proxy of the main schedule).
                The test split is never read.
  main    (~39) six methods x mcunet-5fps, proxyless-w0.3, mbv2-w0.35 at 128 px on the full split: 1 epoch, batch 8,
                the chosen lr; seeds 0 and 1 for TinyTL-L+B and FT-Full; test top-1, analytic memory at batch 1 and 8.
  memory  (~13) every (backbone, method) network exported and its LiteRT train step measured at batch 1
                (`tinytl_tf.memory.measure.measure_model`).
  mbv1    (~5)  mobilenet-v1 at 224 px, FT-Last / TinyTL-B / TinyTL-L+B: 8 training images per class, 1 epoch, the
                lr chosen on mcunet-5fps; full test split. Skipped (saying why) without the weights.
  batch   (~4)  TinyTL-L+B at batch 1 (lr = the batch-8 lr / 8) against the batch-8 run of `main`.
  device  (~3)  the same TinyTL-L+B network from the pretrained start, exported and trained for the same epochs by the
                LiteRT trainer at batch 1 (`tinytl_tf.ondevice`), against the desktop batch-1 run.

Each run is keyed by (phase, backbone, method, resolution, batch, seed, lr). A finished run is written at once
(atomically) into OUT/results.json with its numbers, wall time, commit, hardware and command; running the script
again skips it. The report (docs/RESULTS.md, or OUT/RESULTS.md with --out) is regenerated from the JSON at the end
of every run and by --report; a run that is not in the JSON shows as missing, never as a number.
"""

import argparse
import dataclasses
import datetime
import functools
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tinytl_tf.atomic import atomic_write  # noqa: E402
from tinytl_tf.contract import METHODS  # noqa: E402

PHASES = ("lr", "main", "memory", "mbv1", "batch", "device")
DEFAULT_OUT = ROOT / "docs" / "results"
DEFAULT_DOC = ROOT / "docs" / "RESULTS.md"
DEFAULT_DATA = ROOT / "runs" / "caltech101"
SCRIPT = "python benchmarks/transfer.py"
RESULTS_FORMAT = "tinytl_tf/transfer-results-v1"
HOLDOUT_FRACTION = 0.2
EVAL_BATCH = 64  # evaluation batch, whatever the training batch (a batch-1 run would otherwise evaluate 1 by 1)
SEEDED_METHODS = ("tinytl-lb", "ft-full")  # the methods run with every seed of the plan
ON_DEVICE_METHOD = "tinytl-lb"
MBV1 = "mobilenet-v1"
# Peak learning rates tried per method (Adam, cosine decay to 0): a factor-3 grid around what worked by hand on
# Caltech-101 (FT-Full collapses at 1e-3 with BN folded into the convs, so its grid sits lower).
LR_GRID = {
    "ft-last": (3e-3, 1e-2, 3e-2),
    "ft-norm-last": (1e-3, 3e-3, 1e-2),
    "ft-full": (3e-5, 1e-4, 3e-4),
    "tinytl-b": (1e-3, 3e-3, 1e-2),
    "tinytl-l": (1e-3, 3e-3, 1e-2),
    "tinytl-lb": (1e-3, 3e-3, 1e-2),
}
assert tuple(LR_GRID) == METHODS


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a benchmark run trains. The first backbone is the one learning rates are chosen on and the batch-1 and
    on-device comparisons use."""

    backbones: tuple = ("mcunet-5fps", "proxyless-w0.3", "mbv2-w0.35")
    methods: tuple = METHODS
    resolution: int = 128
    epochs: int = 1
    batch_size: int = 8
    lr_grid: tuple = tuple(LR_GRID.items())  # ((method, (lr, ...)), ...)
    lr_steps: int = 150  # training steps of one lr trial
    seeds: tuple = (0, 1)
    mbv1_methods: tuple = ("ft-last", "tinytl-b", "tinytl-lb")
    mbv1_resolution: int = 224
    mbv1_train_per_class: int = 8
    batch1_lr_divisor: float = 8.0  # linear scaling; the paper's Aircraft pair is 1.6e-3 at batch 8, 2e-4..3e-4 at 1
    quick_subset: Optional[tuple] = None  # (classes, train, test images per class) of the embedded subset

    def grid(self, method):
        return dict(self.lr_grid)[method]

    def seeds_of(self, method):
        return self.seeds if method in SEEDED_METHODS else self.seeds[:1]


QUICK_PLAN = Plan(  # tracing and exporting cost most of a tiny run: few methods, trials and exports
    backbones=("mcunet-5fps",), methods=("ft-last", "tinytl-lb"), resolution=64,
    lr_grid=(("ft-last", (1e-2, 3e-2)), ("tinytl-lb", (3e-3,))), lr_steps=2,
    mbv1_methods=("ft-last",), mbv1_resolution=64, mbv1_train_per_class=2, quick_subset=(3, 10, 4),
)


class Spec(NamedTuple):
    """The identity of one run."""

    phase: str
    backbone: str
    method: str
    resolution: int
    batch: int
    seed: int
    lr: Optional[float]  # None where no training happens (memory)

    @property
    def key(self):
        lr = "-" if self.lr is None else f"{self.lr:g}"
        return f"{self.phase}/{self.backbone}/{self.method}/{self.resolution}px/b{self.batch}/s{self.seed}/lr{lr}"


# ----------------------------------------------------------------------------------------------- results file


class Results:
    """OUT/results.json: finished runs by key, phases skipped (with the reason) and runs that failed. Rewritten
    atomically after every change, so an interruption loses at most the run in progress."""

    def __init__(self, path):
        self.path = Path(path)
        self.runs, self.skipped, self.failed = {}, {}, {}
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text())
                ok = data.get("format") == RESULTS_FORMAT
            except (ValueError, AttributeError) as e:
                ok, data = False, str(e)
            if not ok:
                raise ValueError(f"{self.path} is not a results file of benchmarks/transfer.py; move it away or pass "
                                 "another --out")
            self.runs, self.skipped, self.failed = data["runs"], data["skipped"], data["failed"]

    def __contains__(self, spec):
        return spec.key in self.runs

    def get(self, spec):
        return self.runs.get(spec.key)

    def add(self, record):
        self.runs[record["key"]] = record
        self.failed.pop(record["key"], None)
        self._save()

    def fail(self, spec, message):
        self.failed[spec.key] = message
        self._save()

    def skip(self, phase, reason):
        self.skipped[phase] = reason
        self._save()

    def unskip(self, phase):
        if self.skipped.pop(phase, None) is not None:
            self._save()

    def _save(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {"format": RESULTS_FORMAT, "runs": self.runs, "skipped": self.skipped, "failed": self.failed}
        atomic_write(self.path, lambda p: Path(p).write_text(json.dumps(data, indent=1)))


@dataclasses.dataclass(frozen=True)
class Context:
    """What every run records beside its numbers, and where it reads its data."""

    data: Path
    data_name: str
    command: str
    commit: str
    hardware: str
    weights_dir: Optional[str] = None


def git_commit():
    """HEAD's hash, with "+uncommitted" when tracked code differs from it (the numbers then come from that code;
    the results files this script and its siblings rewrite do not count)."""
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no", "--",
                                "tinytl_tf", "export", "benchmarks"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head + ("+uncommitted" if dirty else "")


def hardware():
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} cores, no GPU"


def execute(results, ctx, spec, compute, position, tolerated=()):
    """Run `compute()` for `spec` unless the JSON already has it, and record its metrics with the run's context.
    A `tolerated` error is recorded as the run's failure (the report states it) and the next run goes on."""
    label = f"[{spec.phase} {position}] {spec.key}"
    if spec in results:
        print(f"{label}: done earlier, skipped", flush=True)
        return
    load = round(os.getloadavg()[0], 1)  # the machine may be shared: times are read against it
    print(f"{label}: running (load average {load})", flush=True)
    start = time.time()
    try:
        metrics = compute()
    except tolerated as e:
        print(f"{label}: failed: {e}", flush=True)
        results.fail(spec, str(e))
        return
    seconds = time.time() - start
    record = {"key": spec.key, **spec._asdict(), "metrics": metrics, "seconds": round(seconds, 1),
              "load_average": load, "finished": datetime.datetime.now().isoformat(timespec="seconds"),
              "commit": ctx.commit, "hardware": ctx.hardware, "command": ctx.command, "data": ctx.data_name}
    results.add(record)
    shown = {k: metrics[k] for k in ("holdout_accuracy", "test_accuracy", "measured_train_mb") if k in metrics}
    print(f"{label}: {json.dumps(shown)} in {seconds:.0f} s", flush=True)


def run_phase(results, ctx, phase, specs, tolerated=()):
    """Execute a phase's (spec, compute) pairs in order, with a progress count."""
    done = sum(spec in results for spec, _ in specs)
    print(f"\n== {phase}: {len(specs)} runs, {done} done earlier", flush=True)
    for i, (spec, compute) in enumerate(specs, 1):
        execute(results, ctx, spec, compute, f"{i}/{len(specs)}", tolerated)


# ---------------------------------------------------------------------------------------------------- data


@functools.lru_cache(maxsize=4)
def folder_split(data):
    """The validated split of a class-per-folder tree (decodes every image once, so it is cached)."""
    from tinytl_tf import imageio

    return imageio.scan_image_folder(data)


def subset_tree(source, dest, train_per_class, test_per_class=None, classes=None):
    """A `train/<class>/`, `test/<class>/` tree of symlinks to the first images (by name) of each class of `source`.

    `classes`: keep only the first that many classes; a per-class count of None keeps every image of that split.
    """
    split = folder_split(Path(source))
    names = split.class_names[:classes]
    for part, files, limit in (("train", split.train, train_per_class), ("test", split.test, test_per_class)):
        for label, name in enumerate(names):
            chosen = sorted(path for path, y in files if y == label)[:limit]
            folder = Path(dest) / part / name
            folder.mkdir(parents=True)
            for path in chosen:
                (folder / Path(path).name).symlink_to(Path(path).resolve())
    return Path(dest)


def full_caltech(data):
    """`data`, or the full Caltech-101 split prepared under runs/ from the shared tarballs when it is not there."""
    if data:
        return Path(data)
    if (DEFAULT_DATA / "train").is_dir():
        return DEFAULT_DATA
    assets = Path(os.environ.get("TINYTL_ASSETS") or ROOT.parent / "shared" / "assets") / "data"
    if not (assets / "caltech101_part1.tar").is_file():
        raise FileNotFoundError(f"the full Caltech-101 split is not at {DEFAULT_DATA} and its tarballs are not in "
                                f"{assets}; pass --data DIR (train/<class>/, test/<class>/), or run --quick")
    from tinytl_tf.caltech import prepare_caltech101

    print(f"preparing Caltech-101 from {assets} into {DEFAULT_DATA}", flush=True)
    return prepare_caltech101(assets, DEFAULT_DATA)


# ------------------------------------------------------------------------------------------------ training


def keras_verbosity():
    return 1 if sys.stdout.isatty() else 2  # a progress bar on a terminal, one line per epoch in a log


def analytic_memory(cfg):
    """REFERENCE §4's memory of the network actually trained, at batch 1 and 8 (MB)."""
    from tinytl_tf.memory import training_memory

    out = {}
    for batch in (1, 8):
        r = training_memory(cfg, batch)
        out[f"batch{batch}"] = {"params_mb": r.params_mb, "activations_mb": r.activations_mb, "total_mb": r.total_mb}
    return out


def evaluate(model, dataset):
    """Top-1 accuracy with a compiled forward pass (`accuracy` calls the model eagerly: ~4x slower) in big batches."""
    import tensorflow as tf

    from tinytl_tf.train import accuracy

    return accuracy(tf.function(lambda x, training: model(x, training=training)), dataset.unbatch().batch(EVAL_BATCH))


def pretrained(spec, weights_dir=None):
    """`spec`'s pretrained backbone in a fresh Keras session, the random generators seeded by `spec.seed` (so the
    new head and lite branches that `prepare_transfer` draws next are the same in every run of this seed)."""
    import keras

    from tinytl_tf.backbones import load_backbone

    keras.backend.clear_session()
    keras.utils.set_random_seed(spec.seed)
    return load_backbone(spec.backbone, spec.resolution, weights_dir)


def transfer_model(base, spec, class_names):
    from tinytl_tf.transfer import prepare_transfer

    return prepare_transfer(base, spec.method, len(class_names), labels=class_names)


def train_run(spec, data, epochs, weights_dir=None, lr_steps=None):
    """Fine-tune per `spec` on `data` (recipe: `tinytl_tf.train.fit`) and evaluate it.

    `lr_steps` (the lr phase): train `lr_steps` batches of the training images minus the holdout, evaluate on the
    holdout; the test split is never read. Otherwise: `epochs` over the whole training split, evaluate on test.
    """
    from tinytl_tf.backbones import count_params
    from tinytl_tf.data import load_image_folder
    from tinytl_tf.train import fit, steps_per_epoch

    selecting = lr_steps is not None
    base = pretrained(spec, weights_dir)
    cfg = base.net_config
    images = load_image_folder(data, cfg.resolution, cfg.input_mean, cfg.input_std, spec.batch, seed=spec.seed,
                               holdout_fraction=HOLDOUT_FRACTION if selecting else None)
    model = transfer_model(base, spec, images.class_names)
    train = images.train.take(lr_steps) if selecting else images.train
    start = time.time()
    history = fit(model, train, epochs, spec.lr, verbose=keras_verbosity())
    trainable, total = count_params(model)
    metrics = {"train_seconds": round(time.time() - start, 1), "epochs": epochs,
               "steps": epochs * steps_per_epoch(train), "train_examples": images.num_train,
               "train_accuracy": float(history.history["accuracy"][-1]), "trainable_params": trainable,
               "total_params": total, "num_classes": len(images.class_names)}
    if selecting:
        metrics.update(holdout_accuracy=evaluate(model, images.holdout), holdout_examples=images.num_holdout)
    else:
        metrics.update(test_accuracy=evaluate(model, images.test), test_examples=images.num_test)
    return {**metrics, "analytic": analytic_memory(model.net_config)}


def measure_run(spec, class_names):
    """LiteRT memory of the network `spec` trains, exported with its method's trainable set (batch 1)."""
    from tinytl_tf.memory.measure import measure_model

    model = transfer_model(pretrained(spec), spec, class_names)
    measured = measure_model(model, progress=lambda stage: print(f"  {stage}", flush=True))
    return {**measured, "analytic": analytic_memory(model.net_config)}


def device_run(spec, data, epochs):
    """Export the pretrained network with its new head and train it with the LiteRT trainer for `epochs` at batch 1
    (Adam, the in-model cosine schedule over all the steps), then evaluate it on the test split with LiteRT."""
    from tinytl_tf.export import export_model
    from tinytl_tf.ondevice import evaluate_folder, train_folder

    split = folder_split(Path(data))
    model = transfer_model(pretrained(spec), spec, split.class_names)
    with tempfile.TemporaryDirectory(prefix="tinytl-device-") as tmp:
        path, checkpoint = Path(tmp) / "model.tflite", Path(tmp) / "checkpoint.npz"
        start = time.time()
        export_model(model, path, "adam", lr=spec.lr, total_steps=epochs * len(split.train))
        export_seconds = time.time() - start
        summary = train_folder(path, data, epochs, checkpoint, seed=spec.seed, progress=sys.stderr)
        result = evaluate_folder(path, data, checkpoint)
        tflite_mb = path.stat().st_size / 1e6
    return {"test_accuracy": result["accuracy"], "test_examples": result["examples"], "epochs": epochs,
            "steps": summary["global_steps"], "train_examples": summary["train_examples"],
            "train_accuracy": summary["accuracy"], "train_seconds": round(summary["seconds"], 1),
            "steps_per_s": summary["steps_per_s"], "rolled_back": summary["rolled_back"],
            "export_seconds": round(export_seconds, 1), "tflite_mb": tflite_mb}


# --------------------------------------------------------------------------------------------------- phases


def lr_specs(plan):
    return [Spec("lr", plan.backbones[0], m, plan.resolution, plan.batch_size, 0, lr)
            for m in plan.methods for lr in plan.grid(m)]


def chosen_lrs(results, plan):
    """{method: the lr of its grid with the best holdout accuracy} for methods whose grid is complete; ties go to
    the smaller lr."""
    chosen = {}
    for m in plan.methods:
        trials = [(results.get(s)["metrics"]["holdout_accuracy"], -s.lr, s.lr)
                  for s in lr_specs(plan) if s.method == m and s in results]
        if len(trials) == len(plan.grid(m)):
            chosen[m] = max(trials)[2]
    return chosen


def lr_of(results, plan, method):
    lr = chosen_lrs(results, plan).get(method)
    if lr is None:
        raise ValueError(f"no learning rate chosen for {method} yet: its lr phase is incomplete; run "
                         f"`{SCRIPT} --only lr` first (same --data/--out)")
    return lr


def batch1_lr(results, plan):
    return lr_of(results, plan, ON_DEVICE_METHOD) / plan.batch1_lr_divisor


def main_specs(results, plan):
    return [Spec("main", b, m, plan.resolution, plan.batch_size, seed, lr_of(results, plan, m))
            for b in plan.backbones for m in plan.methods for seed in plan.seeds_of(m)]


def memory_specs(plan):
    return [Spec("memory", b, m, plan.resolution, 1, 0, None) for b in plan.backbones for m in plan.methods]


def mbv1_specs(results, plan):
    return [Spec("mbv1", MBV1, m, plan.mbv1_resolution, plan.batch_size, 0, lr_of(results, plan, m))
            for m in plan.mbv1_methods if m in plan.methods]


def batch_spec(results, plan, phase):
    """The batch-1 TinyTL-L+B run of the `batch` (desktop) or `device` (LiteRT) phase."""
    return Spec(phase, plan.backbones[0], ON_DEVICE_METHOD, plan.resolution, 1, 0, batch1_lr(results, plan))


def phase_runs(phase, results, plan, ctx):
    """[(spec, compute)] of one phase; specs that need chosen learning rates are made once the lr phase is done."""
    data = ctx.data
    if phase == "lr":
        return [(s, functools.partial(train_run, s, data, 1, lr_steps=plan.lr_steps)) for s in lr_specs(plan)]
    if phase == "main":
        return [(s, functools.partial(train_run, s, data, plan.epochs)) for s in main_specs(results, plan)]
    if phase == "memory":
        names = folder_split(data).class_names
        return [(s, functools.partial(measure_run, s, names)) for s in memory_specs(plan)]
    if phase == "mbv1":
        return [(s, functools.partial(mbv1_run, s, data, plan, ctx.weights_dir)) for s in mbv1_specs(results, plan)]
    if ON_DEVICE_METHOD not in plan.methods:
        return []
    if phase == "batch":
        s = batch_spec(results, plan, "batch")
        return [(s, functools.partial(train_run, s, data, plan.epochs))]
    s = batch_spec(results, plan, "device")
    return [(s, functools.partial(device_run, s, data, plan.epochs))]


def mbv1_run(spec, data, plan, weights_dir):
    """`train_run` on the first `mbv1_train_per_class` training images of each class, tested on the full split."""
    with tempfile.TemporaryDirectory(prefix="tinytl-mbv1-") as tmp:
        subset = subset_tree(data, Path(tmp) / "data", plan.mbv1_train_per_class)
        return train_run(spec, subset, plan.epochs, weights_dir)


def mbv1_missing(weights_dir):
    """Why the mbv1 phase cannot run here (its weights are not shipped), or None."""
    from tinytl_tf.backbones.mobilenet_v1 import find_weights

    try:
        find_weights(weights_dir)
    except FileNotFoundError as e:
        return str(e)
    return None


def run_phases(phases, results, plan, ctx):
    for phase in phases:
        tolerated = ()
        if phase == "mbv1":
            reason = mbv1_missing(ctx.weights_dir)
            if reason:
                print(f"\n== mbv1: skipped: {reason}", flush=True)
                results.skip("mbv1", reason)
                continue
            results.unskip("mbv1")
        if phase == "memory":  # a measurement that fails (e.g. times out) is reported; the others still run
            from tinytl_tf.memory.measure import MeasurementError

            tolerated = (MeasurementError,)
        run_phase(results, ctx, phase, phase_runs(phase, results, plan, ctx), tolerated)


# --------------------------------------------------------------------------------------------------- report


def pct(x):
    return "missing" if x is None else f"{100 * x:.1f}"


def mb(x):
    return "missing" if x is None else f"{x:.2f}"


def shown(x):
    return "missing" if x is None else x


def lr_text(lr):
    return "missing" if lr is None else f"{lr:g}"


def metrics_of(record):
    return record["metrics"] if record else {}


def analytic_mb(metrics, batch):
    return metrics.get("analytic", {}).get(f"batch{batch}", {}).get("total_mb")


def short_commit(commit):
    head, plus, rest = commit.partition("+")
    return head[:12] + plus + rest if all(c in "0123456789abcdef" for c in head) else commit


def seed_summary(values, expected):
    """'mean (min-max, n seeds)' of the accuracies found; 'missing' when none is."""
    if not values:
        return "missing"
    if len(values) == 1:
        return pct(values[0]) + (f" (1 of {expected} seeds)" if expected > 1 else "")
    return f"{pct(sum(values) / len(values))} ({pct(min(values))}-{pct(max(values))}, {len(values)} seeds)"


def table(header, rows):
    """Markdown table lines; short rows are padded with empty cells."""
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return out + ["| " + " | ".join(map(str, row + [""] * (len(header) - len(row)))) + " |" for row in rows]


class Report:
    """docs/RESULTS.md and its plots, from the results file and the plan alone."""

    def __init__(self, results, plan, doc, out):
        self.results, self.plan, self.doc, self.out = results, plan, Path(doc), Path(out)
        self.lrs = chosen_lrs(results, plan)

    def main_accuracies(self, backbone, method):
        """Test accuracies of the finished main runs of (backbone, method), one per seed."""
        p, lr = self.plan, self.lrs.get(method)
        specs = [Spec("main", backbone, method, p.resolution, p.batch_size, s, lr) for s in p.seeds_of(method)]
        return [metrics_of(self.results.get(s))["test_accuracy"] for s in specs if lr and s in self.results]

    def mean_accuracy(self, backbone, method):
        acc = self.main_accuracies(backbone, method)
        return sum(acc) / len(acc) if acc else None

    def main_metrics(self, backbone, method):
        """The seed-0 main run's metrics (analytic memory, parameters, time); empty when missing."""
        lr = self.lrs.get(method)
        spec = Spec("main", backbone, method, self.plan.resolution, self.plan.batch_size, 0, lr)
        return metrics_of(self.results.get(spec)) if lr else {}

    def memory_metrics(self, backbone, method):
        return metrics_of(self.results.get(Spec("memory", backbone, method, self.plan.resolution, 1, 0, None)))

    def write(self):
        self.out.mkdir(parents=True, exist_ok=True)
        figures = {"accuracy": self.out / "accuracy_vs_memory.png", "breakdown": self.out / "memory_breakdown.png"}
        self.plot_accuracy_vs_memory(figures["accuracy"])
        self.plot_memory_breakdown(figures["breakdown"])
        links = {k: os.path.relpath(v, self.doc.parent) for k, v in figures.items()}
        text = "\n".join(self.document(links)) + "\n"
        self.doc.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.doc, lambda p: Path(p).write_text(text))
        return self.doc

    # -- text
    def document(self, links):
        lines = ["# Results: TinyTL on Caltech-101, accuracy and measured memory", "",
                 f"Generated by `{SCRIPT}` from `{os.path.relpath(self.results.path, self.doc.parent)}` "
                 f"(regenerate with `{SCRIPT} --report`). Every number below is read from a run recorded there; "
                 "a run that has not been done shows as *missing*.", ""]
        runs = list(self.results.runs.values())

        def listing(field, show=str):
            values = [r[field] for r in runs]
            return ", ".join(f"{show(v)} ({values.count(v)} runs)" for v in sorted(set(values)))

        if runs:
            lines += [f"- Hardware: {listing('hardware')}.", f"- Commit: {listing('commit', short_commit)}.",
                      f"- Data: {listing('data')}.", f"- Commands: {listing('command', lambda c: f'`{c}`')}.", ""]
        for section in (self.progress, self.headline, self.recipe, lambda: self.main_section(links), self.lr_section,
                        self.mbv1_section, self.batch_section, self.runs_section):
            lines += section() + [""]
        return lines

    def progress(self):
        p = self.plan
        device = int(ON_DEVICE_METHOD in p.methods)
        planned = {"lr": sum(len(p.grid(m)) for m in p.methods),
                   "main": len(p.backbones) * sum(len(p.seeds_of(m)) for m in p.methods),
                   "memory": len(p.backbones) * len(p.methods),
                   "mbv1": len([m for m in p.mbv1_methods if m in p.methods]), "batch": device, "device": device}
        rows = []
        for phase in PHASES:
            done = [r for r in self.results.runs.values() if r["phase"] == phase]
            rows.append([phase, len(done), "skipped (see 3.)" if phase in self.results.skipped else planned[phase],
                         f"{sum(r['seconds'] for r in done) / 60:.1f}"])
        return table(["phase", "runs recorded", "runs planned", "wall time (min)"], rows)

    def headline(self):
        b, p = self.plan.backbones[0], self.plan
        rows = [[m, pct(self.mean_accuracy(b, m)), mb(self.memory_metrics(b, m).get("measured_train_mb")),
                 mb(analytic_mb(self.main_metrics(b, m), 8))] for m in p.methods]
        return [f"## Headline ({b}, {p.resolution} px, {p.epochs} epoch(s) on the training split)", ""] + table(
            ["method", "top-1 %", "LiteRT train MB, batch 1 (measured)", "analytic MB, batch 8"], rows)

    def recipe(self):
        p = self.plan
        grid = "; ".join(f"{m}: {', '.join(f'{lr:g}' for lr in p.grid(m))}" for m in p.methods)
        return [
            "## Recipe", "",
            f"- Data: {self.data_description()}. Train: random-resized crop + flip; test: resize + centre crop "
            "(REFERENCE §5), Pillow decoding shared with the device.",
            f"- Every method: Adam (0.9, 0.999, 1e-8), cosine decay to 0 per step, label smoothing 0.1, dropout 0.2 "
            f"before the new head, {p.epochs} epoch(s) at batch {p.batch_size}, {p.resolution} px, pretrained ImageNet "
            "backbones (the MCU nets' 8-bit weights dequantized to float). Lite residual branches only in TinyTL-L "
            "and TinyTL-L+B (random init, last norm scale 0).",
            f"- Learning rate (phase `lr`): per method, the value of the grid ({grid}) with the best top-1 on a "
            f"holdout of {HOLDOUT_FRACTION:.0%} of each class's training images, after {p.lr_steps} steps of batch "
            f"{p.batch_size} on the other training images (a shorter proxy of the main schedule), on {p.backbones[0]}; "
            "the chosen value serves every backbone. Ties go to the smaller value. The test split is never read.",
            f"- Seeds {', '.join(map(str, p.seeds))} for {', '.join(m for m in SEEDED_METHODS if m in p.methods)} "
            "(seed = data order, augmentation, head and lite-branch initialisation); one seed (0) for the others.",
            "- Analytic memory: REFERENCE §4's model (frozen weights at 8 bits, trainable ones and activations "
            "float32, MB = 1e6 B) of the network actually trained, i.e. without lite branches for the FT methods and "
            "TinyTL-B (the paper's table gives every method them; `python -m tinytl_tf memory` prints that).",
            "- Measured memory (phase `memory`): the network exported to one builtins-only `.tflite` and its `train` "
            "signature run in a fresh LiteRT process at batch 1: peak RSS minus RSS after loading "
            "(`tinytl_tf.memory.measure`, XNNPACK off). Static figures come from the graph's tensor lifetimes.",
            f"- MobileNetV1 (phase `mbv1`): {p.mbv1_resolution} px, the first {p.mbv1_train_per_class} training images "
            f"(by file name) of each class, {p.epochs} epoch(s) at batch {p.batch_size}, the learning rates chosen on "
            f"{p.backbones[0]}; tested on the full test split.",
            f"- Batch 1 (phases `batch`, `device`): {ON_DEVICE_METHOD} on {p.backbones[0]}, lr = the batch-8 lr / "
            f"{p.batch1_lr_divisor:g} (linear scaling; the paper's Aircraft pair is 1.6e-3 at batch 8 and 2e-4..3e-4 "
            "at batch 1), the same epochs. The device run starts from the same pretrained network and head "
            "initialisation, is exported with Adam and the in-model cosine schedule over all its steps, and is trained "
            "and evaluated by the TF-free LiteRT trainer (`tinytl_tf.ondevice`), which has no dropout.",
            "- Not done (time budget): resolutions above 128 px for the three MCU backbones."]

    def data_description(self):
        q = self.plan.quick_subset
        text = (f"the embedded Caltech-101 subset cut to its first {q[0]} classes, {q[1]} training and {q[2]} test "
                "images each (quick mode)" if q else "Caltech-101, the official split without BACKGROUND_Google")
        main = next((r["metrics"] for r in self.results.runs.values() if r["phase"] == "main"), None)
        if main:
            text += (f": {main['num_classes']} classes, {main['train_examples']} training and "
                     f"{main['test_examples']} test images")
        return text

    def main_section(self, links):
        p = self.plan
        lines = [f"## 1. Transfer methods, {p.resolution} px", "",
                 "Top-1 on the test split (mean and range over seeds), learning rate chosen on the holdout, analytic "
                 "training memory at batch 1 and 8, LiteRT measured at batch 1 (train step; infer step as the floor; "
                 "static peak of the graph's live tensors; `.tflite` size). Parameters and times are of the seed-0 "
                 "run."]
        header = ["method", "lr", "top-1 %", "trainable params", "analytic MB b1", "analytic MB b8", "LiteRT train MB",
                  "LiteRT infer MB", "static peak MB", ".tflite MB", "train s"]
        for b in p.backbones:
            rows = []
            for m in p.methods:
                main, memory = self.main_metrics(b, m), self.memory_metrics(b, m)
                rows.append([m, lr_text(self.lrs.get(m)), seed_summary(self.main_accuracies(b, m), len(p.seeds_of(m))),
                             shown(main.get("trainable_params")), mb(analytic_mb(main, 1)), mb(analytic_mb(main, 8))]
                            + [mb(memory.get(k)) for k in ("measured_train_mb", "measured_infer_mb", "static_peak_mb",
                                                           "tflite_mb")] + [shown(main.get("train_seconds"))])
            lines += ["", f"### {b}", ""] + table(header, rows)
        lines += [""] + [f"- Measurement failed for `{k}`: {v}" for k, v in self.results.failed.items()]
        return lines + [
            "", "Accuracy against training memory (the paper's Figure 3 style; left analytic at batch 8, right "
            "measured LiteRT at batch 1):", "", f"![accuracy vs memory]({links['accuracy']})", "",
            "Memory per method: analytic (parameters + activations, batch 1), the LiteRT graph's static figures "
            "(constants + variables, peak of live tensors) and the measured LiteRT train step:", "",
            f"![memory breakdown]({links['breakdown']})"]

    def lr_section(self):
        p = self.plan
        rows = []
        for m in p.methods:
            cells = []
            for s in (s for s in lr_specs(p) if s.method == m):
                trial = metrics_of(self.results.get(s))
                text = f"{s.lr:g}: {pct(trial.get('holdout_accuracy'))}"
                text += f" of {trial['holdout_examples']}" if trial else ""
                cells.append(f"**{text}**" if self.lrs.get(m) == s.lr else text)
            rows.append([m, lr_text(self.lrs.get(m))] + cells)
        width = max(len(p.grid(m)) for m in p.methods)
        return [f"## 2. Learning-rate choice ({p.backbones[0]}, holdout top-1 %, chosen in bold)", ""] + table(
            ["method", "chosen"] + [f"lr {i + 1}" for i in range(width)], rows)

    def mbv1_section(self):
        p = self.plan
        lines = [f"## 3. MobileNetV1, {p.mbv1_resolution} px ({p.mbv1_train_per_class} training images per class)", ""]
        if "mbv1" in self.results.skipped:
            return lines + [f"Skipped: {self.results.skipped['mbv1']}"]
        rows = []
        for m in (m for m in p.mbv1_methods if m in p.methods):
            lr = self.lrs.get(m)
            spec = Spec("mbv1", MBV1, m, p.mbv1_resolution, p.batch_size, 0, lr)
            run = metrics_of(self.results.get(spec)) if lr else {}
            rows.append([m, lr_text(lr), pct(run.get("test_accuracy")), shown(run.get("trainable_params")),
                         mb(analytic_mb(run, 1)), mb(analytic_mb(run, 8)), shown(run.get("train_seconds"))])
        return lines + table(["method", "lr", "top-1 %", "trainable params", "analytic MB b1", "analytic MB b8",
                              "train s"], rows)

    def batch_section(self):
        p = self.plan
        b, m = p.backbones[0], ON_DEVICE_METHOD
        lr8 = self.lrs.get(m)
        lr1 = lr8 / p.batch1_lr_divisor if lr8 else None

        def batch1(phase):
            return metrics_of(self.results.get(Spec(phase, b, m, p.resolution, 1, 0, lr1)) if lr1 else None)

        memory = self.memory_metrics(b, m)
        rows = []
        for name, run, lr, batch in (("desktop (Keras), batch 8", self.main_metrics(b, m), lr8, 8),
                                     ("desktop (Keras), batch 1", batch1("batch"), lr1, 1),
                                     ("on-device (LiteRT trainer), batch 1", batch1("device"), lr1, 1)):
            rows.append([name, lr_text(lr), pct(run.get("test_accuracy")), shown(run.get("steps")),
                         shown(run.get("train_seconds")), mb(analytic_mb(memory, batch)),
                         "-" if batch == 8 else mb(memory.get("measured_train_mb"))])
        return [f"## 4. Batch 1 against batch 8, desktop against device ({m}, {b}, {p.resolution} px, seed 0)", "",
                "Training memory of the network: analytic at the run's batch (the device run trains the same network "
                "as the desktop batch-1 run) and the LiteRT train step measured at batch 1.", ""] + table(
            ["run", "lr", "top-1 %", "steps", "train s", "analytic MB", "LiteRT train MB"], rows)

    def runs_section(self):
        rows = [[f"`{r['key']}`", r["seconds"], r["load_average"], r["finished"], short_commit(r["commit"]),
                 f"`{r['command']}`"] for r in self.results.runs.values()]
        return ["## Runs", "", "Every run in the results file: its wall time (loading, training and evaluating, or "
                "exporting and measuring), the machine's load average when it started (the 2 cores may be shared), "
                "when it finished, the commit and the exact command.", ""] + table(
            ["run", "seconds", "load", "finished", "commit", "command"], rows)

    # -- plots
    def plot_accuracy_vs_memory(self, path):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import ScalarFormatter

        markers = dict(zip(METHODS, "os^DvP"))
        colours = dict(zip(self.plan.backbones, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
        memories = (("analytic training memory, batch 8 (MB)", lambda b, m: analytic_mb(self.main_metrics(b, m), 8)),
                    ("measured LiteRT train step, batch 1 (MB)",
                     lambda b, m: self.memory_metrics(b, m).get("measured_train_mb")))
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), dpi=100)
        try:
            for ax, (title, memory) in zip(axes, memories):
                for b in self.plan.backbones:
                    for m in self.plan.methods:
                        x, y = memory(b, m), self.mean_accuracy(b, m)
                        if x and y is not None:
                            ax.scatter(x, 100 * y, marker=markers[m], color=colours[b], s=45)
                            ax.annotate(m, (x, 100 * y), textcoords="offset points", xytext=(4, 4), fontsize=7)
                ax.set_xscale("log")
                ax.xaxis.set_major_formatter(ScalarFormatter())
                ax.set_xlabel(title)
                ax.set_ylabel("top-1 test accuracy (%)")
                ax.grid(alpha=0.3)
            handles = [plt.Line2D([], [], color=colours[b], marker="o", ls="", label=b) for b in self.plan.backbones]
            handles += [plt.Line2D([], [], color="grey", marker=markers[m], ls="", label=m) for m in self.plan.methods]
            axes[1].legend(handles=handles, fontsize=8, loc="best")
            fig.suptitle(f"{self.plan.resolution} px, {self.plan.epochs} epoch(s); missing runs are not drawn")
            fig.tight_layout()
            fig.savefig(path, format="png")
        finally:
            plt.close(fig)

    def plot_memory_breakdown(self, path):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        backbones, methods = self.plan.backbones, self.plan.methods
        colours = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3")
        names = ("analytic: parameters", "analytic: activations", "LiteRT graph: constants + variables",
                 "LiteRT graph: peak live tensors", "LiteRT measured train step (RSS)")
        fig, axes = plt.subplots(1, len(backbones), figsize=(5.5 * len(backbones), 4.5), dpi=100, squeeze=False)
        try:
            for ax, b in zip(axes[0], backbones):
                for i, m in enumerate(methods):
                    mm = self.memory_metrics(b, m)
                    if not mm:
                        ax.text(i, 0, "missing", rotation=90, ha="center", va="bottom", fontsize=7)
                        continue
                    a = mm["analytic"]["batch1"]
                    fixed = mm["constants_mb"] + mm["variables_mb"]
                    ax.bar(i - 0.27, a["params_mb"], 0.26, color=colours[0])
                    ax.bar(i - 0.27, a["activations_mb"], 0.26, bottom=a["params_mb"], color=colours[1])
                    ax.bar(i, fixed, 0.26, color=colours[2])
                    ax.bar(i, mm["static_peak_mb"], 0.26, bottom=fixed, color=colours[3])
                    ax.bar(i + 0.27, mm["measured_train_mb"], 0.26, color=colours[4])
                ax.set_xticks(range(len(methods)))
                ax.set_xticklabels(methods, rotation=25, ha="right")
                ax.set_ylabel("MB (1e6 bytes)")
                ax.set_title(f"{b}, {self.plan.resolution} px, batch 1")
            axes[0][0].legend(handles=[plt.Rectangle((0, 0), 1, 1, color=c) for c in colours], labels=names, fontsize=7)
            fig.tight_layout()
            fig.savefig(path, format="png")
        finally:
            plt.close(fig)


# ------------------------------------------------------------------------------------------------------ CLI


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_data = DEFAULT_DATA.relative_to(ROOT)
    p.add_argument("--data", help=f"class-per-folder tree with train/ and test/ (default: {default_data}, prepared "
                                  "from ../shared/assets/data when missing)")
    p.add_argument("--out", help=f"folder for results.json and the plots (default: {DEFAULT_OUT.relative_to(ROOT)})")
    p.add_argument("--doc", help="the generated report (default: docs/RESULTS.md, or OUT/RESULTS.md with --out)")
    p.add_argument("--only", nargs="+", choices=PHASES, metavar="PHASE", help=f"phases to run: {', '.join(PHASES)}")
    p.add_argument("--backbones", nargs="+", metavar="NAME",
                   help="main-phase backbones (default: the three MCU nets; the first also serves the lr, batch and "
                        "device phases)")
    p.add_argument("--methods", nargs="+", choices=METHODS, metavar="METHOD", help="methods (default: all six)")
    p.add_argument("--weights-dir", help="folder with the mobilenet-v1 weights (default: ../shared/assets/weights)")
    p.add_argument("--report", action="store_true", help="only regenerate the report and plots from results.json")
    p.add_argument("--quick", action="store_true", help="every phase in miniature: 3 classes of the embedded subset, "
                                                        "64 px, FT-Last and TinyTL-L+B, 1 epoch (needs --out)")
    return p


def make_plan(args):
    plan = QUICK_PLAN if args.quick else Plan()
    if args.backbones:
        from tinytl_tf.backbones import BACKBONES

        unknown = [b for b in args.backbones if b not in BACKBONES or b == MBV1]
        if unknown:
            raise ValueError(f"unknown --backbones {unknown}; valid: {', '.join(b for b in BACKBONES if b != MBV1)}")
        plan = dataclasses.replace(plan, backbones=tuple(args.backbones))
    if args.methods:
        missing = [m for m in args.methods if m not in dict(plan.lr_grid)]
        if missing:
            raise ValueError(f"--methods {missing} have no learning-rate grid in this mode; choose from "
                             f"{list(dict(plan.lr_grid))}")
        plan = dataclasses.replace(plan, methods=tuple(m for m in METHODS if m in args.methods))
    return plan


def run(args, argv):
    if args.quick and not args.out:
        raise ValueError("--quick writes its miniature results into a folder of your choice: pass --out DIR")
    plan = make_plan(args)
    out = Path(args.out) if args.out else DEFAULT_OUT
    doc = Path(args.doc) if args.doc else (out / "RESULTS.md" if args.out else DEFAULT_DOC)
    results = Results(out / "results.json")
    if args.report:
        print(f"wrote {Report(results, plan, doc, out).write()}")
        return
    with tempfile.TemporaryDirectory(prefix="tinytl-quick-") as tmp:
        if args.quick:
            from tinytl_tf.data import default_data_dir

            classes, train, test = plan.quick_subset
            data, name = subset_tree(default_data_dir(), Path(tmp) / "data", train, test, classes), "caltech10 (quick)"
        else:
            data = full_caltech(args.data)
            name = str(data)
        if not (Path(data) / "train").is_dir():
            raise FileNotFoundError(f"{data} has no train/ folder; pass --data DIR with train/<class>/ and "
                                    "test/<class>/")
        ctx = Context(data=Path(data), data_name=name, command=shlex.join(SCRIPT.split() + list(argv)),
                      commit=git_commit(), hardware=hardware(), weights_dir=args.weights_dir)
        try:
            run_phases(args.only or PHASES, results, plan, ctx)
        finally:
            print(f"\nwrote {Report(results, plan, doc, out).write()}", flush=True)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    try:
        run(args, argv)
    except (ValueError, OSError) as e:  # user mistakes: paths, data, names, an unusable results file
        if os.environ.get("TINYTL_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
