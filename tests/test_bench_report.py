"""bench and report on the tiny real build."""

from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cbnet_tl.toolchain.analysis import bench
from cbnet_tl.toolchain.cli import app
from cbnet_tl.toolchain.ingest.datasets import Split, load_dataset

runner = CliRunner()


def test_bench_json_covers_every_pipeline_and_the_floor(tiny_build, mnist_dir, tmp_path):
    build = tmp_path / "build"
    shutil.copytree(tiny_build, build)
    result = runner.invoke(app, ["bench", str(build), "--data-dir", str(mnist_dir), "--batch", "1,8",
                                 "--num-images", "64", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert set(report["pipelines"]) == {"lenet", "branchynet", "branch", "cbnet", "cbnet-fallback"}
    for row in report["pipelines"].values():
        assert row["latency_ms_median"] > 0 and row["images_per_s"] > 0 and 0 < row["accuracy"] <= 1
        assert row["energy_j_per_image"]["source"] == "modelled" and row["energy_j_per_image"]["energy_j"] > 0
    macs = {name: row["macs"] for name, row in report["pipelines"].items()}
    assert macs["cbnet"] < macs["lenet"] and macs["cbnet"] <= macs["cbnet-fallback"] <= macs["cbnet"] + macs["lenet"]
    assert macs["lenet"] == 1_140_070
    assert {(r["precision"], r["batch_size"]) for r in report["runs"]} == {
        (p, b) for p in ("tuned", "int8", "float32") for b in (1, 8)}
    assert report["primary"] == {"precision": "tuned", "batch_size": 1}  # every pipeline at its best first
    tuned = report["runs"][0]["configuration"]
    assert all(tuned[m] == w["config"] for m, w in report["tuning"]["models"].items())
    assert report["runs"][2]["configuration"]["lenet"] == "int8/default"
    for run in report["runs"]:
        rows = run["pipelines"]
        for base in ("lenet", "branchynet"):  # faster than the base exactly when the speed-up over it exceeds 1
            base_ms = rows[base]["latency_ms_median"]
            assert all((row[f"speedup_vs_{base}"] > 1) == (row["latency_ms_median"] < base_ms) for row in rows.values())
        assert run["invoke_overhead_us"] > 0
        # the floor is measured (an empty model through the same pipeline code), never assumed
        assert 0 < run["floor_ms_median"] <= rows["lenet"]["latency_ms_median"]
        assert rows["lenet"]["multiple_of_floor"] >= 1
        by_latency = sorted(rows, key=lambda name: rows[name]["latency_ms_median"])
        assert sorted(rows, key=lambda name: rows[name]["multiple_of_floor"]) == by_latency
    footprint = report["footprint"]
    assert 10 < footprint["peak_rss_mb"] < 400 and footprint["import_s"] > 0 and footprint["bundle_bytes"] > footprint["model_bytes"] > 0
    assert (build / "bench.json").is_file()


# Milliseconds per image of each timed call (three calls); medians 4, 2, 0.5, 1 and 1.6, means not (lenet's is 5).
PER_IMAGE_MS = {"lenet": (4.0, 2.0, 9.0), "branchynet": (2.0, 2.0, 8.0), "branch": (0.5, 0.5, 0.5),
                "cbnet": (1.0, 1.0, 4.0), "cbnet-fallback": (1.6, 1.6, 1.6)}
FLOOR_MS = 0.5  # per image, the empty model through the pipeline code


def test_bench_ratios_from_known_timings(tiny_build, mnist_dir, monkeypatch):
    """With the timers replaced by known times, every row's figures are the hand-computed ones, at each batch size:
    per-image medians over the calls, speed-ups over LeNet and over BranchyNet, multiples of the floor."""
    def known_times(pipelines, images, batch_size, warmup_batches, bare, progress=None):
        return {name: bench.Timing(np.array(PER_IMAGE_MS[name]) * batch_size / 1e3, ({}, {}, {})) for name in pipelines}

    def known_floor(pipeline, bare, images, batch_size, warmup_batches):
        return {"empty": 0.2e-3 * batch_size, "through": FLOOR_MS * 1e-3 * batch_size, "read": 0.6e-3 * batch_size}

    monkeypatch.setattr(bench, "time_pipelines", known_times)
    monkeypatch.setattr(bench, "time_floor", known_floor)
    monkeypatch.setattr(bench, "footprint", lambda bundle_dir: {})
    test = load_dataset("mnist", Split.TEST, mnist_dir)
    config = bench.BenchConfig(batch_sizes=(1, 4), precisions=("int8",), tuned=False, num_images=12)
    report = bench.run_bench(tiny_build, test.images[:64], test.labels[:64], config)
    assert [run["batch_size"] for run in report["runs"]] == [1, 4]
    for run in report["runs"]:
        rows = run["pipelines"]
        assert set(rows) == set(PER_IMAGE_MS) and run["floor_ms_median"] == pytest.approx(FLOOR_MS)
        assert {n: r["latency_ms_median"] for n, r in rows.items()} == pytest.approx(
            {"lenet": 4.0, "branchynet": 2.0, "branch": 0.5, "cbnet": 1.0, "cbnet-fallback": 1.6})
        assert rows["lenet"]["latency_ms_p95"] == pytest.approx(8.5)  # 4 + 0.9 * (9 - 4)
        assert rows["lenet"]["images_per_s"] == pytest.approx(200.0)  # 3 images in 15 ms
        assert {n: r["speedup_vs_lenet"] for n, r in rows.items()} == pytest.approx(
            {"lenet": 1.0, "branchynet": 2.0, "branch": 8.0, "cbnet": 4.0, "cbnet-fallback": 2.5})
        assert {n: r["speedup_vs_branchynet"] for n, r in rows.items()} == pytest.approx(
            {"lenet": 0.5, "branchynet": 1.0, "branch": 4.0, "cbnet": 2.0, "cbnet-fallback": 1.25})
        assert {n: r["multiple_of_floor"] for n, r in rows.items()} == pytest.approx(
            {"lenet": 8.0, "branchynet": 4.0, "branch": 1.0, "cbnet": 2.0, "cbnet-fallback": 3.2})
        energy = {n: r["energy_j_per_image"]["energy_j"] for n, r in rows.items()}
        assert energy["lenet"] / energy["cbnet"] == pytest.approx(4.0)


def test_bench_untuned_times_only_the_fixed_configurations(tiny_build, mnist_dir, tmp_path):
    build = tmp_path / "build"
    shutil.copytree(tiny_build, build)
    result = runner.invoke(app, ["bench", str(build), "--data-dir", str(mnist_dir), "--batch", "1", "--num-images", "32",
                                 "--untuned", "--json", "--no-save"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert [r["precision"] for r in report["runs"]] == ["int8", "float32"] and "tuning" not in report


def test_bench_rejects_bad_batch_list(tiny_bundle, mnist_dir):
    result = runner.invoke(app, ["bench", str(tiny_bundle), "--data-dir", str(mnist_dir), "--batch", "1,x"])
    assert result.exit_code != 0 and "Expected comma-separated integers" in result.output


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.tables, self.scripts, self.links = [], 0, 0, []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        elif tag == "table":
            self.tables += 1
        elif tag == "script":
            self.scripts += 1
        elif tag == "link" and "href" in attrs:
            self.links.append(attrs["href"])


def test_report_written_by_build_is_self_contained(tiny_build):
    index = tiny_build / "report" / "index.html"
    html = index.read_text()
    parser = _Collector()
    parser.feed(html)
    assert parser.scripts == 0 and parser.links == []
    assert "hard_vs_converted.png" in parser.images and "accuracy.png" in parser.images
    for src in parser.images:
        assert not src.startswith(("http:", "https:", "//"))
        with Image.open(index.parent / src) as image:
            assert image.size[0] > 50 and image.size[1] > 50
    assert parser.tables >= 5  # check table, per class, one confusion matrix per pipeline
    assert "paper" in html and "Quantization check" in html
