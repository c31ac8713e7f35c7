"""Image loading, preprocessing and class-per-folder discovery with numpy and Pillow only.

TF-free on purpose: the on-device (LiteRT) trainer uses this module without TensorFlow, and the desktop tf.data
pipeline (`tinytl_tf.data`) calls these same functions, so desktop and device see identical pixels.

- `load_rgb(path_or_bytes)` -> uint8 [H, W, 3]; `ImageError` (a ValueError naming the file) if unreadable.
- `eval_transform(image, size)`: resize the shorter side to round(size / CROP_FRACTION), centre crop size x size.
- `train_transform(image, size, rng)`: random-resized crop (RANDOM_CROP_SCALE, RANDOM_CROP_RATIO) + random flip.
- `normalize(image, mean, std)` -> float32 (p - mean) / std.
- `scan_image_folder(root, val_fraction=None, seed=0)` -> `FolderSplit`: the files of a class-per-folder tree,
  validated once (unreadable files dropped and counted) and split into train and test;
  `scan_test_folder(root, class_names)`: the same for a folder that is only evaluated.
"""

import logging
import math
import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from tinytl_tf.contract import CROP_FRACTION, RANDOM_CROP_RATIO, RANDOM_CROP_SCALE
from tinytl_tf.errors import TinyTLError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
DEFAULT_VAL_FRACTION = 0.2
ALPHA_BACKGROUND = (255, 255, 255)  # transparent pixels show white, as in an image viewer
MAX_RESIZED_ASPECT = 8  # eval_transform resizes only the centre of images more elongated than this
LAYOUT_HELP = "expected DIR/<class>/<images> or DIR/train/<class>/<images> plus DIR/test/<class>/<images>"


class ImageError(TinyTLError, ValueError):
    """A file is not a readable image (missing, corrupt, truncated or not an image); the message names it."""


class DataError(TinyTLError, ValueError):
    """A data set folder cannot be used; the message says what is wrong and what to do."""


def load_rgb(source):
    """Decode an image file (str/PathLike) or encoded image bytes to uint8 RGB [H, W, 3].

    Applies the EXIF orientation (phone photos), converts grayscale, CMYK and palette images to RGB, scales
    16-bit grayscale to 8 bits and composites any alpha over white (`ALPHA_BACKGROUND`) rather than exposing
    whatever colour values sit under fully transparent pixels. Decodes fully, so truncated files fail here.
    """
    name = "<image bytes>" if isinstance(source, (bytes, bytearray)) else os.fspath(source)
    try:
        with Image.open(BytesIO(source) if isinstance(source, (bytes, bytearray)) else source) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
    except Exception as e:  # Pillow signals bad data with OSError, SyntaxError, ValueError, struct.error, ...
        raise ImageError(f"{name}: not a readable image ({e})") from None
    if im.mode == "I" or im.mode.startswith("I;16"):  # convert("RGB") would clip 16-bit values at 255
        im = Image.fromarray(np.clip(np.asarray(im, np.float64) / 256, 0, 255).astype(np.uint8))
    if im.has_transparency_data:
        im = Image.alpha_composite(Image.new("RGBA", im.size, ALPHA_BACKGROUND + (255,)), im.convert("RGBA"))
    return np.asarray(im.convert("RGB"))


def eval_transform(image, size):
    """Resize (bilinear) so the shorter side is round(size / CROP_FRACTION), then take the centre size x size.

    Beyond MAX_RESIZED_ASPECT only the centre is resized (Pillow's `box`): a 1 x 20000 strip, whole, would take GBs.
    """
    h, w = image.shape[:2]
    short = round(size / CROP_FRACTION)
    new_w, new_h = (short, max(short, round(h * short / w))) if w <= h else (max(short, round(w * short / h)), short)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    if max(new_w, new_h) > MAX_RESIZED_ASPECT * short:
        box = (left * w / new_w, top * h / new_h, (left + size) * w / new_w, (top + size) * h / new_h)
        return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR, box=box))
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BILINEAR))
    return np.ascontiguousarray(resized[top : top + size, left : left + size])


