"""tinytl_tf.ops against TF autodiff of independent stock-TF references (float64, forward and every gradient),
what each backward keeps alive, and the builtins-only claim end to end: a forward + backward graph through every
op converts with TFLITE_BUILTINS alone and LiteRT reproduces TF's gradients."""

import functools
import itertools

import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from tinytl_tf import ops, tflite_model

RNG = np.random.default_rng(0)
TOL = 1e-10  # float64 against float64
RESIZE_TOL = 1e-6  # TF's ResizeBilinear(Grad) computes in float32 whatever the input dtype


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b).max() / np.abs(b).max()


def _pad_list(pads):
    return [[0, 0], list(pads[0]), list(pads[1]), [0, 0]]


# Independent references: stock TF ops, differentiated by TF's own autodiff.
def ref_conv2d(x, kernel, stride, pads, groups):
    """A grouped conv as one plain conv with a block-diagonal kernel."""
    cin_g, cout_g = kernel.shape[2], kernel.shape[3] // groups
    blocks = []
    for j in range(groups):
        block = kernel[..., j * cout_g : (j + 1) * cout_g]
        blocks.append(tf.pad(block, [[0, 0], [0, 0], [j * cin_g, (groups - 1 - j) * cin_g], [0, 0]]))
    return tf.nn.conv2d(x, tf.concat(blocks, axis=-1), stride, _pad_list(pads))


def ref_depthwise(x, kernel, stride, pads):
    return tf.nn.depthwise_conv2d(x, kernel, [1, stride, stride, 1], _pad_list(pads))


