"""The once-for-all style super-net (Cai et al., ICLR 2020; TinyTL Appendix A) around a pretrained MB backbone,
as one Keras model.

Its space (`tinytl_tf.supernet.space.SuperSpec`) is capped by the backbone, so the sub-net `backbone_arch(spec)`
is the backbone itself; every other sub-net is derived from the same weights by the importance sort (narrower
expansions), transformed centre crops (smaller kernels) and dropped blocks (shallower stages). The active sub-net
lives in non-trainable int variables, so `set_active` and per-step sampling never retrace. Each resolution is
its own branch of a `tf.switch_case` (the ops need static spatial sizes), which makes the first trace slower but
costs nothing per step. A sub-net leaves the super-net only as a plain `TinyNet` (`extract_subnet`);
`SubnetEvaluator` measures many sub-nets on one data set without that switch, each at the cost of its own layers.
"""

import functools
import json
from pathlib import Path
from types import SimpleNamespace

import keras
import numpy as np
import tensorflow as tf

from tinytl_tf.atomic import atomic_write
from tinytl_tf.backbones import BACKBONES, UnknownBackbone, build_model, load_weights_by_path
from tinytl_tf.backbones.builder import folded_conv_layer, head_layer
from tinytl_tf.config import NetConfig, TrainableSet
from tinytl_tf.layers import MBBlock
from tinytl_tf.methods import TRAINABLE
from tinytl_tf.supernet.elastic import ElasticMBBlock
from tinytl_tf.supernet.space import (
    SuperSpec,
    active_slots,
    backbone_arch,
    gene_choices,
    mid_channels,
    sample,
    subnet_config,
    super_spec,
    validate_arch,
)

DEFAULT_RESOLUTIONS = (96, 112, 128, 144, 160)
# the paper's adaptation: main weights frozen; main biases, lite modules and the head train
TRAINABLE_SET = TRAINABLE["tinytl-lb"]
STATIC_LAYERS = ("stem", "block_0", "feature_mix", "head")  # the same in the super-net and every sub-net
NEW_WEIGHTS = ("/lite/", "/transform_", "head/", "_mean")  # not in a backbone's weights
GENES = ("resolution", "depths", "kernels", "mids", "lites", "lite_kernels", "lite_groups")
CALIBRATION_BATCHES = 8
EVAL_BATCH = 64  # images per step when measuring sub-nets: fewer steps, and wider convolutions per step
WEIGHTS_FILE_META = "supernet.json"


