"""Per-op Edge TPU rules: can edgetpu_compiler 16 map this op, and does it accept this op version?

The rules are data (``data/edgetpu_ops.json``: supported ops, their documented conditions, tensor
rules and max op versions, each with its source). This module only evaluates the named conditions;
a condition named in the data but not implemented here fails loudly at load time.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Optional

import numpy as np

from cbnet_tl.toolchain.edgetpu.tflite_graph import Op, Tensor


@lru_cache(maxsize=None)
def rules() -> dict:
    table = json.loads(resources.files("cbnet_tl.toolchain").joinpath("data/edgetpu_ops.json").read_text())
    missing = {c for spec in table["ops"].values() for c in spec.get("conditions", ())} - set(CONDITIONS)
    if missing:
        raise RuntimeError(f"edgetpu_ops.json names conditions with no check: {sorted(missing)}")
    return table


def _activations(op: Op, tensors: dict, which: str = "inputs") -> list:
    return [tensors[i] for i in getattr(op, which) if i >= 0 and not tensors[i].constant]


def _constant(op: Op, tensors: dict, position: int) -> Optional[np.ndarray]:
    if position >= len(op.inputs) or op.inputs[position] < 0:
        return None
    return tensors[op.inputs[position]].data


# --- conditions: each returns None when met, else the reason ------------------------------------


def _no_fused_activation(op, tensors, spec):
    if op.options.get("fusedActivationFunction", 0):
        return "has a fused activation function; the Edge TPU needs none on this op"
    return None


def _constant_input_is_zero_padding(op, tensors, spec):
    constants = [tensors[i] for i in op.inputs if i >= 0 and tensors[i].constant]
    if not constants:
        return None
    if len(op.inputs) != 2 or any(t.data is None or np.any(t.data.astype(np.int64) != (t.zero_point or 0))
                                  for t in constants):
        return "concatenates a constant that is not a zero padding of one other input"
    return None


def _same_dilation(op, tensors, spec):
    h, w = op.options.get("dilationHFactor", 1), op.options.get("dilationWFactor", 1)
    return None if h == w else f"dilation differs in y and x ({h} vs {w})"


def _default_weights_format(op, tensors, spec):
    return None if op.options.get("weightsFormat", 0) == 0 else "uses a non-default fully-connected weights format"


def _one_dimensional_output(op, tensors, spec):
    out = tensors[op.outputs[0]]
    return None if sum(d > 1 for d in out.shape) <= 1 else f"output {list(out.shape)} is not one-dimensional"


def _axes(op, tensors) -> Optional[list]:
    name = op.name
    if name == "PACK":
        return [int(op.options.get("axis", 0))]
    if name == "SPLIT":
        data = _constant(op, tensors, 0)
    elif name == "PAD":
        paddings = _constant(op, tensors, 1)
        if paddings is None:
            return None
        return [i for i, row in enumerate(np.asarray(paddings).reshape(-1, 2)) if np.any(row != 0)]
    else:  # MEAN, SUM, REDUCE_MAX, REDUCE_MIN: axis operand
        data = _constant(op, tensors, 1)
    return None if data is None else [int(a) for a in np.atleast_1d(data)]


def _rank(op, tensors) -> int:
    source = tensors[op.outputs[0]] if op.name == "PACK" else _activations(op, tensors)[0]
    return len(source.shape)


def _no_batch_axis(op, tensors, spec):
    if not _activations(op, tensors):
        return None
    axes = _axes(op, tensors)
    if axes is None:
        return "its axis operand is not a compile-time constant"
    rank = _rank(op, tensors)
    if rank > 1 and any(a % rank == 0 for a in axes):
        return "operates along the batch dimension"
    return None


def _z_reduction_multiple_of_4(op, tensors, spec):
    source = _activations(op, tensors)[0]
    axes, rank = _axes(op, tensors) or [], len(source.shape)
    if rank and any(a % rank == rank - 1 for a in axes) and source.shape[-1] % 4:
        return f"reduces along z, whose size {source.shape[-1]} is not a multiple of 4"
    return None


def _alpha_innermost_only(op, tensors, spec):
    alpha = tensors[op.inputs[1]]
    return None if sum(d > 1 for d in alpha.shape[:-1]) == 0 else f"alpha {list(alpha.shape)} is not 1-dimensional"


def _softmax_1d(op, tensors, spec):
    source = _activations(op, tensors)[0]
    if sum(d > 1 for d in source.shape) > 1:
        return f"input {list(source.shape)} is not 1-dimensional"
    size = int(np.prod(source.shape)) if source.shape else 1
    return None if size <= spec["max_elements"] else f"input has {size} elements (max {spec['max_elements']})"


def _unit_strides_no_masks(op, tensors, spec):
    strides = _constant(op, tensors, 3)
    if strides is None or np.any(np.asarray(strides) != 1):
        return "strides are not all 1"
    if op.options.get("ellipsisMask", 0) or op.options.get("newAxisMask", 0):
        return "uses an ellipsis or new-axis mask"
    return None


def _resize_without_precision_loss(op, tensors, spec):
    source, out = _activations(op, tensors)[0], tensors[op.outputs[0]]
    sizes_in, sizes_out = source.shape[1:3], out.shape[1:3]
    if len(sizes_in) != 2 or tuple(sizes_in) == tuple(sizes_out):
        return None
    if op.options.get("alignCorners"):
        return (f"align_corners resize {list(sizes_in)} -> {list(sizes_out)}; the compiler keeps it on the CPU to "
                "avoid loss in precision")
    if all(i > 1 and o % i == 0 for i, o in zip(sizes_in, sizes_out)):
        return None
    return (f"resize {list(sizes_in)} -> {list(sizes_out)} is not a whole-number scale; the compiler keeps it on the "
            "CPU to avoid loss in precision")


CONDITIONS: dict = {
    "no_fused_activation": _no_fused_activation,
    "constant_input_is_zero_padding": _constant_input_is_zero_padding,
    "same_dilation": _same_dilation,
    "default_weights_format": _default_weights_format,
    "one_dimensional_output": _one_dimensional_output,
    "no_batch_axis": _no_batch_axis,
    "z_reduction_multiple_of_4": _z_reduction_multiple_of_4,
    "alpha_innermost_only": _alpha_innermost_only,
    "softmax_1d": _softmax_1d,
    "unit_strides_no_masks": _unit_strides_no_masks,
    "resize_without_precision_loss": _resize_without_precision_loss,
}


# --- tensor rules and the op check ----------------------------------------------------------------


def _tensor_problem(role: str, tensor: Tensor, table: dict) -> Optional[str]:
    rule = table["tensor_rules"]
    if tensor.dtype not in rule["quantized_dtypes"]:
        return f"{role} is {tensor.dtype.lower()}; the Edge TPU needs 8-bit quantized tensors"
    if tensor.dynamic:
        return f"{role} shape {list(tensor.shape_signature)} is dynamic; the Edge TPU needs static shapes"
    outer = tensor.shape[:-rule["innermost_dims"]]
    if any(d > 1 for d in outer):
        return (f"{role} shape {list(tensor.shape)} has a dimension > 1 outside the "
                f"{rule['innermost_dims']} innermost ones")
    return None


def op_problem(op: Op, tensors: dict) -> Optional[str]:
    """Why the Edge TPU cannot run this op by itself (None: it can), from the rules data."""
    table = rules()
    spec = table["ops"].get(op.name)
    if spec is None:
        kind = "custom op" if op.custom else "op"
        return f"{op.name} is not an Edge TPU {kind} (not in Coral's supported-operations table)"
    for position, tensor in enumerate(_activations(op, tensors)):
        problem = _tensor_problem(f"input {position}", tensor, table)
        if problem:
            return problem
    for position, index in enumerate(op.outputs):
        problem = _tensor_problem(f"output {position}", tensors[index], table)
        if problem:
            return problem
    for name in spec.get("conditions", ()):
        problem = CONDITIONS[name](op, tensors, spec)
        if problem:
            return f"{op.name}: {problem}"
    return None


def version_problem(op: Op) -> Optional[str]:
    """Why compiler 16 will refuse the whole model because of this op's version (None: accepted or unknown)."""
    entry = rules()["max_versions"].get(op.name)
    if op.custom or entry is None or op.version <= entry["max"]:
        return None
    return (f"{op.name} version {op.version} is newer than edgetpu_compiler 16 accepts (max {entry['max']}); "
            f"it stops with \"Didn't find op for builtin opcode '{op.name}' version '{op.version}'\"")
