"""Read a ``.tflite`` file's graph with ``ai_edge_litert.tools.flatbuffer_utils``, without an interpreter.

No tensors are allocated, so this reads files an interpreter cannot load, such as compiled
``*_edgetpu.tflite`` files (their custom op needs the Edge TPU delegate). Op names come from the
schema's ``BuiltinOperator`` enum; the op's version and custom code come from its operator code.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional

import numpy as np

from cbnet_tl.runtime.errors import ModelError

CUSTOM = 32  # BuiltinOperator.CUSTOM
_NUMPY_TYPES = {"FLOAT32": np.float32, "FLOAT16": np.float16, "INT32": np.int32, "UINT8": np.uint8,
                "INT64": np.int64, "INT16": np.int16, "INT8": np.int8, "UINT32": np.uint32, "BOOL": np.bool_}


@lru_cache(maxsize=None)
def _enum_names(enum_name: str) -> dict:
    from ai_edge_litert import schema_py_generated as schema

    enum = getattr(schema, enum_name)
    return {value: name for name, value in vars(enum).items() if not name.startswith("_")}


def builtin_name(code: int) -> str:
    return _enum_names("BuiltinOperator").get(code, f"BUILTIN_{code}")


@dataclass(frozen=True)
class Tensor:
    index: int
    name: str
    dtype: str  # schema TensorType name: INT8, UINT8, INT32, FLOAT32, ...
    shape: tuple
    shape_signature: tuple
    constant: bool  # has data in the file (weights, biases, shape operands) or is a variable (LSTM state)
    data: Optional[np.ndarray]
    scale: Optional[float]
    zero_point: Optional[int]

    @property
    def dynamic(self) -> bool:
        return any(int(d) < 0 for d in self.shape_signature)


@dataclass(frozen=True)
class Op:
    index: int
    subgraph: int
    name: str  # builtin name, or the custom code of a custom op
    custom: bool
    version: int
    inputs: tuple  # tensor indices; -1 for an omitted optional input
    outputs: tuple
    options: dict  # builtin options as a dict of the schema's field names
    custom_options: Optional[bytes]


@dataclass(frozen=True)
class Graph:
    path: str
    subgraphs: tuple  # per subgraph: (ops tuple, tensors dict index -> Tensor, graph input indices, output indices)
    description: str

    @property
    def ops(self) -> list:
        return [op for ops, *_ in self.subgraphs for op in ops]

    def tensors(self, subgraph: int = 0) -> dict:
        return self.subgraphs[subgraph][1]


def _tensor(index: int, tensor, buffers) -> Tensor:
    dtype = _enum_names("TensorType").get(tensor.type, str(tensor.type))
    shape = tuple(int(d) for d in (tensor.shape if tensor.shape is not None else ()))
    signature = tuple(int(d) for d in tensor.shapeSignature) if tensor.shapeSignature is not None else shape
    raw = buffers[tensor.buffer].data if 0 < tensor.buffer < len(buffers) else None
    data = None
    if raw is not None and len(raw) and dtype in _NUMPY_TYPES:
        data = np.frombuffer(bytes(raw), dtype=_NUMPY_TYPES[dtype])
        if shape and data.size == int(np.prod(shape)):
            data = data.reshape(shape)
    quantization = tensor.quantization
    scale = zero_point = None
    if quantization is not None and quantization.scale is not None and len(quantization.scale):
        scale, zero_point = float(quantization.scale[0]), int(quantization.zeroPoint[0])
    return Tensor(index, (tensor.name or b"").decode(errors="replace"), dtype, shape, signature,
                  data is not None or bool(tensor.isVariable), data, scale, zero_point)


def _options(op) -> dict:
    options = op.builtinOptions
    return {} if options is None else {k: v for k, v in vars(options).items() if not isinstance(v, (bytes, bytearray))}


def read_graph(path: Path) -> Graph:
    """Every op of every subgraph in execution order, with its tensors; raises ModelError on a non-TFLite file."""
    from ai_edge_litert.tools import flatbuffer_utils

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such model file")
    head = path.read_bytes()[:8]
    if len(head) < 8 or head[4:8] != b"TFL3":
        raise ModelError(f"Cannot read {path.name} as a TFLite model: expected the TFL3 file identifier, "
                         f"found {head[4:8]!r}")
    try:
        model = flatbuffer_utils.read_model(str(path))
    except Exception as error:  # the flatbuffer reader raises many unrelated types on damaged files
        raise ModelError(f"Cannot read {path.name} as a TFLite model: {error}") from None
    subgraphs = []
    for number, subgraph in enumerate(model.subgraphs):
        tensors = {i: _tensor(i, t, model.buffers) for i, t in enumerate(subgraph.tensors)}
        ops = []
        for i, op in enumerate(subgraph.operators):
            code = model.operatorCodes[op.opcodeIndex]
            builtin = max(int(code.builtinCode), int(code.deprecatedBuiltinCode))
            custom = builtin == CUSTOM
            name = (code.customCode or b"").decode(errors="replace") if custom else builtin_name(builtin)
            ops.append(Op(i, number, name, custom, int(code.version or 1), tuple(int(t) for t in op.inputs),
                          tuple(int(t) for t in op.outputs), _options(op),
                          bytes(op.customOptions) if op.customOptions is not None else None))
        subgraphs.append((tuple(ops), tensors, tuple(int(t) for t in subgraph.inputs),
                          tuple(int(t) for t in subgraph.outputs)))
    return Graph(str(path), tuple(subgraphs), (model.description or b"").decode(errors="replace"))
