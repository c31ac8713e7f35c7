"""The search space of super-nets built around pretrained MB backbones (TinyTL Appendix A). TF-free (numpy only).

The choices are the ones pretrained weights survive: the backbone itself (`JointSpace`, one super-net each), the
input resolution, elastic depth (the trailing blocks of a stage skipped, as in once-for-all) and, per block, the
lite residual branch (present or absent, kernel, groups), which trains from scratch anyway.

Kernel-size and expand-ratio elasticity (`elastic_width`) need weights trained for it (a converted once-for-all
checkpoint): a smaller kernel is a centre crop and a narrower expansion drops channels, which removes features the
ordinary pretrained backbones rely on (their cropped sub-nets lost 20 points and more). When enabled, a block keeps
kernels up to its own and expand ratios whose channels fit in its own expanded channels (the first channels after
the importance sort) plus its own ratio. Block 0 (no expansion) is fixed, as in once-for-all.

An `Arch` is one sub-net; `subnet_config` turns it into the ordinary `NetConfig` the builder, the memory model
and the export read, so a searched sub-net needs nothing special downstream. `predicted_memory_mb` is the one
memory figure every budget decision of the search reads.
"""

import dataclasses
from dataclasses import dataclass

import numpy as np

from tinytl_tf.backbones.registry import BACKBONES
from tinytl_tf.config import ConfigError, LiteConfig, NetConfig, check_resolution, with_lite_residual
from tinytl_tf.contract import DEFAULT_OPTIMIZER
from tinytl_tf.memory.predictor import predict_train
from tinytl_tf.methods import TRAINABLE, check_method

KERNELS = (3, 5, 7)
EXPANDS = (3, 4, 6)
DEPTHS = (2, 3, 4)
LITE_GROUPS = (2, 4)
LITE_KERNELS = (3, 5)
LITES = (0, 1)  # lite residual branch absent / present
PER_SLOT_GENES = ("kernels", "expands", "lites", "lite_groups", "lite_kernels")
LITE_GENES = ("lite_groups", "lite_kernels")  # meaningless where the branch is absent


def predicted_memory_mb(cfg, optimizer=DEFAULT_OPTIMIZER):
    """Predicted LiteRT train-step memory (MB = 1e6 B) of network `cfg` at batch 1 with `optimizer`: the engine's
    storage rules (`tinytl_tf.memory.predictor`: variables and optimizer state, resident constants, the training
    graph's live tensors, the runtime), with the export's optimizer by default. Every budget decision of the search
    (the space's memory, the budget check, the fixed baseline's resolution) reads this one function; the search
    still measures its winner."""
    return predict_train(cfg, optimizer).total_mb


def searchable_backbones(weights_dir=None):
    """The registry's backbones a super-net can be built around with pretrained weights: MB blocks after block 0,
    and weights that load (vendored, or in `weights_dir`)."""
    names = []
    for name, entry in BACKBONES.items():
        if any(b.mid is None for b in entry.config().blocks[1:]):
            continue
        try:
            _, arrays = entry.load(weights_dir)
        except (OSError, ValueError):
            continue
        if arrays is not None:
            names.append(name)
    return names


def make_divisible(value, divisor=8):
    """Round to the nearest multiple of `divisor` (at least `divisor`), never more than 10% below `value` (the
    MobileNet channel rule once-for-all uses for elastic widths)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def _ratio(mid, in_channels):
    r = mid / in_channels
    return int(r) if r == int(r) else r


@dataclass(frozen=True)
class Slot:
    """One block position of the super-net: one block of the backbone (block 0 excluded) and its choices."""

    index: int  # block index in the backbone config
    stage: int
    in_channels: int
    out: int
    stride: int
    shortcut: bool
    kernel: int  # the backbone's kernel (the largest stored)
    mid: int  # the backbone's expanded channels (the largest stored)
    kernels: tuple
    expands: tuple
    lite_groups: tuple

    @property
    def ratio(self):
        """The backbone's own expand ratio (`mid / in_channels`; 5 on some mcunet-5fps blocks)."""
        return _ratio(self.mid, self.in_channels)


