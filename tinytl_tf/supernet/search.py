"""The `search` job (feature extractor adaptation, TinyTL Appendix A) and the `subnet.json` it writes.

    1. on 80% of the training images, calibrate the super-net's mean compensation, then fine-tune it (main
       weights frozen; biases, lite modules and the head train; one random sub-net per step; a warning when it
       ends at or below chance)                            -> OUT/supernet.keras
    2. measure random sub-nets on the other 20%             -> OUT/pairs.json
    3. fit the accuracy predictor on most pairs, report its rank correlation on the rest
                                                            -> OUT/predictor.keras, OUT/predictor.json
    4. evolve the best sub-net under the memory budget      -> OUT/evolution.json
    5. the winner                                           -> OUT/subnet.json

Every phase's output is written atomically and a phase whose output exists is skipped (pairs and generations
continue where they stopped), so an interrupted search resumes. The test split is never read. `train --subnet`
(`load_subnet`) turns `subnet.json` back into a plain `TinyNet` with the fine-tuned super-net's weights.
"""

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from tinytl_tf import data as datasets
from tinytl_tf.atomic import atomic_write
from tinytl_tf.backbones import backbone_config
from tinytl_tf.config import ConfigError
from tinytl_tf.supernet import space
from tinytl_tf.supernet.evolution import check_budget, evolve
from tinytl_tf.supernet.predictor import fit_predictor, predict_accuracy, rank_correlations
from tinytl_tf.supernet.supernet import DEFAULT_RESOLUTIONS, SuperNet, read_weights_file
from tinytl_tf.train import compile_model, distribution_scope, fit, seed_everything

HOLDOUT_FRACTION = 0.2  # of the training images, for measuring sub-nets (the paper's 80/20)
PREDICTOR_TEST_FRACTION = 0.2  # of the pairs, never shown to the predictor
SUBNET_FORMAT = "tinytl_tf/subnet-v1"
PAIRS_FORMAT = "tinytl_tf/pairs-v1"
SUPERNET_FILE, PAIRS_FILE, PREDICTOR_FILE, PREDICTOR_REPORT, EVOLUTION_FILE, SUBNET_FILE = (
    "supernet.keras",
    "pairs.json",
    "predictor.keras",
    "predictor.json",
    "evolution.json",
    "subnet.json",
)
SUBNET_REQUIRED = ("format", "backbone", "config", "resolution", "spec", "supernet")
SUBNET_OPTIONAL = (
    "predicted_accuracy",
    "holdout_accuracy",
    "memory_mb",
    "budget_mb",
    "backbone_arch",
    "predictor",
    "search",
)


def _write_json(path, obj):
    atomic_write(path, lambda p: Path(p).write_text(json.dumps(obj, indent=2)))


def _backbone_base(backbone):
    """A backbone's NetConfig without building it (a name, or a `.npz` written by `tinytl import-ofa`)."""
    return read_weights_file(backbone)[1] if str(backbone).endswith(".npz") else backbone_config(backbone)


def _check_counts(epochs, pairs, population, generations):
    for name, v, low in (
        ("epochs", epochs, 0),
        ("pairs", pairs, 5),
        ("population", population, 4),
        ("generations", generations, 1),
    ):
        if not isinstance(v, int) or isinstance(v, bool) or v < low:
            raise ValueError(f"--{name} must be an integer >= {low}, got {v!r}")


def _supernet(out, backbone, base, images, resolutions, epochs, lr, label_smoothing, dropout, weights_dir, verbose):
    """Phase 1: the super-net fine-tuned with one random sub-net per step (loaded instead when already done)."""
    path = out / SUPERNET_FILE
    if path.exists():
        net = keras.saving.load_model(path, compile=False)
        spec = net.spec
        if (spec.base.blocks, spec.resolutions, spec.base.labels) != (base.blocks, resolutions, images.class_names):
            raise ValueError(
                f"{path} is a super-net of another search ({spec.backbone}, {spec.resolutions} px, "
                f"{len(spec.base.labels)} classes); use another --out or delete it"
            )
        return net
    net = SuperNet.from_backbone(
        backbone, len(images.class_names), images.class_names, resolutions, dropout, weights_dir
    )
    net.calibrate(images.train)
    if epochs:
        net.set_random_sampling(True)
        history = fit(net, images.train, epochs, lr, label_smoothing, verbose)
        net.set_random_sampling(False)
        _warn_at_chance(history.history["accuracy"][-1], len(images.class_names))
    atomic_write(path, net.save)
    return net


def _warn_at_chance(accuracy, num_classes):
    """Say so on stderr when the super-net's fine-tuning ended no better than guessing: every sub-net measured
    from it, and so the predictor and the winner, would then rest on noise."""
    if accuracy <= 1 / num_classes:
        print(
            f"warning: super-net fine-tuning ended at {accuracy:.1%} training accuracy, at or below chance "
            f"({1 / num_classes:.1%} for {num_classes} classes); the sub-net accuracies, the predictor and the "
            f"searched sub-net built on it are not meaningful (more --epochs or another --lr may help)",
            file=sys.stderr,
        )


