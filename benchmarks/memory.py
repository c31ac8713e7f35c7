"""Training memory per transfer method: analytic (TinyTL, Cai et al. 2020, Sec. 3.1), predicted and measured LiteRT,
at batch 1.

    python -m benchmarks.memory [--networks proxylessnas-mobile@224 mcunet-5fps@128] [--optimizers adam sgd]
                                [--classes 102] [--methods ...] [--steps 3] [--timeout 900] [--out docs/memory.json]
                                [--readme README.md] [--verbose]
    python -m benchmarks.memory --predictor [--networks ...] [--optimizers adam sgd]
    python -m benchmarks.memory --runtime-base
    python -m benchmarks.memory --repredict [--out docs/memory.json] [--readme README.md]

Default mode, per network, optimizer and method (every method gets the lite residual branches, as in the paper's
table, so each model is the network its analytic row describes): export the on-device training model (without
the export's LiteRT-against-Keras check, which memory does not depend on), then report
- analytic: parameters + activations at batch 1 (MB = 1e6 B); predicted: `tinytl_tf.memory.predict_train`;
- static: the `train` graph's peak of live tensors, its constants and its variables;
- dynamic: peak RSS of a fresh LiteRT process running 3 `train` (or `infer`) steps minus its RSS after loading,
  with the builtin kernels (the CLI's default) and with the XNNPACK delegate;
- the `.tflite` size.
Each run's entry (keyed "network optimizer", with the commit it ran at) replaces the one in `--out`; the others
stay. `--readme` rewrites the table between the README's `memory-table` markers from what `--out` records.

`--predictor`: predicted against measured `train` (builtin kernels) for every method on each network and
optimizer (default: the four networks below, SGD and Adam: 48 cells), written to `--out`'s "predictor" entry with
each cell's error and how many are within 10%. `--runtime-base`: the RSS growth of loading and running a trivial
model, the predictor's `RUNTIME_BASE_BYTES`, and of chains of small ops (the runtime's cost per op).
`--repredict`: the recorded runs' predicted column recomputed with the
checkout's predictor (measured figures untouched; the entry records both commits).

A benchmark, not a test: each export takes from seconds to minutes; ProxylessNAS-Mobile's FT-Full export needs
about 5 GB.
"""

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.transfer import git_commit, portable_command

PREDICTOR_NETWORKS = ("mcunet-5fps@128", "proxyless-w0.3@128", "mbv2-w0.35@128", "proxylessnas-mobile@224")
MODES = {"builtin": False, "xnnpack": True}
WITHIN = 0.10  # the predictor's target: |predicted / measured - 1| at most this
README_BEGIN, README_END = "<!-- memory-table: begin -->", "<!-- memory-table: end -->"


def network(text):
    """'name@resolution' -> (name, resolution)."""
    name, _, res = text.partition("@")
    if not res.isdigit():
        raise argparse.ArgumentTypeError(f"expected NAME@RESOLUTION such as mcunet-5fps@128, got {text!r}")
    return name, int(res)


def exported(net, classes, methods, optimizer, tmp):
    """(method, its NetConfig, path of its exported model) per method, exported one at a time into `tmp`."""
    from tinytl_tf.jobs.memory import export_for_measuring, method_models

    name, res = net
    for method, model in method_models(name, res, classes, methods):
        path = Path(tmp) / f"{method}.tflite"
        t0 = time.time()
        export_for_measuring(model, path, optimizer)
        yield method, model.net_config, path, time.time() - t0
        path.unlink()


def measure_one(path, steps, timeout):
    """Everything the default table reports about one exported model (MB), plus its static peak for --verbose."""
    from tinytl_tf.contract import SIGNATURE_INFER, SIGNATURE_TRAIN
    from tinytl_tf.memory.analytic import MB
    from tinytl_tf.memory.measure import dynamic_memory, static_memory

    static = static_memory(path)
    row = {
        "static_peak_mb": static.peak_activation_bytes / MB,
        "variables_mb": static.variable_bytes / MB,
        "constants_mb": static.constant_bytes / MB,
        "tflite_mb": static.file_bytes / MB,
    }
    for mode, xnnpack in MODES.items():
        for signature in (SIGNATURE_TRAIN, SIGNATURE_INFER):
            row[f"{signature}_{mode}_mb"] = dynamic_memory(path, signature, steps, timeout, xnnpack=xnnpack) / MB
    return row, static


