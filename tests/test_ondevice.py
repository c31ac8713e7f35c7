"""The LiteRT device trainer (`python -m tinytl_tf.ondevice`): no TensorFlow, desktop-identical preprocessing,
learning, exact resume, crash-safe checkpoints, validated inputs with rollback, and clear refusals."""

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tinytl_tf import contract, imagefiles, initial_values
from tinytl_tf.ondevice import DeviceModel, InputError, Trainer, evaluate_folder, train_folder
from tinytl_tf.ondevice.checkpoint import META_KEY, PAUSE_ENV, WEIGHT_PREFIX
from tinytl_tf.ondevice.cli import main
from tinytl_tf.ondevice.folder_training import TrainingDiverged, epoch_order, item_rng

pytestmark = pytest.mark.slow  # exports models and trains them in LiteRT

ROOT = Path(__file__).resolve().parents[1]
LABELS = ("green", "red", "blue")  # not sorted: class folders must map to labels by name, not by position
COLOURS = {"red": (230, 30, 30), "green": (30, 230, 30), "blue": (30, 30, 230)}
TRAIN_PER_CLASS, TEST_PER_CLASS = 8, 3
TRAIN_STEPS = 3 * TRAIN_PER_CLASS - 1  # one train file is corrupt and skipped
EPOCHS = 8  # to learn the colours with margin: 3 epochs sometimes stop at 2/3 test accuracy


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    """A tiny TinyTL-L+B model exported once (TensorFlow is only needed here, to make the file)."""
    from tests.tiny import tiny_backbone
    from tinytl_tf.export import export_model
    from tinytl_tf.transfer import prepare_transfer

    model = prepare_transfer(tiny_backbone(), "tinytl-lb", len(LABELS), labels=LABELS, dropout=0.0)
    path = tmp_path_factory.mktemp("model") / "model.tflite"
    export_model(model, path, "adam", lr=1e-2, total_steps=1000, label_smoothing=0.1)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """DIR/train/<colour>/ and DIR/test/<colour>/ of noisy solid-colour images of varying sizes (easily
    separable), plus one corrupt file in train/red."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for split, n in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
        for name, colour in COLOURS.items():
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                h, w = rng.integers(24, 64, size=2)
                pixels = np.clip(np.array(colour) + rng.normal(0, 10, (h, w, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"img_{i}.png")
    (root / "train" / "red" / "img_0.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return root


def cli(capsys, *args):
    """Run the CLI in-process: (exit code, parsed JSON result or None, stderr)."""
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, (json.loads(out.strip().splitlines()[-1]) if code == 0 else None), err


def checkpoint_weights(path):
    with np.load(path, allow_pickle=False) as z:
        return {k[len(WEIGHT_PREFIX) :]: z[k] for k in z.files if k.startswith(WEIGHT_PREFIX)}


def checkpoint_meta(path):
    with np.load(path, allow_pickle=False) as z:
        return json.loads(str(z[META_KEY][()]))


def assert_same_weights(a, b, atol=1e-6):
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=0, atol=atol, err_msg=name)


def test_commands_never_import_tensorflow(model_path, data, tmp_path):
    script = f"""
import json, sys
from tinytl_tf.ondevice.cli import main
m, d, ck = {str(model_path)!r}, {str(data)!r}, {str(tmp_path / "ck.npz")!r}
codes = [main(["evaluate", "--model", m, "--data", d]),
         main(["train", "--model", m, "--data", d, "--epochs", "1", "--checkpoint", ck]),
         main(["predict", "--model", m, "--checkpoint", ck, d + "/test/red/img_0.png"])]
heavy = sorted(n for n in sys.modules if n.split(".")[0] in ("tensorflow", "keras", "tf_keras", "tensorflow_datasets"))
print(json.dumps({{"codes": codes, "heavy": heavy}}))
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert json.loads(lines[-1]) == {"codes": [0, 0, 0], "heavy": []}
    assert json.loads(lines[1])["global_steps"] == TRAIN_STEPS
    assert json.loads(lines[2])["predictions"][0]["top"][0]["label"] in LABELS


