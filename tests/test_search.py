"""The search: the TF-free space, the accuracy predictor, the evolutionary search and the `search` CLI."""

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

from tinytl_tf.backbones import backbone_config
from tinytl_tf.config import BlockConfig, ConfigError, ConvConfig, NetConfig
from tinytl_tf.contract import DEFAULT_OPTIMIZER
from tinytl_tf.memory import predict_train_mb, training_memory
from tinytl_tf.methods import TRAINABLE, method_config
from tinytl_tf.supernet import space

MB_BACKBONES = ("mcunet-5fps", "proxyless-w0.3", "mbv2-w0.35")
RESOLUTIONS = (96, 128, 160)


def make_spec(backbone="mcunet-5fps", resolutions=RESOLUTIONS, num_classes=10, elastic_width=True):
    base = backbone_config(backbone).replace(num_classes=num_classes, dropout=0.2)
    return space.super_spec(base, backbone, resolutions, elastic_width)


@pytest.fixture(scope="module")
def spec():
    """The space with kernel and expand elasticity too (the one weights trained for it get), to test every gene."""
    return make_spec()


def test_default_space_keeps_every_pretrained_kernel_and_width():
    s = make_spec(elastic_width=False)
    assert all((sl.kernels, sl.expands) == ((sl.kernel,), (sl.ratio,)) for sl in s.slots)
    rng = np.random.default_rng(0)
    for _ in range(50):
        cfg = space.subnet_config(s, space.sample(s, rng))
        kept = {(b.kernel, b.mid, b.out) for b in cfg.blocks}
        assert kept <= {(b.kernel, b.mid, b.out) for b in backbone_config("mcunet-5fps").blocks}


def test_searchable_backbones_come_from_the_registry():
    from tinytl_tf.backbones.registry import BACKBONES

    names = space.searchable_backbones()
    assert set(MB_BACKBONES) <= set(names) <= set(BACKBONES)
    assert "proxylessnas-mobile" not in names  # no pretrained weights offline


def test_the_search_budgets_with_the_engine_memory_predictor(spec):
    cfg = space.subnet_config(spec, space.backbone_arch(spec))
    adam, sgd = space.predicted_memory_mb(cfg, "adam"), space.predicted_memory_mb(cfg, "sgd")
    assert adam == pytest.approx(predict_train_mb(cfg, "adam")) and sgd == pytest.approx(predict_train_mb(cfg, "sgd"))
    # by default the export's optimizer, whose state is what the device will hold
    default = space.predicted_memory_mb(cfg)
    assert default == pytest.approx(predict_train_mb(cfg, DEFAULT_OPTIMIZER)) and sgd < default < adam
    # Adam adds at least its two float slots per trainable parameter (and its update's temporaries); the runtime is
    # counted, unlike in the paper's analytic model, which the predicted figure must exceed
    assert adam - sgd >= 8 * training_memory(cfg).trainable_params / 1e6
    assert sgd > training_memory(cfg).total_mb


def test_lite_branch_absent_removes_it_and_its_genes_from_the_encoding(spec):
    a = space.backbone_arch(spec)
    bare = dataclasses.replace(a, lites=(0,) + a.lites[1:])
    assert space.subnet_config(spec, bare).blocks[spec.slots[0].index].lite is None
    assert space.memory_mb(spec, bare) < space.memory_mb(spec, a)
    other = dataclasses.replace(bare, lite_kernels=(3 if a.lite_kernels[0] == 5 else 5,) + a.lite_kernels[1:])
    assert np.array_equal(space.encode(spec, other), space.encode(spec, bare))


def test_joint_space_chooses_the_backbone():
    joint = space.JointSpace([make_spec(b, elastic_width=False) for b in MB_BACKBONES])
    rng = np.random.default_rng(0)
    archs = [joint.sample(rng) for _ in range(60)]
    archs += [joint.mutate(a, rng, prob=0.5) for a in archs[:30]]
    archs += [joint.crossover(a, b, rng) for a, b in zip(archs[:30], archs[30:60])]
    assert {a.backbone for a in archs} == set(MB_BACKBONES)
    for a in archs:
        assert joint.arch_from_dict(a.to_dict()) == a
        e = joint.encode(a)
        assert e.shape == (joint.encoding_length(),) and e[joint.backbones.index(a.backbone)] == 1
    assert joint.min_memory_mb() == min(space.min_memory_mb(s) for s in joint.specs.values())
    with pytest.raises(ConfigError, match="one super-net per backbone"):
        space.JointSpace([make_spec(), make_spec()])


