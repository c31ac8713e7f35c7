"""`python -m tinytl_tf ...` (or `tinytl ...`): the front door. Parses and checks arguments, then calls the package.

Every argument and the data folder's layout are checked before TensorFlow is imported, so a mistake is answered
at once with one `error:` line (exit 2). Results go to stdout, progress and logs to stderr.
"""

import argparse
import functools
import json
import sys
from pathlib import Path

from tinytl_tf import cliargs
from tinytl_tf.backbones.registry import BACKBONES, get_backbone
from tinytl_tf.cliargs import count, fraction, positive_float, unit_interval
from tinytl_tf.config import check_resolution
from tinytl_tf.contract import DEFAULT_OPTIMIZER, METHODS
from tinytl_tf.methods import DEFAULT_LR, OPTIMIZERS


def cmd_train(args):
    from tinytl_tf.jobs.train import data_loader, train_job

    make_model = None
    if args.subnet:
        from tinytl_tf.supernet.subnet import load_subnet

        make_model = functools.partial(load_subnet, args.subnet, args.method, args.resolution, args.weights_dir)
    with cliargs.stdout_to_stderr():
        _, metrics = train_job(
            args.data,
            args.backbone,
            args.method,
            args.out,
            args.resolution,
            args.epochs,
            args.batch_size,
            args.lr,
            args.label_smoothing,
            args.dropout,
            args.strategy,
            args.weights_dir,
            args.overwrite,
            verbose=1,
            load_data=data_loader(args.data, args.tfds, args.val_fraction, args.seed),
            make_model=make_model,
            seed=args.seed,
            optimizer=args.optimizer,
        )
    print(json.dumps(cliargs.json_safe(metrics), indent=2, allow_nan=False))


def _searchable_backbones():
    from tinytl_tf.supernet.space import searchable_backbones

    return searchable_backbones()


def cmd_search(args):
    from tinytl_tf.jobs.search import search_job

    with cliargs.stdout_to_stderr():
        subnet = search_job(
            args.data,
            args.backbone,
            args.budget_mb,
            args.out,
            args.resolutions,
            args.epochs,
            args.pairs,
            args.population,
            args.generations,
            args.seed,
            args.batch_size,
            args.lr,
            args.label_smoothing,
            args.dropout,
            args.strategy,
            args.weights_dir,
            args.val_fraction,
            args.predictor_epochs,
            elastic_width=args.elastic_width or None,
            measure=not args.no_measure,
            confirm_epochs=args.confirm_epochs,
        )
    print(json.dumps({k: v for k, v in subnet.items() if k not in ("spec", "search")}, indent=2))


def cmd_evaluate(args):
    from tinytl_tf.jobs.evaluate import evaluate_job

    print(json.dumps(evaluate_job(args.model, args.data, args.batch_size, args.all_images)))


def cmd_export(args):
    from tinytl_tf.jobs.export import export_job

    def progress(stage):
        print(f"export: {stage}...", file=sys.stderr, flush=True)

    steps, source = args.device_steps
    progress(f"schedule of {steps} steps ({source}); loading {args.model}")
    meta = export_job(
        args.model,
        args.out,
        optimizer=args.optimizer,
        lr=args.lr,
        total_steps=steps,
        label_smoothing=args.label_smoothing,
        schedule=args.schedule,
        frozen_bits=args.frozen_bits,
        overwrite=args.overwrite,
        progress=progress,
    )
    print(json.dumps({k: meta[k] for k in ("fingerprint", "backbone", "method", "num_classes", "ops")}, indent=2))
    size_mb = Path(args.out).stat().st_size / 1e6
    print(f"wrote {args.out} ({size_mb:.2f} MB) and {Path(args.out).stem}.json", file=sys.stderr)


def cmd_caltech(args):
    from tinytl_tf.jobs.caltech import make_subset, prepare_caltech101

    if args.action == "prepare":
        print(prepare_caltech101(args.source if len(args.source) > 1 else args.source[0], args.out))
    else:
        print(make_subset(args.prepared, args.out, args.classes, args.n_train, args.n_test, args.short_side))