def print_static(method, static, top):
    print(
        f"  {method}: static peak {static.peak_activation_bytes / 1e6:.2f} MB at op {static.peak_op}; by producer: "
        + ", ".join(f"{k} {v / 1e6:.2f}" for k, v in list(static.peak_by_op.items())[:8])
    )
    for p in static.peak_tensors[:top]:
        print(f"      {p.bytes / 1e6:8.3f} MB  {p.dtype:<8}{str(list(p.shape)):<22}{p.producer:<24}{p.name[:70]}")


def run_network(net, optimizer, args):
    from tinytl_tf.memory import method_table, predict_train

    name, res = net
    analytic = {r["method"]: r for r in method_table(name, res, 1, args.classes, methods=args.methods)}
    rows, statics = [], {}
    print(f"\n{name} @{res}px, batch 1, {args.classes} classes, {optimizer}, lite branches on every method", flush=True)
    head = (
        f"{'method':<13}{'analytic':>9}{'predict':>9}{'train':>8}{'infer':>8}{'train+X':>9}{'infer+X':>9}"
        f"{'static':>8}{'vars':>8}{'consts':>8}{'tflite':>8}{'export s':>9}"
    )
    note = "MB; train/infer = RSS growth, builtin kernels; +X = with XNNPACK"
    print(f"{head}\n{note:>{len(head)}}\n{'-' * len(head)}")
    with tempfile.TemporaryDirectory(prefix="tinytl-bench-") as tmp:
        for method, cfg, path, seconds in exported(net, args.classes, args.methods, optimizer, tmp):
            a = analytic[method]
            measured, static = measure_one(path, args.steps, args.timeout)
            row = {
                "method": method,
                "analytic_mb": a["total_mb"],
                "analytic_params_mb": a["params_mb"],
                "analytic_activations_mb": a["activations_mb"],
                "predicted_train_mb": predict_train(cfg, optimizer).total_mb,
                "trainable_params": a["trainable_params"],
                "frozen_params": a["frozen_params"],
                "export_s": seconds,
                **measured,
            }
            rows.append(row)
            statics[method] = static
            print(
                f"{method:<13}{row['analytic_mb']:>9.2f}{row['predicted_train_mb']:>9.2f}{row['train_builtin_mb']:>8.2f}"
                f"{row['infer_builtin_mb']:>8.2f}{row['train_xnnpack_mb']:>9.2f}{row['infer_xnnpack_mb']:>9.2f}"
                f"{row['static_peak_mb']:>8.2f}{row['variables_mb']:>8.2f}{row['constants_mb']:>8.2f}"
                f"{row['tflite_mb']:>8.2f}{row['export_s']:>9.0f}",
                flush=True,
            )
    if args.verbose:
        print("largest tensors alive at the static peak of `train`:")
        for method, static in statics.items():
            print_static(method, static, args.top)
    return {
        "command": portable_command("python -m benchmarks.memory", args.argv),
        "commit": git_commit(),
        "network": name,
        "resolution": res,
        "optimizer": optimizer,
        "classes": args.classes,
        "steps": args.steps,
        "rows": rows,
        "peak_by_op_mb": {m: {k: v / 1e6 for k, v in s.peak_by_op.items()} for m, s in statics.items()},
    }


def run_predictor(args, previous, save):
    """Predicted vs measured `train` (builtin kernels) per network, optimizer and method.

    Resumable: the entry is saved (`save(entry)`) after each network and optimizer, and a cell already in
    `previous` (the recorded entry) is kept, with the commit it was measured at, instead of measured again."""
    from tinytl_tf.contract import METHODS
    from tinytl_tf.memory import predict_train
    from tinytl_tf.memory.analytic import MB
    from tinytl_tf.memory.measure import dynamic_memory

    done = {(c["network"], c["optimizer"], c["method"]): c for c in (previous or {}).get("cells", [])}
    cells = []
    entry = {
        "command": portable_command("python -m benchmarks.memory", args.argv),
        "commit": git_commit(),
        "classes": args.classes,
        "steps": args.steps,
        "within": WITHIN,
        "cells": cells,
    }
    print(f"{'network':<26}{'optimizer':<10}{'method':<14}{'predicted':>10}{'measured':>10}{'error':>8}", flush=True)

    def show(cell):
        print(
            f"{cell['network']:<26}{cell['optimizer']:<10}{cell['method']:<14}{cell['predicted_train_mb']:>10.2f}"
            f"{cell['measured_train_mb']:>10.2f}{100 * cell['error']:>+7.1f}%",
            flush=True,
        )

    for net in args.networks:
        name = f"{net[0]}@{net[1]}"
        for optimizer in args.optimizers:
            methods = args.methods or METHODS
            missing = [m for m in methods if (name, optimizer, m) not in done]
            for m in methods:
                if m not in missing:
                    cells.append(done[(name, optimizer, m)])
                    show(cells[-1])
            if not missing:
                continue
            with tempfile.TemporaryDirectory(prefix="tinytl-bench-") as tmp:
                for method, cfg, path, _ in exported(net, args.classes, missing, optimizer, tmp):
                    measured = dynamic_memory(path, "train", args.steps, args.timeout) / MB
                    predicted = predict_train(cfg, optimizer).total_mb
                    cells.append(
                        {
                            "network": name,
                            "optimizer": optimizer,
                            "method": method,
                            "predicted_train_mb": predicted,
                            "measured_train_mb": measured,
                            "error": predicted / measured - 1,
                            "commit": git_commit(),
                        }
                    )
                    show(cells[-1])
            entry["cells_within"] = sum(abs(c["error"]) <= WITHIN for c in cells)
            save(entry)
    entry["cells_within"] = sum(abs(c["error"]) <= WITHIN for c in cells)
    print(f"within {100 * WITHIN:.0f}%: {entry['cells_within']} of {len(cells)} cells")
    return entry


