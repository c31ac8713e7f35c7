"""`python -m tinytl_tf demo`: the main job on the embedded 10-class Caltech-101 subset, on a fresh machine.

Fine-tunes the vendored mcunet-5fps at 128 px with TinyTL-L+B and with FT-Last, and compares accuracy and the
size of what each trains.
"""

from pathlib import Path

from tinytl_tf.data import default_data_dir, load_image_folder
from tinytl_tf.train import train_job

BACKBONE = "mcunet-5fps"
# (method, peak learning rate) for the short demo schedule
RUNS = (("ft-last", 1e-2), ("tinytl-lb", 3e-3))


def run_demo(out, epochs=6, batch_size=8, verbose=2):
    out, data = Path(out), default_data_dir()
    print(f"demo: {BACKBONE} @128 px on {data} (10 Caltech-101 classes, 30 train / 10 test images each)")

    def load(resolution, mean, std, batch):
        return load_image_folder(data, resolution, mean, std, batch)

    rows = []
    for method, lr in RUNS:
        print(f"\n== {method}: {epochs} epochs, batch {batch_size}, Adam lr {lr} with cosine decay")
        _, m = train_job(data, BACKBONE, method, out / method, epochs=epochs, batch_size=batch_size, lr=lr,
                         overwrite=True, verbose=verbose, load_data=load)
        rows.append(m)
    print(f"\n{'method':<10} {'trainable params':>16} {'trainable MB':>13} {'test accuracy':>14} {'seconds':>8}")
    for m in rows:
        print(f"{m['method']:<10} {m['trainable_params']:>16,} {4 * m['trainable_params'] / 1e6:>13.3f} "
              f"{m['test_accuracy']:>14.1%} {m['train_seconds']:>8.0f}")
    print(f"\nmodels and metrics: {out}/<method>/model.keras, metrics.json")
    return rows
