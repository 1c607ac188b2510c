"""Edge TPU readiness: which ops of a ``.tflite`` map to the Edge TPU, and compiling with ``edgetpu_compiler``.

The op table and constraints are data (``data/edgetpu_ops.json``, with its source). The check mirrors
how the compiler partitions: it maps ops in graph order until the first it cannot map; that op and
all after it run on the CPU.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from cbnet_tl.runtime.errors import CbnetError, CompileError, ModelError
from cbnet_tl.runtime.interpreter import find_interpreter

COMPILER = "edgetpu_compiler"
# Tensors that are legitimately not 8-bit in an int8 graph: biases (int32) and shape operands.
_ALLOWED_WIDE_INPUTS = {"CONV_2D": {2}, "DEPTHWISE_CONV_2D": {2}, "FULLY_CONNECTED": {2}, "TRANSPOSE_CONV": {0, 3},
                        "RESHAPE": {1}, "PAD": {1}, "PADV2": {1}, "MEAN": {1}, "SUM": {1}, "REDUCE_MAX": {1},
                        "REDUCE_MIN": {1}, "STRIDED_SLICE": {1, 2, 3}, "SLICE": {1, 2}, "TRANSPOSE": {1},
                        "GATHER": {1}, "SPLIT": {0}, "RESIZE_BILINEAR": {1}, "RESIZE_NEAREST_NEIGHBOR": {1}}



def op_table() -> dict:
    return json.loads(resources.files("cbnet_tl.toolchain").joinpath("data/edgetpu_ops.json").read_text())


@dataclass(frozen=True)
class OpReport:
    index: int
    op_name: str
    on_edgetpu: bool
    reason: str


def _op_problem(op: dict, tensors: dict, table: dict) -> Optional[str]:
    name = op["op_name"]
    if name not in table["supported_ops"]:
        return f"{name} is not an Edge TPU operation"
    wide = _ALLOWED_WIDE_INPUTS.get(name, set())
    for position, index in enumerate(op["inputs"]):
        if index < 0 or index not in tensors:
            continue
        dtype = np.dtype(tensors[index]["dtype"]).name
        if position not in wide and dtype not in table["quantized_dtypes"]:
            return f"input {position} is {dtype}; the Edge TPU needs 8-bit quantized tensors"
    for index in op["outputs"]:
        tensor = tensors[index]
        dtype = np.dtype(tensor["dtype"]).name
        if dtype not in table["quantized_dtypes"]:
            return f"output is {dtype}; the Edge TPU needs 8-bit quantized tensors"
        if any(int(d) < 0 for d in tensor["shape_signature"]):
            return f"output shape {list(tensor['shape_signature'])} is dynamic; the Edge TPU needs static shapes"
        if sum(int(d) > 1 for d in tensor["shape"]) > table["max_dims_above_one"]:
            return f"output shape {list(tensor['shape'])} has more than {table['max_dims_above_one']} dimensions above 1"
    return None


def inspect_model(path: Path) -> dict:
    """Ops in graph order, each marked as mapping to the Edge TPU or falling back to the CPU."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such model file")
    backend = find_interpreter()
    try:
        interpreter = backend.interpreter_class(model_path=str(path))
    except (ValueError, RuntimeError) as error:
        raise ModelError(f"Cannot read {path.name} as a TFLite model: {str(error).strip().splitlines()[0]}") from None
    tensors = {int(t["index"]): t for t in interpreter.get_tensor_details()}
    table = op_table()
    reports, split_at = [], None
    for op in interpreter._get_ops_details():
        problem = _op_problem(op, tensors, table) if split_at is None else None
        if split_at is None and problem is not None:
            split_at = int(op["index"])
        on_tpu = split_at is None
        reason = "maps to the Edge TPU" if on_tpu else (problem or f"after the split at op {split_at}: runs on the CPU")
        reports.append(OpReport(int(op["index"]), op["op_name"], on_tpu, reason))
    return {
        "file": str(path), "ops_total": len(reports), "ops_on_edgetpu": sum(r.on_edgetpu for r in reports),
        "split_at_op": split_at, "fully_mapped": split_at is None, "ops": [asdict(r) for r in reports],
        "caveat": "Checked against the documented op list and constraints; only edgetpu_compiler can confirm "
                  "op versions (recent TF may emit versions compiler 16 rejects).",
    }


