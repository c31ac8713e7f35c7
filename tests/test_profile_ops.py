"""The per-operator profiler (benchmarks/profile_ops.py) on a tiny conv + relu + add model: it reports exactly the
graph's ops, once per run each, with self times that fit in the measured run; and it refuses what it cannot read."""

import collections
import ctypes

import pytest

from benchmarks import profile_ops
from tinytl_tf import tflite_model

RUNS = 4


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    import tensorflow as tf

    class Tiny(tf.Module):
        kernel = tf.constant(tf.random.stateless_normal([3, 3, 3, 4], seed=(0, 0)))
        bias = tf.constant([0.1, -0.2, 0.3, -0.4])

        @tf.function(input_signature=[tf.TensorSpec([1, 8, 8, 3], tf.float32)])
        def run(self, x):
            y = tf.nn.relu(tf.nn.conv2d(x, self.kernel, 1, "SAME")) + self.bias
            return {"y": y * y + y}  # a second ADD: counts per type, not just presence

    module = Tiny()
    path = tmp_path_factory.mktemp("model") / "tiny.tflite"
    path.write_bytes(
        tf.lite.TFLiteConverter.from_concrete_functions([module.run.get_concrete_function()], module).convert()
    )
    return path


def test_builtin_reports_every_graph_op_once_per_run(model_path):
    result = profile_ops.profile(str(model_path), "serving_default", runs=RUNS, warmup=1)
    (graph,) = tflite_model.read(str(model_path))
    counts = collections.Counter(op.name for op in graph.ops)
    assert counts["ADD"] == 2 and len(counts) >= 3
    assert {row["type"]: row["count"] for row in result["by_type"]} == counts
    ops = {op["index"]: op for op in result["ops"]}
    assert set(ops) == {f"sg0/op{i}" for i in range(len(graph.ops))}
    for i, op in enumerate(graph.ops):
        out = graph.tensors[op.outputs[0]]
        assert (ops[f"sg0/op{i}"]["type"], ops[f"sg0/op{i}"]["shape"], ops[f"sg0/op{i}"]["tensor"]) == (
            op.name,
            list(out.shape),
            out.name,
        )
    times = [row["ms"] for row in result["by_type"]] + [op["ms"] for op in result["ops"]]
    assert min(times) >= 0 and result["plain_run_ms"] > 0
    assert sum(row["ms"] for row in result["by_type"]) == pytest.approx(result["op_ms"])
    assert result["op_ms"] <= result["run_ms_mean"]
    assert result["by_type"][-1]["cum"] == pytest.approx(1.0)


def test_xnnpack_reports_the_delegate_operators(model_path):
    result = profile_ops.profile(str(model_path), "serving_default", runs=RUNS, warmup=1, xnnpack=True)
    assert result["by_type"] and all(row["type"].startswith("[xnn] ") for row in result["by_type"])
    assert all(op["ms"] >= 0 and op["shape"] is None for op in result["ops"])
    assert result["op_ms"] <= result["run_ms_mean"]


def test_refusals(model_path, tmp_path, monkeypatch):
    with pytest.raises(profile_ops.ProfileError, match="no model file"):
        profile_ops.profile(str(tmp_path / "missing.tflite"), "serving_default")
    with pytest.raises(profile_ops.ProfileError, match="no signature 'train'; it has serving_default"):
        profile_ops.profile(str(model_path), "train")

    class Wider(ctypes.Structure):  # what a release with one more field in its event records would look like
        _fields_ = profile_ops.Event._fields_ + [("extra", ctypes.c_uint64)]

    monkeypatch.setattr(profile_ops, "Event", Wider)
    with pytest.raises(profile_ops.ProfileError, match="ai-edge-litert 2.3.0"):
        profile_ops.profile(str(model_path), "serving_default", runs=1, warmup=0)
