"""tf.data input pipelines for transfer learning: an image folder, a prepared tfds data set, or the embedded default.

    data = load_image_folder(path, resolution, mean, std, batch_size, val_fraction=None, seed=0)
    data = load_tfds(name, data_dir, resolution, mean, std, batch_size, seed=0)
    model.fit(data.train, validation_data=data.test, epochs=...)
    images = load_eval_folder(path, resolution, mean, std, batch_size, class_names=model_labels)  # .test only

Each returns an `ImageData`: batched `train` / `test` datasets of (float32 [B, R, R, 3], int32 [B]), `class_names`,
`num_train`, `num_test` and `skipped` (unreadable images left out); `load_eval_folder` has no `train` (None).
`default_data_dir()` is the embedded Caltech-10 subset (10 classes, 30 train + 10 test images each; see
assets/caltech10/ATTRIBUTION.md).

Preprocessing (the TinyTL reference pipeline): train = random-resized crop + horizontal flip, test = resize the
shorter side to resolution / 0.875 + centre crop; then (p - mean) / std. Decoding and both transforms run the
numpy/Pillow code of
`tinytl_tf.imagefiles` inside the pipeline, so the desktop test pixels equal the on-device ones exactly. That is also
why files are found by `imagefiles.scan_image_folder` rather than `keras.utils.image_dataset_from_directory` or
`tfds.folder_dataset.ImageFolder`: those decode with TensorFlow (different pixels from Pillow's), fail mid-epoch on
a corrupt file and offer no deterministic per-class split. Train order is reshuffled every epoch and each image's
augmentation draws from its own seed, all derived from `seed`, so a run is reproducible.
"""

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from tinytl_tf import imagefiles
from tinytl_tf.config import check_resolution
from tinytl_tf.imagefiles import DataError

__all__ = [
    "DataError",
    "ImageData",
    "default_data_dir",
    "demo_data_dir",
    "load_eval_folder",
    "load_image_folder",
    "load_tfds",
]

TFDS_SHUFFLE_BUFFER = 4096  # encoded images held for shuffling a tfds split (a folder shuffles all its paths)


@dataclass(frozen=True)
class ImageData:
    """Batched, normalized datasets: `train` (reshuffled and re-augmented every epoch) and `test` (fixed order)."""

    train: tf.data.Dataset | None  # None from load_eval_folder
    test: tf.data.Dataset
    class_names: tuple
    num_train: int
    num_test: int
    skipped: int = 0
    holdout: tf.data.Dataset | None = None  # `holdout_fraction` of the training images, test-style (fixed order)
    num_holdout: int = 0
    held_out_files: tuple = ()  # the `test` files split from a flat folder (empty for a test/ folder or tfds)


def default_data_dir():
    """The embedded Caltech-10 subset shipped with the package (`train/<class>/`, `test/<class>/`)."""
    return Path(__file__).resolve().parent / "assets" / "caltech10"


def demo_data_dir():
    """The embedded CIFAR-10 subset the demo trains on (10 classes, 100 train + 30 test images each; see
    assets/cifar10_small/ATTRIBUTION.md): far from ImageNet, so TinyTL's gain over FT-Last shows."""
    return Path(__file__).resolve().parent / "assets" / "cifar10_small"


def load_image_folder(path, resolution, mean, std, batch_size, val_fraction=None, seed=0, holdout_fraction=None):
    """A class-per-folder tree as an `ImageData`; layouts and split rules: `imagefiles.scan_image_folder`."""
    split = imagefiles.scan_image_folder(path, val_fraction=val_fraction, seed=seed, holdout_fraction=holdout_fraction)
    prep = _Preprocess(resolution, mean, std, batch_size, encoded=False)
    return ImageData(
        prep.train(_files(split.train), len(split.train), seed),
        prep.test(_files(split.test)),
        split.class_names,
        len(split.train),
        len(split.test),
        split.skipped,
        prep.test(_files(split.holdout)) if split.holdout else None,
        len(split.holdout),
        tuple(f for f, _ in split.test) if split.flat else (),
    )


def load_eval_folder(path, resolution, mean, std, batch_size, class_names=(), only=None):
    """`path/test/<class>/` (or `path/<class>/`) as the `test` of an `ImageData` (`train` is None), labelled by
    a trained model's `class_names`, limited to the relative paths `only` if given; see
    `imagefiles.scan_test_folder`."""
    split = imagefiles.scan_test_folder(path, class_names, only)
    test = _Preprocess(resolution, mean, std, batch_size, encoded=False).test(_files(split.test))
    return ImageData(None, test, split.class_names, 0, len(split.test), split.skipped)


