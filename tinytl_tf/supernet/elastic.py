"""Elastic layers of the once-for-all super-net (Cai et al., ICLR 2020): an MB block holding every sub-block of
its slot.

Elasticity lives only here. A sub-net is never exported from these layers: `SuperNet.extract_subnet` rebuilds it
from the plain `tinytl_tf.layers` with `subblock_weights`, so the export sees ordinary layers only.

The active choices arrive as scalar int tensors (read from the super-net's variables or sampled in-graph), so
changing the sub-net never retraces. Every choice is applied exactly: a smaller kernel is embedded with zeros in
the stored one (with centred padding a k x k kernel inside a K x K one gives the same output for symmetric and
for TF "same" padding), a narrower expansion replaces the dropped channels by their calibrated means before the
projection, and a groups-4 lite conv is the groups-2 conv with its off-block-diagonal taps zeroed.

Mean compensation: a folded BatchNorm's bias centres its layer's output for the full kernel and the full set of
expanded channels. Cropping taps or dropping channels removes their mean contribution too, and nothing re-centres
the output (once-for-all re-estimates its BatchNorm statistics per sub-net; a folded, frozen net cannot), so the
shift compounds through the blocks: on mcunet-5fps at 96 px random sub-nets' pooled features were twice the
full net's norm and nearly orthogonal to them. `SuperNet.calibrate` measures the full net's per-channel means on
training images; a smaller kernel then keeps the stored kernel's response to the mean input (a bias term) and a
dropped channel contributes its mean (a projection bias term), both folded into the biases of extracted sub-nets.
Uncalibrated (all means zero), both terms vanish.
"""

import keras
import numpy as np
import tensorflow as tf

from tinytl_tf.layers import FoldedConv2D, LiteResidual, MBBlock
from tinytl_tf.layers.common import kernel_source, value

LITE_STORED_KERNEL, LITE_STORED_GROUPS = 5, 2


def _select(choices, active, candidates):
    """The candidate whose choice equals the scalar tensor `active` (a gather, no retrace per choice)."""
    if len(candidates) == 1:
        return candidates[0]
    index = tf.argmax(tf.cast(tf.equal(tf.constant(choices, tf.int32), active), tf.int32))
    return tf.gather(tf.stack(candidates), index)


def _numpy(tensor):
    return keras.ops.convert_to_numpy(tensor)


def _embed(kernel, size):
    """A k x k kernel zero-padded to size x size (centred)."""
    p = (size - kernel.shape[0]) // 2
    return tf.pad(kernel, [[p, p], [p, p], [0, 0], [0, 0]]) if p else kernel


