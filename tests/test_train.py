"""Desktop training: batch 1, frozen weights bit-identical, .keras round trip, the distributed option."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from tinytl_tf.backbones import load_backbone
from tinytl_tf.cliargs import check_output_dir
from tinytl_tf.contract import METHODS
from tinytl_tf.train import fit, load_trained
from tinytl_tf.transfer import prepare_transfer

pytestmark = pytest.mark.slow  # trains models

K = 3
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def toy_dataset(n=6, batch=1, resolution=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, resolution, resolution, 3)).astype("float32")
    y = (np.arange(n) % K).astype("int32")
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch)


@pytest.fixture(scope="module")
def backbone():
    return load_backbone("mcunet-5fps", resolution=64)


@pytest.mark.parametrize("method", METHODS)
def test_batch1_fit_changes_only_the_trainable_set(backbone, method):
    model = prepare_transfer(backbone, method, K)
    before = {v.path: v.numpy().copy() for v in model.weights}
    trainable = {v.path for v in model.trainable_weights}
    history = fit(model, toy_dataset(batch=1), epochs=1, lr=1e-2, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    for v in model.weights:
        if v.path in trainable:
            if not v.path.endswith("norm2/gamma") or method != "ft-norm-last":
                assert not np.array_equal(before[v.path], v.numpy()), f"{v.path} did not train"
        else:
            np.testing.assert_array_equal(before[v.path], v.numpy(), err_msg=f"frozen {v.path} changed")


def test_keras_round_trip_same_outputs_and_trainable_set(backbone, tmp_path):
    model = prepare_transfer(backbone, "tinytl-lb", K, labels=("a", "b", "c"))
    fit(model, toy_dataset(batch=2), epochs=1, lr=1e-2, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = load_trained(path)
    x = next(iter(toy_dataset(n=2, batch=2)))[0]
    np.testing.assert_array_equal(model(x, training=False), loaded(x, training=False))
    assert [v.path for v in loaded.trainable_weights] == [v.path for v in model.trainable_weights]
    assert loaded.net_config == model.net_config
    assert loaded.net_config.labels == ("a", "b", "c")


def test_load_trained_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model file"):
        load_trained(tmp_path / "missing.keras")
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable tinytl_tf"):
        load_trained(bad)


def test_load_trained_in_a_fresh_process(tmp_path):
    """`export` loads the model in a process that imported nothing else of the package."""
    prepare_transfer(load_backbone("mcunet-5fps", resolution=64), "tinytl-lb", K).save(tmp_path / "model.keras")
    script = "import sys; from tinytl_tf.train import load_trained; print(load_trained(sys.argv[1]).net_config.method)"
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "model.keras")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    assert done.returncode == 0 and done.stdout == "tinytl-lb\n", done.stderr[-2000:]


def test_existing_output_is_refused_unless_overwrite(tmp_path):
    (tmp_path / "model.keras").write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="--overwrite"):
        check_output_dir(tmp_path, overwrite=False)
    assert (tmp_path / "model.keras").read_bytes() == b"precious"
    check_output_dir(tmp_path, overwrite=True)


def test_mirrored_strategy_on_two_logical_cpus():
    """Logical devices must be configured before TF starts, so this runs in a fresh interpreter."""
    script = textwrap.dedent("""
        import numpy as np, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from tinytl_tf.backbones import load_backbone
        from tinytl_tf.train import distribution_scope, fit
        from tinytl_tf.transfer import prepare_transfer
        scope, replicas = distribution_scope("mirrored")
        rng = np.random.default_rng(0)
        x = rng.standard_normal((8, 64, 64, 3)).astype("float32"); y = np.arange(8) % 3
        with scope:
            model = prepare_transfer(load_backbone("mcunet-5fps", resolution=64), "tinytl-lb", 3)
            before = model.get_layer("block_5").depthwise.bias.numpy().copy()
            h = fit(model, tf.data.Dataset.from_tensor_slices((x, y)).batch(4), epochs=2, lr=1e-2, verbose=0)
        moved = float(np.abs(model.get_layer("block_5").depthwise.bias.numpy() - before).max())
        print("RESULT", replicas, type(model.distribute_strategy).__name__, moved, h.history["loss"][-1])
    """)
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    line = [s for s in out.stdout.splitlines() if s.startswith("RESULT")]
    assert line, out.stderr[-2000:]
    _, replicas, strategy, moved, loss = line[0].split()
    assert replicas == "2" and strategy == "MirroredStrategy"
    assert float(moved) > 0 and np.isfinite(float(loss))


def test_a_seed_repeats_a_run_exactly_and_another_seed_differs(tmp_path):
    """Two 1-epoch runs on the embedded data with one seed: identical metrics and trained weights; another seed
    gives other weights (its head, lite branches, data order and augmentation are drawn differently)."""
    from tinytl_tf.data import default_data_dir, load_image_folder
    from tinytl_tf.jobs.train import train_job

    def run(seed, name):
        def load(resolution, mean, std, batch):
            return load_image_folder(default_data_dir(), resolution, mean, std, batch, seed=seed)

        model, metrics = train_job(
            default_data_dir(),
            "mcunet-5fps",
            "tinytl-lb",
            tmp_path / name,
            resolution=48,
            epochs=1,
            batch_size=8,
            lr=3e-3,
            verbose=0,
            load_data=load,
            seed=seed,
        )
        # the time differs, and so does the .keras file's hash (Keras stores the save date in it)
        same = {k: v for k, v in metrics.items() if k not in ("train_seconds", "model_sha256")}
        return same, {v.path: v.numpy() for v in model.weights}

    (m1, w1), (m2, w2), (m3, w3) = run(0, "a"), run(0, "b"), run(1, "c")
    assert m1 == m2 and m1["reproducibility"]["seed"] == 0 and m1["reproducibility"]["op_determinism"]
    assert all(np.array_equal(w1[k], w2[k]) for k in w1)
    assert any(not np.array_equal(w1[k], w3[k]) for k in w1 if "classifier" not in k)
    assert m3["reproducibility"]["seed"] == 1
