"""Read a `.tflite` flatbuffer without TensorFlow: operator names, custom (Flex) ops, tensors and buffers; and
the rewrites the exporter applies (`fill_zero_initial_values`, `share_identical_buffers`).

Used by the exporter's builtins-only check and rewrite, the memory measurement and the device side's model
validation.
"""

from dataclasses import dataclass

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema

from tinytl_tf.errors import TinyTLError

_BUILTIN_NAMES = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
_TENSOR_TYPES = {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_")}


class NotATFLiteModel(TinyTLError, ValueError):
    pass


@dataclass(frozen=True)
class Op:
    name: str  # builtin name such as "CONV_2D", or the custom code such as "FlexConv2DBackpropFilter"
    custom: bool
    inputs: tuple
    outputs: tuple


@dataclass(frozen=True)
class Tensor:
    name: str
    shape: tuple
    dtype: str
    buffer_bytes: int  # bytes of constant data stored in the file (0 for activations and variables)


@dataclass(frozen=True)
class Subgraph:
    name: str
    ops: tuple
    tensors: tuple
    inputs: tuple
    outputs: tuple


def read(data):
    """Parse `.tflite` bytes (or a path) into a list of Subgraphs."""
    if not isinstance(data, (bytes, bytearray)):
        with open(data, "rb") as f:
            data = f.read()
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise NotATFLiteModel("not a TFLite flatbuffer (the file identifier 'TFL3' is missing)")
    model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    codes = []
    for c in model.operatorCodes:
        code = max(c.builtinCode, c.deprecatedBuiltinCode)
        if code == schema.BuiltinOperator.CUSTOM:
            codes.append(((c.customCode or b"").decode(), True))
        else:
            codes.append((_BUILTIN_NAMES.get(code, str(code)), False))
    sizes = [0 if b.data is None else len(b.data) for b in model.buffers]
    subgraphs = []
    for sg in model.subgraphs:
        tensors = tuple(
            Tensor(
                (t.name or b"").decode(),
                tuple(int(d) for d in (t.shape if t.shape is not None else ())),
                _TENSOR_TYPES.get(t.type, str(t.type)),
                _buffer_size(model, t.buffer, sizes),
            )
            for t in sg.tensors
        )
        ops = tuple(
            Op(*codes[o.opcodeIndex], tuple(int(i) for i in _list(o.inputs)), tuple(int(i) for i in _list(o.outputs)))
            for o in sg.operators
        )
        subgraphs.append(
            Subgraph((sg.name or b"").decode(), ops, tensors, tuple(_list(sg.inputs)), tuple(_list(sg.outputs)))
        )
    return subgraphs


def _list(a):
    return [] if a is None else list(np.asarray(a).tolist())


def _buffer_size(model, index, sizes):
    if index < len(sizes) and sizes[index]:
        return sizes[index]
    b = model.buffers[index] if index < len(model.buffers) else None
    return int(getattr(b, "size", 0) or 0)  # large models keep buffers after the flatbuffer (offset/size)


def op_names(subgraphs):
    return sorted({op.name for sg in subgraphs for op in sg.ops})


def custom_ops(subgraphs):
    """Names of non-builtin ops (Flex `Flex*` ops and any other custom op)."""
    return sorted({op.name for sg in subgraphs for op in sg.ops if op.custom})


@dataclass(frozen=True)
class Links:
    """How signatures, subgraphs, tensors, buffers and variables refer to each other (what `read` leaves out).

    The memory measurement needs it: a signature runs one subgraph plus the subgraphs its CALL_ONCE ops initialise
    variables with; tensors may share a constant buffer; VAR_HANDLE ops name the resource variable they open.
    """

    signatures: dict  # signature key -> subgraph index
    buffers: tuple  # per subgraph: the buffer index of each tensor
    variables: tuple  # per subgraph: {VAR_HANDLE output tensor index: the variable's shared name}
    init_subgraphs: tuple  # per subgraph: indices of the subgraphs its CALL_ONCE ops run
    unknown_dims: tuple  # per subgraph: indices of tensors with an unknown (-1) dimension in their shape signature


def links(data):
    """`Links` of `.tflite` bytes, read lazily from the flatbuffer (no copy of the constant data)."""
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise NotATFLiteModel("not a TFLite flatbuffer (the file identifier 'TFL3' is missing)")
    model = schema.Model.GetRootAs(data, 0)
    signatures = {}
    for i in range(model.SignatureDefsLength()):
        sd = model.SignatureDefs(i)
        signatures[sd.SignatureKey().decode()] = sd.SubgraphIndex()
    buffers, variables, inits, unknown = [], [], [], []
    for s in range(model.SubgraphsLength()):
        sg = model.Subgraphs(s)
        tensors = [sg.Tensors(i) for i in range(sg.TensorsLength())]
        buffers.append(tuple(t.Buffer() for t in tensors))
        unknown.append(
            frozenset(
                i for i, t in enumerate(tensors) if t.ShapeSignatureLength() and (t.ShapeSignatureAsNumpy() < 0).any()
            )
        )
        handles, calls = {}, []
        for o in range(sg.OperatorsLength()):
            op = sg.Operators(o)
            kind = op.BuiltinOptionsType()
            if kind == schema.BuiltinOptions.VarHandleOptions:
                options = schema.VarHandleOptions()
                options.Init(op.BuiltinOptions().Bytes, op.BuiltinOptions().Pos)
                handles[int(op.Outputs(0))] = (options.SharedName() or b"").decode()
            elif kind == schema.BuiltinOptions.CallOnceOptions:
                options = schema.CallOnceOptions()
                options.Init(op.BuiltinOptions().Bytes, op.BuiltinOptions().Pos)
                calls.append(options.InitSubgraphIndex())
        variables.append(handles)
        inits.append(tuple(calls))
    return Links(signatures, tuple(buffers), tuple(variables), tuple(inits), tuple(unknown))


BUFFER_ALIGNMENT = 16  # the converter's alignment of constant data (the schema's force_align on Buffer.data)
QUANTIZE_MIN_ELEMENTS = 1024  # the converter's dynamic-range quantization leaves smaller constants in float
MIN_FILL_BYTES = 1024  # smaller zero constants stay: a FILL needs two constants of its own
FILL_TYPES = {"float32": schema.TensorType.FLOAT32, "int8": schema.TensorType.INT8, "int32": schema.TensorType.INT32}
FILL_DTYPES = {schema.TensorType.FLOAT32: np.float32, schema.TensorType.INT8: np.int8}  # variables FILL starts


class _AlignedBuffer:
    """A `BufferT` packed with its data aligned like the converter's (the generated `Pack` aligns only to 1)."""

    def __init__(self, buffer):
        self.buffer = buffer

    def Pack(self, builder):
        b = self.buffer
        data = None
        if b.data is not None:
            raw = np.asarray(b.data, np.uint8).tobytes()
            builder.StartVector(1, len(raw), BUFFER_ALIGNMENT)
            builder.head -= len(raw)
            builder.Bytes[builder.head : builder.head + len(raw)] = raw
            data = builder.EndVector()
        schema.BufferStart(builder)
        if data is not None:
            schema.BufferAddData(builder, data)
        schema.BufferAddOffset(builder, b.offset)
        schema.BufferAddSize(builder, b.size)
        return schema.BufferEnd(builder)


def _pack(model, size_hint):
    model.buffers = [_AlignedBuffer(b) for b in model.buffers]
    builder = flatbuffers.Builder(size_hint + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def share_identical_buffers(data, min_bytes=MIN_FILL_BYTES):
    """(new bytes, bytes saved): tensors whose constant data are byte for byte equal (at least `min_bytes`) all
    read the first such buffer; the others' data are dropped. The export's int8 frozen kernels have one constant
    for the forward (the converter's) and one for the input gradient with the same bytes (`ops.conv`)."""
    model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    first, remap, saved = {}, {}, 0
    for i, b in enumerate(model.buffers):
        if b.data is None or len(b.data) < min_bytes:
            continue
        key = np.asarray(b.data, np.uint8).tobytes()
        if key in first:
            remap[i], saved = first[key], saved + len(b.data)
            b.data = None
        else:
            first[key] = i
    if not remap:
        return data, 0
    for sg in model.subgraphs:
        for t in sg.tensors or []:
            t.buffer = remap.get(t.buffer, t.buffer)
    return _pack(model, len(data)), saved


def fill_zero_initial_values(data, nonzero=False):
    """(new bytes, bytes of constants removed): every variable whose initial value is a float32 or int8 constant
    of zeros (optimizer slots, and anything else that starts at zero) starts from a FILL op in its initializer
    instead; with `nonzero`, every initial value does (the device then loads the trainables' real values through
    the `load` signature; the only int8 variables, the 8-bit optimizer's codes, start at zero).

    The converter turns each variable's value at conversion time into a full-size constant that the CALL_ONCE
    initializer subgraph assigns once; for Adam's two slots per trainable that is a file of zeros that, once
    read, stays resident through training. FILL writes the zeros into the initializer's arena, which LiteRT
    frees after the initializer runs. A buffer is removed only when no other subgraph uses it.
    """
    model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    inits = {
        op.builtinOptions.initSubgraphIndex
        for sg in model.subgraphs
        for op in (sg.operators or [])
        if op.builtinOptionsType == schema.BuiltinOptions.CallOnceOptions
    }
    codes = [max(c.builtinCode, c.deprecatedBuiltinCode) for c in model.operatorCodes]
    users = {}
    for s, sg in enumerate(model.subgraphs):
        for t in sg.tensors or []:
            users.setdefault(t.buffer, set()).add(s)

    def constant(sg, name, array):
        buffer = schema.BufferT()
        buffer.data = np.frombuffer(array.tobytes(), np.uint8)
        model.buffers.append(buffer)
        t = schema.TensorT()
        t.name, t.shape, t.buffer = name, list(array.shape), len(model.buffers) - 1
        t.type = FILL_TYPES[array.dtype.name]
        sg.tensors.append(t)
        return len(sg.tensors) - 1

    def fill_code():
        if schema.BuiltinOperator.FILL not in codes:
            c = schema.OperatorCodeT()
            c.builtinCode, c.deprecatedBuiltinCode, c.version = (schema.BuiltinOperator.FILL,) * 2 + (1,)
            model.operatorCodes.append(c)
            codes.append(schema.BuiltinOperator.FILL)
        return codes.index(schema.BuiltinOperator.FILL)

    emptied = set()
    for s in sorted(inits):
        sg, ops = model.subgraphs[s], []
        for op in sg.operators or []:
            value = (
                sg.tensors[op.inputs[1]] if codes[op.opcodeIndex] == schema.BuiltinOperator.ASSIGN_VARIABLE else None
            )
            raw = None if value is None else model.buffers[value.buffer].data
            if (
                value is not None
                and value.type in FILL_DTYPES
                and raw is not None
                and len(raw) >= MIN_FILL_BYTES
                and (nonzero or not np.asarray(raw).any())
            ):
                fill = schema.OperatorT()
                fill.opcodeIndex = fill_code()
                name = value.name or b"initial_value"
                fill.inputs = [
                    constant(sg, name + b"/shape", np.asarray(value.shape, np.int32)),
                    constant(sg, name + b"/zero", np.zeros((), FILL_DTYPES[value.type])),
                ]
                fill.outputs = [op.inputs[1]]
                ops.append(fill)
                emptied.add(value.buffer)
                value.buffer = 0  # buffer 0 is the schema's empty buffer: the tensor is now FILL's output
            ops.append(op)
        sg.operators = ops
    saved = 0
    for b in emptied:
        if users[b] <= inits and not any(t.buffer == b for s in users[b] for t in model.subgraphs[s].tensors):
            saved += len(model.buffers[b].data)
            model.buffers[b].data = None
    return _pack(model, len(data)), saved
