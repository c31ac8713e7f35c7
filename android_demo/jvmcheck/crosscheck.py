"""Reads what checks/Checks.kt wrote and checks it against Python: the weight file against the format documented
in WeightStore.kt, Preprocessor.normalize against numpy, Preprocessor.scaledSize against imagefiles.eval_transform's
target size. Usage: python crosscheck.py WORK_DIR MODEL_JSON (run.sh does this)."""

import json
import struct
import sys
import zlib
from pathlib import Path

import numpy as np

work, meta = Path(sys.argv[1]), json.loads(Path(sys.argv[2]).read_text())
passed = failed = 0


def report(name, ok, detail=""):
    global passed, failed
    passed, failed = passed + ok, failed + (not ok)
    print(("PASS " if ok else "FAIL ") + name + (f": {detail}" if detail and not ok else ""))


# Weight file: parse with nothing but the documented layout.
data, pos = (work / "good.ttlw").read_bytes(), 0


def take(fmt):
    global pos
    values = struct.unpack_from(fmt, data, pos)
    pos += struct.calcsize(fmt)
    return values


def text():
    global pos
    (n,) = take(">H")
    pos += n
    return data[pos - n : pos].decode("utf-8")


magic, version = take(">4sH")
fingerprint = text()
(count,) = take(">I")
header = []
for _ in range(count):
    name, dtype = text(), text()
    (rank,) = take(">B")
    dims = take(f">{rank}I")
    (nbytes,) = take(">Q")
    header.append((name, dtype, list(dims), nbytes))
payload_len, crc = take(">QI")
payload = data[pos:]
expected = [(w["name"], w["dtype"], w["shape"]) for w in meta["weights"]]
ok = (
    magic == b"TTLW"
    and version == 1
    and fingerprint == meta["fingerprint"]
    and len(payload) == payload_len
    and zlib.crc32(payload) == crc
    and [h[:3] for h in header] == expected
)
offset, values = 0, {}
for name, dtype, dims, nbytes in header:
    values[name] = np.frombuffer(payload[offset : offset + nbytes], np.dtype(dtype).newbyteorder("<")).reshape(dims)
    offset += nbytes
ok = ok and values["step"] == 42 and values["head__bias"].tolist() == [1.0, 1.5, 2.0]
report("weight file matches the documented format", ok, f"{header} {values}")

# Preprocessor.normalize == (p - mean) / std in float32, flip = [:, ::-1].
size = meta["input"]["height"]
rgb = np.frombuffer((work / "rgb.bin").read_bytes(), np.uint8).reshape(size, size, 3)
x = (rgb.astype(np.float32) - np.float32(meta["input"]["mean"])) / np.float32(meta["input"]["std"])
kotlin = {
    f: np.frombuffer((work / f).read_bytes(), "<f4").reshape(size, size, 3) for f in ("x_noflip.f32", "x_flip.f32")
}
report("normalize is bit-identical to numpy", np.array_equal(kotlin["x_noflip.f32"], x))
report("flipped normalize is bit-identical to numpy [:, ::-1]", np.array_equal(kotlin["x_flip.f32"], x[:, ::-1]))

# Preprocessor.scaledSize == tinytl_tf.imagefiles.eval_transform's resize target (Python round: half to even).
bad = []
for line in (work / "scaled_size.txt").read_text().splitlines():
    s, cf, w, h, a, b = line.split()
    s, cf, w, h, a, b = int(s), float(cf), int(w), int(h), int(a), int(b)
    short = round(s / cf)
    target = (short, max(short, round(h * short / w))) if w <= h else (max(short, round(w * short / h)), short)
    if target != (a, b):
        bad.append(line)
report("scaledSize equals eval_transform's target size", not bad, f"{len(bad)} differ, e.g. {bad[:3]}")

print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
