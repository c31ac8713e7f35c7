"""Measured training memory of an exported `.tflite`: a static walk of the graph and a real LiteRT run.

Static (`static_memory`, TF-free, no interpreter): the signature's subgraph is walked in execution order (TFLite
runs ops in the order the flatbuffer lists them). A non-constant tensor lives from the op that produces it (the
start, for subgraph inputs) to its last consumer (the end, for outputs); the peak of the live bytes is reported
with the tensors alive at that moment. Constants (buffer bytes of the subgraph and of the CALL_ONCE subgraph that
initialises the variables) and resource variables are reported separately. This is the lifetime rule of LiteRT's
arena planner, which also holds READ_VARIABLE outputs: in LiteRT they are arena tensors (a full copy of the
variable, freed after the last consumer); only scalar reads are dynamic. Where LiteRT differs:
- the arena packs tensors at 64-byte-aligned offsets, so fragmentation makes it at least the peak;
- kernels add scratch the graph does not show (im2col for CONV_2D, TRANSPOSE_CONV's col2im), and XNNPACK keeps
  its own packed weights and workspace;
- resource variables live outside the arena (allocated when CALL_ONCE first assigns them, kept until the
  interpreter goes). The exported models have fully static shapes; `unknown_dims` counts tensors that do not.

Dynamic (`dynamic_memory`): `probe.py` runs the signature in a fresh process that imports only ai_edge_litert and
numpy, and reports its peak RSS minus its RSS after loading the model, the model file's own resident pages kept in
(see probe.py for the exact points). The subprocess is bounded by `timeout` and killed, with its process group,
when it overruns.
"""

import contextlib
import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tinytl_tf import tflite_model
from tinytl_tf.contract import SIGNATURE_INFER, SIGNATURE_TRAIN, model_json_path
from tinytl_tf.errors import TinyTLError
from tinytl_tf.memory.analytic import MB

PROBE = Path(__file__).with_name("probe.py")
PACKAGE_PARENT = Path(__file__).resolve().parents[2]  # the folder holding tinytl_tf/
PROC_STATUS = "/proc/self/status"
# Default off: XNNPACK (LiteRT's default delegate) packs each constant float weight into a buffer of its own, a
# second copy beside the file's (a 1x1 conv with a 16.8 MB constant kernel: anonymous memory +17.1 MB with it,
# +4.5 MB without), plus its own workspace. Apps can turn it off; without it the measurement shows the graph's
# memory. benchmarks/memory.py reports both.
DEFAULT_XNNPACK = False
_ITEM_BYTES = {
    "float32": 4,
    "int32": 4,
    "uint32": 4,
    "int64": 8,
    "uint64": 8,
    "float64": 8,
    "float16": 2,
    "bfloat16": 2,
    "int16": 2,
    "uint16": 2,
    "int8": 1,
    "uint8": 1,
    "bool": 1,
    "complex64": 8,
}
# resource / variant / string tensors are handles or dynamically sized: they hold no planned bytes


class MeasurementError(TinyTLError, RuntimeError):
    """The measurement subprocess could not start, failed or timed out; the message says what to do."""


@dataclass(frozen=True)
class PeakTensor:
    name: str
    shape: tuple
    dtype: str
    bytes: int
    producer: str  # "<op index> <OP_NAME>", or "input" for a subgraph input


@dataclass(frozen=True)
class StaticMemory:
    """Memory of one signature from the graph alone (bytes)."""

    signature: str
    peak_activation_bytes: int  # peak of the live non-constant tensors (variables' read copies included)
    constant_bytes: int  # constant buffers the signature reads, the variables' initial values included
    variable_bytes: int  # resource variables the signature's program holds (trainables, optimizer slots, step)
    file_bytes: int
    unknown_dims: int = 0  # tensors whose shape is not fully known before running
    peak_op: str = ""  # the op running at the peak
    peak_tensors: tuple = ()  # the largest tensors alive at the peak, largest first
    peak_by_op: dict = field(default_factory=dict)  # bytes alive at the peak by the kind of op that made them

    def to_dict(self):
        return asdict(self)


def _nbytes(tensor):
    return math.prod(tensor.shape) * _ITEM_BYTES.get(tensor.dtype, 0)


def _reachable_subgraphs(links, index):
    """`index` and every subgraph its CALL_ONCE ops run, transitively."""
    seen, todo = [], [index]
    while todo:
        s = todo.pop()
        if s not in seen:
            seen.append(s)
            todo.extend(links.init_subgraphs[s])
    return seen


def _variable_bytes(subgraphs, links):
    """{variable shared name: bytes}, from the tensors read from or assigned to each VAR_HANDLE."""
    sizes = {}
    for sg, handles in zip(subgraphs, links.variables):
        for op in sg.ops:
            if op.name in ("READ_VARIABLE", "ASSIGN_VARIABLE") and op.inputs[0] in handles:
                value = op.outputs[0] if op.name == "READ_VARIABLE" else op.inputs[1]
                name = handles[op.inputs[0]]
                sizes[name] = max(sizes.get(name, 0), _nbytes(sg.tensors[value]))
    return sizes


