"""The `search` job (feature extractor adaptation, TinyTL Appendix A): from training images to `subnet.json`.

    1. per backbone, on 80% of the training images: the pretrained super-net with its mean compensation
       calibrated (every chosen sub-net starts from it)     -> OUT/<backbone>/start.keras
       and a copy fine-tuned (main weights frozen; biases, lite modules and the head train; a random sub-net per
       step, the full one every other step; a warning when it ends at or below chance)
                                                            -> OUT/<backbone>/supernet.keras
    2. per backbone, measure random sub-nets of the fine-tuned super-net on the other 20% -> OUT/<backbone>/pairs.json
    3. fit the accuracy predictor on most pairs; its rank correlation on the rest against two baselines (the
       predicted memory alone, the resolution alone); the search optimises whichever ranks best
                                                            -> OUT/predictor.keras, OUT/predictor.json
    4. per backbone, evolve the best sub-net under the memory budget (the default backbone's population starts
       with the fixed baseline): the finalists              -> OUT/evolution-<backbone>.json
    5. the finalists and the fixed baseline (the default backbone with TinyTL-L+B at the largest resolution within
       the budget, else with TinyTL-B) each fine-tuned briefly from the start weights as `train` fine-tunes, and
       scored image by image on the 20%: the best finalist is kept only when it leads the baseline by two standard
       errors of the paired difference, else the baseline (with a warning)      -> OUT/confirm.json
    6. the chosen sub-net exported and its LiteRT train step measured (unless turned off); a warning when it is
       over the budget                                      -> OUT/subnet.json

Every phase's output is written atomically and a phase whose output exists is skipped (pairs, generations and
finalists continue where they stopped), so an interrupted search resumes; OUT/phases.json keeps each phase's wall
time. The test split is never read. `train --subnet` (`tinytl_tf.supernet.subnet.load_subnet`) turns `subnet.json`
back into a plain `TinyNet` with the start weights, so the chosen sub-net trains exactly as its finalist did and as
the fixed baseline does.
"""

import json
import math
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import keras
import numpy as np

from tinytl_tf import data as datasets
from tinytl_tf.atomic import atomic_write
from tinytl_tf.backbones import backbone_config
from tinytl_tf.config import TrainableSet
from tinytl_tf.methods import default_lr
from tinytl_tf.supernet import space
from tinytl_tf.supernet.evolution import check_budget, evolve
from tinytl_tf.supernet.predictor import fit_predictor, predict_accuracy
from tinytl_tf.supernet.ranking import rank_correlations
from tinytl_tf.supernet.subnet import SUBNET_FORMAT
from tinytl_tf.supernet.supernet import (
    DEFAULT_RESOLUTIONS,
    SubnetEvaluator,
    SuperNet,
    eval_batches,
    read_weights_file,
)
from tinytl_tf.train import distribution_scope, fit, hits, seed_everything

HOLDOUT_FRACTION = 0.2  # of the training images, for measuring sub-nets (the paper's 80/20)
PREDICTOR_TEST_FRACTION = 0.2  # of the pairs, never shown to the predictor
DEFAULT_BACKBONE = "mcunet-5fps"  # the fixed baseline's backbone when the search includes it
PAIRS_FORMAT = "tinytl_tf/pairs-v2"
CONFIRM_FORMAT = "tinytl_tf/confirm-v1"
PAIR_CHUNK = 25  # sub-nets measured between two saves of pairs.json
START_FILE, SUPERNET_FILE, PAIRS_FILE, PREDICTOR_FILE, PREDICTOR_REPORT = (
    "start.keras",
    "supernet.keras",
    "pairs.json",
    "predictor.keras",
    "predictor.json",
)
CONFIRM_FILE, SUBNET_FILE, PHASES_FILE = ("confirm.json", "subnet.json", "phases.json")


def evolution_file(backbone):
    return f"evolution-{backbone}.json"


def _write_json(path, obj):
    atomic_write(path, lambda p: Path(p).write_text(json.dumps(obj, indent=2)))


def _progress(message):
    print(f"search: {message}", file=sys.stderr, flush=True)


def _warn(message):
    print(f"warning: {message}", file=sys.stderr, flush=True)


