"""Data loading: image decoding and transforms, folder discovery and splits, tf.data pipelines, tfds, Caltech."""

import json
import logging
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tinytl_tf import imagefiles
from tinytl_tf.contract import CROP_FRACTION
from tinytl_tf.data import DataError, ImageData, default_data_dir, load_eval_folder, load_image_folder, load_tfds
from tinytl_tf.jobs import caltech

MEAN, STD = (128.0, 128.0, 128.0), (128.0, 128.0, 128.0)


def noise(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def truncated_jpeg(path):
    Image.fromarray(noise(64, 64)).save(path, "JPEG")
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 6 // 10])


def epoch(ds):
    xs, ys = zip(*((x.numpy(), y.numpy()) for x, y in ds))
    return np.concatenate(xs), np.concatenate(ys)


# imagefiles: decoding -----------------------------------------------------------------------------------------------


def test_load_rgb_converts_modes_to_rgb(tmp_path):
    Image.fromarray(np.full((10, 12), 77, np.uint8)).save(tmp_path / "gray.jpg")
    Image.fromarray(np.full((10, 12, 3), (200, 30, 60), np.uint8)).convert("CMYK").save(tmp_path / "cmyk.jpg")
    rgba = np.zeros((10, 12, 4), np.uint8)
    rgba[:, :6] = (10, 200, 30, 255)  # left half opaque green, right half fully transparent black
    Image.fromarray(rgba).save(tmp_path / "alpha.png")
    palette = Image.new("P", (12, 10), 0)
    palette.putpalette([0, 0, 0, 250, 20, 20] + [0] * 762)
    palette.paste(1, (0, 0, 6, 10))
    palette.save(tmp_path / "palette.png", transparency=0)
    Image.fromarray(np.full((10, 12), 65535, np.uint16)).save(tmp_path / "gray16.png")

    out = {p.name: imagefiles.load_rgb(p) for p in tmp_path.iterdir()}
    for name, img in out.items():
        assert img.shape == (10, 12, 3) and img.dtype == np.uint8, name
    assert (out["gray.jpg"] == 77).all()
    np.testing.assert_allclose(out["cmyk.jpg"][5, 5], (200, 30, 60), atol=3)
    assert (out["alpha.png"][:, :6] == (10, 200, 30)).all() and (out["alpha.png"][:, 6:] == 255).all()  # on white
    assert (out["palette.png"][:, :6] == (250, 20, 20)).all() and (out["palette.png"][:, 6:] == 255).all()
    assert (out["gray16.png"] == 255).all()  # scaled from 16 bits, not clipped garbage


def test_load_rgb_applies_exif_orientation(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90 degrees clockwise to display
    Image.fromarray(noise(10, 20)).save(tmp_path / "phone.jpg", exif=exif)
    assert imagefiles.load_rgb(tmp_path / "phone.jpg").shape == (20, 10, 3)


def test_load_rgb_errors_name_the_file(tmp_path):
    truncated_jpeg(tmp_path / "cut.jpg")
    (tmp_path / "text.jpg").write_text("not an image")
    for name in ("cut.jpg", "text.jpg", "missing.png"):
        with pytest.raises(imagefiles.ImageError, match=name):
            imagefiles.load_rgb(tmp_path / name)
    with pytest.raises(imagefiles.ImageError, match="image bytes"):
        imagefiles.load_rgb(b"\xff\xd8garbage")


# imagefiles: transforms ---------------------------------------------------------------------------------------------


def test_eval_transform_resizes_shorter_side_then_centre_crops():
    size = 64
    short = round(size / CROP_FRACTION)
    img = noise(short, 100)  # shorter side already at the target: the resize is the identity
    left = (100 - size) // 2
    top = (short - size) // 2
    np.testing.assert_array_equal(imagefiles.eval_transform(img, size), img[top : top + size, left : left + size])
    for h, w in ((30, 200), (300, 40), (64, 64)):
        assert imagefiles.eval_transform(noise(h, w), size).shape == (size, size, 3)


def test_train_transform_is_random_but_seeded():
    img = noise(50, 80)
    a, b = (imagefiles.train_transform(img, 32, np.random.default_rng(7)) for _ in range(2))
    c = imagefiles.train_transform(img, 32, np.random.default_rng(8))
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    flat = np.full((50, 80, 3), 99, np.uint8)
    assert (imagefiles.train_transform(flat, 32, np.random.default_rng(0)) == 99).all()


def test_normalize_maps_pixels_to_float32():
    out = imagefiles.normalize(np.array([[[0, 128, 255]]], np.uint8), MEAN, STD)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[[-1.0, 0.0, 127 / 128]]])


