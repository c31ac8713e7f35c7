"""The Android demo (android_demo/, Kotlin, not buildable here) against a freshly exported model.

1. `test_app_names_and_tensors_match_export`: `Contract.kt` equals `tinytl_tf.contract`; every signature and tensor
   the Kotlin sources use (found by reading them, not from a hand list alone) is in the exported `model.json` with
   the dtype and shape the app checks for and feeds; no other Kotlin file hard-codes such a name; `model.json`
   passes the app's own parse-time checks; and `weights` equals the get_weights outputs and set_weights inputs.
2. `test_app_call_sequence_replayed_on_litert`: the app's calls (TinyTlModel / InitialValues / Trainer /
   WeightStore / Preprocessor / MainViewModel), replayed one for one with ai-edge-litert: the initial values read
   from `model.init.npz` as InitialValues.kt reads them and assigned with `load`, preprocessing, 5 training steps with
   rollback protection, the `.ttlw` weight file written and read with only the layout documented in WeightStore.kt,
   a restart that restores it, top-3 inference, and both rollback branches.

The Kotlin cannot run here, so the replicas below mirror its source as read; the `_pin` checks fail when the lines
they mirror change, so a change in the app cannot silently leave a stale replica behind.
"""

import hashlib
import itertools
import json
import os
import re
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tinytl_tf import contract, imagefiles, initial_values

pytestmark = pytest.mark.slow  # exports a model for the app's contract

APP = Path(__file__).resolve().parents[1] / "android_demo/app/src/main/java/io/github/tinytl/demo"
LABELS = ("red", "green", "blue")
OPT_LR, OPT_STEPS = 1e-2, 100


@pytest.fixture(scope="module", params=["adam", "adam8bit"])
def exported(request, tmp_path_factory):
    """One tiny tinytl-lb model with 3 labels, exported once per optimizer for both tests (adam8bit's slots are
    int8 codes and per-block float scales): (tflite path, model.json dict)."""
    import keras

    from tests.tiny import tiny_backbone
    from tinytl_tf.export import export_model
    from tinytl_tf.transfer import prepare_transfer

    keras.utils.set_random_seed(1)
    model = prepare_transfer(tiny_backbone(), "tinytl-lb", len(LABELS), labels=LABELS, dropout=0.0)
    path = tmp_path_factory.mktemp("android") / "model.tflite"
    export_model(model, path, request.param, OPT_LR, OPT_STEPS, label_smoothing=0.1)
    return path, json.loads(Path(contract.model_json_path(path)).read_text())


# ---------------------------------------------------------------------------------------------------------------
# Reading the Kotlin sources
# ---------------------------------------------------------------------------------------------------------------


def _kotlin_sources():
    files = sorted(APP.glob("*.kt"))
    assert {f.name for f in files} >= {
        "Contract.kt",
        "TinyTlModel.kt",
        "InitialValues.kt",
        "Trainer.kt",
        "WeightStore.kt",
        "Preprocessor.kt",
        "ModelMetadata.kt",
        "MainViewModel.kt",
    }, files
    return {f.name: f.read_text(encoding="utf-8") for f in files}


def _lex(src):
    """Kotlin source -> (code with comments blanked, [(offset, text, templated)] of every string literal).

    Handles "..." and raw triple-quoted strings, escapes, $name and ${...} templates (whose code may hold strings
    of its own), char literals and nested /* */ comments: enough for the app's sources.
    """
    code, literals, n = list(src), [], len(src)

    def blank(i, j):
        for k in range(i, j):
            if code[k] != "\n":
                code[k] = " "

    def scan_code(i, nested):
        depth = 0
        while i < n:
            if src.startswith("//", i):
                j = src.find("\n", i)
                j = n if j < 0 else j
                blank(i, j)
                i = j
            elif src.startswith("/*", i):
                j, level = i + 2, 1
                while level:
                    if src.startswith("/*", j):
                        level, j = level + 1, j + 2
                    elif src.startswith("*/", j):
                        level, j = level - 1, j + 2
                    else:
                        j += 1
                blank(i, j)
                i = j
            elif src[i] == '"':
                i = scan_string(i, raw=src.startswith('"""', i))
            elif src[i] == "'":
                i = src.index("'", i + (3 if src[i + 1] == "\\" else 2)) + 1
            elif src[i] == "{":
                depth, i = depth + 1, i + 1
            elif src[i] == "}":
                if nested and depth == 0:
                    return i + 1
                depth, i = depth - 1, i + 1
            else:
                i += 1
        return i

    def scan_string(i, raw):
        quote = '"""' if raw else '"'
        start, i, text, templated = i, i + len(quote), [], False
        while not src.startswith(quote, i):
            if not raw and src[i] == "\\":
                esc = src[i + 1]
                if esc == "u":
                    text.append(chr(int(src[i + 2 : i + 6], 16)))
                    i += 6
                else:
                    text.append({"n": "\n", "t": "\t", "r": "\r", "b": "\b"}.get(esc, esc))
                    i += 2
            elif src.startswith("${", i):
                templated, i = True, scan_code(i + 2, nested=True)
            elif src[i] == "$" and (src[i + 1].isalpha() or src[i + 1] == "_"):
                templated, i = True, i + 1
            else:
                text.append(src[i])
                i += 1
        literals.append((start, "".join(text), templated))
        return i + len(quote)

    scan_code(0, nested=False)
    return "".join(code), literals


def _kotlin_contract(src):
    """Contract.kt's constants, with the regex its header comment promises; every `const val` must match it."""
    code = _lex(src)[0]  # its header comment quotes the regex
    found = dict(re.findall(r'const val (\w+) = "([^"]*)"', code))
    assert len(found) == len(re.findall(r"\bconst val\b", code)), "a Contract.kt constant is not a one-line string"
    return found


def _pin(source, *snippets):
    """The replicas below mirror these exact Kotlin lines; if one changed, the replica needs revisiting."""
    flat = re.sub(r"\s+", " ", source)
    for s in snippets:
        assert re.sub(r"\s+", " ", s) in flat, f"the Kotlin no longer contains `{s}`: update the replica in this test"


def _function_chunks(code):
    """{name: text from `fun name` to the next `fun`}; crude, but the app's functions are not nested."""
    starts = [(m.start(), m.group(1)) for m in re.finditer(r"\bfun (\w+)", code)] + [(len(code), None)]
    chunks = {}
    for (start, name), (end, _) in zip(starts, starts[1:]):
        chunks.setdefault(name, code[start:end])  # the first of same-named functions (WeightStore's `read`)
    return chunks


