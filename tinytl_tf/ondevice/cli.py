"""`python -m tinytl_tf.ondevice {train,evaluate,predict}`: argument parsing and error reporting only.

User mistakes (bad paths, foreign or corrupt files, wrong classes) print `error: ...` and exit with 2, never a
traceback; $TINYTL_DEBUG re-raises them. A training run that diverged exits with 1, its checkpoint kept. Results
are one JSON line on stdout; progress and warnings go to stderr.
"""

import argparse
import json
import logging
import sys

from tinytl_tf import cliargs
from tinytl_tf.cliargs import count, positive_float
from tinytl_tf.ondevice.checkpoint import PAUSE_ENV
from tinytl_tf.ondevice.evaluation import evaluate_folder, predict_images
from tinytl_tf.ondevice.folder_training import train_folder


def cmd_train(args):
    return train_folder(
        args.model,
        args.data,
        args.epochs,
        args.checkpoint,
        seed=args.seed,
        lr=args.lr or 0.0,
        augment=args.augment,
        checkpoint_every=args.checkpoint_every,
        progress=sys.stderr,
    )


def cmd_evaluate(args):
    return evaluate_folder(args.model, args.data, args.checkpoint)


def cmd_predict(args):
    return predict_images(args.model, args.images, args.checkpoint, args.top_k)


def build_parser():
    p = cliargs.ArgumentParser(
        prog="python -m tinytl_tf.ondevice",
        description="Train, evaluate and run a tinytl_tf .tflite on a device with LiteRT only (no TensorFlow). "
        "The X.json exported with X.tflite must lie beside it.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    model_help = "X.tflite exported by tinytl_tf (X.json beside it)"

    t = sub.add_parser(
        "train",
        help="train on a class-per-folder image tree, one image per step, resumable",
        description="Stream DIR's train split through the model's train signature (batch size 1), "
        "checkpointing after every epoch (and every N steps); rerun the same command to "
        "resume from the checkpoint. Prints a JSON summary line.",
    )
    t.add_argument("--model", required=True, metavar="M.tflite", help=model_help)
    t.add_argument(
        "--data",
        required=True,
        metavar="DIR",
        help="DIR/train/<class>/* (+ DIR/test/<class>/*) or DIR/<class>/* (split "
        "by --seed); class folders must be the model's labels",
    )
    t.add_argument(
        "--epochs", required=True, type=count(1), metavar="E", help="train until this many epochs are complete"
    )
    t.add_argument(
        "--checkpoint",
        required=True,
        metavar="CK.npz",
        help="CK.npz to write and resume from (CK.npz.prev keeps the one before)",
    )
    t.add_argument(
        "--seed", type=count(0), default=0, metavar="S", help="seed of the split, order and augmentation (default 0)"
    )
    t.add_argument(
        "--lr",
        type=positive_float,
        metavar="LR",
        help="fixed learning rate (default: the schedule built into the model)",
    )
    t.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="random-resized crop + flip (default), or the evaluation crop with --no-augment",
    )
    t.add_argument(
        "--checkpoint-every",
        type=count(0),
        default=0,
        metavar="N",
        help=f"also checkpoint every N steps (default 0: after epochs only). For crash tests, ${PAUSE_ENV} "
        "pauses each checkpoint write between its temp file and the rename",
    )
    t.set_defaults(func=cmd_train)

    e = sub.add_parser(
        "evaluate",
        help="top-1 accuracy on a class-per-folder tree",
        description="Print JSON with accuracy, examples, cross_entropy and skipped (unreadable images).",
    )
    e.add_argument("--model", required=True, metavar="M.tflite", help=model_help)
    e.add_argument(
        "--data",
        required=True,
        metavar="DIR",
        help="DIR/test/<class>/* or DIR/<class>/*; folders named by the model's labels",
    )
    e.add_argument(
        "--checkpoint", metavar="CK.npz", help="weights from this CK.npz (default: the weights in the .tflite)"
    )
    e.set_defaults(func=cmd_evaluate)

    r = sub.add_parser(
        "predict",
        help="top-k labels of images",
        description="Print JSON with the top-k labels and probabilities of each image.",
    )
    r.add_argument("--model", required=True, metavar="M.tflite", help=model_help)
    r.add_argument(
        "--checkpoint", metavar="CK.npz", help="weights from this CK.npz (default: the weights in the .tflite)"
    )
    r.add_argument("--top-k", type=count(1), default=3, metavar="K", help="labels per image (default 3)")
    r.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any format and size Pillow reads)")
    r.set_defaults(func=cmd_predict)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    warnings = logging.StreamHandler(sys.stderr)  # skipped images, checkpoint fallbacks: this command's stderr
    warnings.setFormatter(logging.Formatter("warning: %(message)s"))
    logger = logging.getLogger("tinytl_tf")
    logger.addHandler(warnings)
    results = []
    try:
        status = cliargs.run_command(lambda: results.append(args.func(args)))
    except KeyboardInterrupt:
        print("\ninterrupted; rerun the same train command to resume from the last checkpoint", file=sys.stderr)
        return 130
    finally:
        logger.removeHandler(warnings)
    if status == 0:
        print(json.dumps(cliargs.json_safe(results[0]), allow_nan=False))
    return status
