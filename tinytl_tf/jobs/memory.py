"""The memory job: export each transfer method's network and measure it with LiteRT.

`tinytl_tf.memory` owns the figures (the analytic model and the predictor from a config, the static and dynamic
measurements of a given `.tflite`); this module owns the harness that builds and exports the models to measure, so
the memory room never imports Keras, TensorFlow or the exporter.

Exports made only to be measured skip the export's LiteRT-against-Keras check (it proves the numbers, which memory
does not depend on). `measure_methods` exports each method in a fresh process (`python -m tinytl_tf.jobs.memory`):
TensorFlow keeps much of what one conversion allocates until the process ends, so one process exporting six
methods grows; a process per export bounds the peak by the largest single export, and the job's own process never
imports TensorFlow. Two exports run at once, and a lock held from tracing to the converter's output (most of an
export's time and its memory peak) lets them overlap only in starting up, building the model and writing files,
so the pair stays near one export's peak (README, "Measured memory": time and memory against one export at a time
and against a shorter lock). Each method is measured as soon as it is exported, while the next ones export.
"""

import concurrent.futures
import contextlib
import functools
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tinytl_tf.contract import DEFAULT_OPTIMIZER, METHODS
from tinytl_tf.memory.analytic import check_fits
from tinytl_tf.memory.measure import DEFAULT_XNNPACK, check_can_measure, check_run_args, measure_tflite
from tinytl_tf.methods import method_config

EXPORT_WORKERS = 2


def export_for_measuring(model, path, optimizer=DEFAULT_OPTIMIZER, frozen_bits=8, converting=contextlib.nullcontext):
    """Write the on-device training model of `model` to `path` as `export` would, without the parity check;
    `converting` as in `tinytl_tf.export.convert`."""
    from tinytl_tf.export import export_model

    export_model(
        model, path, optimizer=optimizer, frozen_bits=frozen_bits, verify=False, overwrite=True, converting=converting
    )


def measure_model(
    model,
    steps=3,
    timeout=300,
    workdir=None,
    xnnpack=DEFAULT_XNNPACK,
    progress=None,
    optimizer=DEFAULT_OPTIMIZER,
    frozen_bits=8,
):
    """`tinytl_tf.memory.measure_tflite` of a Keras TinyTL model, exported first (`export_for_measuring`) into a
    temporary folder under `workdir`. `progress(stage)` is called with "exporting" and "measuring"."""
    check_run_args(steps, timeout)
    check_can_measure()  # before minutes of exporting
    with tempfile.TemporaryDirectory(dir=workdir, prefix="tinytl-measure-") as tmp:
        path = Path(tmp) / "model.tflite"
        if progress:
            progress("exporting")
        export_for_measuring(model, path, optimizer, frozen_bits)
        if progress:
            progress("measuring")
        return measure_tflite(path, steps, timeout, xnnpack)


def method_configs(backbone, resolution=None, num_classes=102, methods=None, lite_for_all=True):
    """{method: the NetConfig its measured model has} (see `method_models`), checked to fit before anything builds."""
    configs = {
        m: method_config(backbone, m, num_classes, lite_residual=True if lite_for_all else None, resolution=resolution)
        for m in methods or METHODS
    }
    for cfg in configs.values():
        check_fits(cfg)
    return configs


def method_models(backbone, resolution=None, num_classes=102, methods=None, lite_for_all=True, weights_dir=None):
    """(method, Keras model) per transfer method on one loaded backbone (pretrained weights where they exist).

    `lite_for_all` gives every method the lite residual branches, as the paper's memory table (and
    `tinytl_tf.memory.method_table`) does, so each model is the network its analytic row describes.
    """
    methods = list(method_configs(backbone, resolution, num_classes, methods, lite_for_all))
    from tinytl_tf.backbones import load_backbone
    from tinytl_tf.transfer import prepare_transfer

    base = load_backbone(backbone, resolution, weights_dir)
    for m in methods:
        yield m, prepare_transfer(base, m, num_classes, lite_residual=True if lite_for_all else None)


