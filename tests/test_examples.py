"""Examples are executable: each runs as its docstring says."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).parents[1] / "examples"


def test_classify_folder_example(tiny_bundle, samples_dir):
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "classify_folder.py"), str(tiny_bundle), str(samples_dir), "--pipeline", "cbnet"],
        capture_output=True, text=True, check=True,
    )
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 21 and lines[-1].startswith("accuracy on 20 labelled images: ")
    assert float(lines[-1].split(": ")[1].rstrip("%")) >= 60.0
