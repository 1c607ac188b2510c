"""`cbnet-tl build` end to end, with TensorFlow, on a small slice of real MNIST (the committed
tests/data/tiny-build is made the same way by scripts/make_test_build.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_fresh_build_has_every_stage(fresh_build):
    from cbnet_tl.runtime.manifest import read_manifest
    from cbnet_tl.runtime.specs import DEPLOYED_PIPELINES, PIPELINE_SPECS

    manifest = read_manifest(fresh_build)
    bundle = read_manifest(fresh_build / "bundle")
    assert manifest.kind == "build" and bundle.kind == "bundle"
    assert all("float32" in e.files and "int8" in e.files for e in manifest.models.values())
    assert all(set(e.files) == {"int8", "float32"} for e in bundle.models.values())  # rpi4 can use float32
    checks = json.loads((fresh_build / "checks.json").read_text())
    assert set(checks["pipelines"]) == {p for p in DEPLOYED_PIPELINES if not PIPELINE_SPECS[p].optional}
    assert (fresh_build / "report" / "index.html").is_file()
    assert list(fresh_build.glob("cbnet-tl-mnist-rpi4.tar.gz"))
    selftest = subprocess.run([sys.executable, str(fresh_build / "bundle" / "run.py"), "selftest"],
                              capture_output=True, text=True)
    assert selftest.returncode == 0, selftest.stderr
    assert json.loads(selftest.stdout)["passed"] is True


def test_check_explain_names_layers_of_every_model(fresh_build, mnist_dir, tmp_path):
    import shutil

    from typer.testing import CliRunner

    from cbnet_tl.toolchain.cli import app

    build = tmp_path / "build"
    shutil.copytree(fresh_build, build)
    result = CliRunner().invoke(app, ["check", str(build), "--data-dir", str(mnist_dir), "--explain", "--json"])
    assert result.exit_code == 0, result.output
    explained = json.loads(result.output)["explain"]
    assert {"cbnet", "lenet", "trunk_branch", "main_tail"} <= set(explained)
    for layers in explained.values():
        assert layers and all((row["rmse_over_scale"] is None or row["rmse_over_scale"] >= 0) and row["suggestion"]
                              for row in layers)  # None: no quantization scale (unbounded ratio)


def test_build_records_the_calibration_table(fresh_build):
    table = json.loads((fresh_build / "calibration.json").read_text())
    # every shipped model that reads images: cbnet (and cbnet-fallback), branchynet's trunk_branch, lenet
    assert list(table["models"]) == ["cbnet", "lenet", "trunk_branch"]
    for rows in table["models"].values():
        assert [r["samples"] for r in rows] == [r["samples"] for r in table["models"]["lenet"]]
        assert rows[0]["samples"] == 10 and rows[-1]["samples"] <= table["chosen"]
        assert all(0 < r["int8_accuracy"] <= 1 for r in rows)
    html = (fresh_build / "report" / "index.html").read_text()
    assert "How many calibration images" in html and "<th>trunk_branch</th>" in html


def test_sizes_trains_and_times_each_size_and_the_report_plots_them(fresh_build, mnist_dir, tmp_path):
    import shutil

    from typer.testing import CliRunner

    from cbnet_tl.toolchain.cli import app

    build = tmp_path / "build"
    shutil.copytree(fresh_build, build)
    result = CliRunner().invoke(app, ["sizes", str(build), "--data-dir", str(mnist_dir), "--size", "small",
                                      "--size", "default", "--no-progress", "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.output[result.output.index("{"):])
    assert set(record["sizes"]) == {"small", "default"} and record["machine"]
    small, default = record["sizes"]["small"], record["sizes"]["default"]
    assert small["macs"] < default["macs"] and small["us_per_image"] > 0 and 0 < small["int8_accuracy"] <= 1
    report = CliRunner().invoke(app, ["report", str(build), "--data-dir", str(mnist_dir)])
    assert report.exit_code == 0, report.output
    assert (build / "report" / "pareto.png").is_file()