def measure_methods(
    backbone,
    resolution=None,
    num_classes=102,
    methods=None,
    lite_for_all=True,
    weights_dir=None,
    steps=3,
    timeout=300,
    xnnpack=DEFAULT_XNNPACK,
    progress=None,
    optimizer=DEFAULT_OPTIMIZER,
    frozen_bits=8,
    workdir=None,
):
    """`measure_tflite` of every method's exported model (see `method_models`): a list of dicts, "method" first.

    One export per method, each in its own process, `EXPORT_WORKERS` at a time; a method's two measuring
    processes (train, infer) run as soon as it is exported, while the next ones export, and the file goes once
    they are done.
    `progress(method, index, total, stage)` is called as each one is exported and measured.
    """
    methods = list(methods or METHODS)
    check_run_args(steps, timeout)
    check_can_measure()  # before minutes of exporting
    report = progress or (lambda *a: None)
    configs = method_configs(backbone, resolution, num_classes, methods, lite_for_all)
    with (
        tempfile.TemporaryDirectory(dir=workdir, prefix="tinytl-measure-") as tmp,
        concurrent.futures.ThreadPoolExecutor(EXPORT_WORKERS) as exporters,
        concurrent.futures.ThreadPoolExecutor(1) as measurers,
    ):

        def measure(m, i, path):
            report(m, i, len(methods), "measuring")
            try:
                return {"method": m, **measure_tflite(path, steps, timeout, xnnpack)}
            finally:
                path.unlink(missing_ok=True)

        def export_then_measure(m, i):
            report(m, i, len(methods), "exporting")
            path = Path(tmp) / f"{m}.tflite"
            request = dict(
                backbone=backbone,
                resolution=resolution,
                num_classes=num_classes,
                method=m,
                lite_for_all=lite_for_all,
                weights_dir=weights_dir,
                optimizer=optimizer,
                frozen_bits=frozen_bits,
                out=str(path),
                converting_lock=str(Path(tmp) / "converting.lock"),
            )
            _export_in_subprocess(request)
            return measurers.submit(measure, m, i, path)

        exports = [exporters.submit(export_then_measure, m, i) for i, m in enumerate(configs)]
        try:
            return [f.result().result() for f in exports]
        except BaseException:  # the first failure ends the job: no new export starts
            exporters.shutdown(cancel_futures=True)
            raise


def _export_in_subprocess(request):
    """Run `_export_one(request)` in a fresh Python process; its user errors come back as one-line ValueErrors."""
    package_root = str(Path(__file__).resolve().parents[2])  # found whatever the working directory
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(
        [sys.executable, "-m", "tinytl_tf.jobs.memory", json.dumps(request)], capture_output=True, text=True, env=env
    )
    if proc.returncode == 2 and proc.stderr.startswith("error: "):
        raise ValueError(proc.stderr.strip().splitlines()[-1].removeprefix("error: "))
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        raise RuntimeError(f"exporting {request['method']} to measure it failed (exit {proc.returncode}): {tail}")


def _export_one(request):
    """Build `request`'s method network on its backbone and export it for measuring (the child process's work)."""
    from tinytl_tf.backbones import load_backbone
    from tinytl_tf.transfer import prepare_transfer

    r = request
    base = load_backbone(r["backbone"], r["resolution"], r["weights_dir"])
    lite = True if r["lite_for_all"] else None
    model = prepare_transfer(base, r["method"], r["num_classes"], lite_residual=lite)
    converting = functools.partial(_held, r["converting_lock"])
    export_for_measuring(model, r["out"], r["optimizer"], r["frozen_bits"], converting)


@contextlib.contextmanager
def _held(lock_path):
    """An exclusive lock on the file `lock_path` while the block runs (shared by the export processes)."""
    import fcntl

    with open(lock_path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


if __name__ == "__main__":
    from tinytl_tf.cliargs import quiet_tensorflow

    quiet_tensorflow()
    try:
        _export_one(json.loads(sys.argv[1]))
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
