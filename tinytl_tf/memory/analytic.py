"""The analytic training-memory model of TinyTL (Cai et al., NeurIPS 2020, Sec. 3.1), computed from a `NetConfig` alone.

    memory = batch * peak_activation_bytes(batch 1) + param_bytes
    param_bytes = 4 * trainable_params + frozen_bits / 8 * frozen_params

Pure Python, no TensorFlow and no Keras model: `leaves` walks the network the builder would build
(`tinytl_tf.backbones.builder`) leaf by leaf in execution order, and `training_memory` replays the reference
profiler's bookkeeping on that walk; each leaf also carries its weight tensors' sizes, so `param_counts` is a sum over
the same walk. It is cheap enough for the super-net search to call thousands of times.

The rules, per leaf (sizes are numbers of float32 elements at batch 1):
- saved (kept for the backward pass): conv / linear 4*in if its weight trains; norm 4*in if its scale trains
  (a bias/beta-only norm needs nothing); ReLU/ReLU6 in/8 (1-bit mask) whenever the method runs any backward
  pass; pooling, resize, dropout and adds save nothing.
- tmp (working set while it runs): conv 4*in + floor(4*out / groups); linear 4*(in + out); norm and
  activation 4*in; pooling, resize, dropout, adds 0.
- candidate before a leaf = tmp + saved so far + 4*numel(block input) while inside a block with an identity
  shortcut; peak = max of the candidates; then the leaf's saved is added.

Interpretation details, each fixed by the reference profiler (mit-han-lab/tinyml, `memory_cost_profiler.py`)
and confirmed by the paper's ProxylessNAS-Mobile memory figures (`tests/test_memory_analytic.py` reproduces all
43 numbers to 0.1 MB):
- "Any backward runs" is one flag per network, not per leaf: every ReLU mask counts as soon as anything but the
  head trains, even the stem's ReLU under TinyTL-L (whose first trainable tensor is in block 1's lite branch).
  Under FT-Last nothing before the head needs a backward: no masks; only the head's linear saves its input.
- A conv's `groups` is its real group count: a depthwise conv has groups = channels, so its tmp output term is
  one channel's map (4*out/C); the lite branch's first conv has the lite groups (2 by default). The division is
  floored, as in the reference (`y.numel() * 4.0 // groups`).
- The lite branch runs after the main branch and inside the block: its leaves carry the block-input residual
  term when the block has an identity shortcut.
- The main branch's norm is our folded per-channel scale + bias: a 'norm' leaf whose input is the conv output.
  The lite branch's norms are GroupNorms; both follow the same norm rule.
- The classifier's global pool and dropout are leaves with no cost; its linear layer sees the pooled features
  (C elements), saves 4*C when the head trains (every method) and has tmp 4*(C + classes).
- Sizes follow the builder: a conv outputs ceil(in / stride) (symmetric and SAME padding agree), the lite branch
  pools to floor(H / 2), its conv outputs ceil(floor(H / 2) / stride) and is resized to the main output.
"""

from dataclasses import asdict, dataclass
from typing import NamedTuple

from tinytl_tf.backbones.registry import backbone_config
from tinytl_tf.config import NetConfig

BYTES = 4  # float32 activations and trainable parameters
MB = 1e6


class Leaf(NamedTuple):
    """One leaf layer of the network at batch `batch` (numels are element counts, bytes are float32 bytes)."""

    kind: str  # 'conv', 'norm', 'relu', 'relu6', 'pool', 'resize', 'add', 'dropout', 'linear'
    name: str  # e.g. 'block_3/lite/conv1', 'stem/norm', 'head/linear'
    in_numel: int
    out_numel: int
    groups: int  # of a conv (1 for every other leaf)
    saved_bytes: int
    tmp_bytes: int
    residual_numel: int  # numel of the block input while inside a block with an identity shortcut, else 0
    params: tuple = ()  # ((count, trains), ...) of its weight tensors: a conv's kernel, a norm's scale and bias