def cmd_import_ofa(args):
    from tinytl_tf.importers.ofa import import_checkpoint

    cfg, arrays = import_checkpoint(args.checkpoint, args.out, args.overwrite)
    print(f"wrote {args.out}: {len(cfg.blocks)} blocks, {sum(a.size for a in arrays.values()):,} parameters")


def cmd_memory(args):
    if args.model:
        return _measure_file(args)
    from tinytl_tf.memory import format_table, method_table, plot_breakdown, predicted_table

    rows = method_table(
        args.backbone,
        args.resolution,
        args.batch_size,
        num_classes=args.num_classes,
        lite_for_all=not args.no_lite_for_all,
        frozen_bits=args.frozen_bits,
        methods=args.methods,
    )
    # the engine stores frozen kernels in 8 or 32 bits; 16 is the analytic model's alone
    engine_bits = args.frozen_bits if args.frozen_bits in (8, 32) else None
    predicted = predicted_table(
        args.backbone,
        args.resolution,
        args.num_classes,
        [r["method"] for r in rows],
        lite_for_all=not args.no_lite_for_all,
        optimizer=args.optimizer,
        frozen_bits=engine_bits or 8,
    )
    for row, p in zip(rows, predicted):
        row.update(predicted_train_mb=p.total_mb if engine_bits else None, optimizer=args.optimizer)
    if args.measure:
        _add_measurements(args, rows)
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    if args.measure and not args.json:
        from tinytl_tf.memory.measure import format_measured

        print(format_measured(rows, args.batch_size))
    if args.plot:
        plot_breakdown(rows, args.plot)


def _measure_file(args):
    """`memory --model X.tflite`: the LiteRT figures of one exported model, as a method row."""
    from tinytl_tf.memory.measure import MeasurementError, format_measured, measure_file

    print(f"measuring {args.model}: train and infer, each in a fresh LiteRT process...", file=sys.stderr, flush=True)
    try:
        row = measure_file(args.model, timeout=args.timeout)
    except MeasurementError as e:  # the LiteRT process could not run here, as in `_add_measurements`
        raise ChildProcessError(str(e)) from None
    print(json.dumps(row, indent=2) if args.json else format_measured([row]))


def _add_measurements(args, rows):
    """Export each method's model and add its LiteRT figures (batch 1) to its row; progress goes to stderr."""
    from tinytl_tf.jobs.memory import measure_methods
    from tinytl_tf.memory.measure import MeasurementError

    def progress(method, index, total, stage):
        print(f"[{index + 1}/{total}] {method}: {stage}...", file=sys.stderr, flush=True)

    try:
        measured = measure_methods(
            args.backbone,
            args.resolution,
            args.num_classes,
            [r["method"] for r in rows],
            not args.no_lite_for_all,
            args.weights_dir,
            timeout=args.timeout,
            progress=progress,
            optimizer=args.optimizer,
            frozen_bits=args.frozen_bits,
        )
    except MeasurementError as e:  # the LiteRT process could not run here: a setup problem, reported as such
        raise ChildProcessError(str(e)) from None
    for row, m in zip(rows, measured):
        row.update(m, measured_batch_size=1)


def cmd_demo(args):
    from tinytl_tf.jobs.demo import run_demo

    run_demo(args.out, epochs=args.epochs, seed=args.seed)


def _add_seed_option(p):
    """`--seed`, which `train`, `search` and `demo` share."""
    p.add_argument(
        "--seed",
        type=count(0),
        default=0,
        help="seed of every random draw: the split, shuffling, augmentation, "
        "head and lite-branch initialisation, dropout, sub-net sampling; ops run deterministically (measured "
        "at 0.93-0.97x the speed without, benchmarks/determinism.py), so the same command repeats exactly on one "
        "machine and TensorFlow version (default 0)",
    )