@keras.saving.register_keras_serializable(package="tinytl_tf")
class SuperNet(keras.Model):
    """Elastic resolution, depth, lite residual branches (present or not, kernel, groups) and, when `spec` has
    them, kernel and expansion around the backbone of `spec`.

    Input: float32 [N, H, W, 3] images normalized with `spec.base.input_mean` / `input_std`, any size; they are
    bilinearly resized to the active resolution first (not at all when they already have it). Output: logits.
    Layers are named as in `TinyNet` (`stem`, `block_{backbone index}`, `feature_mix`, `head`), so backbone
    weights load by path.
    """

    def __init__(self, spec, **kwargs):
        spec = spec if isinstance(spec, SuperSpec) else SuperSpec.from_dict(spec)
        kwargs.setdefault("name", "supernet")
        super().__init__(**kwargs)
        self.spec = spec
        base, t = spec.base, TRAINABLE_SET
        shape = (None, max(spec.resolutions), max(spec.resolutions), 3)

        def built(layer):  # weights exist before the first call, so `.keras` files load into a fresh super-net
            nonlocal shape
            layer.build(shape)
            shape = layer.compute_output_shape(shape)
            return layer

        self.stem = built(folded_conv_layer(base.stem, "stem", base.padding, t))
        self.block_0 = built(MBBlock(base.blocks[0], base.padding, t, name="block_0"))
        self.slot_blocks = [
            built(
                ElasticMBBlock(
                    base.blocks[slot.index], slot.kernels, slot.lite_groups, base.padding, t, name=f"block_{slot.index}"
                )
            )
            for slot in spec.slots
        ]
        f = base.feature_mix
        self.feature_mix = None if f is None else built(folded_conv_layer(f, "feature_mix", base.padding, t))
        self.head = built(head_layer(base, t))
        # only_first_replica: under MirroredStrategy all replicas train the first replica's sampled sub-net
        self._active = {
            name: self.add_weight(
                name=f"active_{name}",
                shape=_gene_shape(c),
                dtype="int32",
                initializer="zeros",
                trainable=False,
                aggregation="only_first_replica",
            )
            for name, c in _gene_choices(spec).items()
        }
        self._sampling = self.add_weight(
            name="random_sampling",
            shape=(),
            dtype="int32",
            initializer="zeros",
            trainable=False,
            aggregation="only_first_replica",
        )
        # the sub-net every other sampled step trains (at a random resolution): see `set_random_sampling`
        full = backbone_arch(spec)
        self._full_genes = self.genes(full)
        self.set_active(full)
        self.built = True

    @classmethod
    def from_backbone(
        cls,
        name,
        num_classes,
        labels=(),
        resolutions=DEFAULT_RESOLUTIONS,
        dropout=0.2,
        weights_dir=None,
        elastic_width=None,
    ):
        """The super-net around a named MB backbone (mcunet-5fps, proxyless-w0.3, mbv2-w0.35, or the random-weight
        proxylessnas-mobile) or a once-for-all checkpoint imported by `tinytl import-ofa` (its `.npz` path).

        The backbone's main weights are placed by path and its expanded channels sorted by importance (a
        converted once-for-all net is already sorted: its narrower sub-nets were trained on the first channels);
        the head (`num_classes`, `labels`, `dropout`) and the lite residual branches are new. The head starts at
        zero, so every sub-net starts at the uniform guess (loss ln(num_classes)): a random head's logits scale with
        the features, whose norm differs from sub-net to sub-net (mcunet-5fps at 64 px started its full sub-net at
        loss 6.0 for 10 classes). `elastic_width` (kernel sizes and expand ratios) defaults to whether the weights
        were trained for it (a converted once-for-all checkpoint).
        """
        backbone, cfg, arrays, presorted = _backbone_weights(name, weights_dir)
        base = cfg.replace(
            num_classes=num_classes, labels=tuple(labels), dropout=dropout, trainable=TrainableSet(), method=None
        )
        elastic_width = presorted if elastic_width is None else elastic_width
        net = cls(super_spec(base, backbone, resolutions, elastic_width))
        net.head.kernel.assign(np.zeros(net.head.kernel.shape, "float32"))
        if arrays is not None:
            net.load_backbone_weights(arrays)
            if not presorted:
                net.sort_channels()
        return net

    def calibrate(self, dataset, batches=CALIBRATION_BATCHES):
        """Set every slot's mean compensation (see `tinytl_tf.supernet.elastic`) from the full sub-net's
        per-channel means over the first `batches` batches of `dataset` (batched (images, labels)), so that smaller
        sub-nets keep the full net's means; the full sub-net's function does not change. Call it before
        fine-tuning: the means then become part of every sub-net (folded into the biases of extracted ones)."""
        arch = backbone_arch(self.spec)
        sums = [[0.0, 0.0] for _ in self.slot_blocks]
        count = 0
        for images, _ in dataset.take(batches):
            x = self.block_0(self.stem(_resized(images, arch.resolution)))
            n = int(images.shape[0])
            for p, block in enumerate(self.slot_blocks):
                for i, mean in enumerate(block.full_width_means(x)):
                    sums[p][i] += n * mean.numpy()
                x = block(
                    x,
                    kernel=arch.kernels[p],
                    mid=block.block.mid,
                    lite=arch.lites[p],
                    lite_kernel=arch.lite_kernels[p],
                    lite_groups=arch.lite_groups[p],
                )
            count += n
        if not count:
            raise ValueError("calibrate: the dataset yielded no images")
        for block, (input_sum, mid_sum) in zip(self.slot_blocks, sums):
            block.depthwise.input_mean.assign(input_sum / count)
            block.mid_mean.assign(mid_sum / count)

    def load_backbone_weights(self, arrays):
        """Assign a backbone's `{path: array}` (every main weight; transform matrices optional; a head is
        ignored); lite branches, the head and missing transform matrices keep their values."""
        given = {p: a for p, a in arrays.items() if not p.startswith("head/")}
        keep = {v.path: v.numpy() for v in self.weights if v.path not in given and _is_new(v)}
        load_weights_by_path(self, {**given, **keep})

    def sort_channels(self):
        """Sort every slot's expanded channels by importance (`ElasticMBBlock.sort_channels`); the super-net's
        function is unchanged at full width."""
        for block in self.slot_blocks:
            block.sort_channels()

    def set_active(self, arch):
        """Make `arch` (a `space.Arch`) the sub-net the super-net computes; ConfigError names a bad gene."""
        for name, values in self.genes(arch).items():
            self._active[name].assign(values)

    def genes(self, arch):
        """{gene: int32 array} of `arch` (a `space.Arch`) as the graph reads them; ConfigError names a bad gene."""
        validate_arch(self.spec, arch)
        mids = [mid_channels(s, e) for s, e in zip(self.spec.slots, arch.expands)]
        values = (arch.resolution, arch.depths, arch.kernels, mids, arch.lites, arch.lite_kernels, arch.lite_groups)
        return {name: np.asarray(v, np.int32) for name, v in zip(GENES, values)}

    def sample(self, rng):
        """Activate a uniformly random sub-net (`rng`: numpy Generator) and return it."""
        arch = sample(self.spec, rng)
        self.set_active(arch)
        return arch

    def set_random_sampling(self, enabled):
        """When enabled, every `fit` step first activates a sub-net, sampled in-graph (a variable, so switching
        needs no retrace; it is saved with the model): on even optimizer steps a uniformly random one, on odd
        steps the full one (`backbone_arch`: every block, every lite branch) at a random resolution. The full
        sub-net is the upper slice of BigNAS's sandwich rule (Yu et al., BigNAS, 2020): with uniform sampling alone
        each lite branch trained about half the steps in ever-changing company, and the super-net rated sub-nets
        with more lite branches hardly above those with fewer, though fine-tuned they gain."""
        self._sampling.assign(int(bool(enabled)))

    def train_step(self, data):
        sampling = tf.convert_to_tensor(self._sampling) > 0
        full_step = tf.equal(self.optimizer.iterations % 2, 1)
        for name, choices in _gene_choices(self.spec).items():
            active, picked = self._active[name], _sample_gene(choices)
            if name != "resolution":
                picked = tf.where(full_step, tf.constant(self._full_genes[name]), picked)
            active.assign(tf.where(sampling, picked, tf.convert_to_tensor(active)))
        return super().train_step(data)

    def call(self, images, training=None):
        genes = {name: tf.convert_to_tensor(v) for name, v in self._active.items()}
        branches = [functools.partial(self._forward, images, r, genes, training) for r in self.spec.resolutions]
        if len(branches) == 1:
            return branches[0]()
        index = tf.argmax(
            tf.cast(tf.equal(tf.constant(self.spec.resolutions, tf.int32), genes["resolution"]), tf.int32),
            output_type=tf.int32,
        )
        return tf.switch_case(index, branches)

    def _forward(self, images, resolution, genes, training):
        return self.elastic_forward(self.static_features(images, resolution), genes, training)

    def static_features(self, images, resolution):
        """The output of the layers every sub-net shares before its first elastic block (stem, block_0) for images
        at `resolution`: what `elastic_forward` starts from."""
        return self.block_0(self.stem(_resized(images, resolution)))

    def elastic_forward(self, x, genes, training=False, skip_inactive=False):
        """Logits of the sub-net `genes` (gene name -> int32 tensor, as `genes` returns them) from
        `static_features`. `skip_inactive` (inference only) runs dropped blocks and absent lite branches under
        tf.cond, so they cost nothing; the outputs are the same. Training selects instead: a cond traces about
        twice as slowly and measured no faster per step there."""
        genes = SimpleNamespace(**genes)
        for p, (slot, block) in enumerate(zip(self.spec.slots, self.slot_blocks)):
            run = functools.partial(
                block,
                kernel=genes.kernels[p],
                mid=genes.mids[p],
                lite=genes.lites[p],
                lite_kernel=genes.lite_kernels[p],
                lite_groups=genes.lite_groups[p],
                skip_inactive=skip_inactive,
            )
            depth = self.spec.stages[slot.stage].index(p)
            # a block past its stage's depth passes x on (only shortcut blocks can be)
            active = genes.depths[slot.stage] > depth
            if depth == 0:
                x = run(x)
            elif skip_inactive:
                x = tf.cond(active, functools.partial(run, x), functools.partial(tf.identity, x))
            else:
                x = tf.where(active, run(x), x)
        if self.feature_mix is not None:
            x = self.feature_mix(x)
        return self.head(x, training=training)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.spec.base.num_classes)

    def extract_subnet(self, arch, method="tinytl-lb"):
        """The sub-net `arch` as a plain `TinyNet` (`build_model(subnet_config(spec, arch, method))`) with this
        super-net's current weights: its outputs equal the super-net's with `set_active(arch)` on inputs at
        `arch.resolution`."""
        cfg = subnet_config(self.spec, arch, method)
        model = build_model(cfg)
        arrays = {v.path: v.numpy() for v in self.weights if v.path.split("/")[0] in STATIC_LAYERS}
        for j, p in enumerate(active_slots(self.spec, arch), start=1):
            weights = self.slot_blocks[p].subblock_weights(cfg.blocks[j])
            arrays.update({f"block_{j}/{path}": a for path, a in weights.items()})
        return load_weights_by_path(model, arrays)

    def get_config(self):
        return {"spec": self.spec.to_dict(), "name": self.name}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        return cls(**config)