@keras.saving.register_keras_serializable(package="tinytl_tf")
class ElasticDepthwise(FoldedConv2D):
    """A depthwise FoldedConv2D stored at its largest kernel, runnable at any of `kernel_choices`.

    As in once-for-all, the k x k kernel is the centre of the next larger one passed through a (k^2 x k^2)
    transform matrix, per channel, largest to smallest (7 -> 5 -> 3); the matrices start at identity (a plain
    centre crop) and train only with the kernel. Matrix convention as once-for-all's
    `F.linear(crop, M)`: transformed = crop_flat @ M^T with taps flattened row-major.
    """

    def __init__(self, filters, kernel_size, kernel_choices, strides=1, **kwargs):
        super().__init__(filters, kernel_size, strides, depthwise=True, **kwargs)
        self.kernel_choices = tuple(sorted(kernel_choices))
        if max(self.kernel_choices) != kernel_size:
            raise ValueError(
                f"{self.name}: the stored kernel {kernel_size} must be the largest of {self.kernel_choices}"
            )

    def build(self, input_shape):
        super().build(input_shape)
        # per-channel mean of the input, set by `SuperNet.calibrate`
        self.input_mean = self.add_weight(
            name="input_mean", shape=(self.filters,), initializer="zeros", trainable=False
        )
        ks = self.kernel_choices
        self.transforms = {
            (big, small): self.add_weight(
                name=f"transform_{big}to{small}",
                shape=(small * small, small * small),
                initializer="identity",
                trainable=self.train_kernel,
            )
            for small, big in zip(ks, ks[1:])
        }

    def kernel_for(self, size):
        """The transformed [size, size, C, 1] kernel of choice `size` (a Python int)."""
        w = value(self.kernel)
        c = w.shape[2]
        for (big, small), matrix in sorted(self.transforms.items(), reverse=True):
            if big <= size:
                break
            s = (big - small) // 2
            flat = tf.reshape(tf.transpose(w[s : s + small, s : s + small, :, 0], [2, 0, 1]), [c, small * small])
            flat = tf.matmul(flat, value(matrix), transpose_b=True)
            w = tf.transpose(tf.reshape(flat, [c, small, small]), [1, 2, 0])[..., None]
        return w

    def bias_for(self, kernel):
        """The bias for the [k, k, C, 1] `kernel` of a choice: the stored bias plus the (scaled) response of the
        taps the choice lost to the calibrated mean input, so its output keeps the stored kernel's mean."""
        lost = tf.reduce_sum(value(self.kernel), [0, 1, 3]) - tf.reduce_sum(kernel, [0, 1, 3])
        return value(self.bias) + value(self.scale) * lost * value(self.input_mean)

    def call(self, x, kernel_size):
        k = self.kernel_size
        kernel = _select(self.kernel_choices, kernel_size, [_embed(self.kernel_for(c), k) for c in self.kernel_choices])
        return self.convolve(x, kernel, self.bias_for(kernel))

    def get_config(self):
        config = {**super().get_config(), "kernel_choices": list(self.kernel_choices)}
        del config["depthwise"]
        return config


