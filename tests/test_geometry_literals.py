"""The input geometry comes from the manifest's input spec: no literal image side or pixel count of the MNIST
family (28, 784) in runtime/ or recipes/, in code, comments or docstrings, nor in toolchain/ outside the IDX
loader. A regression such as a hard-coded ``reshape(-1, 28, 28, 1)`` or a ``784``-wide layer makes this fail."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LITERAL = re.compile(r"(?<![\w.])(28|784)(?![\w.])")


def test_no_mnist_geometry_literal_in_the_runtime_or_the_recipes():
    found = []
    for folder in ("runtime", "recipes"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if LITERAL.search(line):
                    found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not found, "input-geometry literals:\n" + "\n".join(found)


def test_the_toolchain_has_them_only_in_the_idx_loader_and_text_widths():
    """toolchain/ingest/datasets.py reads the MNIST family's IDX files, whose images are that size; a format width
    (``:<28``) is text layout."""
    found = []
    for path in sorted((ROOT / "toolchain").rglob("*.py")):
        if path.name == "datasets.py":
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if any(line[match.start() - 1] not in "<>^" for match in LITERAL.finditer(line)):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not found, "input-geometry literals:\n" + "\n".join(found)


def test_the_pattern_finds_what_it_is_for():
    assert LITERAL.search("x.reshape(-1, 28, 28, 1)") and LITERAL.search("Dense(784)")
    assert not LITERAL.search("Dense(128)") and not LITERAL.search("2.28 s") and not LITERAL.search("n_28")
