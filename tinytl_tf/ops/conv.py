"""Convolutions, dense and the per-channel affine of a folded normalization.

Backward passes use only TFLite builtins (CONV_2D, DEPTHWISE_CONV_2D, PAD, SLICE, CONCATENATION, DEPTH_TO_SPACE,
SPACE_TO_DEPTH, RESHAPE, TRANSPOSE, GATHER, MUL, SUM, BATCH_MATMUL/FULLY_CONNECTED): autodiff would emit
Conv2DBackpropFilter, DepthwiseConv2dNativeBackprop* and friends, which need Flex. A weight gradient is built, and
the forward input kept for it, only when the weight's `*_grad` flag is True. Weight gradients contract over the
batch inside a conv, so a graph that trains kernels converts only with a static batch size; input gradients do not
care.
"""

import contextlib
import contextvars

import tensorflow as tf

from tinytl_tf.tflite_model import QUANTIZE_MIN_ELEMENTS

_FROZEN_INT8 = contextvars.ContextVar("tinytl_frozen_kernels_int8", default=False)


@contextlib.contextmanager
def frozen_kernels_int8():
    """While tracing the device program with 8-bit frozen weights: the input gradient of a frozen conv reads the
    int8 copy the forward uses, dequantized when it runs, instead of a flipped / transposed constant of its own.

    The converter's dynamic-range quantization stores the forward's kernel as int8 with per-output-channel scales
    (and runs a hybrid conv on it). Left alone it would also fold the gradient's layout into a second int8
    constant, resident beside the first. Here the gradient dequantizes `_int8_reader`'s constant, which has the
    same bytes as the forward's, and `tflite_model.share_identical_buffers` stores the two as one.
    """
    token = _FROZEN_INT8.set(True)
    try:
        yield
    finally:
        _FROZEN_INT8.reset(token)


def _pad(x, pads):
    """Zero-pad H and W by ((top, bottom), (left, right)); negative amounts crop instead."""
    (pt, pb), (pl, pr) = pads
    h, w = x.shape[1], x.shape[2]
    if min(pt, pb, pl, pr) < 0:
        x = x[:, max(-pt, 0) : h - max(-pb, 0), max(-pl, 0) : w - max(-pr, 0), :]
        pt, pb, pl, pr = (max(p, 0) for p in (pt, pb, pl, pr))
    if pt or pb or pl or pr:
        x = tf.pad(x, [[0, 0], [pt, pb], [pl, pr], [0, 0]])
    return x


def _groups(t, groups):
    """t split into `groups` along channels; one group is t itself (a one-way SPLIT is a copy in LiteRT, and one
    XNNPACK does not run)."""
    return tf.split(t, groups, axis=-1) if groups > 1 else [t]


def _conv(x, kernels, stride=1):
    """VALID conv with one kernel per channel group (TFLite's CONV_2D has no reliable grouped form)."""
    xs = _groups(x, len(kernels))
    ys = [tf.nn.conv2d(a, k, stride, "VALID") for a, k in zip(xs, kernels)]
    return ys[0] if len(ys) == 1 else tf.concat(ys, axis=-1)