def mid_channels(slot, expand):
    """Expanded channels of `slot` at ratio `expand`: the backbone's own for its own ratio, else the rounded
    product (the first channels of the importance-sorted expansion)."""
    return slot.mid if expand == slot.ratio else make_divisible(slot.in_channels * expand)


@dataclass(frozen=True)
class SuperSpec:
    """The super-net's space: the backbone config with the new head, its block slots, stages and resolutions."""

    backbone: str
    base: NetConfig
    slots: tuple  # Slot per backbone block 1..n-1
    stages: tuple  # tuple of tuples of positions into `slots`
    depth_choices: tuple  # per stage
    resolutions: tuple

    def to_dict(self):
        return {
            "backbone": self.backbone,
            "base": self.base.to_dict(),
            "slots": [dataclasses.asdict(s) for s in self.slots],
            "stages": [list(s) for s in self.stages],
            "depth_choices": [list(d) for d in self.depth_choices],
            "resolutions": list(self.resolutions),
        }

    @classmethod
    def from_dict(cls, d):
        try:
            return cls(
                backbone=d["backbone"],
                base=NetConfig.from_dict(d["base"]),
                slots=tuple(
                    Slot(**{k: tuple(v) if isinstance(v, list) else v for k, v in s.items()}) for s in d["slots"]
                ),
                stages=tuple(tuple(s) for s in d["stages"]),
                depth_choices=tuple(tuple(c) for c in d["depth_choices"]),
                resolutions=tuple(d["resolutions"]),
            )
        except (KeyError, TypeError, AttributeError) as e:
            raise ConfigError(f"super-net spec: malformed ({type(e).__name__}: {e})") from None


def super_spec(base_cfg, backbone, resolutions, elastic_width=False):
    """The space of the super-net around `base_cfg` (a backbone config that already has the new head); with
    `elastic_width`, kernel sizes and expand ratios too (see the module docstring for why only then)."""
    resolutions = tuple(sorted(set(resolutions)))
    if not resolutions:
        raise ConfigError("resolutions: give at least one input size")
    for r in resolutions:
        check_resolution(r)
    slots, stages = [], []
    for i, (b, cin) in enumerate(zip(base_cfg.blocks, base_cfg.block_in_channels())):
        if i == 0:
            continue
        if b.mid is None:
            raise ConfigError(
                f"blocks[{i}]: has no expand conv; a super-net needs MB blocks after block 0 "
                f"(backbones mcunet-5fps, proxyless-w0.3, mbv2-w0.35)"
            )
        if not b.shortcut or not stages:
            stages.append([])
        stages[-1].append(len(slots))
        expands = {_ratio(b.mid, cin)}
        if elastic_width:
            expands |= {e for e in EXPANDS if make_divisible(cin * e) <= b.mid}
        slots.append(
            Slot(
                index=i,
                stage=len(stages) - 1,
                in_channels=cin,
                out=b.out,
                stride=b.stride,
                shortcut=b.shortcut,
                kernel=b.kernel,
                mid=b.mid,
                kernels=tuple(k for k in KERNELS if k <= b.kernel) if elastic_width else (b.kernel,),
                expands=tuple(sorted(expands)),
                lite_groups=tuple(g for g in LITE_GROUPS if cin % g == 0),
            )
        )
    if not slots:
        raise ConfigError("blocks: a super-net needs at least two blocks")
    depth_choices = tuple(tuple(d for d in DEPTHS if d <= len(s)) or (len(s),) for s in stages)
    return SuperSpec(
        backbone=backbone,
        base=base_cfg,
        slots=tuple(slots),
        stages=tuple(tuple(s) for s in stages),
        depth_choices=depth_choices,
        resolutions=resolutions,
    )


@dataclass(frozen=True)
class Arch:
    """One sub-net. Per-slot genes cover every slot; those of dropped blocks are kept (as in once-for-all) so
    that mutation and crossover can bring them back."""

    backbone: str  # the super-net's (`SuperSpec.backbone`)
    resolution: int
    depths: tuple  # per stage
    kernels: tuple  # per slot
    expands: tuple  # per slot
    lites: tuple  # per slot: 1 with a lite residual branch, 0 without
    lite_groups: tuple  # per slot
    lite_kernels: tuple  # per slot

    def to_dict(self):
        return {
            f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in dataclasses.fields(self)
        }