def runtime_base(steps, timeout):
    """RSS growth (bytes, as `dynamic_memory` counts it) of a trivial model: one variable, one multiply-add."""
    return [dynamic_memory_of(_chain(1, [1, 8]), steps, timeout) for _ in range(3)]


def runtime_per_op(steps, timeout, lengths=(200, 1000, 3000)):
    """{ops in the file: RSS growth} of chains of small elementwise ops (a multiply-add on 8 KB per link): what the
    runtime adds per op of a graph beyond its tensors."""
    from tinytl_tf import tflite_model

    growth = {}
    for n in lengths:
        data = _converted(_chain(n, [1, 16, 16, 8]))
        ops = sum(len(sg.ops) for sg in tflite_model.read(data))
        growth[ops] = min(dynamic_memory_of(data, steps, timeout) for _ in range(2))
    return growth


def _chain(links, shape):
    """A tf.Module whose `train` runs `links` multiply-adds on an input of `shape` and adds it to a variable."""
    import tensorflow as tf

    class Chain(tf.Module):
        def __init__(self):
            self.v = tf.Variable(tf.zeros(shape))

        @tf.function(input_signature=[tf.TensorSpec(shape, tf.float32, name="x")])
        def train(self, x):
            y = x
            for i in range(links):
                y = y * 1.0001 + float(i % 7)
            self.v.assign(self.v + y)
            return {"y": y}

    return Chain()


def _converted(module):
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_concrete_functions([module.train.get_concrete_function()], module)
    converter.experimental_enable_resource_variables = True
    return converter.convert()


def dynamic_memory_of(model, steps, timeout):
    """`dynamic_memory` of the serving signature of a tf.Module (converted first) or of `.tflite` bytes."""
    from tinytl_tf.memory.measure import dynamic_memory

    data = model if isinstance(model, bytes) else _converted(model)
    with tempfile.TemporaryDirectory(prefix="tinytl-bench-") as tmp:
        path = Path(tmp) / "model.tflite"
        path.write_bytes(data)
        return dynamic_memory(path, "serving_default", steps, timeout)


def repredict(report):
    """Recompute every recorded run's `predicted_train_mb` with this checkout's predictor (a function of the network
    config alone, so the measured figures stay those of the run's commit); records the predictor's commit."""
    from tinytl_tf.memory import predicted_table

    commit = git_commit()
    for entry in report.get("runs", {}).values():
        methods = [r["method"] for r in entry["rows"]]
        table = predicted_table(
            entry["network"], entry["resolution"], entry["classes"], methods, optimizer=entry["optimizer"]
        )
        for row, p in zip(entry["rows"], table):
            row["predicted_train_mb"] = p.total_mb
        entry["predicted_commit"] = commit
    predictor = report.get("predictor")
    if predictor:
        for cell in predictor["cells"]:
            name, res = network(cell["network"])
            (p,) = predicted_table(name, res, predictor["classes"], [cell["method"]], optimizer=cell["optimizer"])
            cell["predicted_train_mb"] = p.total_mb
            cell["error"] = p.total_mb / cell["measured_train_mb"] - 1
        predictor["cells_within"] = sum(abs(c["error"]) <= WITHIN for c in predictor["cells"])
        predictor["predicted_commit"] = commit