# discovery and splits --------------------------------------------------------------------------------------------


def test_flat_layout_is_split_per_class_and_seeded(image_tree):
    root = image_tree({"a": 10, "b": 10, "c": 5})
    split = imagefiles.scan_image_folder(root, val_fraction=0.2, seed=0)
    assert split.class_names == ("a", "b", "c") and split.skipped == 0
    test_per_class = np.bincount([label for _, label in split.test], minlength=3)
    assert list(test_per_class) == [2, 2, 1]  # stratified
    assert len(split.train) == 20
    assert not {p for p, _ in split.train} & {p for p, _ in split.test}
    for path, label in split.train + split.test:
        assert Path(path).parent.name == split.class_names[label]
    assert imagefiles.scan_image_folder(root, val_fraction=0.2, seed=0) == split
    assert imagefiles.scan_image_folder(root, val_fraction=0.2, seed=1).test != split.test


def test_train_test_layout_is_used_as_given(image_tree):
    image_tree({"a": 3, "b": 2}, root="data/train")
    image_tree({"a": 1, "b": 2}, root="data/test", ext=".png")
    data = load_image_folder(image_tree({}, root="data"), 32, MEAN, STD, 2)
    assert isinstance(data, ImageData)
    assert (data.class_names, data.num_train, data.num_test, data.skipped) == (("a", "b"), 5, 3, 0)


def test_holdout_is_carved_from_training_images_only(image_tree):
    image_tree({"a": 10, "b": 5}, root="data/train")
    image_tree({"a": 2, "b": 2}, root="data/test")
    root = image_tree({}, root="data")
    plain = imagefiles.scan_image_folder(root)
    split = imagefiles.scan_image_folder(root, holdout_fraction=0.2)
    assert list(np.bincount([label for _, label in split.holdout], minlength=2)) == [2, 1]  # stratified
    assert split.test == plain.test  # the test images are never touched
    assert set(split.train) | set(split.holdout) == set(plain.train) and not set(split.train) & set(split.holdout)
    assert imagefiles.scan_image_folder(root, holdout_fraction=0.2) == split
    data = load_image_folder(root, 32, MEAN, STD, 4, holdout_fraction=0.2)
    assert (data.num_train, data.num_holdout, data.num_test) == (12, 3, 4)
    assert sum(int(y.shape[0]) for _, y in data.holdout) == 3
    with pytest.raises(DataError, match="holdout_fraction must be between 0 and 1"):
        imagefiles.scan_image_folder(root, holdout_fraction=1.5)


def test_val_fraction_is_ignored_for_a_train_test_tree(image_tree):
    image_tree({"a": 4, "b": 4}, root="data/train")
    image_tree({"a": 1, "b": 1}, root="data/test")
    split = imagefiles.scan_image_folder(image_tree({}, root="data"), val_fraction=0.5)
    assert (len(split.train), len(split.test)) == (8, 2)


def test_val_folder_is_the_test_split_when_there_is_no_test(image_tree):
    image_tree({"a": 2, "b": 2}, root="data/train")
    image_tree({"a": 1, "b": 1}, root="data/val")
    split = imagefiles.scan_image_folder(image_tree({}, root="data"))
    assert (len(split.train), len(split.test)) == (4, 2)


