"""Run one signature of a `.tflite` a few times and print the process's memory as JSON (the dynamic measurement).

    python probe.py MODEL.tflite SIGNATURE STEPS NUM_THREADS {xnnpack,builtin}

Started by `tinytl_tf.memory.measure` in a fresh process, by path, so that nothing but ai_edge_litert, numpy and the
TF-free `tinytl_tf.initial_values` is imported: the process's memory is then the runtime's. A model exported with
its metadata X.json and initial values X.init.npz beside it first loads them with its `load` signature, as a device
does (the variables start at zero in the file); that is part of the measured growth, X.json's parse is not (the
host's Python objects for a 0.2 MB X.json: about 2.9 MB). Memory points, from /proc/self/status (bytes):
- `rss_start`: after the imports;
- `rss_loaded`: after reading X.json, `Interpreter(model_path=...)`, `get_signature_runner` and making the inputs.
  The model file is memory-mapped and only the pages read while loading (its tables) are resident; no tensor is
  allocated yet: LiteRT allocates the subgraph's arena, applies the default XNNPACK delegate and runs the CALL_ONCE
  variable initialiser on the first call;
- `model_loaded`: how much of the mapped model file is resident at that point (from /proc/self/smaps). It depends
  on the file: LiteRT faults a whole file with int8 weights in while loading it (measured: 72.7 of 74.4 MB), only
  the tables of a float one (3.3 of 22.7 MB);
- `hwm`: the peak (VmHWM) after `steps` calls with random inputs (labels 0, `lr` 0: the in-model schedule).
The measured training memory is `hwm - rss_loaded + model_loaded`: the arena, the variables, delegate buffers,
kernel scratch and every page of the model file resident at the peak (the weights count however they were
faulted in), plus the runtime code the first call pages in (about 0.5 MB). `anon_*` and `file_*` (RssAnon,
RssFile) split the points into heap and file-backed pages.
"""

import json
import sys
import zipfile  # noqa: F401  (loading the initial values reads a zip: its code is the runtime's, not the model's)

import numpy as np
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from tinytl_tf import initial_values  # found through the PYTHONPATH `measure` passes

RESOLVERS = {"xnnpack": OpResolverType.AUTO, "builtin": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES}


def status_bytes(*keys):
    """Fields of /proc/self/status (kB there) in bytes."""
    found = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in keys:
                found[key] = int(value.split()[0]) * 1024
    return found


def resident_bytes(path):
    """Resident bytes of this process's mappings of the file `path`."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            key = line.split(None, 1)[0]
            if not key.endswith(":"):  # a mapping's header: "start-end perms offset dev inode [path]"
                inside = line.rstrip("\n").endswith(" " + path)
            elif inside and key == "Rss:":
                total += int(line.split()[1]) * 1024
    return total


def random_inputs(runner, rng):
    """Random floats of the signature's shapes, except zeros for integers (labels `y`: class 0 is valid) and
    scalars (`lr` 0: the in-model schedule)."""
    inputs = {}
    for name, d in runner.get_input_details().items():
        shape, dtype = tuple(d["shape"]), np.dtype(d["dtype"])
        if dtype.kind in "iu" or not shape:
            inputs[name] = np.zeros(shape, dtype)
        else:
            inputs[name] = rng.standard_normal(shape).astype(dtype)
    return inputs


def probe(path, signature, steps, num_threads, resolver):
    rss_start = status_bytes("VmRSS")["VmRSS"]
    found = initial_values.spec_beside(path)  # the metadata's Python objects are the host's, not the step's
    fingerprint = initial_values.file_sha256(path) if found else None
    interpreter = Interpreter(
        model_path=path, num_threads=num_threads, experimental_op_resolver_type=RESOLVERS[resolver]
    )
    runner = interpreter.get_signature_runner(signature)
    inputs = random_inputs(runner, np.random.default_rng(0))  # before the baseline: numpy.random loads lazily
    loaded = status_bytes("VmRSS", "RssAnon", "RssFile")
    model_loaded = resident_bytes(path)
    if found:
        values_path, spec = found
        initial_values.load(interpreter, spec, initial_values.read(values_path, spec, fingerprint))
    for _ in range(steps):
        runner(**inputs)
    end = status_bytes("VmRSS", "VmHWM", "RssAnon", "RssFile")
    return {
        "rss_start": rss_start,
        "rss_loaded": loaded["VmRSS"],
        "anon_loaded": loaded["RssAnon"],
        "file_loaded": loaded["RssFile"],
        "model_loaded": model_loaded,
        "hwm": end["VmHWM"],
        "rss_end": end["VmRSS"],
        "anon_end": end["RssAnon"],
        "file_end": end["RssFile"],
    }


if __name__ == "__main__":
    path, signature, steps, threads, resolver = sys.argv[1:6]
    print(json.dumps(probe(path, signature, int(steps), int(threads), resolver)))