def holdout_accuracy(net, holdout, arch):
    """Top-1 accuracy of the super-net's sub-net `arch` on the held-out images (the net must be compiled)."""
    net.set_active(arch)
    return float(net.evaluate(holdout, verbose=0, return_dict=True)["accuracy"])


def _pair_archs(spec, n, seed):
    """The first `n` distinct sub-nets (by encoding) drawn from `seed`: asking for more pairs extends the list."""
    rng, seen, archs = np.random.default_rng([seed, 1]), set(), []
    for _ in range(100 * n):
        a = space.sample(spec, rng)
        key = space.encode(spec, a).tobytes()
        if key not in seen:
            seen.add(key)
            archs.append(a)
            if len(archs) == n:
                break
    return archs


def _measure_pairs(out, net, holdout, n, seed, verbose):
    """Phase 2: (sub-net, held-out accuracy) pairs, saved after each one."""
    path, spec = out / PAIRS_FILE, net.spec
    done = json.loads(path.read_text()) if path.exists() else {"format": PAIRS_FORMAT, "seed": seed, "pairs": []}
    if done.get("format") != PAIRS_FORMAT or done.get("seed") != seed:
        raise ValueError(
            f"{path} holds pairs of another search (seed {done.get('seed')}); use another --out or delete it"
        )
    archs = _pair_archs(spec, n, seed)
    bar = keras.utils.Progbar(len(archs), verbose=verbose, unit_name="sub-net")
    for i, arch in enumerate(archs):
        if i >= len(done["pairs"]):
            done["pairs"].append({"config": arch.to_dict(), "accuracy": holdout_accuracy(net, holdout, arch)})
            _write_json(path, done)
        bar.update(i + 1)
    return archs, np.array([p["accuracy"] for p in done["pairs"][: len(archs)]])


def _predictor(out, spec, archs, accuracies, seed, epochs):
    """Phase 3: the predictor trained on most pairs; its rank correlations on the others."""
    model_path, report_path = out / PREDICTOR_FILE, out / PREDICTOR_REPORT
    if model_path.exists() and report_path.exists():
        report = json.loads(report_path.read_text())
        if report["pairs"] == len(archs) and report["seed"] == seed:
            return keras.saving.load_model(model_path), report
    order = np.random.default_rng([seed, 2]).permutation(len(archs))
    n_test = max(2, int(round(len(archs) * PREDICTOR_TEST_FRACTION)))
    test, train = order[:n_test], order[n_test:]
    model = fit_predictor([space.encode(spec, archs[i]) for i in train], accuracies[train], epochs=epochs, seed=seed)
    unseen = rank_correlations(predict_accuracy(model, spec, [archs[i] for i in test]), accuracies[test])
    report = {
        "pairs": len(archs),
        "seed": seed,
        "train_pairs": len(train),
        "test_pairs": len(test),
        "spearman": unseen["spearman"],
        "kendall": unseen["kendall"],
    }
    atomic_write(model_path, model.save)
    _write_json(report_path, report)
    (out / EVOLUTION_FILE).unlink(missing_ok=True)  # a search scored by the previous predictor
    return model, report


