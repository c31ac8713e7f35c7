"""What deterministic ops cost: desktop training images/s with and without `enable_op_determinism`, side by side.

    python -m benchmarks.determinism [--rounds 3] [--epochs 3] [--method tinytl-lb] [--out docs/determinism.json]

Each measurement is a fresh process (TensorFlow cannot switch op determinism off again once on) that fine-tunes the
embedded data set with `model.fit` exactly as `train` does (seeded, batch 8, mcunet-5fps at 128 px) and times every
epoch after the first (which traces the step), in wall and in CPU seconds of the process (the figure a busy machine
does not distort). Rounds alternate the two settings so a change in the machine's load
hits both alike; the JSON holds every epoch's images/s and the medians. A benchmark, not a test.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(deterministic, method, epochs, resolution):
    """One seeded run; prints the per-epoch images per wall second and per CPU second (epochs 2..n) as JSON on its
    last line."""
    import keras

    from tinytl_tf.backbones import load_backbone
    from tinytl_tf.data import default_data_dir, load_image_folder
    from tinytl_tf.train import compile_model, seed_everything, steps_per_epoch
    from tinytl_tf.transfer import prepare_transfer

    seed_everything(0, deterministic)
    base = load_backbone("mcunet-5fps", resolution)
    cfg = base.net_config
    images = load_image_folder(default_data_dir(), cfg.resolution, cfg.input_mean, cfg.input_std, 8, seed=0)
    model = prepare_transfer(base, method, len(images.class_names))
    compile_model(model, 3e-3, epochs * steps_per_epoch(images.train))
    times = []

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter(), time.process_time()

        def on_epoch_end(self, epoch, logs=None):
            times.append((time.perf_counter() - self.start[0], time.process_time() - self.start[1]))

    model.fit(images.train, epochs=epochs, verbose=0, callbacks=[EpochTimer()])
    print(
        json.dumps(
            {"wall": [images.num_train / w for w, _ in times[1:]], "cpu": [images.num_train / c for _, c in times[1:]]}
        )
    )


def measure(deterministic, args):
    command = [
        sys.executable,
        __file__,
        "--child",
        "1" if deterministic else "0",
        "--method",
        args.method,
        "--epochs",
        str(args.epochs),
        "--resolution",
        str(args.resolution),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--method", default="tinytl-lb")
    p.add_argument("--resolution", type=int, default=128)
    p.add_argument("--out", default=str(ROOT / "docs" / "determinism.json"))
    p.add_argument("--child", choices=("0", "1"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is not None:
        return child(args.child == "1", args.method, args.epochs, args.resolution)
    modes = ("deterministic", "nondeterministic")
    runs = {clock: {mode: [] for mode in modes} for clock in ("wall", "cpu")}
    load_before = os.getloadavg()[0]
    for r in range(args.rounds):
        for mode in modes if r % 2 == 0 else modes[::-1]:
            for clock, rates in measure(mode == "deterministic", args).items():
                runs[clock][mode] += rates
            print(
                f"round {r + 1}/{args.rounds} {mode}: {statistics.median(runs['wall'][mode]):.1f} images per "
                f"wall second, {statistics.median(runs['cpu'][mode]):.1f} per CPU second so far",
                file=sys.stderr,
                flush=True,
            )
    medians = {clock: {mode: statistics.median(v) for mode, v in r.items()} for clock, r in runs.items()}
    result = {
        "backbone": "mcunet-5fps",
        "method": args.method,
        "resolution": args.resolution,
        "batch_size": 8,
        "data": "embedded caltech10 (300 training images)",
        "epochs_timed_per_run": args.epochs - 1,
        # per CPU second (all the process's threads) is the figure that holds on a busy machine
        "images_per_s": runs,
        "median_images_per_s": medians,
        "deterministic_over_nondeterministic": {
            clock: m["deterministic"] / m["nondeterministic"] for clock, m in medians.items()
        },
        "load_average_before_after": [load_before, os.getloadavg()[0]],
        "commit": subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
        "command": "python -m benchmarks.determinism " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("median_images_per_s", "deterministic_over_nondeterministic")}))


if __name__ == "__main__":
    main()
