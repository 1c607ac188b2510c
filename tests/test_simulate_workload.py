"""``cbnet-tl simulate --workload`` through the CLI on the committed tiny build: the JSON it prints, the power
table file, the trace round trip, and the refusals users see."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cbnet_tl.toolchain.simulation.table_file import load_power_table
from cbnet_tl.runtime.dvfs.trace_file import TRACE_FORMAT
from cbnet_tl.toolchain.simulation.trace_read import read_trace
from cbnet_tl.runtime.errors import DvfsError
from cbnet_tl.toolchain.cli import app

runner = CliRunner()
WIDE = Path(__file__).parent / "data" / "wide_range_power_table.json"
POLICIES = ("performance", "powersave", "eenet", "oracle")


def strict(text: str):
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def simulate(bundle, mnist, *extra) -> dict:
    result = runner.invoke(app, ["simulate", str(bundle), "--data-dir", str(mnist), "--pipeline", "branchynet",
                                 "--repeats", "1", "--no-save", "--json", *extra])
    assert result.exit_code == 0, result.output
    return strict(result.stdout)


def test_workload_json_has_the_runs_policies_at_the_top(tiny_bundle, mnist_dir):
    payload = simulate(tiny_bundle, mnist_dir, "--workload", "burst:64:200", "--batch-size", "16",
                       "--time-scale", "20")
    assert set(payload["policies"]) == set(POLICIES)
    for policy in payload["policies"].values():
        assert policy["energy_j"] > 0 and 0 <= policy["miss_rate"] <= 1
    run = payload["pipelines"]["branchynet"]
    assert payload["policies"] == run["policies"] and run["num_batches"] == 4 and run["batch_size"] == 16
    assert run["deadline_ms"] == 200 and payload["energy_source"] == "modelled"
    assert payload["times"] == {"factor": 20.0, "source": "given (--time-scale 20)", "kind": "given"}
    assert payload["notes"][0].startswith("Stage times shown: host times")
    assert run["messages"][0].startswith("best possible saving: ")
    oracle = run["policies"]["oracle"]
    for policy in run["policies"].values():
        if policy["misses"] <= oracle["misses"]:
            assert policy["energy_j"] >= oracle["energy_j"] * (1 - 1e-9)


def test_a_power_table_file_and_threads(tiny_bundle, mnist_dir):
    payload = simulate(tiny_bundle, mnist_dir, "--workload", "burst:32:100", "--batch-size", "32",
                       "--power-table", str(WIDE), "--threads", "2", "--time-scale", "10")
    assert payload["target"] == "test-wide-range" and payload["threads"] == 2
    assert payload["power_model"]["active_cores"] == 2
    assert any(note.endswith(f"Power table read from {WIDE}.") for note in payload["assumptions"])
    assert payload["pipelines"]["branchynet"]["deadline_ms"] == 100


def test_the_trace_round_trip(tiny_bundle, mnist_dir, tmp_path):
    """A trace of the host-timed run's own times (host x factor, scaled as f_max / f) replays to the same decisions
    and energy; a trace taken where the CPU never changed speed is scaled from the speed it ran at."""
    trace = tmp_path / "trace.json"
    timed = simulate(tiny_bundle, mnist_dir, "--workload", "burst:96:150", "--batch-size", "32", "--time-scale",
                     "30", "--power-table", str(WIDE), "--save-trace", str(trace))
    recorded = read_trace(trace)
    assert recorded["format"] == TRACE_FORMAT and recorded["speed_changed"] is True
    assert set(recorded["pipelines"]["branchynet"]["stages"]) == {"host", "trunk_branch", "main_tail"}
    replayed = simulate(tiny_bundle, mnist_dir, "--workload", "burst:96:150", "--batch-size", "32",
                        "--power-table", str(WIDE), "--trace", str(trace))
    assert replayed["times"]["kind"] == "trace" and replayed["notes"][0].startswith("Stage times shown: a recorded")
    for name in POLICIES:
        a, b = timed["policies"][name], replayed["policies"][name]
        assert b["decisions"] == a["decisions"] and b["time_at_frequency"] == a["time_at_frequency"], name
        assert b["energy_j"] == a["energy_j"] and b["misses"] == a["misses"], name

    top = str(max(int(float(f)) for f in recorded["frequencies_mhz"]))
    for sizes in recorded["pipelines"]["branchynet"]["stages"].values():
        for at in sizes.values():
            at.update({mhz: at[top] for mhz in at})  # every time taken at the top: the CPU never slowed
    recorded.update(speed_changed=False, ran_at_mhz=float(top))
    trace.write_text(json.dumps(recorded))
    unchanged = simulate(tiny_bundle, mnist_dir, "--workload", "burst:96:150", "--batch-size", "32",
                         "--power-table", str(WIDE), "--trace", str(trace))
    assert "did not change speed" in unchanged["times"]["source"]
    for name in POLICIES:
        assert unchanged["policies"][name]["energy_j"] == pytest.approx(timed["policies"][name]["energy_j"], rel=1e-9)


def test_period_ms_is_a_camera_workload(tiny_bundle, mnist_dir):
    payload = simulate(tiny_bundle, mnist_dir, "--period-ms", "20", "--limit", "30", "--time-scale", "5")
    assert payload["workload"] == "camera at 50 frames/s, 30 frames"
    assert payload["pipelines"]["branchynet"]["deadline_ms"] == pytest.approx(20)


def test_defaults_never_give_a_deadline_shorter_than_a_switch(tiny_bundle, mnist_dir):
    payload = simulate(tiny_bundle, mnist_dir, "--workload", "camera:10000", "--limit", "20")
    run = payload["pipelines"]["branchynet"]
    assert run["deadline_ms"] == pytest.approx(2 * 0.355) and "raised" in run["deadline_rule"]
    legacy = simulate(tiny_bundle, mnist_dir, "--limit", "10")
    assert legacy["pipelines"]["branchynet"]["deadline_ms"] >= 2 * 0.355


def test_it_says_why_no_policy_beats_performance(tiny_bundle, mnist_dir):
    payload = simulate(tiny_bundle, mnist_dir, "--workload", "burst:32:5", "--batch-size", "32", "--time-scale",
                       "1", "--deadline-ms", "0.05")
    messages = payload["pipelines"]["branchynet"]["messages"]
    assert messages[0] == "best possible saving: 0.00% (the oracle against performance)"
    assert messages[1].startswith("no policy can save even 0.1% against performance here: ") and "switch cost" in messages[1]


def test_the_text_output_says_what_it_shows(tiny_bundle, mnist_dir):
    result = runner.invoke(app, ["simulate", str(tiny_bundle), "--data-dir", str(mnist_dir), "--pipeline",
                                 "branchynet", "--repeats", "1", "--no-save", "--workload", "burst:32:50",
                                 "--batch-size", "8", "--time-scale", "3"])
    assert result.exit_code == 0, result.output
    assert "stage times: host times x 3 (given (--time-scale 3))" in result.output
    assert "best possible saving:" in result.output and "eenet" in result.output


def test_time_scale_from_arm64_counts(tiny_build, mnist_dir, tmp_path):
    build = tmp_path / "build"
    shutil.copytree(tiny_build, build)
    (build / "bench.json").write_text(json.dumps({"arm64": {"branchynet": {"1": 1_500_000, "32": 900_000}},
                                                  "arm64_setup": {"cpu": "cortex-a72"}}))
    payload = simulate(build / "bundle", mnist_dir, "--workload", "burst:32:500", "--batch-size", "32")
    times = payload["times"]
    assert times["kind"] == "arm64-count" and "900,000 instructions per image at batch 32" in times["source"]
    assert "ASSUMED 1 instruction per cycle and 1500 MHz = 600.0 us" in times["source"]


@pytest.mark.parametrize("arguments, message", [
    (["--trace", "TRACE"], "--trace go(es) with --workload"),
    (["--batch-size", "8"], "--batch-size go(es) with --workload"),
    (["--workload", "camera:30", "--period-ms", "10"], "--period-ms is a shorthand"),
    (["--workload", "stream:3"], "Expected --workload as camera:FPS, burst:K:MS or arrivals:FILE"),
])
def test_refusals(tiny_bundle, mnist_dir, tmp_path, arguments, message):
    (tmp_path / "trace.json").write_text("{}")
    arguments = [str(tmp_path / "trace.json") if a == "TRACE" else a for a in arguments]
    result = runner.invoke(app, ["simulate", str(tiny_bundle), "--data-dir", str(mnist_dir), "--no-save",
                                 *arguments])
    assert result.exit_code in (1, 2) and message in " ".join(result.output.replace("│", " ").split()), result.output


def test_a_bad_trace_is_one_line(tiny_bundle, mnist_dir, tmp_path):
    bad = tmp_path / "trace.json"
    bad.write_text(json.dumps({"format": TRACE_FORMAT, "version": 1, "source": "x", "speed_changed": True,
                               "frequencies_mhz": [600, 1500],
                               "pipelines": {"branchynet": {"stages": {"host": {"32": {"1500": -1}}}}}}))
    result = runner.invoke(app, ["simulate", str(tiny_bundle), "--data-dir", str(mnist_dir), "--no-save",
                                 "--pipeline", "branchynet", "--workload", "burst:32:50", "--trace", str(bad)])
    assert result.exit_code == 1
    assert "pipelines.branchynet.stages.host.32.1500: expected seconds >= 0. Received: -1" in result.output


def _table(**changes) -> dict:
    table = json.loads(WIDE.read_text())
    table.update(changes)
    return {k: v for k, v in table.items() if v is not None}


@pytest.mark.parametrize("changes, message", [
    ({"idle_w": None}, "missing field(s) ['idle_w']"),
    ({"watts": 3}, "unknown field(s) ['watts']"),
    ({"loaded_cores": 0}, "expected loaded_cores as an integer >= 1. Received: 0"),
    ({"volt_points": [[600, 0.8], [600, 0.9]]}, "distinct MHz"),
    ({"switch_seconds": "355us"}, "expected switch_seconds as seconds >= 0"),
    ({"loaded_w": 0.2}, "expected loaded_w > idle_w"),
])
def test_power_table_file_errors(tmp_path, changes, message):
    path = tmp_path / "table.json"
    path.write_text(json.dumps(_table(**changes)))
    with pytest.raises(DvfsError) as error:
        load_power_table(path)
    assert message in str(error.value) and str(path) in str(error.value) and "\n" not in str(error.value)


def test_power_table_file_through_the_cli(tiny_bundle, tmp_path):
    path = tmp_path / "table.json"
    path.write_text("{not json")
    result = runner.invoke(app, ["simulate", str(tiny_bundle), "--power-table", str(path), "--no-save"])
    assert result.exit_code == 1 and "is not valid JSON" in result.output
    path.write_text(json.dumps(_table(idle_w=None)))
    result = runner.invoke(app, ["simulate", str(tiny_bundle), "--power-table", str(path), "--no-save"])
    assert result.exit_code == 1 and "missing field(s) ['idle_w']" in result.output


def test_it_says_when_the_idle_board_leaves_nothing_to_save(tiny_bundle, mnist_dir):
    payload = simulate(tiny_bundle, mnist_dir, "--workload", "camera:2", "--limit", "10", "--time-scale", "1")
    messages = payload["pipelines"]["branchynet"]["messages"]
    assert "idle power: the board's 2.7 W idle draw is" in messages[1]


def test_recorded_arrivals_get_a_deadline_from_the_slowest_batch(tiny_bundle, mnist_dir, tmp_path):
    arrivals = tmp_path / "arrivals.txt"
    arrivals.write_text("".join(f"{t:.4f}\n" for t in [0.0] * 20 + [0.5 + 0.001 * i for i in range(20)]))
    payload = simulate(tiny_bundle, mnist_dir, "--workload", f"arrivals:{arrivals}", "--batch-size", "8",
                       "--time-scale", "50")
    run = payload["pipelines"]["branchynet"]
    assert run["num_images"] == 40 and run["workload"] == f"40 arrivals from {arrivals}"
    assert run["deadline_rule"].startswith("2x the slowest batch at the top frequency")
    assert run["deadline_ms"] >= max(2 * run["top_frequency_batch_ms"]["max"], 2 * 0.355) - 1e-9


def test_time_scale_from_the_recorded_device_checks(monkeypatch, tmp_path):
    from cbnet_tl.toolchain.delivery import bundle
    from cbnet_tl.toolchain.simulation import time_scale

    record = {"target": "rpi4", "qemu_cpu": "cortex-a72",
              "instructions_per_image": {"branchynet": {"1": 1_200_000, "32": 960_000}}}
    monkeypatch.setattr(bundle, "device_checks", lambda: {"instruction_counts": [record]})
    scale = time_scale.time_scale(None, tmp_path / "bundle", "rpi4", "branchynet", 1, 1_500_000, lambda b: 100e-6)
    assert scale.kind == "arm64-count" and scale.factor == pytest.approx(1.2e6 / 1.5e9 / 100e-6)
    assert "toolchain/data/device_checks.json (cortex-a72" in scale.source
    none = time_scale.time_scale(None, tmp_path / "bundle", "rpi5", "branchynet", 1, 2_400_000, lambda b: 1e-4)
    assert none.kind == "unscaled" and none.factor == 1.0 and "unscaled" in none.source


def test_a_trace_recorded_by_run_py_replays(tiny_bundle, mnist_dir, tmp_path):
    """`run.py trace --sysfs-root` on a fake tree writes a trace that `cbnet-tl simulate --trace` accepts, and the
    replay says the times are recorded ones taken at one speed."""
    from cbnet_tl.runtime.cli import main
    from test_cpufreq import make_tree

    make_tree(tmp_path / "sys")
    trace = tmp_path / "board.json"
    assert main(["--bundle", str(tiny_bundle), "trace", "--sysfs-root", str(tmp_path / "sys"), "--pipeline",
                 "branchynet", "--batch-size", "8", "--repeats", "1", "--out", str(trace)]) == 0
    replayed = simulate(tiny_bundle, mnist_dir, "--workload", "burst:32:100", "--batch-size", "8",
                        "--power-table", str(WIDE), "--trace", str(trace))
    assert replayed["times"]["kind"] == "trace" and "did not change speed" in replayed["times"]["source"]
    assert set(replayed["policies"]) == set(POLICIES)
    assert all(replayed["policies"][name]["energy_j"] > 0 for name in POLICIES)