class _Phases:
    """Wall time per phase, summed over the runs of a resumed search, kept in OUT/phases.json."""

    def __init__(self, path):
        self.path = Path(path)
        self.seconds = json.loads(self.path.read_text()) if self.path.exists() else {}

    @contextmanager
    def __call__(self, name, message):
        _progress(f"{name}: {message}")
        start = time.monotonic()
        yield
        elapsed = time.monotonic() - start
        self.seconds[name] = round(self.seconds.get(name, 0) + elapsed, 1)
        _write_json(self.path, self.seconds)
        _progress(f"{name}: done in {elapsed:.0f} s")


def _backbone_base(backbone):
    """(search-space name, NetConfig) of a backbone name or a `.npz` written by `tinytl import-ofa`,
    without building it."""
    if str(backbone).endswith(".npz"):
        name, cfg, _, _ = read_weights_file(backbone)
        return name, cfg
    return str(backbone), backbone_config(backbone)


def _folder(backbone):
    return Path(str(backbone)).stem if str(backbone).endswith(".npz") else str(backbone)


def _check_counts(epochs, pairs, population, generations, confirm_epochs):
    for name, v, low in (
        ("epochs", epochs, 0),
        ("confirm-epochs", confirm_epochs, 1),
        ("pairs", pairs, 5),
        ("population", population, 4),
        ("generations", generations, 1),
    ):
        if not isinstance(v, int) or isinstance(v, bool) or v < low:
            raise ValueError(f"--{name} must be an integer >= {low}, got {v!r}")


def _load_net(path, spec):
    net = keras.saving.load_model(path, compile=False)
    if net.spec != spec:
        raise ValueError(
            f"{path} is a super-net of another search ({net.spec.backbone}, {net.spec.resolutions} px, "
            f"{len(net.spec.base.labels)} classes); use another --out or delete it"
        )
    return net


def _start(path, source, spec, images, weights_dir):
    """Phase 1, first half: one backbone's super-net as pretrained, its mean compensation calibrated on the training
    images and nothing trained (loaded when already done). The chosen sub-net starts from these weights, as the
    fixed baseline starts from the pretrained backbone: the fine-tuned super-net ranks sub-nets, it does not train
    them."""
    if path.exists():
        return _load_net(path, spec)
    b = spec.base
    elastic = any(len(s.kernels) > 1 or len(s.expands) > 1 for s in spec.slots)
    net = SuperNet.from_backbone(source, b.num_classes, b.labels, spec.resolutions, b.dropout, weights_dir, elastic)
    net.calibrate(images.train)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, net.save)
    return net


def _supernet(path, start_path, spec, images, epochs, lr, label_smoothing, verbose):
    """Phase 1, second half: a copy of the start super-net fine-tuned on sampled sub-nets
    (`SuperNet.set_random_sampling`; loaded when already done)."""
    if path.exists():
        return _load_net(path, spec)
    net = _load_net(start_path, spec)
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


def _key(config):
    return json.dumps(config, sort_keys=True)


def _measure_pairs(path, evaluator, n, seed, verbose):
    """Phase 2: one super-net's (sub-net, held-out accuracy) pairs (`SubnetEvaluator`), measured a resolution at a
    time and saved after every PAIR_CHUNK sub-nets; pairs.json lists them in the order they were drawn."""
    done = json.loads(path.read_text()) if path.exists() else {"format": PAIRS_FORMAT, "seed": seed, "pairs": []}
    if done.get("format") != PAIRS_FORMAT or done.get("seed") != seed:
        raise ValueError(
            f"{path} holds pairs of another search (seed {done.get('seed')}); use another --out or delete it"
        )
    archs = _pair_archs(evaluator.net.spec, n, seed)
    keys = [_key(a.to_dict()) for a in archs]
    measured = {_key(p["config"]): p["accuracy"] for p in done["pairs"]}
    wanted = set(keys)
    others = [p for p in done["pairs"] if _key(p["config"]) not in wanted]  # drawn by a longer search
    pending = sorted((i for i, k in enumerate(keys) if k not in measured), key=lambda i: archs[i].resolution)
    bar = keras.utils.Progbar(len(archs), verbose=verbose, unit_name="sub-net")
    bar.update(len(archs) - len(pending))
    for start in range(0, len(pending), PAIR_CHUNK):
        chunk = pending[start : start + PAIR_CHUNK]
        for i, accuracy in zip(chunk, evaluator.accuracies([archs[i] for i in chunk])):
            measured[keys[i]] = float(accuracy)
        done["pairs"] = [{"config": a.to_dict(), "accuracy": measured[k]} for a, k in zip(archs, keys) if k in measured]
        _write_json(path, {**done, "pairs": done["pairs"] + others})
        bar.update(len(archs) - len(pending) + start + len(chunk))
    return archs, [measured[k] for k in keys]