def train_transform(image, size, rng, scale=RANDOM_CROP_SCALE, ratio=RANDOM_CROP_RATIO):
    """Random-resized crop to size x size (bilinear) and a horizontal flip with probability 1/2.

    The crop follows torchvision's RandomResizedCrop (the TinyTL reference pipeline): up to 10 tries of an area
    fraction in `scale` and a log-uniform aspect ratio in `ratio`, else a centre crop with the ratio clamped.
    `rng` is a numpy Generator, so a seed reproduces the augmentation exactly.
    """
    h, w = image.shape[:2]
    log_ratio = np.log(ratio)
    for _ in range(10):
        area = h * w * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        cw, ch = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            break
    else:
        cw, ch = w, h
        if w / h < ratio[0]:
            ch = round(w / ratio[0])
        elif w / h > ratio[1]:
            cw = round(h * ratio[1])
        top, left = (h - ch) // 2, (w - cw) // 2
    out = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR, box=(left, top, left + cw, top + ch)))
    return np.ascontiguousarray(out[:, ::-1] if rng.random() < 0.5 else out)


def normalize(image, mean, std):
    """uint8 pixels p -> float32 (p - mean) / std, computed in float32 exactly as the tf.data pipeline does."""
    return (image.astype(np.float32) - np.float32(mean)) / np.float32(std)


@dataclass(frozen=True)
class FolderSplit:
    """The readable images of a class-per-folder tree, as (path, label) pairs; label indexes `class_names`."""

    class_names: tuple
    train: tuple
    test: tuple
    skipped: int  # image files that could not be read and were left out
    holdout: tuple = ()  # carved from the training images (`holdout_fraction`): for choosing hyper-parameters
    flat: bool = False  # `test` was split from a flat root/<class>/ tree (no test/ folder)


def scan_image_folder(root, val_fraction=None, seed=0, holdout_fraction=None):
    """Find, validate and split the images under `root`.

    Layouts: `root/train/<class>/` with `root/test/<class>/` (or `root/val/<class>/` when there is no test/),
    used as given (`val_fraction` is ignored); or flat `root/<class>/`, split per class (stratified) with
    `val_fraction` of each class's images (default 0.2, at least one when the class has two or more) held out.
    A class's split depends only on `seed`, its name and its file names: reproducible, and adding a class does not
    reshuffle the others.
    Files with an extension in IMAGE_EXTENSIONS count as images (searched recursively; hidden entries ignored).
    Every image is decoded once here, so a corrupt or truncated file is dropped and counted, never met mid-epoch.
    `holdout_fraction` moves that fraction of each class's *training* images (same stratified rule) to `holdout`,
    a validation split for choosing learning rates or sub-nets without touching the test images.
    """
    root = Path(root)
    parts = folder_layout(root)
    if len(parts) == 1:
        val_fraction = DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction
        if not 0 < val_fraction < 1:
            raise DataError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction!r}")

    parts, skipped = _drop_unreadable(root, parts)
    class_names = tuple(sorted(parts[0]))
    train, test = parts if len(parts) == 2 else _stratified_split(parts[0], val_fraction, seed)
    holdout = {c: [] for c in class_names}
    if holdout_fraction is not None:
        if not 0 < holdout_fraction < 1:
            raise DataError(f"holdout_fraction must be between 0 and 1 (exclusive), got {holdout_fraction!r}")
        train, holdout = _stratified_split(train, holdout_fraction, seed + 1)

    def pairs(part):
        return tuple((f, i) for i, c in enumerate(class_names) for f in part[c])

    return FolderSplit(class_names, pairs(train), pairs(test), skipped, pairs(holdout), flat=len(parts) == 1)