def test_unreadable_images_are_skipped_and_counted(image_tree, caplog):
    root = image_tree({"a": 4, "b": 4})
    truncated_jpeg(root / "a" / "cut.jpg")
    (root / "b" / "notes.png").write_text("not an image")
    (root / "b" / "README.txt").write_text("ignored: not an image extension")
    with caplog.at_level(logging.WARNING, logger="tinytl_tf.imagefiles"):
        data = load_image_folder(root, 32, MEAN, STD, 3, val_fraction=0.25)
    assert data.skipped == 2
    assert "skipped 2 unreadable" in caplog.text
    assert data.num_train + data.num_test == 8
    x, y = epoch(data.train)  # a whole epoch runs without meeting the bad files
    assert len(x) == len(y) == data.num_train


@pytest.mark.parametrize(
    "setup, kwargs, message",
    [
        (lambda t, tree: t / "nope", {}, "does not exist"),
        (lambda t, tree: (t / "empty").mkdir() or t / "empty", {}, "no class sub-folders"),
        (lambda t, tree: tree({"a": 2, "b": 0}), {}, r"class folder .*b has no images"),
        (
            lambda t, tree: (tree({"a": 1, "b": 1}, "d/train"), tree({"a": 1, "c": 1}, "d/test"))[0].parent,
            {},
            r"only in train/: \['b'\], only in test/: \['c'\]",
        ),
        (lambda t, tree: tree({"a": 1}, "d/train").parent, {}, "has train/ but no test/"),
        (lambda t, tree: tree({"a": 2, "b": 2}), {"val_fraction": 1.0}, "between 0 and 1"),
        (lambda t, tree: tree({"a": 2}), {}, "only one class folder"),
    ],
    ids=["missing", "empty", "class-without-images", "class-mismatch", "no-test", "bad-fraction", "one-class"],
)
def test_data_errors_say_what_is_wrong(tmp_path, image_tree, setup, kwargs, message):
    root = setup(tmp_path, image_tree)
    with pytest.raises(DataError, match=message):
        load_image_folder(root, 32, MEAN, STD, 1, **kwargs)


def test_data_errors_for_unreadable_classes(image_tree):
    root = image_tree({"a": 2, "b": 0})
    (root / "b" / "x.jpg").write_text("junk")
    with pytest.raises(DataError, match=r"class 'b' .*no readable image"):
        load_image_folder(root, 32, MEAN, STD, 1)
    (root / "a" / "img_000.jpg").write_text("junk")
    (root / "a" / "img_001.jpg").write_text("junk")
    with pytest.raises(DataError, match="none of the 3 image files"):
        load_image_folder(root, 32, MEAN, STD, 1)


