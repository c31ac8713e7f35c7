"""The accuracy study: the paper's six transfer methods on its own data sets (CIFAR-10, Stanford Cars) and Caltech-101,
with a training budget long enough for the ordering to settle, tuned learning rates, per-epoch test curves and the
training memory measured on the engine as it is; writes OUT/results.json, docs/RESULTS.md and its plots.

    python -m benchmarks.transfer --data-root DIR [--only PHASE ...] [--datasets NAME ...] [--methods M ...]
    python -m benchmarks.transfer --report                 # regenerate docs/RESULTS.md and the plots from the JSON
    python -m benchmarks.transfer --quick --out DIR        # every phase in miniature on the embedded subset

DIR holds the data sets' archives or their unpacked folders: `cifar10_jpg.tar.gz` (or `cifar10_jpg/`),
`stanford_cars_crop.tar.gz` (or `stanford_cars_crop/`), `caltech101_part1.tar` + `caltech101_part2.tar`. They are
unpacked once into WORK/data (default runs/study) and cut into the train/test trees the study reads (symlinks).

The compute plan (2 CPU cores; mcunet-5fps at 128 px, batch 8, Keras trains TinyTL-L+B and FT-Full ~60 images/s,
TinyTL-B ~90, FT-Last ~200): about 15 hours in all, so it runs over several sittings and resumes where it stopped.
  lr      per data set and method, peak learning rates on a factor-3 grid, each trained for `lr_epochs` (5: a full
          cosine schedule of a quarter of the main budget's steps, 2,500 on CIFAR-10, not a few hundred, which
          favour large rates) on 80% of the training split and scored on the other 20%; a grid whose best value is
          at an edge is extended past it (up to 3 times), so the chosen value is an interior optimum. The test
          split is never read.                                                                           (~5 h)
  main    every method for `epochs` (20) on the whole training split with its chosen rate; test top-1 after every
          epoch (the curve) and at the end. Seeds 0 and 1 for FT-Last, FT-Full and TinyTL-L+B on CIFAR-10 and
          Cars; proxyless-w0.3 and mbv2-w0.35 on CIFAR-10 for FT-Last, TinyTL-B, TinyTL-L+B, FT-Full with the rates
          chosen on mcunet-5fps.                                                                         (~8 h)
  memory  every (data set, method) network exported and its LiteRT train step measured at batch 1.   (~0.3 h)
  batch   TinyTL-L+B on CIFAR-10 at batch 1 in Keras, lr = the batch-8 lr / 8, the same epochs.          (~2 h)
  device  the same network exported and trained by the LiteRT trainer at batch 1 for the same epochs.   (~0.7 h)
  adam8bit TinyTL-L+B on CIFAR-10 as in main (seed 0, its rate), Adam's moments stored in 8 bits (the
          `adam8bit` optimizer), beside main's float-Adam seeds.                                        (~0.5 h)
CIFAR-10 uses the first 500 training images of each class (by file name) and the full test split (its curve: the
first 100 test images of each class); Cars its fixed 80/20 split of the official training half; Caltech-101 the
official split without BACKGROUND_Google.

A run is keyed by (phase, data set, backbone, method, resolution, batch, seed, lr, epochs). Mid-run state (weights,
optimizer, epoch; `keras.callbacks.BackupAndRestore`) and the curve so far live in WORK/state/<run>/, so an
interrupted run continues from its last finished epoch (the data order after a resume is the seed's order of a new
iteration, so a resumed run is a valid run of the recipe but not bit-identical to an uninterrupted one; the record
says where it resumed). A finished run is written at once (atomically) into OUT/results.json with its curve,
numbers, wall time, commit, hardware and command; running the script again skips it. The report is regenerated
from the JSON after every run and by --report; a run that is not in the JSON shows as missing, never as a number.
"""

import argparse
import dataclasses
import datetime
import functools
import hashlib
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

from tinytl_tf.atomic import atomic_write
from tinytl_tf.cliargs import run_command
from tinytl_tf.contract import METHODS

ROOT = Path(__file__).resolve().parents[1]

PHASES = ("lr", "main", "memory", "batch", "device", "adam8bit")
DEFAULT_OUT = ROOT / "docs" / "results"
DEFAULT_DOC = ROOT / "docs" / "RESULTS.md"
DEFAULT_WORK = ROOT / "runs" / "study"
SCRIPT = "python -m benchmarks.transfer"
RESULTS_FORMAT = "tinytl_tf/transfer-results-v2"
HOLDOUT_FRACTION = 0.2
EVAL_BATCH = 64  # evaluation batch, whatever the training batch
ON_DEVICE_METHOD = "tinytl-lb"
KEY_METHODS = ("ft-last", "tinytl-b", "tinytl-lb", "ft-full")  # the paper's claim in four methods
LR_EXTENSIONS = 3  # how many times a grid whose best value is at an edge is extended past it
# Peak learning rates first tried per method (Adam, cosine decay to 0), factor 3 apart, centred where an earlier
# 5-epoch CIFAR-10 grid peaked; a grid whose best value is at an edge is extended past it.
LR_GRID = {
    "ft-last": (1e-3, 3e-3, 1e-2),
    "ft-norm-last": (1e-3, 3e-3, 1e-2),
    "ft-full": (1e-4, 3e-4, 1e-3),
    "tinytl-b": (3e-4, 1e-3, 3e-3),
    "tinytl-l": (3e-4, 1e-3, 3e-3),
    "tinytl-lb": (3e-4, 1e-3, 3e-3),
}
assert tuple(LR_GRID) == METHODS


@dataclasses.dataclass(frozen=True)
class DataSet:
    """One data set of the study: where it comes from, how it is cut, and the paper's row for it."""

    name: str
    title: str
    label_smoothing: float  # the paper's recipe: 0.1 for CIFAR, larger for fine-grained sets
    train_per_class: int | None = None  # None: every training image
    curve_per_class: int | None = None  # test images per class scored after every epoch; None: the whole test
    seeds: tuple = (0,)  # seeds of FT-Last, FT-Full and TinyTL-L+B (the others run seed 0)
    backbones: tuple = ()  # backbones besides the study's first, for KEY_METHODS
    paper: dict | None = None  # top-1 % per method, ProxylessNAS-Mobile at 224 px (the paper's Table 2)


