"""Per-operator CPU time of one signature of a `.tflite` as LiteRT runs it: which ops a step spends its time in.

    python -m benchmarks.profile_ops MODEL.tflite SIGNATURE [--runs 10] [--warmup 2] [--xnnpack | --builtin]
                                     [--threads 1] [--top 30] [--json OUT]

ai_edge_litert's Python Interpreter has no profiler, so this drives the C API of its libLiteRt.so through ctypes: a
model compiled with `enable_profiling`, `--warmup` runs (the first runs the CALL_ONCE initialiser), a few runs
without the profiler for its overhead, then `--runs` profiled ones. Events name graph ops or, inside the XNNPACK
delegate, XNNPACK's own operators (`[xnn] ...`, no tensor to show). Control-flow ops (CALL_ONCE, WHILE, ...) hold
the events of the ops they run, so each op counts its self time: no time is counted twice. Kernels: builtin by
default (one event per graph op); --xnnpack is LiteRT's default. Inputs as in tinytl_tf.memory.probe: random
floats, zeros for integers and scalars (`lr` 0: the in-model schedule). Imports no TensorFlow. A signature with an
output outside LiteRT's arena (the exported models' get_weights and set_weights return the scalar `step`, a
dynamic tensor) fails to run: LiteRT cannot bind a buffer to it.
"""

import argparse
import collections
import ctypes
import functools
import json
import os
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import ai_edge_litert
import numpy as np
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from tinytl_tf import tflite_model
from tinytl_tf.atomic import atomic_write
from tinytl_tf.errors import TinyTLError
from tinytl_tf.memory.probe import random_inputs

PINNED = "2.3.0"  # the ai-edge-litert whose event record layout `Event` is
EV_DEFAULT, EV_OPERATOR, EV_DELEGATE_OPERATOR, EV_DELEGATE_PROFILED_OPERATOR = 1, 2, 4, 8  # tflite::Profiler
EVENT_TYPES = {1 << i for i in range(9)}
CPU, LOCK_WRITE = 1, 1  # kLiteRtHwAcceleratorCpu, kLiteRtTensorBufferLockModeWrite
vp, size_t, cstr, i32, P = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_int, ctypes.POINTER
ARGTYPES = {  # of the LiteRt* C functions used; they return a LiteRtStatus (0: ok), LiteRtDestroy* nothing
    "CreateEnvironment": [i32, vp, P(vp)],
    "CreateModelFromFile": [vp, cstr, P(vp)],
    "GetModelSignature": [vp, size_t, P(vp)],
    "GetSignatureKey": [vp, P(cstr)],
    "GetNumSignatureInputs": [vp, P(size_t)],
    "GetNumSignatureOutputs": [vp, P(size_t)],
    "GetSignatureInputName": [vp, size_t, P(cstr)],
    "GetSignatureInputTensorByIndex": [vp, size_t, P(vp)],
    "GetSignatureOutputTensorByIndex": [vp, size_t, P(vp)],
    "GetRankedTensorType": [vp, vp],
    "CreateOptions": [P(vp)],
    "SetOptionsHardwareAccelerators": [vp, i32],
    "CreateOpaqueOptions": [cstr, vp, vp, P(vp)],
    "AddOpaqueOptions": [vp, vp],
    "CreateCompiledModel": [vp, vp, vp, P(vp)],
    "CompiledModelGetProfiler": [vp, P(vp)],
    "GetCompiledModelInputBufferRequirements": [vp, size_t, size_t, P(vp)],
    "GetCompiledModelOutputBufferRequirements": [vp, size_t, size_t, P(vp)],
    "CreateManagedTensorBufferFromRequirements": [vp, vp, vp, P(vp)],
    "GetTensorBufferSize": [vp, P(size_t)],
    "LockTensorBuffer": [vp, P(vp), i32],
    "UnlockTensorBuffer": [vp],
    "RunCompiledModel": [vp, size_t, size_t, P(vp), size_t, P(vp)],
    "StartProfiler": [vp],
    "StopProfiler": [vp],
    "ResetProfiler": [vp],
    "GetNumProfilerEvents": [vp, P(i32)],
    "GetProfilerEvents": [vp, i32, vp],
    "DestroyTensorBuffer": [vp],
    "DestroyCompiledModel": [vp],
    "DestroyOptions": [vp],
    "DestroyModel": [vp],
    "DestroyEnvironment": [vp],
}


