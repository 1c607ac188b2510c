"""bench and report on the tiny real build."""

from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser

from PIL import Image
from typer.testing import CliRunner

from cbnet_tl.toolchain.cli import app

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
        assert run["pipelines"]["lenet"]["speedup_vs_lenet"] == 1.0
        assert run["invoke_overhead_us"] > 0
        # the floor is measured (an empty model through the same pipeline code), never assumed
        assert 0 < run["floor_ms_median"] <= run["pipelines"]["lenet"]["latency_ms_median"]
        assert all(row["multiple_of_floor"] == row["latency_ms_median"] / run["floor_ms_median"]
                   for row in run["pipelines"].values())
    footprint = report["footprint"]
    assert 10 < footprint["peak_rss_mb"] < 400 and footprint["import_s"] > 0 and footprint["bundle_bytes"] > footprint["model_bytes"] > 0
    assert (build / "bench.json").is_file()


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