def _add_fit_options(p):
    """The `model.fit` options `train` and `search` share."""
    p.add_argument("--batch-size", type=count(1), default=8, help="training batch size")
    p.add_argument("--label-smoothing", type=unit_interval, default=0.1, help="label smoothing of the loss")
    p.add_argument("--dropout", type=unit_interval, default=0.2, help="dropout before the new head")
    p.add_argument(
        "--strategy",
        default="none",
        choices=("none", "mirrored"),
        help="mirrored: tf.distribute across all local devices",
    )


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every option's default (argparse adds none where the help already names it)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "(default" in text or action.default in (None, False) or action.default is argparse.SUPPRESS:
            return text
        return super()._get_help_string(action)


def build_parser():
    p = cliargs.ArgumentParser(
        prog="tinytl",
        description="TinyTL: memory-efficient on-device transfer learning for Keras and LiteRT.",
        formatter_class=_Formatter,
    )
    p.add_argument("--verbose", action="store_true", help="show TensorFlow's own C++/absl log (also: TINYTL_DEBUG=1)")
    p.set_defaults(tensorflow=True)  # a command that needs no TensorFlow sets False: it is then never imported
    sub = p.add_subparsers(dest="command", required=True)

    _add_train_parser(sub)
    _add_search_parser(sub)
    _add_evaluate_parser(sub)

    m = sub.add_parser(
        "memory",
        formatter_class=_Formatter,
        help="analytic (and measured LiteRT) training memory of the six transfer methods",
        description="Print the analytic training memory (parameters + activations, MB = 1e6 B) of every transfer "
        "method on a backbone (TinyTL paper, Cai et al. 2020, Fig. 3 / Table 1); no model is built unless --measure "
        "exports each method's model and measures it with LiteRT. As in the paper, every method's network has lite "
        "residual branches by default (FT-Last's row then counts their frozen parameters, unlike "
        "`train --method ft-last`); --no-lite-for-all gives the networks `train` builds. The paper's table: "
        "--backbone proxylessnas-mobile --batch-size 8.",
    )
    m.add_argument(
        "--backbone", default="mcunet-5fps", help=f"one of: {', '.join(BACKBONES)} (default mcunet-5fps, as train)"
    )
    m.add_argument("--resolution", type=count(1), help="input size in pixels (default: the backbone's)")
    m.add_argument("--batch-size", type=count(1), default=8, help="training batch size (default 8, the paper's)")
    m.add_argument("--num-classes", type=count(2), default=102, help="classes of the new head (default 102, Flowers)")
    m.add_argument(
        "--frozen-bits", type=int, default=8, choices=(8, 16, 32), help="bits per frozen parameter (default 8)"
    )
    m.add_argument(
        "--no-lite-for-all",
        action="store_true",
        help="lite residuals only on TinyTL-L/L+B, as `train` builds them (the paper gives every method them)",
    )
    m.add_argument(
        "--optimizer",
        choices=("adam", "sgd", "adam8bit"),
        default=DEFAULT_OPTIMIZER,
        help=f"the exported model's optimizer, for the predicted and measured figures (default {DEFAULT_OPTIMIZER}, "
        "as export; adam8bit: Adam with block-wise 8-bit moments)",
    )
    m.add_argument("--json", action="store_true", help="print the rows as JSON")
    m.add_argument(
        "--plot",
        metavar="OUT.png",
        help="also write a bar chart: parameter vs activation memory, with --measure the measured LiteRT figures",
    )
    m.add_argument(
        "--methods", nargs="+", metavar="METHOD", help=f"only these methods (default all: {', '.join(METHODS)})"
    )
    m.add_argument(
        "--measure",
        action="store_true",
        help="also export each method's model and measure it with LiteRT at batch 1 "
        "(static graph peak, process RSS of train and infer)",
    )
    m.add_argument("--weights-dir", help="folder with mobilenet_v1_1.0_224_imagenet.npz (mobilenet-v1 with --measure)")
    m.add_argument(
        "--model",
        metavar="MODEL.tflite",
        help="measure this exported model instead (train and infer in LiteRT at its batch size: static graph peak, "
        "process RSS split into heap and file-backed pages); the method comes from MODEL.json beside it",
    )
    m.add_argument(
        "--timeout",
        type=positive_float,
        default=300,
        help="seconds each LiteRT measurement process may run (default 300)",
    )
    m.set_defaults(func=cmd_memory)

    _add_demo_parser(sub)
    _add_export_parser(sub)
    _add_caltech_parser(sub)

    _add_import_ofa_parser(sub)
    return p


