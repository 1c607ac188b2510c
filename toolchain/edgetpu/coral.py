"""Edge TPU: which ops of a ``.tflite`` map (``edgetpu.mapping``), and compiling with ``edgetpu_compiler``.

The mapping prediction, the rules data and the op-version check live in ``edgetpu.mapping``,
``edgetpu.rules`` and ``data/edgetpu_ops.json``; this module keeps the names the build and the
bundle import, collects model files, and runs the real compiler when it is on PATH.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Optional, Sequence

from cbnet_tl.runtime.errors import CbnetError, CompileError
from cbnet_tl.toolchain.edgetpu.mapping import (  # noqa: F401  (re-exported for build, bundle and the CLI)
    check_edgetpu_versions,
    format_inspection,
    inspect_model,
    version_report,
)

COMPILER = "edgetpu_compiler"


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
