"""Math primitives of every TinyTL network, each with a gradient built from TFLite builtin ops.

Layers call only these functions, so the same code trains in Keras `model.fit` and exports to a
builtins-only LiteRT training graph. The `*_grad` flags are trace-time facts: when a weight is frozen its
gradient is not built, and the forward input is not kept alive for it (TinyTL's memory saving).
`tinytl_tf.ops.adam8bit` is the one optimizer rule both sides share the same way (Adam with 8-bit moments).
"""

from tinytl_tf.ops.activations import relu, relu6
from tinytl_tf.ops.conv import channel_affine, conv2d, dense, depthwise_conv2d
from tinytl_tf.ops.loss import softmax_cross_entropy
from tinytl_tf.ops.norm import group_norm
from tinytl_tf.ops.resample import avg_pool_2x2, global_avg_pool, resize_bilinear

__all__ = [
    "avg_pool_2x2",
    "channel_affine",
    "conv2d",
    "dense",
    "depthwise_conv2d",
    "global_avg_pool",
    "group_norm",
    "relu",
    "relu6",
    "resize_bilinear",
    "softmax_cross_entropy",
]