DATASETS = {
    "cifar10": DataSet(
        "cifar10",
        "CIFAR-10",
        0.1,
        train_per_class=500,
        curve_per_class=100,
        seeds=(0, 1),
        backbones=("proxyless-w0.3", "mbv2-w0.35"),
        paper={
            "ft-last": 85.9,
            "tinytl-b": 93.7,
            "tinytl-l": 96.1,
            "tinytl-lb": 95.9,
            "ft-norm-last": 94.8,
            "ft-full": 97.1,
        },
    ),
    "cars": DataSet(
        "cars",
        "Stanford Cars (cropped; fixed 80/20 split of the official training half)",
        0.7,
        seeds=(0, 1),
        paper={
            "ft-last": 50.9,
            "tinytl-b": 73.4,
            "tinytl-l": 84.2,
            "tinytl-lb": 85.0,
            "ft-norm-last": 77.9,
            "ft-full": 90.2,
        },
    ),
    "caltech101": DataSet("caltech101", "Caltech-101 (official split without BACKGROUND_Google)", 0.1),
}
QUICK_DATASET = DataSet(
    "caltech10-quick",
    "the embedded Caltech-101 subset, first 3 classes (quick mode)",
    0.1,
    train_per_class=10,
    curve_per_class=2,
    seeds=(0, 1),
)
SEEDED_METHODS = ("ft-last", "ft-full", "tinytl-lb")


@dataclasses.dataclass(frozen=True)
class Plan:
    """What the study trains. The first backbone is the one every data set and learning rate is studied on."""

    datasets: tuple = tuple(DATASETS)
    backbone: str = "mcunet-5fps"
    methods: tuple = METHODS
    resolution: int = 128
    epochs: int = 20
    lr_epochs: int = 5
    batch_size: int = 8
    lr_grid: tuple = tuple(LR_GRID.items())  # ((method, (lr, ...)), ...)
    batch1_lr_divisor: float = 8.0  # linear scaling; the paper's Aircraft pair is 1.6e-3 at batch 8, 2e-4..3e-4 at 1
    batch1_dataset: str = "cifar10"
    quick: bool = False

    def grid(self, method):
        return dict(self.lr_grid)[method]

    def dataset(self, name):
        return QUICK_DATASET if self.quick else DATASETS[name]

    def seeds_of(self, data, method):
        return self.dataset(data).seeds if method in SEEDED_METHODS else (0,)


QUICK_PLAN = Plan(
    datasets=("caltech10-quick",),
    methods=("ft-last", "tinytl-lb"),
    resolution=48,
    epochs=2,
    lr_epochs=1,
    lr_grid=(("ft-last", (1e-2, 3e-2)), ("tinytl-lb", (3e-3,))),
    batch1_dataset="caltech10-quick",
    quick=True,
)


class Spec(NamedTuple):
    """The identity of one run."""

    phase: str
    data: str
    backbone: str
    method: str
    resolution: int
    batch: int
    seed: int
    lr: float | None  # None where no training happens (memory)
    epochs: int

    @property
    def key(self):
        lr = "-" if self.lr is None else f"{self.lr:g}"
        return (
            f"{self.phase}/{self.data}/{self.backbone}/{self.method}/{self.resolution}px/b{self.batch}/"
            f"s{self.seed}/lr{lr}/e{self.epochs}"
        )

    @property
    def state_name(self):
        """A folder name for the run's mid-run state."""
        return self.key.replace("/", "_") + "-" + hashlib.sha1(self.key.encode()).hexdigest()[:8]


# ----------------------------------------------------------------------------------------------- results file