# tf.data pipelines -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [1, 4])
def test_batches_have_the_right_shape_and_range(image_tree, batch_size):
    data = load_image_folder(image_tree({"a": 5, "b": 4}), 32, MEAN, STD, batch_size, val_fraction=0.3)
    for ds, n in ((data.train, data.num_train), (data.test, data.num_test)):
        sizes = []
        for x, y in ds:
            assert x.dtype.name == "float32" and y.dtype.name == "int32"
            assert tuple(x.shape[1:]) == (32, 32, 3) and x.shape[0] == y.shape[0] <= batch_size
            assert -1.0 <= x.numpy().min() and x.numpy().max() <= 127 / 128
            sizes.append(int(x.shape[0]))
        assert sum(sizes) == n and len(sizes) == -(-n // batch_size)


def test_test_pipeline_equals_imagefiles_exactly():
    data = load_image_folder(default_data_dir(), 64, (120.0, 110.0, 100.0), (60.0, 50.0, 40.0), 16)
    split = imagefiles.scan_image_folder(default_data_dir())
    x, y = epoch(data.test)
    expected = np.stack(
        [
            imagefiles.normalize(imagefiles.eval_transform(imagefiles.load_rgb(p), 64), (120, 110, 100), (60, 50, 40))
            for p, _ in split.test
        ]
    )
    np.testing.assert_array_equal(x, expected)
    np.testing.assert_array_equal(y, [label for _, label in split.test])


def test_train_pipeline_is_reproducible_and_reshuffled_every_epoch(image_tree):
    root = image_tree({"a": 6, "b": 6})
    first = load_image_folder(root, 32, MEAN, STD, 4, seed=3).train
    again = load_image_folder(root, 32, MEAN, STD, 4, seed=3).train
    other = load_image_folder(root, 32, MEAN, STD, 4, seed=4).train
    e1, e2 = epoch(first), epoch(first)
    np.testing.assert_array_equal(e1[0], epoch(again)[0])
    assert not np.array_equal(e1[0], e2[0])  # new order and new crops in the next epoch
    assert not np.array_equal(e1[0], epoch(other)[0])
    assert sorted(e1[1]) == sorted(e2[1])


def test_eval_folder_labels_by_the_models_class_names(image_tree):
    image_tree({"b": 2, "c": 1}, root="data/test")
    image_tree({"z": 1}, root="data/train")  # ignored: only test/ is evaluated
    data = load_eval_folder(image_tree({}, root="data"), 32, MEAN, STD, 2, class_names=("a", "b", "c"))
    assert (data.train, data.num_train, data.num_test, data.class_names) == (None, 0, 3, ("a", "b", "c"))
    assert list(epoch(data.test)[1]) == [1, 1, 2]
    flat = load_eval_folder(image_tree({"x": 2}, root="flat"), 32, MEAN, STD, 2)
    assert (flat.class_names, flat.num_test) == (("x",), 2)
    with pytest.raises(DataError, match=r"\['x'\] .* not classes of the model"):
        load_eval_folder(image_tree({}, root="flat"), 32, MEAN, STD, 2, class_names=("a", "b"))


# the embedded subset ---------------------------------------------------------------------------------------------


def test_embedded_subset_has_ten_classes_of_thirty_plus_ten():
    root = default_data_dir()
    split = imagefiles.scan_image_folder(root)
    assert split.class_names == tuple(sorted(caltech.CALTECH10_CLASSES)) and split.skipped == 0
    assert list(np.bincount([label for _, label in split.train])) == [30] * 10
    assert list(np.bincount([label for _, label in split.test])) == [10] * 10
    files = list(root.rglob("*.jpg"))
    assert sum(f.stat().st_size for f in files) < 3_000_000
    assert all(96 <= min(Image.open(f).size) <= 128 for f in files)
    assert "CC BY 4.0" in (root / "ATTRIBUTION.md").read_text()


# tfds ------------------------------------------------------------------------------------------------------------


def write_tfds(data_dir, name, images, labels, class_names):
    """A prepared tfds data set (train and test splits from the same examples) written without a builder class."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    features = tfds.features.FeaturesDict(
        {"image": tfds.features.Image(shape=(None, None, 3)), "label": tfds.features.ClassLabel(names=class_names)}
    )
    folder = Path(data_dir) / name / "1.0.0"
    folder.mkdir(parents=True)
    for split in ("train", "test"):
        with tf.io.TFRecordWriter(str(folder / f"{name}-{split}.tfrecord-00000-of-00001")) as writer:
            for img, label in zip(images, labels):
                writer.write(features.serialize_example({"image": img, "label": label}))
    tfds.folder_dataset.write_metadata(
        data_dir=folder, features=features, split_infos=None,
        filename_template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
        check_data=True, supervised_keys=("image", "label"),
    )  # fmt: skip


def test_load_tfds_reads_a_prepared_set_like_a_folder(tmp_path):
    images = [noise(30 + i, 40, seed=i) for i in range(5)]
    write_tfds(tmp_path, "tiny_shapes", images, [0, 1, 2, 0, 1], ["x", "y", "z"])
    data = load_tfds("tiny_shapes", tmp_path, 32, MEAN, STD, 2)
    assert (data.class_names, data.num_train, data.num_test, data.skipped) == (("x", "y", "z"), 5, 5, 0)
    x, y = epoch(data.test)
    expected = np.stack([imagefiles.normalize(imagefiles.eval_transform(img, 32), MEAN, STD) for img in images])
    np.testing.assert_array_equal(x, expected)  # PNG-encoded by tfds, decoded by Pillow: lossless
    np.testing.assert_array_equal(y, [0, 1, 2, 0, 1])
    assert sorted(epoch(data.train)[1]) == [0, 0, 1, 1, 2]


def test_load_tfds_never_downloads(tmp_path):
    with pytest.raises(DataError, match="'mnist' is not prepared"):
        load_tfds("mnist", tmp_path, 32, MEAN, STD, 1)
    with pytest.raises(DataError, match="unknown"):
        load_tfds("no_such_dataset_xyz", tmp_path, 32, MEAN, STD, 1)
    assert not any(tmp_path.iterdir())


# Caltech-101 preparation -----------------------------------------------------------------------------------------


@pytest.fixture
def caltech_tars(tmp_path):
    """Two tarballs laid out like the shared Caltech-101 ones: images split across them, split files in part 2."""
    src = tmp_path / "src" / "caltech101"
    listing = {"train": [], "test": []}
    for k, cls in enumerate(("BACKGROUND_Google", "cat", "dog")):
        (src / "101_ObjectCategories" / cls).mkdir(parents=True)
        for i in range(1, 5):
            Image.fromarray(noise(40, 60, seed=10 * k + i)).save(
                src / "101_ObjectCategories" / cls / f"image_{i:04d}.jpg"
            )
            listing["test" if i == 4 else "train"].append(f"{cls}/image_{i:04d}.jpg")
    for split, names in listing.items():
        (src / f"{split}.txt").write_text("\n".join(names) + "\n")
    tars = tmp_path / "tars"
    tars.mkdir()
    parts = {
        1: ["101_ObjectCategories/BACKGROUND_Google", "101_ObjectCategories/cat"],
        2: ["101_ObjectCategories/dog", "train.txt", "test.txt"],
    }
    for part, members in parts.items():
        with tarfile.open(tars / f"caltech101_part{part}.tar", "w") as tar:
            for m in members:
                tar.add(src / m, arcname=f"caltech101/{m}")
    return tars


def test_prepare_caltech101_follows_the_split_files(tmp_path, caltech_tars):
    out = caltech.prepare_caltech101(caltech_tars, tmp_path / "prepared")
    assert json.loads((out / caltech.MARKER).read_text()) == {"train": 6, "test": 2, "classes": 2}
    assert sorted(p.name for p in (out / "train").iterdir()) == ["cat", "dog"]
    assert sorted(p.name for p in (out / "test" / "dog").iterdir()) == ["image_0004.jpg"]
    split = imagefiles.scan_image_folder(out)
    assert (split.class_names, len(split.train), len(split.test)) == (("cat", "dog"), 6, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared", "src", "tars"]  # no temporary left behind
    for tar in caltech_tars.iterdir():
        tar.unlink()
    assert caltech.prepare_caltech101(caltech_tars, out) == out  # complete already: nothing is read or rebuilt


def test_caltech_commands_prepare_and_subset(tmp_path, caltech_tars, capsys):
    from tinytl_tf import cli

    assert cli.main(["caltech", "prepare", str(caltech_tars), str(tmp_path / "prepared")]) == 0
    assert capsys.readouterr().out == f"{tmp_path / 'prepared'}\n"
    argv = ["caltech", "subset", str(tmp_path / "prepared"), str(tmp_path / "sub"), "--classes", "cat", "dog"]
    assert cli.main([*argv, "--n-train", "2", "--n-test", "1", "--short-side", "20"]) == 0
    assert len(list((tmp_path / "sub" / "train").glob("*/*.jpg"))) == 4
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"not a tar archive")
    assert cli.main(["caltech", "prepare", str(bad), str(tmp_path / "again")]) == 2
    assert "is not a readable tar archive" in capsys.readouterr().err


def test_prepare_caltech101_incomplete_input_leaves_nothing(tmp_path, caltech_tars):
    out = tmp_path / "prepared"
    with pytest.raises(DataError, match="no train.txt in"):
        caltech.prepare_caltech101([caltech_tars / "caltech101_part1.tar"], out)
    (caltech_tars / "caltech101_part1.tar").unlink()
    with pytest.raises(DataError, match=r"3 images listed in train.txt are missing \(e.g. cat/image_0001.jpg\)"):
        caltech.prepare_caltech101(caltech_tars, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src", "tars"]
    (out / "half").mkdir(parents=True)
    with pytest.raises(DataError, match="not a complete prepared tree"):
        caltech.prepare_caltech101(caltech_tars, out)


def test_make_subset_downscales_a_seeded_draw(tmp_path, caltech_tars):
    prepared = caltech.prepare_caltech101(caltech_tars, tmp_path / "prepared")
    out = caltech.make_subset(prepared, tmp_path / "sub", classes=("cat", "dog"), n_train=2, n_test=1, short_side=20)
    split = imagefiles.scan_image_folder(out)
    assert (len(split.train), len(split.test)) == (4, 2)
    assert all(min(Image.open(p).size) == 20 for p, _ in split.train + split.test)
    again = caltech.make_subset(prepared, tmp_path / "sub2", classes=("cat", "dog"), n_train=2, n_test=1, short_side=20)
    assert sorted(p.name for p in (again / "train" / "cat").iterdir()) == sorted(
        p.name for p in (out / "train" / "cat").iterdir()
    )
    with pytest.raises(DataError, match="already holds"):
        caltech.make_subset(prepared, out, classes=("cat",), n_train=1, n_test=1)


def test_prepare_real_caltech101(tmp_path, shared_assets):
    data = shared_assets / "data"
    if not (data / "caltech101_part1.tar").is_file():
        pytest.skip(f"Caltech-101 tarballs not in {data}")
    out = caltech.prepare_caltech101(data, tmp_path / "caltech101")
    assert json.loads((out / caltech.MARKER).read_text()) == {"train": 5784, "test": 2893, "classes": 101}
    assert len(list(out.rglob("*.jpg"))) == 5784 + 2893
    assert not (out / "train" / caltech.DROPPED_CLASS).exists()


def test_one_class_is_refused_without_decoding(image_tree, monkeypatch):
    monkeypatch.setattr(imagefiles, "load_rgb", lambda path: pytest.fail("decoded an image"))
    for root in (image_tree({"cat": 3}, root="flat"), image_tree({"cat": 3}, root="tt/train").parent):
        if root.name == "tt":
            image_tree({"cat": 1}, root="tt/test")
        with pytest.raises(imagefiles.DataError, match="only one class folder"):
            imagefiles.folder_layout(root)
    assert imagefiles.count_train_images(image_tree({"a": 5, "b": 10}, root="two")) == 4 + 8


def test_an_extreme_aspect_ratio_is_cropped_before_resizing(monkeypatch):
    """A 1 x 20000 strip: resizing it whole to a 146 px short side would allocate 146 x 2.9M pixels."""
    sizes = []
    resize = Image.Image.resize
    monkeypatch.setattr(
        Image.Image, "resize", lambda self, size, *a, **k: sizes.append(size) or resize(self, size, *a, **k)
    )
    strip = np.random.default_rng(0).integers(0, 255, (20000, 1, 3), dtype=np.uint8)
    out = imagefiles.eval_transform(strip, 128)
    assert out.shape == (128, 128, 3) and sizes == [(128, 128)]
    sizes.clear()
    photo = np.random.default_rng(0).integers(0, 255, (300, 200, 3), dtype=np.uint8)
    assert imagefiles.eval_transform(photo, 128).shape == (128, 128, 3) and sizes == [(146, 219)]  # unchanged path


def test_a_file_name_that_is_not_utf8_trains_on_the_desktop(image_tree):
    root = image_tree({"a": 2, "b": 2}, root="flat")
    src = next((root / "a").iterdir())
    os.rename(src, os.path.join(os.fsencode(root / "a"), b"caf\xe9.png"))
    data = load_image_folder(root, 32, MEAN, STD, 2, val_fraction=0.5)
    assert sum(int(y.shape[0]) for _, y in data.train) + sum(int(y.shape[0]) for _, y in data.test) == 4