def test_training_learns_and_evaluate_matches_the_interpreter(model_path, data, tmp_path, capsys):

    ck = tmp_path / "ck.npz"
    code, before, _ = cli(capsys, "evaluate", "--model", model_path, "--data", data)
    assert code == 0
    code, summary, err = cli(
        capsys, "train", "--model", model_path, "--data", data, "--epochs", EPOCHS, "--checkpoint", ck
    )
    assert code == 0, err
    assert (summary["epochs"], summary["global_steps"], summary["skipped"], summary["rolled_back"]) == (
        EPOCHS,
        EPOCHS * TRAIN_STEPS,
        1,
        0,
    )
    assert summary["history"][-1]["loss"] < summary["history"][0]["loss"]
    assert f"epoch {EPOCHS}/{EPOCHS}  step {TRAIN_STEPS}/{TRAIN_STEPS}" in err  # the progress line
    code, after, _ = cli(capsys, "evaluate", "--model", model_path, "--data", data, "--checkpoint", ck)
    assert code == 0 and after["examples"] == before["examples"] == 3 * TEST_PER_CLASS

    # the same numbers straight from the interpreter with the checkpoint's weights
    interpreter = initial_values.open_interpreter(model_path)
    initial = interpreter.get_signature_runner("get_weights")(unused=np.float32(0))
    trained = checkpoint_weights(ck)
    assert any(not np.array_equal(initial[k], trained[k]) for k in initial)
    interpreter.get_signature_runner("set_weights")(**trained)
    infer = interpreter.get_signature_runner("infer")
    meta = json.loads(Path(contract.model_json_path(model_path)).read_text())
    mean, std = meta["input"]["mean"], meta["input"]["std"]
    correct, cross_entropy = 0, 0.0
    files = sorted((data / "test").glob("*/*.png"))
    for f in files:
        x = imagefiles.normalize(imagefiles.eval_transform(imagefiles.load_rgb(f), 36), mean, std)[None]
        p = infer(x=x)["probabilities"][0]
        label = LABELS.index(f.parent.name)
        correct += int(np.argmax(p) == label)
        cross_entropy -= np.log(p[label])
    assert after["accuracy"] == correct / len(files)
    assert after["cross_entropy"] == pytest.approx(cross_entropy / len(files), rel=1e-6)
    assert after["accuracy"] >= 0.75 and after["cross_entropy"] < before["cross_entropy"]  # chance: 1/3

    code, on_train, _ = cli(capsys, "evaluate", "--model", model_path, "--data", data / "train", "--checkpoint", ck)
    assert (on_train["examples"], on_train["skipped"]) == (TRAIN_STEPS, 1) and on_train["accuracy"] >= 0.75


def test_preprocessing_is_imagefiles_and_equals_the_desktop_pipeline(model_path, data, tmp_path, monkeypatch):
    seen = {"infer": [], "train": []}
    infer, train = DeviceModel.infer, DeviceModel.train
    monkeypatch.setattr(DeviceModel, "infer", lambda self, x: seen["infer"].append(x.copy()) or infer(self, x))
    monkeypatch.setattr(
        DeviceModel, "train", lambda self, x, y, lr: seen["train"].append(x.copy()) or train(self, x, y, lr)
    )
    evaluate_folder(model_path, data)
    train_folder(model_path, data, 1, tmp_path / "ck.npz", seed=5)

    meta = json.loads(Path(contract.model_json_path(model_path)).read_text())
    mean, std = meta["input"]["mean"], meta["input"]["std"]
    test = imagefiles.scan_test_folder(data, LABELS).test
    want = [
        imagefiles.normalize(imagefiles.eval_transform(imagefiles.load_rgb(f), 36), mean, std)[None] for f, _ in test
    ]
    assert len(seen["infer"]) == len(want)
    for got, expected in zip(seen["infer"], want):
        np.testing.assert_array_equal(got, expected)

    split = imagefiles.scan_image_folder(data, seed=5)
    order = epoch_order(5, 0, len(split.train))
    assert len(seen["train"]) == len(order) == TRAIN_STEPS
    for i, got in enumerate(seen["train"]):
        image = imagefiles.load_rgb(split.train[order[i]][0])
        np.testing.assert_array_equal(
            got, imagefiles.normalize(imagefiles.train_transform(image, 36, item_rng(5, 0, i)), mean, std)[None]
        )

    from tinytl_tf.data import load_eval_folder  # the desktop tf.data pipeline (test side only)

    desktop = load_eval_folder(data, 36, mean, std, batch_size=len(want), class_names=LABELS)
    x, y = next(iter(desktop.test))
    np.testing.assert_allclose(np.concatenate(seen["infer"]), x.numpy(), rtol=0, atol=1e-6)
    assert list(y.numpy()) == [label for _, label in test]