class Event(ctypes.Structure):
    """LiteRtProfilerEvent (litert_profiler_event.h) as compiled into libLiteRt.so 2.3.0, MemoryUsage 3 x 8 bytes:
    104 bytes. Not a stable ABI: `_events` checks the record size the library writes."""

    _fields_ = [
        ("tag", cstr),
        ("event_type", i32),
        ("start_us", ctypes.c_uint64),
        ("elapsed_us", ctypes.c_uint64),
        ("begin_mem", ctypes.c_int64 * 3),
        ("end_mem", ctypes.c_int64 * 3),
        ("node", ctypes.c_uint64),
        ("subgraph", ctypes.c_uint64),
        ("source", i32),
    ]


class ProfileError(TinyTLError, RuntimeError):
    pass


@functools.cache
def _lib():
    lib = ctypes.CDLL(os.path.join(os.path.dirname(ai_edge_litert.__file__), "libLiteRt.so"))
    for name, args in ARGTYPES.items():
        function = getattr(lib, "LiteRt" + name)
        function.argtypes, function.restype = args, None if name.startswith("Destroy") else i32
    return lib


def _call(name, *args):
    status = getattr(_lib(), "LiteRt" + name)(*args)
    if status:
        raise ProfileError(f"LiteRt{name} failed with LiteRtStatus {status}")


def _get(name, *args, out=vp):
    """The output of a C function whose last parameter points to it."""
    value = out()
    _call(name, *args, ctypes.byref(value))
    return value


def _add_option(options, identifier, toml):
    """Opaque options carry TOML text that the runtime frees with the deleter given: libc's free of a strdup."""
    libc = ctypes.CDLL(None)
    libc.strdup.restype, libc.strdup.argtypes = vp, [cstr]
    payload = libc.strdup(toml.encode())
    _call(
        "AddOpaqueOptions",
        options,
        _get("CreateOpaqueOptions", identifier.encode(), payload, ctypes.cast(libc.free, vp)),
    )


def _events(profiler):
    """The profiler's records, read into an oversized sentinel-filled buffer to check their size: the library must
    write all n records and no more (the last one's trailing padding may stay unwritten)."""
    n = _get("GetNumProfilerEvents", profiler, out=i32).value
    size = ctypes.sizeof(Event)
    raw = ctypes.create_string_buffer(b"\xa5" * (2 * n * size + 4096), 2 * n * size + 4096)  # no trailing NUL
    _call("GetProfilerEvents", profiler, n, raw)
    written = len(raw.raw.rstrip(b"\xa5"))
    events = list((Event * n).from_buffer(raw))
    if n and (not n * size - 8 < written <= n * size or any(e.event_type not in EVENT_TYPES for e in events)):
        raise ProfileError(
            f"libLiteRt.so's profiler records are not the {size}-byte layout this tool reads ({n} "
            f"events wrote {written} bytes); it is written for ai-edge-litert {PINNED}, this is "
            f"{getattr(ai_edge_litert, '__version__', 'unknown')}"
        )
    return events


def _made(stack, name, *args, destroy):
    """A LiteRT object that `stack` destroys when it closes."""
    handle = _get(name, *args)
    stack.callback(getattr(_lib(), "LiteRtDestroy" + destroy), handle)
    return handle


def _compile(stack, path, signature, index, xnnpack, threads):
    env = _made(stack, "CreateEnvironment", 0, None, destroy="Environment")
    model = _made(stack, "CreateModelFromFile", env, path.encode(), destroy="Model")
    sig = _get("GetModelSignature", model, index)
    if _get("GetSignatureKey", sig, out=cstr).value.decode() != signature:
        raise ProfileError(f"LiteRT numbers the signatures of {path} in another order than its flatbuffer")
    options = _made(stack, "CreateOptions", destroy="Options")
    _call("SetOptionsHardwareAccelerators", options, CPU)
    kernel_mode = 0 if xnnpack else 2  # LiteRT's CPU kernel modes: 0 the XNNPACK delegate, 2 the builtin kernels
    _add_option(options, "xnnpack", f"num_threads = {threads}\nkernel_mode = {kernel_mode}\n")
    _add_option(options, "runtime_options_string", "enable_profiling = true\n")
    return env, sig, _made(stack, "CreateCompiledModel", env, model, options, destroy="CompiledModel")


