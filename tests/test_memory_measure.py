"""Measured LiteRT memory: the static walk on a hand-built graph, a real exported model in fresh processes,
a bounded subprocess, and `python -m tinytl_tf memory --measure`."""

import concurrent.futures
import fcntl
import importlib.util
import json
import os
import signal
import sys
import time

import flatbuffers
import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as schema

from tinytl_tf.cli import main
from tinytl_tf.contract import model_json_path
from tinytl_tf.jobs import memory as memory_job
from tinytl_tf.memory import measure
from tinytl_tf.memory.analytic import method_table
from tinytl_tf.memory.measure import MeasurementError, dynamic_memory, measure_tflite, probe_memory, static_memory

OP = schema.BuiltinOperator
F32, I32, BOOL, RESOURCE = (
    schema.TensorType.FLOAT32,
    schema.TensorType.INT32,
    schema.TensorType.BOOL,
    schema.TensorType.RESOURCE,
)


def _flatbuffer(subgraphs, buffers, signatures):
    """Pack a TFLite model: subgraphs = [(name, tensors, ops, inputs, outputs)], tensors = [(name, shape, type,
    buffer)], ops = [(opcode, inputs, outputs, options or None)], buffers = [bytes], signatures = {key: (subgraph,
    inputs, outputs)}. Static analysis only: the model is never run."""
    codes = sorted({op[0] for sg in subgraphs for op in sg[2]})
    model = schema.ModelT()
    model.version = 3
    model.operatorCodes = []
    for c in codes:
        code = schema.OperatorCodeT()
        code.builtinCode, code.deprecatedBuiltinCode = c, min(c, OP.PLACEHOLDER_FOR_GREATER_OP_CODES)
        model.operatorCodes.append(code)
    model.buffers = []
    for data in [b""] + buffers:
        b = schema.BufferT()
        b.data = np.frombuffer(data, np.uint8) if data else None
        model.buffers.append(b)
    model.subgraphs = []
    for name, tensors, ops, inputs, outputs in subgraphs:
        sg = schema.SubGraphT()
        sg.name, sg.inputs, sg.outputs, sg.tensors, sg.operators = name, inputs, outputs, [], []
        for t_name, shape, dtype, buffer in tensors:
            t = schema.TensorT()
            t.name, t.shape, t.type, t.buffer = t_name, shape, dtype, buffer
            sg.tensors.append(t)
        for code, ins, outs, options in ops:
            op = schema.OperatorT()
            op.opcodeIndex, op.inputs, op.outputs = codes.index(code), ins, outs
            if options is not None:
                op.builtinOptionsType, op.builtinOptions = options
            sg.operators.append(op)
        model.subgraphs.append(sg)
    model.signatureDefs = []
    for key, (index, ins, outs) in signatures.items():
        sd = schema.SignatureDefT()
        sd.signatureKey, sd.subgraphIndex = key, index
        sd.inputs = [_tensor_map(n, i) for n, i in ins]
        sd.outputs = [_tensor_map(n, i) for n, i in outs]
        model.signatureDefs.append(sd)
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _tensor_map(name, index):
    m = schema.TensorMapT()
    m.name, m.tensorIndex = name, index
    return m


def _options(kind, **fields):
    """(builtin options type, options object) of an op, e.g. _options("VarHandleOptions", sharedName="v")."""
    options = getattr(schema, f"{kind}T")()
    for key, value in fields.items():
        setattr(options, key, value)
    return getattr(schema.BuiltinOptions, kind), options


def _var_handle(name):
    return _options("VarHandleOptions", sharedName=name)