def _signature_binds(code):
    """{variable: SIGNATURE_* constant} for `val v = meta.signatures.getValue(Contract.SIGNATURE_X)`."""
    binds = {}
    for var, sig in re.findall(r"\bval (\w+) = meta\.signatures\.getValue\(Contract\.(SIGNATURE_\w+)\)(?!\s*\.)", code):
        assert binds.setdefault(var, sig) == sig, f"`{var}` is bound to two signatures"
    return binds


def _app_tensor_uses(code, kt):
    """(signature, "inputs"|"outputs", tensor) triples TinyTlModel.kt touches, values resolved through Contract.kt.

    Found from: signature bindings `val v = meta.signatures.getValue(Contract.SIGNATURE_X)` then `v.inputs...
    Contract.Y` / `Contract.Y in v.inputs`; and in each function calling `run(Contract.SIGNATURE_X, ...)`, every
    Contract.INPUT_* / OUTPUT_* it names. Whole-map uses (`.inputs.mapValues`) come back as tensor "*".
    """
    binds = _signature_binds(code)
    uses = set()
    for var, io, name in re.findall(r"\b(\w+)\.(inputs|outputs)\s*(?:\.getValue\(|\[)\s*Contract\.(\w+)", code):
        uses.add((binds[var], io, name))
    for name, var, io in re.findall(r"Contract\.(\w+) in (\w+)\.(inputs|outputs)\b", code):
        uses.add((binds[var], io, name))
    for body in _function_chunks(code).values():
        for sig in re.findall(r"\brun\(\s*Contract\.(SIGNATURE_\w+)", body):
            for name in re.findall(r"Contract\.((?:INPUT|OUTPUT)_\w+)", body):
                uses.add((sig, "inputs" if name.startswith("INPUT_") else "outputs", name))
    whole_map = r"meta\.signatures\.getValue\(Contract\.(SIGNATURE_\w+)\)\.(inputs|outputs)\.mapValues"
    for sig, io in re.findall(whole_map, code):
        uses.add((sig, io, "*"))
    return {(kt[s], io, "*" if t == "*" else kt[t]) for s, io, t in uses}


def _app_expectations(code, kt, meta):
    """What TinyTlModel.validate() demands of each tensor it names: {(sig, io, tensor): (dtype, shape)}."""
    body = _function_chunks(code)["validate"]
    dims = {
        "batch": meta["batch_size"],
        "meta.input.height": meta["input"]["height"],
        "meta.input.width": meta["input"]["width"],
        "meta.input.channels": meta["input"]["channels"],
        "meta.numClasses": meta["num_classes"],
        "meta.initialValues.length": meta["initial_values"]["length"],
    }
    lists = {v: e for v, e in re.findall(r"\bval (\w+) = listOf\(([^)]*)\)", body)}

    def shape(expr):
        expr = expr.strip()
        inner = lists[expr] if expr in lists else re.fullmatch(r"listOf\(([^)]*)\)", expr).group(1)
        return [dims[t.strip()] for t in inner.split(",") if t.strip()]

    spec = r'TensorSpec\(Contract\.(\w+), (listOf\([^)]*\)|\w+), "(\w+)"\)'
    named = {v: (kt[t], dt, shape(s)) for v, t, s, dt in re.findall(r"\bval (\w+) = " + spec, body)}
    out = {}
    for sig, io, arg in re.findall(
        r"\bexpect\(problems, Contract\.(SIGNATURE_\w+), \w+\.(inputs|outputs), (.+)\)\s*$", body, re.M
    ):
        m = re.fullmatch(spec, arg.strip())
        tensor, dtype, shp = named[arg.strip()] if m is None else (kt[m.group(1)], m.group(3), shape(m.group(2)))
        out[(kt[sig], io, tensor)] = (dtype, shp)
    return out


def _app_dtype_sizes(src):
    """ModelMetadata.kt's dtypeByteSize table: the dtypes the app can copy, with their sizes."""
    body = src[src.index("fun dtypeByteSize") :]
    body = body[: body.index("else ->")]
    return {
        d: int(size)
        for names, size in re.findall(r'((?:"\w+",?\s*)+)->\s*(\d+)', body)
        for d in re.findall(r'"(\w+)"', names)
    }


def _app_metadata_problems(meta, kt, dtype_sizes):
    """ModelMetadata.parse + check(): what makes the app refuse model.json before it opens the interpreter."""
    problems = []
    missing = [k for k in contract.METADATA_KEYS if k not in meta]
    if missing:
        return [f"missing keys {missing}"]
    if meta["format"] != kt["METADATA_FORMAT"]:
        problems.append(f"format {meta['format']}")
    if not re.fullmatch(r"[0-9a-f]{64}", meta["fingerprint"].lower()):
        problems.append("fingerprint")
    inp = meta["input"]
    if not (
        len(meta["labels"]) == meta["num_classes"] == len(set(meta["labels"]))
        and all(isinstance(s, str) for s in meta["labels"])
    ):
        problems.append("labels")
    if meta["batch_size"] != 1:
        problems.append("batch_size")
    if (inp["channels"], inp["layout"]) != (3, "NHWC") or inp["height"] != inp["width"] or inp["height"] <= 0:
        problems.append("input shape")
    if (
        (len(inp["mean"]), len(inp["std"])) != (3, 3)
        or not np.isfinite(inp["mean"] + inp["std"]).all()
        or 0 in inp["std"]
    ):
        problems.append("mean/std")
    if not 0 < inp["crop_fraction"] <= 1 or inp["resize"] != "bilinear":
        problems.append("crop_fraction/resize")
    tensors = [
        dict(t, name=n) for s in meta["signatures"].values() for io in ("inputs", "outputs") for n, t in s[io].items()
    ]
    for t in tensors + meta["weights"]:
        if t["dtype"] not in dtype_sizes or any(d < 0 for d in t["shape"]):
            problems.append(f"tensor {t}")
    names = [w["name"] for w in meta["weights"]]
    if len(set(names)) != len(names) or not all(isinstance(w["kind"], str) for w in meta["weights"]):
        problems.append("weights")
    opt = meta["optimizer"]
    if opt["schedule"] not in ("cosine", "constant") or not all(
        isinstance(opt[k], (int, float)) for k in ("lr", "total_steps")
    ):
        problems.append("optimizer")
    init = meta["initial_values"]
    trainable = {w["name"]: w for w in meta["weights"] if w["kind"] == "trainable"}
    if (
        not re.fullmatch(r"[0-9a-f]{64}", init["sha256"].lower())
        or not init["file"]
        or "/" in init["file"]
        or sorted(n for g in init["groups"] for n in g) != sorted(trainable)
        or any(w["dtype"] != "float32" for w in trainable.values())
        or any(
            not g or sum(int(np.prod(trainable[n]["shape"], dtype=np.int64)) for n in g) > init["length"]
            for g in init["groups"]
        )
    ):
        problems.append("initial_values")
    return problems


def _spec(t):
    return t["dtype"], list(t["shape"])