def _buffers(stack, env, sig, compiled, index, side):
    """LiteRT-allocated buffers for the signature's inputs or outputs (`side` "Input" or "Output")."""
    ranked_type = ctypes.create_string_buffer(1024)  # an opaque LiteRtRankedTensorType, copied from the tensor
    buffers = (vp * _get(f"GetNumSignature{side}s", sig, out=size_t).value)()
    for i in range(len(buffers)):
        _call("GetRankedTensorType", _get(f"GetSignature{side}TensorByIndex", sig, i), ranked_type)
        requirements = _get(f"GetCompiledModel{side}BufferRequirements", compiled, index, i)
        buffers[i] = _made(
            stack, "CreateManagedTensorBufferFromRequirements", env, ranked_type, requirements, destroy="TensorBuffer"
        )
    return buffers


def _write(buffer, value):
    value = np.ascontiguousarray(value)
    if _get("GetTensorBufferSize", buffer, out=size_t).value < value.nbytes:
        raise ProfileError("LiteRT's buffer for an input is smaller than its tensor")
    host = vp()
    _call("LockTensorBuffer", buffer, ctypes.byref(host), LOCK_WRITE)
    ctypes.memmove(host, value.ctypes.data, value.nbytes)
    _call("UnlockTensorBuffer", buffer)