def collect_models(items) -> list:
    """``.tflite`` files as given; directories (bundle or build) give every int8 model in their models/."""
    files = []
    for item in map(Path, items):
        if item.is_dir():
            folder = item / "models" if (item / "models").is_dir() else item / "bundle" / "models"
            found = sorted(folder.glob("*_int8.tflite"))
            if not found:
                raise CbnetError(f"{item}: no int8 .tflite models found in {folder}")
            files.extend(found)
        else:
            files.append(item)
    return files


def format_inspection(reports: dict) -> str:
    lines = []
    for name, report in reports.items():
        status = "fully on the Edge TPU" if report["fully_mapped"] else f"splits at op {report['split_at_op']}"
        lines.append(f"{name}: {report['ops_on_edgetpu']}/{report['ops_total']} ops on the Edge TPU ({status})")
        for op in report["ops"]:
            lines.append(f"  {op['index']:>3} {op['op_name']:<24} {'TPU' if op['on_edgetpu'] else 'CPU'}  {op['reason']}")
    return "\n".join(lines)


# --- compiling ------------------------------------------------------------------------------------

_SUMMARY = {
    "on_edgetpu": re.compile(r"Number of operations that will run on Edge TPU:\s*(\d+)"),
    "on_cpu": re.compile(r"Number of operations that will run on CPU:\s*(\d+)"),
    "total": re.compile(r"Total number of operations:\s*(\d+)"),
    "subgraphs": re.compile(r"Number of Edge TPU subgraphs:\s*(\d+)"),
}
_LOG_ROW = re.compile(r"^(?P<op>[A-Z][A-Z0-9_]+)\s+(?P<count>\d+)\s+(?P<status>.+?)\s*$")


def parse_compiler_output(stdout: str, log_text: str = "") -> dict:
    """Counts from the compiler's summary, and per-op rows (op, count, status) from its ``.log``."""
    parsed = {key: int(m.group(1)) for key, pattern in _SUMMARY.items() if (m := pattern.search(stdout))}
    rows = [m.groupdict() for line in log_text.splitlines() if (m := _LOG_ROW.match(line.strip()))]
    for row in rows:
        row["count"] = int(row["count"])
    parsed["operations"] = rows
    if "on_edgetpu" not in parsed and "total" in parsed:  # fully mapped: the compiler prints no split lines
        parsed["on_edgetpu"], parsed["on_cpu"] = parsed["total"], 0
    return parsed


def compile_models(models: Sequence[Path], out_dir: Path, compiler: Optional[str] = None) -> dict:
    """Run edgetpu_compiler on each model when it is on PATH; say plainly when it is not."""
    executable = compiler or shutil.which(COMPILER)
    if executable is None:
        return {"compiled": False, "reason": f"{COMPILER} is not on PATH (x86-64 Debian only); "
                                              "the bundle carries compile_edgetpu.sh to compile on such a host",
                "models": {}}
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {}
    for model in models:
        command = [executable, "-s", "-o", str(out_dir), str(model)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, check=True, timeout=600)
        except subprocess.CalledProcessError as error:
            tail = " ".join((error.stderr or error.stdout or "").strip().splitlines()[-3:])
            raise CompileError(f"{COMPILER} failed on {Path(model).name} (exit {error.returncode}): {tail}") from None
        except subprocess.TimeoutExpired:
            raise CompileError(f"{COMPILER} did not finish {Path(model).name} within 600 s") from None
        compiled = out_dir / f"{Path(model).stem}_edgetpu.tflite"
        if not compiled.is_file():
            raise CompileError(f"{COMPILER} reported success but wrote no {compiled.name}")
        log = out_dir / f"{Path(model).stem}_edgetpu.log"
        parsed = parse_compiler_output(done.stdout, log.read_text() if log.is_file() else "")
        results[Path(model).stem] = {"file": compiled.name, **parsed,
                                     "fully_mapped": parsed.get("on_cpu", 1) == 0}
    return {"compiled": True, "compiler": executable, "models": results}