class Results:
    """OUT/results.json: finished runs by key, phases skipped (with the reason) and runs that failed. Rewritten
    atomically after every change, so an interruption loses at most the epoch in progress."""

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
                raise ValueError(
                    f"{self.path} is not a results file of this version of benchmarks/transfer.py; "
                    "move it away or pass another --out"
                )
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

    def _save(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {"format": RESULTS_FORMAT, "runs": self.runs, "skipped": self.skipped, "failed": self.failed}
        atomic_write(self.path, lambda p: Path(p).write_text(json.dumps(data, indent=1)))


@dataclasses.dataclass(frozen=True)
class Context:
    """What every run records beside its numbers, and where it reads and keeps its files."""

    trees: dict  # data set name -> StudyData
    work: Path
    command: str
    commit: str
    hardware: str


@functools.cache  # read once per process: the study runs one checkout
def engine_fingerprint():
    """A hash of the package's source (tinytl_tf/**/*.py): a memory record measured under another one measured an
    engine that is no longer the code's, so the memory phase measures it again and the report does not show it."""
    digest = hashlib.sha256()
    package = ROOT / "tinytl_tf"
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def current(record):
    """Whether a recorded run still stands: a memory measurement only for the engine it measured."""
    return record["phase"] != "memory" or record["metrics"].get("engine") == engine_fingerprint()


def git_commit():
    """HEAD's hash, with "+uncommitted" when tracked code differs from it (the numbers then come from that code;
    the results files this script rewrites do not count)."""
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            [
                "git",
                "-C",
                str(ROOT),
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                "tinytl_tf",
                "export",
                "benchmarks",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head + ("+uncommitted" if dirty else "")


def portable_path(path):
    """`path` as a record keeps it: relative to the checkout when inside it, else by its last component (where one
    machine keeps its folders is no part of a result, and the data set itself is named by the record)."""
    p = Path(path)
    if not p.is_absolute():
        return str(path)
    try:
        return str(p.resolve().relative_to(ROOT))
    except ValueError:
        return p.name


def portable_command(script, argv):
    """The command line a record keeps: `script` and `argv` with every absolute path made portable."""

    def token(t):
        option, eq, value = t.partition("=")
        return f"{option}={portable_path(value)}" if eq and option.startswith("--") else portable_path(t)

    return shlex.join(script.split() + [token(t) for t in argv])


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
    if spec in results and current(results.get(spec)):
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
    record = {
        "key": spec.key,
        **spec._asdict(),
        "metrics": metrics,
        "seconds": round(seconds, 1),
        "load_average": load,
        "finished": datetime.datetime.now().isoformat(timespec="seconds"),
        "commit": ctx.commit,
        "hardware": ctx.hardware,
        "command": ctx.command,
        "data_source": ctx.trees[spec.data].source if spec.data in ctx.trees else spec.data,
    }
    results.add(record)
    shown = {k: metrics[k] for k in ("holdout_accuracy", "test_accuracy", "measured_train_mb") if k in metrics}
    print(f"{label}: {json.dumps(shown)} in {seconds:.0f} s", flush=True)


# ---------------------------------------------------------------------------------------------------- data


@dataclasses.dataclass(frozen=True)
class StudyData:
    """A data set cut for the study: `tree` (train/<class>/, test/<class>/), `curve` (a test-style tree scored after
    every epoch) and `source` (where it came from, relative to the data root)."""

    tree: Path
    curve: Path
    source: str


@functools.lru_cache(maxsize=8)
def folder_split(tree):
    """The validated split of a class-per-folder tree (decodes every image once, so it is cached)."""
    from tinytl_tf import imagefiles

    return imagefiles.scan_image_folder(tree)


def link_tree(dest, parts):
    """Build `dest/<part>/<class>/<file>` symlinks from {part: [(class, source path)]}, atomically: a half-built tree
    is never left where a finished one is expected."""
    dest = Path(dest)
    if dest.is_dir():
        return dest
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    for part, files in parts.items():
        for cls, src in files:
            folder = tmp / part / cls
            folder.mkdir(parents=True, exist_ok=True)
            (folder / Path(src).name).symlink_to(Path(src).resolve())
    os.replace(tmp, dest)
    return dest


def first_per_class(root, per_class):
    """[(class, path)] of the first `per_class` images (by file name) of each class folder of `root`."""
    out = []
    for cls in sorted(p.name for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(f for f in (Path(root) / cls).iterdir() if f.is_file() and not f.name.startswith("."))
        out += [(cls, f) for f in files[:per_class]]
    return out


def unpack(data_root, work, folder, archives):
    """`data_root/folder` if it is there, else the archives unpacked once into `work/data/folder`."""
    given = Path(data_root) / folder
    if given.is_dir():
        return given
    target = Path(work) / "data" / folder
    if target.is_dir():
        return target
    missing = [a for a in archives if not (Path(data_root) / a).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{data_root} holds neither {folder}/ nor {', '.join(missing)}; pass --data-root DIR "
            "with the data sets' archives"
        )
    tmp = Path(
        tempfile.mkdtemp(prefix=".unpack.", dir=target.parent if target.parent.is_dir() else _mkdir(target.parent))
    )
    for a in archives:
        print(f"unpacking {a}", file=sys.stderr, flush=True)
        with tarfile.open(Path(data_root) / a) as t:
            t.extractall(tmp, filter="data")
    inner = tmp / folder if (tmp / folder).is_dir() else tmp
    os.replace(inner, target)
    shutil.rmtree(tmp, ignore_errors=True)
    return target


def _mkdir(path):
    Path(path).mkdir(parents=True, exist_ok=True)
    return Path(path)


def prepare_dataset(ds, data_root, work):
    """Cut data set `ds` into the study's trees under WORK/trees (once)."""
    trees = _mkdir(Path(work) / "trees")
    if ds.name == "cifar10":
        src = unpack(data_root, work, "cifar10_jpg", ["cifar10_jpg.tar.gz"])
        tree = link_tree(
            trees / f"cifar10-{ds.train_per_class}",
            {"train": first_per_class(src / "train", ds.train_per_class), "test": first_per_class(src / "test", None)},
        )
        curve = link_tree(
            trees / f"cifar10-curve-{ds.curve_per_class}", {"test": first_per_class(src / "test", ds.curve_per_class)}
        )
        return StudyData(tree, curve, f"cifar10_jpg: first {ds.train_per_class} train images per class, full test")
    if ds.name == "cars":
        src = unpack(data_root, work, "stanford_cars_crop", ["stanford_cars_crop.tar.gz"])

        def listed(name):
            lines = [ln.strip() for ln in (src / name).read_text().splitlines() if ln.strip()]
            return [(ln.split("/")[0], src / ln) for ln in lines]

        tree = link_tree(trees / "cars", {"train": listed("train.txt"), "test": listed("test.txt")})
        return StudyData(tree, tree, "stanford_cars_crop: train.txt / test.txt")
    if ds.name == "caltech101":
        from tinytl_tf.jobs.caltech import prepare_caltech101

        tree = trees / "caltech101"
        if not tree.is_dir():
            prepare_caltech101(Path(data_root), tree)
        return StudyData(tree, tree, "caltech101_part1.tar + caltech101_part2.tar: train.txt / test.txt")
    raise ValueError(f"unknown data set {ds.name!r}")


def quick_dataset(work):
    from tinytl_tf.data import default_data_dir

    src = default_data_dir()
    classes = sorted(p.name for p in (src / "train").iterdir())[:3]

    def pick(part, n):
        return [(c, f) for c, f in first_per_class(src / part, n) if c in classes]

    trees = _mkdir(Path(work) / "trees")
    tree = link_tree(trees / "quick", {"train": pick("train", QUICK_DATASET.train_per_class), "test": pick("test", 4)})
    curve = link_tree(trees / "quick-curve", {"test": pick("test", QUICK_DATASET.curve_per_class)})
    return StudyData(tree, curve, "embedded caltech10: 3 classes")


# ------------------------------------------------------------------------------------------------ training


def keras_verbosity():
    return 1 if sys.stderr.isatty() else 2  # a progress bar on a terminal, one line per epoch in a log


def analytic_memory(cfg):
    """The paper's analytic training memory of the network actually trained, at batch 1 and 8 (MB)."""
    from tinytl_tf.memory import training_memory

    out = {}
    for batch in (1, 8):
        r = training_memory(cfg, batch)
        out[f"batch{batch}"] = {"params_mb": r.params_mb, "activations_mb": r.activations_mb, "total_mb": r.total_mb}
    return out


def evaluate(model, dataset):
    """Top-1 accuracy in big batches."""
    from tinytl_tf.train import accuracy

    return accuracy(model, dataset.unbatch().batch(EVAL_BATCH))


def pretrained(spec):
    """`spec`'s pretrained backbone in a fresh Keras session, every generator seeded by `spec.seed` (so the new head
    and lite branches that `prepare_transfer` draws next are the same in every run of this seed)."""
    import keras

    from tinytl_tf.backbones import load_backbone
    from tinytl_tf.train import seed_everything

    keras.backend.clear_session()
    reproducibility = seed_everything(spec.seed)
    return load_backbone(spec.backbone, spec.resolution), reproducibility


def transfer_model(base, spec, class_names):
    from tinytl_tf.transfer import prepare_transfer

    return prepare_transfer(base, spec.method, len(class_names), labels=class_names)


def curve_recorder(model, dataset, path):
    """A Keras callback that scores `dataset` after every epoch and keeps {epoch: (accuracy, seconds)} in `path`
    (atomically), so a resumed run keeps the curve of the epochs it did before."""
    import keras

    curve = json.loads(Path(path).read_text()) if Path(path).exists() else {}

    class CurveRecorder(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.time()

        def on_epoch_end(self, epoch, logs=None):
            seconds = time.time() - self.start
            acc = evaluate(model, dataset)
            curve[str(epoch + 1)] = {
                "accuracy": acc,
                "train_seconds": round(seconds, 1),
                "train_accuracy": float((logs or {}).get("accuracy", float("nan"))),
                "loss": float((logs or {}).get("loss", float("nan"))),
            }
            atomic_write(path, lambda p: Path(p).write_text(json.dumps(curve)))
            print(f"  epoch {epoch + 1}: curve accuracy {acc:.4f}", file=sys.stderr, flush=True)

    return CurveRecorder(), curve


def train_run(spec, data, state, label_smoothing, lr_phase=False, optimizer="adam"):
    """Fine-tune per `spec` for `spec.epochs` with the paper's recipe (Adam; `optimizer` "adam8bit": with 8-bit
    moments), resumable from `state`; evaluate.

    lr phase: train on 80% of the training split, score the other 20% after every epoch (the test split is never
    read). Otherwise: the whole training split, the curve set after every epoch and the full test split at the end.
    """
    import keras

    from tinytl_tf.backbones import count_params
    from tinytl_tf.data import load_eval_folder, load_image_folder
    from tinytl_tf.train import compile_model, steps_per_epoch

    base, reproducibility = pretrained(spec)
    cfg = base.net_config
    images = load_image_folder(
        data.tree,
        cfg.resolution,
        cfg.input_mean,
        cfg.input_std,
        spec.batch,
        seed=spec.seed,
        holdout_fraction=HOLDOUT_FRACTION if lr_phase else None,
    )
    model = transfer_model(base, spec, images.class_names)
    if lr_phase:
        scored = images.holdout
    else:
        scored = load_eval_folder(
            data.curve, cfg.resolution, cfg.input_mean, cfg.input_std, EVAL_BATCH, class_names=images.class_names
        ).test
    steps = steps_per_epoch(images.train)
    compile_model(model, spec.lr, spec.epochs * steps, label_smoothing, optimizer)
    state = _mkdir(state)
    recorder, curve = curve_recorder(model, scored, state / "curve.json")
    resumed_at = len(curve)
    backup = keras.callbacks.BackupAndRestore(str(state / "backup"))
    history = model.fit(
        images.train, epochs=spec.epochs, verbose=keras_verbosity(), shuffle=False, callbacks=[recorder, backup]
    )
    trainable, total = count_params(model)
    epochs = [curve[str(e)] for e in range(1, spec.epochs + 1)]
    metrics = {
        "epochs": spec.epochs,
        "steps": spec.epochs * steps,
        "train_examples": images.num_train,
        "train_seconds": round(sum(e["train_seconds"] for e in epochs), 1),
        "train_accuracy": float(history.history["accuracy"][-1])
        if history.history.get("accuracy")
        else epochs[-1]["train_accuracy"],
        "curve": [e["accuracy"] for e in epochs],
        "loss_curve": [e["loss"] for e in epochs],
        "trainable_params": trainable,
        "total_params": total,
        "num_classes": len(images.class_names),
        "label_smoothing": label_smoothing,
        "optimizer": optimizer,
        "reproducibility": reproducibility,
        "resumed_at_epoch": resumed_at,
    }
    if lr_phase:
        metrics.update(holdout_accuracy=epochs[-1]["accuracy"], holdout_examples=images.num_holdout)
    else:
        metrics.update(
            test_accuracy=evaluate(model, images.test),
            test_examples=images.num_test,
            curve_examples=sum(1 for _ in scored.unbatch()),
        )
    shutil.rmtree(state, ignore_errors=True)
    return {**metrics, "analytic": analytic_memory(model.net_config)}


def measure_run(spec, data):
    """LiteRT memory of the network `spec` trains, exported with its method's trainable set (batch 1)."""
    from tinytl_tf.jobs.memory import measure_model

    base, _ = pretrained(spec)
    model = transfer_model(base, spec, folder_split(data.tree).class_names)
    measured = measure_model(model, progress=lambda stage: print(f"  {stage}", file=sys.stderr, flush=True))
    return {**measured, "analytic": analytic_memory(model.net_config), "engine": engine_fingerprint()}


def device_run(spec, data, state):
    """Export the pretrained network with its new head and train it with the LiteRT trainer for `spec.epochs` at
    batch 1 (Adam, the in-model cosine schedule over all the steps; the trainer's own checkpoint resumes it), then
    evaluate it on the test split with LiteRT."""
    from tinytl_tf.export import export_model
    from tinytl_tf.ondevice import evaluate_folder, train_folder

    split = folder_split(data.tree)
    base, reproducibility = pretrained(spec)
    model = transfer_model(base, spec, split.class_names)
    state = _mkdir(state)
    path, checkpoint = state / "model.tflite", state / "checkpoint.npz"
    start = time.time()
    if not path.exists():
        export_model(model, path, "adam", lr=spec.lr, total_steps=spec.epochs * len(split.train))
    export_seconds = time.time() - start
    summary = train_folder(path, data.tree, spec.epochs, checkpoint, seed=spec.seed, progress=sys.stderr)
    result = evaluate_folder(path, data.tree, checkpoint)
    metrics = {
        "test_accuracy": result["accuracy"],
        "test_examples": result["examples"],
        "epochs": spec.epochs,
        "steps": summary["global_steps"],
        "train_examples": summary["train_examples"],
        "train_accuracy": summary["accuracy"],
        "train_seconds": round(summary["seconds"], 1),
        "steps_per_s": summary["steps_per_s"],
        "rolled_back": summary["rolled_back"],
        "export_seconds": round(export_seconds, 1),
        "tflite_mb": path.stat().st_size / 1e6,
        "reproducibility": reproducibility,
    }
    shutil.rmtree(state, ignore_errors=True)
    return metrics


# --------------------------------------------------------------------------------------------------- phases


def next_rate(lr, up):
    """The next value of the 1-3-10 sequence (..., 1e-3, 3e-3, 1e-2, ...) above or below `lr`."""
    exponent = math.floor(math.log10(lr)) - 1
    values = [m * 10.0**e for e in range(exponent, exponent + 3) for m in (1, 3)]
    values = [float(f"{v:.1g}") for v in values]
    return min(v for v in values if v > lr * 1.01) if up else max(v for v in values if v < lr * 0.99)


def lr_trials(results, plan, data, method):
    """The learning rates to try for (data, method): the grid, extended past an edge (the next value of the 1-3-10
    sequence) while the best finished value sits there, at most LR_EXTENSIONS times."""
    grid = sorted(plan.grid(method))
    for _ in range(LR_EXTENSIONS if len(grid) > 1 else 0):
        scores = lr_scores(results, plan, data, method, grid)
        if len(scores) < len(grid):
            break
        best = best_lr(scores)
        if best == grid[0]:
            grid.insert(0, next_rate(grid[0], up=False))
        elif best == grid[-1]:
            grid.append(next_rate(grid[-1], up=True))
        else:
            break
    return grid


def lr_spec(plan, data, method, lr):
    return Spec("lr", data, plan.backbone, method, plan.resolution, plan.batch_size, 0, lr, plan.lr_epochs)


def lr_scores(results, plan, data, method, lrs):
    """{lr: holdout accuracy} of the finished trials among `lrs`."""
    runs = {lr: results.get(lr_spec(plan, data, method, lr)) for lr in lrs}
    return {lr: r["metrics"]["holdout_accuracy"] for lr, r in runs.items() if r}


def best_lr(scores):
    return max(scores, key=lambda lr: (scores[lr], -lr))  # ties go to the smaller rate


def chosen_lr(results, plan, data, method):
    """The chosen rate of (data, method), or None while its trials are unfinished."""
    lrs = lr_trials(results, plan, data, method)
    scores = lr_scores(results, plan, data, method, lrs)
    if len(scores) < len(lrs):
        return None
    return best_lr(scores)


def lr_specs(results, plan):
    return [
        lr_spec(plan, d, m, lr) for d in plan.datasets for m in plan.methods for lr in lr_trials(results, plan, d, m)
    ]


def main_specs(results, plan):
    """Main runs whose rates are chosen; the rest wait for their lr phase."""
    specs = []
    for d in plan.datasets:
        for m in plan.methods:
            lr = chosen_lr(results, plan, d, m)
            if lr is None:
                continue
            backbones = (plan.backbone,) + (plan.dataset(d).backbones if m in KEY_METHODS else ())
            specs += [
                Spec("main", d, b, m, plan.resolution, plan.batch_size, s, lr, plan.epochs)
                for b in backbones
                for s in (plan.seeds_of(d, m) if b == plan.backbone else (0,))
            ]
    # every method's first run before any repeat, the paper's claim (FT-Last, TinyTL-L+B, FT-Full) first: a study
    # stopped early still tests it
    first = ("ft-last", "tinytl-lb", "ft-full")
    return sorted(
        specs,
        key=lambda spec: (
            spec.backbone != plan.backbone,
            spec.seed,
            first.index(spec.method) if spec.method in first else len(first),
        ),
    )


def memory_specs(plan):
    return [
        Spec("memory", d, plan.backbone, m, plan.resolution, 1, 0, None, 0) for d in plan.datasets for m in plan.methods
    ]


def _batch1_lr(results, plan):
    """TinyTL-L+B's chosen batch-8 rate on the batch-1 data set, or None while it is not chosen (or not planned)."""
    d = plan.batch1_dataset
    if d not in plan.datasets or ON_DEVICE_METHOD not in plan.methods:
        return None
    return chosen_lr(results, plan, d, ON_DEVICE_METHOD)


def batch_spec(results, plan, phase):
    """The batch-1 TinyTL-L+B run of the `batch` (Keras) or `device` (LiteRT) phase, once its rate is chosen."""
    lr = _batch1_lr(results, plan)
    if lr is None:
        return None
    lr1 = lr / plan.batch1_lr_divisor
    return Spec(phase, plan.batch1_dataset, plan.backbone, ON_DEVICE_METHOD, plan.resolution, 1, 0, lr1, plan.epochs)


def adam8bit_spec(results, plan):
    """The 8-bit-Adam twin of main's seed-0 TinyTL-L+B run on the batch-1 data set, once its rate is chosen."""
    lr = _batch1_lr(results, plan)
    if lr is None:
        return None
    d = plan.batch1_dataset
    return Spec("adam8bit", d, plan.backbone, ON_DEVICE_METHOD, plan.resolution, plan.batch_size, 0, lr, plan.epochs)


def phase_runs(phase, results, plan, ctx):
    """[(spec, compute)] of one phase."""

    def state(spec):
        return ctx.work / "state" / spec.state_name

    def smoothing(spec):
        return plan.dataset(spec.data).label_smoothing

    if phase == "lr":
        return [
            (s, functools.partial(train_run, s, ctx.trees[s.data], state(s), smoothing(s), lr_phase=True))
            for s in lr_specs(results, plan)
        ]
    if phase == "main":
        return [
            (s, functools.partial(train_run, s, ctx.trees[s.data], state(s), smoothing(s)))
            for s in main_specs(results, plan)
        ]
    if phase == "memory":
        return [(s, functools.partial(measure_run, s, ctx.trees[s.data])) for s in memory_specs(plan)]
    if phase == "adam8bit":
        s = adam8bit_spec(results, plan)
        compute = functools.partial(train_run, s, ctx.trees[s.data], state(s), smoothing(s), optimizer="adam8bit")
        return [(s, compute)] if s else []
    s = batch_spec(results, plan, phase)
    if s is None:
        return []
    if phase == "batch":
        return [(s, functools.partial(train_run, s, ctx.trees[s.data], state(s), smoothing(s)))]
    return [(s, functools.partial(device_run, s, ctx.trees[s.data], state(s)))]


def run_phases(phases, results, plan, ctx):
    for phase in phases:
        tolerated = ()
        if phase == "memory":  # a measurement that fails (e.g. times out) is reported; the others still run
            from tinytl_tf.memory.measure import MeasurementError

            tolerated = (MeasurementError,)
        # the lr phase grows while it runs (an edge extends the grid): list it again until nothing is left
        while True:
            pending = [
                (s, c)
                for s, c in phase_runs(phase, results, plan, ctx)
                if (s not in results or not current(results.get(s))) and s.key not in results.failed
            ]
            if not pending:
                break
            print(f"\n== {phase}: {len(pending)} runs to do", flush=True)
            for i, (spec, compute) in enumerate(pending, 1):
                execute(results, ctx, spec, compute, f"{i}/{len(pending)}", tolerated)
            if phase != "lr":
                break
        if phase in ("main", "batch", "device", "adam8bit"):
            waiting = [
                f"{d}/{m}" for d in plan.datasets for m in plan.methods if chosen_lr(results, plan, d, m) is None
            ]
            if waiting:
                print(
                    f"{phase}: runs of {', '.join(waiting)} wait for their learning rate (`{SCRIPT} --only lr`)",
                    file=sys.stderr,
                    flush=True,
                )


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


def mean(values):
    return sum(values) / len(values) if values else None


def table(header, rows):
    """Markdown table lines; short rows are padded with empty cells."""
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return out + ["| " + " | ".join(map(str, row + [""] * (len(header) - len(row)))) + " |" for row in rows]


class Report:
    """docs/RESULTS.md and its plots, from the results file and the plan alone."""

    def __init__(self, results, plan, doc, out):
        self.results, self.plan, self.doc, self.out = results, plan, Path(doc), Path(out)

    def lr(self, data, method):
        return chosen_lr(self.results, self.plan, data, method)

    def main_runs(self, data, method, backbone=None):
        """The finished main runs of (data, method, backbone), one per seed."""
        p, lr = self.plan, self.lr(data, method)
        if lr is None:
            return []
        b = backbone or p.backbone
        seeds = p.seeds_of(data, method) if b == p.backbone else (0,)
        specs = [Spec("main", data, b, method, p.resolution, p.batch_size, s, lr, p.epochs) for s in seeds]
        return [self.results.get(s)["metrics"] for s in specs if s in self.results]

    def accuracy(self, data, method, backbone=None):
        return mean([r["test_accuracy"] for r in self.main_runs(data, method, backbone)])

    def memory(self, data, method):
        """The memory run's metrics, if it measured the engine as the code has it now (else {}: missing)."""
        p = self.plan
        record = self.results.get(Spec("memory", data, p.backbone, method, p.resolution, 1, 0, None, 0))
        return metrics_of(record) if record and current(record) else {}

    def write(self):
        self.out.mkdir(parents=True, exist_ok=True)
        figures = {d: self.out / f"curves_{d}.png" for d in self.plan.datasets}
        for d, path in figures.items():  # a data set with no finished run has no curve to plot
            if any(self.main_runs(d, m) for m in self.plan.methods):
                self.plot_curves(d, path)
            else:
                path.unlink(missing_ok=True)
        links = {k: os.path.relpath(v, self.doc.parent) if v.exists() else None for k, v in figures.items()}
        text = "\n".join(self.document(links)) + "\n"
        self.doc.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.doc, lambda p: Path(p).write_text(text))
        return self.doc

    def document(self, links):
        p = self.plan
        lines = [
            "# Results: TinyTL's accuracy claim on the paper's data sets",
            "",
            f"Generated by `{SCRIPT}` from `{os.path.relpath(self.results.path, self.doc.parent)}` "
            f"(regenerate with `{SCRIPT} --report`). Every number below is read from a run recorded there; "
            "a run that has not been done yet shows as *missing*.",
            "",
        ]
        runs = list(self.results.runs.values())

        def listing(field, show=str):
            values = [r[field] for r in runs]
            return ", ".join(f"{show(v)} ({values.count(v)} runs)" for v in sorted(set(values)))

        if runs:
            lines += [
                f"- Hardware: {listing('hardware')}.",
                f"- Commit: {listing('commit', short_commit)}.",
                f"- Commands: {listing('command', lambda c: f'`{c}`')}.",
                "",
            ]
        lines += self.progress() + [""] + self.recipe() + [""]
        for d in p.datasets:
            lines += self.dataset_section(d, links[d]) + [""]
        for section in (self.backbones_section, self.batch_section, self.adam8bit_section, self.shows):
            lines += section() + [""]
        return lines + self.runs_section()

    def progress(self):
        rows = []
        for phase in PHASES:
            done = [r for r in self.results.runs.values() if r["phase"] == phase]
            rows.append([phase, len(done), f"{sum(r['seconds'] for r in done) / 3600:.1f}"])
        return ["## Progress", "", "The study runs over several sittings; finished runs so far:", ""] + table(
            ["phase", "runs recorded", "wall time (h)"], rows
        )

    def recipe(self):
        p = self.plan
        smoothing = ", ".join(
            f"{p.dataset(d).title.split(' (')[0]} {p.dataset(d).label_smoothing:g}" for d in p.datasets
        )
        return [
            "## Recipe",
            "",
            f"- Backbone {p.backbone} (ImageNet, its 8-bit weights dequantized to float, BN folded into the convs) at "
            f"{p.resolution} px; a new linear head (dropout 0.2 before it); lite residual branches only in TinyTL-L "
            "and TinyTL-L+B (random init, last norm scale 0: they start as no-ops).",
            f"- Adam (0.9, 0.999, 1e-8), batch {p.batch_size}, cosine decay of the learning rate to 0 per step, no "
            f"warm-up, label smoothing ({smoothing}), as in the paper's training setup; {p.epochs} epochs. Train: "
            "random-resized crop (scale 0.22-1) + horizontal flip; test: shorter side to size/0.875 + centre crop.",
            f"- Learning rate per data set and method: the best holdout top-1 after {p.lr_epochs} epochs (a full "
            f"cosine schedule) on {1 - HOLDOUT_FRACTION:.0%} of the training split, scored on the other "
            f"{HOLDOUT_FRACTION:.0%}; factor-3 grids extended past an edge until the best value is inside (at most "
            f"{LR_EXTENSIONS} times). The test split is never read for it.",
            "- Reported: test top-1 after the last epoch (the paper reports the last epoch too), mean over seeds; "
            "the curve is test top-1 after every epoch. Seed = data order, augmentation, head and lite-branch "
            "initialisation, dropout; ops deterministic.",
            "- The paper's figures are for ProxylessNAS-Mobile at 224 px (its Table 2), a 4x larger network at 3x the "
            "pixels, trained 50 epochs on the full data sets: compare the ordering and the gaps, not the levels.",
            "- Measured memory: the network exported to one builtins-only `.tflite` with the export's default "
            "optimizer (Adam with 8-bit moments) and its `train` signature run at batch 1 in a fresh LiteRT process "
            "(peak RSS minus RSS after loading, XNNPACK off; `tinytl_tf.memory.measure`), on the engine as the "
            "code has it now (a measurement of other engine code is not shown).",
        ]

    def dataset_section(self, d, link):
        p = self.plan
        ds = p.dataset(d)
        lines = [f"## {ds.title}", ""]
        first = next((r for m in p.methods for r in self.main_runs(d, m)), None)
        if first:
            lines += [
                f"{first['num_classes']} classes, {first['train_examples']} training and {first['test_examples']}"
                f" test images; the curve scores {first['curve_examples']} test images.",
                "",
            ]
        rows = []
        for m in p.methods:
            runs, memory = self.main_runs(d, m), self.memory(d, m)
            accs = [r["test_accuracy"] for r in runs]
            spread = f" ({pct(min(accs))}-{pct(max(accs))}, {len(accs)} seeds)" if len(accs) > 1 else ""
            rows.append(
                [
                    m,
                    lr_text(self.lr(d, m)),
                    pct(mean(accs)) + spread,
                    "-" if not ds.paper else f"{ds.paper[m]:.1f}",
                    shown(runs[0]["trainable_params"] if runs else None),
                    mb(memory.get("measured_train_mb")),
                    mb(analytic_mb(memory, 1)),
                    shown(runs[0]["train_seconds"] if runs else None),
                ]
            )
        lines += table(
            [
                "method",
                "lr",
                f"top-1 % ({p.epochs} epochs)",
                "paper top-1 %",
                "trainable params",
                "LiteRT train MB (b1, measured)",
                "analytic MB (b1)",
                "train s (seed 0)",
            ],
            rows,
        )
        lines += ["", f"![test accuracy per epoch, {ds.title}]({link})" if link else "No curves yet.", ""]
        lines += self.lr_table(d)
        return lines

    def lr_table(self, d):
        rows = []
        for m in self.plan.methods:
            lrs = lr_trials(self.results, self.plan, d, m)
            scores = lr_scores(self.results, self.plan, d, m, lrs)
            chosen = self.lr(d, m)
            cells = [
                (f"**{lr:g}: {pct(scores[lr])}**" if lr == chosen else f"{lr:g}: {pct(scores.get(lr))}") for lr in lrs
            ]
            rows.append([m, "; ".join(cells)])
        return ["Learning-rate choice (holdout top-1 %, chosen in bold):", ""] + table(["method", "trials"], rows)

    def backbones_section(self):
        p = self.plan
        d = next((d for d in p.datasets if p.dataset(d).backbones), None)
        if d is None:
            return []
        backbones = (p.backbone,) + p.dataset(d).backbones
        rows = [[b] + [pct(self.accuracy(d, m, b)) for m in KEY_METHODS if m in p.methods] for b in backbones]
        return [
            f"## Other backbones, {p.dataset(d).title}",
            "",
            f"Top-1 % (seed 0 for the other backbones), {p.epochs} epochs, the rates chosen on {p.backbone}.",
            "",
        ] + table(["backbone"] + [m for m in KEY_METHODS if m in p.methods], rows)

    def batch_section(self):
        p = self.plan
        d, m = p.batch1_dataset, ON_DEVICE_METHOD
        if d not in p.datasets or m not in p.methods:
            return []
        lr8 = self.lr(d, m)
        eight = self.main_runs(d, m)
        rows = [["Keras, batch 8 (seed 0)", lr_text(lr8), pct(eight[0]["test_accuracy"] if eight else None)]]
        for phase, name in (("batch", "Keras, batch 1"), ("device", "LiteRT trainer, batch 1")):
            s = batch_spec(self.results, p, phase)
            run = metrics_of(self.results.get(s)) if s else {}
            rows.append([name, lr_text(s.lr if s else None), pct(run.get("test_accuracy"))])
        return [
            f"## Batch 1: Keras and the LiteRT trainer ({m}, {p.dataset(d).title}, {p.epochs} epochs)",
            "",
            f"lr = the batch-8 rate / {p.batch1_lr_divisor:g}. The LiteRT run trains the exported `.tflite` "
            "through its `train` signature (no dropout on the device).",
            "",
        ] + table(["run", "lr", "top-1 %"], rows)

    def adam8bit_section(self):
        p = self.plan
        d, m = p.batch1_dataset, ON_DEVICE_METHOD
        if d not in p.datasets or m not in p.methods:
            return []
        floats = self.main_runs(d, m)
        s = adam8bit_spec(self.results, p)
        run = metrics_of(self.results.get(s)) if s else {}
        rows = [
            [f"Adam, float moments (main, seed {i})", pct(r["test_accuracy"]), f"{r['train_seconds']:.0f}"]
            for i, r in enumerate(floats)
        ]
        rows.append(["Adam, 8-bit moments (seed 0)", pct(run.get("test_accuracy")), shown(run.get("train_seconds"))])
        lines = [
            f"## 8-bit Adam ({m}, {p.dataset(d).title}, {p.epochs} epochs, lr {lr_text(s.lr if s else None)})",
            "",
            "Adam's two moments stored as block-wise 8-bit codes (2.03 bytes of state per parameter instead of 8), "
            "in Keras; the same rule as the exported `train` signature's.",
            "",
        ] + table(["optimizer", "top-1 %", "train s"], rows)
        if floats and run.get("test_accuracy") is not None:
            gap = 100 * (run["test_accuracy"] - mean([r["test_accuracy"] for r in floats]))
            lines += ["", f"8-bit minus float Adam (mean of {len(floats)} seeds): {gap:+.1f} points."]
        return lines

    def shows(self):
        """Point-by-point comparison with the paper's rows, computed from the recorded runs."""
        p = self.plan
        lines = ["## What this shows (computed from the runs above)", ""]
        for d in p.datasets:
            ds = p.dataset(d)
            acc = {m: self.accuracy(d, m) for m in p.methods}
            if acc.get("tinytl-lb") is None:
                lines.append(f"- {ds.title}: TinyTL-L+B not finished yet.")
                continue
            parts = []
            for other in ("ft-last", "tinytl-b", "ft-full"):
                if acc.get(other) is not None:
                    paper = f" (paper {ds.paper['tinytl-lb'] - ds.paper[other]:+.1f})" if ds.paper else ""
                    parts.append(f"TinyTL-L+B - {other} = {100 * (acc['tinytl-lb'] - acc[other]):+.1f} points{paper}")
            order = sorted((m for m in p.methods if acc[m] is not None), key=lambda m: -acc[m])
            text = f"- {ds.title}: " + "; ".join(parts) + f". Order here: {' > '.join(order)}"
            if ds.paper:
                text += (
                    f"; the paper's order of the same methods: {' > '.join(sorted(order, key=lambda m: -ds.paper[m]))}"
                )
            lines.append(text + ".")
            lines.append(self.fit_line(d, order))
        return lines

    def fit_line(self, d, methods):
        """How settled each method's curve is and how far its training accuracy (under augmentation) runs ahead of
        its test accuracy at the last epoch: the numbers behind "not trained long enough" and "overfits"."""
        parts = []
        for m in methods:
            run = self.main_runs(d, m)[0]
            last = run["curve"][-5:]
            gap = run["train_accuracy"] - run["test_accuracy"]
            parts.append(f"{m} {100 * (max(last) - min(last)):.1f} / {100 * gap:+.1f}")
        return (
            "  Spread of the curve over the last five epochs / last-epoch training minus test top-1, in points "
            f"(seed 0): {'; '.join(parts)}."
        )

    def runs_section(self):
        rows = [
            [
                f"`{r['key']}`",
                r["seconds"],
                r["load_average"],
                r["finished"],
                short_commit(r["commit"]),
                r["metrics"].get("resumed_at_epoch", 0),
                f"`{r['command']}`",
            ]
            for r in self.results.runs.values()
        ]
        lines = [
            "## Runs",
            "",
            "Every run in the results file: its wall time (loading, training and evaluating, or "
            "exporting and measuring; the last sitting only for a resumed run), the machine's load average when "
            "it started, when it finished, the commit, the epoch it resumed at (0: ran uninterrupted) and the "
            "exact command.",
            "",
        ]
        lines += table(["run", "seconds", "load", "finished", "commit", "resumed at", "command"], rows)
        if self.results.failed:
            lines += ["", "Failed runs:", ""] + [f"- `{k}`: {v}" for k, v in self.results.failed.items()]
        return lines

    def plot_curves(self, d, path):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        p = self.plan
        ds = p.dataset(d)
        fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
        try:
            colours = dict(zip(METHODS, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
            for m in p.methods:
                for i, run in enumerate(self.main_runs(d, m)):
                    curve = [100 * a for a in run["curve"]]
                    ax.plot(
                        range(1, len(curve) + 1),
                        curve,
                        color=colours[m],
                        ls="-" if i == 0 else "--",
                        label=f"{m} (lr {self.lr(d, m):g})" if i == 0 else None,
                    )
                if ds.paper:
                    ax.axhline(ds.paper[m], color=colours[m], lw=0.6, ls=":")
            ax.set_xlabel("epoch")
            ax.set_ylabel("test top-1 (%)")
            short = ds.title.split(" (")[0]
            ax.set_title(
                f"{short}: {p.backbone} @ {p.resolution} px (dotted: the paper's final top-1, "
                "ProxylessNAS-Mobile @ 224 px)"
                if ds.paper
                else f"{short}: {p.backbone}",
                fontsize=8,
            )
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8, loc="lower right")
            fig.tight_layout()
            fig.savefig(path, format="png")
        finally:
            plt.close(fig)


# ------------------------------------------------------------------------------------------------------ CLI


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--data-root", help="folder with the data sets' archives or unpacked folders (default: $TINYTL_ASSETS/data)"
    )
    p.add_argument(
        "--work", help=f"folder for unpacked data, trees and mid-run state (default: {DEFAULT_WORK.relative_to(ROOT)})"
    )
    p.add_argument("--out", help=f"folder for results.json and the plots (default: {DEFAULT_OUT.relative_to(ROOT)})")
    p.add_argument("--doc", help="the generated report (default: docs/RESULTS.md, or OUT/RESULTS.md with --out)")
    p.add_argument("--only", nargs="+", choices=PHASES, metavar="PHASE", help=f"phases to run: {', '.join(PHASES)}")
    p.add_argument(
        "--datasets",
        nargs="+",
        choices=tuple(DATASETS),
        metavar="NAME",
        help=f"data sets (default: {' '.join(DATASETS)})",
    )
    p.add_argument("--methods", nargs="+", choices=METHODS, metavar="METHOD", help="methods (default: all six)")
    p.add_argument(
        "--backbone", help=f"the backbone every data set and learning rate is studied on (default: {Plan.backbone})"
    )
    p.add_argument("--report", action="store_true", help="only regenerate the report and plots from results.json")
    p.add_argument(
        "--quick",
        action="store_true",
        help="every phase in miniature: 3 classes of the embedded subset, "
        "48 px, FT-Last and TinyTL-L+B, 2 epochs (needs --out)",
    )
    return p


def make_plan(args):
    plan = QUICK_PLAN if args.quick else Plan()
    if args.datasets and not args.quick:
        plan = dataclasses.replace(plan, datasets=tuple(d for d in DATASETS if d in args.datasets))
    if args.methods:
        missing = [m for m in args.methods if m not in dict(plan.lr_grid)]
        if missing:
            raise ValueError(
                f"--methods {missing} have no learning-rate grid in this mode; choose from {list(dict(plan.lr_grid))}"
            )
        plan = dataclasses.replace(plan, methods=tuple(m for m in METHODS if m in args.methods))
    if args.backbone:
        from tinytl_tf.backbones.registry import get_backbone

        get_backbone(args.backbone)
        plan = dataclasses.replace(plan, backbone=args.backbone)
    return plan


def data_root(args):
    if args.data_root:
        return Path(args.data_root)
    assets = os.environ.get("TINYTL_ASSETS")
    if not assets:
        raise ValueError("no data root: pass --data-root DIR with the data sets' archives (or set TINYTL_ASSETS)")
    return Path(assets) / "data"


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
    work = Path(args.work) if args.work else (out / "work" if args.quick else DEFAULT_WORK)
    _mkdir(work)
    if args.quick:
        trees = {QUICK_DATASET.name: quick_dataset(work)}
    else:
        root = data_root(args)
        if not root.is_dir():
            raise FileNotFoundError(
                f"data root {root} does not exist; pass --data-root DIR with the data sets' archives"
            )
        trees = {d: prepare_dataset(DATASETS[d], root, work) for d in plan.datasets}
    ctx = Context(
        trees=trees, work=work, command=portable_command(SCRIPT, argv), commit=git_commit(), hardware=hardware()
    )
    try:
        run_phases(args.only or PHASES, results, plan, ctx)
    finally:
        print(f"\nwrote {Report(results, plan, doc, out).write()}", flush=True)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    return run_command(lambda: run(args, argv))


if __name__ == "__main__":
    sys.exit(main())
