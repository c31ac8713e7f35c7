"""The search space of a super-net built around a pretrained MB backbone (TinyTL Appendix A). TF-free (numpy only).

The super-net's largest sub-net in every dimension is the backbone itself, so every choice is capped by what the
backbone has: a block keeps kernels up to its own (smaller ones are centre crops), expand ratios whose channels
fit in its own expanded channels (the first channels after the importance sort) plus its own ratio, and a stage
keeps depths up to its length. Block 0 (no expansion) is fixed, as in once-for-all.

An `Arch` is one sub-net; `subnet_config` turns it into the ordinary `NetConfig` the builder, the memory model
and the export read, so a searched sub-net needs nothing special downstream.
"""

import dataclasses
from dataclasses import dataclass

import numpy as np

from tinytl_tf.config import ConfigError, LiteConfig, NetConfig, check_resolution, with_lite_residual
from tinytl_tf.memory import training_memory
from tinytl_tf.methods import TRAINABLE, check_method

KERNELS = (3, 5, 7)
EXPANDS = (3, 4, 6)
DEPTHS = (2, 3, 4)
LITE_GROUPS = (2, 4)
LITE_KERNELS = (3, 5)
PER_SLOT_GENES = ("kernels", "expands", "lite_groups", "lite_kernels")


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


def super_spec(base_cfg, backbone, resolutions):
    """The space of the super-net around `base_cfg` (a backbone config that already has the new head)."""
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
        expands = {e for e in EXPANDS if make_divisible(cin * e) <= b.mid} | {_ratio(b.mid, cin)}
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
                kernels=tuple(k for k in KERNELS if k <= b.kernel),
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

    resolution: int
    depths: tuple  # per stage
    kernels: tuple  # per slot
    expands: tuple  # per slot
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
        resolution=resolution,
        depths=tuple(len(s) for s in spec.stages),
        kernels=tuple(s.kernel for s in spec.slots),
        expands=tuple(s.ratio for s in spec.slots),
        lite_groups=(lite_groups,) * len(spec.slots),
        lite_kernels=lite_kernels,
    )
    validate_arch(spec, arch, "backbone_arch")
    return arch


def smallest_arch(spec):
    """The sub-net with the least training memory: memory never decreases with resolution, depth, kernel, expand
    or lite kernel, and never increases with lite groups (fewer lite weights, smaller per-group working set)."""
    c = gene_choices(spec)
    return Arch(
        resolution=min(c["resolution"]),
        depths=tuple(map(min, c["depths"])),
        kernels=tuple(map(min, c["kernels"])),
        expands=tuple(map(min, c["expands"])),
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
                lite=LiteConfig(kernel=arch.lite_kernels[p], groups=arch.lite_groups[p]),
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
        resolution=_pick(c["resolution"], rng),
        **{name: tuple(_pick(ok, rng) for ok in c[name]) for name in ("depths", *PER_SLOT_GENES)},
    )


def mutate(spec, arch, rng, prob=0.1):
    """`arch` with every gene independently resampled with probability `prob`."""
    c = gene_choices(spec)

    def gene(value, ok):
        return _pick(ok, rng) if rng.random() < prob else value

    return Arch(
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
    """float32 one-hot of every gene (resolution, depths, then per slot kernel, expand, lite groups, lite
    kernel); the genes of dropped blocks are all zero, so equal sub-nets encode equally. Length:
    `encoding_length(spec)`."""
    c = gene_choices(spec)
    kept = set(active_slots(spec, arch))
    parts = [np.array([r == arch.resolution for r in c["resolution"]])]
    parts += [np.array([d == v for d in ok]) for v, ok in zip(arch.depths, c["depths"])]
    for p in range(len(spec.slots)):
        for name in PER_SLOT_GENES:
            ok = c[name][p]
            parts.append(np.array([p in kept and x == getattr(arch, name)[p] for x in ok]))
    return np.concatenate(parts).astype(np.float32)


def memory_mb(spec, arch, batch_size=1):
    """Analytic training memory (`tinytl_tf.memory.analytic`, MB = 1e6 B) of the sub-net fine-tuned with TinyTL-L+B."""
    return training_memory(subnet_config(spec, arch, "tinytl-lb"), batch_size).total_mb


def min_memory_mb(spec, batch_size=1):
    """The least training memory any sub-net of `spec` needs (for the 'budget too small' error)."""
    return memory_mb(spec, smallest_arch(spec), batch_size)
