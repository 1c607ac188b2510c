"""cbnet-tl build as stages that read the build directory: the orchestration, on the committed tiny build's
trained and converted models (training and conversion are replaced by copies; every later stage runs)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from cbnet_tl.runtime.manifest import Manifest, read_manifest

TINY = Path(__file__).parent / "data" / "tiny-build"


def test_build_writes_the_manifest_once_with_the_fallback_options(tmp_path, monkeypatch, mnist_dir):
    from cbnet_tl.toolchain import build as building
    from cbnet_tl.toolchain.conversion.checks import CheckConfig
    from cbnet_tl.toolchain.training.train import TrainConfig

    def train_stage(work, train, threshold, config, log=print):
        shutil.copy2(TINY / "train.json", work / "train.json")
        return json.loads((work / "train.json").read_text())

    def convert_stage(work, train_images, config, progress):
        shutil.copytree(TINY / "models", work / "models")
        return read_manifest(TINY).models

    def calibration_stage(work, train_images, test, chosen):  # converts Keras models, which the tiny build lacks
        shutil.copy2(TINY / "calibration.json", work / "calibration.json")

    monkeypatch.setattr(building, "train_stage", train_stage)
    monkeypatch.setattr(building, "convert_stage", convert_stage)
    monkeypatch.setattr(building, "calibration_stage", calibration_stage)
    written, write = [], Manifest.write
    monkeypatch.setattr(Manifest, "write", lambda self, directory: written.append(Path(directory)) or write(self, directory))
    lines = []
    out = tmp_path / "out"
    record = building.build(building.BuildConfig(
        dataset="mnist", out=out, data_dir=mnist_dir, max_train_images=2000, write_report=True,
        train=TrainConfig(progress=False, few_image_steps=150), check=CheckConfig(max_accuracy_drop=100.0)),
        log=lines.append)

    build_writes = [d for d in written if d.name.startswith(".out.partial-")]
    assert len(build_writes) == 1  # once, with cbnet-fallback's options already in it
    assert [d.name for d in written if d not in build_writes] == [d.name for d in written if d.name.startswith(".bundle.")]
    manifest = read_manifest(out)
    assert manifest.pipelines["cbnet-fallback"].options == read_manifest(TINY).pipelines["cbnet-fallback"].options
    assert manifest.pipelines["cbnet-fallback"].models == ("cbnet", "lenet")
    prefixes = [line.split(":")[0] for line in lines]
    first = prefixes.index("data")  # after the data loader's own lines
    assert prefixes[first:first + 3] == ["data", "MACs per image at 28x28x1", "cbnet-fallback"]
    assert lines[first + 3].startswith("pipeline")  # the checks table
    for name in ("checks.json", "build.json", "bench.json", "report/index.html", "bundle/manifest.json",
                 record["tarball"]):
        assert (out / name).is_file(), name
    assert set(record["timings"]) >= {"train_s", "convert_s", "check_s", "calibration_s", "bundle_s", "report_s"}
    assert json.loads((out / "build.json").read_text()) == record
    assert "How many calibration images" in (out / "report" / "index.html").read_text()  # an older calibration.json


def test_fallback_options_from_a_manifest_not_yet_written(tiny_build, mnist_dir, tmp_path):
    """The build chooses cbnet-fallback's options before it writes its manifest: from the model files and the
    manifest in memory, they measure as they say on the held-out images (the runtime's own pipelines, run apart)."""
    import numpy as np

    from cbnet_tl.runtime.bundle import load_bundle
    from cbnet_tl.toolchain.analysis.evaluation import load_train_split
    from cbnet_tl.toolchain.training.fallback import fallback_options
    from test_fallback import measured_on

    build = tmp_path / "build"
    shutil.copytree(tiny_build / "models", build / "models")  # the model files, and no manifest.json
    manifest = read_manifest(tiny_build)
    validation = np.asarray(json.loads((tiny_build / "train.json").read_text())["validation_indices"])
    train, _ = load_train_split(tiny_build, mnist_dir)
    images, truth = train.images[validation], train.labels[validation]
    options = fallback_options(build, images, truth, manifest=manifest)
    assert not (build / "manifest.json").exists()
    measured_on(load_bundle(build, models=["cbnet", "lenet"], manifest=manifest), images, truth, options)


def test_training_runs_its_fixed_schedule_unless_a_budget_is_asked_and_a_cut_is_said(monkeypatch, tmp_path):
    import cbnet_tl.toolchain.training.train as train_module
    from cbnet_tl.toolchain.build import BuildConfig, train_stage
    from cbnet_tl.toolchain.training.train import TrainConfig

    assert TrainConfig().time_budget_s is None  # the default schedule does not depend on the machine's speed
    records = iter([{"blenet": {"stopped_by": "time budget", "epochs_run": 7}},
                    {"blenet": {"stopped_by": "epochs", "epochs_run": 20}}])
    monkeypatch.setattr(train_module, "train_all", lambda *args: next(records))
    config = BuildConfig(dataset="mnist", out=tmp_path, train=TrainConfig(blenet_epochs=20, time_budget_s=60.0))
    lines = []
    train_stage(tmp_path, None, 0.5, config, lines.append)
    assert lines == ["time budget: B-LeNet stopped after 7 of 20 epochs (--time-budget-minutes); "
                     "the best epoch so far is kept"]
    train_stage(tmp_path, None, 0.5, config, lines.append)
    assert len(lines) == 1
