"""Per-device tuning: measured, checked against the reference classes, read back with clear fallbacks."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from cbnet_tl.runtime.api import open_pipeline, tune_bundle
from cbnet_tl.runtime.images import load_images
from cbnet_tl.runtime.manifest import read_manifest
from cbnet_tl.runtime.tuning import ModelConfig, default_tuning_path, read_tuning


def _tuned(tiny_build, tmp_path_factory=None):
    return tune_bundle(tiny_build, tiny_build.parent / "tuning.json")


def test_tuning_times_every_configuration_and_keeps_a_checked_fastest(tiny_build):
    record = _tuned(tiny_build)
    manifest = read_manifest(tiny_build)
    assert record["bundle_version"] == manifest.version and record["machine"]["cores"] >= 1
    assert record["machine"]["interpreter"] in ("ai-edge-litert", "tflite-runtime", "tensorflow")
    for name, rows in record["table"].items():
        assert set(rows) == {"int8/default", "int8/builtin", "float32/default", "float32/builtin"}  # a build dir
        winner = record["models"][name]
        assert rows[winner["config"]]["agrees"] is True
        fastest = min(row["us"] for row in rows.values() if row["agrees"])
        assert winner["us"] == fastest


def test_pipelines_read_the_tuning_file_and_say_what_they_run(tiny_build, samples_dir):
    path = tiny_build.parent / "tuning.json"
    record = json.loads(path.read_text()) if path.is_file() else _tuned(tiny_build)
    record["models"]["lenet"] = {"config": "float32/builtin", "us": 1.0, "agrees": True}
    path.write_text(json.dumps(record))
    images = load_images(sorted(samples_dir.glob("mnist_*.png")), read_manifest(tiny_build).input_spec)
    tuned = open_pipeline(tiny_build, "lenet", tuning=path)
    plain = open_pipeline(tiny_build, "lenet", tuning=None)
    assert tuned.configuration == {"lenet": "float32/builtin"} and plain.configuration == {"lenet": "int8/default"}
    assert tuned.models["lenet"].resolver == "builtin" and tuned.models["lenet"].input.dtype == np.float32
    assert np.mean(tuned.classify(images).labels == plain.classify(images).labels) >= 0.9


def test_bad_tuning_files_fall_back_to_the_default_with_a_message(tiny_build, tmp_path):
    manifest = read_manifest(tiny_build)
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text('{"format": 1, "models": ')
    configs, messages = read_tuning(corrupt, manifest, ["lenet"])
    assert configs == {} and "unreadable or corrupt" in messages[0]

    other = tmp_path / "other.json"
    other.write_text(json.dumps({"format": 1, "bundle_version": "not-this-one", "models": {
        "lenet": {"config": "float32/builtin", "agrees": True}}}))
    configs, messages = read_tuning(other, manifest, ["lenet"])
    assert configs == {} and "measured for bundle version 'not-this-one'" in messages[0]

    lacking = tmp_path / "lacking.json"
    lacking.write_text(json.dumps({"format": 1, "bundle_version": manifest.version, "models": {
        "lenet": {"config": "int8/gpu", "agrees": True},
        "cbnet": {"config": "float64/default", "agrees": True},
        "main_tail": {"config": "float32/builtin", "agrees": False}}}))
    configs, messages = read_tuning(lacking, manifest, ["lenet", "cbnet", "main_tail"])
    assert configs == {}  # nothing unchecked or unavailable is ever run
    assert any("lenet int8/gpu" in m and "op resolver" in m for m in messages)
    assert any("cbnet has no float64 model" in m for m in messages)
    assert any("main_tail float32/builtin was not checked" in m for m in messages)


def test_device_cli_tunes_and_classify_says_the_configuration(tiny_bundle, tmp_path, samples_dir):
    out = tmp_path / "state" / "tuning.json"
    tune = subprocess.run([sys.executable, str(tiny_bundle / "run.py"), "tune", "--out", str(out), "--json"],
                          capture_output=True, text=True)
    assert tune.returncode == 0, tune.stderr
    assert json.loads(out.read_text())["models"]
    again = subprocess.run([sys.executable, str(tiny_bundle / "run.py"), "tune", "--out", str(out), "--if-missing"],
                           capture_output=True, text=True)
    assert again.returncode == 0 and again.stdout == ""  # once per bundle version
    classify = subprocess.run([sys.executable, str(tiny_bundle / "run.py"), "classify",
                               str(next(samples_dir.glob("mnist_*.png")))], capture_output=True, text=True,
                              env={"CBNET_TL_STATE_DIR": str(out.parent), "PATH": "/usr/bin:/bin"})
    assert classify.returncode == 0, classify.stderr
    assert "configuration: cbnet int8/" in classify.stderr


def test_default_tuning_path_stays_outside_the_release(tmp_path, monkeypatch):
    monkeypatch.delenv("CBNET_TL_STATE_DIR", raising=False)
    release = tmp_path / "opt" / "releases" / "v1"
    release.mkdir(parents=True)
    assert default_tuning_path(release) == tmp_path / "opt" / "state" / "tuning.json"
    assert default_tuning_path(tmp_path / "build") == tmp_path / "build.tuning.json"
    assert ModelConfig.parse("float32/builtin") == ModelConfig("float32", "builtin")
