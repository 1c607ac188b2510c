"""One classify (issue 29, item 4): ``cbnet-tl run`` and the bundle's ``run.py classify`` take the same options, with
one meaning and one default each (``runtime/classify.py``), and print the same records, table and summary. Through
the real entry points, as subprocesses: ``.venv/bin/cbnet-tl run BUNDLE …`` and ``python3 BUNDLE/run.py classify …``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
import typer

from cbnet_tl.runtime.classify import OPTION_HELP, ClassifyOptions
from cbnet_tl.runtime.cli import _parser
from cbnet_tl.toolchain.cli import app
from test_cpufreq import make_tree, snapshot

CBNET_TL = Path(sys.executable).parent / "cbnet-tl"
OPTIONS = [field.name for field in fields(ClassifyOptions)]
SAME = ("file", "label", "class_name", "confidence", "path")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def both(bundle: Path, *args) -> dict:
    """{"run": completed ``cbnet-tl run``, "classify": completed ``run.py classify``} on the same arguments."""
    args = [str(a) for a in args]
    return {"run": subprocess.run([str(CBNET_TL), "run", str(bundle), *args], capture_output=True, text=True,
                                  stdin=subprocess.DEVNULL, timeout=300),
            "classify": subprocess.run([sys.executable, str(bundle / "run.py"), "classify", *args], capture_output=True,
                                       text=True, stdin=subprocess.DEVNULL, cwd="/", timeout=300)}


def payloads(runs: dict, code: int = 0) -> dict:
    for name, done in runs.items():
        assert done.returncode == code, f"{name}: {done.stderr}"
    return {name: json.loads(done.stdout) for name, done in runs.items()}


@pytest.fixture(scope="module")
def images(samples_dir) -> list:
    return sorted(samples_dir.glob("mnist_*.png"))[:6]


def test_every_option_has_one_default_and_one_help_in_both_commands():
    """Each ``ClassifyOptions`` field is an option of both, with its default and its help; a default or a help
    changed on one side only (or an option one side lacks) fails here."""
    device = _parser()
    classify = next(action for action in device._actions if action.dest == "command").choices["classify"]
    argparse_options = {action.dest: action for parser in (device, classify) for action in parser._actions}
    host = {param.name: param for param in typer.main.get_command(app).commands["run"].params}
    host["json"] = host.pop("json_output")
    defaults = ClassifyOptions()
    for name in OPTIONS:
        expected = getattr(defaults, name)
        assert argparse_options[name].default == expected, name
        assert argparse_options[name].help.startswith(OPTION_HELP[name]), name
        default = host[name].default
        assert getattr(default, "value", default) == expected, name
        assert host[name].help.lower().startswith(OPTION_HELP[name].lower()), name
        assert _flag(name) in host[name].opts and _flag(name) in argparse_options[name].option_strings, name


def test_every_option_is_in_each_help(tiny_bundle):
    """Each option shows in ``run.py classify --help`` (``--threads`` in ``run.py --help``: it is run.py's global
    option) and in ``cbnet-tl run --help``."""
    run_py = [sys.executable, str(tiny_bundle / "run.py")]
    device = "".join(subprocess.run(command, capture_output=True, text=True, check=True).stdout
                     for command in (run_py + ["--help"], run_py + ["classify", "--help"]))
    host = subprocess.run([str(CBNET_TL), "run", "--help"], capture_output=True, text=True, check=True,
                          env={**os.environ, "COLUMNS": "200"}).stdout
    for name in OPTIONS:
        assert _flag(name) in device and _flag(name) in host, name


def test_the_same_images_give_the_same_records_and_table(tiny_bundle, images):
    runs = payloads(both(tiny_bundle, *images, "--pipeline", "cbnet", "--json"))
    assert set(runs["run"]) == set(runs["classify"]) == {"pipeline", "configuration", "input", "results"}
    records = {name: [{key: r[key] for key in SAME} for r in payload["results"]] for name, payload in runs.items()}
    assert records["run"] == records["classify"] and len(records["run"]) == len(images)
    assert [r["file"] for r in records["run"]] == [str(p) for p in images]
    assert [set(r) for r in runs["run"]["results"]] == [set(r) for r in runs["classify"]["results"]]
    tables = both(tiny_bundle, *images, "--pipeline", "cbnet")
    rows = {name: [line.rsplit("\t", 1)[0] for line in done.stdout.splitlines()] for name, done in tables.items()}
    assert rows["run"] == rows["classify"] and len(rows["run"]) == len(images)  # all but the time column


def test_input_sha256(tiny_bundle, images):
    runs = payloads(both(tiny_bundle, *images[:3], "--input-sha256", "--json"))
    digests = {name: [r["input_sha256"] for r in p["results"]] for name, p in runs.items()}
    assert digests["run"] == digests["classify"] and all(re.fullmatch(r"[0-9a-f]{64}", d) for d in digests["run"])
    assert len(set(digests["run"])) == 3


def test_batch_size_and_workload(tiny_bundle, images, tmp_path):
    """Six images in batches of 4 under a policy are two DVFS batches of six inferences; the burst workload's
    deadline is the summary's; the fake tree is given back."""
    make_tree(tmp_path / "sys")
    before = snapshot(tmp_path / "sys")
    runs = payloads(both(tiny_bundle, *images, "--batch-size", "4", "--dvfs", "performance", "--workload",
                         "burst:6:5000", "--sysfs-root", tmp_path / "sys", "--json"))
    for payload in runs.values():
        summary = payload["dvfs"]
        assert (summary["num_batches"], summary["num_inferences"], summary["deadline_ms"]) == (2, 6, 5000)
        assert summary["dvfs"] == "performance" and summary["time_at_frequency"].keys() == {"1500"}
    assert snapshot(tmp_path / "sys") == before
    tables = both(tiny_bundle, *images, "--batch-size", "4", "--workload", "burst:6:5000")
    lines = {name: done.stderr.strip().splitlines()[-1] for name, done in tables.items()}
    pattern = re.compile(r"^classify summary: 6 classified; dvfs off; deadline 5000 ms missed by 0/6 \(0\.0%\); "
                         r"latency median [\d.]+ ms, p95 [\d.]+ ms; energy .+ J \(modelled, rpi4, at the top frequency: "
                         r"DVFS off\), .+ mJ/image; time at uncontrolled [\d.]+ s \(100%\); idle [\d.]+ s; "
                         r"frequency switches: 0$")
    assert all(pattern.match(line) for line in lines.values()), lines