def lite_kernel_for(stored, size, groups):
    """The static lite conv kernel [size, size, C / groups, C] of a stored [5, 5, C / 2, C] groups-2 kernel
    (numpy): the centre `size` x `size` taps, and for groups 4 the block-diagonal half of each groups-2 group
    (output channel o of group-4 group o // (C / 4) reads the matching quarter of its groups-2 group's inputs)."""
    s = (stored.shape[0] - size) // 2
    w = stored[s : s + size, s : s + size]
    if groups == LITE_STORED_GROUPS:
        return w
    ratio = groups // LITE_STORED_GROUPS
    c = w.shape[-1]
    q = c // groups
    parts = w.reshape(size, size, ratio, q, c)
    return np.stack([parts[:, :, (o // q) % ratio, :, o] for o in range(c)], axis=-1)


@keras.saving.register_keras_serializable(package="tinytl_tf")
class ElasticLiteConv(FoldedConv2D):
    """A lite branch's first conv stored at kernel 5 / groups 2, runnable at kernel `kernel_choices` and groups
    `groups_choices`: kernel 3 is the centre crop of the 5 x 5 kernel and groups 4 the block-diagonal part of the
    groups-2 kernel (`lite_kernel_for`). In-graph both are 0/1 masks on the stored kernel, so gradients reach
    exactly the taps the sub-net uses."""

    def __init__(self, filters, strides=1, groups_choices=(2, 4), kernel_choices=(3, 5), **kwargs):
        super().__init__(filters, LITE_STORED_KERNEL, strides, groups=LITE_STORED_GROUPS, **kwargs)
        self.groups_choices, self.kernel_choices = tuple(groups_choices), tuple(kernel_choices)

    def build(self, input_shape):
        super().build(input_shape)
        cin, k = input_shape[-1], LITE_STORED_KERNEL
        self.spatial_masks = {}  # {kernel: [5, 5, 1, 1]}
        for size in self.kernel_choices:
            m = np.zeros((k, k, 1, 1), np.float32)
            s = (k - size) // 2
            m[s : s + size, s : s + size] = 1
            self.spatial_masks[size] = m
        local = cin // LITE_STORED_GROUPS
        self.group_masks = {}  # {groups: [1, 1, C / 2, C]}
        for g in self.groups_choices:
            q = cin // g
            ratio = g // LITE_STORED_GROUPS
            same_part = (np.arange(local)[:, None] // q) == (np.arange(cin)[None, :] // q) % ratio
            self.group_masks[g] = same_part.astype(np.float32)[None, None]

    def call(self, x, kernel_size, groups):
        spatial = [tf.constant(self.spatial_masks[k]) for k in self.kernel_choices]
        grouped = [tf.constant(self.group_masks[g]) for g in self.groups_choices]
        mask = _select(self.kernel_choices, kernel_size, spatial) * _select(self.groups_choices, groups, grouped)
        return self.convolve(x, kernel_source(self.kernel) * mask, None)

    def get_config(self):
        config = {
            **super().get_config(),
            "groups_choices": list(self.groups_choices),
            "kernel_choices": list(self.kernel_choices),
        }
        del config["kernel_size"], config["groups"], config["depthwise"]
        return config


@keras.saving.register_keras_serializable(package="tinytl_tf")
class ElasticLiteResidual(LiteResidual):
    """A lite residual branch whose first conv is an `ElasticLiteConv` (kernel {3, 5}, groups {2, 4}); the
    GroupNorms and the 1x1 conv do not depend on either choice and are shared unchanged."""

    def __init__(self, filters, strides=1, groups_choices=(2, 4), kernel_choices=(3, 5), **kwargs):
        super().__init__(filters, LITE_STORED_KERNEL, strides, LITE_STORED_GROUPS, **kwargs)
        self.groups_choices, self.kernel_choices = tuple(groups_choices), tuple(kernel_choices)

    def first_conv(self, cin, **flags):
        return ElasticLiteConv(cin, self.strides, self.groups_choices, self.kernel_choices, **flags)

    def call(self, x, size, kernel_size, groups):
        return super().call(x, size, kernel_size=kernel_size, groups=groups)

    def get_config(self):
        config = {
            **super().get_config(),
            "groups_choices": list(self.groups_choices),
            "kernel_choices": list(self.kernel_choices),
        }
        del config["kernel_size"], config["groups"]
        return config


@keras.saving.register_keras_serializable(package="tinytl_tf")
class ElasticMBBlock(MBBlock):
    """One super-net slot: the backbone's MB block (`block`, at its largest kernel and expansion) + an elastic
    lite residual, runnable as any sub-block with `call(x, kernel, mid, lite, lite_kernel, lite_groups)` (`lite`
    0 drops the lite branch: its output is multiplied by 0, so it gets no gradient either).

    Width: the sub-block keeps the first `mid` expanded channels, so `sort_channels` first orders them by
    importance. The main norms are folded per-channel affines, so replacing a channel after the depthwise
    activation by a constant (its calibrated mean, `mid_mean`) is exactly dropping it and adding that constant's
    projection to the projection's bias. (With GroupNorm in the main branch, a channel's output would depend on
    its group's statistics: whole groups would have to move together in the sort and widths would have to be
    whole groups. Folded BatchNorm has no such coupling.)
    """

    def __init__(self, block, kernel_choices, lite_groups_choices, padding="symmetric", trainable_set=None, **kwargs):
        super().__init__(block, padding, trainable_set, **kwargs)
        self.kernel_choices, self.lite_groups_choices = tuple(kernel_choices), tuple(lite_groups_choices)

    def build(self, input_shape):
        b, t = self.block, self.trainable_set
        flags = dict(padding=self.padding, **t.main_flags())
        self.expand = FoldedConv2D(b.mid, 1, activation=b.act, name="expand", **flags)
        self.expand.build(input_shape)
        mid_shape = self.expand.compute_output_shape(input_shape)
        self.depthwise = ElasticDepthwise(
            b.mid, b.kernel, self.kernel_choices, b.stride, activation=b.act, name="depthwise", **flags
        )
        self.depthwise.build(mid_shape)
        self.project = FoldedConv2D(b.out, 1, activation=b.project_act, name="project", **flags)
        self.project.build(self.depthwise.compute_output_shape(mid_shape))
        # per-channel mean of the depthwise output, set by `SuperNet.calibrate`
        self.mid_mean = self.add_weight(name="mid_mean", shape=(b.mid,), initializer="zeros", trainable=False)
        self.lite = ElasticLiteResidual(
            b.out,
            b.stride,
            self.lite_groups_choices,
            name="lite",
            **t.lite_flags(),
        )
        self.lite.build(input_shape)

    def call(self, x, kernel, mid, lite, lite_kernel, lite_groups, skip_inactive=False):
        y = self.depthwise(self.expand(x), kernel_size=kernel)
        y = tf.where(tf.range(self.block.mid) < mid, y, value(self.mid_mean))
        y = self.project(y)

        def branch():
            return self.lite(x, size=(y.shape[1], y.shape[2]), kernel_size=lite_kernel, groups=lite_groups)

        if skip_inactive:  # inference: an absent branch is not computed (`SuperNet.elastic_forward`)
            y = tf.cond(lite > 0, lambda: y + branch(), lambda: y)
        else:
            b = branch()
            y = y + b * tf.cast(lite, b.dtype)
        return y + x if self.block.shortcut else y

    def sort_channels(self):
        """Order the expanded channels by importance (L1 norm of each one's projection weights), descending,
        permuting the expand columns, depthwise filters and both folded affines alike: the block computes the
        same function, and a narrower sub-block keeps the most important channels. Returns the permutation."""
        e, d = self.expand, self.depthwise
        order = np.argsort(-np.sum(np.abs(_numpy(self.project.kernel)), axis=(0, 1, 3)), kind="stable")
        for v, axis in (
            (e.kernel, 3),
            (e.scale, 0),
            (e.bias, 0),
            (d.kernel, 2),
            (d.scale, 0),
            (d.bias, 0),
            (d.input_mean, 0),
            (self.mid_mean, 0),
            (self.project.kernel, 2),
        ):
            v.assign(np.take(_numpy(v), order, axis=axis))
        return order

    def full_width_means(self, x):
        """Per-channel means over a batch of the expansion (the depthwise input) and of the depthwise output, at
        the stored kernel and full width (what `SuperNet.calibrate` averages)."""
        e = self.expand(x)
        d = self.depthwise(e, kernel_size=self.block.kernel)
        return tf.reduce_mean(e, [0, 1, 2]), tf.reduce_mean(d, [0, 1, 2])

    def subblock_weights(self, block):
        """{path relative to the block: array} of the plain `MBBlock` of static config `block` (a sub-block of this
        slot from `space.subnet_config`, which alone decides its kernel, width and lite branch, so the config and
        its weights cannot disagree); the mean compensation is folded into the depthwise and projection biases."""
        e, d, p, lite = self.expand, self.depthwise, self.project, self.lite
        mid = block.mid
        project = _numpy(p.kernel)
        dropped = _numpy(self.mid_mean)[mid:] @ project[0, 0, mid:]
        depthwise = d.kernel_for(block.kernel)
        weights = {
            "expand/kernel": _numpy(e.kernel)[..., :mid],
            "expand/scale": _numpy(e.scale)[:mid],
            "expand/bias": _numpy(e.bias)[:mid],
            "depthwise/kernel": _numpy(depthwise)[:, :, :mid],
            "depthwise/scale": _numpy(d.scale)[:mid],
            "depthwise/bias": _numpy(d.bias_for(depthwise))[:mid],
            "project/kernel": project[:, :, :mid],
            "project/scale": _numpy(p.scale),
            "project/bias": _numpy(p.bias) + _numpy(p.scale) * dropped,
        }
        if block.lite is not None:
            weights["lite/conv1/kernel"] = lite_kernel_for(
                _numpy(lite.conv1.kernel), block.lite.kernel, block.lite.groups
            )
            weights["lite/conv2/kernel"] = _numpy(lite.conv2.kernel)
            for name, layer in (("norm1", lite.norm1), ("norm2", lite.norm2)):
                weights.update({f"lite/{name}/gamma": _numpy(layer.gamma), f"lite/{name}/beta": _numpy(layer.beta)})
        return weights

    def get_config(self):
        return {
            **super().get_config(),
            "kernel_choices": list(self.kernel_choices),
            "lite_groups_choices": list(self.lite_groups_choices),
        }