def test_fixed_baseline_is_the_largest_fitting_resolution(spec):
    full = space.backbone_arch(spec)
    at = {r: space.memory_mb(spec, dataclasses.replace(full, resolution=r)) for r in spec.resolutions}
    assert space.fixed_baseline(spec, at[128]) == dataclasses.replace(full, resolution=128)
    assert space.fixed_baseline(spec, at[160] + 1).resolution == 160
    assert space.arch_method(space.fixed_baseline(spec, at[128])) == "tinytl-lb"
    # below the lite network's smallest resolution: the same backbone without lite branches (TinyTL-B)
    bias_only = {r: dataclasses.replace(full, resolution=r, lites=(0,) * len(full.lites)) for r in spec.resolutions}
    bias_mb = {r: space.memory_mb(spec, a) for r, a in bias_only.items()}
    assert max(bias_mb.values()) < at[min(spec.resolutions)]  # what makes the fallback reachable
    fallback = space.fixed_baseline(spec, at[min(spec.resolutions)] - 0.01)
    fits = [r for r in spec.resolutions if bias_mb[r] <= at[min(spec.resolutions)] - 0.01]
    assert fallback == bias_only[max(fits)] and space.arch_method(fallback) == "tinytl-b"
    assert space.fixed_baseline(spec, min(bias_mb.values()) - 0.01) is None


# --- space -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("module", ["tinytl_tf.supernet.space", "tinytl_tf.supernet.ranking"])
def test_space_and_ranking_import_no_tensorflow(module):
    code = f"import sys, {module}; sys.exit(int('tensorflow' in sys.modules or 'keras' in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.mark.parametrize("backbone", MB_BACKBONES)
def test_backbone_arch_is_the_backbone(backbone):
    s = make_spec(backbone)
    cfg = space.subnet_config(s, space.backbone_arch(s))
    original = backbone_config(backbone)
    assert tuple(dataclasses.replace(b, lite=None) for b in cfg.blocks) == original.blocks
    assert cfg.blocks[0].lite is None and all(b.lite is not None for b in cfg.blocks[1:])
    assert (cfg.stem, cfg.feature_mix, cfg.resolution) == (original.stem, original.feature_mix, 128)
    # TinyTL-L+B of the backbone built without the space: same network, same memory
    independent = method_config(original, "tinytl-lb", 10, resolution=128)
    assert cfg.blocks == independent.blocks and cfg.trainable == independent.trainable
    assert space.memory_mb(s, space.backbone_arch(s)) == space.predicted_memory_mb(independent)


def test_choices_are_capped_by_the_backbone(spec):
    base = backbone_config("mcunet-5fps")
    # block 4 of mcunet-5fps: 24 -> 120 channels (ratio 5), kernel 3
    slot = next(sl for sl in spec.slots if sl.index == 4)
    assert (slot.kernels, slot.expands, slot.ratio) == ((3,), (3, 4, 5), 5)
    assert [space.mid_channels(slot, e) for e in slot.expands] == [72, 96, 120]
    # a stage starts at every block without a shortcut; 1-block stages keep depth 1, 2-block stages depth 2
    for stage, choices in zip(spec.stages, spec.depth_choices):
        assert not base.blocks[spec.slots[stage[0]].index].shortcut
        assert all(spec.slots[p].shortcut for p in stage[1:])
        assert choices == {1: (1,), 2: (2,), 3: (2, 3)}[len(stage)]


def test_spec_round_trips_through_a_dict(spec):

    assert space.SuperSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_sample_mutate_crossover_stay_in_the_space(spec):
    rng = np.random.default_rng(0)
    length = space.encoding_length(spec)
    archs = [space.sample(spec, rng) for _ in range(40)]
    archs += [space.mutate(spec, a, rng, prob=0.5) for a in archs[:20]]
    archs += [space.crossover(spec, a, b, rng) for a, b in zip(archs[:20], archs[20:40])]
    for a in archs:
        space.validate_arch(spec, a)
        assert space.encode(spec, a).shape == (length,)
    assert len(set(archs)) > 50  # really random
    a, b = archs[0], archs[1]
    child = space.crossover(spec, a, b, rng)
    assert all(c in (x, y) for c, x, y in zip(child.kernels, a.kernels, b.kernels))
    assert space.mutate(spec, a, rng, prob=0.0) == a


def test_encode_is_one_hot_and_ignores_dropped_blocks(spec):
    a = space.backbone_arch(spec)
    deep_stage = next(i for i, c in enumerate(spec.depth_choices) if len(c) > 1)
    shallow = dataclasses.replace(a, depths=tuple(2 if i == deep_stage else d for i, d in enumerate(a.depths)))
    dropped = spec.stages[deep_stage][2]
    other_kernel = dataclasses.replace(
        shallow,
        lite_kernels=tuple((3 if k == 5 else 5) if p == dropped else k for p, k in enumerate(shallow.lite_kernels)),
    )
    full, cut = space.encode(spec, a), space.encode(spec, shallow)
    # one hot per kept gene: resolution + depths + 5 genes per kept slot
    assert full.sum() == 1 + len(spec.stages) + 5 * len(spec.slots)
    assert cut.sum() == 1 + len(spec.stages) + 5 * (len(spec.slots) - 1)
    assert np.array_equal(space.encode(spec, other_kernel), cut)  # a dropped block's genes do not matter


