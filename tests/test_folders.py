"""Users' image folders: layouts, defaults chosen from the data, skipped files, and an RGB build end to end
through the CLI (real tuxpaint drawings with transparency)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

import edge_images
from conftest import stamps_folder
from cbnet_tl.runtime.errors import DataError
from cbnet_tl.runtime.manifest import read_manifest
from cbnet_tl.toolchain.cli import app
from cbnet_tl.toolchain.ingest.datasets import load_build_data
from cbnet_tl.toolchain.ingest.folders import scan
from cbnet_tl.toolchain.ingest.inputs import InputChoice, parse_image_size


def test_defaults_are_chosen_from_the_data_and_said_in_one_line(tmp_path):
    data = stamps_folder(tmp_path / "data", per_class=5, classes=("animals/birds", "food/fruit", "town/houses"))
    lines = []
    train, test, spec, record = load_build_data("ignored", data, InputChoice(), log=lines.append)
    assert spec.channels == 3 and spec.height == spec.width == 32 and spec.resize == "pad"
    said = [line for line in lines if line.startswith("input:")]
    assert len(said) == 1 and "median shorter side" in said[0] and "in colour" in said[0]
    assert train.images.shape[1:] == (32, 32, 3) and test.images.dtype == np.uint8
    assert len(train) + len(test) == 15 and set(test.labels.tolist()) == {0, 1, 2}
    assert record["class_counts"]["birds"] == {"train": 4, "test": 1} and record["num_skipped"] == 0


def test_grayscale_folder_stays_one_channel_and_options_win(tmp_path):
    for label in ("a", "b"):
        (tmp_path / "data" / label).mkdir(parents=True)
        for i in range(3):
            edge_images.la_png(tmp_path / "data" / label / f"{i}.png")
    _, _, spec, _ = load_build_data("ignored", tmp_path / "data", InputChoice(), log=lambda line: None)
    assert spec.channels == 1 and spec.height == 20  # LA images, shorter side 20
    _, _, spec, _ = load_build_data("ignored", tmp_path / "data", InputChoice(image_size=(12, 18), colour="rgb",
                                                                               resize="crop", background="black"),
                                    log=lambda line: None)
    assert spec.shape == (12, 18, 3) and spec.resize == "crop" and spec.background == "#000000"


def test_train_val_test_layout(tmp_path):
    for split, count in (("train", 4), ("val", 2), ("test", 2)):
        for label in ("cat", "dog"):
            folder = tmp_path / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                edge_images.rgba_png(folder / f"{i}.png")
    layout = scan(tmp_path)
    assert layout.layout == "splits" and layout.class_names == ("cat", "dog")
    train, test, _, _ = load_build_data("x", tmp_path, InputChoice(), log=lambda line: None)
    assert len(train) == 12 and len(test) == 4 and train.validation_indices.tolist() == list(range(8, 12))


def test_too_few_images_and_unreadable_files(tmp_path):
    data = stamps_folder(tmp_path / "data", per_class=4, classes=("animals/birds", "food/fruit"))
    for extra in list((data / "fruit").iterdir())[2:]:
        extra.unlink()
    with pytest.raises(DataError, match="fruit has 2. Each class needs at least 3"):
        scan(data)
    data = stamps_folder(tmp_path / "data2", per_class=4, classes=("animals/birds", "food/fruit"))
    (data / "birds" / "zz-broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (data / "birds" / "notes.txt").write_text("not an image, ignored")
    lines = []
    _, _, _, record = load_build_data("x", data, InputChoice(), log=lines.append)
    assert record["num_skipped"] == 1 and record["skipped"][0]["file"].endswith("zz-broken.jpg")
    assert any(line.startswith("skipped ") and "zz-broken.jpg" in line for line in lines)
    assert record["num_ignored"] == 1
    assert sum(sum(row.values()) for row in record["class_counts"].values()) == 8  # images loaded, not files found
    with pytest.raises(DataError, match="zz-broken.jpg.*--strict"):
        load_build_data("x", data, InputChoice(strict=True), log=lambda line: None)


def test_image_size_parsing():
    assert parse_image_size("32") == (32, 32) and parse_image_size("48x64") == (48, 64)
    with pytest.raises(Exception, match="Expected --image-size N or HxW"):
        parse_image_size("big")


def test_build_options_in_help_and_bad_values_refused(tmp_path):
    runner = CliRunner()
    text = runner.invoke(app, ["build", "--help"], terminal_width=200).output
    for option in ("--image-size", "--color", "--resize", "--background", "--strict", "--max-pixels", "--resample"):
        assert option in text
    data = stamps_folder(tmp_path / "data", per_class=3, classes=("animals/birds", "food/fruit"))
    result = runner.invoke(app, ["build", "--data-dir", str(data), "--image-size", "huge", "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "Expected --image-size N or HxW" in result.output
    result = runner.invoke(app, ["build", "--data-dir", str(data), "--background", "blurple", "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "Expected a colour" in result.output
    (data / "birds" / "broken.png").write_bytes(b"nope")
    result = runner.invoke(app, ["build", "--data-dir", str(data), "--strict", "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "broken.png" in result.output and not (tmp_path / "o").exists()


@pytest.mark.slow
def test_rgb_build_end_to_end(rgb_build, tmp_path):
    manifest = read_manifest(rgb_build)
    assert manifest.input["channels"] == 3 and manifest.input["height"] == 16
    assert read_manifest(rgb_build / "bundle").input == manifest.input
    output = (rgb_build / "build-output.txt").read_text()
    assert "skipped " in output and "broken.png" in output and "classes (5)" in output
    assert "MACs per image at 16x16x3" in output
    assert manifest.data["num_skipped"] == 1
    fallback = manifest.pipelines["cbnet-fallback"].options  # --max-fallback-share reached the threshold choice
    assert fallback["max_fallback_share"] == 0.5 and fallback["validation_fallback_share"] <= 0.5
    assert "at most 50.0%" in output
    runner = CliRunner()
    # later commands read the folder the build recorded: no --data-dir
    evaluation = runner.invoke(app, ["eval", str(rgb_build), "--json"])
    assert evaluation.exit_code == 0, evaluation.output
    assert json.loads(evaluation.output)["num_images"] == 10
    on_bundle = runner.invoke(app, ["eval", str(rgb_build / "bundle"), "--json", "--pipeline", "cbnet"])
    assert on_bundle.exit_code == 0, on_bundle.output
    check = runner.invoke(app, ["check", str(rgb_build), "--max-accuracy-drop", "100"])
    learned = [r["learned"] for r in json.loads((rgb_build / "checks.json").read_text())["pipelines"].values()]
    assert check.exit_code == (0 if all(learned) else 1), check.output  # 9 drawings a class: models that learn little
    assert "Quantization check failed" not in check.output
    report = runner.invoke(app, ["report", str(rgb_build)])
    assert report.exit_code == 0, report.output
    inspect = runner.invoke(app, ["inspect", str(rgb_build / "bundle"), "--json"])
    assert inspect.exit_code == 0, inspect.output
    mapped = {name: report["fully_mapped"] for name, report in json.loads(inspect.output)["models"].items()}
    assert all(mapped.values()) and "lenet_int8" in mapped, mapped  # every RGB model maps whole
    bench = runner.invoke(app, ["bench", str(rgb_build), "--batch", "1", "--num-images", "32", "--untuned",
                                "--no-save", "--json"])
    assert bench.exit_code == 0, bench.output
    assert json.loads(bench.output)["num_timed_images"] == 10  # the folder's test split, read without --data-dir
    tune = runner.invoke(app, ["tune", str(rgb_build / "bundle"), "--out", str(tmp_path / "tuning.json"), "--json"])
    assert tune.exit_code == 0, tune.output
    simulate = runner.invoke(app, ["simulate", str(rgb_build), "--pipeline", "branchynet", "--no-save", "--json"])
    assert simulate.exit_code == 0, simulate.output
    run = runner.invoke(app, ["run", str(rgb_build / "bundle"), str(edge_images.cmyk_jpeg(tmp_path / "c.jpg")),
                              "--json", "--pipeline", "cbnet"])  # named: the build recommends none that failed
    assert run.exit_code == 0, run.output
    assert json.loads(run.output)["results"][0]["class_name"] in manifest.class_names
