"""What LiteRT's training step of an exported TinyTL network will measure, predicted from its `NetConfig` alone.

The paper's analytic model (`analytic.py`) counts 4 B per trainable and 1 B per frozen parameter plus the
activations its profiler keeps. The engine (`tinytl_tf.export`, `tinytl_tf.ops`) stores more and differently, and
this module encodes its storage rules, one named term each, so a change to the engine is a change to one term:

- `variables`: every trainable tensor as a float32 resource variable, plus the optimizer's state
  (`OPTIMIZER_STATE_BYTES` per trainable parameter) and the step counter.
- `initial_values`: every variable starts from a FILL in the file; the trainables' values come from X.init.npz
  beside it, assigned by the `load` signature one variable group at a time (`tinytl_tf.export`: tensors under
  `FLAT_MAX_ELEMENTS` elements share one group, larger ones are a group each). What stays is `load`'s arena, sized
  by the largest group (`LOAD_ARENA_GROUPS` of it): LiteRT keeps every signature's arena allocated once it ran.
- `frozen_constants`: every frozen kernel in int8 (the converter's dynamic-range quantization; constants under
  `QUANTIZE_MIN_ELEMENTS` elements stay float32), stored `FROZEN_KERNEL_COPIES` times when its input gradient runs
  (once: the input gradient reads the forward's bytes, flipped / transposed per layer as it runs); frozen
  biases, folded scales and GroupNorm parameters in float32; the ReLU mask table, the resize adjoints' matrices
  and, with the 8-bit optimizer, the shared group's block index per value.
- `tables`: the flatbuffer's own tables (tensors, ops, per-channel quantization scales, names) and the ops' small
  shape and padding constants, per op of the graph, and the 8-bit optimizer's own ops per variable group.
- `arena`: the peak of live tensors of the `train` step, simulated at layer level with the engine's lifetimes:
  what each op keeps for its backward (`ops/`: a conv's input when its kernel trains, a folded norm's input when
  its scale trains, a GroupNorm's normalised input, a packed 1-bit ReLU mask), each layer's working tensors
  (input, zero-padded copy, output, the mask's float staging copy; in the backward the output gradient, its
  padded copy and stride phases, the input gradient, the weight gradient and the optimizer's temporaries), and
  the block input held for an identity shortcut or a lite branch.
- `scratch`: what the runtime adds beyond the graph's tensors: the code a first step pages in, the interpreter's
  records per op, kernel scratch (im2col, the hybrid int8 kernels' quantized inputs) and the arena's packing. The
  only term not derived from the engine's rules: three constants split from measurements (see below), plus the
  8-bit optimizer's ops at a measured 470 B each.
- `runtime_base`: what loading and running a trivial model adds to a process (`RUNTIME_BASE_BYTES`).

The sum is the dynamic figure of `tinytl_tf.memory.measure` (peak RSS of a fresh LiteRT process over its RSS after
loading, the model file's pages counted), with the builtin kernels at batch 1. Pure Python and fast (a few
milliseconds per config), so a super-net search can call `predict_train_mb` for every candidate.
"""

from dataclasses import asdict, dataclass

from tinytl_tf.config import NetConfig
from tinytl_tf.contract import ADAM8BIT_BLOCK, DEFAULT_OPTIMIZER, FLAT_MAX_ELEMENTS
from tinytl_tf.memory.analytic import MB, leaves, param_counts
from tinytl_tf.methods import method_config
from tinytl_tf.tflite_model import MIN_FILL_BYTES, QUANTIZE_MIN_ELEMENTS

