"""Edge TPU readiness: op check on real models, the compile step with a stand-in compiler, the delegate
fallback, and a coral-usb bundle rendered from the tiny real build."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cbnet_tl.runtime.delegates import edgetpu_library, load_edgetpu
from cbnet_tl.toolchain.cli import app
from cbnet_tl.toolchain.edgetpu.coral import (
    CompileError,
    check_edgetpu_versions,
    compile_models,
    inspect_model,
    parse_compiler_output,
    version_report,
)

runner = CliRunner()


def test_int8_pipeline_models_map_fully(tiny_build):
    for name in ("autoencoder", "branch", "trunk_branch", "main_tail", "lenet"):
        report = inspect_model(tiny_build / "models" / f"{name}_int8.tflite")
        assert report["fully_mapped"] and report["ops_on_edgetpu"] == report["ops_total"] > 0, name


def test_float_model_stays_on_the_cpu_before_any_segment(tiny_build):
    report = inspect_model(tiny_build / "models" / "lenet_float32.tflite")
    assert report["ops_on_edgetpu"] == 0 and report["edgetpu_segment"] is None
    assert report["leading_cpu_ops"] == [op["index"] for op in report["ops"]]
    assert "float32" in report["ops"][0]["reason"] and all(not op["on_edgetpu"] for op in report["ops"])


def test_int8_models_report_accepted_op_versions(tiny_build):
    models = sorted((tiny_build / "models").glob("*_int8.tflite"))
    check_edgetpu_versions(models)  # our own build's Coral models pass compiler 16's version table
    rows = version_report(models[0])
    assert rows and all(row["version"] >= 1 and row["problem"] is None for row in rows)


def test_too_new_op_version_is_named_with_the_fix(tiny_build, tmp_path):
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(tiny_build / "models" / "lenet_int8.tflite"))
    for code in model.operatorCodes:
        if max(code.builtinCode, code.deprecatedBuiltinCode) == 3:  # CONV_2D
            code.version = 6
    newer = tmp_path / "lenet_int8.tflite"
    flatbuffer_utils.write_model(model, str(newer))
    report = inspect_model(newer)
    assert report["ops_on_edgetpu"] == 0 and report["compiler_rejects"]
    assert any(not op["version_accepted"] for op in report["ops"] if op["op_name"] == "CONV_2D")
    with pytest.raises(CompileError, match="CONV_2D version 6 is newer than edgetpu_compiler 16 accepts \\(max 5\\).*To fix"):
        check_edgetpu_versions([newer])


def test_inspect_cli_json(tiny_bundle):
    result = runner.invoke(app, ["inspect", str(tiny_bundle), "--json"])
    assert result.exit_code == 0, result.output
    models = json.loads(result.output)["models"]
    assert models["autoencoder_int8"]["ops_total"] == models["autoencoder_int8"]["ops_on_edgetpu"]
    assert runner.invoke(app, ["inspect", str(tiny_bundle), "--target", "rpi4"]).exit_code == 1


def test_inspect_corrupt_model(tmp_path):
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not a flatbuffer" * 8)
    result = runner.invoke(app, ["inspect", str(bad)])
    assert result.exit_code == 1 and "Cannot read bad.tflite as a TFLite model" in result.output


STAND_IN = '''#!{python}
"""STAND-IN for edgetpu_compiler (not the real compiler): follows its command line, output and log format."""
import sys, pathlib
args = sys.argv[1:]
out = pathlib.Path(args[args.index("-o") + 1]) if "-o" in args else pathlib.Path(".")
model = pathlib.Path(args[-1])
mode = "{mode}"
if mode == "fail":
    print("Edge TPU Compiler version 16.0.384591198", file=sys.stderr)
    print("Invalid model: " + model.name + "\\nModel not quantized", file=sys.stderr)
    sys.exit(1)
(out / (model.stem + "_edgetpu.tflite")).write_bytes(model.read_bytes())
on_tpu, on_cpu = (7, 0) if mode == "full" else (5, 2)
log = ["Edge TPU Compiler version 16.0.384591198", "Input: " + str(model), "",
       "Operator                       Count      Status", "",
       "CONV_2D                        3          Mapped to Edge TPU",
       "MAX_POOL_2D                    2          Mapped to Edge TPU"]
if on_cpu:
    log.append("FULLY_CONNECTED                2          Operation version not supported")
(out / (model.stem + "_edgetpu.log")).write_text("\\n".join(log) + "\\n")
print("Edge TPU Compiler version 16.0.384591198")
print("Model compiled successfully in 12 ms.")
print("Input model: " + str(model))
print("Number of Edge TPU subgraphs: 1")
print("Total number of operations: " + str(on_tpu + on_cpu))
print("Operation log: " + model.stem + "_edgetpu.log")
if on_cpu:
    print("Model successfully compiled but not all operations are supported by the Edge TPU.")
    print("Number of operations that will run on Edge TPU: " + str(on_tpu))
    print("Number of operations that will run on CPU: " + str(on_cpu))
print("Compilation succeeded!")
'''


def _stand_in(tmp_path: Path, mode: str) -> str:
    path = tmp_path / f"edgetpu_compiler_standin_{mode}"
    path.write_text(STAND_IN.format(python=sys.executable, mode=mode))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_compile_success_parses_summary(tiny_build, tmp_path):
    result = compile_models([tiny_build / "models" / "branch_int8.tflite"], tmp_path / "out", _stand_in(tmp_path, "full"))
    entry = result["models"]["branch_int8"]
    assert result["compiled"] and entry["fully_mapped"] and entry["on_edgetpu"] == 7 and entry["on_cpu"] == 0
    assert (tmp_path / "out" / "branch_int8_edgetpu.tflite").is_file()
    assert {row["op"] for row in entry["operations"]} == {"CONV_2D", "MAX_POOL_2D"}


def test_compile_partial_mapping_is_reported(tiny_build, tmp_path):
    entry = compile_models([tiny_build / "models" / "lenet_int8.tflite"], tmp_path / "out",
                           _stand_in(tmp_path, "partial"))["models"]["lenet_int8"]
    assert not entry["fully_mapped"] and (entry["on_edgetpu"], entry["on_cpu"]) == (5, 2)
    assert {"op": "FULLY_CONNECTED", "count": 2, "status": "Operation version not supported"} in entry["operations"]


def test_compile_failure_raises_with_stderr_tail(tiny_build, tmp_path):
    with pytest.raises(CompileError, match="failed on lenet_int8.tflite \\(exit 1\\): .*Model not quantized"):
        compile_models([tiny_build / "models" / "lenet_int8.tflite"], tmp_path / "out", _stand_in(tmp_path, "fail"))


def test_missing_compiler_is_said_plainly(tiny_build, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    result = compile_models([tiny_build / "models" / "lenet_int8.tflite"], tmp_path / "out")
    assert result["compiled"] is False and "not on PATH" in result["reason"] and result["models"] == {}


def test_parse_fully_mapped_output_without_split_lines():
    parsed = parse_compiler_output("Total number of operations: 9\nNumber of Edge TPU subgraphs: 1\n")
    assert (parsed["on_edgetpu"], parsed["on_cpu"], parsed["subgraphs"]) == (9, 0, 1)


def test_delegate_absent_falls_back_to_cpu_with_cause():
    accelerator = load_edgetpu(library="libedgetpu-definitely-missing.so.1")
    assert accelerator.device == "cpu" and accelerator.delegates == ()
    assert "libedgetpu-definitely-missing.so.1 could not be loaded" in accelerator.warning
    assert edgetpu_library("Linux") == "libedgetpu.so.1" and edgetpu_library("Darwin") == "libedgetpu.1.dylib"


def test_runner_edgetpu_device_falls_back_and_says_so(tiny_bundle, samples_dir):
    result = subprocess.run([sys.executable, str(tiny_bundle / "run.py"), "classify", str(samples_dir / "mnist_00_7.png"),
                             "--device", "edgetpu", "--json"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "warning: Edge TPU delegate" in result.stderr and "running on the CPU" in result.stderr
    assert json.loads(result.stdout)["results"][0]["device"] == "cpu"


@pytest.fixture(scope="module")
def coral_bundle(tiny_build, tmp_path_factory):
    from cbnet_tl.toolchain.delivery.bundle import write_bundle
    from cbnet_tl.toolchain.ingest.datasets import Split, load_dataset
    from cbnet_tl.toolchain.targets import get_target

    build = tmp_path_factory.mktemp("coral") / "build"
    shutil.copytree(tiny_build, build)
    test = load_dataset("mnist", Split.TEST, Path(__file__).parent / "data" / "mnist-8k")
    write_bundle(build, get_target("coral-usb"), test.images)
    return build / "bundle"


def test_coral_bundle_carries_report_script_and_board_steps(coral_bundle):
    from cbnet_tl.runtime.api import selftest

    report = json.loads((coral_bundle / "edgetpu_report.json").read_text())
    assert report["compile"]["compiled"] is False  # no compiler here, and the bundle says so
    assert all(r["fully_mapped"] for r in report["inspect"].values())
    assert {"cbnet_int8", "autoencoder_int8"} <= {Path(r["file"]).stem for r in report["inspect"].values()}
    # the Edge TPU runs int8 only: a Coral bundle carries no float32 model
    assert not list((coral_bundle / "models").glob("*_float32.tflite"))
    readme = (coral_bundle / "README.md").read_text()
    assert "libedgetpu1-std" in readme and "./compile_edgetpu.sh" in readme and "--device edgetpu" in readme
    script = coral_bundle / "compile_edgetpu.sh"
    assert script.stat().st_mode & stat.S_IXUSR and "edgetpu_compiler -s -o models" in script.read_text()
    subprocess.run(["bash", "-n", str(script)], check=True)
    assert json.loads((coral_bundle / "manifest.json").read_text())["target"] == "coral-usb"
    assert selftest(coral_bundle)["passed"]


def test_playbook_passes_ansible_syntax_check(coral_bundle):
    ansible = shutil.which("ansible-playbook")
    if ansible is None:
        pytest.fail("ansible-playbook is missing; scripts/setup.sh installs ansible-core")
    inventory = coral_bundle / "fleet" / "inventory.ini"
    result = subprocess.run([ansible, "--syntax-check", "-i", str(inventory), str(coral_bundle / "fleet" / "playbook.yml")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    checks = (coral_bundle / "fleet" / "checksums.sha256").read_text().splitlines()
    assert any(line.endswith("../models/lenet_int8.tflite") for line in checks)
    subprocess.run(["sha256sum", "--check", "--strict", "--quiet", "checksums.sha256"], cwd=coral_bundle / "fleet", check=True)
