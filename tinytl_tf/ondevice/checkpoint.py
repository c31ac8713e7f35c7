"""Training checkpoints that survive a power cut at any instant: `CheckpointStore(path, model).save/load`.

Format: an uncompressed `.npz` (read with allow_pickle=False) holding every tensor of the model's `get_weights`
as `weight/<name>` in its own dtype (trainables, optimizer slots, the step counter: exactly what `set_weights`
needs; float32, and int8 for the moment codes of Adam with 8-bit moments, whose float32 block scales are slots of
their own) and `meta`, a JSON string: {"format": FORMAT, "fingerprint": sha256 of the model's .tflite, "state":
{...}} where `state` is the trainer's position and counters (see `folder_training.RunState`).

Writing: the new file goes to a temp file in the same directory, flushed and fsync'ed; then the current file is
hard-linked (copied where links are unsupported) to a temp name that is renamed over `<path>.prev`; then the temp
file is renamed over `<path>`; then the directory is fsync'ed. Each rename is atomic, so at every instant `<path>`
is a complete checkpoint (old or new) and `<path>.prev` one older or equal; the order in which a crash persists
the two renames does not matter. The writer removes temp files an interrupted write left (`remove_leftovers`).

Reading: a checkpoint of another model (fingerprint) is refused and never overwritten; a corrupt or truncated
`<path>` (zip CRC, missing or misshaped tensors, bad JSON) is reported and `<path>.prev` used instead. A corrupt
`<path>` is not rotated over a good `.prev` by the next save. A file that was never a checkpoint (not a zip, or
an archive without `meta`, such as a model.keras) is refused as such and left alone. Files get the umask's mode.

For crash tests, $TINYTL_ONDEVICE_CHECKPOINT_PAUSE (seconds) sleeps between the synced temp file and the renames:
the window a power cut or SIGKILL would hit.
"""

import glob
import json
import logging
import os
import shutil
import tempfile
import time
import zipfile
from dataclasses import dataclass

import numpy as np

from tinytl_tf.atomic import file_mode
from tinytl_tf.errors import TinyTLError

log = logging.getLogger(__name__)

FORMAT = "tinytl_tf/ondevice-checkpoint-v1"
WEIGHT_PREFIX = "weight/"
META_KEY = "meta"
PAUSE_ENV = "TINYTL_ONDEVICE_CHECKPOINT_PAUSE"


class CheckpointError(TinyTLError, ValueError):
    """A checkpoint cannot be used (another model's, or unreadable with no usable `.prev`); nothing was written."""


class _Corrupt(Exception):
    """A checkpoint file that cannot be read back completely; the message says why."""


@dataclass(frozen=True)
class Checkpoint:
    weights: dict  # {name: array}, validated against the model's get_weights tensors
    state: dict  # the trainer's JSON state
    source: str  # the file it was read from: `<path>` or `<path>.prev`


