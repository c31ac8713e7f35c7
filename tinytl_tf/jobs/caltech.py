"""Caltech-101: its tarballs -> the `train/<class>/`, `test/<class>/` tree `tinytl_tf.data` reads.

    tinytl caltech prepare TARBALL_DIR OUT                # 101 classes, official split
    tinytl caltech subset OUT tinytl_tf/assets/caltech10  # the embedded subset (run once)

The tarballs (`caltech101_part1.tar`, `caltech101_part2.tar`) together hold `caltech101/101_ObjectCategories/
<class>/image_NNNN.jpg` and the fixed split files `caltech101/train.txt`, `test.txt` (lines `class/image_NNNN.jpg`).
BACKGROUND_Google is a clutter folder, not a class, and is dropped. TF-free.
"""

import json
import os
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from tinytl_tf.imagefiles import DataError

DROPPED_CLASS = "BACKGROUND_Google"
MARKER = ".prepared.json"  # written last inside the tree, so its presence means "complete"
CALTECH10_CLASSES = (
    "Faces_easy", "Leopards", "Motorbikes", "airplanes", "bonsai",
    "chandelier", "hawksbill", "ketch", "sunflower", "watch",
)  # fmt: skip


def prepare_caltech101(source, out_dir):
    """Build `out_dir/{train,test}/<class>/` (101 classes) from the official split files; returns `out_dir`.

    `source`: a folder holding the tarballs, a list of tar paths, or an already extracted folder (one containing
    `101_ObjectCategories/` or `caltech101/101_ObjectCategories/`). Files are hard-linked where possible, else
    copied. Idempotent: a complete `out_dir` (it has MARKER) is left alone. The tree is built in a temporary folder
    next to `out_dir` and renamed into place, so an interrupted run never leaves a tree that looks complete.
    """
    out = Path(out_dir)
    if (out / MARKER).is_file():
        return out
    _check_free(out)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.partial-") as tmp:
        root = _caltech_root(source, Path(tmp) / "src")
        tree, counts = Path(tmp) / "tree", {}
        for split in ("train", "test"):
            listing = root / f"{split}.txt"
            if not listing.is_file():
                raise DataError(
                    f"no {listing.name} in {source}; pass both Caltech-101 tarballs (the split files are in part 2)"
                )
            names = [n for n in listing.read_text().split() if n.split("/")[0] != DROPPED_CLASS]
            missing = [n for n in names if not (root / "101_ObjectCategories" / n).is_file()]
            if missing:
                raise DataError(
                    f"{len(missing)} images listed in {listing.name} are missing (e.g. {missing[0]}); "
                    "pass both tarballs"
                )
            for n in names:
                _link_or_copy(root / "101_ObjectCategories" / n, tree / split / n)
            counts[split] = len(names)
        counts["classes"] = len(list((tree / "train").iterdir()))
        (tree / MARKER).write_text(json.dumps(counts) + "\n")
        _move_into_place(tree, out)
    return out


def make_subset(
    prepared_dir, out_dir, classes=CALTECH10_CLASSES, n_train=30, n_test=10, short_side=112, quality=85, seed=0
):
    """A small copy of a prepared tree: `n_train` / `n_test` images per class drawn from its train/ and test/.

    Images are downscaled (Lanczos) so the shorter side is `short_side` (smaller ones are kept as they are) and
    saved as JPEG at `quality`; grayscale stays grayscale. The draw is seeded per class name. Built next to
    `out_dir` and renamed into place; `out_dir` may already hold other files (the ATTRIBUTION note).
    """
    prepared, out = Path(prepared_dir), Path(out_dir)
    _check_free(out, allowed=("train", "test"))
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".partial-") as tmp:
        for split, n in (("train", n_train), ("test", n_test)):
            for c in classes:
                files = sorted((prepared / split / c).glob("*.jpg"))
                if len(files) < n:
                    raise DataError(f"{prepared / split / c} has {len(files)} images, fewer than the {n} asked for")
                pick = np.random.default_rng([seed, zlib.crc32(c.encode())]).choice(len(files), n, replace=False)
                for i in sorted(pick):
                    _save_small(files[i], Path(tmp) / split / c / files[i].name, short_side, quality)
        for split in ("train", "test"):
            os.replace(Path(tmp) / split, out / split)
    return out


def _check_free(out, allowed=None):
    """Refuse to overwrite: `out` must be absent or empty (or, with `allowed`, hold none of those names)."""
    if allowed is not None:
        taken = [n for n in allowed if (out / n).exists()]
    else:
        taken = [p.name for p in out.iterdir()] if out.is_dir() else []
    if taken:
        raise DataError(
            f"{out} already holds {sorted(taken)} (not a complete prepared tree); delete it or pick another folder"
        )
    out.parent.mkdir(parents=True, exist_ok=True)


def _caltech_root(source, scratch):
    """The folder holding `101_ObjectCategories/` and the split files, extracting tarballs into `scratch`."""
    tars = [Path(p) for p in source] if isinstance(source, (list, tuple)) else None
    if tars is None:
        source = Path(source)
        for candidate in (source, source / "caltech101"):
            if (candidate / "101_ObjectCategories").is_dir():
                return candidate
        tars = sorted(source.glob("*.tar")) if source.is_dir() else [source]
    if not tars or not all(t.is_file() for t in tars):
        raise DataError(
            f"no Caltech-101 tarballs or extracted folder at {source}; expected caltech101_part1.tar and "
            'caltech101_part2.tar (see the README\'s "Data and weights" for where they come from)'
        )
    for t in tars:
        try:
            with tarfile.open(t) as archive:
                archive.extractall(scratch, filter="data")
        except tarfile.TarError as e:
            raise DataError(f"{t} is not a readable tar archive ({e}); pass the Caltech-101 tarballs") from None
    return scratch / "caltech101"


def _link_or_copy(src, dst):
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not supported
        shutil.copy2(src, dst)


def _move_into_place(tree, out):
    """Rename `tree` to `out` (an absent or empty folder). A concurrent run that finished first is fine."""
    try:
        os.replace(tree, out)
    except OSError:
        if not (out / MARKER).is_file():
            raise


def _save_small(src, dst, short_side, quality):
    with Image.open(src) as im:
        im = im.convert("L" if im.mode == "L" else "RGB")
        scale = short_side / min(im.size)
        if scale < 1:
            im = im.resize((round(im.width * scale), round(im.height * scale)), Image.LANCZOS)
        dst.parent.mkdir(parents=True, exist_ok=True)
        im.save(dst, "JPEG", quality=quality, optimize=True)