def _lifetimes(sg):
    """{tensor index: (first op, last op)} of every non-constant tensor that holds bytes."""
    end = len(sg.ops) - 1
    span = {t: [0, 0] for t in sg.inputs}
    for i, op in enumerate(sg.ops):
        for t in op.outputs:
            span.setdefault(t, [i, i])
        for t in op.inputs:
            if t in span:
                span[t][1] = i
    for t in sg.outputs:
        span[t][1] = end
    return {t: tuple(s) for t, s in span.items() if sg.tensors[t].buffer_bytes == 0 and _nbytes(sg.tensors[t])}


def _peak(sg, lifetimes):
    """(peak bytes, op index at the peak) of the live bytes over the ops."""
    delta = [0] * (len(sg.ops) + 1)
    for t, (first, last) in lifetimes.items():
        delta[first] += _nbytes(sg.tensors[t])
        delta[last + 1] -= _nbytes(sg.tensors[t])
    live = peak = at = 0
    for i in range(len(sg.ops)):
        live += delta[i]
        if live > peak:
            peak, at = live, i
    return peak, at


def static_memory(tflite, signature=SIGNATURE_TRAIN, top=12):
    """`StaticMemory` of `signature` in `tflite` (a path or the file's bytes); TF-free, runs nothing."""
    data = tflite if isinstance(tflite, (bytes, bytearray)) else Path(tflite).read_bytes()
    subgraphs, links = tflite_model.read(data), tflite_model.links(data)
    if signature not in links.signatures:
        raise ValueError(f"the model has no signature {signature!r}; it has: {', '.join(sorted(links.signatures))}")
    index = links.signatures[signature]
    sg = subgraphs[index]
    lifetimes = _lifetimes(sg)
    peak, at = _peak(sg, lifetimes)
    producers = {t: f"{i} {op.name}" for i, op in enumerate(sg.ops) for t in op.outputs}
    alive = sorted(
        (
            PeakTensor(
                sg.tensors[t].name,
                sg.tensors[t].shape,
                sg.tensors[t].dtype,
                _nbytes(sg.tensors[t]),
                producers.get(t, "input"),
            )
            for t, (first, last) in lifetimes.items()
            if first <= at <= last
        ),
        key=lambda p: -p.bytes,
    )
    by_op = {}
    for p in alive:
        kind = p.producer.split()[-1]
        by_op[kind] = by_op.get(kind, 0) + p.bytes
    reached = _reachable_subgraphs(links, index)
    constants = {
        links.buffers[s][t]: tensor.buffer_bytes
        for s in reached
        for t, tensor in enumerate(subgraphs[s].tensors)
        if tensor.buffer_bytes
    }
    sizes = _variable_bytes(subgraphs, links)
    names = {name for s in reached for name in links.variables[s].values()}
    return StaticMemory(
        signature=signature,
        peak_activation_bytes=peak,
        constant_bytes=sum(constants.values()),
        variable_bytes=sum(sizes.get(n, 0) for n in names),
        file_bytes=len(data),
        unknown_dims=len(links.unknown_dims[index]),
        peak_op=f"{at} {sg.ops[at].name}" if sg.ops else "",
        peak_tensors=tuple(alive[:top]),
        peak_by_op=dict(sorted(by_op.items(), key=lambda kv: -kv[1])),
    )


def check_can_measure():
    """A MeasurementError saying what to install or where to run, when this machine cannot run the probe."""
    if not os.path.exists(PROC_STATUS):
        raise MeasurementError(
            "measuring memory needs Linux /proc/self/status (VmRSS, VmHWM), which this system "
            "lacks; run the measurement on Linux or use the analytic table without --measure"
        )
    if importlib.util.find_spec("ai_edge_litert") is None:
        raise MeasurementError(
            f"ai_edge_litert is not installed for {sys.executable}; "
            f"install it (pip install ai-edge-litert==2.3.0) to measure LiteRT memory"
        )


def check_run_args(steps, timeout, num_threads=1):
    """A ValueError for a bad step count, timeout or thread count, before any process starts."""
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    if not isinstance(num_threads, int) or isinstance(num_threads, bool) or num_threads < 1:
        raise ValueError(f"num_threads must be a positive integer, got {num_threads!r}")