class CheckpointStore:
    """`<path>` and its rotation `<path>.prev` for one DeviceModel (its fingerprint and get_weights tensors)."""

    def __init__(self, path, model):
        self.path = os.path.abspath(os.fspath(path))
        self.prev = self.path + ".prev"
        self.model, self.fingerprint = model, model.fingerprint
        self._rotate_main = True  # False while `path` is known to be corrupt: never rotate it over a good .prev

    def load(self):
        """The newest usable Checkpoint, or None if neither file exists. CheckpointError if none is usable."""
        problems = []
        for candidate in (self.path, self.prev):
            if not os.path.exists(candidate):
                continue
            try:
                checkpoint = self._read(candidate)
            except _Corrupt as e:
                problems.append(str(e))
                if candidate == self.path:
                    self._rotate_main = False
                continue
            if candidate == self.prev:
                why = problems[0] if problems else f"{self.path} is missing"
                log.warning("%s; using the previous checkpoint %s instead", why, self.prev)
            return checkpoint
        if problems:
            if not os.path.exists(self.prev):
                problems.append(f"there is no {self.prev} to fall back to")
            raise CheckpointError(f"no usable checkpoint: {'; '.join(problems)}; delete the file(s) to start over")
        return None

    def remove_leftovers(self):
        """Delete temp files of an interrupted write; only the (single) writer may call this, never a reader."""
        for leftover in self._temp_files():
            log.warning("removing %s left by an interrupted checkpoint write", leftover)
            os.remove(leftover)

    def save(self, weights, state):
        """Atomically replace `<path>` with these weights and state, keeping the replaced file as `<path>.prev`."""
        directory = os.path.dirname(self.path)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=self._temp_prefix(), suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), file_mode())
                meta = json.dumps({"format": FORMAT, "fingerprint": self.fingerprint, "state": state})
                np.savez(
                    f, **{META_KEY: np.array(meta)}, **{WEIGHT_PREFIX + k: np.asarray(v) for k, v in weights.items()}
                )
                f.flush()
                os.fsync(f.fileno())
            pause = float(os.environ.get(PAUSE_ENV) or 0)
            if pause > 0:
                time.sleep(pause)
            if self._rotate_main and os.path.exists(self.path):
                self._rotate()
            os.replace(tmp, self.path)
            _fsync_directory(directory)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        self._rotate_main = True

    def _rotate(self):
        """`<path>.prev` := `<path>` in one rename, while `<path>` stays in place."""
        link = os.path.join(os.path.dirname(self.path), f"{self._temp_prefix()}prev.{os.getpid()}.tmp")
        if os.path.exists(link):
            os.remove(link)
        try:
            os.link(self.path, link)
        except OSError:  # file systems without hard links (FAT on an SD card)
            shutil.copyfile(self.path, link)
            with open(link, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(link, self.prev)

    def _read(self, path):
        self._check_is_checkpoint(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z[META_KEY][()]))
                weights = {k[len(WEIGHT_PREFIX) :]: z[k] for k in z.files if k.startswith(WEIGHT_PREFIX)}
        except Exception as e:  # zipfile, zlib, numpy and json each signal damaged bytes their own way
            raise _Corrupt(f"checkpoint {path} is corrupt or truncated ({type(e).__name__}: {e})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("state"), dict):
            raise _Corrupt(f"checkpoint {path} has no valid {FORMAT!r} metadata")
        if meta.get("fingerprint") != self.fingerprint:
            raise CheckpointError(
                f"checkpoint {path} belongs to another model (fingerprint {str(meta.get('fingerprint'))[:12]}..., "
                f"this model's is {self.fingerprint[:12]}...); it was left untouched: pass another --checkpoint path"
            )
        problem = self.model.weights_mismatch(weights)
        if problem:
            raise _Corrupt(f"checkpoint {path} is corrupt: {problem}")
        return Checkpoint(weights, meta["state"], path)

    @staticmethod
    def _check_is_checkpoint(path):
        """CheckpointError for a file that was never a checkpoint (another program's file, a model.keras): it is
        not damaged, so it is neither replaced nor worth a fallback; a damaged zip is left to `_read`."""
        leave = "it was left untouched: pass the CK.npz that `train` writes (or a new path to start a run)"
        if not zipfile.is_zipfile(path):
            with open(path, "rb") as f:
                if f.read(2) == b"PK":
                    return  # the start of a zip archive: a truncated checkpoint
            raise CheckpointError(f"{path} is not a checkpoint (not an .npz archive); {leave}")
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError, ValueError):
            return
        if f"{META_KEY}.npy" not in names:
            raise CheckpointError(
                f"{path} is not a checkpoint (an archive without '{META_KEY}': a model.keras, for "
                f"one, is a trained model, not a checkpoint); {leave}"
            )

    def _temp_prefix(self):
        return f".{os.path.basename(self.path)}."

    def _temp_files(self):
        pattern = os.path.join(glob.escape(os.path.dirname(self.path)), glob.escape(self._temp_prefix()) + "*.tmp")
        return sorted(glob.glob(pattern, include_hidden=True))


def _fsync_directory(directory):
    """Persist the renames themselves (POSIX; Windows cannot open a directory and needs no such call)."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
