"""toolchain/ is grouped by stage, and every import points down: a stage imports only from floors below its own
(or from its own folder). The floors are the ones toolchain/__init__.py documents."""

import ast
import re
from pathlib import Path

import pytest

TOOLCHAIN = Path(__file__).resolve().parent.parent / "toolchain"

FLOORS = {
    "progress": 0, "quiet": 0, "scoring": 0, "targets": 0,
    "ingest": 1, "edgetpu": 1, "arm64": 1,
    "conversion": 2,
    "training": 3, "delivery": 3,
    "analysis": 4,
    "simulation": 5,
    "build": 6,
    "cli": 7,
}
NOT_CODE = {"data", "__pycache__"}


def unit_of(path: Path, root: Path) -> str:
    """The stage a source file belongs to: its folder under toolchain/, or its own name at the top level."""
    parts = path.relative_to(root).parts
    return parts[0] if len(parts) > 1 else path.stem


def imported_units(path: Path) -> set:
    """The toolchain units a file imports, at module level or inside functions."""
    units = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.level:
                raise AssertionError(f"{path}: relative import; the toolchain imports by absolute name")
            names = [node.module]
            if node.module == "cbnet_tl.toolchain":
                names = [f"cbnet_tl.toolchain.{alias.name}" for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[:2] == ["cbnet_tl", "toolchain"] and len(parts) > 2:
                units.add(parts[2])
    return units


def upward_imports(root: Path, floors: dict) -> list:
    """Every (file, imported unit) pair where a file imports a unit on its own floor (other than its own unit)
    or above it, or where a file sits in a unit with no floor."""
    bad = []
    for path in sorted(root.rglob("*.py")):
        if NOT_CODE & set(path.relative_to(root).parts) or path == root / "__init__.py":
            continue
        unit = unit_of(path, root)
        if unit not in floors:
            bad.append((str(path.relative_to(root)), "<no floor: add it to toolchain/__init__.py and FLOORS>"))
            continue
        for target in imported_units(path):
            if target != unit and floors.get(target, 99) >= floors[unit]:
                bad.append((str(path.relative_to(root)), target))
    return bad


def test_every_toolchain_import_points_down():
    assert upward_imports(TOOLCHAIN, FLOORS) == []


def documented_floors(doc: str) -> dict:
    """{unit: floor} from the "- floor N: ``unit`` ..., ``unit/`` ..." items of toolchain/__init__.py's docstring
    (an item runs on over its indented lines)."""
    floors, floor = {}, None
    for line in doc.splitlines():
        started = re.match(r"- floor (\d+)", line)
        if started:
            floor = int(started.group(1))
        elif not line.startswith(" "):
            floor = None
        if floor is not None:
            for unit in re.findall(r"``([a-z0-9_]+)/?``", line):
                floors.setdefault(unit, floor)
    return floors


def readme_floors(readme: str) -> dict:
    """{unit: floor} from the README's tree of toolchain/: lines ``  unit, unit/   floor N: ...``, where
    ``floors N and M`` gives the units their floors in turn."""
    floors = {}
    for names, numbers in re.findall(r"^  ([a-z0-9_/., ]+?)\s{2,}floors? (\d+(?: and \d+)*):", readme, re.M):
        units = [name.strip(",").removesuffix("/").removesuffix(".py") for name in names.split()]
        levels = [int(n) for n in numbers.split(" and ")]
        floors.update(zip(units, levels if len(levels) > 1 else levels * len(units)))
    return floors


def test_the_floors_are_the_ones_the_package_documents():
    units = {p.name if p.is_dir() else p.stem for p in TOOLCHAIN.iterdir()
             if (p.is_dir() and p.name not in NOT_CODE) or (p.suffix == ".py" and p.name != "__init__.py")}
    assert units == set(FLOORS)
    doc = ast.get_docstring(ast.parse((TOOLCHAIN / "__init__.py").read_text()))
    assert documented_floors(doc) == FLOORS
    assert readme_floors((TOOLCHAIN.parent / "README.md").read_text()) == FLOORS
    for folder in (p for p in TOOLCHAIN.iterdir() if p.is_dir() and p.name not in NOT_CODE):
        assert ast.get_docstring(ast.parse((folder / "__init__.py").read_text())), folder.name


def test_the_documented_floors_are_read_from_each_item():
    doc = ("Folders (``tests/x.py`` holds this):\n\n- floor 0: ``progress`` (bars), ``scoring``\n"
           "  ``targets`` (the boards)\n- floor 1: ``ingest/`` (the ``.tflite`` reader), ``cbnet-tl build``\n"
           "\nAfter the list: ``cli``\n")
    assert documented_floors(doc) == {"progress": 0, "scoring": 0, "targets": 0, "ingest": 1}


@pytest.mark.parametrize("source, expected", [
    ("from cbnet_tl.toolchain.training.train import TrainConfig\n", [("conversion/convert.py", "training")]),
    ("from cbnet_tl.toolchain import build\n", [("conversion/convert.py", "build")]),
    ("def f():\n    import cbnet_tl.toolchain.analysis.bench\n", [("conversion/convert.py", "analysis")]),
    ("from cbnet_tl.toolchain.delivery import bundle\n", [("conversion/convert.py", "delivery")]),
    ("from cbnet_tl.toolchain.scoring import accuracy\nfrom cbnet_tl.toolchain.conversion import checks\n", []),
])
def test_the_check_catches_an_upward_import(tmp_path, source, expected):
    (tmp_path / "conversion").mkdir()
    (tmp_path / "conversion" / "convert.py").write_text(source)
    assert upward_imports(tmp_path, FLOORS) == expected


def test_the_check_catches_a_module_left_without_a_floor(tmp_path):
    (tmp_path / "misc.py").write_text("x = 1\n")
    assert upward_imports(tmp_path, FLOORS)[0][0] == "misc.py"