def test_memory_is_the_predicted_memory_and_min_is_a_lower_bound(spec):
    rng = np.random.default_rng(1)
    floor = space.min_memory_mb(spec)
    for _ in range(30):
        a = space.sample(spec, rng)
        m = space.memory_mb(spec, a)
        assert floor <= m
        cfg = space.subnet_config(spec, a)
        assert m == space.predicted_memory_mb(cfg) and cfg.method == "tinytl-lb"
        assert cfg.trainable == TRAINABLE["tinytl-lb"]
        assert len(cfg.blocks) == 1 + len(space.active_slots(spec, a))
    assert floor == space.memory_mb(spec, space.smallest_arch(spec))
    assert floor < space.memory_mb(spec, space.backbone_arch(spec))


def test_subnet_config_builds_the_chosen_blocks(spec):
    a = space.smallest_arch(spec)
    cfg = space.subnet_config(spec, a, method="tinytl-b")
    kept = space.active_slots(spec, a)
    for block, p in zip(cfg.blocks[1:], kept):
        s = spec.slots[p]
        assert block == BlockConfig(
            kernel=3,
            stride=s.stride,
            out=s.out,
            mid=space.make_divisible(3 * s.in_channels),
            shortcut=s.shortcut,
            lite=None,
        )
    assert cfg.resolution == 96 and cfg.method == "tinytl-b" and not cfg.trainable.lite_kernel


@pytest.mark.parametrize(
    "change,field",
    [
        ({"kernels": 4}, "subnet.config.kernels[0]"),
        ({"depths": 5}, "subnet.config.depths[3]"),
        ({"expands": 7}, "subnet.config.expands[0]"),
        ({"lite_groups": 3}, "subnet.config.lite_groups[0]"),
        ({"resolution": 100}, "subnet.config.resolution"),
        ({"width": 1}, "unknown field(s) ['width']"),
        ({"kernels": None}, "subnet.config.kernels"),
    ],
)
def test_bad_arch_dicts_name_the_field(spec, change, field):
    d = space.backbone_arch(spec).to_dict()
    for key, value in change.items():
        if key in d and isinstance(d[key], list) and value is not None:
            d[key][3 if key == "depths" else 0] = value
        else:
            d[key] = value
    with pytest.raises(ConfigError) as e:
        space.arch_from_dict(spec, d)
    assert field in str(e.value)


def test_arch_dict_round_trip(spec):
    a = space.sample(spec, np.random.default_rng(2))
    assert space.arch_from_dict(spec, a.to_dict()) == a
    d = a.to_dict()
    del d["lite_kernels"]
    with pytest.raises(ConfigError, match="missing field.*lite_kernels"):
        space.arch_from_dict(spec, d)
    with pytest.raises(ConfigError, match="subnet.config.kernels"):
        space.arch_from_dict(spec, {**a.to_dict(), "kernels": a.to_dict()["kernels"][:-1]})


# --- predictor ---------------------------------------------------------------------------------------------------


def synthetic_objective(spec, seed=0):
    """A fixed monotone function of the encoding: a saturating weighted sum of random positive gene weights."""
    w = np.random.default_rng(seed).uniform(0.0, 1.0, space.encoding_length(spec))

    def score(archs):
        return np.array([np.tanh(w @ space.encode(spec, a) / 20.0) for a in archs])

    return score


def test_rank_correlations_against_hand_computed_values():
    from tinytl_tf.supernet.ranking import rank_correlations

    # b orders a exactly -> 1; reversed -> -1; one swapped pair of 4: Spearman 1 - 6*2/60 = 0.8, Kendall (5-1)/6
    assert rank_correlations([1, 2, 3, 4], [10, 20, 30, 40]) == {
        "spearman": pytest.approx(1.0),
        "kendall": pytest.approx(1.0),
        "pairs": 4,
    }
    assert rank_correlations([1, 2, 3, 4], [4, 3, 2, 1])["kendall"] == pytest.approx(-1.0)
    r = rank_correlations([1, 2, 3, 4], [1, 3, 2, 4])
    assert r["spearman"] == pytest.approx(0.8) and r["kendall"] == pytest.approx(4 / 6)
    assert rank_correlations([1, 1, 1], [1, 2, 3])["spearman"] is None


def test_predictor_learns_a_monotone_function_of_the_encoding(spec):
    from tinytl_tf.supernet.predictor import fit_predictor, predict_accuracy
    from tinytl_tf.supernet.ranking import rank_correlations

    rng = np.random.default_rng(3)
    archs = list({space.sample(spec, rng) for _ in range(300)})
    objective = synthetic_objective(spec)
    y = objective(archs)
    seen, unseen = archs[:240], archs[240:]
    model = fit_predictor([space.encode(spec, a) for a in seen], y[:240], epochs=30, seed=0)
    r = rank_correlations(predict_accuracy(model, spec, unseen), y[240:])
    assert r["pairs"] == len(unseen) >= 50
    assert r["spearman"] > 0.9 and r["kendall"] > 0.75


