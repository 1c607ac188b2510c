"""The runtime stays light: no TensorFlow, Keras, jinja2 or typer, and a bundle runs in a venv of
only numpy, Pillow and ai-edge-litert."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

HEAVY = ("tensorflow", "keras", "jinja2", "typer", "tqdm")


def test_importing_runtime_loads_no_heavy_module():
    code = (
        "import sys, json\n"
        "import cbnet_tl.runtime, cbnet_tl.runtime.api, cbnet_tl.runtime.cli, cbnet_tl.runtime.pipelines\n"
        "import cbnet_tl.runtime.dvfs.run, cbnet_tl.runtime.dvfs.eenet\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_runtime_modules_import_only_allowed_packages():
    """Static check: every top-level import in runtime/ is stdlib, numpy, PIL or our runtime."""
    import ast

    allowed = set(sys.stdlib_module_names) | {"numpy", "PIL", "cbnet_tl", "ai_edge_litert", "tflite_runtime", "tensorflow"}
    runtime_dir = Path(__file__).parents[1] / "runtime"
    offenders = []
    for path in runtime_dir.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            for name in names:
                root = name.split(".")[0]
                if root not in allowed or (name.startswith("cbnet_tl") and not name.startswith("cbnet_tl.runtime")):
                    offenders.append(f"{path.name}: {name}")
    assert offenders == []


# What `pip install numpy pillow ai-edge-litert` installs: the three and ai-edge-litert's requirements.
LIGHT_DISTRIBUTIONS = ("numpy", "pillow", "ai-edge-litert", "flatbuffers", "ml-dtypes", "protobuf", "tqdm",
                       "typing-extensions", "backports.strenum")


def _top_level_entries(distribution: str) -> set:
    """Top-level site-packages entries (packages, modules, .libs, .dist-info) of one installed distribution."""
    from importlib import metadata

    dist = metadata.distribution(distribution)
    entries = set()
    for file in dist.files or []:
        parts = Path(str(file)).parts
        if parts and parts[0] not in ("..", "bin"):
            entries.add(Path(dist.locate_file(parts[0])))
    return entries


@pytest.fixture(scope="module")
def light_venv(tmp_path_factory) -> Path:
    """A real venv whose site-packages holds only numpy, Pillow, ai-edge-litert and their own
    requirements (linked from this environment, so no network is needed)."""
    root = tmp_path_factory.mktemp("light-venv")
    venv.create(root, with_pip=False, symlinks=True)
    site = next((root / "lib").glob("python3*/site-packages"))
    for distribution in LIGHT_DISTRIBUTIONS:
        for entry in _top_level_entries(distribution):
            target = site / entry.name
            if entry.exists() and not target.exists():
                target.symlink_to(entry)
    return root / "bin" / "python"


def test_light_venv_really_lacks_tensorflow(light_venv):
    probe = subprocess.run([str(light_venv), "-c", "import tensorflow"], capture_output=True, text=True)
    assert probe.returncode != 0 and "No module named 'tensorflow'" in probe.stderr
    probe = subprocess.run([str(light_venv), "-c", "import cbnet_tl"], capture_output=True, text=True, cwd="/")
    assert probe.returncode != 0


def test_bundle_runner_works_in_light_venv(light_venv, tiny_bundle, samples_dir):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    selftest = subprocess.run([str(light_venv), str(tiny_bundle / "run.py"), "selftest"],
                              capture_output=True, text=True, env=env, cwd="/")
    assert selftest.returncode == 0, selftest.stderr
    assert json.loads(selftest.stdout)["passed"] is True
    classify = subprocess.run(
        [str(light_venv), str(tiny_bundle / "run.py"), "classify", str(samples_dir / "mnist_00_7.png"),
         str(samples_dir / "mnist_02_1.png"), "--pipeline", "cbnet", "--json"],
        capture_output=True, text=True, env=env, cwd="/",
    )
    assert classify.returncode == 0, classify.stderr
    results = json.loads(classify.stdout)["results"]
    assert [r["path"] for r in results] == ["ae+classifier", "ae+classifier"]
    bad = subprocess.run([str(light_venv), str(tiny_bundle / "run.py"), "classify", "/nonexistent.png"],
                         capture_output=True, text=True, env=env, cwd="/")
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines()[-1] == "error: /nonexistent.png: no such file or directory"


def test_an_unreadable_file_among_others_in_light_venv(light_venv, tiny_bundle, samples_dir, tmp_path):
    """The per-file error entries need nothing beyond the light runtime either."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    (tmp_path / "empty.png").write_bytes(b"")
    out = subprocess.run([str(light_venv), str(tiny_bundle / "run.py"), "classify", str(tmp_path / "empty.png"),
                          str(samples_dir / "mnist_00_7.png"), "--json"], capture_output=True, text=True, env=env,
                         cwd="/")
    assert out.returncode == 1, out.stderr
    empty, sample = json.loads(out.stdout)["results"]
    reason = "empty file (0 bytes), expected an image"
    assert empty == {"file": str(tmp_path / "empty.png"), "error": reason}
    assert sample["class_name"] == str(sample["label"])
    assert out.stderr.strip().splitlines()[-1] == f"error: {tmp_path / 'empty.png'}: {reason}"


@pytest.mark.tf  # typer is imported in the child process, which the automatic marking cannot see
def test_cli_help_does_not_import_tensorflow():
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from cbnet_tl.toolchain.cli import app\n"
        "result = CliRunner().invoke(app, ['build', '--help'])\n"
        "assert result.exit_code == 0, result.output\n"
        "print('tensorflow' in sys.modules, 'keras' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