def gene_choices(spec):
    """Allowed values of every `Arch` field: the resolutions, else one tuple of choices per stage or slot."""
    return {
        "resolution": spec.resolutions,
        "depths": spec.depth_choices,
        "kernels": tuple(s.kernels for s in spec.slots),
        "expands": tuple(s.expands for s in spec.slots),
        "lites": tuple(LITES for _ in spec.slots),
        "lite_groups": tuple(s.lite_groups for s in spec.slots),
        "lite_kernels": tuple(LITE_KERNELS for _ in spec.slots),
    }


def _fmt(values):
    return ", ".join(str(v) for v in values)


def _is_number(value, allow_float):
    return not isinstance(value, bool) and isinstance(value, (int, float) if allow_float else int)


def validate_arch(spec, arch, where="arch"):
    """Raise ConfigError naming the first gene of `arch` that is outside `spec`'s space."""
    choices = gene_choices(spec)
    if arch.backbone != spec.backbone:
        raise ConfigError(f"{where}.backbone: {arch.backbone!r} is not the super-net's backbone ({spec.backbone})")
    if not (_is_number(arch.resolution, False) and arch.resolution in spec.resolutions):
        raise ConfigError(
            f"{where}.resolution: {arch.resolution!r} is not one of the super-net's resolutions "
            f"({_fmt(spec.resolutions)})"
        )
    for name in ("depths", *PER_SLOT_GENES):
        values, allowed = getattr(arch, name), choices[name]
        unit = "stages" if name == "depths" else "blocks after block 0"
        if not isinstance(values, (tuple, list)) or len(values) != len(allowed):
            raise ConfigError(
                f"{where}.{name}: needs one value per super-net position ({len(allowed)} {unit}), got {values!r}"
            )
        for pos, (v, ok) in enumerate(zip(values, allowed)):
            if not (_is_number(v, name == "expands") and v in ok):
                what = f"stage {pos}" if name == "depths" else f"block {spec.slots[pos].index}"
                raise ConfigError(f"{where}.{name}[{pos}]: {v!r} is not allowed for {what} (allowed: {_fmt(ok)})")


def arch_from_dict(spec, d, where="subnet.config"):
    """Parse and validate a sub-net dict (as written by `Arch.to_dict`), naming the field on any error."""
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected an object, got {type(d).__name__}")
    names = [f.name for f in dataclasses.fields(Arch)]
    unknown, missing = sorted(set(d) - set(names)), [n for n in names if n not in d]
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; valid fields: {names}")
    if missing:
        raise ConfigError(f"{where}: missing field(s) {missing}")
    arch = Arch(**{n: tuple(d[n]) if isinstance(d[n], list) else d[n] for n in names})
    validate_arch(spec, arch, where)
    return arch


def active_slots(spec, arch):
    """Positions (into `spec.slots`) of the blocks the sub-net keeps: the first `depth` of every stage."""
    return [p for stage, depth in zip(spec.stages, arch.depths) for p in stage[:depth]]


def _pick(choices, rng):
    return choices[int(rng.integers(len(choices)))]


def backbone_arch(spec, lite_kernel=None, lite_groups=2):
    """The backbone's own architecture; lite kernels as TinyTL places them (`with_lite_residual`) unless given.

    Its resolution is the backbone's when the super-net allows it, else the nearest allowed one."""
    if lite_kernel is None:
        lite = with_lite_residual(spec.base).blocks
        lite_kernels = tuple(lite[s.index].lite.kernel for s in spec.slots)
    else:
        lite_kernels = (lite_kernel,) * len(spec.slots)
    resolution = min(spec.resolutions, key=lambda r: (abs(r - spec.base.resolution), r))
    arch = Arch(
        backbone=spec.backbone,
        resolution=resolution,
        depths=tuple(len(s) for s in spec.stages),
        kernels=tuple(s.kernel for s in spec.slots),
        expands=tuple(s.ratio for s in spec.slots),
        lites=(1,) * len(spec.slots),
        lite_groups=(lite_groups,) * len(spec.slots),
        lite_kernels=lite_kernels,
    )
    validate_arch(spec, arch, "backbone_arch")
    return arch