def test_resume_equals_an_uninterrupted_run(model_path, data, tmp_path):
    resumed_ck, straight_ck = tmp_path / "resumed.npz", tmp_path / "straight.npz"
    first = train_folder(model_path, data, 1, resumed_ck, seed=3)
    second = train_folder(model_path, data, 2, resumed_ck, seed=3)
    straight = train_folder(model_path, data, 2, straight_ck, seed=3)
    assert first["resumed"] is None and second["resumed"] == {
        "checkpoint": str(resumed_ck),
        "epoch": 1,
        "step_in_epoch": 0,
    }
    assert second["steps"] == TRAIN_STEPS and second["global_steps"] == straight["global_steps"] == 2 * TRAIN_STEPS
    assert_same_weights(checkpoint_weights(resumed_ck), checkpoint_weights(straight_ck))
    assert [h["loss"] for h in second["history"]] == pytest.approx([h["loss"] for h in straight["history"]], abs=1e-6)
    again = train_folder(model_path, data, 2, resumed_ck, seed=3)  # already complete: nothing to do
    assert again["steps"] == 0 and again["epochs"] == 2


def test_sigkill_while_writing_a_checkpoint_loses_nothing(model_path, data, tmp_path):
    ck = tmp_path / "ck.npz"
    temps = lambda: sorted(tmp_path.glob(".ck.npz.*.tmp"))  # noqa: E731
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tinytl_tf.ondevice",
            "train",
            "--model",
            str(model_path),
            "--data",
            str(data),
            "--epochs",
            "2",
            "--checkpoint",
            str(ck),
            "--checkpoint-every",
            "1",
            "--seed",
            "3",
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), PAUSE_ENV: "0.2"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not (ck.with_name("ck.npz.prev").exists() and temps()):  # a third write sits in its pause
            assert proc.poll() is None and time.monotonic() < deadline, "the trainer ended before it could be killed"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    assert temps(), "killed outside the write window"
    fingerprint = hashlib.sha256(model_path.read_bytes()).hexdigest()
    meta = checkpoint_meta(ck)
    assert meta["fingerprint"] == fingerprint and checkpoint_meta(str(ck) + ".prev")["fingerprint"] == fingerprint
    assert 0 < meta["state"]["global_steps"] < TRAIN_STEPS and len(checkpoint_weights(ck)) > 0

    summary = train_folder(model_path, data, 2, ck, seed=3, checkpoint_every=1)
    assert summary["resumed"] == {"checkpoint": str(ck), "epoch": 0, "step_in_epoch": meta["state"]["step_in_epoch"]}
    assert summary["global_steps"] == 2 * TRAIN_STEPS and not temps()
    train_folder(model_path, data, 2, tmp_path / "straight.npz", seed=3)
    assert_same_weights(checkpoint_weights(ck), checkpoint_weights(tmp_path / "straight.npz"))