def probe_memory(tflite_path, signature=SIGNATURE_TRAIN, steps=3, timeout=300, num_threads=1, xnnpack=DEFAULT_XNNPACK):
    """The memory points of a fresh process running `steps` calls of `signature` (dict of bytes, see probe.py)."""
    check_run_args(steps, timeout, num_threads)
    path = Path(tflite_path)
    with open(path, "rb") as f:  # a missing file is the caller's OSError, before any subprocess
        head = f.read(8)
    if head[4:8] != b"TFL3":
        raise tflite_model.NotATFLiteModel(f"{path} is not a TFLite flatbuffer (the file identifier 'TFL3' is missing)")
    check_can_measure()
    cmd = [
        sys.executable,
        str(PROBE),
        str(path.resolve()),
        signature,
        str(steps),
        str(num_threads),
        "xnnpack" if xnnpack else "builtin",
    ]
    # the probe imports this package's TF-free initial_values from the same tree as this module
    search_path = filter(None, (str(PACKAGE_PARENT), os.environ.get("PYTHONPATH")))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(search_path)}
    try:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, env=env
        )
    except OSError as e:
        raise MeasurementError(f"cannot start the measurement process {sys.executable}: {e}") from None
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise MeasurementError(
            f"measuring {signature!r} of {path.name} did not finish within {timeout} s and was "
            f"stopped; allow more time (--timeout) or measure a smaller model"
        ) from None
    finally:
        if proc.poll() is None:  # timed out or interrupted: no process may outlive the call
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    if proc.returncode != 0:
        tail = "\n".join(err.strip().splitlines()[-5:])
        raise MeasurementError(
            f"the LiteRT measurement process failed (exit {proc.returncode}) on {signature!r} of {path}: {tail}"
        )
    return json.loads(out.strip().splitlines()[-1])


def dynamic_memory(
    tflite_path, signature=SIGNATURE_TRAIN, steps=3, timeout=300, num_threads=1, xnnpack=DEFAULT_XNNPACK
):
    """Bytes: peak RSS of a fresh process running `steps` calls of `signature`, minus its RSS after loading the
    model, not counting the model file's pages among the loaded (LiteRT faults all of some files in at load)."""
    return _peak_growth(probe_memory(tflite_path, signature, steps, timeout, num_threads, xnnpack))


def _peak_growth(points):
    return points["hwm"] - points["rss_loaded"] + points["model_loaded"]


def _split(points):
    """(anonymous, file-backed) bytes of the same growth at the end of the run: heap (arena, variables, scratch)
    against mapped files (the model's pages and the runtime code paged in), which the OS can drop and re-read."""
    anon = points["anon_end"] - points["anon_loaded"]
    return anon, points["file_end"] - points["file_loaded"] + points["model_loaded"]


def measure_tflite(path, steps=3, timeout=300, xnnpack=DEFAULT_XNNPACK):
    """Static and dynamic memory of an exported training model (MB = 1e6 bytes); train and infer each run in
    their own fresh process (infer is the floor: what running the network costs without training it). The
    dynamic totals are peaks; their `_anon_mb` / `_file_mb` parts are the same growth split at the run's end."""
    static = static_memory(path, SIGNATURE_TRAIN)
    row = {}
    for signature in (SIGNATURE_TRAIN, SIGNATURE_INFER):
        points = probe_memory(path, signature, steps, timeout, xnnpack=xnnpack)
        anon, file_backed = _split(points)
        row.update(
            {
                f"measured_{signature}_mb": _peak_growth(points) / MB,
                f"measured_{signature}_anon_mb": anon / MB,
                f"measured_{signature}_file_mb": file_backed / MB,
            }
        )
    return {
        **row,
        "static_peak_mb": static.peak_activation_bytes / MB,
        "constants_mb": static.constant_bytes / MB,
        "variables_mb": static.variable_bytes / MB,
        "tflite_mb": static.file_bytes / MB,
    }


def measure_file(path, steps=3, timeout=300, xnnpack=DEFAULT_XNNPACK):
    """`measure_tflite` of a user's exported file as a method row: "method" from its metadata X.json when it is
    beside X.tflite (else the file's name), then the figures."""
    path = Path(path)
    meta = Path(model_json_path(path))
    try:
        method = json.loads(meta.read_text()).get("method") if meta.is_file() else None
    except (ValueError, AttributeError):
        method = None
    return {"method": method or path.name, "model": str(path), **measure_tflite(path, steps, timeout, xnnpack)}


def format_measured(rows, analytic_batch=1):
    """A plain-text table of the LiteRT figures in `rows` (MB); notes when the analytic rows use another batch."""
    title = "LiteRT, measured at batch 1 (the exported model trains one image per step)"
    if analytic_batch != 1:
        title += f"; the analytic figures above are for batch {analytic_batch}"
    head = (
        f"{'method':<14}{'train MB':>10}{'(anon':>7}{'file)':>7}{'infer MB':>10}{'static peak':>13}"
        f"{'variables':>11}{'constants':>11}{'tflite MB':>11}"
    )
    lines = [title, head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['method']:<14}{r['measured_train_mb']:>10.2f}{r['measured_train_anon_mb']:>7.2f}"
            f"{r['measured_train_file_mb']:>7.2f}{r['measured_infer_mb']:>10.2f}{r['static_peak_mb']:>13.2f}"
            f"{r['variables_mb']:>11.2f}{r['constants_mb']:>11.2f}{r['tflite_mb']:>11.2f}"
        )
    lines.append(
        "train MB is the peak; anon (heap: arena, variables, scratch) and file (the model's mapped pages, "
        "runtime code) split it at the run's end"
    )
    return "\n".join(lines)