F32 = 4
# Bytes of optimizer state per trainable parameter: SGD none, Adam two float32 moments, 8-bit Adam two int8 codes
# and, per block of `ADAM8BIT_BLOCK` values, two float32 scales.
OPTIMIZER_STATE_BYTES = {"sgd": 0, "adam": 8, "adam8bit": 2 + 2 * F32 / ADAM8BIT_BLOCK}
# Trainable tensors under `FLAT_MAX_ELEMENTS` elements share one variable group; `load` assigns one group per call
# and its arena holds `LOAD_ARENA_GROUPS` times the largest group (the values input, the reshaped values, the
# variable's read and the selected value), read off exported models' `load` subgraphs (ProxylessNAS-Mobile
# TinyTL-L+B: 2.80 MB, four times its 663,552-byte largest kernel plus the small tensors' group). The group's values
# read from the archive are freed before the first train step.
LOAD_ARENA_GROUPS = 4
# int8 copies of a frozen kernel whose input gradient runs: one, shared by the forward and the input gradient.
FROZEN_KERNEL_COPIES = 1
# The export shares identical constant buffers of at least `MIN_FILL_BYTES` (`tflite_model.share_identical_buffers`):
# a float kernel under it keeps a second copy of its own for the input gradient.
# Quantization parameters (scales, zero points) per quantized tensor and output channel in the flatbuffer's tables,
# measured on exported models.
QUANT_PARAM_BYTES = 24
# Flatbuffer tables per op of the graph (tensor and op records, shapes, names, the ops' small constants), measured
# on exported models: file size minus constant buffers minus quantization parameters, over the ops the walk counts
# (TinyTL-L+B: 375 on mcunet-5fps@128, 391 on ProxylessNAS-Mobile@224; the file holds about five op and tensor
# records, of every signature, per op of the walk).
TABLE_BYTES_PER_OP = 385
# What the runtime adds beyond the graph's tensors: a fixed part (the runtime code a first step pages in, about
# 0.6 MB of it file-backed, and the kernels' shared scratch: ruy's and Eigen's matrix buffers), a part per op (the
# arena planner's records per tensor, kernel state) and, when a backward runs, a part per byte of forward
# activations (kernel scratch, the arena's packing: LiteRT's planner laid ProxylessNAS-Mobile TinyTL-L+B's 6.8 MB
# static peak out in 8.6 MB). A heap profile of that model's first train step (heaptrack, 8-bit Adam) shows the
# other terms exactly: the variables' 11.84 MB, `train`'s arena 8.63 MB, `load`'s 2.80 MB; ruy 0.47 MB, Eigen
# 0.83 MB and the planner's records about 1.5 MB are this term. The three constants are the least-squares split of
# the measured residual (measured minus the other terms) of the 48 predictor cells `benchmarks/memory.py
# --predictor` recorded in docs/memory.json (four networks, six methods, SGD and Adam): in-sample 46 of 48 within
# 10% (largest error 11.0%); split from three networks and predicting the fourth, 42 of 48 within 10% (13.6%).
RUNTIME_FIXED_BYTES = 840_000
RUNTIME_BYTES_PER_OP = 854
BACKWARD_SCRATCH_FRACTION = 0.0536
# RSS growth of loading and running a trivial model (one variable, one multiply-add) in the measurement probe:
# `benchmarks/memory.py --runtime-base` measures it (0.004 MB: one page of the model; the interpreter's own
# allocations happen while loading, before the baseline).
RUNTIME_BASE_BYTES = 4_096
# Full-size temporaries of one trainable tensor's update alive at once (gradient, the values read, the new
# moments), read off the exported graphs' peaks.
UPDATE_TEMPORARIES = {"sgd": 3, "adam": 5, "adam8bit": 7}
# The 8-bit optimizer's update (dequantize, update, requantize both moments, per block) and the get / set of its
# state are ops of their own per variable group, which the layer walk does not count: 78 more ops per group in
# the file than with float Adam (ProxylessNAS-Mobile TinyTL-L+B, 32 groups: 8,948 ops against 6,439, counted in
# both exports). Each costs its flatbuffer records (the file grew 15-20 kB per group in the 12 measured pairs of
# exports, about 218 B per op) and its runtime state (464-488 B per op measured on chains of small ops,
# `benchmarks/memory.py --runtime-base`).
ADAM8BIT_OPS_PER_GROUP = 78
TABLE_BYTES_PER_FILE_OP = 218
RUNTIME_BYTES_PER_FILE_OP = 470
MASK_TABLE_BYTES = 256 * 8 + 8 * F32  # the ReLU mask's unpacking table (bool) and packing vector (float)