def smallest_arch(spec):
    """The sub-net with the least training memory: memory never decreases with resolution, depth, kernel, expand,
    lite presence or lite kernel, and never increases with lite groups (fewer lite weights, smaller per-group
    working set)."""
    c = gene_choices(spec)
    return Arch(
        backbone=spec.backbone,
        resolution=min(c["resolution"]),
        depths=tuple(map(min, c["depths"])),
        kernels=tuple(map(min, c["kernels"])),
        expands=tuple(map(min, c["expands"])),
        lites=tuple(map(min, c["lites"])),
        lite_groups=tuple(map(max, c["lite_groups"])),
        lite_kernels=tuple(map(min, c["lite_kernels"])),
    )


def subnet_config(spec, arch, method="tinytl-lb"):
    """The static network of a sub-net: block 0 as in the backbone, the kept blocks with their kernel, expanded
    channels and a lite residual branch, the backbone's feature mix, head and normalization, `method`'s
    trainable set. `tinytl_tf.backbones.build_model` builds it and the export takes it unchanged."""
    check_method(method)
    validate_arch(spec, arch)
    blocks = [spec.base.blocks[0]]
    for p in active_slots(spec, arch):
        s = spec.slots[p]
        blocks.append(
            dataclasses.replace(
                spec.base.blocks[s.index],
                kernel=arch.kernels[p],
                mid=mid_channels(s, arch.expands[p]),
                lite=LiteConfig(kernel=arch.lite_kernels[p], groups=arch.lite_groups[p]) if arch.lites[p] else None,
            )
        )
    return spec.base.replace(
        name=f"{spec.backbone}-subnet",
        resolution=arch.resolution,
        blocks=tuple(blocks),
        trainable=TRAINABLE[method],
        method=method,
    )


def sample(spec, rng):
    """A uniformly random sub-net (each gene independently); `rng` is a `numpy.random.Generator`."""
    c = gene_choices(spec)
    return Arch(
        backbone=spec.backbone,
        resolution=_pick(c["resolution"], rng),
        **{name: tuple(_pick(ok, rng) for ok in c[name]) for name in ("depths", *PER_SLOT_GENES)},
    )


def mutate(spec, arch, rng, prob=0.1):
    """`arch` with every gene independently resampled with probability `prob`."""
    c = gene_choices(spec)

    def gene(value, ok):
        return _pick(ok, rng) if rng.random() < prob else value

    return Arch(
        backbone=arch.backbone,
        resolution=gene(arch.resolution, c["resolution"]),
        **{
            name: tuple(gene(v, ok) for v, ok in zip(getattr(arch, name), c[name]))
            for name in ("depths", *PER_SLOT_GENES)
        },
    )


def crossover(spec, a, b, rng):
    """A child taking every gene from parent `a` or `b` with equal probability."""

    def gene(x, y):
        return x if rng.random() < 0.5 else y

    return Arch(
        backbone=a.backbone,
        resolution=gene(a.resolution, b.resolution),
        **{
            name: tuple(gene(x, y) for x, y in zip(getattr(a, name), getattr(b, name)))
            for name in ("depths", *PER_SLOT_GENES)
        },
    )


def encoding_length(spec):
    c = gene_choices(spec)
    return len(c["resolution"]) + sum(len(ok) for name in ("depths", *PER_SLOT_GENES) for ok in c[name])


def encode(spec, arch):
    """float32 one-hot of every gene (resolution, depths, then per slot kernel, expand, lite presence, lite
    groups, lite kernel); the genes of dropped blocks, and the lite genes of absent branches, are all zero, so
    equal sub-nets encode equally. Length: `encoding_length(spec)`."""
    c = gene_choices(spec)
    kept = set(active_slots(spec, arch))
    parts = [np.array([r == arch.resolution for r in c["resolution"]])]
    parts += [np.array([d == v for d in ok]) for v, ok in zip(arch.depths, c["depths"])]
    for p in range(len(spec.slots)):
        used = p in kept
        for name in PER_SLOT_GENES:
            ok = c[name][p]
            on = used and (name not in LITE_GENES or arch.lites[p])
            parts.append(np.array([on and x == getattr(arch, name)[p] for x in ok]))
    return np.concatenate(parts).astype(np.float32)