# --- evolution ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def budget(spec):
    return round((space.min_memory_mb(spec) + space.memory_mb(spec, space.backbone_arch(spec))) / 2, 3)


def test_evolution_is_deterministic_respects_the_budget_and_improves(spec, budget):
    from tinytl_tf.supernet.evolution import evolve

    objective = synthetic_objective(spec)
    run = evolve(spec, objective, budget, population=16, generations=6, seed=5, verbose=0)
    assert evolve(spec, objective, budget, population=16, generations=6, seed=5, verbose=0) == run
    assert run.memory_mb == space.memory_mb(spec, run.arch) <= budget
    assert run.score == pytest.approx(objective([run.arch])[0])
    assert len(run.history) == 6 and all(a <= b for a, b in zip(run.history, run.history[1:]))
    assert run.history[-1] > run.history[0]  # better than the best of the first random population
    # and better than as many random sub-nets within the budget as the search scored
    rng = np.random.default_rng(0)
    random_fitting = [a for a in (space.sample(spec, rng) for _ in range(400)) if space.memory_mb(spec, a) <= budget]
    assert run.score >= max(objective(random_fitting[: 16 * 6]))


def test_interrupted_evolution_resumes_to_the_same_result(spec, budget, tmp_path):
    from tinytl_tf.supernet.evolution import evolve

    objective = synthetic_objective(spec)
    settings = dict(population=12, generations=5, seed=7, verbose=0)
    reference = evolve(spec, objective, budget, **settings)
    calls = []

    def crashing(archs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return objective(archs)

    state = tmp_path / "evolution.json"
    with pytest.raises(KeyboardInterrupt):
        evolve(spec, crashing, budget, state_path=state, **settings)
    assert json.loads(state.read_text())["generation"] == 2
    assert evolve(spec, objective, budget, state_path=state, **settings) == reference
    with pytest.raises(ValueError, match="other settings"):
        evolve(spec, objective, budget, state_path=state, **{**settings, "seed": 8})


def test_budget_below_the_smallest_subnet_names_it(spec):
    from tinytl_tf.supernet.evolution import evolve

    smallest = space.min_memory_mb(spec)
    with pytest.raises(ValueError, match=f"{smallest:.3f} MB"):
        evolve(spec, synthetic_objective(spec), smallest - 0.01, population=8, generations=1, verbose=0)


# --- the search job and the CLI ----------------------------------------------------------------------------------

CLASSES = ("Faces_easy", "Leopards", "Motorbikes")
# a small MB backbone with every kind of choice (kernels 3-7, expands 3/4/6, depths 2-3), so the end-to-end search
# traces in seconds; the real backbones' spaces are tested above and their super-nets in test_supernet.py
TINY_MB = NetConfig(
    name="tiny-mb",
    resolution=48,
    stem=ConvConfig(out=8, kernel=3, stride=2),
    num_classes=10,
    blocks=(
        BlockConfig(3, 1, 8),
        BlockConfig(7, 2, 16, mid=48),
        BlockConfig(5, 1, 16, mid=96, shortcut=True),
        BlockConfig(7, 1, 16, mid=96, shortcut=True),
        BlockConfig(3, 2, 24, mid=96),
    ),
)
TINY_RESOLUTIONS = (40, 48)


def tiny_spec():
    return space.super_spec(TINY_MB.replace(num_classes=len(CLASSES)), "tiny-mb", TINY_RESOLUTIONS, True)


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """A tiny search through the CLI on 3 embedded Caltech classes; returns a namespace of its inputs and OUT."""
    import shutil
    from types import SimpleNamespace

    import keras

    from tinytl_tf.backbones import build_model
    from tinytl_tf.cli import main
    from tinytl_tf.data import default_data_dir
    from tinytl_tf.supernet.supernet import write_weights_file

    root = tmp_path_factory.mktemp("search")
    for split in ("train", "test"):
        for c in CLASSES:
            shutil.copytree(default_data_dir() / split / c, root / "data" / split / c)
    keras.utils.set_random_seed(0)
    write_weights_file(
        root / "tiny-mb.npz", "tiny-mb", TINY_MB, {v.path: v.numpy() for v in build_model(TINY_MB).weights}
    )
    s = tiny_spec()
    run = SimpleNamespace(
        data=root / "data",
        out=root / "out",
        backbone=root / "tiny-mb.npz",
        budget=round((space.min_memory_mb(s) + space.memory_mb(s, space.backbone_arch(s))) / 2, 3),
    )
    run.args = lambda out=run.out, budget=run.budget, generations=2, measure=True: [
        "search",
        "--data",
        str(run.data),
        "--backbone",
        str(run.backbone),
        "--budget-mb",
        str(budget),
        "--resolutions",
        *map(str, TINY_RESOLUTIONS),
        "--epochs",
        "1",
        "--pairs",
        "6",
        "--population",
        "8",
        "--generations",
        str(generations),
        "--predictor-epochs",
        "10",
        "--out",
        str(out),
        *(() if measure else ("--no-measure",)),
    ]
    assert main(run.args()) == 0
    run.first = json.loads((run.out / "subnet.json").read_text())  # before the resume test extends the search
    return run


@pytest.mark.slow
def test_search_writes_a_valid_subnet_within_the_budget(searched):
    from tinytl_tf.methods import default_lr
    from tinytl_tf.supernet.subnet import read_subnet

    out = searched.out
    d = json.loads((out / "subnet.json").read_text())
    sub = read_subnet(out / "subnet.json")
    assert sub.start_path == out / "tiny-mb" / "start.keras" and sub.start_path.is_file()
    assert (out / "tiny-mb" / "supernet.keras").is_file()
    assert d["config"] == sub.arch.to_dict() and d["resolution"] == sub.arch.resolution in TINY_RESOLUTIONS
    memory = d["predicted_memory_mb"]
    assert memory == pytest.approx(space.memory_mb(sub.spec, sub.arch)) and memory <= searched.budget
    # the winner was exported and its LiteRT train step measured, with the verdict against the budget
    assert d["measured"]["measured_train_mb"] > 0
    assert d["measured"]["over_budget"] == (d["measured"]["measured_train_mb"] > searched.budget)
    # the fixed baseline beside it: the full backbone at the largest resolution within the budget
    base = d["baseline"]
    if base["config"] is not None:
        assert (
            base["config"]["depths"] == [len(st) for st in sub.spec.stages]
            and base["predicted_memory_mb"] <= memory + searched.budget
        )
        assert 0.0 <= base["holdout_accuracy"] <= 1.0
    assert set(d["phase_seconds"]) == {
        "supernet/tiny-mb",
        "pairs/tiny-mb",
        "predictor",
        "evolution",
        "confirm",
        "measure",
    }
    rankers = d["predictor"]["rankers"]
    assert set(rankers) == {"predictor", "predicted_memory", "resolution"} and d["objective"] in rankers
    assert sub.spec.base.labels == CLASSES and sub.spec.base.blocks == TINY_MB.blocks
    assert 0.0 <= d["holdout_accuracy"] <= 1.0 and isinstance(d["predicted_accuracy"], float)
    assert (d["predictor"]["train_pairs"], d["predictor"]["test_pairs"]) == (4, 2)
    assert (d["search"]["train_examples"], d["search"]["holdout_examples"]) == (72, 18)  # 80/20 of 3 x 30
    pairs = json.loads((out / "tiny-mb" / "pairs.json").read_text())["pairs"]
    assert len(pairs) == 6 and len({json.dumps(p["config"]) for p in pairs}) == 6
    assert json.loads((out / "evolution-tiny-mb.json").read_text())["generation"] == 2
    # the finalist (one backbone: one) and the baseline were fine-tuned from the start weights and scored image by
    # image on the 18 held-out images; the held-out accuracy of subnet.json is the chosen one's after that
    confirm = json.loads((out / "confirm.json").read_text())
    contenders = [c for c in (d["candidate"], base) if c["config"] is not None]
    assert sorted(confirm["runs"]) == sorted({json.dumps(c["config"], sort_keys=True) for c in contenders})
    for run in confirm["runs"].values():
        assert len(run["hits"]) == 18 and run["holdout_accuracy"] == pytest.approx(run["hits"].count("1") / 18)
        assert run["lr"] == default_lr(run["method"])
    chosen = d["candidate"] if d["chosen"] == "search" else base
    assert d["holdout_accuracy"] == chosen["holdout_accuracy"] and d["config"] == chosen["config"]
    assert 0.0 <= d["candidate"]["supernet_holdout_accuracy"] <= 1.0


@pytest.mark.slow
def test_search_resumes_without_redoing_finished_phases(searched):
    from tinytl_tf.cli import main

    out = searched.out
    before = {
        f: (out / f).stat().st_mtime_ns
        for f in ("tiny-mb/start.keras", "tiny-mb/supernet.keras", "tiny-mb/pairs.json", "predictor.keras")
    }
    confirm_before = json.loads((out / "confirm.json").read_text())["runs"]
    assert main(searched.args(generations=4, measure=False)) == 0
    assert {f: (out / f).stat().st_mtime_ns for f in before} == before
    d = json.loads((out / "subnet.json").read_text())
    assert json.loads((out / "evolution-tiny-mb.json").read_text())["generation"] == 4
    assert len(d["search"]["best_per_generation"]["tiny-mb"]) == 4 and d["predicted_memory_mb"] <= searched.budget
    # networks already fine-tuned in the confirm phase are not trained again
    first = json.loads((out / "confirm.json").read_text())["runs"]
    assert all(run == first[k] for k, run in confirm_before.items())


@pytest.mark.slow
def test_train_subnet_then_export(searched, tmp_path):
    import keras

    from tinytl_tf.cli import main
    from tinytl_tf.export import export_model
    from tinytl_tf.supernet.subnet import read_subnet
    from tinytl_tf.train import load_trained

    sub = read_subnet(searched.out / "subnet.json")
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--subnet",
                str(searched.out / "subnet.json"),
                "--data",
                str(searched.data),
                "--epochs",
                "1",
                "--batch-size",
                "8",
                "--out",
                str(run),
            ]
        )
        == 0
    )
    model = load_trained(run / "model.keras")
    assert model.net_config == space.subnet_config(sub.spec, sub.arch, "tinytl-lb")
    metrics = json.loads((run / "metrics.json").read_text())
    assert (metrics["method"], metrics["resolution"], metrics["backbone"]) == (
        "tinytl-lb",
        sub.arch.resolution,
        "tiny-mb-subnet",
    )
    # it started from the search's start weights: its frozen weights are the extracted ones, bit for bit
    extracted = keras.saving.load_model(sub.start_path, compile=False).extract_subnet(sub.arch)
    frozen = {v.path: v.numpy() for v in extracted.non_trainable_weights}
    assert frozen and all(np.array_equal(v.numpy(), frozen[v.path]) for v in model.non_trainable_weights)
    meta = export_model(model, tmp_path / "model.tflite", "adam", 1e-3, 10)  # checks LiteRT infer == Keras
    assert meta["input"]["height"] == sub.arch.resolution and meta["labels"] == list(CLASSES)


