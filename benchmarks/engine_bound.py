"""How low can a method's LiteRT train/infer ratio go? The real export timed side by side with probes that skip
required work.

    python -m benchmarks.engine_bound [--method tinytl-lb] [--optimizer adam] [--backbone mcunet-5fps]
                                      [--resolution 128] [--rounds 8] [--repeats 10] [--out docs/engine_bound.json]

Probes (they exist only in this benchmark, never in an export):
- `one-byte masks`: the masks kept unpacked, one bool per element (correct gradients, no packing and no lookup,
  but 8x the masks' memory);
- `free masks` (wrong gradients from here on): ReLU/ReLU6 pass the output gradient through unmasked, so no mask
  is made, packed, kept or read;
- `free masks and kernel grads`: also every trainable conv kernel's gradient is a constant zero (for TinyTL-L+B
  the lite branches' kernels), so its input is not kept and no kernel-gradient conv runs.
What is left in the last probe (the frozen network's input gradients, the lite branches' input gradients, the
loss, the optimizer) is work no correct step can skip, so its ratio is a floor for the method on this runtime.
Timing as in `engine.py` (1 thread, XNNPACK, batch 1), interleaved: each round times every file in turn, and
the medians of the per-round medians are reported, with each `train` signature's static peak of live tensors.
"""

import argparse
import json
import os
import tempfile
from contextlib import ExitStack
from pathlib import Path
from unittest import mock

import numpy as np


def _unmasked(fn, inside, x):
    import tensorflow as tf

    @tf.custom_gradient
    def op(x):
        return fn(x), lambda dy: dy

    return op(tf.convert_to_tensor(x))


def _keep_bools(mask):
    return mask


def _select(mask, dy):
    import tensorflow as tf

    return tf.where(mask, dy, tf.zeros([], dy.dtype))


def _zero_kernel_grad(xp, dy, k, stride):
    import tensorflow as tf

    return tf.zeros([k, k, xp.shape[-1], dy.shape[-1]], dy.dtype)


PROBES = {
    "real": [],
    "one-byte masks": [
        ("tinytl_tf.ops.activations._pack_mask", _keep_bools),
        ("tinytl_tf.ops.activations._apply_mask", _select),
    ],
    "free masks": [("tinytl_tf.ops.activations._masked", _unmasked)],
    "free masks and kernel grads": [
        ("tinytl_tf.ops.activations._masked", _unmasked),
        ("tinytl_tf.ops.conv._kernel_grad", _zero_kernel_grad),
    ],
}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="tinytl-lb")
    p.add_argument("--optimizer", choices=["adam", "sgd"], default="adam", help="the exported optimizer")
    p.add_argument("--backbone", default="mcunet-5fps")
    p.add_argument("--resolution", type=int, default=128)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--repeats", type=int, default=10, help="timed steps per file and round")
    p.add_argument("--out", default="docs/engine_bound.json")
    args = p.parse_args(argv)

    from benchmarks.engine import measure
    from tinytl_tf.atomic import atomic_write
    from tinytl_tf.backbones import load_backbone
    from tinytl_tf.export import export_model
    from tinytl_tf.memory.measure import static_memory
    from tinytl_tf.transfer import prepare_transfer

    base = load_backbone(args.backbone, args.resolution)
    with tempfile.TemporaryDirectory() as tmp:
        paths, peaks = {}, {}
        for name, patches in PROBES.items():
            model = prepare_transfer(base, args.method, args.classes, dropout=0.0)
            paths[name] = os.path.join(tmp, f"{len(paths)}.tflite")
            with ExitStack() as stack:
                for target, fn in patches:
                    stack.enter_context(mock.patch(target, fn))
                export_model(model, paths[name], args.optimizer, 3e-4, 1000)
            peaks[name] = static_memory(paths[name]).peak_activation_bytes / 1e6
            print(f"exported '{name}'", flush=True)
        per_round = {name: [] for name in PROBES}
        for r in range(args.rounds):
            for name, path in paths.items():
                per_round[name].append(measure(path, args.resolution, args.repeats))
            print(f"round {r + 1}/{args.rounds}", end="\r", flush=True)
    print()
    print(
        f"{args.method} ({args.optimizer}) on {args.backbone} @{args.resolution}px, batch 1, 1 thread, XNNPACK; "
        f"{args.rounds} interleaved rounds of {args.repeats} steps"
    )
    print(f"{'graph':<30}{'train ms':>10}{'infer ms':>10}{'ratio':>8}{'static peak MB':>16}")
    rows = []
    for name, times in per_round.items():
        train_s, infer_s = (float(np.median([t[i] for t in times])) for i in (0, 1))
        ratio = float(np.median([t[0] / t[1] for t in times]))
        rows.append(
            {
                "graph": name,
                "train_ms": 1e3 * train_s,
                "infer_ms": 1e3 * infer_s,
                "ratio": ratio,
                "static_peak_mb": peaks[name],
            }
        )
        print(f"{name:<30}{1e3 * train_s:>10.2f}{1e3 * infer_s:>10.2f}{ratio:>8.2f}{peaks[name]:>16.2f}")
    result = {
        "method": args.method,
        "optimizer": args.optimizer,
        "backbone": args.backbone,
        "resolution": args.resolution,
        "rounds": args.rounds,
        "repeats": args.repeats,
        "rows": rows,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    atomic_write(args.out, lambda tmp: Path(tmp).write_text(json.dumps(result, indent=2)))


if __name__ == "__main__":
    main()