def _add_train_parser(sub):
    t = sub.add_parser(
        "train",
        formatter_class=_Formatter,
        help="fine-tune a pretrained backbone with a transfer method",
        description="Fine-tune a pretrained backbone on a class-per-folder image tree; "
        "writes OUT/model.keras and OUT/metrics.json.",
    )
    t.add_argument(
        "--data",
        required=True,
        help="DIR/train/<class>/* + DIR/test/<class>/*, or DIR/<class>/* with --val-fraction; "
        "with --tfds, the tfds data_dir",
    )
    t.add_argument(
        "--tfds", metavar="NAME", help="read the prepared tensorflow-datasets set NAME from --data (no download)"
    )
    t.add_argument(
        "--val-fraction",
        type=fraction,
        default=0.2,
        help="held-out fraction of a flat DIR/<class>/* tree (recorded in OUT/split.json for evaluate)",
    )
    _add_seed_option(t)
    t.add_argument("--backbone", default="mcunet-5fps", help=f"one of: {', '.join(BACKBONES)} (default mcunet-5fps)")
    t.add_argument("--method", default="tinytl-lb", help=f"one of: {', '.join(METHODS)} (default tinytl-lb)")
    t.add_argument("--resolution", type=count(1), help="input size in pixels (default: the backbone's)")
    t.add_argument("--epochs", type=count(1), default=10, help="training epochs")
    t.add_argument(
        "--lr",
        type=positive_float,
        help="peak learning rate of Adam with cosine decay (default: the "
        f"method's: {', '.join(f'{m} {lr:g}' for m, lr in DEFAULT_LR.items())})",
    )
    t.add_argument(
        "--optimizer",
        default="adam",
        choices=OPTIMIZERS,
        help="adam: float32 moments (8 bytes of state per trained parameter); adam8bit: Adam with block-wise "
        "8-bit moments (~2 bytes per parameter)",
    )
    _add_fit_options(t)
    t.add_argument("--weights-dir", help="folder with mobilenet_v1_1.0_224_imagenet.npz (mobilenet-v1 only)")
    t.add_argument("--out", required=True, help="output folder")
    t.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing OUT/model.keras and metrics.json "
        "(and remove an OUT/model.tflite + model.json + model.init.npz exported from the old model)",
    )
    t.add_argument(
        "--subnet",
        metavar="SUBNET.json",
        help="train the sub-net found by `search` (its subnet.json) "
        "from the pretrained weights the search started it from, instead of --backbone; its resolution is the "
        "searched one",
    )
    t.set_defaults(func=cmd_train)