@dataclass(frozen=True)
class Prediction:
    """Predicted LiteRT training memory of one network, by storage term (bytes; MB = 1e6 bytes)."""

    variables: int
    initial_values: int
    frozen_constants: int
    tables: int
    arena: int
    scratch: int
    runtime_base: int
    optimizer: str
    frozen_bits: int

    @property
    def file_bytes(self):
        """The `.tflite` file's size: constants and tables (the initial values are beside it)."""
        return self.frozen_constants + self.tables

    @property
    def total_bytes(self):
        return self.variables + self.initial_values + self.file_bytes + self.arena + self.scratch + self.runtime_base

    @property
    def total_mb(self):
        return self.total_bytes / MB

    def to_dict(self):
        return {**asdict(self), "file_bytes": self.file_bytes, "total_bytes": self.total_bytes}


def _ceil_div(a, b):
    return -(-a // b)


class _Walk:
    """The engine's train step at layer level: constants, op count and the arena's live bytes, in one pass over
    the forward and one over the backward (batch 1, float32 activations)."""

    def __init__(self, cfg, optimizer, frozen_bits):
        self.cfg, self.t = cfg, cfg.trainable
        self.state = OPTIMIZER_STATE_BYTES[optimizer]
        self.optimizer = optimizer
        self.frozen_bits = frozen_bits
        self.constants = 0
        self.quant_params = 0
        self.ops = 0
        self.saved = 0  # kept for the backward so far
        self.peak = 0
        self.backward = []  # closures, run in reverse: each returns (working bytes, saved bytes it releases)
        self.grad = False  # does the tensor flowing now depend on a trainable tensor upstream?
        self.trainable_sizes = []  # elements of each trainable tensor

    def _small_and_large(self):
        """The trainable tensors' sizes split as `tinytl_tf.export` groups them: those sharing one variable group
        (under `FLAT_MAX_ELEMENTS` elements) and those with a group each."""
        small = [n for n in self.trainable_sizes if n < FLAT_MAX_ELEMENTS]
        return small, [n for n in self.trainable_sizes if n >= FLAT_MAX_ELEMENTS]

    def largest_load_group(self):
        """Elements of the largest variable group `load` assigns: all small tensors together, or one large one."""
        small, large = self._small_and_large()
        return max([sum(small)] + large)

    def groups(self):
        """Number of variable groups: the small tensors' shared one and each large tensor."""
        small, large = self._small_and_large()
        return int(bool(small)) + len(large)

    def block_ids(self):
        """Bytes of the 8-bit optimizer's block index per value of the shared group (`ops.adam8bit.ConcatBlocks`:
        an int32 constant, so that a block never spans two tensors), when several tensors share it."""
        small, _ = self._small_and_large()
        return 4 * sum(small) if self.optimizer == "adam8bit" and len(small) > 1 else 0

    # -- constants -------------------------------------------------------------------------------------------
    def _kernel_const(self, elements, channels, copies):
        if self.frozen_bits == 32 or elements < QUANTIZE_MIN_ELEMENTS:
            self.constants += copies * F32 * elements
        else:
            self.constants += copies * elements * self.frozen_bits // 8
            self.quant_params += copies * QUANT_PARAM_BYTES * channels

    def _frozen_kernel(self, k, cin, cout, groups, depthwise, stride, needs_dx):
        """The forward kernel per group and, when the input gradient runs, its flipped copy per stride phase."""
        per_group = k * k * (1 if depthwise else (cin // groups) * (cout // groups))
        n_groups = 1 if depthwise else groups
        elements = per_group if not depthwise else k * k * cin
        for _ in range(n_groups):
            self._kernel_const(elements, cout // n_groups, 1)
            float_kernel = self.frozen_bits == 32 or elements < QUANTIZE_MIN_ELEMENTS
            if needs_dx and FROZEN_KERNEL_COPIES == 1 and float_kernel and F32 * elements < MIN_FILL_BYTES:
                self._kernel_const(elements, cout // n_groups, 1)  # too small to share: the gradient's own copy
        if not needs_dx or FROZEN_KERNEL_COPIES < 2:
            return
        taps = [len(range(r, k, stride)) for r in range(stride)] if stride > 1 else [k]
        per_tap = 1 if depthwise else (cin // groups) * (cout // groups)
        chans = cin if depthwise else cin // groups
        for th in taps:
            for tw in taps:
                if th and tw:
                    for _ in range(n_groups):
                        self._kernel_const(th * tw * (cin if depthwise else per_tap), chans, FROZEN_KERNEL_COPIES - 1)

    # -- the arena ---------------------------------------------------------------------------------------------
    def _pads(self, h, k, stride):
        """The forward's zero padding (before, after) along one axis (`layers.common.conv_pads`)."""
        if self.cfg.padding == "symmetric":
            return (k - 1) // 2, (k - 1) // 2
        total = max((_ceil_div(h, stride) - 1) * stride + k - h, 0)
        return total // 2, total - total // 2

    def _kernel_grad_input(self, h, k, stride, depthwise):
        """Rows (= columns) of the input a trainable kernel's gradient reads: the forward keeps x padded or cropped
        to them (`ops.conv`: the converter moves that pad, and the transpose beside it, into the forward)."""
        p0, p1 = self._pads(h, k, stride)
        padded = h + p0 + p1
        rows = padded - (padded - k) % stride if depthwise else stride * ((padded - k) // stride + _ceil_div(k, stride))
        return rows * rows

    def _at(self, working, held=0):
        """Live bytes while an op runs: what is kept for the backward, `held`, and the op's `working` tensors."""
        self.peak = max(self.peak, self.saved + held + working)

    def conv(self, h, cin, cout, k, stride, groups, depthwise, train_kernel, held, pads_explicit):
        """A conv of `FoldedConv2D` / the lite branch; returns the output size."""
        ho = _ceil_div(h, stride)
        x, y = F32 * h * h * cin, F32 * ho * ho * cout
        params = k * k * (cin if depthwise else cin // groups * cout)
        needs_dx = self.grad
        if train_kernel:
            self.trainable_sizes.append(params)
        else:
            self._frozen_kernel(k, cin, cout, groups, depthwise, stride, needs_dx)
        padded = F32 * (h + k - 1) ** 2 * cin if (pads_explicit and k > 1) else 0
        split = 2 * x if groups > 1 and not depthwise else 0  # SPLIT's parts, then CONCATENATION's output
        self._at(x + padded + y + split + (F32 * params if train_kernel else 0), held)
        self.ops += 2 + (groups if groups > 1 and not depthwise else 0) + (1 if padded else 0)
        keep = F32 * self._kernel_grad_input(h, k, stride, depthwise) * cin if train_kernel else 0
        self.saved += keep
        recorded = needs_dx or train_kernel
        if recorded:

            def back(x=x, y=y, params=params, keep=keep, train=train_kernel, dx=needs_dx):
                dy_pad = F32 * (ho + k - 1) ** 2 * (cout if not depthwise else cin) if k > 1 else 0
                phases = x if stride > 1 else 0
                work = y + (dy_pad + x + phases if dx else 0)
                if train:
                    work += F32 * params * UPDATE_TEMPORARIES[self.optimizer]
                return work, keep

            self.backward.append(back)
            self.ops += (4 + (3 * stride * stride if stride > 1 else 0) if needs_dx else 0) + (
                6 + (8 if self.state else 2) if train_kernel else 0
            )
        self.grad = self.grad or train_kernel
        return ho

    def affine(self, numel, channels, train_scale, train_bias, folded, held):
        """A folded norm's per-channel scale (unless folded into the frozen kernel) and bias."""
        self.trainable_sizes += [channels] * (int(train_bias) + int(train_scale and not folded))
        if not train_bias:
            self.constants += F32 * channels
        if folded:  # the scale is in the kernel; a trainable bias is added (and summed in the backward) alone
            if train_bias:
                self._at(2 * F32 * numel, held)
                self.ops += 1
                self.backward.append(lambda y=F32 * numel: (2 * y, 0))
                self.grad = True
            elif self.grad:
                self.backward.append(lambda y=F32 * numel: (2 * y, 0))
            return
        if not train_scale:
            self.constants += F32 * channels
        y = F32 * numel
        self._at(3 * y, held)
        self.ops += 2
        keep = y if train_scale else 0
        self.saved += keep
        if self.grad or train_scale or train_bias:
            self.backward.append(lambda y=y, keep=keep: (3 * y, keep))
        self.grad = self.grad or train_scale or train_bias

    def activation(self, numel, held):
        """ReLU / ReLU6: when a backward runs through it, the 1-bit mask packed 8 to a byte."""
        if not self.grad:
            return
        y = F32 * numel
        mask = _ceil_div(numel, 8)
        self._at(2 * y + 2 * numel, held)  # output, float staging copy of the mask, two bool comparisons
        self.saved += mask
        self.ops += 7
        self.backward.append(lambda y=y, mask=mask, numel=numel: (2 * y + 2 * numel, mask))

    def group_norm(self, numel, channels, train_gamma, train_beta, held):
        self.trainable_sizes += [channels] * (int(train_gamma) + int(train_beta))
        if not train_gamma:
            self.constants += F32 * channels
        if not train_beta:
            self.constants += F32 * channels
        y = F32 * numel
        self._at(4 * y, held)
        self.ops += 12
        grad = self.grad or train_gamma or train_beta
        keep = y if grad else 0  # x-hat
        self.saved += keep
        if grad:
            self.backward.append(lambda y=y, keep=keep: (5 * y, keep))
            self.ops += 14
        self.grad = grad

    def folded(self, h, cin, cout, k, stride, act, depthwise, held):
        t = self.t
        pads_explicit = stride > 1 or self.cfg.padding == "same" and k > 1 and stride > 1
        ho = self.conv(h, cin, cout, k, stride, 1, depthwise, t.main_kernel, held, pads_explicit)
        numel = ho * ho * cout
        self.affine(numel, cout, t.main_scale, t.main_bias, not (t.main_kernel or t.main_scale), held)
        if act:
            self.activation(numel, held)
        return ho

    def lite(self, h_in, c_in, ho, c_out, b, held):
        """The lite branch (pool, group conv, GN, ReLU, 1x1 conv, GN, resize), run after the main branch."""
        t, lite = self.t, b.lite
        outer = self.grad
        hp = h_in // 2
        self._at(F32 * (h_in * h_in + hp * hp) * c_in, held)
        self.ops += 1
        hl = self.conv(hp, c_in, c_in, lite.kernel, b.stride, lite.groups, False, t.lite_kernel, held, True)
        self.group_norm(hl * hl * c_in, c_in, t.lite_gamma, t.lite_beta, held)
        self.activation(hl * hl * c_in, held)
        self.conv(hl, c_in, c_out, 1, 1, 1, False, t.lite_kernel, held, False)
        self.group_norm(hl * hl * c_out, c_out, t.lite_gamma, t.lite_final_beta, held)
        if self.grad:
            self.constants += F32 * (ho * hl) * 2  # the resize adjoint's two interpolation matrices
        self._at(F32 * (hl * hl + 2 * ho * ho) * c_out, held)
        self.ops += 2
        self.grad = self.grad or outer

    def run(self):
        cfg, t = self.cfg, self.t
        h, c = cfg.resolution, 3
        self._at(F32 * h * h * c)
        s = cfg.stem
        h = self.folded(h, c, s.out, s.kernel, s.stride, s.act, False, 0)
        c = s.out
        for b in cfg.blocks:
            h_in, c_in = h, c
            held = F32 * h_in * h_in * c_in if (b.shortcut or b.lite is not None) else 0
            grad_in = self.grad
            if b.mid is not None:
                h = self.folded(h, c, b.mid, 1, 1, b.act, False, held)
                c = b.mid
            h = self.folded(h, c, c, b.kernel, b.stride, b.act, True, held)
            h = self.folded(h, c, b.out, 1, 1, b.project_act, False, held)
            grad_main = self.grad
            c = b.out
            if b.lite is not None:
                self.grad = grad_in
                self.lite(h_in, c_in, h, c, b, held + F32 * h * h * c)
                self.grad = self.grad or grad_main
            self.ops += int(b.shortcut) + int(b.lite is not None)
        if cfg.feature_mix is not None:
            f = cfg.feature_mix
            h = self.folded(h, c, f.out, f.kernel, f.stride, f.act, False, 0)
            c = f.out
        n = cfg.num_classes
        self._at(F32 * (h * h * c + c))
        if t.head:
            self.trainable_sizes += [c * n, n]
            self.saved += F32 * c
            # the head's update runs first in the backward: gradient, reads and optimizer temporaries
            self._at(F32 * (c * n) * (3 + (3 if self.state else 0)))
        self.ops += 12 + (10 if self.state else 3)
        # backward, last layer first
        for back in reversed(self.backward):
            work, release = back()
            self._at(work)
            self.saved -= release
        return self.peak


def predict_train(cfg, optimizer=DEFAULT_OPTIMIZER, frozen_bits=8):
    """The `Prediction` of network `cfg` (a NetConfig whose `trainable` set says what trains) trained in LiteRT
    with `optimizer` ("sgd", "adam" or "adam8bit"; default the export's), frozen kernels stored in `frozen_bits`
    (8 or 32), at batch 1."""
    if not isinstance(cfg, NetConfig):
        raise TypeError(f"predict_train() needs a NetConfig, got {type(cfg).__name__}")
    if optimizer not in OPTIMIZER_STATE_BYTES:
        raise ValueError(f"unknown optimizer {optimizer!r}; valid: {', '.join(OPTIMIZER_STATE_BYTES)}")
    if frozen_bits not in (8, 32):
        raise ValueError(f"the export stores frozen kernels in 8 or 32 bits, got {frozen_bits!r}")
    trainable, _ = param_counts(cfg)
    walk = _Walk(cfg, optimizer, frozen_bits)
    arena = walk.run()
    forward_activations = F32 * sum(leaf.out_numel for leaf in leaves(cfg))
    optimizer_ops = ADAM8BIT_OPS_PER_GROUP * walk.groups() if optimizer == "adam8bit" else 0
    return Prediction(
        variables=F32 * trainable + round(OPTIMIZER_STATE_BYTES[optimizer] * trainable) + F32,
        initial_values=LOAD_ARENA_GROUPS * F32 * walk.largest_load_group(),
        frozen_constants=walk.constants + (MASK_TABLE_BYTES if walk.backward else 0) + walk.block_ids(),
        tables=TABLE_BYTES_PER_OP * walk.ops + walk.quant_params + TABLE_BYTES_PER_FILE_OP * optimizer_ops,
        arena=arena,
        scratch=RUNTIME_FIXED_BYTES
        + RUNTIME_BYTES_PER_OP * walk.ops
        + RUNTIME_BYTES_PER_FILE_OP * optimizer_ops
        + (round(BACKWARD_SCRATCH_FRACTION * forward_activations) if walk.backward else 0),
        runtime_base=RUNTIME_BASE_BYTES,
        optimizer=optimizer,
        frozen_bits=frozen_bits,
    )


def predict_train_mb(
    cfg, optimizer=DEFAULT_OPTIMIZER, frozen_bits=8, method=None, num_classes=None, lite_residual=None
):
    """Predicted LiteRT training memory (MB = 1e6 B, batch 1) of a network: what `memory --measure` would measure.

    `cfg`: a NetConfig; with `method` it is first turned into that method's network (`methods.method_config`:
    `num_classes`, `lite_residual` as there), e.g. the super-net search's sub-net config with method="tinytl-lb".
    Without `method`, `cfg.trainable` says what trains.
    """
    if method is not None:
        cfg = method_config(cfg, method, num_classes or cfg.num_classes, lite_residual)
    return predict_train(cfg, optimizer, frozen_bits).total_mb


def predicted_table(
    backbone,
    resolution=None,
    num_classes=102,
    methods=None,
    lite_for_all=True,
    optimizer=DEFAULT_OPTIMIZER,
    frozen_bits=8,
):
    """The `Prediction` of every method's network on a backbone, in the order of `methods` (default all), each
    network as `memory.method_table` and `memory --measure` build it."""
    from tinytl_tf.contract import METHODS

    return [
        predict_train(
            method_config(
                backbone, m, num_classes, lite_residual=True if lite_for_all else None, resolution=resolution
            ),
            optimizer,
            frozen_bits,
        )
        for m in methods or METHODS
    ]
