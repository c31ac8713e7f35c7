"""Write a file so that a crash never leaves a half-written file where a good one was. TF-free."""

import glob
import os
import tempfile
from pathlib import Path


def file_mode():
    """The mode `open(path, "w")` gives a new file: 0666 less the umask (mkstemp's files are 0600 whatever it is)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def _temp_prefix(path):
    return f".{path.name}."


def atomic_write(path, write):
    """Call `write(tmp_path)` on a temporary file beside `path`, fsync it, then rename it over `path`.

    The file gets the mode a plain `open(path, "w")` would give (`file_mode`).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path), suffix=path.suffix)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, file_mode())
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def remove_leftovers(path):
    """Delete the temporary files a killed `atomic_write(path, ...)` left beside `path`; returns their paths."""
    path = Path(path)
    pattern = os.path.join(
        glob.escape(str(path.parent)), glob.escape(_temp_prefix(path)) + "*" + glob.escape(path.suffix)
    )
    leftovers = sorted(glob.glob(pattern, include_hidden=True))
    for leftover in leftovers:
        os.remove(leftover)
    return leftovers
