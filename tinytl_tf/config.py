"""The network config: one plain, JSON-serialisable description of a TinyTL network.

Backbones are configs plus weights, a super-net sub-net is a config, the search writes a config and the export
reads the model built from one. `tinytl_tf.backbones.build_model` turns any config into a Keras model. TF-free.
"""

import dataclasses
import json
from dataclasses import dataclass, field

from tinytl_tf.errors import TinyTLError

ACTIVATIONS = (None, "relu", "relu6")
PADDINGS = ("symmetric", "same")
MIN_RESOLUTION, MAX_RESOLUTION = 32, 1024


class ConfigError(TinyTLError, ValueError):
    """A network config (or a field of one) is invalid; the message names the field."""


@dataclass(frozen=True)
class TrainableSet:
    """Which tensors train. A transfer method (`tinytl_tf.transfer`) is one of these."""

    main_kernel: bool = False  # every conv kernel of the main branch (stem, blocks, feature mix)
    main_scale: bool = False  # the per-channel scale of each folded normalization
    main_bias: bool = False  # the per-channel bias of each folded normalization
    lite_kernel: bool = False  # lite-residual conv kernels
    lite_gamma: bool = False  # lite-residual GroupNorm scales
    lite_beta: bool = False  # lite-residual GroupNorm betas
    lite_final_beta: bool = False  # beta of a lite branch's last norm (redundant with the main bias)
    head: bool = True  # the classifier

    def main_flags(self):
        """The freeze flags of a main-branch `FoldedConv2D` (stem, block convs, feature mix)."""
        return {"train_kernel": self.main_kernel, "train_scale": self.main_scale, "train_bias": self.main_bias}

    def lite_flags(self):
        """The freeze flags of a `LiteResidual` branch."""
        return {
            "train_kernel": self.lite_kernel,
            "train_gamma": self.lite_gamma,
            "train_beta": self.lite_beta,
            "train_final_beta": self.lite_final_beta,
        }


@dataclass(frozen=True)
class ConvConfig:
    """The stem or the feature-mix conv (a full conv, folded normalization, activation)."""

    out: int
    kernel: int = 1
    stride: int = 1
    act: str | None = "relu6"


@dataclass(frozen=True)
class LiteConfig:
    """A lite residual branch (TinyTL, Sec. 3.2): pool 2x2, kxk group conv, GN, ReLU, 1x1 conv, GN, resize."""

    kernel: int = 5
    groups: int = 2
    channels_per_group: int = 8  # of its GroupNorms


@dataclass(frozen=True)
class BlockConfig:
    """An MB block: optional 1x1 expand to `mid` channels, kxk depthwise, 1x1 project to `out`."""

    kernel: int
    stride: int
    out: int
    mid: int | None = None  # None: no expand conv (depthwise runs on the block input)
    shortcut: bool = False
    act: str | None = "relu6"  # after expand and depthwise
    project_act: str | None = None  # after project (MobileNetV1 blocks have ReLU6 here)
    lite: LiteConfig | None = None


@dataclass(frozen=True)
class NetConfig:
    name: str
    resolution: int
    stem: ConvConfig
    blocks: tuple
    num_classes: int
    feature_mix: ConvConfig | None = None
    dropout: float = 0.0
    padding: str = "symmetric"  # "symmetric": PyTorch-style (k-1)//2 per side; "same": TF SAME
    input_mean: tuple = (128.0, 128.0, 128.0)  # pixels p in [0, 255] become (p - mean) / std
    input_std: tuple = (128.0, 128.0, 128.0)
    trainable: TrainableSet = field(default_factory=TrainableSet)
    method: str | None = None  # name of the transfer method that set `trainable`, if any
    labels: tuple = ()  # class names, when known

    def __post_init__(self):
        validate(self)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def block_in_channels(self):
        """Input channels of every block, in order."""
        chans, c = [], self.stem.out
        for b in self.blocks:
            chans.append(c)
            c = b.out
        return chans

    @property
    def feature_channels(self):
        if self.feature_mix is not None:
            return self.feature_mix.out
        return self.blocks[-1].out if self.blocks else self.stem.out

    def to_dict(self):
        return dataclasses.asdict(self)

    def to_json(self, indent=2):
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, d):
        return parse(cls, d, "config")

    @classmethod
    def from_json(cls, text):
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"network config is not valid JSON: {e}") from None
        return cls.from_dict(d)


_NESTED = {
    ("NetConfig", "stem"): ConvConfig,
    ("NetConfig", "feature_mix"): ConvConfig,
    ("NetConfig", "trainable"): TrainableSet,
    ("BlockConfig", "lite"): LiteConfig,
}