def memory_mb(spec, arch):
    """Predicted train-step memory (`predicted_memory_mb`) of the sub-net fine-tuned with TinyTL-L+B."""
    return predicted_memory_mb(subnet_config(spec, arch, "tinytl-lb"))


def min_memory_mb(spec):
    """The least training memory any sub-net of `spec` needs (for the 'budget too small' error)."""
    return memory_mb(spec, smallest_arch(spec))


def fixed_baseline(spec, budget_mb):
    """The fixed backbone TinyTL fine-tunes (every block, its own kernels and widths) at the largest of the space's
    resolutions within `budget_mb`: with TinyTL's lite residual branches (TinyTL-L+B) where that fits, else without
    them (TinyTL-B: the biases alone); None when neither fits. The lite branches' parameters and optimizer state
    weigh more than the activations a lower resolution saves (mcunet-5fps TinyTL-L+B with 8-bit Adam, 10 classes:
    9.0 MB predicted at 64 px, 9.7 at 128; TinyTL-B 4.3 at 128), so a tight budget admits the bias-only network
    at a high resolution before the lite branches at any."""
    full = backbone_arch(spec)
    for lites in (full.lites, (0,) * len(full.lites)):
        fitting = [
            a
            for a in (dataclasses.replace(full, resolution=r, lites=lites) for r in spec.resolutions)
            if memory_mb(spec, a) <= budget_mb
        ]
        if fitting:
            return fitting[-1]
    return None


METHOD_LABELS = {"tinytl-lb": "TinyTL-L+B", "tinytl-b": "TinyTL-B"}  # what `arch_method` returns, as the paper names it


def arch_method(arch):
    """The transfer method a sub-net trains like: TinyTL-L+B with any lite branch, TinyTL-B without."""
    return "tinytl-lb" if any(arch.lites) else "tinytl-b"


class JointSpace:
    """The union of several super-nets' spaces: the pretrained backbone is one more gene.

    Mutating the backbone gene draws a fresh sub-net of the new backbone (blocks do not correspond across
    backbones); crossing parents of different backbones keeps one of them whole. The encoding is the backbone's
    one-hot, then every super-net's `encode` segment (zeros for the others)."""

    def __init__(self, specs):
        specs = (specs,) if isinstance(specs, SuperSpec) else tuple(specs)
        if not specs or len({s.backbone for s in specs}) != len(specs):
            raise ConfigError("search space: give one super-net per backbone, at least one")
        self.specs = {s.backbone: s for s in specs}
        self.backbones = tuple(self.specs)

    def sample(self, rng):
        return sample(self.specs[_pick(self.backbones, rng)], rng)

    def mutate(self, arch, rng, prob=0.1):
        if len(self.backbones) > 1 and rng.random() < prob:
            backbone = _pick(self.backbones, rng)
            if backbone != arch.backbone:
                return sample(self.specs[backbone], rng)
        return mutate(self.specs[arch.backbone], arch, rng, prob)

    def crossover(self, a, b, rng):
        if a.backbone != b.backbone:
            return a if rng.random() < 0.5 else b
        return crossover(self.specs[a.backbone], a, b, rng)

    def encoding_length(self):
        return len(self.backbones) + sum(encoding_length(s) for s in self.specs.values())

    def encode(self, arch):
        parts = [np.array([b == arch.backbone for b in self.backbones], np.float32)]
        for b, s in self.specs.items():
            parts.append(encode(s, arch) if b == arch.backbone else np.zeros(encoding_length(s), np.float32))
        return np.concatenate(parts)

    def memory_mb(self, arch):
        return memory_mb(self.specs[arch.backbone], arch)

    def min_memory_mb(self):
        return min(min_memory_mb(s) for s in self.specs.values())

    def arch_from_dict(self, d, where="arch"):
        backbone = d.get("backbone") if isinstance(d, dict) else None
        if backbone not in self.specs:
            raise ConfigError(f"{where}.backbone: {backbone!r} is not one of {', '.join(self.backbones)}")
        return arch_from_dict(self.specs[backbone], d, where)