# ---------------------------------------------------------------------------------------------------------------
# 1. names and tensors
# ---------------------------------------------------------------------------------------------------------------


def test_app_names_and_tensors_match_export(exported):
    from ai_edge_litert.interpreter import Interpreter

    path, meta = exported
    src = _kotlin_sources()
    kt = _kotlin_contract(src["Contract.kt"])

    # Contract.kt is a subset of contract.py, value for value, and holds every name the app relies on.
    for name, value in kt.items():
        assert hasattr(contract, name), f"Contract.kt defines {name}, contract.py does not"
        assert getattr(contract, name) == value, (
            f"{name}: Contract.kt {value!r}, contract.py {getattr(contract, name)!r}"
        )
    key = [n for n in vars(contract) if n.startswith(("SIGNATURE_", "INPUT_", "OUTPUT_"))]
    key += ["STEP_TENSOR", "METADATA_FILE", "METADATA_FORMAT", "MODEL_FILE", "METADATA_SUFFIX"]
    referenced = {m for text in src.values() for m in re.findall(r"\bContract\.(\w+)", _lex(text)[0])}
    assert referenced <= set(kt), f"the app uses Contract.{sorted(referenced - set(kt))}, not in Contract.kt"
    # INPUT_PLACEHOLDER may be absent: the app feeds zeros to whatever inputs model.json lists for get_weights.
    required = [n for n in key if n != "INPUT_PLACEHOLDER" or n in referenced]
    assert set(required) <= set(kt), f"Contract.kt lacks {sorted(set(required) - set(kt))}"

    # model.json is the exported one and passes the app's own parse-time checks.
    assert meta["fingerprint"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert meta["tflite"] == path.name and kt["METADATA_FILE"] == Path(contract.model_json_path(path)).name
    # The app loads Contract.MODEL_FILE and its metadata by the exporter's naming rule (X.tflite -> X.json).
    assert (
        path.name == kt["MODEL_FILE"] and Path(contract.model_json_path(kt["MODEL_FILE"])).name == kt["METADATA_FILE"]
    )
    assert "assets.open(metadataFileFor(Contract.MODEL_FILE))" in src["TinyTlModel.kt"]
    assert "meta.tflite != Contract.MODEL_FILE" in src["TinyTlModel.kt"]
    assert meta["labels"] == list(LABELS) and meta["num_classes"] == len(LABELS)
    dtype_sizes = _app_dtype_sizes(src["ModelMetadata.kt"])
    assert {"float32", "int32"} <= set(dtype_sizes)
    assert _app_metadata_problems(meta, kt, dtype_sizes) == []

    # Every signature in model.json exists in the interpreter with exactly the listed tensors (validate, part 1).
    interpreter = Interpreter(model_path=str(path))
    assert set(meta["signatures"]) <= set(interpreter.get_signature_list())
    for sig, spec in meta["signatures"].items():
        runner = interpreter.get_signature_runner(sig)
        for io, details in (("inputs", runner.get_input_details()), ("outputs", runner.get_output_details())):
            actual = {
                n: {"shape": [int(d) for d in t["shape"]], "dtype": np.dtype(t["dtype"]).name}
                for n, t in details.items()
            }
            assert actual == spec[io], (sig, io)

    # Which tensors of which signature the app touches, read off TinyTlModel.kt; the table is what the app needs.
    code = _lex(src["TinyTlModel.kt"])[0]
    H, K = meta["input"]["height"], meta["num_classes"]
    c = contract
    needed = {
        (c.SIGNATURE_TRAIN, "inputs", c.INPUT_IMAGE): ("float32", [1, H, H, 3]),
        (c.SIGNATURE_TRAIN, "inputs", c.INPUT_LABEL): ("int32", [1]),
        (c.SIGNATURE_TRAIN, "inputs", c.INPUT_LEARNING_RATE): ("float32", []),
        (c.SIGNATURE_TRAIN, "outputs", c.OUTPUT_LOSS): ("float32", []),
        (c.SIGNATURE_TRAIN, "outputs", c.OUTPUT_LOGITS): ("float32", [1, K]),
        (c.SIGNATURE_INFER, "inputs", c.INPUT_IMAGE): ("float32", [1, H, H, 3]),
        (c.SIGNATURE_INFER, "outputs", c.OUTPUT_LOGITS): ("float32", [1, K]),
        (c.SIGNATURE_INFER, "outputs", c.OUTPUT_PROBABILITIES): ("float32", [1, K]),
        (c.SIGNATURE_LOAD, "inputs", c.INPUT_LOAD_VALUES): ("float32", [meta["initial_values"]["length"]]),
        (c.SIGNATURE_LOAD, "inputs", c.INPUT_LOAD_GROUP): ("int32", []),
    }
    whole = {(c.SIGNATURE_GET_WEIGHTS, "inputs"), (c.SIGNATURE_SET_WEIGHTS, "outputs"), (c.SIGNATURE_LOAD, "outputs")}
    uses = _app_tensor_uses(code, kt)
    assert {u for u in uses if u[2] != "*"} == set(needed), "the app's tensor uses changed: update `needed`"
    assert {u[:2] for u in uses if u[2] == "*"} == whole
    assert _app_expectations(code, kt, meta) == needed, "TinyTlModel.validate() expects other shapes or dtypes"
    # The dtype each buffer is read or written with in TinyTlModel.kt (x is filled by Preprocessor.normalize).
    # `load`'s buffers are local to loadInitialValues (nothing of them is kept); InitialValues.fill writes `values`.
    accessor, buffers = {"Int": "int32", "Float": "float32", "Long": "int64"}, set()
    for var, sig, io, name in re.findall(
        r"\b(?:private )?val (\w+) = (?:tensorBuffer\()?(\w+)\.(inputs|outputs)(?:\.getValue\(|\[)Contract\.(\w+)", code
    ):
        if (kt[_signature_binds(code)[sig]], io, kt[name]) == (c.SIGNATURE_LOAD, "inputs", c.INPUT_LOAD_VALUES):
            buffers.add((c.SIGNATURE_LOAD, io, c.INPUT_LOAD_VALUES))
            continue
        tensor = (kt[_signature_binds(code)[sig]], io, kt[name])
        used = {accessor[a] for a in re.findall(rf"\b{var}\.(?:put|get)(Int|Float|Long)\(", code)}
        used |= {"float32"} if re.search(rf"\bfloats\({var}\)", code) else set()
        assert used == {needed[tensor][0]}, f"TinyTlModel.kt accesses {var} ({tensor}) as {used}"
        buffers.add(tensor)
    assert buffers == {t for t in needed if t[2] != c.INPUT_IMAGE}, buffers
    _pin(src["TinyTlModel.kt"], "values.fill(j, groupValues)", "group.putInt(0, j)")
    _pin(
        src["InitialValues.kt"],
        "fun fill(j: Int, values: ByteBuffer) {",
        "check(ByteOrder.nativeOrder() == ByteOrder.LITTLE_ENDIAN)",
        "val b = values.duplicate().also { it.clear() }",
        "b.put(chunk, 0, k)",
        "while (b.hasRemaining()) b.put(0)",
    )
    _pin(
        src["Preprocessor.kt"],
        "val floats = out.order(ByteOrder.nativeOrder()).asFloatBuffer()",
        "val cropBytes: Int get() = size * size * 3",
        "out.capacity() == cropBytes * 4",
    )

    # ... and the exported model.json has each of them, as the app needs it.
    for (sig, io, name), want in needed.items():
        assert sig in meta["signatures"], f"model.json has no signature {sig!r} (it has {sorted(meta['signatures'])})"
        tensors = meta["signatures"][sig][io]
        assert name in tensors, f"model.json {sig} {io} lack {name!r} (they are {sorted(tensors)})"
        assert _spec(tensors[name]) == want, (sig, io, name)
    for const in (
        "SIGNATURE_TRAIN",
        "SIGNATURE_INFER",
        "SIGNATURE_GET_WEIGHTS",
        "SIGNATURE_SET_WEIGHTS",
        "SIGNATURE_LOAD",
    ):
        sig = kt[const]
        assert sig in meta["signatures"], f"model.json has no signature {sig!r} (it has {sorted(meta['signatures'])})"
        assert meta["signatures"][sig]["inputs"], f"{sig} has no input: LiteRT's Java runSignature refuses that"
    # No train/infer input the app would not know how to feed.
    assert set(meta["signatures"][c.SIGNATURE_TRAIN]["inputs"]) <= {c.INPUT_IMAGE, c.INPUT_LABEL, c.INPUT_LEARNING_RATE}
    assert set(meta["signatures"][c.SIGNATURE_INFER]["inputs"]) == {c.INPUT_IMAGE}
    # get_weights returns, and set_weights takes, exactly model.json's weight list (names, shapes, dtypes).
    weights = {w["name"]: _spec(w) for w in meta["weights"]}
    assert {n: _spec(t) for n, t in meta["signatures"][c.SIGNATURE_GET_WEIGHTS]["outputs"].items()} == weights
    assert {n: _spec(t) for n, t in meta["signatures"][c.SIGNATURE_SET_WEIGHTS]["inputs"].items()} == weights
    assert weights[c.STEP_TENSOR] == ("float32", []) and sum(w["kind"] == "step" for w in meta["weights"]) == 1
    assert {w["kind"] for w in meta["weights"]} == {"trainable", "slot", "step"}

    # No Kotlin file but Contract.kt spells a signature or tensor name as a string literal, save two known non-uses.
    names = {v for k, v in kt.items() if k.startswith(("SIGNATURE_", "INPUT_", "OUTPUT_")) or k == "STEP_TENSOR"}
    names |= {getattr(contract, k) for k in key if k.startswith(("SIGNATURE_", "INPUT_", "OUTPUT_"))}
    names |= set(meta["signatures"]) | {n for s in meta["signatures"].values() for io in s.values() for n in io}
    allowed = [
        ("ModelMetadata.kt", re.compile(r'\bo\.num\("lr", "optimizer\.lr"\)')),  # model.json optimizer key
        (None, re.compile(r'@Suppress\("unused"\)')),
    ]  # a Kotlin annotation, not the placeholder tensor
    hits, excused = [], set()
    for fname, text in src.items():
        if fname == "Contract.kt":
            continue
        for pos, value, templated in _lex(text)[1]:
            if templated or value not in names:
                continue
            line_start = text.rfind("\n", 0, pos) + 1
            line = text[line_start : text.find("\n", pos)]
            rule = next(
                (
                    k
                    for k, (f, rx) in enumerate(allowed)
                    if f in (None, fname) and any(m.start() <= pos - line_start < m.end() for m in rx.finditer(line))
                ),
                None,
            )
            if rule is None:
                hits.append(f"{fname}:{text.count(chr(10), 0, pos) + 1}: {line.strip()}")
            else:
                excused.add(rule)
    assert not hits, "names hard-coded outside Contract.kt:\n" + "\n".join(hits)
    assert 0 in excused, "the optimizer 'lr' key moved: re-check the allow-list"


# ---------------------------------------------------------------------------------------------------------------
# 2. the app's call sequence, replayed
# ---------------------------------------------------------------------------------------------------------------


NPY_DICT = r"\{'descr': '([^']*)', 'fortran_order': (True|False), 'shape': \(([0-9, ]*)\), \}"  # InitialValues.kt


class AppInitialValues:
    """InitialValues.kt: the asset's sha256, meta.npy's format and fingerprint, every group tensor's .npy header,
    then on `fill(j)` group j's tensors' bytes concatenated and zero-padded, read from the zip entry by entry."""

    def __init__(self, path, spec, fingerprint, weights):
        data = Path(path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == spec["sha256"]
        self.zip, self.spec = zipfile.ZipFile(path), spec
        descr, _, shape, body = self.npy("meta.npy")
        chars = int(descr.removeprefix("<U"))
        assert descr.startswith("<U") and shape == []
        text = "".join(map(chr, itertools.takewhile(bool, struct.unpack(f"<{chars}I", body[: 4 * chars]))))
        meta = json.loads(text)
        assert meta.get("format") == initial_values.FORMAT and meta.get("fingerprint") == fingerprint
        self.tensors = {w["name"]: w for w in weights}
        for n in (n for g in spec["groups"] for n in g):
            descr, fortran, shape, _ = self.npy(f"weight/{n}.npy")
            assert (descr, fortran, shape) == ("<f4", False, self.tensors[n]["shape"]), n

    def npy(self, entry):
        """(descr, fortran_order, shape, data bytes) of one .npy entry: magic, version, LE header length, dict."""
        blob = self.zip.read(entry)
        assert blob[:6] == b"\x93NUMPY"
        major, pos = blob[6], (10 if blob[6] == 1 else 12)
        (length,) = struct.unpack_from("<H" if major == 1 else "<I", blob, 8)
        header = blob[pos : pos + length].decode("utf-8" if major == 3 else "latin-1")
        m = re.fullmatch(NPY_DICT, header.rstrip())
        shape = [int(d) for d in m.group(3).split(",") if d.strip()]
        return m.group(1), m.group(2) == "True", shape, blob[pos + length :]

    def fill(self, j):
        out = b"".join(self.npy(f"weight/{n}.npy")[3][: 4 * _count(self.tensors[n])] for n in self.spec["groups"][j])
        return np.frombuffer(out.ljust(4 * self.spec["length"], b"\0"), "<f4")


def _count(w):
    return int(np.prod(w["shape"], dtype=np.int64))


class AppModel:
    """TinyTlModel.kt with ai-edge-litert's interpreter in place of LiteRT Java's."""

    def __init__(self, path, meta):
        from ai_edge_litert.interpreter import Interpreter

        assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == meta["fingerprint"]  # open(): fingerprint
        self.meta, self.interpreter = meta, Interpreter(model_path=str(path))
        self.sigs = meta["signatures"]
        # open(): loadInitialValues, every group through `load` before anything else runs.
        spec = meta["initial_values"]
        self.initial = AppInitialValues(Path(path).parent / spec["file"], spec, meta["fingerprint"], meta["weights"])
        load_outputs = list(self.sigs[contract.SIGNATURE_LOAD]["outputs"])
        for j in range(len(spec["groups"])):
            inputs = {contract.INPUT_LOAD_VALUES: self.initial.fill(j), contract.INPUT_LOAD_GROUP: np.int32(j)}
            self.run(contract.SIGNATURE_LOAD, inputs, load_outputs)
        self.step_spec = next((w for w in meta["weights"] if w["name"] == contract.STEP_TENSOR), None)
        # getWeightsInputs: zeros for whatever model.json lists (the placeholder).
        self.get_weights_inputs = {
            n: np.zeros(t["shape"], t["dtype"]) for n, t in self.sigs[contract.SIGNATURE_GET_WEIGHTS]["inputs"].items()
        }

    def run(self, signature, inputs, outputs):
        out = self.interpreter.get_signature_runner(signature)(**inputs)
        assert set(out) == set(outputs), (signature, sorted(out))  # runSignature fills the output map by name
        return {n: np.array(out[n]) for n in outputs}

    def train_step(self, x, y, lr):
        assert 0 <= y < self.meta["num_classes"]
        inputs = {contract.INPUT_IMAGE: x, contract.INPUT_LABEL: np.array([y], np.int32)}
        if contract.INPUT_LEARNING_RATE in self.sigs[contract.SIGNATURE_TRAIN]["inputs"]:
            inputs[contract.INPUT_LEARNING_RATE] = np.float32(lr)
        out = self.run(contract.SIGNATURE_TRAIN, inputs, [contract.OUTPUT_LOSS, contract.OUTPUT_LOGITS])
        return np.float32(out[contract.OUTPUT_LOSS].reshape(())), out[contract.OUTPUT_LOGITS].ravel()

    def infer(self, x):
        out = self.run(
            contract.SIGNATURE_INFER, {contract.INPUT_IMAGE: x}, [contract.OUTPUT_LOGITS, contract.OUTPUT_PROBABILITIES]
        )
        return out[contract.OUTPUT_LOGITS].ravel(), out[contract.OUTPUT_PROBABILITIES].ravel()

    def get_weights(self):
        names = [w["name"] for w in self.meta["weights"]]
        out = self.run(contract.SIGNATURE_GET_WEIGHTS, self.get_weights_inputs, names)
        return {w["name"]: out[w["name"]] for w in self.meta["weights"]}  # "Tensors": model.json weights order

    def set_weights(self, tensors):
        for w in self.meta["weights"]:
            b = tensors[w["name"]]
            assert b.dtype == np.dtype(w["dtype"]) and list(b.shape) == w["shape"], w["name"]
        assert len(tensors) == len(self.meta["weights"])
        self.run(contract.SIGNATURE_SET_WEIGHTS, tensors, list(self.sigs[contract.SIGNATURE_SET_WEIGHTS]["outputs"]))

    def step_of(self, tensors):
        return None if self.step_spec is None else int(tensors[self.step_spec["name"]].reshape(()))  # toLong()


class AppTrainer:
    """Trainer.kt: `good` from get_weights at creation; each step train(lr=0), accept or set_weights(good)."""

    MODEL_SCHEDULE = 0.0

    def __init__(self, model, preprocessor):
        self.model, self.pre = model, preprocessor
        self.good = model.get_weights()
        self.local_step, self.rolled_back = 0, 0

    def current_step(self):
        s = self.model.step_of(self.good)
        return self.local_step if s is None else s

    def step(self, crop, label, flip, lr=MODEL_SCHEDULE, x=None):
        """`lr` and `x` override what the app feeds, only to force the rollback branches in this test."""
        step_before = self.current_step()
        x = self.pre.normalize(crop, flip) if x is None else x
        loss, logits = self.model.train_step(x, label, lr)
        if np.isfinite(loss):
            candidate = self.model.get_weights()
            if all(
                np.isfinite(v).all()
                for v, w in zip(candidate.values(), self.model.meta["weights"])
                if w["dtype"] == "float32"
            ):
                self.good = candidate
                self.local_step = step_before + 1
                return loss, int(np.argmax(logits)) == label, False
        self.model.set_weights(self.good)
        self.rolled_back += 1
        return loss, False, True


class AppPreprocessor:
    """Preprocessor.kt steps 2-5 on an RGB array (step 1, decoding, is Android's). Bitmap.createScaledBitmap with
    filter = true is Skia bilinear sampling at pixel centres, replicated in `_bilinear`."""

    def __init__(self, spec):
        self.size, self.crop_fraction = spec["height"], spec["crop_fraction"]
        self.mean, self.std = np.float32(spec["mean"]), np.float32(spec["std"])

    def scaled_size(self, width, height):
        short = int(np.rint(self.size / self.crop_fraction))  # Math.rint: half to even
        if width <= height:
            return short, max(short, int(np.rint(height * short / width)))
        return max(int(np.rint(width * short / height)), short), short

    @staticmethod
    def _bilinear(img, w, h):
        def axis(n_out, n_in):
            pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
            lo = np.floor(pos).astype(int)
            return lo, np.minimum(lo + 1, n_in - 1), (pos - lo)

        y0, y1, fy = axis(h, img.shape[0])
        x0, x1, fx = axis(w, img.shape[1])
        f = img.astype(np.float64)
        rows = f[y0] * (1 - fy)[:, None, None] + f[y1] * fy[:, None, None]
        out = rows[:, x0] * (1 - fx)[None, :, None] + rows[:, x1] * fx[None, :, None]
        return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)

    def scale(self, img, w, h):
        while img.shape[1] >= 2 * w and img.shape[0] >= 2 * h:
            img = self._bilinear(img, img.shape[1] // 2, img.shape[0] // 2)
        return img if img.shape[:2] == (h, w) else self._bilinear(img, w, h)

    def crop_offsets(self, w, h):
        return (w - self.size) // 2, (h - self.size) // 2

    def load_crop(self, rgb):
        w, h = self.scaled_size(rgb.shape[1], rgb.shape[0])
        scaled = self.scale(rgb, w, h)
        left, top = self.crop_offsets(w, h)
        return np.ascontiguousarray(scaled[top : top + self.size, left : left + self.size])

    def normalize(self, crop, flip):
        src = crop[:, ::-1] if flip else crop
        return ((src.astype(np.float32) - self.mean) / self.std)[None]


# WeightStore.kt's version-1 layout: (field, the DataOutputStream call that writes it, struct format).
TTLW_HEADER = [
    ("magic", "write", "4s"),
    ("version", "writeShort", ">H"),
    ("fingerprint", "writeStr", "str"),
    ("count", "writeInt", ">I"),
]
TTLW_TENSOR = [
    ("name", "writeStr", "str"),
    ("dtype", "writeStr", "str"),
    ("rank", "writeByte", ">B"),
    ("dims", "writeInt", ">I"),
    ("nbytes", "writeLong", ">Q"),
]
TTLW_TRAILER = [("payload_len", "writeLong", ">Q"), ("payload_crc", "writeInt", ">I"), ("payload", "write", "raw")]
READ_CALLS = {
    "write": "readFully",
    "writeShort": "readUnsignedShort",
    "writeStr": "readStr",
    "writeInt": "readInt",
    "writeByte": "readUnsignedByte",
    "writeLong": "readLong",
}


def _pack_str(s):
    b = s.encode("utf-8")
    return struct.pack(">H", len(b)) + b


def write_ttlw(path, fingerprint, weights, tensors):
    """WeightStore.save: header (big-endian), then the tensors' raw little-endian bytes in model.json order."""
    payload = b"".join(
        np.ascontiguousarray(tensors[w["name"]], np.dtype(w["dtype"]).newbyteorder("<")).tobytes() for w in weights
    )
    out = [b"TTLW", struct.pack(">H", 1), _pack_str(fingerprint), struct.pack(">I", len(weights))]
    for w in weights:
        nbytes = int(np.prod(w["shape"], dtype=np.int64)) * np.dtype(w["dtype"]).itemsize
        out += [
            _pack_str(w["name"]),
            _pack_str(w["dtype"]),
            struct.pack(">B", len(w["shape"])),
            struct.pack(f">{len(w['shape'])}I", *w["shape"]),
            struct.pack(">Q", nbytes),
        ]
    out += [struct.pack(">QI", len(payload), zlib.crc32(payload)), payload]
    tmp = Path(str(path) + ".tmp")
    tmp.write_bytes(b"".join(out))
    os.replace(tmp, path)


def read_ttlw(path, fingerprint, weights):
    """WeightStore.load: ("missing",) | ("rejected", reason) | ("ok", tensors); never raises."""
    path = Path(path)
    if not path.exists():
        return ("missing",)
    data, pos = path.read_bytes(), 0

    def take(fmt):
        nonlocal pos
        values = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return values

    def text():
        nonlocal pos
        (n,) = take(">H")
        if pos + n > len(data):
            raise EOFError
        pos += n
        return data[pos - n : pos].decode("utf-8")

    try:
        if data[:4] != b"TTLW":
            return ("rejected", "not a weight file of this app")
        pos = 4
        (version,) = take(">H")
        if version != 1:
            return ("rejected", f"format version {version}")
        if text() != fingerprint:
            return ("rejected", "saved for another model")
        (count,) = take(">I")
        if count > 1_000_000:
            return ("rejected", "header corrupt (count)")
        specs, total = [], 0
        for _ in range(count):
            name, dtype = text(), text()
            (rank,) = take(">B")
            if rank > 16:
                return ("rejected", "header corrupt (rank)")
            dims = list(take(f">{rank}I"))
            (nbytes,) = take(">Q")
            if (
                dtype not in ("float32", "int32", "int64", "int16", "int8", "uint8", "bool")
                or nbytes != int(np.prod(dims, dtype=np.int64)) * np.dtype(dtype).itemsize
            ):
                return ("rejected", f"header corrupt (tensor {name})")
            specs.append((name, dtype, dims, nbytes))
            total += nbytes
        payload_len, crc = take(">QI")
        if payload_len != total:
            return ("rejected", "header corrupt (payload length)")
        if len(data) - pos < payload_len:
            return ("rejected", "truncated")
        if len(data) - pos > payload_len:
            return ("rejected", "trailing bytes")
        if [s[:3] for s in specs] != [(w["name"], w["dtype"], w["shape"]) for w in weights]:
            return ("rejected", "tensors differ from model.json's weights")
        payload = data[pos:]
        if zlib.crc32(payload) != crc:
            return ("rejected", "corrupt (CRC mismatch)")
        tensors, offset = {}, 0
        for name, dtype, dims, nbytes in specs:
            le = np.dtype(dtype).newbyteorder("<")
            tensors[name] = np.frombuffer(payload, le, nbytes // le.itemsize, offset).astype(dtype).reshape(dims)
            offset += nbytes
        return ("ok", tensors)
    except (struct.error, EOFError):
        return ("rejected", "truncated")
    except Exception as e:  # noqa: BLE001 - load() never throws
        return ("rejected", f"unreadable ({e})")


def _pin_replicas(src):
    """The Kotlin lines the replicas above mirror (and the weight file's field order, call by call)."""
    _pin(
        src["InitialValues.kt"],
        f'const val FORMAT = "{initial_values.FORMAT}"',
        f'private const val WEIGHT_PREFIX = "{initial_values.WEIGHT_PREFIX}"',
        f'private const val META_KEY = "{initial_values.META_KEY}"',
        'private const val NPY = ".npy"',
        f'private val NPY_DICT = Regex("""{NPY_DICT}""")',
        "if (digest != spec.sha256) {",
        'if (meta.optString("format") != FORMAT || meta.optString("fingerprint") != fingerprint) {',
        'if (header.descr != "<f4" || header.fortranOrder || header.shape != want.shape) {',
        "1 -> inp.readUnsignedByte() or (inp.readUnsignedByte() shl 8)",
        "2, 3 -> Integer.reverseBytes(inp.readInt())",
        "if (major == 3) Charsets.UTF_8 else Charsets.ISO_8859_1",
        "val m = NPY_DICT.matchEntire(text.trimEnd())",
        "if (c == 0) break",
    )
    _pin(
        src["TinyTlModel.kt"],
        "initialValuesAsset(context, meta).use(model::loadInitialValues)",
        "for (j in meta.initialValues.groups.indices) {",
        "val outputs = meta.signatures.getValue(Contract.SIGNATURE_LOAD).outputs.mapValues { tensorBuffer(it.value) }",
    )
    _pin(
        src["Preprocessor.kt"],
        "val short = Math.rint(size / cropFraction).toInt()",
        "Pair(short, maxOf(short, Math.rint(height.toDouble() * short / width).toInt()))",
        "Pair(maxOf(short, Math.rint(width.toDouble() * short / height).toInt()), short)",
        "while (b.width >= 2 * w && b.height >= 2 * h) "
        "b = Bitmap.createScaledBitmap(b, b.width / 2, b.height / 2, true)",
        "Bitmap.createScaledBitmap(b, w, h, true)",
        "fun cropOffsets(w: Int, h: Int): Pair<Int, Int> = Pair((w - size) / 2, (h - size) / 2)",
        "val src = 3 * (y * size + if (flip) size - 1 - x else x)",
        "floats.put(((rgb[src + c].toInt() and 0xFF).toFloat() - mean[c]) / std[c])",
    )
    _pin(
        src["Trainer.kt"],
        "private var good: Tensors = model.getWeights()",
        "model.trainStep(x, sample.label, MODEL_SCHEDULE)",
        "if (out.loss.isFinite()) { model.getWeights(candidate) if (allFinite(candidate)) { "
        "candidate = good.also { good = candidate }",
        "model.setWeights(good) rolledBack++",
        'if (w.tensor.dtype != "float32") continue',
        "const val MODEL_SCHEDULE = 0f",
    )
    _pin(
        src["TinyTlModel.kt"],
        "label.putInt(0, y)",
        "learningRate.putFloat(0, lr)",
        "meta.signatures.getValue(Contract.SIGNATURE_GET_WEIGHTS).inputs.mapValues { tensorBuffer(it.value) }",
        "require(tensors.size == meta.weights.size)",
        '"float32" -> b.getFloat(0).toLong()',
    )
    _pin(
        src["MainViewModel.kt"],
        "is WeightStore.Loaded.Ok -> try { m.setWeights(loaded.tensors)",
        "pre.normalize(crop, false, x) m.infer(x)",
        "prediction.probabilities.indices.sortedByDescending { prediction.probabilities[it] }.take(3)",
        "if (unsaved) save(m, trainer.weights)",
    )
    _pin(
        src["WeightStore.kt"],
        'private val MAGIC = "TTLW".toByteArray(Charsets.US_ASCII)',
        "private const val VERSION = 1",
        "writeShort(bytes.size) write(bytes)",
        "val crc = CRC32()",
        "if (crc.value != storedCrc) return Loaded.Rejected",
        "if (savedFor != fingerprint) {",
    )
    ws = _lex(src["WeightStore.kt"])[0]
    chunks = _function_chunks(ws)
    layout = TTLW_HEADER + TTLW_TENSOR + TTLW_TRAILER
    assert re.findall(r"\bout\.(write\w*)\(", chunks["save"]) == [f[1] for f in layout], "WeightStore.save changed"
    assert re.findall(r"\binp\.(read\w*)\(", chunks["read"]) == [READ_CALLS[f[1]] for f in layout], (
        "WeightStore.read changed"
    )


def _smooth_image(h, w, colour, seed):
    """A smooth RGB picture (low-frequency waves around `colour`), so different resamplers nearly agree."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    waves = sum(np.sin(2 * np.pi * (fy * yy + fx * xx) + p) for fy, fx, p in rng.uniform(0.3, 1.5, (3, 3)))
    img = np.asarray(colour, np.float64) + 25 * waves[..., None] * rng.uniform(0.5, 1, 3)
    return np.clip(img, 0, 255).astype(np.uint8)


def test_app_call_sequence_replayed_on_litert(exported, tmp_path):
    path, meta = exported
    src = _kotlin_sources()
    _pin_replicas(src)
    pre = AppPreprocessor(meta["input"])
    size = pre.size

    # Preprocessing geometry: the replica's scaled size and crop offsets reproduce eval_transform bit for bit when
    # both resize with Pillow (noise pixels: any other size or offset gives other pixels). Includes an exact .5 tie
    # (165 x 82: 165 * 41 / 82 = 82.5) and a picture big enough for the halvings.
    rng = np.random.default_rng(0)
    for h, w in [(36, 36), (50, 40), (40, 64), (82, 165), (165, 82), (37, 91), (300, 170), (41, 41), (1000, 700)]:
        noise = rng.integers(0, 256, (h, w, 3), np.uint8)
        sw, sh = pre.scaled_size(w, h)
        left, top = pre.crop_offsets(sw, sh)
        pil = np.asarray(Image.fromarray(noise).resize((sw, sh), Image.BILINEAR))[top : top + size, left : left + size]
        np.testing.assert_array_equal(pil, imagefiles.eval_transform(noise, size), err_msg=f"{w}x{h}")
        # Pixels, loosely: Skia's bilinear after 2x halvings is not Pillow's antialiased BILINEAR (nor are the
        # rounding rules the same), so crops agree exactly only in geometry. On a smooth picture they differ by
        # about 0.2 levels on average and at most 1 here; a one-pixel shift already averages 0.7 and more, swapped
        # channels about 26.
        smooth = _smooth_image(h, w, (120, 90, 160), seed=h * w)
        app_crop, desk_crop = pre.load_crop(smooth), imagefiles.eval_transform(smooth, size)
        assert app_crop.shape == desk_crop.shape == (size, size, 3)
        diff = np.abs(app_crop.astype(int) - desk_crop.astype(int))
        assert diff.mean() < 0.5 and diff.max() <= 2, (w, h, diff.mean(), diff.max())
    # Normalisation: exactly imagefiles.normalize in float32, also with a non-trivial mean/std; flip = [:, ::-1].
    crop = rng.integers(0, 256, (size, size, 3), np.uint8)
    for spec in (meta["input"], dict(meta["input"], mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375])):
        p = AppPreprocessor(spec)
        want = imagefiles.normalize(crop, spec["mean"], spec["std"])
        np.testing.assert_array_equal(p.normalize(crop, False)[0], want)
        np.testing.assert_array_equal(p.normalize(crop, True)[0], want[:, ::-1])
        assert p.normalize(crop, False).dtype == np.float32

    # App start (MainViewModel.openModel): no weight file yet -> the exported model with its initial values, which
    # the app's reading turns into exactly the `load` inputs Python's initial_values.group_values makes.
    store = tmp_path / "weights" / "trained.ttlw"
    store.parent.mkdir()
    model = AppModel(path, meta)
    spec = meta["initial_values"]
    exported_values = np.load(initial_values.path_for(path))
    weights = {n: exported_values[initial_values.WEIGHT_PREFIX + n] for g in spec["groups"] for n in g}
    for j, values in initial_values.group_values(spec, weights):
        np.testing.assert_array_equal(model.initial.fill(j), values)
    start = model.get_weights()
    assert all(np.array_equal(start[n], v) for n, v in weights.items()) and any(v.any() for v in weights.values())
    assert read_ttlw(store, meta["fingerprint"], meta["weights"]) == ("missing",)

    # Samples: one smooth picture per label in that label's colour, of different sizes; crops kept for the session.
    colours = {"red": (200, 60, 50), "green": (60, 190, 70), "blue": (50, 70, 200)}
    sizes = [(60, 48), (45, 70), (52, 52), (80, 50), (40, 40), (64, 90)]
    samples = [
        (pre.load_crop(_smooth_image(h, w, colours[lab], seed=k)), LABELS.index(lab))
        for k, (lab, (h, w)) in enumerate(zip(LABELS * 2, sizes))
    ]

    def smoothed_ce(logits, y):  # the loss `train` reports: cross-entropy with model.json's label smoothing
        ls, k = meta["optimizer"]["label_smoothing"], meta["num_classes"]
        logp = logits.astype(np.float64) - np.log(np.exp(logits.astype(np.float64)).sum())
        return float(-((1 - ls) * logp[y] + ls / k * logp.sum()))

    trainer = AppTrainer(model, pre)
    initial = {k: v.copy() for k, v in trainer.good.items()}
    assert trainer.current_step() == 0
    order = np.random.default_rng(7)  # Trainer.run: shuffled epochs, each picture flipped with probability 1/2
    steps = 0
    while steps < 5:
        for i in order.permutation(len(samples)):
            if steps == 5:
                break
            crop, y = samples[i]
            flip = bool(order.random() < 0.5)
            x = pre.normalize(crop, flip)
            logits_before = model.infer(x)[0]
            loss, correct, rolled = trainer.step(crop, y, flip=flip)
            steps += 1
            # `loss` is the pre-update forward's; after the step the same picture scores better (lr 1e-2 Adam's
            # first steps each lower it by > 0.02 here, so this is no float-noise coin toss).
            assert not rolled and abs(float(loss) - smoothed_ce(logits_before, y)) < 1e-4, (loss, logits_before)
            assert correct == (int(np.argmax(logits_before)) == y)
            assert smoothed_ce(model.infer(x)[0], y) < float(loss) - 0.005, steps
            assert trainer.current_step() == steps
    assert trainer.current_step() == 5 and trainer.rolled_back == 0
    assert float(trainer.good[contract.STEP_TENSOR]) == 5.0
    trainable = [w["name"] for w in meta["weights"] if w["kind"] == "trainable"]
    assert all(not np.array_equal(trainer.good[n], initial[n]) for n in trainable), "a trainable tensor did not move"
    live = model.get_weights()  # `good` is the model's current state (the accepted last step)
    assert all(np.array_equal(live[n], trainer.good[n]) for n in live)

    # Save `good` (training stopped with unsaved steps) and read it back with only the documented layout.
    write_ttlw(store, meta["fingerprint"], meta["weights"], trainer.good)
    data = store.read_bytes()
    assert data[:4] == b"TTLW" and struct.unpack_from(">H", data, 4) == (1,)
    assert data[8 : 8 + 64].decode() == meta["fingerprint"] and struct.unpack_from(">H", data, 6) == (64,)
    payload_bytes = sum(
        int(np.prod(w["shape"], dtype=np.int64)) * np.dtype(w["dtype"]).itemsize for w in meta["weights"]
    )
    payload_len, crc = struct.unpack_from(">QI", data, len(data) - payload_bytes - 12)
    assert payload_len == payload_bytes and crc == zlib.crc32(data[-payload_bytes:])
    status, restored = read_ttlw(store, meta["fingerprint"], meta["weights"])
    assert status == "ok" and list(restored) == [w["name"] for w in meta["weights"]]
    assert all(
        np.array_equal(restored[n], trainer.good[n]) and restored[n].dtype == trainer.good[n].dtype for n in restored
    )

    # Damaged or foreign files are rejected, as WeightStore.load does.
    flipped = bytearray(data)
    flipped[len(data) - payload_bytes // 2] ^= 0x10
    for name, blob, why in [
        ("flip", bytes(flipped), "CRC"),
        ("short", data[:-1], "truncated"),
        ("long", data + b"\0", "trailing"),
    ]:
        (tmp_path / name).write_bytes(blob)
        status, reason = read_ttlw(tmp_path / name, meta["fingerprint"], meta["weights"])
        assert status == "rejected" and why in reason, (name, reason)
    assert read_ttlw(store, "0" * 64, meta["weights"])[0] == "rejected"
    write_ttlw(tmp_path / "foreign.ttlw", "f" * 64, meta["weights"], trainer.good)
    assert read_ttlw(tmp_path / "foreign.ttlw", meta["fingerprint"], meta["weights"]) == (
        "rejected",
        "saved for another model",
    )

    # Restart: a new interpreter restores the file with set_weights and classifies exactly as the trained one.
    fresh = AppModel(path, meta)
    status, tensors = read_ttlw(store, meta["fingerprint"], meta["weights"])
    assert status == "ok"
    fresh.set_weights(tensors)
    assert fresh.step_of(fresh.get_weights()) == 5
    unseen = pre.load_crop(_smooth_image(70, 55, (128, 128, 128), 99))
    queries = [pre.normalize(c, False) for c, _ in samples + [(unseen, 0)]]
    expected = [model.infer(x) for x in queries]
    for x, (logits, probs) in zip(queries, expected):
        got_logits, got_probs = fresh.infer(x)
        np.testing.assert_array_equal(got_logits, logits)
        np.testing.assert_array_equal(got_probs, probs)
        top3 = sorted(range(len(probs)), key=lambda i: -probs[i])[:3]  # sortedByDescending, stable, take(3)
        assert [LABELS[i] for i in top3] == [LABELS[i] for i in np.argsort(-got_probs, kind="stable")[:3]]
        assert abs(float(probs.sum()) - 1) < 1e-5

    # Rollback, both branches of Trainer.step: (a) finite loss but non-finite weights (lr = inf; the app always
    # feeds 0, the override only forces the branch), (b) a NaN loss (a NaN image, likewise forced).
    good = {k: v.copy() for k, v in trainer.good.items()}
    loss, _, rolled = trainer.step(*samples[0], flip=False, lr=np.inf)
    assert rolled and np.isfinite(loss) and trainer.rolled_back == 1
    loss, _, rolled = trainer.step(*samples[1], flip=False, x=np.full((1, size, size, 3), np.nan, np.float32))
    assert rolled and np.isnan(loss) and trainer.rolled_back == 2
    after = model.get_weights()
    assert all(np.array_equal(after[n], good[n]) for n in good) and trainer.current_step() == 5
    assert all(np.array_equal(trainer.good[n], good[n]) for n in good)
    for x, (logits, _) in zip(queries, expected):
        np.testing.assert_array_equal(model.infer(x)[0], logits)
    loss, _, rolled = trainer.step(*samples[2], flip=False)  # and training goes on from `good`
    assert not rolled and np.isfinite(loss) and trainer.current_step() == 6
