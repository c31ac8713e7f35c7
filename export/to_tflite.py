"""Export a trained model.keras to one on-device training .tflite (+ its .json metadata). Thin over tinytl_tf.export.

    python export/to_tflite.py --model OUT/model.keras --out OUT/model.tflite [--optimizer adam --lr 3e-4 --epochs 1]

The metadata of X.tflite is X.json beside it (model.json for model.tflite). The cosine schedule spans the steps the
device will train: --total-steps, else --epochs x the training images (--train-examples, the train split of --data,
or the train_examples in the metrics.json written with --model).
"""

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tinytl_tf import cliargs  # noqa: E402
from tinytl_tf.cliargs import check_export_target, count, debug, positive_float, quiet_tensorflow, unit_interval  # noqa: E402


def total_steps(args):
    """Steps of the cosine schedule: given, or device epochs x training images (batch size 1 on the device)."""
    if args.total_steps:
        return args.total_steps, "--total-steps"
    if args.train_examples:
        return args.epochs * args.train_examples, "--epochs x --train-examples"
    if args.data:
        from tinytl_tf.imagefiles import count_train_images

        return args.epochs * count_train_images(args.data), f"--epochs x the training images of {args.data}"
    metrics = Path(args.model).parent / "metrics.json"
    try:
        examples = int(json.loads(metrics.read_text())["train_examples"])
    except (OSError, ValueError, KeyError, TypeError):
        raise ValueError(
            f"cannot tell how many steps the device will train: {metrics} has no train_examples; pass "
            "--data DIR (the device's training images), --train-examples N or --total-steps N"
        ) from None
    return args.epochs * examples, f"--epochs x train_examples of {metrics}"


def main(argv=None):
    p = cliargs.ArgumentParser(
        description=__doc__,
        formatter_class=type(
            "Formatter", (argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter), {}
        ),
    )
    p.add_argument("--model", required=True, help="model.keras written by `python -m tinytl_tf train`")
    p.add_argument("--out", required=True, help="the X.tflite to write; X.json is written beside it")
    p.add_argument("--optimizer", default="adam", choices=("sgd", "adam"), help="the device's optimizer")
    p.add_argument("--lr", type=positive_float, default=3e-4, help="peak learning rate of the in-model schedule")
    p.add_argument("--schedule", default="cosine", choices=("cosine", "constant"), help="learning-rate schedule")
    p.add_argument("--epochs", type=count(1), default=1, help="epochs the device will train (sizes the schedule)")
    p.add_argument("--train-examples", type=count(1), metavar="N", help="training images on the device")
    p.add_argument("--data", metavar="DIR", help="the device's training images (a class-per-folder tree): counts them")
    p.add_argument(
        "--total-steps",
        type=count(1),
        metavar="N",
        help="steps of the cosine schedule (default: --epochs x the training images)",
    )
    p.add_argument("--label-smoothing", type=unit_interval, default=0.1, help="label smoothing of the device loss")
    p.add_argument(
        "--frozen-bits",
        type=int,
        default=8,
        choices=(8, 32),
        help="frozen conv/dense kernels stored as int8 (hybrid kernels, ~1%% output difference) or float32",
    )
    p.add_argument("--batch-size", type=int, default=1, choices=(1,), help="the device graph trains at batch size 1")
    p.add_argument("--overwrite", action="store_true", help="replace an existing X.tflite and X.json")
    p.add_argument("--verbose", action="store_true", help="show TensorFlow's own log")
    args = p.parse_args(argv)

    def progress(stage):
        print(f"export: {stage}...", file=sys.stderr, flush=True)

    try:
        check_export_target(args.out, args.overwrite)
        if not Path(args.model).is_file():
            raise FileNotFoundError(f"no model file at {args.model}; pass the model.keras written by `train --out`")
        steps, source = total_steps(args)
        progress(f"schedule of {steps} steps ({source}); loading {args.model}")
        quiet_tensorflow(args.verbose)
        from tinytl_tf.export import export_model
        from tinytl_tf.train import load_trained

        meta = export_model(
            load_trained(args.model),
            args.out,
            args.optimizer,
            args.lr,
            steps,
            args.label_smoothing,
            args.schedule,
            frozen_bits=args.frozen_bits,
            overwrite=args.overwrite,
            progress=progress,
        )
    except (ValueError, OSError, RuntimeError) as e:
        if debug():
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: meta[k] for k in ("fingerprint", "backbone", "method", "num_classes", "ops")}, indent=2))
    print(
        f"wrote {args.out} ({os.path.getsize(args.out) / 1e6:.2f} MB) and {Path(args.out).stem}.json", file=sys.stderr
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