def parse(cls, d, where):
    """Build config dataclass `cls` (and its nested configs) from a dict, rejecting unknown keys and naming the
    field on any error."""
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected an object, got {type(d).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; valid fields: {sorted(names)}")
    kwargs = {}
    for key, value in d.items():
        sub = _NESTED.get((cls.__name__, key))
        if sub is not None and value is not None:
            value = parse(sub, value, f"{where}.{key}")
        elif cls is NetConfig and key == "blocks":
            if not isinstance(value, (list, tuple)):
                raise ConfigError(f"{where}.blocks: expected a list")
            value = tuple(parse(BlockConfig, b, f"{where}.blocks[{i}]") for i, b in enumerate(value))
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from None


def _check(cond, where, msg):
    if not cond:
        raise ConfigError(f"{where}: {msg}")


def _positive_int(value, where):
    _check(
        isinstance(value, int) and not isinstance(value, bool) and value > 0,
        where,
        f"must be a positive integer, got {value!r}",
    )


def _check_conv(c, where):
    _positive_int(c.out, f"{where}.out")
    _check(c.kernel in (1, 3, 5, 7), f"{where}.kernel", f"must be 1, 3, 5 or 7, got {c.kernel!r}")
    _check(c.stride in (1, 2), f"{where}.stride", f"must be 1 or 2, got {c.stride!r}")
    _check(c.act in ACTIVATIONS, f"{where}.act", f"must be one of {ACTIVATIONS}, got {c.act!r}")


def validate(cfg):
    """Raise ConfigError naming the first invalid field of a NetConfig."""
    _check(isinstance(cfg.name, str) and cfg.name, "name", "must be a non-empty string")
    check_resolution(cfg.resolution)
    _check(cfg.padding in PADDINGS, "padding", f"must be one of {PADDINGS}, got {cfg.padding!r}")
    _positive_int(cfg.num_classes, "num_classes")
    _check(
        isinstance(cfg.dropout, (int, float)) and 0 <= cfg.dropout < 1,
        "dropout",
        f"must be in [0, 1), got {cfg.dropout!r}",
    )
    for key in ("input_mean", "input_std"):
        v = getattr(cfg, key)
        _check(len(v) == 3 and all(isinstance(a, (int, float)) for a in v), key, "must be 3 numbers")
    _check(all(s > 0 for s in cfg.input_std), "input_std", "must be positive")
    _check(
        not cfg.labels or len(cfg.labels) == cfg.num_classes,
        "labels",
        f"has {len(cfg.labels)} names for {cfg.num_classes} classes",
    )
    _check(isinstance(cfg.stem, ConvConfig), "stem", "must be a conv config")
    _check_conv(cfg.stem, "stem")
    if cfg.feature_mix is not None:
        _check_conv(cfg.feature_mix, "feature_mix")
    _check(isinstance(cfg.blocks, tuple) and cfg.blocks, "blocks", "must be a non-empty list")
    for i, (b, cin) in enumerate(zip(cfg.blocks, cfg.block_in_channels())):
        w = f"blocks[{i}]"
        _check(isinstance(b, BlockConfig), w, "must be a block config")
        _check(b.kernel in (3, 5, 7), f"{w}.kernel", f"must be 3, 5 or 7, got {b.kernel!r}")
        _check(b.stride in (1, 2), f"{w}.stride", f"must be 1 or 2, got {b.stride!r}")
        _positive_int(b.out, f"{w}.out")
        if b.mid is not None:
            _positive_int(b.mid, f"{w}.mid")
        _check(b.act in ACTIVATIONS, f"{w}.act", f"must be one of {ACTIVATIONS}")
        _check(b.project_act in ACTIVATIONS, f"{w}.project_act", f"must be one of {ACTIVATIONS}")
        _check(
            not b.shortcut or (b.stride == 1 and cin == b.out),
            f"{w}.shortcut",
            f"needs stride 1 and equal in/out channels (in {cin}, out {b.out}, stride {b.stride})",
        )
        if b.lite is not None:
            lw = f"{w}.lite"
            _check(b.lite.kernel in (3, 5), f"{lw}.kernel", f"must be 3 or 5, got {b.lite.kernel!r}")
            _check(b.lite.groups in (1, 2, 4), f"{lw}.groups", f"must be 1, 2 or 4, got {b.lite.groups!r}")
            _check(cin % b.lite.groups == 0, f"{lw}.groups", f"{b.lite.groups} does not divide {cin} input channels")
            _positive_int(b.lite.channels_per_group, f"{lw}.channels_per_group")


def check_resolution(resolution):
    _check(
        isinstance(resolution, int)
        and not isinstance(resolution, bool)
        and MIN_RESOLUTION <= resolution <= MAX_RESOLUTION
        and resolution % 2 == 0,
        "resolution",
        f"must be an even integer from {MIN_RESOLUTION} to {MAX_RESOLUTION} pixels, got {resolution!r}",
    )


def norm_groups(channels, channels_per_group):
    """GroupNorm groups for `channels`: `channels_per_group` per group where it divides, else the largest divisor."""
    groups = max(1, channels // channels_per_group)
    while channels % groups:
        groups -= 1
    return groups


def nominal_lite_kernel(feature_size, max_kernel=5):
    """Lite-branch kernel for a block whose input is `feature_size` px at a nominal 128 px input: the reference
    shrinks it to 3 where the map is smaller than the kernel (reproduces the paper's TinyTL-L 10.588 MB)."""
    return max_kernel if feature_size >= max_kernel else 3


def with_lite_residual(cfg, lite=None, nominal_resolution=128):
    """Add a lite residual branch to every block except block 0 (TinyTL, Sec. 3.2), keeping existing ones."""
    blocks, size = [], nominal_resolution // cfg.stem.stride
    for i, b in enumerate(cfg.blocks):
        if i > 0 and b.lite is None:
            kernel = nominal_lite_kernel(size) if lite is None else lite.kernel
            b = dataclasses.replace(
                b, lite=LiteConfig(kernel=kernel) if lite is None else dataclasses.replace(lite, kernel=kernel)
            )
        blocks.append(b)
        size = max(1, size // b.stride)
    return cfg.replace(blocks=tuple(blocks))