def test_max_pixels(tiny_bundle, images):
    runs = both(tiny_bundle, images[0], "--max-pixels", "100", "--json")
    for payload in payloads(runs, code=1).values():
        assert payload["results"] == [{"file": str(images[0]), "error": "over the pixel limit of 100 (--max-pixels): "
                                                                          "28x28 is 784 pixels; refused before decoding"}]
    assert runs["run"].stderr.splitlines()[-1] == runs["classify"].stderr.splitlines()[-1]


def test_fallback_threshold(tiny_bundle, images):
    """1.0 sends every image on to LeNet, 0.0 none."""
    for threshold, path in (("1.0", "cbnet+lenet"), ("0.0", "cbnet")):
        runs = payloads(both(tiny_bundle, *images, "--pipeline", "cbnet-fallback", "--fallback-threshold", threshold,
                             "--json"))
        assert {r["path"] for p in runs.values() for r in p["results"]} == {path}, threshold
    for value, message in (("--fallback-threshold", "1.5"), "Expected --fallback-threshold between 0 and 1. "
                                                          "Received: 1.5"), (("--batch-size", "0"),
                                                                             "Expected --batch-size >= 1. Received: 0"):
        for name, done in both(tiny_bundle, images[0], *value).items():  # one check, one line, in both
            assert (done.returncode, done.stderr) == (1, f"error: {message}\n"), name


def test_convert_image(tiny_bundle, images, tmp_path):
    for name in ("run", "classify"):
        out = tmp_path / name
        done = both(tiny_bundle, *images[:3], "--convert-image", out)[name]
        assert done.returncode == 0, done.stderr
    written = {name: {p.name: p.read_bytes() for p in (tmp_path / name).iterdir()} for name in ("run", "classify")}
    assert written["run"] == written["classify"] and sorted(written["run"]) == [f"{p.name}.png" for p in images[:3]]


def test_period_ms(tiny_bundle, images):
    """Four images one every 40 ms: the command waits for each arrival (idle time, at least three periods), the
    latency counts from each arrival; a batch of more than one is refused in one line."""
    runs = payloads(both(tiny_bundle, *images[:4], "--period-ms", "40", "--json"))
    for summary in (p["dvfs"] for p in runs.values()):
        assert summary["period_ms"] == 40 and summary["num_inferences"] == 4 and summary["deadline_ms"] is None
        assert summary["idle_s"] >= 0.1 and summary["latency_ms_median"] < 40
    refused = both(tiny_bundle, *images[:4], "--period-ms", "40", "--batch-size", "2")
    for done in refused.values():
        assert done.returncode == 1 and done.stderr.startswith(
            "error: Expected --batch-size 1 with periodic arrivals (--period-ms or --workload camera:FPS)"), done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
