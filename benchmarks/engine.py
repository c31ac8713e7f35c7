"""LiteRT train-step vs infer-step latency per transfer method, and .tflite size.

    python -m benchmarks.engine [--backbone mcunet-5fps] [--resolution 128] [--repeats 30] [--frozen-bits 8]
                                [--optimizer adam] [--out docs/engine.json]

Per method: export the model, then time `train` and `infer` alternately in one interpreter (so the ratio is
measured side by side), report medians, their ratio and the file size, with LiteRT's default XNNPACK delegate and
without any delegate. A benchmark, not a test.
"""

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def measure(path, resolution, repeats, warmup=3, seed=0, xnnpack=True):
    from ai_edge_litert.interpreter import OpResolverType

    from tinytl_tf import contract
    from tinytl_tf.initial_values import open_interpreter

    resolver = {} if xnnpack else {"experimental_op_resolver_type": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES}
    interpreter = open_interpreter(path, num_threads=1, **resolver)
    train = interpreter.get_signature_runner(contract.SIGNATURE_TRAIN)
    infer = interpreter.get_signature_runner(contract.SIGNATURE_INFER)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1, resolution, resolution, 3)).astype(np.float32)
    y = np.array([1], np.int32)
    lr = np.float32(0)
    t_train, t_infer = [], []
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        train(x=x, y=y, lr=lr)
        t1 = time.perf_counter()
        infer(x=x)
        t2 = time.perf_counter()
        if i >= warmup:
            t_train.append(t1 - t0)
            t_infer.append(t2 - t1)
    return float(np.median(t_train)), float(np.median(t_infer))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="mcunet-5fps")
    p.add_argument("--resolution", type=int, default=128)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--methods", nargs="*", default=None)
    p.add_argument("--frozen-bits", type=int, default=8, choices=(8, 32))
    p.add_argument("--optimizer", default="adam", choices=("sgd", "adam", "adam8bit"), help="the exported optimizer")
    p.add_argument("--out", default="docs/engine.json")
    args = p.parse_args(argv)

    from tinytl_tf.atomic import atomic_write
    from tinytl_tf.backbones import count_params, load_backbone
    from tinytl_tf.contract import METHODS
    from tinytl_tf.export import export_model
    from tinytl_tf.transfer import prepare_transfer

    base = load_backbone(args.backbone, args.resolution)
    rows = []
    print(
        f"{args.backbone} @{args.resolution}px, batch 1, {args.repeats} timed steps, 1 thread, "
        f"frozen weights {args.frozen_bits}-bit, {args.optimizer}; 'plain' = no delegate"
    )
    print(
        f"{'method':<13}{'train ms':>10}{'infer ms':>10}{'ratio':>8}{'plain ratio':>12}{'tflite MB':>11}"
        f"{'trainable':>11}{'export s':>10}"
    )
    for method in args.methods or METHODS:
        model = prepare_transfer(base, method, args.classes, dropout=0.0)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "model.tflite")
            t0 = time.time()
            export_model(model, path, args.optimizer, 3e-4, 1000, frozen_bits=args.frozen_bits)
            export_s = time.time() - t0
            size = os.path.getsize(path)
            train_s, infer_s = measure(path, args.resolution, args.repeats)
            plain_train_s, plain_infer_s = measure(path, args.resolution, args.repeats, xnnpack=False)
        row = {
            "method": method,
            "train_ms": 1e3 * train_s,
            "infer_ms": 1e3 * infer_s,
            "ratio": train_s / infer_s,
            "plain_train_ms": 1e3 * plain_train_s,
            "plain_infer_ms": 1e3 * plain_infer_s,
            "plain_ratio": plain_train_s / plain_infer_s,
            "tflite_mb": size / 1e6,
            "trainable_params": count_params(model)[0],
            "export_s": export_s,
        }
        rows.append(row)
        print(
            f"{method:<13}{row['train_ms']:>10.2f}{row['infer_ms']:>10.2f}{row['ratio']:>8.2f}{row['plain_ratio']:>12.2f}"
            f"{row['tflite_mb']:>11.2f}{row['trainable_params']:>11,}{export_s:>10.0f}",
            flush=True,
        )
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    result = {
        "backbone": args.backbone,
        "resolution": args.resolution,
        "repeats": args.repeats,
        "frozen_bits": args.frozen_bits,
        "optimizer": args.optimizer,
        "rows": rows,
    }
    atomic_write(args.out, lambda tmp: Path(tmp).write_text(json.dumps(result, indent=2)))


if __name__ == "__main__":
    main()
