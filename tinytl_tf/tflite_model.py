"""Read a `.tflite` flatbuffer without TensorFlow: operator names, custom (Flex) ops, tensors and buffers.

Used by the exporter's builtins-only check, the memory measurement and the device side's model validation.
"""

from dataclasses import dataclass

import numpy as np
from ai_edge_litert import schema_py_generated as schema

_BUILTIN_NAMES = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
_TENSOR_TYPES = {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_")}


class NotATFLiteModel(ValueError):
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
            Tensor((t.name or b"").decode(), tuple(int(d) for d in (t.shape if t.shape is not None else ())),
                   _TENSOR_TYPES.get(t.type, str(t.type)), _buffer_size(model, t.buffer, sizes))
            for t in sg.tensors)
        ops = tuple(Op(*codes[o.opcodeIndex], tuple(int(i) for i in _list(o.inputs)), tuple(int(i) for i in _list(o.outputs)))
                    for o in sg.operators)
        subgraphs.append(Subgraph((sg.name or b"").decode(), ops, tensors, tuple(_list(sg.inputs)), tuple(_list(sg.outputs))))
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
        unknown.append(frozenset(i for i, t in enumerate(tensors)
                                 if t.ShapeSignatureLength() and (t.ShapeSignatureAsNumpy() < 0).any()))
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