def search_job(
    data,
    backbone,
    budget_mb,
    out,
    resolutions=None,
    epochs=5,
    pairs=500,
    population=100,
    generations=100,
    seed=0,
    batch_size=8,
    lr=3e-3,
    label_smoothing=0.1,
    dropout=0.2,
    strategy="none",
    weights_dir=None,
    val_fraction=None,
    predictor_epochs=200,
    verbose=1,
):
    """Run (or resume) the search into folder `out`; returns the `subnet.json` content.

    `budget_mb`: the analytic TinyTL-L+B training memory at batch 1 a sub-net may need (MB = 1e6 B);
    `resolutions`: the input sizes to search (None: `supernet.DEFAULT_RESOLUTIONS`)."""
    _check_counts(epochs, pairs, population, generations)
    resolutions = tuple(sorted(set(resolutions or DEFAULT_RESOLUTIONS)))
    base = _backbone_base(backbone)
    reproducibility = seed_everything(seed)
    images = datasets.load_image_folder(
        data,
        max(resolutions),
        base.input_mean,
        base.input_std,
        batch_size,
        val_fraction=val_fraction,
        seed=seed,
        holdout_fraction=HOLDOUT_FRACTION,
    )
    if not images.num_holdout:
        raise datasets.DataError(f"{data}: no training images left to hold out; every class needs at least 2")
    # the budget check needs only the space: fail before any training
    check_budget(
        space.super_spec(base.replace(num_classes=len(images.class_names)), str(backbone), resolutions), budget_mb
    )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    scope, _ = distribution_scope(strategy)
    with scope:
        net = _supernet(
            out, backbone, base, images, resolutions, epochs, lr, label_smoothing, dropout, weights_dir, verbose
        )
        compile_model(net, lr, 1, label_smoothing)
    spec, holdout = net.spec, images.holdout.cache()
    archs, accuracies = _measure_pairs(out, net, holdout, pairs, seed, verbose)
    predictor, report = _predictor(out, spec, archs, accuracies, seed, predictor_epochs)
    result = evolve(
        spec,
        lambda a: predict_accuracy(predictor, spec, a),
        budget_mb,
        population,
        generations,
        seed=seed,
        state_path=out / EVOLUTION_FILE,
        verbose=verbose,
    )
    reference = space.backbone_arch(spec)
    subnet = {
        "format": SUBNET_FORMAT,
        "backbone": str(backbone),
        "config": result.arch.to_dict(),
        "resolution": result.arch.resolution,
        "predicted_accuracy": result.score,
        "holdout_accuracy": holdout_accuracy(net, holdout, result.arch),
        "memory_mb": result.memory_mb,
        "budget_mb": budget_mb,
        "backbone_arch": {
            "config": reference.to_dict(),
            "memory_mb": space.memory_mb(spec, reference),
            "holdout_accuracy": holdout_accuracy(net, holdout, reference),
        },
        "predictor": report,
        "supernet": SUPERNET_FILE,
        "search": {
            "data": str(data),
            "epochs": epochs,
            "pairs": pairs,
            "population": population,
            "generations": generations,
            "seed": seed,
            "reproducibility": reproducibility,
            "batch_size": batch_size,
            "lr": lr,
            "train_examples": images.num_train,
            "holdout_examples": images.num_holdout,
            "best_per_generation": list(result.history),
        },
        "spec": spec.to_dict(),
    }
    _write_json(out / SUBNET_FILE, subnet)
    return subnet


@dataclass(frozen=True)
class Subnet:
    """A validated `subnet.json`."""

    backbone: str
    spec: space.SuperSpec
    arch: space.Arch
    supernet_path: Path  # the fine-tuned super-net checkpoint it was searched with


def read_subnet(path):
    """Read and validate a `subnet.json`; a hand-edited or foreign file raises ConfigError naming the field."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no sub-net file at {path}; pass the subnet.json written by `search --out`")
    try:
        d = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(d, dict):
        raise ConfigError(f"subnet: expected an object, got {type(d).__name__}")
    unknown = sorted(set(d) - set(SUBNET_REQUIRED) - set(SUBNET_OPTIONAL))
    missing = [k for k in SUBNET_REQUIRED if k not in d]
    if unknown or missing:
        raise ConfigError(
            f"subnet: unknown field(s) {unknown}, missing field(s) {missing}; valid fields: "
            f"{list(SUBNET_REQUIRED + SUBNET_OPTIONAL)}"
        )
    if d["format"] != SUBNET_FORMAT:
        raise ConfigError(f"subnet.format: expected {SUBNET_FORMAT!r}, got {d['format']!r}")
    if not isinstance(d["spec"], dict):
        raise ConfigError("subnet.spec: expected an object")
    spec = space.SuperSpec.from_dict(d["spec"])
    arch = space.arch_from_dict(spec, d["config"], "subnet.config")
    if d["resolution"] != arch.resolution:
        raise ConfigError(
            f"subnet.resolution: {d['resolution']!r} differs from subnet.config.resolution {arch.resolution}"
        )
    if not isinstance(d["supernet"], str):
        raise ConfigError("subnet.supernet: expected the path of the fine-tuned super-net")
    return Subnet(str(d["backbone"]), spec, arch, path.parent / d["supernet"])


def _note(message):
    print(message, file=sys.stderr)


def load_subnet(path, method="tinytl-lb", resolution=None, weights_dir=None, log=_note):
    """The searched sub-net as a plain `TinyNet` for `method`, with the fine-tuned super-net's weights (the
    pretrained backbone's when the checkpoint is gone, saying so through `log`)."""
    sub = read_subnet(path)
    if resolution is not None and resolution != sub.arch.resolution:
        raise ValueError(
            f"--resolution {resolution} differs from the searched sub-net's {sub.arch.resolution} px "
            f"({path}); drop --resolution"
        )
    if sub.supernet_path.is_file():
        net = keras.saving.load_model(sub.supernet_path, compile=False)
    else:
        log(
            f"note: no fine-tuned super-net at {sub.supernet_path}; the sub-net starts from the pretrained "
            f"{sub.backbone} weights instead"
        )
        b = sub.spec.base
        net = SuperNet.from_backbone(
            sub.backbone, b.num_classes, b.labels, sub.spec.resolutions, b.dropout, weights_dir
        )
    if net.spec != sub.spec:
        raise ConfigError(
            f"subnet.spec: differs from the super-net's ({sub.supernet_path}); the file was edited "
            f"or belongs to another search"
        )
    return net.extract_subnet(sub.arch, method)
