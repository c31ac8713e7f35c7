"""The exporter's part for checks/Checks.kt: a stand-in model.tflite, its initial values written by the project's
own encoder (tinytl_tf.initial_values) and model.json (checks/model.json with the fingerprint and the
initial-values entry filled in), into WORK_DIR/exported; plus damaged variants of the initial values and the
group vectors Python's `initial_values.group_values` makes of them, for Checks.kt to compare the app's `load`
inputs with. Usage: PYTHONPATH=REPO python export_assets.py WORK_DIR MODEL_JSON (run.sh does this)."""

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

from tinytl_tf import contract, initial_values

work, template = Path(sys.argv[1]), Path(sys.argv[2]).read_text()
meta = json.loads(template)
out = work / "exported"
out.mkdir(parents=True, exist_ok=True)

tflite = np.random.default_rng(0).integers(0, 256, 5000, np.uint8).tobytes()
fingerprint = hashlib.sha256(tflite).hexdigest()
shapes = {w["name"]: w["shape"] for w in meta["weights"] if w["kind"] == "trainable"}
rng = np.random.default_rng(1)
values = {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
data = initial_values.encode(fingerprint, values)
spec = dict(meta["initial_values"], sha256=hashlib.sha256(data).hexdigest())

# The template's text with only the two digests replaced: Checks.kt edits it by exact substrings.
text = template.replace(meta["fingerprint"], fingerprint).replace(meta["initial_values"]["sha256"], spec["sha256"])
assert json.loads(text) == dict(meta, fingerprint=fingerprint, initial_values=spec)
(out / contract.MODEL_FILE).write_bytes(tflite)
(out / spec["file"]).write_bytes(data)
(out / contract.METADATA_FILE).write_text(text)

# What `load` must receive, group after group: Python's own flattening and zero-padding.
groups = b"".join(v.astype("<f4").tobytes() for _, v in initial_values.group_values(spec, values))
(work / "groups.f32").write_bytes(groups)
# Refusals: another model's values; this model's without one tensor.
(work / "foreign.init.npz").write_bytes(initial_values.encode("f" * 64, values))
(work / "lacking.init.npz").write_bytes(initial_values.encode(fingerprint, dict(list(values.items())[:-1])))