def readme_table(report):
    """Markdown table of the recorded runs: per network and optimizer, each method's measured train step (MB) with
    the analytic total and the prediction in brackets."""
    runs = report.get("runs", {})
    if not runs:
        return "(no runs recorded)"
    methods = list(dict.fromkeys(r["method"] for e in runs.values() for r in e["rows"]))
    lines = [
        "| network, optimizer | " + " | ".join(methods) + " |",
        "|---|" + "---|" * len(methods),
    ]
    for e in runs.values():
        by = {r["method"]: r for r in e["rows"]}
        cells = [
            f"{by[m]['train_builtin_mb']:.1f} ({by[m]['analytic_mb']:.1f} / {by[m]['predicted_train_mb']:.1f})"
            if m in by
            else ""
            for m in methods
        ]
        lines.append(f"| {e['network']}@{e['resolution']}, {e['optimizer']} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "Each cell: measured LiteRT train step, MB (analytic total / predicted); batch 1, builtin kernels, "
        f"{next(iter(runs.values()))['classes']} classes, lite branches on every method. Measured at "
        + ", ".join(sorted({e["commit"][:8] for e in runs.values()}))
        + (
            "; predicted at " + ", ".join(sorted({e["predicted_commit"][:8] for e in runs.values()}))
            if all("predicted_commit" in e for e in runs.values())
            else ""
        )
        + "."
    )
    return "\n".join(lines)


def rewrite_readme(path, report):
    from tinytl_tf.atomic import atomic_write

    text = Path(path).read_text()
    pattern = re.compile(re.escape(README_BEGIN) + ".*?" + re.escape(README_END), re.S)
    if not pattern.search(text):
        raise SystemExit(f"error: {path} has no {README_BEGIN} ... {README_END} block to rewrite")
    new = pattern.sub(lambda m: f"{README_BEGIN}\n{readme_table(report)}\n{README_END}", text)
    atomic_write(path, lambda tmp: Path(tmp).write_text(new))


def main(argv=None):
    from tinytl_tf.export import OPTIMIZERS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--networks", nargs="+", type=network, help="NAME@RESOLUTION (default: see the modes)")
    p.add_argument("--optimizers", nargs="+", choices=OPTIMIZERS, help="default: all; --predictor: sgd adam")
    p.add_argument("--classes", type=int, default=102)
    p.add_argument("--methods", nargs="+", default=None)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--out", default="docs/memory.json")
    p.add_argument("--readme", help="rewrite the table between this README's memory-table markers")
    p.add_argument("--predictor", action="store_true", help="predicted vs measured train memory (see above)")
    p.add_argument("--runtime-base", action="store_true", help="measure the RSS growth of a trivial model")
    p.add_argument(
        "--repredict",
        action="store_true",
        help="only recompute the recorded runs' predicted figures with this checkout's predictor (no export)",
    )
    p.add_argument("--verbose", action="store_true", help="print the largest tensors alive at each static peak")
    p.add_argument("--top", type=int, default=8, help="tensors per method with --verbose (default 8)")
    args = p.parse_args(argv)
    args.argv = argv if argv is not None else sys.argv[1:]

    from tinytl_tf.atomic import atomic_write

    if args.runtime_base:
        growth = runtime_base(args.steps, args.timeout)
        print("RSS growth of a trivial model, bytes: " + ", ".join(str(g) for g in growth))
        for ops, grown in runtime_per_op(args.steps, args.timeout).items():
            print(f"a chain of {ops} small ops: RSS growth {grown} bytes, {grown / ops:.0f} per op")
        return
    out = Path(args.out)
    report = json.loads(out.read_text()) if out.exists() else {}
    report.setdefault("batch_size", 1)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save():
        atomic_write(out, lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2)))

    if args.repredict:
        repredict(report)
        save()
    elif args.predictor:
        args.networks = args.networks or [network(n) for n in PREDICTOR_NETWORKS]
        args.optimizers = args.optimizers or ["sgd", "adam"]

        def save_predictor(entry):
            report["predictor"] = entry
            save()

        save_predictor(run_predictor(args, report.get("predictor"), save_predictor))
    else:
        args.networks = args.networks or [("proxylessnas-mobile", 224), ("mcunet-5fps", 128)]
        args.optimizers = args.optimizers or list(OPTIMIZERS)
        runs = report.setdefault("runs", {})
        for net in args.networks:
            for optimizer in args.optimizers:
                runs[f"{net[0]}@{net[1]} {optimizer}"] = run_network(net, optimizer, args)
                save()
    print(f"\nwrote {out}")
    if args.readme:
        rewrite_readme(args.readme, report)
        print(f"rewrote the memory table in {args.readme}")


if __name__ == "__main__":
    main()
