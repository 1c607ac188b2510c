"""Predict what edgetpu_compiler 16 makes of a ``.tflite``, and read what it made of a compiled one.

Prediction follows the compiler's partitioning (rules and sources in ``data/edgetpu_ops.json``):
a leading run of ops the Edge TPU cannot run (the CAST/QUANTIZE in front of a float-input model)
stays on the CPU and mapping starts after it; ops then join one Edge TPU segment until an op it
cannot run; that op and everything that depends on it run on the CPU. Op versions newer than the
compiler accepts make it refuse the whole model.

A compiled ``*_edgetpu.tflite`` keeps every op the compiler did not map as an ordinary op beside
``edgetpu-custom-op``; its custom options (a compiled executable) do not record how many source ops
it carries, so the count comes from the source model when it sits beside the compiled file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from cbnet_tl.runtime.errors import CompileError
from cbnet_tl.toolchain.edgetpu.rules import op_problem, rules, version_problem
from cbnet_tl.toolchain.edgetpu.tflite_graph import Graph, Op, read_graph

EDGETPU_CUSTOM_OP = "edgetpu-custom-op"
BEFORE, EDGETPU, AFTER = "cpu-before-edgetpu", "edgetpu", "cpu-after-split"


def _placements(ops: Sequence[Op], tensors: dict) -> list:
    """(placement, reason) per op of one subgraph, in graph order."""
    # Where each non-constant tensor comes from: a model input, a leading CPU op, the segment, or after the split.
    origin, placed = {}, []
    for op in ops:
        sources = {origin.get(i, BEFORE) for i in op.inputs if i >= 0 and not tensors[i].constant}
        problem = op_problem(op, tensors)
        if AFTER in sources:
            culprit = next(o for o, p in zip(ops, placed) if p[0] == AFTER and set(o.outputs) & set(op.inputs))
            reason = (f"depends on op {culprit.index} ({culprit.name}), which runs on the CPU after the split; "
                      "compiler 16 makes one Edge TPU subgraph")
            placement = AFTER
        elif problem is None:
            placement, reason = EDGETPU, "maps to the Edge TPU"
        elif sources <= {BEFORE}:
            placement, reason = BEFORE, f"{problem}; runs on the CPU before the Edge TPU segment"
        else:
            placement, reason = AFTER, problem
        placed.append((placement, reason))
        for index in op.outputs:
            origin[index] = placement
    return placed


def _compiled_report(graph: Graph) -> dict:
    ops = graph.ops
    custom = [op for op in ops if op.name == EDGETPU_CUSTOM_OP]
    cpu = [{"index": op.index, "op_name": op.name, "version": op.version} for op in ops if op.name != EDGETPU_CUSTOM_OP]
    path = Path(graph.path)
    source = path.with_name(path.name.replace("_edgetpu.tflite", ".tflite"))
    report = {"file": graph.path, "compiled": True, "num_edgetpu_custom_ops": len(custom), "cpu_ops": cpu,
              "ops_on_cpu": len(cpu), "ops_total": None, "ops_on_edgetpu": None, "source_model": None,
              "carried_ops": "not recorded in the custom op's options (a compiled executable); "
                             f"put the source model beside it as {source.name} to count them"}
    if source != path and source.is_file():
        total = len(read_graph(source).ops)
        report.update(source_model=str(source), ops_total=total, ops_on_edgetpu=total - len(cpu),
                      carried_ops=f"{total - len(cpu)} of {total} ops of {source.name}")
    report["fully_mapped"] = not cpu
    return report


def inspect_model(path: Path) -> dict:
    """The Edge TPU mapping of one ``.tflite``: predicted for a plain model, read from a compiled one."""
    graph = read_graph(Path(path))
    if any(op.name == EDGETPU_CUSTOM_OP for op in graph.ops):
        return _compiled_report(graph)
    reports = []
    for number, (ops, tensors, _, _) in enumerate(graph.subgraphs):
        placed = _placements(ops, tensors) if number == 0 else [
            (AFTER, "in a secondary subgraph; the compiler maps only the main graph")] * len(ops)
        for op, (placement, reason) in zip(ops, placed):
            rejected = version_problem(op)
            reports.append({"index": op.index, "subgraph": number, "op_name": op.name, "version": op.version,
                            "version_accepted": rejected is None, "placement": placement,
                            "on_edgetpu": placement == EDGETPU, "reason": reason})
    rejects = sorted({version_problem(op) for op in graph.ops if version_problem(op)})
    if rejects:  # the compiler stops before mapping anything
        for report in reports:
            report["on_edgetpu"] = False
    split = next((r["index"] for r in reports if r["placement"] == AFTER and r["subgraph"] == 0), None)
    mapped = [r["index"] for r in reports if r["on_edgetpu"]]
    return {
        "file": str(path), "compiled": False, "ops_total": len(reports), "ops_on_edgetpu": len(mapped),
        "ops_on_cpu": len(reports) - len(mapped), "fully_mapped": len(mapped) == len(reports) and bool(reports),
        "split_at_op": split, "edgetpu_segment": [mapped[0], mapped[-1]] if mapped else None,
        "leading_cpu_ops": [r["index"] for r in reports if r["placement"] == BEFORE],
        "compiler_rejects": rejects, "ops": reports,
    }


def version_report(path: Path) -> list:
    """Each op's name and version, and whether edgetpu_compiler 16 accepts it."""
    return [{"index": op.index, "op_name": op.name, "version": op.version, "problem": version_problem(op)}
            for op in read_graph(Path(path)).ops]