def load_tfds(name, data_dir, resolution, mean, std, batch_size, seed=0):
    """A tfds data set already prepared under `data_dir` (None: tfds' default) as an `ImageData`; never downloads.

    Uses its "train" split and its "test" split (else "validation"). Images stay encoded until the pipeline decodes
    them with Pillow (`tfds.decode.SkipDecoding`), so they are preprocessed exactly like files from a folder.
    """
    import tensorflow_datasets as tfds  # lazy: slow to import and only needed here

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise DataError(
            f"tfds data set '{name}' is unknown and not found under data_dir={data_dir}; check the name"
        ) from None
    where = f"data_dir={data_dir}" if data_dir else "the default tfds data_dir"
    if not builder.is_prepared():
        raise DataError(
            f"tfds data set '{name}' is not prepared in {where} and nothing is downloaded here; "
            f"prepare it where there is network (`tfds build {name} --data_dir DIR`) and copy DIR over, "
            "or use an image folder"
        )
    info = builder.info
    keys = info.supervised_keys
    if not keys or not isinstance(info.features[keys[0]], tfds.features.Image):
        raise DataError(
            f"tfds data set '{name}' has no (image, label) supervised keys (got {keys}); "
            "it is not an image classification set"
        )
    test_split = next((s for s in ("test", "validation") if s in info.splits), None)
    if "train" not in info.splits or test_split is None:
        raise DataError(
            f"tfds data set '{name}' needs a train and a test (or validation) split; it has {sorted(info.splits)}"
        )

    def split(s):
        ds = builder.as_dataset(
            split=s,
            as_supervised=True,
            shuffle_files=s == "train",
            decoders={keys[0]: tfds.decode.SkipDecoding()},
            read_config=tfds.ReadConfig(shuffle_seed=seed),
        )
        return ds.map(_plain(lambda image, label: (image, tf.cast(label, tf.int32))))

    num_train = info.splits["train"].num_examples
    prep = _Preprocess(resolution, mean, std, batch_size, encoded=True)
    return ImageData(
        prep.train(split("train"), min(num_train, TFDS_SHUFFLE_BUFFER), seed),
        prep.test(split(test_split)),
        tuple(info.features[keys[1]].names),
        num_train,
        info.splits[test_split].num_examples,
    )


def _plain(fn):
    """A map function traced as written: it has no Python control flow for AutoGraph to convert, and AutoGraph's
    failed attempts (lambdas that share a line, `numpy_function` wrappers) print pages of warnings."""
    return tf.autograph.experimental.do_not_convert(fn)


def _files(pairs):
    paths, labels = zip(*pairs) if pairs else ((), ())
    # bytes, not str: a file name that is not UTF-8 (surrogate-escaped by Python) would stop tf.constant
    paths = [os.fsencode(p) for p in paths]
    return tf.data.Dataset.from_tensor_slices((tf.constant(paths, tf.string), tf.constant(labels, tf.int32)))


class _Preprocess:
    """Turns datasets of (source, label) into batched, normalized ones. A source is a file path, or encoded image
    bytes when `encoded`; decoding and both transforms run `imagefiles` in Python (tf.numpy_function)."""

    def __init__(self, resolution, mean, std, batch_size, encoded):
        check_resolution(resolution)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.resolution, self.batch_size, self.encoded = resolution, batch_size, encoded
        self.mean, self.std = tf.constant(mean, tf.float32), tf.constant(std, tf.float32)

    def train(self, ds, shuffle_buffer, seed):
        """Reshuffled every epoch; each image's crop and flip draw from its own seed, so `seed` fixes the run."""

        def augment(source, item_seed):
            return imagefiles.train_transform(
                self._read(source), self.resolution, np.random.default_rng(abs(int(item_seed)))
            )

        ds = ds.shuffle(max(shuffle_buffer, 1), seed=seed, reshuffle_each_iteration=True)
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
        ds = tf.data.Dataset.zip((ds, seeds)).map(
            _plain(lambda item, s: (self._py(augment, item[0], s), item[1])), num_parallel_calls=tf.data.AUTOTUNE
        )
        return self._finish(ds)

    def test(self, ds):
        def crop(source):
            return imagefiles.eval_transform(self._read(source), self.resolution)

        return self._finish(
            ds.map(_plain(lambda source, label: (self._py(crop, source), label)), num_parallel_calls=tf.data.AUTOTUNE)
        )

    def _read(self, source):
        return imagefiles.load_rgb(source if self.encoded else os.fsdecode(source))

    def _py(self, fn, *args):
        image = tf.numpy_function(fn, args, tf.uint8, stateful=False)
        return tf.ensure_shape(image, (self.resolution, self.resolution, 3))

    def _finish(self, ds):
        ds = ds.batch(self.batch_size).map(_plain(lambda x, y: ((tf.cast(x, tf.float32) - self.mean) / self.std, y)))
        return ds.prefetch(tf.data.AUTOTUNE)