def profile(path, signature, runs=10, warmup=2, xnnpack=False, threads=1):
    """Run `signature` of the model at `path` and return what `main` prints (times in ms per run)."""
    path = os.path.abspath(path)
    if runs < 1:
        raise ProfileError("--runs must be at least 1")
    if not os.path.isfile(path):
        raise ProfileError(f"no model file {path}")
    with open(path, "rb") as f:
        data = f.read()
    signatures = tflite_model.links(data).signatures
    if signature not in signatures:
        raise ProfileError(f"{path} has no signature {signature!r}; it has {', '.join(signatures) or 'none'}")
    interpreter = Interpreter(
        model_path=path, experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    )
    inputs = random_inputs(interpreter.get_signature_runner(signature), np.random.default_rng(0))
    del interpreter  # it was only for the input details (it allocates nothing before a run)
    index = list(signatures).index(signature)
    with ExitStack() as stack:
        env, sig, compiled = _compile(stack, path, signature, index, xnnpack, threads)
        ins, outs = (_buffers(stack, env, sig, compiled, index, side) for side in ("Input", "Output"))
        for i, buffer in enumerate(ins):
            _write(buffer, inputs[_get("GetSignatureInputName", sig, i, out=cstr).value.decode()])
        profiler = _get("CompiledModelGetProfiler", compiled)
        if not profiler.value:
            raise ProfileError("the compiled model has no profiler (the option enable_profiling was not taken)")

        def timed():
            start = time.perf_counter()
            _call("RunCompiledModel", compiled, index, len(ins), ins, len(outs), outs)
            return 1e3 * (time.perf_counter() - start)

        for _ in range(warmup):
            timed()
        plain = [timed() for _ in range(max(3, runs // 2))]
        _call("ResetProfiler", profiler)
        _call("StartProfiler", profiler)
        profiled = [timed() for _ in range(runs)]
        _call("StopProfiler", profiler)
        summary = _summary(_events(profiler), tflite_model.read(data), runs)  # the tags belong to the profiler
    return {
        "model": path,
        "signature": signature,
        "subgraph": signatures[signature],
        "kernels": "xnnpack" if xnnpack else "builtin",
        "threads": threads,
        "runs": runs,
        "warmup": warmup,
        "run_ms": float(np.median(profiled)),
        "run_ms_mean": float(np.mean(profiled)),
        "run_ms_min": min(profiled),
        "run_ms_max": max(profiled),
        "plain_run_ms": float(np.median(plain)),
        **summary,
    }


def _self_times(ops):
    """Each op's time minus that of the ops nested in it (one thread: B is in A if it starts and ends inside A).
    XNNPACK's own events carry no start (0): leaves reported after their delegate kernel, kept out of the nesting."""
    times = [op[1] for op in ops]
    stack = []
    for i in sorted((i for i, op in enumerate(ops) if op[0] > 0), key=lambda i: (ops[i][0], -ops[i][1])):
        start, end = ops[i][0], ops[i][0] + ops[i][1]
        while stack and not (ops[stack[-1]][0] <= start and end <= ops[stack[-1]][0] + ops[stack[-1]][1]):
            stack.pop()
        if stack:
            times[stack[-1]] -= ops[i][1]
        stack.append(i)
    return times


def _summary(events, subgraphs, runs):
    ops, partition, last = [], -1, None  # (start, elapsed, type, label, shape, tensor)
    for e in events:
        if e.event_type == EV_DEFAULT and e.tag == b"Invoke":
            partition, last = -1, None
        tag = (e.tag or b"?").decode(errors="replace")
        if e.event_type == EV_OPERATOR:
            sg = subgraphs[e.subgraph]
            out = next((sg.tensors[t] for t in sg.ops[e.node].outputs if t >= 0), None)  # ASSIGN_VARIABLE has none
            ops.append(
                (
                    e.start_us,
                    e.elapsed_us,
                    tag,
                    f"sg{e.subgraph}/op{e.node}",
                    out.shape if out else (),
                    out.name if out else "",
                )
            )
        elif e.event_type in (EV_DELEGATE_OPERATOR, EV_DELEGATE_PROFILED_OPERATOR):
            if last is None or e.node <= last:
                partition += 1
            last = e.node
            ops.append((e.start_us, e.elapsed_us, "[xnn] " + tag, f"sg{e.subgraph}/xnn{partition}:{e.node}", None, ""))
    times = _self_times(ops)
    total = sum(times)  # microseconds
    by_type, by_op = collections.defaultdict(lambda: [0, 0]), collections.defaultdict(lambda: [0, 0])
    for op, t in zip(ops, times):
        by_type[op[2]][0] += 1
        by_type[op[2]][1] += t
        by_op[op[2:]][0] += 1
        by_op[op[2:]][1] += t
    rows, cum = [], 0.0
    for kind, (count, t) in sorted(by_type.items(), key=lambda kv: -kv[1][1]):
        cum += t / max(total, 1)
        rows.append({"type": kind, "count": count / runs, "ms": t / 1e3 / runs, "share": t / max(total, 1), "cum": cum})
    top = [
        {
            "index": label,
            "type": kind,
            "ms": t / 1e3 / runs,
            "count": count / runs,
            "shape": None if shape is None else list(shape),
            "tensor": tensor,
        }
        for (kind, label, shape, tensor), (count, t) in sorted(by_op.items(), key=lambda kv: -kv[1][1])
    ]
    return {"op_ms": total / 1e3 / runs, "by_type": rows, "ops": top}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("signature")
    p.add_argument("--runs", type=int, default=10, help="profiled runs")
    p.add_argument("--warmup", type=int, default=2, help="runs before any timing")
    kernels = p.add_mutually_exclusive_group()
    kernels.add_argument("--xnnpack", action="store_true", help="the XNNPACK delegate (LiteRT's default)")
    kernels.add_argument("--builtin", action="store_true", help="plain TFLite kernels (the default here)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--top", type=int, default=30, help="how many individual ops to list")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    try:
        r = profile(args.model, args.signature, args.runs, args.warmup, args.xnnpack, args.threads)
    except (ProfileError, tflite_model.NotATFLiteModel) as e:
        sys.exit(f"profile_ops: {e}")
    r["ops"] = r["ops"][: args.top]
    print(
        f"{r['model']}  signature {r['signature']!r} (subgraph {r['subgraph']})  kernels: {r['kernels']}  "
        f"threads: {r['threads']}"
    )
    print(
        f"Time per run: {r['run_ms']:.2f} ms median with the profiler (min {r['run_ms_min']:.2f}, max "
        f"{r['run_ms_max']:.2f}; {r['runs']} runs after {r['warmup']} warm-up), {r['plain_run_ms']:.2f} ms without"
    )
    print(
        f"Op self times: {r['op_ms']:.2f} ms per run, {100 * r['op_ms'] / r['run_ms_mean']:.1f}% of the mean "
        f"profiled run ({r['run_ms_mean']:.2f} ms); the rest is runtime glue and profiler overhead"
    )
    print(f"\n{'op type':<46}{'count/run':>10}{'ms/run':>10}{'share':>8}{'cum':>8}")
    for row in r["by_type"]:
        print(f"{row['type'][:45]:<46}{row['count']:>10.1f}{row['ms']:>10.3f}{row['share']:>8.1%}{row['cum']:>8.1%}")
    print(f"{'total':<46}{sum(row['count'] for row in r['by_type']):>10.1f}{r['op_ms']:>10.3f}")
    print(f"\nTop {len(r['ops'])} ops by self time\n{'op':<16}{'type':<32}{'ms/run':>9}  {'out shape':<16}tensor")
    for op in r["ops"]:
        shape = "x".join(map(str, op["shape"])) if op["shape"] else "-"
        print(f"{op['index']:<16}{op['type'][:31]:<32}{op['ms']:>9.3f}  {shape:<16}{op['tensor'] or '-'}")
    if args.json:  # written whole or not at all
        atomic_write(args.json, lambda tmp: Path(tmp).write_text(json.dumps(r, indent=2)))


if __name__ == "__main__":
    main()