def test_foreign_checkpoint_is_refused_and_untouched(model_path, data, tmp_path, capsys):
    ck = tmp_path / "ck.npz"
    train_folder(model_path, data, 1, ck)
    with np.load(ck, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays[META_KEY][()]))
    arrays[META_KEY] = np.array(json.dumps({**meta, "fingerprint": "f" * 64}))
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, **arrays)
    before = foreign.read_bytes()
    for command in (("train", "--data", data, "--epochs", 2), ("evaluate", "--data", data)):
        code, _, err = cli(capsys, *command, "--model", model_path, "--checkpoint", foreign)
        assert (
            code == 2 and err.splitlines()[-1].startswith("error: checkpoint") and "belongs to another model" in err
        ), err
    left = sorted(p.name for p in tmp_path.iterdir() if p.suffix != ".lock")  # lock files stay (see _exclusive)
    assert foreign.read_bytes() == before and left == ["ck.npz", "foreign.npz"]


def test_truncated_checkpoint_is_reported_and_prev_used(model_path, data, tmp_path, capsys):
    ck, prev = tmp_path / "ck.npz", tmp_path / "ck.npz.prev"
    train_folder(model_path, data, 2, ck)
    assert checkpoint_meta(prev)["state"]["epoch"] == 1  # the rotation kept epoch 1 when epoch 2 was written
    after_two_epochs = checkpoint_weights(ck)
    ck.write_bytes(ck.read_bytes()[: ck.stat().st_size // 2])

    code, summary, err = cli(capsys, "train", "--model", model_path, "--data", data, "--epochs", 2, "--checkpoint", ck)
    assert code == 0 and "is corrupt or truncated" in err and f"using the previous checkpoint {prev}" in err, err
    assert summary["resumed"] == {"checkpoint": str(prev), "epoch": 1, "step_in_epoch": 0}
    assert_same_weights(checkpoint_weights(ck), after_two_epochs)  # epoch 2 redone from epoch 1: same result
    assert checkpoint_meta(prev)["state"]["epoch"] == 1  # the corrupt file was not rotated over the good .prev

    for f in (ck, prev):
        f.write_bytes(f.read_bytes()[:100])
    code, _, err = cli(capsys, "evaluate", "--model", model_path, "--data", data, "--checkpoint", ck)
    assert code == 2 and "no usable checkpoint" in err and "Traceback" not in err


def test_bad_inputs_are_rejected_before_any_change(model_path, data):
    model = DeviceModel(model_path)
    trainer = Trainer(model)
    x = model.preprocessing.eval_tensor(imagefiles.load_rgb(data / "test" / "red" / "img_0.png"))
    before = model.get_weights()
    nan, inf = x.copy(), x.copy()
    nan[0, 3, 4, 1], inf[0, 0, 0, 0] = np.nan, np.inf
    bad = [
        (x, 3, "outside"),
        (x, -1, "outside"),
        (x, np.array([0.5]), "integer"),
        (nan, 0, "NaN"),
        (inf, 0, "NaN"),
        (x.astype(np.float64) * 1e300, 0, "NaN"),
        (x[:, :20], 0, "shape"),
        ((x * 128 + 128).astype(np.uint8), 0, "float32"),
    ]
    for image, label, message in bad:
        with pytest.raises(InputError, match=message):
            trainer.train_step(image, label)
    with pytest.raises(InputError, match="learning rate"):
        trainer.train_step(x, 0, lr=float("nan"))
    assert_same_weights(model.get_weights(), before, atol=0)
    assert trainer.rolled_back == 0


def test_non_finite_loss_is_rolled_back_and_counted(model_path, data, tmp_path):
    model = DeviceModel(model_path)
    trainer = Trainer(model)
    x = model.preprocessing.eval_tensor(imagefiles.load_rgb(data / "test" / "red" / "img_0.png"))
    blown = trainer.train_step(x, LABELS.index("red"), lr=1e38)  # finite loss, but weights of magnitude ~1e38
    assert not blown.rolled_back and np.isfinite(blown.loss)
    captured = model.get_weights()
    result = trainer.train_step(x, LABELS.index("red"))  # the forward pass overflows: NaN/Inf loss
    assert result.rolled_back and not np.isfinite(result.loss) and trainer.rolled_back == 1
    assert_same_weights(model.get_weights(), captured, atol=0)  # including the optimizer slots and step counter

    # a run whose weights blow up at its first step and roll back nearly every later one is not saved
    with pytest.raises(TrainingDiverged, match="steps were rolled back"):
        train_folder(model_path, data, 1, tmp_path / "ck.npz", lr=1e38)
    assert not (tmp_path / "ck.npz").exists()


def _copy_model(model_path, folder, edit=None, with_json=True, reseal=True, with_init=True):
    """The model in `folder`, its metadata changed by `edit`; `reseal`: with the integrity hash recomputed, as
    another export's metadata would have it; `with_init`: its initial values copied too."""
    folder.mkdir()
    shutil.copy(model_path, folder / "model.tflite")
    if with_init:
        shutil.copy(initial_values.path_for(model_path), initial_values.path_for(folder / "model.tflite"))
    if with_json:
        meta = json.loads(Path(contract.model_json_path(model_path)).read_text())
        if edit:
            meta = edit(meta)
            if reseal:
                meta["integrity"] = contract.metadata_integrity(meta)
        (folder / "model.json").write_text(json.dumps(meta))
    return folder / "model.tflite"


def _random_bytes(model_path, folder):
    path = _copy_model(model_path, folder)
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    return path


def _rename_probabilities(meta):
    meta["signatures"]["infer"]["outputs"]["probs"] = meta["signatures"]["infer"]["outputs"].pop("probabilities")
    return meta


NOT_OURS = {
    "no model.json": (lambda m, d: _copy_model(m, d, with_json=False), "has no model.json beside it"),
    "wrong format": (lambda m, d: _copy_model(m, d, lambda j: {**j, "format": "other/v9"}), "format 'other/v9'"),
    "wrong fingerprint": (
        lambda m, d: _copy_model(m, d, lambda j: {**j, "fingerprint": "0" * 64}),
        "describes another file",
    ),
    "missing signature": (
        lambda m, d: _copy_model(
            m, d, lambda j: {**j, "signatures": {**j["signatures"], "finetune": j["signatures"]["train"]}}
        ),
        "signature 'finetune' named in .* is missing from",
    ),
    "missing tensor": (
        lambda m, d: _copy_model(m, d, _rename_probabilities),
        "lacks the outputs \\['probabilities'\\]",
    ),
    "random bytes": (_random_bytes, "is not a TFLite model"),
    "labels reordered": (
        lambda m, d: _copy_model(m, d, lambda j: {**j, "labels": j["labels"][::-1]}, reseal=False),
        "was changed after export",
    ),
    "normalization edited": (
        lambda m, d: _copy_model(m, d, lambda j: {**j, "input": {**j["input"], "mean": [0, 0, 0]}}, reseal=False),
        "was changed after export",
    ),
    "deeply nested": (lambda m, d: _nested(_copy_model(m, d)), "nested too deeply"),
    "initial values missing": (
        lambda m, d: _copy_model(m, d, with_init=False),
        "initial values .*model.init.npz are missing",
    ),
    "initial values of another export": (lambda m, d: _damage_init(_copy_model(m, d)), "is not the initial-values"),
}


def _damage_init(path):
    init = Path(initial_values.path_for(path))
    data = bytearray(init.read_bytes())
    data[-100] ^= 1
    init.write_bytes(bytes(data))
    return path


def _nested(path):
    path.with_suffix(".json").write_text("[" * 100000 + "]" * 100000)
    return path


@pytest.mark.parametrize("case", sorted(NOT_OURS))
def test_files_that_are_not_our_model_give_clear_errors(model_path, data, tmp_path, capsys, case):
    make, message = NOT_OURS[case]
    path = make(model_path, tmp_path / "m")
    code, _, err = cli(capsys, "evaluate", "--model", path, "--data", data)
    assert code == 2 and err.startswith("error: ") and "Traceback" not in err
    assert re.search(message, err), err


def test_user_mistakes_are_clear_errors(model_path, data, tmp_path, capsys):
    wrong = tmp_path / "wrong"
    for name in ("cat", "dog"):
        (wrong / name).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (30, 30), (i * 90, 0, 0)).save(wrong / name / f"{i}.png")
    ck = tmp_path / "ck.npz"
    code, _, err = cli(capsys, "train", "--model", model_path, "--data", wrong, "--epochs", 1, "--checkpoint", ck)
    assert code == 2 and "not the model's labels" in err and not ck.exists()
    code, _, err = cli(capsys, "evaluate", "--model", model_path, "--data", tmp_path / "nowhere")
    assert code == 2 and "does not exist" in err
    code, _, err = cli(capsys, "evaluate", "--model", model_path, "--data", data, "--checkpoint", ck)
    assert code == 2 and "does not exist" in err
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--model", str(model_path), "--data", str(data), "--epochs", "0", "--checkpoint", str(ck)])
    assert exit_.value.code == 2 and "must be at least 1" in capsys.readouterr().err


def test_checkpoint_files_that_are_not_checkpoints(model_path, data, tmp_path, capsys):
    """A model.keras, a pickle or a text file passed as --checkpoint: named as not a checkpoint, never advised for
    deletion, never replaced."""
    import pickle
    import zipfile

    keras_file, pickled = tmp_path / "model.keras", tmp_path / "ck.pkl"
    with zipfile.ZipFile(keras_file, "w") as z:
        z.writestr("config.json", "{}")
        z.writestr("model.weights.h5", b"\0" * 64)
    pickled.write_bytes(pickle.dumps({"epoch": 1}))
    for path, message in (
        (keras_file, "a model.keras, for one, is a trained model, not a checkpoint"),
        (pickled, "not an .npz archive"),
    ):
        before = path.read_bytes()
        for command in (("train", "--data", data, "--epochs", 1), ("evaluate", "--data", data)):
            code, _, err = cli(capsys, *command, "--model", model_path, "--checkpoint", path)
            assert code == 2 and len(err.splitlines()) == 1 and message in err, err
            assert "delete" not in err and "pickle" not in err
        assert path.read_bytes() == before


def test_checkpoint_state_of_the_wrong_type_is_one_line(model_path, data, tmp_path, capsys):
    ck = tmp_path / "ck.npz"
    train_folder(model_path, data, 1, ck)
    with np.load(ck, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays[META_KEY][()]))
    meta["state"]["epoch"] = "1"
    arrays[META_KEY] = np.array(json.dumps(meta))
    np.savez(ck, **arrays)
    code, _, err = cli(capsys, "train", "--model", model_path, "--data", data, "--epochs", 2, "--checkpoint", ck)
    assert code == 2 and "state field 'epoch' is str '1', not int" in err and "Traceback" not in err, err


