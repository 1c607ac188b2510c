"""The CLI through typer's CliRunner, in-process, on the tiny real build."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cbnet_tl.toolchain.cli import app

runner = CliRunner()


def test_help_lists_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("build", "check", "run", "eval"):
        assert command in result.output


def test_build_refuses_existing_output(tmp_path, mnist_dir):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    result = runner.invoke(app, ["build", "--dataset", "mnist", "--data-dir", str(mnist_dir), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "exists and is not empty; pass --force" in result.output
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_build_with_missing_data_leaves_nothing_behind(tmp_path):
    result = runner.invoke(app, ["build", "--dataset", "kmnist", "--data-dir", str(tmp_path),
                                 "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert "error: kmnist train files not found; put train-images-idx3-ubyte.gz" in result.output
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial-*"))


def test_build_rejects_unknown_target(tmp_path, mnist_dir):
    result = runner.invoke(app, ["build", "--target", "pi-zero", "--out", str(tmp_path / "o")])
    # choices come from the target table; typer refuses an unknown one as a usage error (exit 2)
    assert result.exit_code == 2 and "'pi-zero' is not one of" in result.output and "coral-usb" in result.output


def test_eval_json(tiny_build, mnist_dir):
    result = runner.invoke(app, ["eval", str(tiny_build / "bundle"), "--dataset", "mnist", "--data-dir", str(mnist_dir),
                                 "--limit", "200", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert set(payload["pipelines"]) == {"cbnet", "cbnet-fallback", "branchynet", "lenet"}
    # A floor every pipeline of the tiny build clears with margin, and a broken input path (the images shifted by a
    # few pixels, or their values scaled down) or shifted labels does not (RESULTS.md: the accuracies, the mutations
    # tried); a pipeline that answers one class scores the largest class's share, far below it.
    for scored in payload["pipelines"].values():
        assert 0.85 <= scored["accuracy"] <= 1.0 and scored["ms_per_image_median"] > 0
    assert abs(sum(payload["pipelines"]["branchynet"]["path_shares"].values()) - 1.0) < 1e-9


def test_eval_float32_from_build_dir(tiny_build, mnist_dir):
    result = runner.invoke(app, ["eval", str(tiny_build), "--data-dir", str(mnist_dir), "--limit", "100",
                                 "--precision", "float32", "--pipeline", "lenet", "--json"])
    assert result.exit_code == 0, result.output
    assert set(json.loads(result.output)["pipelines"]) == {"lenet"}


def test_run_on_sample_pngs(tiny_bundle, samples_dir):
    result = runner.invoke(app, ["run", str(tiny_bundle), str(samples_dir / "mnist_00_7.png"), "--pipeline", "branchynet", "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)["results"][0]
    assert record["path"] in ("branch", "branch+main") and record["class_name"] in [str(i) for i in range(10)]


def test_run_takes_any_image_and_convert_is_a_no_op(tiny_bundle, tmp_path, samples_dir):
    from PIL import Image

    path = tmp_path / "color.png"
    Image.open(samples_dir / "mnist_00_7.png").convert("RGBA").resize((90, 60)).save(path)
    result = runner.invoke(app, ["run", str(tiny_bundle), str(path), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["results"][0]["label"] == 7
    noted = runner.invoke(app, ["run", str(tiny_bundle), str(path), "--convert"])
    assert noted.exit_code == 0 and "--convert is no longer needed" in noted.output


def test_run_on_missing_bundle(tmp_path, samples_dir):
    result = runner.invoke(app, ["run", str(tmp_path / "nope"), str(samples_dir)])
    assert result.exit_code == 1 and "no such bundle or build directory" in result.output


def test_check_rewrites_checks_and_passes(tiny_build, mnist_dir, tmp_path):
    copy = tmp_path / "build"
    shutil.copytree(tiny_build, copy)
    result = runner.invoke(app, ["check", str(copy), "--data-dir", str(mnist_dir)])
    assert result.exit_code == 0, result.output
    assert "cbnet" in result.output and "agree" in result.output


@pytest.mark.parametrize("text, expected", [
    ('{"max_accuracy_drop": 1.0, "pipel', "checks.json is not valid JSON"),
    ("[1, 2]", "checks.json is not a checks record"),
    ('{"max_accuracy_drop": "big", "pipelines": {}}', "checks.json is not a checks record"),
])
def test_check_on_a_corrupt_checks_json_is_one_line(tiny_build, mnist_dir, tmp_path, text, expected):
    copy = tmp_path / "build"
    shutil.copytree(tiny_build, copy)
    (copy / "checks.json").write_text(text)
    result = runner.invoke(app, ["check", str(copy), "--data-dir", str(mnist_dir)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0]
    assert "--max-accuracy-drop" in lines[0]  # says how to fix it
    assert (copy / "checks.json").read_text() == text  # nothing was overwritten


def _constant_int8_model(path):
    """A real int8 model that always answers class 0: a guaranteed accuracy drop."""
    import keras
    import numpy as np

    from cbnet_tl.recipes.layers import batch_flatten
    from cbnet_tl.runtime.files import write_bytes_atomic
    from cbnet_tl.toolchain.conversion.convert import Precision, map_outputs, to_tflite

    image = keras.Input((28, 28, 1), batch_size=1)
    dense = keras.layers.Dense(10, kernel_initializer="zeros",
                               bias_initializer=keras.initializers.Constant([5.0] + [0.0] * 9))
    model = keras.Model(image, dense(batch_flatten((28, 28, 1), name="flat")(image)))
    representative = np.random.default_rng(0).random((8, 28, 28, 1)).astype(np.float32)
    write_bytes_atomic(path, to_tflite(model, Precision.INT8, representative))
    return map_outputs(path, [(1, 10)], ("logits",))


def test_check_fails_with_figures_when_drop_too_large(tiny_build, mnist_dir, tmp_path):
    from cbnet_tl.runtime.bundle import sha256_of

    copy = tmp_path / "build"
    shutil.copytree(tiny_build, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    entry = manifest["models"]["lenet"]["int8"]
    entry.update(_constant_int8_model(copy / entry["file"]))
    manifest["files"][entry["file"]] = sha256_of(copy / entry["file"])
    (copy / "manifest.json").write_text(json.dumps(manifest))
    result = runner.invoke(app, ["check", str(copy), "--data-dir", str(mnist_dir)])
    assert result.exit_code == 1
    assert "error: Quantization check failed: lenet: int8 " in result.output
    assert "cbnet" not in result.output.split("error:")[1]  # only the failing pipeline is named
    assert json.loads((copy / "checks.json").read_text())["pipelines"]["lenet"]["passed"] is False


def test_run_writes_converted_images_and_takes_a_fallback_threshold(tiny_bundle, samples_dir, tmp_path):
    from PIL import Image

    images = [str(p) for p in sorted(samples_dir.glob("mnist_0*.png"))[:3]]
    result = runner.invoke(app, ["run", str(tiny_bundle), *images, "--pipeline", "cbnet-fallback",
                                 "--fallback-threshold", "1.0", "--convert-image", str(tmp_path / "conv"), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert {r["path"] for r in payload["results"]} == {"cbnet+lenet"}  # every image is below 1.0
    written = sorted((tmp_path / "conv").glob("*.png"))
    assert [p.name for p in written] == sorted(f"{Path(i).name}.png" for i in images)
    assert all(Image.open(p).size == (28, 28) and Image.open(p).mode == "L" for p in written)


def test_bundle_readme_says_where_it_was_checked(tiny_bundle):
    from cbnet_tl.toolchain.delivery.bundle import device_checks

    checks = device_checks()
    readme = (tiny_bundle / "README.md").read_text()
    assert checks["combos"] and f"On {checks['checked_at']}" in readme
    for combo in checks["combos"]:
        assert f"{combo['interpreter']} {combo['interpreter_version']}" in readme and combo["result"] in readme


def test_run_uses_the_tuning_file_and_reports_its_configuration(tiny_bundle, samples_dir, tmp_path, monkeypatch):
    tuned = runner.invoke(app, ["tune", str(tiny_bundle), "--out", str(tmp_path / "tuning.json"), "--json"])
    assert tuned.exit_code == 0, tuned.output
    record = json.loads(tuned.output)
    monkeypatch.setenv("CBNET_TL_STATE_DIR", str(tmp_path))
    result = runner.invoke(app, ["run", str(tiny_bundle), str(samples_dir / "mnist_00_7.png"), "--pipeline", "lenet",
                                 "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["configuration"] == {"lenet": record["models"]["lenet"]["config"]}