@pytest.mark.slow
def test_subnet_without_checkpoint_starts_from_the_pretrained_backbone(searched, tmp_path):
    import shutil

    from tinytl_tf.supernet.subnet import load_subnet, read_subnet
    from tinytl_tf.supernet.supernet import SuperNet

    shutil.copy(searched.out / "subnet.json", tmp_path / "subnet.json")
    notes = []
    model = load_subnet(tmp_path / "subnet.json", log=notes.append)
    assert len(notes) == 1 and f"pretrained {searched.backbone}" in notes[0]
    sub = read_subnet(tmp_path / "subnet.json")
    pretrained = SuperNet.from_backbone(str(searched.backbone), 3, CLASSES, TINY_RESOLUTIONS).extract_subnet(sub.arch)

    def backbone_weights(m):  # frozen weights and main biases (lite branches and the head are new, random)
        return {
            v.path: v.numpy()
            for v in m.weights
            if not v.trainable
            or (v.path.endswith("/bias") and "/lite/" not in v.path and not v.path.startswith("head/"))
        }

    got, want = backbone_weights(model), backbone_weights(pretrained)
    assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in got)


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda d: d.update(extra=1), "unknown field(s) ['extra']"),
        (lambda d: d["config"]["kernels"].__setitem__(0, 4), "subnet.config.kernels[0]: 4"),
        (lambda d: d["config"]["depths"].__setitem__(0, 5), "subnet.config.depths[0]: 5"),
        (lambda d: d.update(resolution=64), "subnet.resolution"),
        (lambda d: d["config"].pop("expands"), "missing field(s) ['expands']"),
    ],
)
@pytest.mark.slow
def test_hand_edited_subnet_json_exits_2_naming_the_field(searched, tmp_path, capsys, edit, message):
    from tinytl_tf.cli import main

    d = json.loads((searched.out / "subnet.json").read_text())
    edit(d)
    (tmp_path / "subnet.json").write_text(json.dumps(d))
    assert (
        main(
            [
                "train",
                "--subnet",
                str(tmp_path / "subnet.json"),
                "--data",
                str(searched.data),
                "--out",
                str(tmp_path / "run"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and "Traceback" not in err
    assert not (tmp_path / "run" / "model.keras").exists()


@pytest.mark.slow
def test_search_with_too_small_a_budget_names_the_smallest_memory(searched, tmp_path, capsys):
    from tinytl_tf.cli import main

    smallest = space.min_memory_mb(tiny_spec())
    assert main(searched.args(out=tmp_path / "out", budget=round(smallest * 0.9, 3), measure=False)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and f"{smallest:.3f} MB" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "tiny-mb" / "supernet.keras").exists()


@pytest.mark.slow
def test_same_seed_repeats_the_search_exactly(searched, tmp_path):
    """A second search from scratch with the same seed fine-tunes, measures and picks exactly as the first."""
    from tinytl_tf.cli import main

    assert main(searched.args(out=tmp_path / "again", measure=False)) == 0
    first, again = searched.first, json.loads((tmp_path / "again" / "subnet.json").read_text())
    assert again["config"] == first["config"] and again["holdout_accuracy"] == first["holdout_accuracy"]
    assert (
        json.loads((tmp_path / "again" / "tiny-mb" / "pairs.json").read_text())["pairs"]
        == json.loads((searched.out / "tiny-mb" / "pairs.json").read_text())["pairs"]
    )
    assert again["search"]["reproducibility"] == {**first["search"]["reproducibility"], "seed": 0}


def test_fine_tuning_at_chance_warns_on_stderr(capsys):
    from tinytl_tf.jobs.search import _warn_at_chance

    _warn_at_chance(0.5, 10)
    assert capsys.readouterr().err == ""
    for accuracy in (0.0875, 0.1):
        _warn_at_chance(accuracy, 10)
        err = capsys.readouterr().err
        assert err.startswith("warning:") and err.count("\n") == 1 and "10.0% for 10 classes" in err


def _entry(spec, arch, hits):
    """A network's record as the confirm phase leaves it: its per-image right/wrong after the short fine-tune."""
    return {
        "backbone": arch.backbone,
        "config": arch.to_dict(),
        "method": space.arch_method(arch),
        "resolution": arch.resolution,
        "predicted_accuracy": 0.5,
        "supernet_holdout_accuracy": 0.1,
        "holdout_accuracy": float(hits.mean()),
        "predicted_memory_mb": space.memory_mb(spec, arch),
        "hits": hits,
    }


def _verdict(spec, finalist_hits, baseline_hits):
    from tinytl_tf.jobs.search import _compare

    archs = [space.smallest_arch(spec), dataclasses.replace(space.smallest_arch(spec), resolution=128)]
    finalists = [_entry(spec, a, h) for a, h in zip(archs, finalist_hits)]
    return _compare(finalists, _entry(spec, space.backbone_arch(spec), baseline_hits), None)


def test_search_keeps_the_fixed_baseline_unless_the_best_finalist_leads_by_two_paired_standard_errors(spec, capsys):
    from tinytl_tf.jobs.search import _report_comparison

    n = 1000
    base = np.arange(n) < 700  # 70% right
    worse = np.arange(n) < 600
    # the better finalist right on 30 more images and wrong on none the baseline had: lead 3.0, paired error 0.54
    better = base | ((np.arange(n) >= 700) & (np.arange(n) < 730))
    verdict = _verdict(spec, [worse, better], base)
    assert verdict["chosen"] == "search" and verdict["lead"] == pytest.approx(0.03)
    assert verdict["search"]["holdout_accuracy"] == pytest.approx(0.73) and verdict["search"]["resolution"] == 128
    assert verdict["lead_error"] == pytest.approx(np.std(better.astype(float) - base, ddof=1) / np.sqrt(n))
    assert verdict["baseline"]["method"] == "tinytl-lb" and len(verdict["finalists"]) == 2
    assert "hits" not in verdict["search"] and all("hits" not in f for f in verdict["finalists"])
    _report_comparison(verdict, 5.0)
    err = capsys.readouterr().err
    assert "warning" not in err and f"fixed baseline: {spec.backbone} TinyTL-L+B at" in err
    assert err.count("finalist: ") == 2 and "fine-tuned held-out 73.0%" in err
    assert "leads the fixed baseline by +3.0%" in err and "subnet.json holds it" in err
    # the same 3-point lead from 200 images won and 170 lost: two paired errors are 3.8 points, so it is noise
    churn = base.copy()
    churn[700:900] = True
    churn[:170] = False
    verdict = _verdict(spec, [churn, worse], base)
    assert verdict["lead"] == pytest.approx(0.03) and 2 * verdict["lead_error"] == pytest.approx(0.0384, abs=1e-4)
    assert verdict["chosen"] == "baseline"
    _report_comparison(verdict, 5.0)
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "subnet.json holds the fixed baseline" in err
    assert "paired difference: 3.8%)" in err
    assert f"train --backbone {spec.backbone} --method tinytl-lb --resolution" in err
    churn[:300] = False  # behind
    verdict = _verdict(spec, [churn, worse], base)
    assert verdict["chosen"] == "baseline" and verdict["lead"] < 0
    _report_comparison(verdict, 5.0)
    assert f"the best finalist trails the fixed baseline by {-verdict['lead']:.1%} on" in capsys.readouterr().err


def test_search_without_a_fitting_baseline_keeps_the_best_finalist(spec, capsys):
    from tinytl_tf.jobs.search import _compare, _report_comparison

    n = 100
    finalists = [_entry(spec, space.smallest_arch(spec), np.arange(n) < 40)]
    missing = {"backbone": spec.backbone, "config": None, "note": "fits nowhere"}
    verdict = _compare(finalists, None, missing)
    assert verdict["chosen"] == "search" and verdict["baseline"] is missing and verdict["lead"] is None
    _report_comparison(verdict, 1.0)
    assert "warning: no fixed baseline to compare with: fits nowhere" in capsys.readouterr().err
    # every backbone's best sub-net was the baseline itself: it is the result, with nothing to compare
    base = _entry(spec, space.backbone_arch(spec), np.arange(n) < 50)
    verdict = _compare([], base, missing)
    assert verdict["chosen"] == "baseline" and verdict["search"] == verdict["baseline"] and verdict["lead"] == 0.0


def test_predictor_ranking_worse_than_a_baseline_says_what_the_search_optimises():
    from tinytl_tf.jobs.search import _ranking_note

    rankers = {
        "predictor": {"spearman": 0.2, "kendall": 0.1},
        "predicted_memory": {"spearman": 0.6, "kendall": 0.45},
        "resolution": {"spearman": None, "kendall": None},
    }
    note = _ranking_note({"rankers": rankers, "objective": "predicted_memory", "test_pairs": 20})
    assert "predictor Spearman 0.200 / Kendall 0.100" in note and "resolution undefined" in note
    assert "ranks worse than predicted_memory alone, so the search maximises predicted_memory" in note
    assert "ranks worse" not in _ranking_note({"rankers": rankers, "objective": "predictor", "test_pairs": 20})


def test_evolution_starts_from_the_given_subnets(spec):
    from tinytl_tf.supernet.evolution import evolve

    budget = space.memory_mb(spec, space.backbone_arch(spec))  # the backbone at 128 px
    fixed = space.fixed_baseline(spec, budget)
    assert fixed.resolution == 128

    def only_the_baseline_scores(archs):  # the search must keep what it was seeded with
        return np.array([1.0 if a == fixed else 0.0 for a in archs])

    run = evolve(
        spec, only_the_baseline_scores, budget, population=8, generations=2, seed=1, verbose=0, initial=(fixed,)
    )
    assert run.arch == fixed and run.score == 1.0
    over = dataclasses.replace(space.backbone_arch(spec), resolution=max(spec.resolutions))
    assert space.memory_mb(spec, over) > budget  # an over-budget seed is left out
    assert evolve(spec, only_the_baseline_scores, budget, population=8, generations=1, verbose=0, initial=(over,))


class _Interrupted(Exception):
    pass


class _StubEvaluator:
    """Stands in for `SubnetEvaluator`: a sub-net's 'accuracy' is its resolution / 1000; records what it measured
    and can stop after a number of calls, as an interrupted search does."""

    def __init__(self, spec, stop_after=None):
        self.net = type("Net", (), {"spec": spec})()
        self.calls, self.stop_after = [], stop_after

    def accuracies(self, archs):
        if self.stop_after is not None and len(self.calls) == self.stop_after:
            raise _Interrupted
        self.calls.append(list(archs))
        return np.array([a.resolution / 1000 for a in archs])


def test_pairs_are_measured_a_resolution_at_a_time_saved_in_drawn_order_and_resumed(spec, tmp_path, monkeypatch):
    import tinytl_tf.jobs.search as job

    monkeypatch.setattr(job, "PAIR_CHUNK", 4)
    path = tmp_path / "pairs.json"
    with pytest.raises(_Interrupted):
        job._measure_pairs(path, _StubEvaluator(spec, stop_after=2), 12, 0, verbose=0)
    assert len(json.loads(path.read_text())["pairs"]) == 8  # two chunks saved before the interruption
    evaluator = _StubEvaluator(spec)
    archs, accuracies = job._measure_pairs(path, evaluator, 12, 0, verbose=0)
    assert archs == job._pair_archs(spec, 12, 0) and accuracies == [a.resolution / 1000 for a in archs]
    assert sum(len(c) for c in evaluator.calls) == 4  # only what the interruption left
    for chunk in evaluator.calls:  # sorted by resolution, so a chunk mostly shares its resolution's layers
        assert [a.resolution for a in chunk] == sorted(a.resolution for a in chunk)
    saved = json.loads(path.read_text())["pairs"]
    assert [p["config"] for p in saved] == [a.to_dict() for a in archs]  # the order they were drawn in
    # fewer pairs asked for: the first ones, nothing measured, and the file keeps the others
    fewer, _ = job._measure_pairs(path, _StubEvaluator(spec, stop_after=0), 5, 0, verbose=0)
    assert fewer == archs[:5] and len(json.loads(path.read_text())["pairs"]) == 12


def test_confirm_record_of_another_search_is_refused_before_any_training(tmp_path):
    from tinytl_tf.jobs.search import CONFIRM_FORMAT, _confirm

    path = tmp_path / "confirm.json"
    settings = {"epochs": 3, "seed": 0, "batch_size": 8, "label_smoothing": 0.1, "holdout_examples": 18}
    path.write_text(json.dumps({"format": CONFIRM_FORMAT, "settings": {**settings, "epochs": 1}, "runs": {}}))
    arch = space.backbone_arch(tiny_spec())
    with pytest.raises(ValueError, match="holds fine-tunes of another search .*use another --out or delete it"):
        _confirm(path, settings, [arch], starts={}, data=tmp_path, val_fraction=None, verbose=0)
    # recorded networks are not trained again: with every one already in the record, nothing is built or fitted
    key = json.dumps(arch.to_dict(), sort_keys=True)
    path.write_text(json.dumps({"format": CONFIRM_FORMAT, "settings": settings, "runs": {key: {"hits": "01"}}}))
    assert _confirm(path, settings, [arch], starts={}, data=tmp_path, val_fraction=None, verbose=0) == {
        key: {"hits": "01"}
    }