def _input_grad(dy, x_hw, k, stride, pads, channels, correlate):
    """dx of `VALID conv(pad(x, pads), K, stride)` with builtins, at the forward's cost for any stride.

    Polyphase: padded-input row i = s*m + r only receives taps K[r + s*j] from output row m - j, so each of the
    s*s phases (r_h, r_w) is a stride-1 full correlation of dy with the flipped sub-kernel K[r_h::s, r_w::s];
    DEPTH_TO_SPACE of the phases stacked on channels interleaves them (one op XNNPACK runs, where PACK and
    RESHAPEs were not delegated), and cropping removes the padding. (Zero-inserting dy and running the whole
    kernel would spend s*s times the work, mostly on zeros.) `correlate(t, rows, cols)` runs a stride-1 VALID
    correlation of t with the spatially flipped K[rows, cols] (in/out swapped for a regular conv).

    At stride 1 dy is padded by k - 1 minus the forward's padding, so the correlation yields exactly dx: symmetric
    padding then converts to one SAME conv (a full correlation cropped afterwards ran 6x slower in LiteRT).
    """
    if stride == 1:
        (pt, pb), (pl, pr) = pads
        return correlate(_pad(dy, ((k - 1 - pt, k - 1 - pb), (k - 1 - pl, k - 1 - pr))), slice(None), slice(None))
    padded = [n + p0 + p1 for n, (p0, p1) in zip(x_hw, pads)]  # P per axis
    m_h, m_w = (-(-p // stride) for p in padded)  # rows and columns per phase
    _, ho, wo, _ = dy.shape
    phases = []
    for rh in range(stride):
        for rw in range(stride):
            kh, kw = len(range(rh, k, stride)), len(range(rw, k, stride))
            if kh == 0 or kw == 0:  # no tap lands on this phase (k < stride)
                phases.append(tf.zeros([tf.shape(dy)[0], m_h, m_w, channels], dy.dtype))
                continue
            t = _pad(dy, ((kh - 1, m_h - ho), (kw - 1, m_w - wo)))
            phases.append(correlate(t, slice(rh, None, stride), slice(rw, None, stride)))
    dxp = tf.nn.depth_to_space(tf.concat(phases, axis=-1), stride)
    (pt, pb), (pl, pr) = pads
    return _pad(dxp, ((-pt, -(stride * m_h - padded[0]) - pb), (-pl, -(stride * m_w - padded[1]) - pr)))


def _int8_reader(kernel, depthwise, groups=1):
    """`read(after, gradient)` of a frozen kernel: the forward gets the float constant (quantized by the converter);
    the gradient dequantizes int8 constants quantized like the converter's (symmetric per output channel, rows of
    TFLite's layout: [Cout, k*k*Cin] for a conv, [k*k, C] for a depthwise one), so their bytes equal the forward's.
    A grouped conv's forward is one conv per group, each with a constant of its own: its gradient reads one per group
    too, and gets a list of per-group kernels.

    A constant the converter leaves in float (fewer than QUANTIZE_MIN_ELEMENTS) is read as float rows, again the
    forward constant's bytes. The rows are fetched by a GATHER whose indices add a zero computed from `after`: the
    converter can then neither fold the read into a constant of the gradient's layout nor run it before `after`
    exists (a control dependency does not stop either)."""
    k = tf.convert_to_tensor(kernel)
    shape = k.shape.as_list()
    if depthwise:
        parts = [tf.reshape(k, [-1, shape[2]])]
    else:
        rows = tf.reshape(tf.transpose(k, [3, 0, 1, 2]), [shape[3], -1])
        parts = tf.split(rows, groups, axis=0) if groups > 1 else [rows]
    codes = []
    for part in parts:
        if part.shape.num_elements() < QUANTIZE_MIN_ELEMENTS:
            codes.append((part, 1.0))
            continue
        # as the converter quantizes, in float64 (in float32 a few codes per kernel land on the other side of a
        # tie, and the two constants could not share their bytes)
        wide = tf.cast(part, tf.float64)
        scale = tf.reduce_max(tf.abs(wide), axis=0 if depthwise else 1, keepdims=True) / 127.0
        scale = tf.where(scale > 0.0, scale, 1.0)
        codes.append((tf.cast(tf.round(wide / scale), tf.int8), tf.cast(scale, part.dtype)))  # folded: constants

    def read(after, gradient=False):
        if not gradient:
            return k
        first = tf.reshape(tf.slice(after, [0] * after.shape.rank, [1] * after.shape.rank), [])
        zero = tf.minimum(tf.cast(tf.math.is_nan(first), tf.int32), 0)
        values = [tf.cast(tf.gather(q, tf.range(q.shape[0]) + zero), tf.float32) * scale for q, scale in codes]
        if depthwise:
            return tf.reshape(values[0], shape)
        hwio = shape[:3] + [shape[3] // groups]
        kernels = [tf.transpose(tf.reshape(v, [hwio[3]] + hwio[:3]), [1, 2, 3, 0]) for v in values]
        return kernels if groups > 1 else kernels[0]

    return read


def _kernel_reader(kernel, trainable, layout=None, groups=1):
    """`read(after, gradient=False)`: the kernel's value, reached only once tensor `after` (the layer's input, or its
    output gradient for the input gradient's read, `gradient=True`) exists.

    In the device program the converter otherwise schedules every READ_VARIABLE, and every split, flip and
    transpose of a trainable kernel, at the very start of the train step, and those copies stay alive until the
    backward. So a variable (a trainable kernel of the device program, see `layers.common.kernel_source`) is read
    when needed, once for the forward and again for the input gradient; a trainable tensor passes an identity
    ordered the same way; a frozen tensor is used as it is (a constant in the file, its flips folded there too),
    except that within `frozen_kernels_int8` a conv's (`layout` "conv" or "depthwise") input gradient dequantizes
    the forward's int8 copy (`_int8_reader`, per group for a grouped conv; a frozen dense kernel, the head of no
    method here, is left as it is).
    """
    if isinstance(kernel, tf.Variable):

        def read(after, gradient=False):
            with tf.control_dependencies([after]):
                return tf.convert_to_tensor(kernel)

        return read
    if not trainable and layout and _FROZEN_INT8.get():
        return _int8_reader(kernel, layout == "depthwise", groups)
    kernel = tf.convert_to_tensor(kernel)
    if not trainable:
        return lambda after, gradient=False: kernel

    def identity(after, gradient=False):
        with tf.control_dependencies([after]):
            return tf.identity(kernel)

    return identity


def _flipped_taps(kernel, rows, cols, after):
    """`reverse(kernel[rows, cols], [0, 1])`, computed once tensor `after` exists, as one GATHER of whole taps.

    On a trainable kernel LiteRT runs STRIDED_SLICE and REVERSE_V2 element by element (a 3x3x24x24 phase took
    40 us; the gather made TinyTL-L+B's train step 3-7% faster side by side). Without the wait the converter runs
    the gather at the step's start. A 1x1 kernel stays a (folded) identity slice: handing back the tensor itself
    kept the forward's copy of every small kernel alive through the forward (+2% static peak on mcunet)."""
    k, rest = kernel.shape[0], kernel.shape.as_list()[2:]
    if k == 1:
        return kernel[rows, cols]
    r, c = list(range(k))[rows][::-1], list(range(k))[cols][::-1]
    with tf.control_dependencies([after]):
        taps = tf.gather(tf.reshape(kernel, [k * k] + rest), [i * k + j for i in r for j in c])
    return tf.reshape(taps, [len(r), len(c)] + rest)


def _crop_for_kernel_grad(x_hw, k, stride, pads):
    """Pads that crop the padded x to the rows/cols some output window reaches (the depthwise kernel gradient's
    input): a padded size P leaves `(P - k) % stride` trailing rows that no window reaches."""
    return [(p0, p1 - (n + p0 + p1 - k) % stride) for n, (p0, p1) in zip(x_hw, pads)]


def _kernel_grad_pads(x_hw, k, stride, pads):
    """Pads giving x the s*(Ho - 1 + ceil(k/s)) rows/cols that `_kernel_grad` reads: the forward's own at stride 1;
    at stride s the forward's top/left, and a bottom/right that drops the rows no window reaches and adds the zero
    rows that complete the last phase. One PAD or slice, not a crop and then a pad: on the 3-channel input of
    FT-Full's stem an XNNPACK pad takes 0.27 ms."""
    kq = -(-k // stride)
    return [(p0, stride * ((n + p0 + p1 - k) // stride + kq) - n - p0) for n, (p0, p1) in zip(x_hw, pads)]


def _kernel_grad(xq, dy, k, stride):
    """dK[a,b,i,o] = sum over n,y,x of xq[n, s*y+a, s*x+b, i] * dy[n,y,x,o] (xq padded by `_kernel_grad_pads`):
    one conv of xq as [Cin,H,W,N] with dy as the filter [Ho,Wo,N,Cout].

    At stride s > 1, tap a = s*a' + r reads phase r of xq at a stride-1 offset a', so SPACE_TO_DEPTH puts the s*s
    phases on channels, one undilated conv computes every phase's taps (ceil(k/s)*s taps per axis, the extras on
    zero padding, cropped), and a transpose interleaves them. Its conv does more multiply-adds than a conv with
    dy at dilation s (36 against 25 taps at k = 5), but LiteRT builds a dilated conv's im2col one batch element
    (N = 1 float) per copy: in TinyTL-L+B on mcunet the lite branches' CONV_2D share of a train step's op time fell
    from 27% to 24%."""
    cin, (_, _, _, cout) = xq.shape[-1], dy.shape
    filters = tf.transpose(dy, [1, 2, 0, 3])
    if stride == 1:
        return tf.transpose(tf.nn.conv2d(tf.transpose(xq, [3, 1, 2, 0]), filters, 1, "VALID"), [1, 2, 0, 3])
    s, kq = stride, -(-k // stride)
    phases = tf.nn.space_to_depth(xq, s)  # [N, Ho-1+kq, Wo-1+kq, s*s*Cin], channel (r_h*s + r_w)*Cin + i
    g = tf.nn.conv2d(tf.transpose(phases, [3, 1, 2, 0]), filters, 1, "VALID")  # [s*s*Cin, kq, kq, Cout]
    g = tf.transpose(tf.reshape(g, [s, s, cin, kq, kq, cout]), [3, 0, 4, 1, 2, 5])  # [a', r_h, b', r_w, Cin, Cout]
    return tf.reshape(g, [kq * s, kq * s, cin, cout])[:k, :k]


def conv2d(x, kernel, *, stride=1, pads=((0, 0), (0, 0)), groups=1, kernel_grad=True):
    """Zero-pad by `pads` ((top, bottom), (left, right)), then a VALID conv.

    kernel: [k, k, Cin // groups, Cout]. Grouped convs are split into `groups` plain convs and concatenated
    (TFLite's CONV_2D has no reliable grouped form). Backward: dx by `_input_grad` with the spatially flipped,
    in/out-swapped kernel; dK (only if `kernel_grad`) is `_kernel_grad` per group.
    """
    x, read = tf.convert_to_tensor(x), _kernel_reader(kernel, kernel_grad, "conv", groups)
    k = kernel.shape[0]
    x_pads = _kernel_grad_pads(x.shape[1:3], k, stride, pads)

    @tf.custom_gradient
    def op(x, kernel):
        x_saved = x if kernel_grad else None

        def grad(dy):
            value = read(dy, gradient=True)
            kernels = value if isinstance(value, list) else _groups(value, groups)  # int8 codes come per group

            def correlate(t, rows, cols):
                return _conv(t, [tf.transpose(_flipped_taps(kk, rows, cols, dy), [0, 1, 3, 2]) for kk in kernels])

            dx = _input_grad(dy, x.shape[1:3], k, stride, pads, x.shape[-1], correlate)
            if not kernel_grad:
                return dx, None
            xs, dys = _groups(_pad(x_saved, x_pads), groups), _groups(dy, groups)
            dk = tf.concat([_kernel_grad(a, b, k, stride) for a, b in zip(xs, dys)], axis=-1)
            return dx, dk

        return _conv(_pad(x, pads), _groups(kernel, groups), stride=stride), grad

    return op(x, read(x))


def depthwise_conv2d(x, kernel, *, stride=1, pads=((0, 0), (0, 0)), kernel_grad=True):
    """Zero-pad, then a VALID depthwise conv. kernel: [k, k, C, 1].

    Backward: dx by `_input_grad` with depthwise convs of the flipped kernel. dK (only if
    `kernel_grad`) folds the batch into channels ([1,H,W,N*C] input, dy as a [Ho,Wo,N*C,1] filter at dilation =
    stride) and sums over N. TF's CPU kernel has no dilation, so tf.nn.depthwise_conv2d wraps it in
    SpaceToBatchND/BatchToSpaceND, which the converter folds back into DEPTHWISE_CONV_2D's dilation.
    """
    x, read = tf.convert_to_tensor(x), _kernel_reader(kernel, kernel_grad, "depthwise")
    k, c = kernel.shape[0], kernel.shape[2]
    x_pads = _crop_for_kernel_grad(x.shape[1:3], k, stride, pads)

    @tf.custom_gradient
    def op(x, kernel):
        x_saved = x if kernel_grad else None

        def grad(dy):
            kk = read(dy, gradient=True)

            def correlate(t, rows, cols):
                return tf.nn.depthwise_conv2d(t, _flipped_taps(kk, rows, cols, dy), [1, 1, 1, 1], "VALID")

            dx = _input_grad(dy, x.shape[1:3], k, stride, pads, c, correlate)
            if not kernel_grad:
                return dx, None
            xp = _pad(x_saved, x_pads)
            _, hp, wp, _ = xp.shape
            _, ho, wo, _ = dy.shape
            xf = tf.reshape(tf.transpose(xp, [1, 2, 0, 3]), [1, hp, wp, -1])
            df = tf.reshape(tf.transpose(dy, [1, 2, 0, 3]), [ho, wo, -1, 1])
            g = tf.nn.depthwise_conv2d(xf, df, [1, 1, 1, 1], "VALID", dilations=[stride, stride])
            return dx, tf.reshape(tf.reduce_sum(tf.reshape(g, [k, k, -1, c]), axis=2), [k, k, c, 1])

        return tf.nn.depthwise_conv2d(_pad(x, pads), kernel, [1, stride, stride, 1], "VALID"), grad

    return op(x, read(x))


def dense(x, kernel, *, kernel_grad=True):
    """x: [N, Cin], kernel: [Cin, Cout]. Backward: dx = dy K^T; dK = x^T dy only if `kernel_grad`."""
    x, read = tf.convert_to_tensor(x), _kernel_reader(kernel, kernel_grad)

    @tf.custom_gradient
    def op(x, kernel):
        x_saved = x if kernel_grad else None

        def grad(dy):
            dk = tf.matmul(x_saved, dy, transpose_a=True) if kernel_grad else None
            return tf.matmul(dy, read(dy), transpose_b=True), dk

        return tf.matmul(x, kernel), grad

    return op(x, read(x))


def channel_affine(x, scale, bias, *, scale_grad=True):
    """y = x * scale + bias per channel (last axis); `scale` or `bias` may be None.

    Backward: dx = dy * scale; dbias = sum(dy); dscale = sum(dy * x), the only use of x, so x is kept only if
    `scale_grad`. Sums run over every axis but the last (scale and bias are [C]).
    """
    x = tf.convert_to_tensor(x)
    params = [tf.convert_to_tensor(p) for p in (scale, bias) if p is not None]
    has_scale, has_bias = scale is not None, bias is not None
    axes = list(range(x.shape.rank - 1))

    @tf.custom_gradient
    def op(x, *params):
        s = params[0] if has_scale else None
        x_saved = x if has_scale and scale_grad else None
        y = x * s if has_scale else x
        if has_bias:
            y = y + params[-1]

        def grad(dy):
            sums = []
            if has_scale:
                sums.append(tf.reduce_sum(dy * x_saved, axes) if scale_grad else None)
            if has_bias:
                sums.append(tf.reduce_sum(dy, axes))
            # dx only after the sums: otherwise the converter may run them at the end of the backward and keep every
            # layer's dy alive until then
            with tf.control_dependencies([t for t in sums if t is not None]):
                dx = tf.identity(dy * s if has_scale else dy)
            return [dx] + sums

        return y, grad

    return op(x, *params)
