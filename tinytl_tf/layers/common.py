"""Small helpers shared by the layers."""

import contextlib
import contextvars

import tensorflow as tf

from tinytl_tf import ops


def value(variable):
    """The variable's current value as a tensor, or None."""
    return None if variable is None else tf.convert_to_tensor(variable)


_READ_WHEN_NEEDED = contextvars.ContextVar("tinytl_read_kernels_when_needed", default=False)


@contextlib.contextmanager
def kernels_read_when_needed():
    """While tracing the device program (`tinytl_tf.export`): layers hand their kernel variables to the ops, which
    read them only when the layer runs and again for its backward, so no copy lives across the step. Elsewhere they
    pass values: a gradient inside a `tf.switch_case` branch (the super-net's resolutions) cannot read a variable."""
    token = _READ_WHEN_NEEDED.set(True)
    try:
        yield
    finally:
        _READ_WHEN_NEEDED.reset(token)


def kernel_source(variable):
    """What the conv and dense ops take as a kernel: within `kernels_read_when_needed`, a trainable kernel's backing
    tf.Variable (or the value a Keras `StatelessScope` maps it to); otherwise the value (a frozen kernel becomes a
    constant in the device program, so when it is read does not matter)."""
    return variable.value if _READ_WHEN_NEEDED.get() and variable.trainable else value(variable)


def activate(x, activation):
    if activation is None:
        return x
    if activation == "relu":
        return ops.relu(x)
    if activation == "relu6":
        return ops.relu6(x)
    raise ValueError(f"unknown activation {activation!r}; valid: None, 'relu', 'relu6'")


def conv_pads(height, width, kernel, stride, padding):
    """Explicit ((top, bottom), (left, right)) zero padding so every conv runs VALID.

    "symmetric" is PyTorch's (k-1)//2 on each side (the MCU nets were trained so); "same" is TF's SAME, which
    pads stride-2 convs on even sizes more at the bottom/right (MobileNetV1 was trained so).
    """
    if padding == "symmetric":
        p = (kernel - 1) // 2
        return ((p, p), (p, p))
    if padding == "same":

        def split(size):
            out = -(-size // stride)
            total = max((out - 1) * stride + kernel - size, 0)
            return (total // 2, total - total // 2)

        return (split(height), split(width))
    raise ValueError(f"unknown padding {padding!r}; valid: 'symmetric', 'same'")