def eval_batches(dataset, batch_size=EVAL_BATCH):
    """A batched (images, labels) data set re-batched for measuring sub-nets and cached, so it is read once."""
    return dataset.unbatch().batch(batch_size).cache()


class SubnetEvaluator:
    """Top-1 accuracy of many sub-nets of one super-net on one labelled data set, each at the cost of its own
    layers: the shared layers' output (`static_features`) is computed once per batch and resolution for every
    sub-net at that resolution, dropped blocks and absent lite branches are skipped, and one traced function per
    resolution serves every sub-net (the genes are its inputs). The accuracies are those of `set_active(arch)`
    and `evaluate`, which trace a graph of every resolution's branch and run every block of each sub-net."""

    def __init__(self, net, dataset):
        """`dataset`: batched (images, labels) at any one size, iterated once per resolution and call, so best
        `eval_batches` of the data (which super-nets of the same input normalisation can share)."""
        self.net = net
        self.dataset = dataset
        images, labels = self.dataset.element_spec
        self._images = tf.TensorSpec(images.shape, images.dtype)
        self._labels = tf.TensorSpec([None], tf.int32)
        self._functions = {}

    def _traced(self, resolution):
        """(static features, per-image hits) traced for `resolution`, batch size left open."""
        if resolution not in self._functions:
            net = self.net
            static = tf.function(lambda images: net.static_features(images, resolution), input_signature=[self._images])
            x = static.get_concrete_function().structured_outputs
            genes = {
                name: tf.TensorSpec(np.shape(v), tf.int32) for name, v in net.genes(backbone_arch(net.spec)).items()
            }

            def hits(x, labels, genes):
                logits = net.elastic_forward(x, genes, training=False, skip_inactive=True)
                return tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels)

            traced = tf.function(hits, input_signature=[tf.TensorSpec(x.shape, x.dtype), self._labels, genes])
            self._functions[resolution] = static, traced
        return self._functions[resolution]

    def hits(self, archs):
        """Whether each sub-net in `archs` (`space.Arch`s of the net's spec) classifies each image right: a bool
        array [len(archs), images], so two sub-nets can be compared image by image (a paired test)."""
        genes = [{k: tf.constant(v) for k, v in self.net.genes(a).items()} for a in archs]
        rows = [[] for _ in archs]
        for resolution in sorted({a.resolution for a in archs}):
            members = [i for i, a in enumerate(archs) if a.resolution == resolution]
            static, traced = self._traced(resolution)
            for images, labels in self.dataset:
                x = static(images)
                labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)
                for i in members:
                    rows[i].append(traced(x, labels, genes[i]).numpy())
        if archs and not sum(len(r) for r in rows[0]):
            raise ValueError("SubnetEvaluator: the data set yielded no images")
        return np.array([np.concatenate(r) if r else np.zeros(0, bool) for r in rows], bool).reshape(len(archs), -1)

    def accuracies(self, archs):
        """Top-1 accuracy of each sub-net in `archs` (float64 array in order)."""
        return self.hits(archs).mean(axis=1) if archs else np.zeros(0)