def test_checkpoint_folder_is_created_lock_refuses_a_second_trainer_and_a_finished_run_says_so(
    model_path, data, tmp_path, capsys
):
    import fcntl

    ck = tmp_path / "new" / "deeper" / "ck.npz"
    umask = os.umask(0o027)
    try:
        code, summary, _ = cli(
            capsys, "train", "--model", model_path, "--data", data, "--epochs", 1, "--checkpoint", ck
        )
    finally:
        os.umask(umask)
    assert code == 0 and ck.is_file() and summary["epochs"] == 1
    assert ck.stat().st_mode & 0o777 == 0o640  # the umask's mode, not mkstemp's 0600
    code, summary, err = cli(capsys, "train", "--model", model_path, "--data", data, "--epochs", 1, "--checkpoint", ck)
    assert code == 0 and summary["steps"] == 0 and "has already completed 1 epochs" in err
    before = ck.read_bytes()
    with open(f"{ck}.lock", "a") as held:  # another trainer holds the checkpoint
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        code, _, err = cli(capsys, "train", "--model", model_path, "--data", data, "--epochs", 2, "--checkpoint", ck)
    assert code == 2 and "is in use by another training run" in err and len(err.splitlines()) == 1
    assert ck.read_bytes() == before


def test_a_diverging_run_keeps_the_checkpoint_it_started_from(model_path, data, tmp_path, capsys):
    ck = tmp_path / "ck.npz"
    train_folder(model_path, data, 2, ck)
    good, good_prev = ck.read_bytes(), Path(f"{ck}.prev").read_bytes()
    code, _, err = cli(
        capsys, "train", "--model", model_path, "--data", data, "--epochs", 3, "--checkpoint", ck, "--lr", "1e6"
    )
    assert code == 1 and "training got worse" in err and "was not replaced" in err, err
    assert ck.read_bytes() == good and Path(f"{ck}.prev").read_bytes() == good_prev