def folder_layout(root):
    """The cheap half of `scan_image_folder`, no image decoded: [{class: files}] of `root/train` and its test/
    (or val/), or of a flat `root`; DataError unless there are at least two classes, each with an image file."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist; {LAYOUT_HELP}")
    if not (root / "train").is_dir():
        return [_class_files(root)]
    held_out = next((root / s for s in ("test", "val") if (root / s).is_dir()), None)
    if held_out is None:
        raise DataError(f"{root} has train/ but no test/ (or val/) folder next to it; {LAYOUT_HELP}")
    train, test = _class_files(root / "train"), _class_files(held_out)
    if set(train) != set(test):
        raise DataError(
            f"train/ and {held_out.name}/ under {root} have different class folders: "
            f"only in train/: {sorted(set(train) - set(test))}, "
            f"only in {held_out.name}/: {sorted(set(test) - set(train))}; "
            "both need the same class folders"
        )
    return [train, test]


def count_train_images(root, val_fraction=None):
    """How many image files `scan_image_folder` would train on (unreadable ones included), without decoding any."""
    parts = folder_layout(root)
    if len(parts) == 2:
        return sum(len(f) for f in parts[0].values())
    fraction = DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction
    return sum(len(f) - _moved_count(len(f), fraction) for f in parts[0].values())


def _moved_count(n, fraction):
    return min(n - 1, max(1, round(n * fraction)))


def _stratified_split(files_by_class, fraction, seed):
    """({class: kept files}, {class: `fraction` of them, at least one when the class has two or more})."""
    kept, moved = {}, {}
    for c, files in files_by_class.items():
        n_moved = _moved_count(len(files), fraction)
        is_moved = np.zeros(len(files), bool)
        is_moved[np.random.default_rng([seed, zlib.crc32(c.encode())]).permutation(len(files))[:n_moved]] = True
        kept[c] = [f for f, m in zip(files, is_moved) if not m]
        moved[c] = [f for f, m in zip(files, is_moved) if m]
    return kept, moved


def scan_test_folder(root, class_names=(), only=None):
    """The images of `root/test/<class>/` (or, without test/, `root/<class>/`), all as test, for evaluating a
    trained model: labels index `class_names` (the model's; empty: the sorted folder names), and a class folder
    the model does not know is a DataError. Unreadable files are dropped and counted as in `scan_image_folder`.
    `only`: keep just these paths (relative to `root`), e.g. the images a split held out of a flat tree."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"data folder {root} does not exist; expected DIR/test/<class>/<images> or DIR/<class>/<images>"
        )
    files = _class_files(root / "test" if (root / "test").is_dir() else root, min_classes=1)
    if only is not None:
        keep = {os.path.normpath(p) for p in only}
        files = {c: [p for p in f if os.path.normpath(os.path.relpath(p, root)) in keep] for c, f in files.items()}
        files = {c: f for c, f in files.items() if f}
        if not files:
            raise DataError(f"none of the {len(keep)} held-out images recorded for this model are under {root}")
    class_names = tuple(class_names) or tuple(sorted(files))
    unknown = sorted(set(files) - set(class_names))
    if unknown:
        raise DataError(f"class folder(s) {unknown} under {root} are not classes of the model ({list(class_names)})")
    (files,), skipped = _drop_unreadable(root, [files])
    test = tuple((f, class_names.index(c)) for c in sorted(files) for f in files[c])
    return FolderSplit(class_names, (), test, skipped)


def _class_files(folder, min_classes=2):
    """{class name: sorted image paths} for the class sub-folders of `folder`; DataError if any is empty or, for
    training (`min_classes` 2), there is only one (a one-class classifier is always right and learns nothing)."""
    classes = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"{folder} has no class sub-folders; {LAYOUT_HELP}")
    if len(classes) < min_classes:
        raise DataError(
            f"{folder} has only one class folder ({classes[0].name}); a classifier needs at least two "
            f"classes; {LAYOUT_HELP}"
        )
    files = {}
    for d in classes:
        files[d.name] = sorted(
            p
            for p in d.rglob("*")
            if p.suffix.lower() in IMAGE_EXTENSIONS
            and p.is_file()
            and not any(s.startswith(".") for s in p.relative_to(d).parts)
        )
        if not files[d.name]:
            raise DataError(
                f"class folder {d} has no images (looked for {', '.join(IMAGE_EXTENSIONS)}); "
                "add some or remove the folder"
            )
    return files


def _drop_unreadable(root, parts):
    """Decode every file once (in threads: Pillow releases the GIL) and drop the unreadable ones, logging a count."""
    paths = [p for part in parts for files in part.values() for p in files]

    def error(path):
        try:
            load_rgb(path)
        except ImageError as e:
            return str(e)

    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        errors = dict(zip(paths, pool.map(error, paths)))
    bad = [e for e in errors.values() if e]
    if len(bad) == len(paths):
        raise DataError(
            f"none of the {len(paths)} image files under {root} could be read (e.g. {bad[0]}); check the files"
        )
    if bad:
        log.warning("skipped %d unreadable image file(s) under %s, e.g. %s", len(bad), root, bad[0])
    kept = []
    for part in parts:
        kept.append({c: [str(p) for p in files if not errors[p]] for c, files in part.items()})
        for c, files in kept[-1].items():
            if not files:
                raise DataError(
                    f"class '{c}' under {root} has no readable image "
                    f"(all {len(part[c])} failed to load, e.g. {errors[part[c][0]]})"
                )
    return kept, len(bad)