def baseline_scores(joint, archs):
    """The simple rankers the predictor must beat: {name: score per sub-net}."""
    return {
        "predicted_memory": np.array([joint.memory_mb(a) for a in archs]),
        "resolution": np.array([float(a.resolution) for a in archs]),
    }


def _predictor(out, joint, archs, accuracies, seed, epochs):
    """Phase 3: the predictor trained on most pairs; its rank correlations on the others against the baselines,
    and the objective the search then optimises (the best ranker by Spearman on the unseen pairs)."""
    model_path, report_path = out / PREDICTOR_FILE, out / PREDICTOR_REPORT
    if model_path.exists() and report_path.exists():
        report = json.loads(report_path.read_text())
        if (
            report["pairs"] == len(archs)
            and report["seed"] == seed
            and report.get("backbones") == list(joint.backbones)
        ):
            return keras.saving.load_model(model_path), report
    order = np.random.default_rng([seed, 2]).permutation(len(archs))
    n_test = max(2, int(round(len(archs) * PREDICTOR_TEST_FRACTION)))
    test, train = order[:n_test], order[n_test:]
    model = fit_predictor([joint.encode(archs[i]) for i in train], accuracies[train], epochs=epochs, seed=seed)
    unseen = [archs[i] for i in test]
    rankers = {"predictor": rank_correlations(predict_accuracy(model, joint, unseen), accuracies[test])}
    for name, scores in baseline_scores(joint, unseen).items():
        rankers[name] = rank_correlations(scores, accuracies[test])
    objective = max(rankers, key=lambda k: (rankers[k]["spearman"] is not None, rankers[k]["spearman"] or 0))
    report = {
        "backbones": list(joint.backbones),
        "pairs": len(archs),
        "seed": seed,
        "train_pairs": len(train),
        "test_pairs": len(test),
        "spearman": rankers["predictor"]["spearman"],
        "kendall": rankers["predictor"]["kendall"],
        "rankers": rankers,
        "objective": objective,
    }
    atomic_write(model_path, model.save)
    _write_json(report_path, report)
    for stale in out.glob(evolution_file("*")):  # searches scored by the previous predictor
        stale.unlink()
    return model, report


def _ranking_note(report):
    """One line on how the predictor ranks unseen pairs against the baselines, and what the search optimises."""
    r = report["rankers"]

    def fmt(name):
        s, k = r[name]["spearman"], r[name]["kendall"]
        return f"{name} Spearman {s:.3f} / Kendall {k:.3f}" if s is not None else f"{name} undefined"

    line = f"on {report['test_pairs']} unseen pairs: " + ", ".join(fmt(n) for n in r)
    if report["objective"] != "predictor":
        line += (
            f"; the predictor ranks worse than {report['objective']} alone, so the search maximises "
            f"{report['objective']} within the budget instead of the predicted accuracy"
        )
    return line


def _objective(report, predictor, joint):
    if report["objective"] == "predictor":
        return lambda archs: predict_accuracy(predictor, joint, archs)
    return lambda archs: baseline_scores(joint, archs)[report["objective"]]


def default_backbones(weights_dir=None):
    """The registry's backbones a super-net can hold with pretrained weights (`space.searchable_backbones`)."""
    return space.searchable_backbones(weights_dir)


