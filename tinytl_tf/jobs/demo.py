"""The `demo` job (`tinytl demo`): the main job on a fresh machine, where TinyTL's gain shows.

Fine-tunes the vendored mcunet-5fps on the embedded CIFAR-10 subset (one of the paper's data sets, far from
ImageNet) with FT-Last and with TinyTL-L+B, exports both to on-device training `.tflite` files, and prints their
test accuracy beside the memory each one's LiteRT training step measures; then trains the TinyTL-L+B model further at
batch size 1 with the TF-free LiteRT trainer, as a device would. A fixed seed makes two runs print the same numbers.
"""

import json
import sys
from pathlib import Path

from tinytl_tf.cliargs import stdout_to_stderr
from tinytl_tf.data import demo_data_dir, load_image_folder
from tinytl_tf.export import export_model
from tinytl_tf.jobs.train import train_job
from tinytl_tf.memory.measure import measure_tflite
from tinytl_tf.methods import default_lr
from tinytl_tf.ondevice.evaluation import evaluate_folder
from tinytl_tf.ondevice.folder_training import train_folder

BACKBONE = "mcunet-5fps"
RESOLUTION = 64  # CIFAR-10 images are 32 px: 64 keeps the demo within a few minutes on 2 cores
EPOCHS = 15
METHODS = ("ft-last", "tinytl-lb")  # each at `train`'s default peak learning rate (`tinytl_tf.methods.DEFAULT_LR`)
DEVICE_LR = 1e-4  # the on-device continuation: a small constant rate at batch 1


def run_demo(out, epochs=None, batch_size=8, verbose=2, seed=0):
    """Runs the demo into `out`; `epochs` None means the demo's EPOCHS. Returns each method's metrics and memory."""
    out, data, epochs = Path(out), demo_data_dir(), epochs or EPOCHS
    print(
        f"demo: {BACKBONE} at {RESOLUTION} px on the embedded CIFAR-10 subset (10 classes, 100 train / 30 test "
        f"images each), seed {seed}",
        flush=True,
    )

    def load(resolution, mean, std, batch):
        return load_image_folder(data, resolution, mean, std, batch, seed=seed)

    rows = []
    for method in METHODS:
        lr = default_lr(method)
        print(
            f"\n== {method}: {epochs} epochs, batch {batch_size}, Adam lr {lr:g} with cosine decay",
            file=sys.stderr,
            flush=True,
        )
        with stdout_to_stderr():  # Keras' progress
            model, metrics = train_job(
                data,
                BACKBONE,
                method,
                out / method,
                resolution=RESOLUTION,
                epochs=epochs,
                batch_size=batch_size,
                lr=lr,
                overwrite=True,
                verbose=verbose,
                load_data=load,
                seed=seed,
            )
        tflite = out / method / "model.tflite"
        print(
            f"== {method}: export {tflite} (builtin ops only) and measure its LiteRT train step",
            file=sys.stderr,
            flush=True,
        )
        # the export's default optimizer (Adam with 8-bit moments), as a user's export gets
        export_model(model, tflite, lr=DEVICE_LR, total_steps=metrics["train_examples"], overwrite=True)
        rows.append({**metrics, **measure_tflite(tflite)})

    print(
        f"\n{'method':<10} {'trainable params':>16} {'test accuracy':>14} {'LiteRT train step MB':>21} {'train s':>8}"
    )
    for m in rows:
        print(
            f"{m['method']:<10} {m['trainable_params']:>16,} {m['test_accuracy']:>14.1%} "
            f"{m['measured_train_mb']:>21.2f} {m['train_seconds']:>8.0f}"
        )
    last, lb = rows
    print(
        f"\nTinyTL-L+B - FT-Last: {100 * (lb['test_accuracy'] - last['test_accuracy']):+.1f} points of top-1 on "
        f"{lb['test_examples']} test images, for {lb['measured_train_mb'] - last['measured_train_mb']:+.2f} MB of "
        "training memory (batch 1, measured in LiteRT)"
    )
    print(f"models and metrics: {out}/<method>/model.keras, metrics.json, model.tflite")

    tflite = out / "tinytl-lb" / "model.tflite"
    checkpoint = out / "tinytl-lb" / "device_checkpoint.npz"
    for stale in (checkpoint, Path(f"{checkpoint}.prev")):
        stale.unlink(missing_ok=True)
    print(f"\n== {tflite}: one more epoch with the LiteRT trainer at batch size 1", file=sys.stderr, flush=True)
    before = evaluate_folder(tflite, data)["accuracy"]
    summary = train_folder(tflite, data, epochs=1, checkpoint=checkpoint, seed=seed, progress=sys.stderr)
    after = evaluate_folder(tflite, data, checkpoint)
    print(
        json.dumps(
            {
                "device_accuracy_before": before,
                "device_accuracy_after": after["accuracy"],
                "device_steps": summary["global_steps"],
                "device_steps_per_s": summary["steps_per_s"],
                "checkpoint": str(checkpoint),
            }
        )
    )
    return rows