def hand_built_model():
    """train (subgraph 0) runs CALL_ONCE -> subgraph 1, which initialises variables v (4 floats) and u (8 floats);
    infer (subgraph 2) is a MUL by its own 25-float constant. Buffers: 1 = 4 floats shared by `w` and `w2`,
    2 = int32[2] axes, 3 = int32[1] shape, 4 = v's initial value, 5 = u's initial value, 6 = infer's constant."""
    act = [1, 8, 8, 4]  # 256 elements: 1024 B as float32, 256 B as bool
    train_tensors = [
        ("x", act, F32, 0),
        ("w", [4], F32, 1),
        ("w2", [4], F32, 1),
        ("h", [], RESOURCE, 0),
        ("r", [4], F32, 0),
        ("a", act, F32, 0),
        ("b", act, F32, 0),
        ("mask", act, BOOL, 0),
        ("c", act, F32, 0),
        ("d", act, F32, 0),
        ("axes", [2], I32, 2),
        ("s", [1, 4], F32, 0),
        ("shape", [1], I32, 3),
        ("n", [4], F32, 0),
    ]
    train_ops = [
        (OP.CALL_ONCE, [], [], _options("CallOnceOptions", initSubgraphIndex=1)),
        (OP.VAR_HANDLE, [], [3], _var_handle("v")),
        (OP.READ_VARIABLE, [3], [4], None),
        (OP.MUL, [0, 1], [5], None),  # x dies here
        (OP.RELU, [5], [6], None),
        (OP.GREATER, [5, 2], [7], None),  # a dies here; live: r a b mask = 16 + 1024 + 1024 + 256
        (OP.ADD, [6, 4], [8], None),  # r, b die; live: r b mask c = the same 2320 (the first op counts)
        (OP.SELECT_V2, [7, 8, 2], [9], None),
        (OP.MEAN, [9, 10], [11], None),
        (OP.RESHAPE, [11, 12], [13], None),
        (OP.ASSIGN_VARIABLE, [3, 13], [], None),
    ]
    init_tensors = [("hv", [], RESOURCE, 0), ("v0", [4], F32, 4), ("hu", [], RESOURCE, 0), ("u0", [8], F32, 5)]
    init_ops = [
        (OP.VAR_HANDLE, [], [0], _var_handle("v")),
        (OP.ASSIGN_VARIABLE, [0, 1], [], None),
        (OP.VAR_HANDLE, [], [2], _var_handle("u")),
        (OP.ASSIGN_VARIABLE, [2, 3], [], None),
    ]
    infer_tensors = [("x", act, F32, 0), ("k", [25], F32, 6), ("y", act, F32, 0)]
    infer_ops = [(OP.MUL, [0, 1], [2], None)]
    buffers = [bytes(16), bytes(8), bytes(4), bytes(16), bytes(32), bytes(100)]
    return _flatbuffer(
        [
            ("train", train_tensors, train_ops, [0], [11]),
            ("init", init_tensors, init_ops, [], []),
            ("infer", infer_tensors, infer_ops, [0], [2]),
        ],
        buffers,
        {"train": (0, [("x", 0)], [("s", 11)]), "infer": (2, [("x", 0)], [("y", 2)])},
    )


def test_static_peak_of_a_hand_built_graph(tmp_path):
    data = hand_built_model()
    train = static_memory(data, "train")
    assert train.peak_activation_bytes == 16 + 1024 + 1024 + 256
    assert train.peak_op == "5 GREATER"
    assert [(p.name, p.bytes, p.producer) for p in train.peak_tensors] == [
        ("a", 1024, "3 MUL"),
        ("b", 1024, "4 RELU"),
        ("mask", 256, "5 GREATER"),
        ("r", 16, "2 READ_VARIABLE"),
    ]
    assert train.peak_by_op == {"MUL": 1024, "RELU": 1024, "GREATER": 256, "READ_VARIABLE": 16}
    assert train.constant_bytes == 16 + 8 + 4 + 16 + 32  # w and w2 share one buffer; the init subgraph's count
    assert train.variable_bytes == 16 + 32  # v and u, both initialised by the CALL_ONCE subgraph
    assert train.file_bytes == len(data) and train.unknown_dims == 0

    infer = static_memory(data, "infer")
    assert (infer.peak_activation_bytes, infer.constant_bytes, infer.variable_bytes) == (2048, 100, 0)

    path = tmp_path / "hand.tflite"
    path.write_bytes(data)
    assert static_memory(path, "train") == train  # a path reads the same bytes
    assert json.loads(json.dumps(train.to_dict()))["peak_tensors"][0]["name"] == "a"


def test_static_memory_names_the_signatures():
    with pytest.raises(ValueError, match="no signature 'fit'.*infer, train"):
        static_memory(hand_built_model(), "fit")


@pytest.mark.parametrize("measure_file", [static_memory, dynamic_memory])
def test_bad_model_files(tmp_path, measure_file):
    (tmp_path / "bad.tflite").write_bytes(b"not a model at all")
    with pytest.raises(ValueError, match="TFL3"):
        measure_file(tmp_path / "bad.tflite")
    with pytest.raises(OSError):
        measure_file(tmp_path / "missing.tflite")