def check_edgetpu_versions(models: Sequence[Path]) -> None:
    """Raise one CompileError naming every op whose version edgetpu_compiler 16 rejects, and what to change."""
    table = rules()["max_versions"]
    problems = []
    for path in models:
        seen = set()
        for row in version_report(path):
            key = (row["op_name"], row["version"])
            if row["problem"] and key not in seen:
                seen.add(key)
                fix = table[row["op_name"]].get("fix", table["_default_fix"])
                problems.append(f"{Path(path).name}: op {row['index']} {row['problem']}. To fix: {fix}")
    if problems:
        raise CompileError("edgetpu_compiler 16 will reject these models: " + " | ".join(problems))


def format_inspection(reports: dict) -> str:
    lines = []
    for name, report in reports.items():
        if report.get("compiled"):
            cpu = ", ".join(f"{op['index']} {op['op_name']}" for op in report["cpu_ops"]) or "none"
            lines.append(f"{name}: compiled for the Edge TPU: {report['num_edgetpu_custom_ops']} {EDGETPU_CUSTOM_OP} "
                         f"carrying {report['carried_ops']}; {report['ops_on_cpu']} ops still on the CPU: {cpu}")
            continue
        if report["compiler_rejects"]:
            status = "edgetpu_compiler 16 rejects the model: " + "; ".join(report["compiler_rejects"])
        elif report["fully_mapped"]:
            status = "fully on the Edge TPU"
        else:
            segment = report["edgetpu_segment"]
            parts = [f"Edge TPU segment ops {segment[0]}..{segment[1]}" if segment else "no op maps"]
            if report["leading_cpu_ops"]:
                parts.append(f"{len(report['leading_cpu_ops'])} leading ops on the CPU")
            if report["split_at_op"] is not None:
                parts.append(f"splits at op {report['split_at_op']}")
            status = ", ".join(parts)
        lines.append(f"{name}: {report['ops_on_edgetpu']}/{report['ops_total']} ops on the Edge TPU ({status})")
        for op in report["ops"]:
            where = "TPU" if op["on_edgetpu"] else "CPU"
            version = f"v{op['version']}" + ("" if op["version_accepted"] else "!")
            lines.append(f"  {op['index']:>3} {op['op_name']:<28} {version:<4} {where}  {op['reason']}")
    return "\n".join(lines)