def _add_search_parser(sub):
    s = sub.add_parser(
        "search",
        formatter_class=_Formatter,
        help="find the best sub-net of pretrained backbones under a training-memory budget",
        description="Fine-tune an elastic super-net around each pretrained MB backbone on 80% of the training "
        "images, measure random sub-nets on the other 20%, fit an accuracy predictor (checked against ranking by "
        "memory or resolution alone) and run an evolutionary search under a training-memory budget (the memory "
        "predictor's LiteRT train step at batch 1 with the export's optimizer). The space: the backbone, the input "
        "resolution, elastic depth (trailing blocks of a stage skipped) and per block the lite residual branch "
        "(present or not, kernel 3/5, groups 2/4). Each backbone's best predicted sub-net (a finalist) and the "
        "fixed baseline (mcunet-5fps TinyTL-L+B at the largest resolution within the budget, else TinyTL-B) are "
        "then fine-tuned for --confirm-epochs from the pretrained weights as train does and compared image by image "
        "on the held-out images: the best finalist is kept only when it leads by two standard errors of the paired "
        "difference, else the baseline is the result; the result is exported and its LiteRT train step measured. "
        "Writes OUT/subnet.json and OUT/<backbone>/start.keras + supernet.keras each; an interrupted search "
        "resumes from OUT. Then: train --subnet OUT/subnet.json.",
    )
    s.add_argument(
        "--data",
        required=True,
        help="DIR/train/<class>/* (+ DIR/test/, never read), or DIR/<class>/* with --val-fraction",
    )
    s.add_argument(
        "--val-fraction",
        type=fraction,
        default=0.2,
        help="test fraction of a flat DIR/<class>/* tree, left out of the search",
    )
    s.add_argument(
        "--backbone",
        nargs="+",
        help="the pretrained backbones to choose from: names, or .npz files written by `import-ofa` (default: "
        "every backbone with pretrained MB weights, " + ", ".join(_searchable_backbones()) + ")",
    )
    s.add_argument(
        "--budget-mb",
        type=positive_float,
        required=True,
        help="train-step memory a sub-net may need (predicted LiteRT TinyTL-L+B step at batch 1 with Adam, MB = 1e6 B)",
    )
    s.add_argument(
        "--elastic-width",
        action="store_true",
        help="also search kernel sizes (centre crops) and expand ratios (dropped channels). Off by default, and on "
        "for a converted once-for-all .npz, because only weights trained as a once-for-all super-net survive it: "
        "cropping the kernels and dropping the channels of ordinary pretrained weights destroys their features",
    )
    s.add_argument(
        "--no-measure",
        action="store_true",
        help="skip exporting the winner and measuring its LiteRT train-step memory",
    )
    s.add_argument("--resolutions", type=count(1), nargs="+", help="input sizes to search (default 96 112 128 144 160)")
    s.add_argument("--epochs", type=count(1), default=5, help="super-net fine-tuning epochs (default 5)")
    s.add_argument(
        "--pairs", type=count(1), default=500, help="sub-nets measured for the accuracy predictor (default 500)"
    )
    s.add_argument("--population", type=count(1), default=100, help="evolutionary search population (default 100)")
    s.add_argument("--generations", type=count(1), default=100, help="evolutionary search generations (default 100)")
    s.add_argument(
        "--predictor-epochs", type=count(1), default=200, help="accuracy predictor training epochs (default 200)"
    )
    s.add_argument(
        "--confirm-epochs",
        type=count(1),
        default=3,
        help="epochs of the short fine-tune from the pretrained weights that decides between the finalists (one "
        "per backbone) and the fixed baseline (default 3)",
    )
    _add_seed_option(s)
    s.add_argument(
        "--lr", type=positive_float, default=3e-3, help="peak learning rate of the super-net fine-tuning (default 3e-3)"
    )
    _add_fit_options(s)
    s.add_argument("--weights-dir", help="folder with backbone weights that are not vendored")
    s.add_argument("--out", required=True, help="output folder (resumed when it holds an unfinished search)")
    s.set_defaults(func=cmd_search)


def _add_evaluate_parser(sub):
    e = sub.add_parser(
        "evaluate",
        formatter_class=_Formatter,
        help="top-1 accuracy of a trained model",
        description="Print JSON with the top-1 accuracy of a model.keras on DIR/test, or on DIR: only the images train "
        "held out of DIR (--val-fraction) when the model's split.json lists them.",
    )
    e.add_argument("--model", required=True, help="model.keras written by train")
    e.add_argument(
        "--data", required=True, help="DIR/test/<class>/* or DIR/<class>/*; class names must match the model's"
    )
    e.add_argument("--batch-size", type=count(1), default=32, help="evaluation batch size")
    e.add_argument(
        "--all-images",
        action="store_true",
        help="score every image of --data, even when the model's "
        "split.json lists the ones train held out of it (scored by default)",
    )
    e.set_defaults(func=cmd_evaluate)


