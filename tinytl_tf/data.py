"""tf.data input pipelines for transfer learning: an image folder, a prepared tfds data set, or the embedded default.

    data = load_image_folder(path, resolution, mean, std, batch_size, val_fraction=None, seed=0)
    data = load_tfds(name, data_dir, resolution, mean, std, batch_size, seed=0)
    model.fit(data.train, validation_data=data.test, epochs=...)

Both return an `ImageData`: batched `train` / `test` datasets of (float32 [B, R, R, 3], int32 [B]), `class_names`,
`num_train`, `num_test` and `skipped` (unreadable images left out). `default_data_dir()` is the embedded Caltech-10
subset (10 classes, 30 train + 10 test images each; see assets/caltech10/ATTRIBUTION.md).

Preprocessing (REFERENCE §5): train = random-resized crop + horizontal flip, test = resize the shorter side to
resolution / 0.875 + centre crop; then (p - mean) / std. Decoding and both transforms run the numpy/Pillow code of
`tinytl_tf.imageio` inside the pipeline, so the desktop test pixels equal the on-device ones exactly. That is also
why files are found by `imageio.scan_image_folder` rather than `keras.utils.image_dataset_from_directory` or
`tfds.folder_dataset.ImageFolder`: those decode with TensorFlow (different pixels from Pillow's), fail mid-epoch on
a corrupt file and offer no deterministic per-class split. Train order is reshuffled every epoch and each image's
augmentation draws from its own seed, all derived from `seed`, so a run is reproducible.
"""

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from tinytl_tf import imageio
from tinytl_tf.config import check_resolution
from tinytl_tf.imageio import DataError

__all__ = ["DataError", "ImageData", "default_data_dir", "load_image_folder", "load_tfds"]

TFDS_SHUFFLE_BUFFER = 4096  # encoded images held for shuffling a tfds split (a folder shuffles all its paths)


@dataclass(frozen=True)
class ImageData:
    """Batched, normalized datasets: `train` (reshuffled and re-augmented every epoch) and `test` (fixed order)."""

    train: tf.data.Dataset
    test: tf.data.Dataset
    class_names: tuple
    num_train: int
    num_test: int
    skipped: int = 0


def default_data_dir():
    """The embedded Caltech-10 subset shipped with the package (`train/<class>/`, `test/<class>/`)."""
    return Path(__file__).resolve().parent / "assets" / "caltech10"


def load_image_folder(path, resolution, mean, std, batch_size, val_fraction=None, seed=0):
    """A class-per-folder tree as an `ImageData`; layouts and split rules: `imageio.scan_image_folder`."""
    split = imageio.scan_image_folder(path, val_fraction=val_fraction, seed=seed)

    def pairs(items):
        paths, labels = zip(*items) if items else ((), ())
        return tf.data.Dataset.from_tensor_slices((tf.constant(paths, tf.string), tf.constant(labels, tf.int32)))

    train, test = _pipelines(
        pairs(split.train), pairs(split.test), False, len(split.train), resolution, mean, std, batch_size, seed
    )
    return ImageData(train, test, split.class_names, len(split.train), len(split.test), split.skipped)


def load_tfds(name, data_dir, resolution, mean, std, batch_size, seed=0):
    """A tfds data set already prepared under `data_dir` (None: tfds' default) as an `ImageData`; never downloads.

    Uses its "train" split and its "test" split (else "validation"). Images stay encoded until the pipeline decodes
    them with Pillow (`tfds.decode.SkipDecoding`), so they are preprocessed exactly like files from a folder.
    """
    import tensorflow_datasets as tfds  # lazy: slow to import and only needed here

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise DataError(f"tfds data set '{name}' is unknown and not found under data_dir={data_dir}; check the name") from None
    where = f"data_dir={data_dir}" if data_dir else "the default tfds data_dir"
    if not builder.is_prepared():
        raise DataError(
            f"tfds data set '{name}' is not prepared in {where} and nothing is downloaded here; prepare it where there is "
            f"network (`tfds build {name} --data_dir DIR`) and copy DIR over, or use an image folder"
        )
    info = builder.info
    keys = info.supervised_keys
    if not keys or not isinstance(info.features[keys[0]], tfds.features.Image):
        raise DataError(f"tfds data set '{name}' has no (image, label) supervised keys (got {keys}); it is not an image classification set")
    test_split = next((s for s in ("test", "validation") if s in info.splits), None)
    if "train" not in info.splits or test_split is None:
        raise DataError(f"tfds data set '{name}' needs a train and a test (or validation) split; it has {sorted(info.splits)}")

    def split(s):
        ds = builder.as_dataset(
            split=s,
            as_supervised=True,
            shuffle_files=s == "train",
            decoders={keys[0]: tfds.decode.SkipDecoding()},
            read_config=tfds.ReadConfig(shuffle_seed=seed),
        )
        return ds.map(lambda image, label: (image, tf.cast(label, tf.int32)))

    num_train = info.splits["train"].num_examples
    train, test = _pipelines(
        split("train"), split(test_split), True, min(num_train, TFDS_SHUFFLE_BUFFER), resolution, mean, std, batch_size, seed
    )
    return ImageData(train, test, tuple(info.features[keys[1]].names), num_train, info.splits[test_split].num_examples)


def _pipelines(train, test, encoded, shuffle_buffer, resolution, mean, std, batch_size, seed):
    """Decode + augment/crop (in Python, via imageio), batch, normalize, prefetch. Elements are (source, label):
    a file path, or encoded image bytes when `encoded`."""
    check_resolution(resolution)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    mean_t, std_t = tf.constant(mean, tf.float32), tf.constant(std, tf.float32)

    def read(source):
        return imageio.load_rgb(source if encoded else os.fsdecode(source))

    def train_np(source, item_seed):
        return imageio.train_transform(read(source), resolution, np.random.default_rng(abs(int(item_seed))))

    def test_np(source):
        return imageio.eval_transform(read(source), resolution)

    def py(fn, *args):
        image = tf.numpy_function(fn, args, tf.uint8, stateful=False)
        return tf.ensure_shape(image, (resolution, resolution, 3))

    def finish(ds):
        ds = ds.batch(batch_size).map(lambda x, y: ((tf.cast(x, tf.float32) - mean_t) / std_t, y))
        return ds.prefetch(tf.data.AUTOTUNE)

    train = train.shuffle(max(shuffle_buffer, 1), seed=seed, reshuffle_each_iteration=True)
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    train = tf.data.Dataset.zip((train, seeds)).map(
        lambda item, s: (py(train_np, item[0], s), item[1]), num_parallel_calls=tf.data.AUTOTUNE
    )
    test = test.map(lambda source, label: (py(test_np, source), label), num_parallel_calls=tf.data.AUTOTUNE)
    return finish(train), finish(test)