@dataclass(frozen=True)
class MemoryReport:
    """Training memory of one network config (bytes; MB = 1e6 bytes)."""

    params_bytes: float
    activation_bytes: float  # batch_size * peak activation bytes at batch 1
    total_bytes: float
    trainable_params: int
    frozen_params: int
    peak_bytes: int  # the peak at batch 1
    batch_size: int
    frozen_bits: int

    @property
    def params_mb(self):
        return self.params_bytes / MB

    @property
    def activations_mb(self):
        return self.activation_bytes / MB

    @property
    def total_mb(self):
        return self.total_bytes / MB

    def to_dict(self):
        return {
            **asdict(self),
            "params_mb": self.params_mb,
            "activations_mb": self.activations_mb,
            "total_mb": self.total_mb,
        }


def _ceil_div(a, b):
    return -(-a // b)


def needs_backward(cfg):
    """True if anything before the head trains (then every ReLU keeps its 1-bit mask)."""
    t = cfg.trainable
    if t.main_kernel or t.main_scale or t.main_bias:
        return True
    has_lite = any(b.lite is not None for b in cfg.blocks)
    return has_lite and (t.lite_kernel or t.lite_gamma or t.lite_beta or t.lite_final_beta)


def leaves(cfg, batch=1):
    """The leaf layers of `cfg` in execution order, with their saved and tmp bytes.

    `batch` scales every size; the memory model itself uses batch 1 (`training_memory`).
    """
    if not isinstance(cfg, NetConfig):
        raise TypeError(f"leaves() needs a NetConfig, got {type(cfg).__name__}")
    t = cfg.trainable
    backward = needs_backward(cfg)
    out = []
    append = out.append

    def act(name, kind, numel, residual):
        if kind is None:
            return
        append(Leaf(kind, name, numel, numel, 1, numel // 8 if backward else 0, BYTES * numel, residual))

    def conv(name, h_in, c_in, h_out, c_out, kernel, groups, train_kernel, residual):
        i, o = batch * h_in * h_in * c_in, batch * h_out * h_out * c_out
        saved, tmp = BYTES * i if train_kernel else 0, BYTES * i + BYTES * o // groups
        append(
            Leaf(
                "conv",
                name,
                i,
                o,
                groups,
                saved,
                tmp,
                residual,
                ((kernel * kernel * c_in // groups * c_out, train_kernel),),
            )
        )
        return o

    def norm(name, numel, channels, train_scale, train_bias, residual):
        params = ((channels, train_scale), (channels, train_bias))
        append(
            Leaf("norm", name, numel, numel, 1, BYTES * numel if train_scale else 0, BYTES * numel, residual, params)
        )

    def folded(name, h, c_in, c_out, kernel, stride, groups, activation, residual):
        """FoldedConv2D: conv -> per-channel scale (+ bias) -> activation; returns the output size."""
        h_out = _ceil_div(h, stride)
        o = conv(f"{name}/conv", h, c_in, h_out, c_out, kernel, groups, t.main_kernel, residual)
        norm(f"{name}/norm", o, c_out, t.main_scale, t.main_bias, residual)
        act(f"{name}/{activation}", activation, o, residual)
        return h_out

    h, c = cfg.resolution, 3
    s = cfg.stem
    h = folded("stem", h, c, s.out, s.kernel, s.stride, 1, s.act, 0)
    c = s.out
    for i, b in enumerate(cfg.blocks):
        p = f"block_{i}"
        h_in, c_in = h, c
        residual = batch * h_in * h_in * c_in if b.shortcut else 0
        if b.mid is not None:
            h = folded(f"{p}/expand", h, c, b.mid, 1, 1, 1, b.act, residual)
            c = b.mid
        h = folded(f"{p}/depthwise", h, c, c, b.kernel, b.stride, c, b.act, residual)
        h = folded(f"{p}/project", h, c, b.out, 1, 1, 1, b.project_act, residual)
        c = b.out
        main_numel = batch * h * h * c
        if b.lite is not None:
            lp, lite = f"{p}/lite", b.lite
            hp = h_in // 2
            append(Leaf("pool", f"{lp}/pool", batch * h_in * h_in * c_in, batch * hp * hp * c_in, 1, 0, 0, residual))
            hl = _ceil_div(hp, b.stride)
            mid = conv(f"{lp}/conv1", hp, c_in, hl, c_in, lite.kernel, lite.groups, t.lite_kernel, residual)
            norm(f"{lp}/norm1", mid, c_in, t.lite_gamma, t.lite_beta, residual)
            act(f"{lp}/relu", "relu", mid, residual)
            o = conv(f"{lp}/conv2", hl, c_in, hl, c, 1, 1, t.lite_kernel, residual)
            norm(f"{lp}/norm2", o, c, t.lite_gamma, t.lite_final_beta, residual)
            append(Leaf("resize", f"{lp}/resize", o, main_numel, 1, 0, 0, residual))
            append(Leaf("add", f"{lp}/add", main_numel, main_numel, 1, 0, 0, residual))
        if b.shortcut:
            append(Leaf("add", f"{p}/shortcut", main_numel, main_numel, 1, 0, 0, residual))
    if cfg.feature_mix is not None:
        f = cfg.feature_mix
        h = folded("feature_mix", h, c, f.out, f.kernel, f.stride, 1, f.act, 0)
        c = f.out
    append(Leaf("pool", "head/pool", batch * h * h * c, batch * c, 1, 0, 0, 0))
    if cfg.dropout:
        append(Leaf("dropout", "head/dropout", batch * c, batch * c, 1, 0, 0, 0))
    n, head = batch * cfg.num_classes, ((c * cfg.num_classes, t.head), (cfg.num_classes, t.head))
    saved = BYTES * batch * c if t.head else 0
    append(Leaf("linear", "head/linear", batch * c, n, 1, saved, BYTES * (batch * c + n), 0, head))
    return out


def peak_activation_bytes(cfg):
    """Peak activation bytes at batch 1 (the reference profiler's bookkeeping over `leaves(cfg)`)."""
    return _peak_activation_bytes(leaves(cfg))


def _peak_activation_bytes(walk):
    peak = saved = 0
    for leaf in walk:
        candidate = leaf.tmp_bytes + saved + BYTES * leaf.residual_numel
        if candidate > peak:
            peak = candidate
        saved += leaf.saved_bytes
    return peak


def param_counts(cfg):
    """(trainable, frozen) parameter counts of the network `cfg` describes, as the Keras builder makes it: the sum
    over its leaves' weight tensors."""
    return _param_counts(leaves(cfg))


def _param_counts(walk):
    trainable = total = 0
    for leaf in walk:
        for n, trains in leaf.params:
            total += n
            trainable += n if trains else 0
    return trainable, total - trainable


def training_memory(cfg, batch_size=1, frozen_bits=8):
    """The training memory of network `cfg` (its `trainable` set says what trains) at `batch_size`."""
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if frozen_bits not in (1, 2, 4, 8, 16, 32):
        raise ValueError(f"frozen_bits must be one of 1, 2, 4, 8, 16, 32, got {frozen_bits!r}")
    walk = leaves(cfg)  # one walk gives both the parameters and the activations
    trainable, frozen = _param_counts(walk)
    params = BYTES * trainable + frozen_bits / 8 * frozen
    peak = _peak_activation_bytes(walk)
    activations = batch_size * peak
    return MemoryReport(
        params_bytes=params,
        activation_bytes=activations,
        total_bytes=params + activations,
        trainable_params=trainable,
        frozen_params=frozen,
        peak_bytes=peak,
        batch_size=batch_size,
        frozen_bits=frozen_bits,
    )


def check_fits(cfg):
    """A clear error, before anything is built, when a layer of `cfg` would get an empty feature map (a resolution
    the network cannot take although it passes `config.check_resolution`, e.g. mcunet-5fps at 32 px)."""
    empty = [leaf.name for leaf in leaves(cfg) if leaf.out_numel == 0]
    if empty:
        raise ValueError(
            f"{cfg.name} cannot take {cfg.resolution} px: {empty[0]} would get an empty feature map; "
            f"use a larger resolution"
        )


def method_table(
    backbone, resolution=None, batch_size=8, num_classes=102, lite_for_all=True, frozen_bits=8, methods=None
):
    """Training memory of every transfer method, as in the paper's comparison table (MB = 1e6 bytes).

    One dict per method: method, backbone, resolution, batch_size, params_mb, activations_mb, total_mb,
    trainable_params, frozen_params. `lite_for_all=True` (the paper's setting) gives every method the lite
    residual branches (frozen unless the method trains them); False only the TinyTL-L / L+B networks.
    """
    from tinytl_tf.contract import METHODS
    from tinytl_tf.methods import method_config

    base = backbone if isinstance(backbone, NetConfig) else backbone_config(backbone)
    rows = []
    for m in methods or METHODS:
        lite = True if lite_for_all else None
        cfg = method_config(base, m, num_classes, lite_residual=lite, resolution=resolution)
        check_fits(cfg)
        r = training_memory(cfg, batch_size, frozen_bits)
        rows.append(
            {
                "method": m,
                "backbone": base.name,
                "resolution": cfg.resolution,
                "batch_size": batch_size,
                "params_mb": r.params_mb,
                "activations_mb": r.activations_mb,
                "total_mb": r.total_mb,
                "trainable_params": r.trainable_params,
                "frozen_params": r.frozen_params,
            }
        )
    return rows


def format_table(rows):
    """A plain-text table of `method_table` rows; with `predicted_train_mb` / `measured_train_mb` in the rows (the
    `memory` command adds them) a column each: the engine's LiteRT training step at batch 1."""
    engine = [
        (k, t) for k, t in (("predicted_train_mb", "predicted"), ("measured_train_mb", "measured")) if k in rows[0]
    ]
    head = f"{'method':<14}{'params MB':>11}{'activations MB':>16}{'total MB':>10}{'trainable':>12}"
    head += "".join(f"{t:>11}" for _, t in engine)
    lines = []
    if rows:
        r0 = rows[0]
        title = f"{r0['backbone']}, {r0['resolution']} px, batch {r0['batch_size']}"
        if engine:
            title += f"; predicted/measured: LiteRT train step, batch 1, {r0.get('optimizer', 'adam')}"
        lines.append(title)
    lines += [head, "-" * len(head)]
    for r in rows:
        line = (
            f"{r['method']:<14}{r['params_mb']:>11.3f}{r['activations_mb']:>16.2f}{r['total_mb']:>10.2f}"
            f"{r['trainable_params']:>12,}"
        )
        line += "".join(f"{r[k]:>11.2f}" if r.get(k) is not None else f"{'-':>11}" for k, _ in engine)
        lines.append(line)
    return "\n".join(lines)


def plot_breakdown(rows, path):
    """Write a PNG bar chart of parameter vs activation memory per method (stacked, MB), like the paper's Fig. 1;
    rows with `measured_train_mb` get a measured bar beside (LiteRT, batch 1)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        raise ValueError("plot_breakdown needs at least one row")
    names = [r["method"] for r in rows]
    params = [r["params_mb"] for r in rows]
    acts = [r["activations_mb"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    try:
        x = range(len(rows))
        measured = all("measured_train_mb" in r for r in rows)
        width, shift = (0.4, 0.2) if measured else (0.8, 0.0)
        left = [i - shift for i in x]
        ax.bar(left, params, width, label="parameters (analytic)", color="#4c72b0")
        ax.bar(left, acts, width, bottom=params, label="activations (analytic)", color="#dd8452")
        for i, r in zip(left, rows):
            ax.text(i, r["total_mb"], f"{r['total_mb']:.1f}", ha="center", va="bottom", fontsize=8)
        if measured:
            right = [i + shift for i in x]
            values = [r["measured_train_mb"] for r in rows]
            ax.bar(right, values, width, label="measured (LiteRT, batch 1)", color="#55a868")
            for i, v in zip(right, values):
                ax.text(i, v, f"{v:.1f}", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(list(x))
        ax.set_xticklabels(names, rotation=20, ha="right")
        ax.set_ylabel("training memory (MB)")
        r0 = rows[0]
        ax.set_title(f"{r0['backbone']}, {r0['resolution']} px, batch {r0['batch_size']}")
        ax.set_ylim(0, max(max(r["total_mb"], r.get("measured_train_mb") or 0) for r in rows) * 1.12)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
    return path