def _add_demo_parser(sub):
    d = sub.add_parser(
        "demo",
        formatter_class=_Formatter,
        help="the main job on the embedded CIFAR-10 subset",
        description="Fine-tune mcunet-5fps on the embedded 10-class CIFAR-10 subset with FT-Last and "
        "TinyTL-L+B, print their accuracy beside their measured LiteRT training memory, then train the "
        "TinyTL-L+B model on with the LiteRT trainer at batch size 1.",
    )
    d.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    d.add_argument("--epochs", type=count(1), help="training epochs of each method (default: the demo's 15)")
    _add_seed_option(d)
    d.set_defaults(func=cmd_demo)


def _add_import_ofa_parser(sub):
    o = sub.add_parser(
        "import-ofa",
        formatter_class=_Formatter,
        help="import the official once-for-all checkpoint as a super-net backbone (.npz) for `search`",
        description="Convert the official once-for-all ofa_proxyless_d234_e346_k357_w1.3 PyTorch checkpoint into a "
        "super-net backbone file that `search --backbone FILE.npz` reads. Needs torch (pip install torch); nothing "
        "is downloaded.",
    )
    o.add_argument("--checkpoint", required=True, help="the once-for-all checkpoint file (torch.save'd state dict)")
    o.add_argument("--out", required=True, help="the .npz super-net backbone file to write")
    o.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    o.set_defaults(func=cmd_import_ofa)


def _add_export_parser(sub):
    x = sub.add_parser(
        "export",
        formatter_class=_Formatter,
        help="export a trained model.keras to an on-device training .tflite (+ its .json metadata)",
        description="Export a trained model.keras to one on-device training X.tflite with train / infer / "
        "get_weights / set_weights signatures, and its metadata X.json beside it (model.json for model.tflite). The "
        "in-model cosine schedule spans the steps the device will train at batch size 1: --total-steps, else --epochs "
        "x the training images (--train-examples, the train split of --data, or the train_examples in the "
        "metrics.json written with --model).",
    )
    x.add_argument("--model", required=True, help="model.keras written by `train`")
    x.add_argument("--out", required=True, help="the X.tflite to write; X.json is written beside it")
    x.add_argument(
        "--optimizer",
        default=DEFAULT_OPTIMIZER,
        choices=OPTIMIZERS,
        help=f"the device's optimizer (default {DEFAULT_OPTIMIZER}: Adam with block-wise 8-bit moments, ~2 bytes of "
        "state per parameter, within 0.3 points of float Adam in the accuracy study; adam: float moments, 8 bytes)",
    )
    x.add_argument("--lr", type=positive_float, default=3e-4, help="peak learning rate of the in-model schedule")
    x.add_argument("--schedule", default="cosine", choices=("cosine", "constant"), help="learning-rate schedule")
    x.add_argument("--epochs", type=count(1), default=1, help="epochs the device will train (sizes the schedule)")
    x.add_argument("--train-examples", type=count(1), metavar="N", help="training images on the device")
    x.add_argument("--data", metavar="DIR", help="the device's training images (a class-per-folder tree): counts them")
    x.add_argument(
        "--total-steps",
        type=count(1),
        metavar="N",
        help="steps of the cosine schedule (default: --epochs x the training images)",
    )
    x.add_argument("--label-smoothing", type=unit_interval, default=0.1, help="label smoothing of the device loss")
    x.add_argument(
        "--frozen-bits",
        type=int,
        default=8,
        choices=(8, 32),
        help="frozen conv/dense kernels stored as int8 (hybrid kernels, ~1%% output difference) or float32",
    )
    x.add_argument("--batch-size", type=int, default=1, choices=(1,), help="the device graph trains at batch size 1")
    x.add_argument("--overwrite", action="store_true", help="replace an existing X.tflite and X.json")
    x.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help="show TensorFlow's own log")
    x.set_defaults(func=cmd_export)