def _resized(images, resolution):
    """Images bilinearly resized to `resolution` (unchanged when they already have it)."""
    if tuple(images.shape[1:3]) != (resolution, resolution):
        return tf.image.resize(images, [resolution, resolution], "bilinear")
    return images


def _is_new(variable):
    return any(tag in variable.path for tag in NEW_WEIGHTS) or variable.dtype == "int32"


def _gene_shape(choices):
    """() for a gene with one flat tuple of choices (resolution), else one value per stage or slot."""
    return (len(choices),) if isinstance(choices[0], tuple) else ()


def _gene_choices(spec):
    """`space.gene_choices` as in-graph genes: expand ratios become the mid channel counts they select."""
    c = gene_choices(spec)
    mids = tuple(tuple(mid_channels(s, e) for e in s.expands) for s in spec.slots)
    return {
        "resolution": c["resolution"],
        "depths": c["depths"],
        "kernels": c["kernels"],
        "mids": mids,
        "lites": c["lites"],
        "lite_kernels": c["lite_kernels"],
        "lite_groups": c["lite_groups"],
    }


def _sample_gene(choices):
    """In-graph uniform pick among `choices` (a scalar for a flat tuple, else one per position)."""
    per_position = _gene_shape(choices) != ()
    rows = choices if per_position else (choices,)
    width = max(len(c) for c in rows)
    table = tf.constant([list(c) + [c[-1]] * (width - len(c)) for c in rows], tf.int32)
    counts = tf.constant([len(c) for c in rows], tf.float32)
    index = tf.minimum(tf.cast(tf.random.uniform([len(rows)]) * counts, tf.int32), tf.cast(counts, tf.int32) - 1)
    picked = tf.gather(table, index, batch_dims=1)
    return picked if per_position else picked[0]


