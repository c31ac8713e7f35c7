"""Training memory per transfer method: analytic (TinyTL, Cai et al. 2020, Sec. 3.1) vs measured LiteRT, at batch 1.

    python -m benchmarks.memory [--backbones mobilenet-v1 proxylessnas-mobile] [--resolution 224] [--classes 102]
                                [--methods ...] [--optimizer adam|sgd] [--steps 3] [--timeout 900]
                                [--out docs/memory.json] [--verbose]

Per backbone and method (every method gets the lite residual branches, as in the paper's table, so each model is
the network its analytic row describes): export the on-device training model, then report
- analytic: parameters + activations at batch 1 (MB = 1e6 B);
- static: the `train` graph's peak of live tensors, its constants and its variables (trainables and, with Adam,
  two slots each: the analytic model counts no optimizer state, so `--optimizer sgd` is its like-for-like engine);
- dynamic: peak RSS of a fresh LiteRT process running 3 `train` (or `infer`) steps minus its RSS after loading,
  with the builtin kernels (the CLI's default) and with the XNNPACK delegate;
- the `.tflite` size and its budget: 1 B per frozen parameter + 4 B per trainable parameter and optimizer slot.
Then three targets: measured TinyTL-L+B train memory >= 6.5x lower than FT-Full's, within 1.5x of its
analytic figure, `.tflite` <= 1.3x its budget. `--verbose` prints the largest tensors alive at each static peak.
A benchmark, not a test: it takes tens of minutes (each export is one to three minutes on 2 cores). Each backbone's
entry (with the commit it ran at) replaces the one in `--out`; the other backbones' entries stay.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.transfer import git_commit, portable_command

TARGET_RATIO, TARGET_VS_ANALYTIC, TARGET_FILE = 6.5, 1.5, 1.3
MODES = {"builtin": False, "xnnpack": True}


def measure_one(model, frozen_params, steps, timeout, optimizer):
    """Everything the table reports about one exported model (MB), plus its static peak for --verbose."""
    from tinytl_tf.contract import SIGNATURE_INFER, SIGNATURE_TRAIN, model_json_path
    from tinytl_tf.export import export_model
    from tinytl_tf.memory.analytic import MB
    from tinytl_tf.memory.measure import dynamic_memory, static_memory

    with tempfile.TemporaryDirectory(prefix="tinytl-bench-") as tmp:
        path = Path(tmp) / "model.tflite"
        t0 = time.time()
        export_model(model, path, optimizer=optimizer)
        row = {"export_s": time.time() - t0}
        static = static_memory(path)
        weights = json.loads(Path(model_json_path(path)).read_text())["weights"]
        stored = sum(int(np.prod(w["shape"])) for w in weights if w["kind"] in ("trainable", "slot"))
        row.update(
            static_peak_mb=static.peak_activation_bytes / MB,
            variables_mb=static.variable_bytes / MB,
            constants_mb=static.constant_bytes / MB,
            tflite_mb=static.file_bytes / MB,
            tflite_budget_mb=(frozen_params + 4 * stored) / MB,
        )
        for mode, xnnpack in MODES.items():
            for signature in (SIGNATURE_TRAIN, SIGNATURE_INFER):
                row[f"{signature}_{mode}_mb"] = dynamic_memory(path, signature, steps, timeout, xnnpack=xnnpack) / MB
    return row, static


def targets(rows):
    """The three targets from TinyTL-L+B's and FT-Full's rows (None where a method was not measured)."""
    by = {r["method"]: r for r in rows}
    lb, full = by.get("tinytl-lb"), by.get("ft-full")
    out = {}
    if lb and full:
        for mode in MODES:
            ratio = full[f"train_{mode}_mb"] / lb[f"train_{mode}_mb"]
            out[f"ft_full_over_lb_{mode}"] = {
                "value": ratio,
                "target": f">= {TARGET_RATIO}",
                "met": ratio >= TARGET_RATIO,
            }
    if lb:
        for mode in MODES:
            ratio = lb[f"train_{mode}_mb"] / lb["analytic_mb"]
            out[f"lb_over_analytic_{mode}"] = {
                "value": ratio,
                "target": f"<= {TARGET_VS_ANALYTIC}",
                "met": ratio <= TARGET_VS_ANALYTIC,
            }
        ratio = lb["tflite_mb"] / lb["tflite_budget_mb"]
        out["lb_tflite_over_budget"] = {"value": ratio, "target": f"<= {TARGET_FILE}", "met": ratio <= TARGET_FILE}
    return out


def print_static(method, static, top):
    print(
        f"  {method}: static peak {static.peak_activation_bytes / 1e6:.2f} MB at op {static.peak_op}; by producer: "
        + ", ".join(f"{k} {v / 1e6:.2f}" for k, v in list(static.peak_by_op.items())[:8])
    )
    for p in static.peak_tensors[:top]:
        print(f"      {p.bytes / 1e6:8.3f} MB  {p.dtype:<8}{str(list(p.shape)):<22}{p.producer:<24}{p.name[:70]}")


def run_backbone(name, args):
    from tinytl_tf.memory import method_table
    from tinytl_tf.memory.measure import method_models

    analytic = {r["method"]: r for r in method_table(name, args.resolution, 1, args.classes, methods=args.methods)}
    rows, statics = [], {}
    print(
        f"\n{name} @{args.resolution}px, batch 1, {args.classes} classes, {args.optimizer}, lite residuals on every "
        f"method",
        flush=True,
    )
    head = (
        f"{'method':<13}{'analytic':>9}{'static':>8}{'vars':>8}{'consts':>8}{'train':>8}{'infer':>8}"
        f"{'train+X':>9}{'infer+X':>9}{'tflite':>8}{'budget':>8}{'export s':>9}"
    )
    print(
        f"{head}\n"
        f"{'MB; train/infer = RSS delta with builtin kernels, +X = with XNNPACK':>{len(head)}}\n"
        f"{'-' * len(head)}"
    )
    for method, model in method_models(name, args.resolution, args.classes, args.methods, weights_dir=args.weights_dir):
        a = analytic[method]
        row, static = measure_one(model, a["frozen_params"], args.steps, args.timeout, args.optimizer)
        row = {
            "method": method,
            "analytic_mb": a["total_mb"],
            "analytic_params_mb": a["params_mb"],
            "analytic_activations_mb": a["activations_mb"],
            "trainable_params": a["trainable_params"],
            "frozen_params": a["frozen_params"],
            **row,
        }
        rows.append(row)
        statics[method] = static
        print(
            f"{method:<13}{row['analytic_mb']:>9.2f}{row['static_peak_mb']:>8.2f}{row['variables_mb']:>8.2f}"
            f"{row['constants_mb']:>8.2f}{row['train_builtin_mb']:>8.2f}{row['infer_builtin_mb']:>8.2f}"
            f"{row['train_xnnpack_mb']:>9.2f}{row['infer_xnnpack_mb']:>9.2f}{row['tflite_mb']:>8.2f}"
            f"{row['tflite_budget_mb']:>8.2f}{row['export_s']:>9.0f}",
            flush=True,
        )
    goals = targets(rows)
    for key, t in goals.items():
        print(f"  target {key}: {t['value']:.2f} (want {t['target']}) {'met' if t['met'] else 'MISSED'}")
    if args.verbose:
        print("largest tensors alive at the static peak of `train`:")
        for method, static in statics.items():
            print_static(method, static, args.top)
    return {
        "command": portable_command("python -m benchmarks.memory", args.argv),
        "commit": git_commit(),
        "optimizer": args.optimizer,
        "resolution": args.resolution,
        "classes": args.classes,
        "rows": rows,
        "targets": goals,
        "peak_by_op_mb": {m: {k: v / 1e6 for k, v in s.peak_by_op.items()} for m, s in statics.items()},
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbones", nargs="+", default=["mobilenet-v1", "proxylessnas-mobile"])
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--classes", type=int, default=102)
    p.add_argument("--methods", nargs="+", default=None)
    p.add_argument("--optimizer", choices=["adam", "sgd"], default="adam", help="the exported optimizer (default adam)")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--weights-dir", help="folder with mobilenet_v1_1.0_224_imagenet.npz (default: $TINYTL_WEIGHTS_DIR)")
    p.add_argument("--out", default="docs/memory.json")
    p.add_argument("--verbose", action="store_true", help="print the largest tensors alive at each static peak")
    p.add_argument("--top", type=int, default=8, help="tensors per method with --verbose (default 8)")
    args = p.parse_args(argv)
    args.argv = argv if argv is not None else sys.argv[1:]

    from tinytl_tf.atomic import atomic_write

    out = Path(args.out)
    report = json.loads(out.read_text()) if out.exists() else {}
    if report.get("batch_size") != 1 or not isinstance(report.get("backbones"), dict):
        report = {"batch_size": 1, "backbones": {}}
    out.parent.mkdir(parents=True, exist_ok=True)
    for name in args.backbones:
        report["backbones"][name] = {**run_backbone(name, args), "steps": args.steps}
        atomic_write(out, lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2)))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