def _add_caltech_parser(sub):
    from tinytl_tf.jobs.caltech import CALTECH10_CLASSES

    c = sub.add_parser(
        "caltech",
        formatter_class=_Formatter,
        help="prepare Caltech-101 from its tarballs (or a small subset of a prepared tree)",
        description="Caltech-101's tarballs -> the OUT/train/<class>/, OUT/test/<class>/ tree `train` reads, by the "
        "official split files (BACKGROUND_Google, a clutter folder, is dropped). TF-free.",
    )
    actions = c.add_subparsers(dest="action", required=True)
    p = actions.add_parser("prepare", help="tarballs (or their folder) -> OUT/train, OUT/test")
    p.add_argument("source", nargs="+", help="folder with the tarballs, the tar files, or an extracted folder")
    p.add_argument("out")
    s = actions.add_parser("subset", help="a prepared tree -> a small downscaled subset")
    s.add_argument("prepared")
    s.add_argument("out")
    s.add_argument("--classes", nargs="+", default=list(CALTECH10_CLASSES))
    s.add_argument("--n-train", type=count(1), default=30)
    s.add_argument("--n-test", type=count(1), default=10)
    s.add_argument("--short-side", type=count(1), default=112)
    c.set_defaults(func=cmd_caltech, tensorflow=False)


def check_arguments(args):
    """The cheap checks (no TensorFlow): the files and folders named exist and the outputs are free."""
    if args.command in ("train", "search") and not getattr(args, "tfds", None):
        from tinytl_tf.imagefiles import folder_layout

        folder_layout(args.data)  # at least two class folders, each with an image file; no image decoded
    if getattr(args, "resolution", None) is not None:
        check_resolution(args.resolution)
    if args.command == "train":
        cliargs.check_output_dir(args.out, args.overwrite, create=False)
        if args.method not in METHODS:
            raise ValueError(f"unknown transfer method {args.method!r}; valid: {', '.join(METHODS)}")
        if args.subnet is None:
            get_backbone(args.backbone)
    if args.command == "memory" and args.measure and args.frozen_bits == 16:
        raise ValueError("--measure exports frozen kernels in 8 or 32 bits; pass --frozen-bits 8 or 32")
    if args.command == "search":
        for name in args.backbone or ():
            if not name.endswith(".npz"):
                get_backbone(name)
    if args.command == "memory" and args.model:
        if not Path(args.model).is_file():
            raise FileNotFoundError(f"no model file at {args.model}; pass a .tflite written by `export` or `train`")
        with open(args.model, "rb") as f:
            if f.read(8)[4:] != b"TFL3":
                raise ValueError(
                    f"{args.model} is not a TFLite model (no 'TFL3' identifier); pass a .tflite written "
                    "by `export` or `train`"
                )
        if args.measure or args.plot:
            raise ValueError("--model measures one exported file; --measure and --plot belong to the method table")
    if args.command == "export":
        cliargs.check_export_target(args.out, args.overwrite)
        if not Path(args.model).is_file():
            raise FileNotFoundError(f"no model file at {args.model}; pass the model.keras written by `train --out`")
        from tinytl_tf.jobs.export import device_steps

        args.device_steps = device_steps(args.model, args.epochs, args.total_steps, args.train_examples, args.data)
    if args.command == "import-ofa":
        from tinytl_tf.importers.ofa import check_target

        check_target(args.out, args.overwrite)
    if args.command == "evaluate":
        if not Path(args.model).is_file():
            raise FileNotFoundError(f"no model file at {args.model}; pass the model.keras written by `train --out`")
        if not Path(args.data).is_dir():
            raise FileNotFoundError(
                f"data folder {args.data} does not exist; expected DIR/test/<class>/<images> or DIR/<class>/<images>"
            )


def main(argv=None):
    """Run one command; returns the exit status (0, or 2 after an `error:` line for a user mistake)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, or a refused argument (its error line is printed)
        return e.code

    def run():
        check_arguments(args)
        if args.tensorflow:
            cliargs.quiet_tensorflow(args.verbose)
        args.func(args)

    return cliargs.run_command(run)