def write_weights_file(path, backbone, cfg, arrays):
    """Write a converted super-net backbone (`tinytl import-ofa`): its largest sub-net's `NetConfig`, weights
    by path (transform matrices included) and the fact that its channels are already importance-sorted."""
    meta = json.dumps({"backbone": backbone, "net_config": cfg.to_dict(), "channels_sorted": True})
    payload = {WEIGHTS_FILE_META: np.array(meta), **{p: np.asarray(a, np.float32) for p, a in arrays.items()}}

    def write(tmp):
        with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to another suffix
            np.savez(f, **payload)

    atomic_write(path, write)


def read_weights_file(path):
    """(backbone name, NetConfig, {path: array}, channels_sorted) of a file written by `write_weights_file`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no converted super-net weights at {path}; write them with `tinytl import-ofa`")
    try:
        z = np.load(path)
        meta = json.loads(str(z[WEIGHTS_FILE_META]))
        arrays = {k: z[k] for k in z.files if k != WEIGHTS_FILE_META}
        return meta["backbone"], NetConfig.from_dict(meta["net_config"]), arrays, bool(meta["channels_sorted"])
    except (KeyError, TypeError, ValueError, OSError) as e:
        raise ValueError(f"{path} is not a super-net weights file written by `tinytl import-ofa` ({e})") from None


def _backbone_weights(name, weights_dir):
    """(backbone name, NetConfig, {path: array} or None, channels already sorted) of a backbone name or file."""
    if name in BACKBONES:
        cfg, arrays = BACKBONES[name].load(weights_dir)
        return name, cfg, arrays, False
    if str(name).endswith(".npz"):
        return read_weights_file(name)
    raise UnknownBackbone(
        f"unknown backbone {name!r}; valid: {', '.join(BACKBONES)}, or a .npz written by `tinytl import-ofa`"
    )