def ref_group_norm(x, gamma, beta, groups, epsilon=1e-5):
    n, h, w, c = x.shape
    g = tf.reshape(x, [n, h, w, groups, c // groups])
    mean = tf.reduce_mean(g, axis=[1, 2, 4], keepdims=True)
    var = tf.reduce_mean(tf.square(g - mean), axis=[1, 2, 4], keepdims=True)
    return tf.reshape((g - mean) / tf.sqrt(var + epsilon), [n, h, w, c]) * gamma + beta


def ref_resize(x, size):
    return tf.image.resize(x, size, "bilinear")


def ref_cross_entropy(logits, labels, smoothing):
    k = logits.shape[-1]
    target = tf.one_hot(labels, k, dtype=logits.dtype) * (1 - smoothing) + smoothing / k
    return tf.nn.softmax_cross_entropy_with_logits(target, logits)


def outputs_and_grads(fn, args, wrt, w):
    """fn(*args) and the gradients of sum(fn(*args) * w) w.r.t. args[i] for i in wrt."""
    args = [tf.constant(a) for a in args]
    with tf.GradientTape() as tape:
        tape.watch([args[i] for i in wrt])
        y = fn(*args)
        loss = tf.reduce_sum(y * tf.cast(w, y.dtype))
    return y, tape.gradient(loss, [args[i] for i in wrt])


def check(mine, ref, args, wrt, tol=TOL):
    """Forward and the gradients w.r.t. args[wrt] of `mine` equal those of `ref` (relative max error)."""
    y_ref, g_ref = outputs_and_grads(ref, args, wrt, w := RNG.standard_normal(ref(*map(tf.constant, args)).shape))
    y, g = outputs_and_grads(mine, args, wrt, w)
    assert y.shape == y_ref.shape and rel_err(y, y_ref) <= tol
    for i, a, b in zip(wrt, g, g_ref):
        assert a is not None and rel_err(a, b) <= tol, f"gradient of argument {i}: {rel_err(a, b):.2e}"


def rand(*shape):
    return RNG.standard_normal(shape)


KINDS = ["g1", "g2", "dw"]  # groups 1, groups 2, depthwise


# Convolutions: every stride/size/kernel/kind/batch combination with "same"-style pads, plus odd explicit pads.
CONV_CASES = (
    [
        (stride, size, k, kind, batch, ((k // 2, k // 2), (k // 2, k // 2)))
        for stride, size, k, kind, batch in itertools.product([1, 2], [7, 8, 9], [1, 3, 5, 7], KINDS, [1, 2])
    ]
    + [(2, 9, 3, kind, 2, ((0, 1), (1, 0))) for kind in KINDS]
    + [(2, 8, 5, kind, 1, ((3, 0), (0, 2))) for kind in KINDS]
    + [
        (2, 7, 1, kind, 2, ((1, 2), (2, 1)))
        for kind in KINDS  # pads wider than the kernel
    ]
    + [
        (2, 7, 7, kind, 1, ((0, 0), (0, 0)))
        for kind in KINDS  # one output pixel
    ]
    + [
        (2, size, k, kind, 1, ((k // 2, k // 2 - 1), (k // 2, k // 2 - 1)))  # even kernels: stride divides k
        for size, k, kind in itertools.product([8, 9], [2, 4], KINDS)
    ]
)


@pytest.mark.parametrize("stride,size,k,kind,batch,pads", CONV_CASES)
def test_conv(stride, size, k, kind, batch, pads):
    x = rand(batch, size, size + 1, 4)  # W = H + 1 so H and W cannot be mixed up
    if kind == "dw":
        mine = functools.partial(ops.depthwise_conv2d, stride=stride, pads=pads)
        ref = functools.partial(ref_depthwise, stride=stride, pads=pads)
        kernel = rand(k, k, 4, 1)
    else:
        groups = 2 if kind == "g2" else 1
        mine = functools.partial(ops.conv2d, stride=stride, pads=pads, groups=groups)
        ref = functools.partial(ref_conv2d, stride=stride, pads=pads, groups=groups)
        kernel = rand(k, k, 4 // groups, 6)
    check(mine, ref, [x, kernel], [0, 1])


def test_dense():
    check(ops.dense, lambda x, k: tf.einsum("ni,io->no", x, k), [rand(3, 5), rand(5, 4)], [0, 1])


@pytest.mark.parametrize("rank", [2, 4])
def test_channel_affine(rank):
    x = rand(2, 3) if rank == 2 else rand(2, 5, 6, 3)
    check(ops.channel_affine, lambda x, s, b: x * s + b, [x, rand(3), rand(3)], [0, 1, 2])
    check(lambda x, s: ops.channel_affine(x, s, None), lambda x, s: x * s, [x, rand(3)], [0, 1])
    check(lambda x, b: ops.channel_affine(x, None, b), lambda x, b: x + b, [x, rand(3)], [0, 1])


@pytest.mark.parametrize("name", ["relu", "relu6"])
def test_activation(name):
    x = np.concatenate([rand(2, 4, 5, 3).ravel() * 5, [0.0, 6.0, -1e-9, 6 + 1e-9]]).reshape(2, 62, 1)
    check(getattr(ops, name), getattr(tf.nn, name), [x], [0])


@pytest.mark.parametrize("h,w,batch", [(7, 8, 1), (8, 9, 2), (9, 7, 2)])
def test_avg_pool_2x2(h, w, batch):
    check(ops.avg_pool_2x2, lambda x: tf.nn.avg_pool2d(x, 2, 2, "VALID"), [rand(batch, h, w, 3)], [0])


def test_global_avg_pool():
    x = rand(2, 5, 6, 3)
    check(ops.global_avg_pool, lambda x: tf.squeeze(tf.nn.avg_pool2d(x, [5, 6], 1, "VALID"), [1, 2]), [x], [0])


@pytest.mark.parametrize(
    "h,w", [((3, 7), (4, 7)), ((4, 7), (7, 4)), ((7, 4), (8, 16)), ((8, 16), (5, 10)), ((5, 10), (3, 7))]
)
def test_resize_bilinear(h, w):
    x = rand(2, h[0], w[0], 3)
    size = (h[1], w[1])
    check(lambda x: ops.resize_bilinear(x, size), lambda x: ref_resize(x, size), [x], [0], tol=RESIZE_TOL)
    # The forward is TF's v1 half-pixel op (float32 whatever the input) to well within 1e-6.
    legacy = tf.compat.v1.image.resize_bilinear(tf.constant(x, tf.float32), size, half_pixel_centers=True)
    assert rel_err(ops.resize_bilinear(tf.constant(x, tf.float32), size), legacy) <= 1e-6


@pytest.mark.parametrize("gamma_grad", [True, False])
@pytest.mark.parametrize("shape,groups", [((1, 5, 6, 8), 2), ((2, 4, 3, 6), 3), ((2, 3, 3, 4), 1)])
def test_group_norm(shape, groups, gamma_grad):
    c = shape[-1]
    args = [rand(*shape) * 3 + 1, rand(c), rand(c)]
    mine = functools.partial(ops.group_norm, groups=groups, gamma_grad=gamma_grad)
    ref = functools.partial(ref_group_norm, groups=groups)
    check(mine, ref, args, [0, 1, 2] if gamma_grad else [0, 2])


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.7])
def test_softmax_cross_entropy(smoothing):
    labels = np.array([1, 4, 0])
    mine = functools.partial(ops.softmax_cross_entropy, labels=labels, label_smoothing=smoothing)
    check(mine, lambda z: ref_cross_entropy(z, labels, smoothing), [rand(3, 5) * 3], [0])


# What the backward keeps: forward tensors read by the backward part of a traced graph.
def _ancestors(tensors):
    seen, todo = set(), [t.op for t in tensors]
    while todo:
        op = todo.pop()
        if op not in seen:
            seen.add(op)
            todo.extend(i.op for i in op.inputs)
    return seen


def saved_from_x(fn, args, wrt):
    """Trace fn and the gradient of sum(fn * const) w.r.t. args[wrt]; return which gradients are None and the
    forward tensors derived from args[0] that backward ops read, i.e. what the op keeps alive for its backward.
    Forward = ops created up to the loss (a mask is computed there even though only the backward reads it)."""
    w = RNG.standard_normal(fn(*map(tf.constant, args)).shape)

    @tf.function
    def step(*xs):
        with tf.GradientTape() as tape:
            tape.watch(xs)
            y = fn(*xs)
            loss = tf.reduce_sum(y * tf.constant(w, y.dtype))
        return loss, tape.gradient(loss, [xs[i] for i in wrt])

    graph = step.get_concrete_function(*[tf.TensorSpec(np.shape(a), tf.float64) for a in args]).graph
    loss, grads = graph.structured_outputs
    created = graph.get_operations()
    forward = set(created[: created.index(loss.op.inputs[0].op) + 1])  # loss.op is the output Identity
    backward = _ancestors([g for g in grads if g is not None]) - forward
    x_op = graph.inputs[0].op
    read = {t.name: t for op in backward for t in op.inputs if t.op in forward}.values()
    return [g is None for g in grads], [t for t in read if x_op in _ancestors([t])]


PADS = ((1, 1), (1, 1))
FROZEN_OPS = {
    "conv2d": (lambda x, k, f: ops.conv2d(x, k, stride=2, pads=PADS, groups=2, kernel_grad=f), (3, 3, 2, 4)),
    "depthwise": (lambda x, k, f: ops.depthwise_conv2d(x, k, stride=2, pads=PADS, kernel_grad=f), (3, 3, 4, 1)),
    "dense_1x1": (lambda x, k, f: ops.dense(tf.reshape(x, [-1, 4]), k, kernel_grad=f), (4, 3)),
    "affine": (lambda x, s, f: ops.channel_affine(x, s, tf.ones(4, tf.float64), scale_grad=f), (4,)),
}


@pytest.mark.parametrize("name", FROZEN_OPS)
def test_frozen_weight_keeps_no_input(name):
    fn, wshape = FROZEN_OPS[name]
    args = [rand(2, 7, 7, 4), rand(*wshape)]
    is_none, kept = saved_from_x(lambda x, k: fn(x, k, False), args, [0, 1])
    assert is_none == [False, True] and kept == []
    # The same probe sees the input kept when the weight trains.
    is_none, kept = saved_from_x(lambda x, k: fn(x, k, True), args, [0, 1])
    assert is_none == [False, False] and kept


@pytest.mark.parametrize(
    "fn",
    [ops.avg_pool_2x2, ops.global_avg_pool, lambda x: ops.resize_bilinear(x, (4, 9))],
    ids=["avg_pool", "global_pool", "resize"],
)
def test_linear_ops_keep_nothing(fn):
    assert saved_from_x(fn, [rand(2, 7, 7, 4)], [0]) == ([False], [])


@pytest.mark.parametrize("channels", [4, 16])
@pytest.mark.parametrize("fn", [ops.relu, ops.relu6], ids=["relu", "relu6"])
def test_activations_keep_only_a_1_bit_mask(fn, channels):
    _, kept = saved_from_x(fn, [rand(2, 7, 7, channels)], [0])
    assert [(t.dtype, t.shape.num_elements()) for t in kept] == [(tf.uint8, 2 * 7 * 7 * channels // 8)]


@pytest.mark.parametrize("gamma_grad", [True, False])
def test_group_norm_keeps_one_normalised_copy(gamma_grad):
    fn = functools.partial(ops.group_norm, groups=2, gamma_grad=gamma_grad)
    _, kept = saved_from_x(fn, [rand(2, 5, 6, 4), rand(4), rand(4)], [0, 1, 2])
    assert sorted(t.shape.num_elements() for t in kept) == [2 * 2, 2 * 5 * 6 * 4]  # rstd and x-hat


# Builtins only: convert a forward + backward chain through every op and run it in LiteRT.
PARAMS = {
    "k1": (3, 3, 3, 8),
    "s1": (8,),
    "b1": (8,),
    "k2": (3, 3, 8, 1),
    "k3": (3, 3, 4, 8),
    "g3": (8,),
    "be3": (8,),
    "kd": (8, 5),
    "bd": (5,),
}
BATCH, LABELS = 2, np.array([1, 3], np.int32)


def chain(x, y, p, full, impl):
    """conv -> affine -> relu6 -> depthwise s2 -> avg pool -> resize -> grouped conv s2 -> group norm -> relu ->
    global pool -> dense -> loss. `impl` is "ops" (kernels trainable only if `full`) or "ref" (stock TF)."""
    if impl == "ops":
        h = ops.conv2d(x, p["k1"], pads=((1, 1), (1, 1)), kernel_grad=full)
        h = ops.relu6(ops.channel_affine(h, p["s1"], p["b1"]))
        h = ops.depthwise_conv2d(h, p["k2"], stride=2, pads=((1, 1), (1, 1)), kernel_grad=full)
        h = ops.resize_bilinear(ops.avg_pool_2x2(h), (7, 7))
        h = ops.conv2d(h, p["k3"], stride=2, pads=((1, 0), (1, 0)), groups=2, kernel_grad=full)
        h = ops.relu(ops.group_norm(h, p["g3"], p["be3"], groups=2, gamma_grad=full))
        h = ops.channel_affine(ops.dense(ops.global_avg_pool(h), p["kd"], kernel_grad=full), None, p["bd"])
        return tf.reduce_mean(ops.softmax_cross_entropy(h, y, label_smoothing=0.1))
    h = ref_conv2d(x, p["k1"], 1, ((1, 1), (1, 1)), 1)
    h = tf.nn.relu6(h * p["s1"] + p["b1"])
    h = ref_depthwise(h, p["k2"], 2, ((1, 1), (1, 1)))
    h = tf.cast(ref_resize(tf.nn.avg_pool2d(h, 2, 2, "VALID"), (7, 7)), x.dtype)
    h = ref_conv2d(h, p["k3"], 2, ((1, 0), (1, 0)), 2)
    h = tf.nn.relu(ref_group_norm(h, p["g3"], p["be3"], 2))
    h = tf.reduce_mean(h, axis=[1, 2]) @ p["kd"] + p["bd"]
    return tf.reduce_mean(ref_cross_entropy(h, y, 0.1))


@pytest.mark.parametrize("full", [False, True], ids=["biases_scales", "all"])
def test_litert_builtins_only_training_graph(full):
    values = {}
    for k, shape in PARAMS.items():  # kernels ~0.3, biases ~0.1, scales and gammas ~1
        values[k] = RNG.standard_normal(shape) * (0.1 if k[0] == "b" else 0.3) + (k[0] in "sg")
    trainable = ["s1", "b1", "be3", "bd"] + (["k1", "k2", "k3", "g3", "kd"] if full else [])
    frozen = {k: tf.constant(v, tf.float32) for k, v in values.items() if k not in trainable}
    spec = [tf.TensorSpec([BATCH, 9, 9, 3], tf.float32, name="x"), tf.TensorSpec([BATCH], tf.int32, name="y")]
    spec += [tf.TensorSpec(PARAMS[k], tf.float32, name=k) for k in trainable]

    @tf.function(input_signature=spec)
    def train_step(x, y, *train):
        with tf.GradientTape() as tape:
            tape.watch(train)
            loss = chain(x, y, {**frozen, **dict(zip(trainable, train))}, full, "ops")
        return {"loss": loss, **{"d_" + k: g for k, g in zip(trainable, tape.gradient(loss, train))}}

    converter = tf.lite.TFLiteConverter.from_concrete_functions([train_step.get_concrete_function()], tf.Module())
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # no SELECT_TF_OPS: Flex fails here
    data = converter.convert()
    interpreter = Interpreter(model_content=data)
    # What the converted backward reads from the forward: packed uint8 masks, never bool or int32 ones (the
    # unpacking must not be scheduled into the forward by the converter).
    sg = tflite_model.read(data)[0]
    loss_at = next(i for i, op in enumerate(sg.ops) if op.name == "LOG_SOFTMAX")
    produced = {t for op in sg.ops[:loss_at] for t in op.outputs}
    kept = {t for op in sg.ops[loss_at + 1 :] for t in op.inputs if t in produced}
    kept_types = {sg.tensors[t].dtype for t in kept}
    assert "uint8" in kept_types and not kept_types & {"bool", "int32"}, kept_types
    producer = {t: op for op in sg.ops[:loss_at] for t in op.outputs}
    unpacked = [sg.tensors[t] for t in kept if any(sg.tensors[i].dtype == "uint8" for i in producer[t].inputs)]
    assert not unpacked, unpacked  # nothing unpacked from a mask in the forward reaches the backward
    runner = interpreter.get_signature_runner()

    x = RNG.standard_normal((BATCH, 9, 9, 3))
    got = runner(x=x.astype(np.float32), y=LABELS, **{k: values[k].astype(np.float32) for k in trainable})

    ref_train = [tf.constant(values[k]) for k in trainable]
    with tf.GradientTape() as tape:
        tape.watch(ref_train)
        p = {k: tf.constant(v) for k, v in values.items()} | dict(zip(trainable, ref_train))
        loss = chain(tf.constant(x), tf.constant(LABELS), p, full, "ref")
    want = {"loss": loss, **{"d_" + k: g for k, g in zip(trainable, tape.gradient(loss, ref_train))}}
    assert sorted(got) == sorted(want)
    for name, value in want.items():
        assert rel_err(got[name], value) <= 1e-5, f"{name}: {rel_err(got[name], value):.2e}"


@pytest.mark.parametrize("fn", [ops.relu, ops.relu6], ids=["relu", "relu6"])
def test_inference_graph_computes_no_mask(fn):
    # each output waits for its packed mask (a control dependency), yet a graph without a backward must drop the
    # masks as dead code, or every inference would pay for them
    step = tf.function(lambda x: fn(x) * 2.0, input_signature=[tf.TensorSpec([1, 8, 8, 4], tf.float32)])
    data = tf.lite.TFLiteConverter.from_concrete_functions([step.get_concrete_function()], tf.Module()).convert()
    names = {op.name for op in tflite_model.read(data)[0].ops}
    assert not names & {"GREATER", "LESS", "EQUAL", "CAST", "FULLY_CONNECTED"}, names


def _dequantized(kernel, axis):
    """Symmetric per-channel int8 along `axis` and back, as the export stores a frozen kernel."""
    other = tuple(a for a in range(kernel.ndim) if a != axis)
    scale = np.abs(kernel).max(axis=other, keepdims=True).astype(np.float32) / np.float32(127)
    return (np.round(kernel / scale).clip(-127, 127) * scale).astype(np.float32)


@pytest.mark.parametrize("channels", [128, 8])
@pytest.mark.parametrize(
    "depthwise,k,stride,groups", [(False, 1, 1, 1), (False, 3, 2, 2), (True, 3, 1, 1), (True, 5, 2, 1)]
)
def test_int8_frozen_kernel_gradient_is_autodiff_of_its_dequantized_value(depthwise, k, stride, groups, channels):
    """Within `frozen_kernels_int8` the input gradient of a frozen kernel reads its int8 copy: it equals autodiff of
    the reference op with the dequantized kernel (the forward keeps the float constant the converter quantizes).
    A kernel under `QUANTIZE_MIN_ELEMENTS` elements, which the converter keeps in float, is read in float."""
    from tinytl_tf.ops.conv import QUANTIZE_MIN_ELEMENTS, frozen_kernels_int8

    c = channels
    x = tf.constant(RNG.standard_normal((2, 9, 9, c)), tf.float32)
    shape = (k, k, c, 1) if depthwise else (k, k, c // groups, 12)
    kernel = RNG.standard_normal(shape).astype(np.float32)
    quantized = kernel.size >= QUANTIZE_MIN_ELEMENTS
    assert quantized == (channels == 128)  # both cases are exercised
    pads = ((k // 2, k // 2), (k // 2, k // 2))
    deq = tf.constant(_dequantized(kernel, 2 if depthwise else 3) if quantized else kernel)
    with frozen_kernels_int8(), tf.GradientTape() as tape:
        tape.watch(x)
        if depthwise:
            y = ops.depthwise_conv2d(x, tf.constant(kernel), stride=stride, pads=pads, kernel_grad=False)
        else:
            y = ops.conv2d(x, tf.constant(kernel), stride=stride, pads=pads, groups=groups, kernel_grad=False)
        w = tf.constant(RNG.standard_normal(y.shape), tf.float32)
        loss = tf.reduce_sum(y * w)
    dx = tape.gradient(loss, x)
    ref = functools.partial(ref_depthwise) if depthwise else functools.partial(ref_conv2d, groups=groups)
    with tf.GradientTape() as tape:
        tape.watch(x)
        ref_loss = tf.reduce_sum(ref(x, deq, stride, pads) * w)
    assert rel_err(y, ref(x, tf.constant(kernel), stride, pads)) < 1e-5
    assert rel_err(dx, tape.gradient(ref_loss, x)) < 1e-5
    if quantized:
        assert rel_err(deq, kernel) > 1e-4  # the kernel really went through int8
