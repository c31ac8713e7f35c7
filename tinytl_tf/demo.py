"""`python -m tinytl_tf demo`: the main job on the embedded 10-class Caltech-101 subset, on a fresh machine.

Fine-tunes the vendored mcunet-5fps at 128 px with TinyTL-L+B and with FT-Last and compares accuracy and the
size of what each trains; then exports the TinyTL-L+B model to an on-device training `.tflite` and continues
training it at batch size 1 with the LiteRT trainer, as a device would.
"""

import json
import os
import sys
from pathlib import Path

from tinytl_tf.data import default_data_dir, load_image_folder
from tinytl_tf.export import export_model
from tinytl_tf.ondevice.evaluation import evaluate_folder
from tinytl_tf.ondevice.folder_training import train_folder
from tinytl_tf.train import train_job

BACKBONE = "mcunet-5fps"
# (method, peak learning rate) for the short demo schedule
RUNS = (("ft-last", 1e-2), ("tinytl-lb", 3e-3))


def run_demo(out, epochs=6, batch_size=8, verbose=2, seed=0):
    out, data = Path(out), default_data_dir()
    print(f"demo: {BACKBONE} @128 px on {data} (10 Caltech-101 classes, 30 train / 10 test images each)")

    def load(resolution, mean, std, batch):
        return load_image_folder(data, resolution, mean, std, batch, seed=seed)

    rows, models = [], {}
    for method, lr in RUNS:
        print(f"\n== {method}: {epochs} epochs, batch {batch_size}, Adam lr {lr} with cosine decay")
        models[method], m = train_job(data, BACKBONE, method, out / method, epochs=epochs, batch_size=batch_size, lr=lr,
                         overwrite=True, verbose=verbose, load_data=load, seed=seed)
        rows.append(m)
    print(f"\n{'method':<10} {'trainable params':>16} {'trainable MB':>13} {'test accuracy':>14} {'seconds':>8}")
    for m in rows:
        print(f"{m['method']:<10} {m['trainable_params']:>16,} {4 * m['trainable_params'] / 1e6:>13.3f} "
              f"{m['test_accuracy']:>14.1%} {m['train_seconds']:>8.0f}")
    print(f"\nmodels and metrics: {out}/<method>/model.keras, metrics.json")

    device_dir = out / "tinytl-lb"
    tflite = device_dir / "model.tflite"
    print(f"\n== export {tflite} (builtin ops only) and train it on-device with LiteRT, batch size 1")
    meta = export_model(models["tinytl-lb"], tflite, "adam", lr=1e-4, total_steps=rows[-1]["train_examples"],
                        overwrite=True)
    print(f"{os.path.getsize(tflite) / 1e6:.2f} MB, {len(meta['ops'])} builtin op types, fingerprint {meta['fingerprint'][:12]}")
    checkpoint = device_dir / "device_checkpoint.npz"
    for stale in (checkpoint, Path(f"{checkpoint}.prev")):
        stale.unlink(missing_ok=True)
    before = evaluate_folder(tflite, data)["accuracy"]
    summary = train_folder(tflite, data, epochs=1, checkpoint=checkpoint, seed=seed, progress=sys.stderr)
    after = evaluate_folder(tflite, data, checkpoint)
    print(json.dumps({"device_accuracy_before": before, "device_accuracy_after": after["accuracy"],
                      "device_steps": summary["global_steps"], "device_steps_per_s": summary["steps_per_s"],
                      "checkpoint": str(checkpoint)}))
    return rows