def test_evaluate_prints_valid_json_when_the_weights_overflow(model_path, data, tmp_path, capsys):
    from tinytl_tf.ondevice.checkpoint import CheckpointStore

    model = DeviceModel(model_path)
    weights = {k: (v * np.float32(3e38) if k != contract.STEP_TENSOR else v) for k, v in model.get_weights().items()}
    CheckpointStore(tmp_path / "ck.npz", model).save(weights, {})
    code = main(["evaluate", "--model", str(model_path), "--data", str(data), "--checkpoint", str(tmp_path / "ck.npz")])
    out = capsys.readouterr().out
    result = json.loads(out, parse_constant=lambda c: pytest.fail(f"bare {c} in {out}"))
    assert code == 0 and result["cross_entropy"] is None


def test_an_8bit_adam_model_learns_resumes_exactly_and_checkpoints_its_int8_state(data, tmp_path, capsys):
    """Adam with 8-bit moments on the device: its slots are int8 codes and float32 block scales in model.json and
    in the checkpoint (dtype kept), a resumed run equals an uninterrupted one bit for bit, and it learns."""
    from tests.tiny import tiny_backbone
    from tinytl_tf.export import export_model
    from tinytl_tf.transfer import prepare_transfer

    model = prepare_transfer(tiny_backbone(), "tinytl-lb", len(LABELS), labels=LABELS, dropout=0.0)
    path = tmp_path / "model8.tflite"
    export_model(model, path, "adam8bit", lr=1e-2, total_steps=1000, label_smoothing=0.1)
    specs = DeviceModel(path).weight_specs
    codes = {n for n, (_, dtype) in specs.items() if dtype == "int8"}
    assert codes and all(n.endswith(("__m", "__sqrt_v")) for n in codes)
    assert all(specs[n.rsplit(contract.WEIGHT_SEPARATOR, 1)[0]][0] == specs[n][0] for n in codes)  # its shape

    resumed_ck, straight_ck = tmp_path / "resumed.npz", tmp_path / "straight.npz"
    train_folder(path, data, 1, resumed_ck, seed=3)
    train_folder(path, data, EPOCHS, resumed_ck, seed=3)
    train_folder(path, data, EPOCHS, straight_ck, seed=3)
    resumed, straight = checkpoint_weights(resumed_ck), checkpoint_weights(straight_ck)
    assert {n for n, v in straight.items() if v.dtype == np.int8} == codes
    assert_same_weights(resumed, straight, atol=0)
    assert any(np.any(straight[n]) for n in codes)
    code, before, _ = cli(capsys, "evaluate", "--model", path, "--data", data)
    code, after, _ = cli(capsys, "evaluate", "--model", path, "--data", data, "--checkpoint", straight_ck)
    assert code == 0 and after["accuracy"] >= 0.75 and after["cross_entropy"] < before["cross_entropy"]