@pytest.fixture(scope="module")
def ft_full(tmp_path_factory):
    """The tiny network fine-tuned in full, exported at 96 px (big enough for activations to dwarf the noise)."""
    from tests.tiny import tiny_backbone
    from tinytl_tf.export import export_model
    from tinytl_tf.transfer import prepare_transfer

    path = tmp_path_factory.mktemp("ft_full") / "model.tflite"
    export_model(prepare_transfer(tiny_backbone(96), "ft-full", 3), path)
    return path


@pytest.mark.slow
def test_training_graph_of_ft_full_needs_more_than_inference(ft_full):
    train, infer = static_memory(ft_full, "train"), static_memory(ft_full, "infer")
    assert train.peak_activation_bytes > 2 * infer.peak_activation_bytes > 0
    weights = json.loads(open(model_json_path(ft_full)).read())["weights"]  # trainables, optimizer state, step
    stored = sum(np.dtype(w["dtype"]).itemsize * int(np.prod(w["shape"])) for w in weights)
    assert train.variable_bytes == infer.variable_bytes == stored
    assert train.file_bytes == os.path.getsize(ft_full)


@pytest.mark.slow
def test_dynamic_memory_of_ft_full(ft_full):
    train = dynamic_memory(ft_full, "train")
    infer = dynamic_memory(ft_full, "infer")
    assert train > infer > 0
    # the process holds at least the variables and the graph's peak while training
    static = static_memory(ft_full, "train")
    assert train >= static.variable_bytes + static.peak_activation_bytes
    points = probe_memory(ft_full, "infer", steps=1, xnnpack=True)
    assert points["hwm"] >= points["rss_loaded"] > points["rss_start"] > 0
    page = os.sysconf("SC_PAGE_SIZE")
    assert 0 < points["model_loaded"] <= -(-os.path.getsize(ft_full) // page) * page  # whole pages of the file

    row = measure_tflite(ft_full, steps=2)
    assert row["tflite_mb"] == pytest.approx(os.path.getsize(ft_full) / 1e6)
    assert row["measured_train_mb"] > row["measured_infer_mb"] > 0
    assert row["static_peak_mb"] == pytest.approx(static.peak_activation_bytes / 1e6)
    # the peak's heap and file-backed parts, taken at the run's end, cannot exceed it and hold the variables
    assert 0 < row["measured_train_anon_mb"] + row["measured_train_file_mb"] <= row["measured_train_mb"] + 0.01
    assert row["measured_train_anon_mb"] >= static.variable_bytes / 1e6


def test_memory_command_measures_a_users_exported_model(ft_full, tmp_path, capsys):
    from tinytl_tf.cli import main

    user = tmp_path / "mine.tflite"
    user.write_bytes(ft_full.read_bytes())
    (tmp_path / "mine.json").write_text(json.dumps({"method": "ft-full"}))
    assert main(["memory", "--model", str(user), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["method"] == "ft-full" and row["model"] == str(user)
    assert row["measured_train_mb"] > row["measured_infer_mb"] > 0 and row["tflite_mb"] > 0


def _probe_pids(path):
    """Live processes whose command line names `path` (the probe's model argument)."""
    pids = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if str(path).encode() in f.read():
                    pids.append(int(entry))
        except (OSError, ValueError):
            continue
    return pids


@pytest.mark.slow
def test_a_probe_that_overruns_is_stopped(ft_full):
    started = time.monotonic()
    with pytest.raises(MeasurementError, match="did not finish within 2 s"):
        dynamic_memory(ft_full, "train", steps=10**7, timeout=2)
    assert time.monotonic() - started < 20
    assert _probe_pids(ft_full.resolve()) == []


@pytest.mark.slow
def test_a_killed_probe_is_an_error(ft_full):
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = pool.submit(dynamic_memory, ft_full, "train", steps=10**7, timeout=120)
        deadline = time.monotonic() + 30
        while not (pids := _probe_pids(ft_full.resolve())) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pids, "the probe process never appeared"
        os.kill(pids[0], signal.SIGKILL)
        with pytest.raises(MeasurementError, match=r"failed \(exit -9\)"):
            future.result(timeout=60)
    assert _probe_pids(ft_full.resolve()) == []


_find_spec = importlib.util.find_spec


@pytest.mark.parametrize(
    "target,name,value,message",
    [
        (sys, "executable", "/nonexistent/python", "cannot start"),
        (measure, "PROC_STATUS", "/nonexistent/status", "/proc"),
        (
            importlib.util,
            "find_spec",
            lambda name, *a: None if name == "ai_edge_litert" else _find_spec(name, *a),
            "pip install ai-edge-litert",
        ),
    ],
)
@pytest.mark.slow
def test_a_machine_that_cannot_measure_is_a_clear_error(ft_full, monkeypatch, target, name, value, message):
    monkeypatch.setattr(target, name, value)
    with pytest.raises(MeasurementError, match=message):
        dynamic_memory(ft_full)


@pytest.mark.slow
def test_bad_measurement_requests(ft_full):
    with pytest.raises(MeasurementError, match="Invalid signature_key"):
        dynamic_memory(ft_full, "fit")
    with pytest.raises(ValueError, match="timeout"):
        dynamic_memory(ft_full, timeout=0)
    with pytest.raises(ValueError, match="steps"):
        dynamic_memory(ft_full, steps=0)


@pytest.mark.slow
def test_cli_measures_a_small_backbone(capsys):
    args = [
        "memory",
        "--backbone",
        "mcunet-5fps",
        "--resolution",
        "48",
        "--batch-size",
        "1",
        "--methods",
        "ft-last",
        "--no-lite-for-all",
        "--measure",
        "--json",
    ]
    assert main(args) == 0
    out, err = capsys.readouterr()
    (row,) = json.loads(out)
    (analytic,) = method_table("mcunet-5fps", 48, 1, lite_for_all=False, methods=["ft-last"])
    assert {k: row[k] for k in analytic} == analytic
    assert row["measured_batch_size"] == 1
    assert row["measured_train_mb"] > 0 and row["measured_infer_mb"] > 0
    assert 0 < row["static_peak_mb"] < row["measured_train_mb"]
    assert row["tflite_mb"] > row["constants_mb"] > 0
    assert "[1/1] ft-last: exporting" in err and "[1/1] ft-last: measuring" in err


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--methods", "ft-all"], "tinytl-lb"),
        (["--backbone", "resnet-50"], "mobilenet-v1"),
        (["--resolution", "31"], "resolution"),
        (["--resolution", "32"], "cannot take 32 px"),
        (["--timeout", "0"], "timeout"),
        (["--frozen-bits", "16"], "8 or 32"),
    ],
)
def test_cli_bad_input_exits_2(capsys, extra, message):
    assert main(["memory", "--backbone", "mcunet-5fps", "--measure", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and "Traceback" not in err


def test_cli_reports_a_machine_that_cannot_measure(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(measure, "PROC_STATUS", str(tmp_path / "no-proc"))
    assert main(["memory", "--backbone", "mcunet-5fps", "--resolution", "48", "--methods", "ft-last", "--measure"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "/proc" in err and "Traceback" not in err


def test_measure_methods_keeps_the_order_of_methods_and_reports_a_failed_export(monkeypatch, tmp_path):
    """Exports run two at a time; the rows still come in the order asked, and a failed export ends the job."""

    def export(request):
        if request["method"] == "tinytl-b":
            raise RuntimeError("exporting tinytl-b to measure it failed (exit 1): ...")
        time.sleep(0.2 if request["method"] == "ft-full" else 0)  # the first asked finishes last
        open(request["out"], "wb").close()

    monkeypatch.setattr(memory_job, "_export_in_subprocess", export)
    monkeypatch.setattr(memory_job, "measure_tflite", lambda path, *args: {"file": path.name})
    rows = memory_job.measure_methods("mcunet-5fps", 48, methods=["ft-full", "ft-last", "tinytl-lb"], workdir=tmp_path)
    assert rows == [{"method": m, "file": f"{m}.tflite"} for m in ("ft-full", "ft-last", "tinytl-lb")]
    with pytest.raises(RuntimeError, match="exporting tinytl-b"):
        memory_job.measure_methods("mcunet-5fps", 48, methods=["ft-last", "tinytl-b", "ft-full"], workdir=tmp_path)
    assert list(tmp_path.iterdir()) == []  # the temporary exports are gone


def test_the_conversion_lock_is_exclusive(tmp_path):
    lock = tmp_path / "converting.lock"
    with memory_job._held(lock), open(lock) as other:
        with pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with open(lock) as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released once the block ends