def _images_and_spaces(data, sources, resolutions, batch_size, val_fraction, seed, dropout, elastic_width):
    """({(mean, std): the training images split 80/20, normalised as the backbones of that normalisation expect},
    [the super-net space of each source with a head for the data's classes]); DataError when nothing can be held
    out."""
    bases = [_backbone_base(s) for s in sources]
    images = {}  # the same split per normalisation
    for _, cfg in bases:
        key = (cfg.input_mean, cfg.input_std)
        if key not in images:
            images[key] = datasets.load_image_folder(
                data,
                max(resolutions),
                cfg.input_mean,
                cfg.input_std,
                batch_size,
                val_fraction=val_fraction,
                seed=seed,
                holdout_fraction=HOLDOUT_FRACTION,
            )
    first = next(iter(images.values()))
    if not first.num_holdout:
        raise datasets.DataError(f"{data}: no training images left to hold out; every class needs at least 2")
    specs = []
    for (name, cfg), source in zip(bases, sources):
        base = cfg.replace(
            num_classes=len(first.class_names),
            labels=tuple(first.class_names),
            dropout=dropout,
            trainable=TrainableSet(),
            method=None,
        )
        elastic = str(source).endswith(".npz") if elastic_width is None else elastic_width
        specs.append(space.super_spec(base, name, resolutions, elastic))
    return images, specs


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
    elastic_width=None,
    measure=True,
    confirm_epochs=3,
):
    """Run (or resume) the search into folder `out`; returns the `subnet.json` content.

    `backbone`: one name or `.npz`, or a list of them (None: every searchable backbone, `default_backbones`);
    `budget_mb`: the predicted TinyTL-L+B train-step memory at batch 1 a sub-net may need
    (`space.predicted_memory_mb`, MB = 1e6 B); `resolutions`: the input sizes to search (None:
    `supernet.DEFAULT_RESOLUTIONS`); `lr`: the super-net fine-tuning's peak learning rate; `elastic_width`: also
    search kernel sizes and expand ratios (None: only for weights trained for it, a converted once-for-all `.npz`);
    `confirm_epochs`: the finalists' and the baseline's short fine-tune (phase 5); `measure`: export the chosen
    sub-net and measure its LiteRT train step."""
    _check_counts(epochs, pairs, population, generations, confirm_epochs)
    resolutions = tuple(sorted(set(resolutions or DEFAULT_RESOLUTIONS)))
    sources = [backbone] if isinstance(backbone, (str, Path)) else list(backbone or default_backbones(weights_dir))
    reproducibility = seed_everything(seed)
    images, specs = _images_and_spaces(
        data, sources, resolutions, batch_size, val_fraction, seed, dropout, elastic_width
    )
    first = next(iter(images.values()))
    joint = space.JointSpace(specs)  # also rejects a backbone named twice
    check_budget(joint, budget_mb)  # needs only the space: fail before any training
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    phases = _Phases(out / PHASES_FILE)
    scope, _ = distribution_scope(strategy)
    starts, evaluators, holdouts, archs, accuracies = {}, {}, {}, [], []
    per_backbone = [pairs // len(specs) + (i < pairs % len(specs)) for i in range(len(specs))]
    for spec, source, n in zip(specs, sources, per_backbone):
        folder, key = out / _folder(source), (spec.base.input_mean, spec.base.input_std)
        data_b = images[key]
        if key not in holdouts:  # the held-out images decoded once per normalisation, shared by its super-nets
            holdouts[key] = eval_batches(data_b.holdout)
        with phases(f"supernet/{spec.backbone}", f"calibrating and fine-tuning the {spec.backbone} super-net"):
            with scope:
                starts[spec.backbone] = _start(folder / START_FILE, source, spec, data_b, weights_dir)
                net = _supernet(
                    folder / SUPERNET_FILE, folder / START_FILE, spec, data_b, epochs, lr, label_smoothing, verbose
                )
        evaluators[spec.backbone] = SubnetEvaluator(net, holdouts[key])
        with phases(f"pairs/{spec.backbone}", f"measuring {n} {spec.backbone} sub-nets on the held-out images"):
            a, acc = _measure_pairs(folder / PAIRS_FILE, evaluators[spec.backbone], n, seed, verbose)
        archs += a
        accuracies += acc
    accuracies = np.array(accuracies)
    with phases("predictor", f"fitting the accuracy predictor on {len(archs)} pairs"):
        predictor, report = _predictor(out, joint, archs, accuracies, seed, predictor_epochs)
    _progress(_ranking_note(report))
    objective = _objective(report, predictor, joint)
    reference = DEFAULT_BACKBONE if DEFAULT_BACKBONE in joint.specs else joint.backbones[0]
    fixed = space.fixed_baseline(joint.specs[reference], budget_mb)
    with phases("evolution", f"per backbone, {generations} generations of {population} under {budget_mb} MB"):
        finalists = _finalists(joint, objective, budget_mb, population, generations, seed, out, fixed, verbose)
    contenders = [r.arch for r in finalists if r.arch != fixed] + ([] if fixed is None else [fixed])
    with phases("confirm", f"fine-tuning {len(contenders)} networks for {confirm_epochs} epochs from the start"):
        settings = {
            "epochs": confirm_epochs,
            "seed": seed,
            "batch_size": batch_size,
            "label_smoothing": label_smoothing,
            "holdout_examples": first.num_holdout,
        }
        runs = _confirm(out / CONFIRM_FILE, settings, contenders, starts, data, val_fraction, verbose)

    def entry(arch):
        run = runs[_key(arch.to_dict())]
        return {
            "backbone": arch.backbone,
            "config": arch.to_dict(),
            "method": run["method"],
            "resolution": arch.resolution,
            "predicted_accuracy": float(predict_accuracy(predictor, joint, [arch])[0]),
            "supernet_holdout_accuracy": float(evaluators[arch.backbone].hits([arch])[0].mean()),
            "holdout_accuracy": run["holdout_accuracy"],
            "predicted_memory_mb": joint.memory_mb(arch),
            "hits": np.array([c == "1" for c in run["hits"]]),
        }

    verdict = _compare(
        [entry(a) for a in contenders if a != fixed],
        None if fixed is None else entry(fixed),
        {"backbone": reference, "config": None, "note": _no_baseline_note(reference)},
    )
    _report_comparison(verdict, budget_mb)
    chosen = verdict[verdict["chosen"]]
    winner = joint.arch_from_dict(chosen["config"], "chosen")
    measurement = None
    if measure:
        with phases("measure", "exporting the chosen sub-net and measuring its LiteRT train step"):
            model = starts[winner.backbone].extract_subnet(winner, space.arch_method(winner))
            measurement = _measure_winner(model, budget_mb)
    source = sources[joint.backbones.index(winner.backbone)]
    subnet = {
        "format": SUBNET_FORMAT,
        "backbone": str(source),
        "config": winner.to_dict(),
        "resolution": winner.resolution,
        "predicted_accuracy": chosen["predicted_accuracy"],
        "holdout_accuracy": chosen["holdout_accuracy"],
        "predicted_memory_mb": chosen["predicted_memory_mb"],
        "budget_mb": budget_mb,
        "measured": measurement,
        "chosen": verdict["chosen"],
        "candidate": verdict["search"],
        "finalists": verdict["finalists"],
        "holdout_lead": verdict["lead"],
        "holdout_lead_error": verdict["lead_error"],
        "baseline": verdict["baseline"],
        "objective": report["objective"],
        "predictor": report,
        "phase_seconds": dict(phases.seconds),
        "start": f"{_folder(source)}/{START_FILE}",
        "search": {
            "data": str(data),
            "backbones": [str(s) for s in sources],
            "epochs": epochs,
            "pairs": pairs,
            "population": population,
            "generations": generations,
            "confirm_epochs": confirm_epochs,
            "seed": seed,
            "reproducibility": reproducibility,
            "batch_size": batch_size,
            "lr": lr,
            "train_examples": first.num_train,
            "holdout_examples": first.num_holdout,
            "best_per_generation": {r.arch.backbone: list(r.history) for r in finalists},
        },
        "spec": joint.specs[winner.backbone].to_dict(),
    }
    _write_json(out / SUBNET_FILE, subnet)
    return subnet


def _no_baseline_note(reference):
    return f"{reference} fits the budget at no searched resolution, with or without lite branches"


def _finalists(joint, objective, budget_mb, population, generations, seed, out, fixed, verbose):
    """Phase 4: per backbone that has a sub-net within the budget, the best by `objective` from its own evolution
    (`evolve`; the fixed baseline's backbone starts from it), best first. One finalist per backbone, not the joint
    top few: sub-nets of one backbone share its features, so the top of a joint ranking is often one backbone."""
    results = []
    for name, spec in joint.specs.items():
        if space.min_memory_mb(spec) > budget_mb:
            _progress(f"evolution: no {name} sub-net fits {budget_mb} MB; it has no finalist")
            continue
        _progress(f"evolution: {name}")
        initial = (fixed,) if fixed is not None and fixed.backbone == name else ()
        results.append(
            evolve(
                spec,
                objective,
                budget_mb,
                population,
                generations,
                seed=seed,
                state_path=out / evolution_file(name),
                verbose=verbose,
                initial=initial,
            )
        )
    return sorted(results, key=lambda r: -r.score)


def _confirm(path, settings, archs, starts, data, val_fraction, verbose):
    """Phase 5: each of `archs` fine-tuned as `train` fine-tunes it (`_fine_tune`), {key: record}; saved after each
    network in `path`, so an interrupted phase resumes."""
    done = json.loads(path.read_text()) if path.exists() else {"format": CONFIRM_FORMAT, "runs": {}}
    if done.get("format") != CONFIRM_FORMAT or done.get("settings", settings) != settings:
        raise ValueError(
            f"{path} holds fine-tunes of another search ({done.get('settings')}); use another --out or delete it"
        )
    done["settings"] = settings
    for i, arch in enumerate(archs, start=1):
        key = _key(arch.to_dict())
        if key in done["runs"]:
            continue
        _progress(
            f"confirm: {i}/{len(archs)}: {arch.backbone} {space.METHOD_LABELS[space.arch_method(arch)]} at "
            f"{arch.resolution} px, depths {list(arch.depths)}, {sum(arch.lites)} lite branches"
        )
        done["runs"][key] = _fine_tune(starts[arch.backbone], arch, data, val_fraction, settings, verbose)
        _write_json(path, done)
    return done["runs"]


def _fine_tune(start, arch, data, val_fraction, settings, verbose):
    """One network of phase 5: `arch` from the start super-net's weights, trained on the 80% at its own resolution
    with its method's default learning rate, cosine to 0 over the settings' epochs, and its hits on the 20%.

    Why not the fine-tuned super-net's held-out accuracy: after its few epochs of sharing every weight among
    sub-nets it ranks how fast an extractor starts to learn, not where its own fine-tuning ends (Stanford Cars,
    196 classes: the sub-nets scored 3-8% there, and the one that led by 2.5 points finished 14.5 behind)."""
    method, b = space.arch_method(arch), start.spec.base
    images = datasets.load_image_folder(
        data,
        arch.resolution,
        b.input_mean,
        b.input_std,
        settings["batch_size"],
        val_fraction=val_fraction,
        seed=settings["seed"],
        holdout_fraction=HOLDOUT_FRACTION,
    )
    seed_everything(settings["seed"])  # every network trains from the same draws, in any order, resumed or not
    model = start.extract_subnet(arch, method)
    began, lr = time.monotonic(), default_lr(method)
    history = fit(model, images.train, settings["epochs"], lr, settings["label_smoothing"], verbose)
    right = hits(model, images.holdout)
    if right.size != settings["holdout_examples"]:
        raise RuntimeError("the held-out images changed during the search; delete OUT/confirm.json and resume")
    return {
        "config": arch.to_dict(),
        "method": method,
        "lr": lr,
        "train_accuracy": float(history.history["accuracy"][-1]),
        "holdout_accuracy": float(right.mean()),
        "hits": "".join("1" if h else "0" for h in right),
        "seconds": round(time.monotonic() - began, 1),
    }


def _compare(finalists, fixed, missing_baseline):
    """The finalists (entries with per-image `hits`, none of them the baseline) against the `fixed` baseline's entry
    (None when it fits the budget nowhere: `missing_baseline` stands in), image by image on the held-out images
    after the same short fine-tune.

    The best finalist is kept (`chosen` "search") only when it leads the baseline by at least two standard errors of
    the paired difference: held-out images are few (CIFAR-10's 1,000 gave a paired standard error near 1.2 points),
    and there a 1.8-point lead inside that noise became a 1.2-point loss after fine-tuning. The held-out images are
    the same, in the same fixed order, for every backbone and resolution (`data.load_image_folder`'s holdout)."""

    def public(e):
        return {k: v for k, v in e.items() if k != "hits"}

    if not finalists:  # the only finalist was the baseline itself
        return {
            "search": public(fixed),
            "finalists": [],
            "baseline": public(fixed),
            "chosen": "baseline",
            "lead": 0.0,
            "lead_error": 0.0,
        }
    best = max(finalists, key=lambda e: e["hits"].mean())  # the first of equals: the best predicted
    verdict = {"search": public(best), "finalists": [public(e) for e in finalists], "chosen": "search"}
    if fixed is None:
        return {**verdict, "baseline": missing_baseline, "lead": None, "lead_error": None}
    if fixed["hits"].shape != best["hits"].shape:
        raise RuntimeError("the held-out images differ between networks; the paired comparison needs the same ones")
    difference = best["hits"].astype(np.float64) - fixed["hits"]
    lead, error = float(difference.mean()), float(difference.std(ddof=1) / math.sqrt(max(len(difference), 1)))
    verdict.update(baseline=public(fixed), lead=lead, lead_error=error)
    if lead <= 0 or lead < 2 * error:
        verdict["chosen"] = "baseline"
    return verdict


def _report_comparison(verdict, budget_mb):
    """The finalists and the fixed baseline side by side on stderr, and which the search keeps: a warning when it
    keeps the baseline (the best finalist's held-out lead is not two standard errors of the paired difference) or
    when no baseline fits."""
    for c in verdict["finalists"]:
        _progress(
            f"finalist: {c['backbone']} at {c['resolution']} px, depths {c['config']['depths']}, "
            f"{sum(c['config']['lites'])} lite branches; predicted accuracy {c['predicted_accuracy']:.1%}, super-net "
            f"held-out {c['supernet_holdout_accuracy']:.1%}, fine-tuned held-out {c['holdout_accuracy']:.1%}, "
            f"predicted memory {c['predicted_memory_mb']:.2f} MB (budget {budget_mb} MB)"
        )
    b = verdict["baseline"]
    if b["config"] is None:
        _warn(f"no fixed baseline to compare with: {b['note']}; keeping the best finalist")
        return
    method = space.METHOD_LABELS[b["method"]]
    _progress(
        f"fixed baseline: {b['backbone']} {method} at {b['resolution']} px; predicted accuracy "
        f"{b['predicted_accuracy']:.1%}, super-net held-out {b['supernet_holdout_accuracy']:.1%}, fine-tuned "
        f"held-out {b['holdout_accuracy']:.1%}, predicted memory {b['predicted_memory_mb']:.2f} MB"
    )
    if not verdict["finalists"]:
        _warn("every backbone's best sub-net is the fixed baseline itself; subnet.json holds it")
        return
    ahead = verdict["lead"]
    side = f"leads the fixed baseline by {ahead:+.1%}" if ahead > 0 else f"trails the fixed baseline by {-ahead:.1%}"
    lead = (
        f"the best finalist {side} on the held-out images (two standard errors of the paired difference: "
        f"{2 * verdict['lead_error']:.1%})"
    )
    if verdict["chosen"] == "baseline":
        _warn(
            f"{lead}: no measurable gain, so subnet.json holds the fixed baseline (the best finalist is kept under "
            f'"candidate"); its equivalent from the pretrained backbone: train --backbone {b["backbone"]} '
            f"--method {b['method']} --resolution {b['resolution']}"
        )
    else:
        _progress(f"{lead}: subnet.json holds it")


def _measure_winner(model, budget_mb):
    """The winner's exported LiteRT train step measured in a fresh process; a warning when it needs more than the
    budget (the memory predictor was wrong for this network)."""
    from tinytl_tf.jobs.memory import measure_model

    row = measure_model(model, progress=lambda stage: _progress(f"measure: {stage}"))
    train_mb = row["measured_train_mb"]
    _progress(f"measure: the winner's LiteRT train step grew memory by {train_mb:.2f} MB (budget {budget_mb} MB)")
    if train_mb > budget_mb:
        _warn(
            f"the winner measures {train_mb:.2f} MB in a LiteRT train step, over the {budget_mb} MB budget: "
            f"the memory predictor the search constrains underestimated this network"
        )
    return {**row, "over_budget": train_mb > budget_mb}
