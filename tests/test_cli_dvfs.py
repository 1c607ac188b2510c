"""DVFS through the CLI on the tiny real build and fake sysfs trees with the kernel's layout."""

from __future__ import annotations

import json

from test_cpufreq import make_tree, read, snapshot
from typer.testing import CliRunner

from cbnet_tl.runtime.dvfs.cpufreq import CpufreqController, restore_from_file
from cbnet_tl.toolchain.cli import app

runner = CliRunner()


def test_eval_eenet_leaves_the_tree_as_it_found_it(tiny_bundle, mnist_dir, tmp_path):
    make_tree(tmp_path / "sys-root")
    before = snapshot(tmp_path / "sys-root")
    result = runner.invoke(app, ["eval", str(tiny_bundle), "--data-dir", str(mnist_dir), "--limit", "40",
                                 "--pipeline", "branchynet", "--dvfs", "eenet", "--deadline-ms", "5",
                                 "--sysfs-root", str(tmp_path / "sys-root"), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)["pipelines"]["branchynet"]["dvfs"]
    assert summary["dvfs"] == "eenet" and summary["method"] == "userspace"
    assert summary["num_inferences"] == 40 and summary["energy_source"] == "modelled"
    assert summary["energy_j"] > 0 and sum(summary["time_at_frequency"].values()) > 0
    assert snapshot(tmp_path / "sys-root") == before


def test_eval_with_a_batch_size_runs_each_batch_as_one_dvfs_batch(tiny_bundle, mnist_dir, tmp_path):
    make_tree(tmp_path / "sys-root")
    before = snapshot(tmp_path / "sys-root")
    common = ["eval", str(tiny_bundle), "--data-dir", str(mnist_dir), "--limit", "40", "--pipeline", "branchynet",
              "--batch-size", "8", "--json"]
    plain = runner.invoke(app, common)
    result = runner.invoke(app, [*common, "--dvfs", "eenet", "--deadline-ms", "500",
                                 "--sysfs-root", str(tmp_path / "sys-root")])
    assert plain.exit_code == 0 and result.exit_code == 0, result.output
    scored, under = (json.loads(r.output)["pipelines"]["branchynet"] for r in (plain, result))
    assert under["batch_size"] == 8 and under["accuracy"] == scored["accuracy"]
    assert under["path_shares"] == scored["path_shares"]
    summary = under["dvfs"]
    assert summary["num_inferences"] == 40 and summary["num_batches"] == 5 and summary["deadline_misses"] == 0
    assert snapshot(tmp_path / "sys-root") == before
    refused = runner.invoke(app, [*common, "--dvfs", "eenet", "--deadline-ms", "500", "--period-ms", "10",
                                  "--sysfs-root", str(tmp_path / "sys-root")])
    assert refused.exit_code == 1 and "Expected --batch-size 1 with --period-ms" in refused.output


def test_run_fixed_frequency_reports_time_at_it(tiny_bundle, samples_dir, tmp_path):
    policy = make_tree(tmp_path / "root", governors=("ondemand", "performance"))  # no userspace: pin min=max
    before = snapshot(tmp_path / "root")
    result = runner.invoke(app, ["run", str(tiny_bundle), str(samples_dir / "mnist_00_7.png"), str(samples_dir / "mnist_01_2.png"),
                                 "--dvfs", "fixed:750", "--deadline-ms", "50", "--sysfs-root", str(tmp_path / "root"), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)["dvfs"]
    assert summary["method"] == "pin-min-max" and set(summary["time_at_frequency"]) == {"750"}
    assert summary["deadline_misses"] == 0
    assert snapshot(tmp_path / "root") == before and read(policy, "scaling_governor") == "ondemand"


def test_dvfs_needs_a_deadline(tiny_bundle, samples_dir, tmp_path):
    make_tree(tmp_path / "root")
    result = runner.invoke(app, ["run", str(tiny_bundle), str(samples_dir / "mnist_00_7.png"), "--dvfs", "eenet",
                                 "--sysfs-root", str(tmp_path / "root")])
    assert result.exit_code == 1 and "--dvfs eenet needs a deadline to meet: pass --deadline-ms" in result.output


def test_dvfs_without_cpufreq_fails_instead_of_running_uncontrolled(tiny_bundle, samples_dir, tmp_path):
    result = runner.invoke(app, ["run", str(tiny_bundle), str(samples_dir / "mnist_00_7.png"), "--dvfs", "performance",
                                 "--deadline-ms", "5", "--sysfs-root", str(tmp_path)])
    assert result.exit_code == 1 and "error:" in result.output and "cpufreq" in result.output


def test_saved_state_restores_after_a_kill(tmp_path):
    """What the systemd unit's ExecStopPost does when the process died without restoring."""
    policy = make_tree(tmp_path)
    state = tmp_path / "run" / "saved.json"
    controller = CpufreqController(tmp_path, state_file=state)
    controller.__enter__()
    controller.set_khz(600000)
    assert read(policy, "scaling_governor") == "userspace" and state.is_file()
    controller._uninstall_handlers()  # simulate SIGKILL: the process is gone, nothing restored
    assert restore_from_file(state) == str(policy)
    assert read(policy, "scaling_governor") == "ondemand" and not state.exists()
    assert restore_from_file(state) is None


def test_simulate_json(tiny_bundle, mnist_dir, tmp_path):
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    result = runner.invoke(app, ["simulate", str(bundle), "--data-dir", str(mnist_dir), "--limit", "60",
                                 "--target", "rpi4", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert {"eenet", "performance", "oracle"} <= set(payload["policies"])
    for name in ("branchynet", "cbnet"):
        for run in payload["pipelines"][name]["runs"].values():
            oracle = run["policies"]["oracle"]["energy_j"]
            for policy in run["policies"].values():
                assert policy["energy_j"] > 0 and 0 <= policy["miss_rate"] <= 1
                if policy["miss_rate"] <= run["policies"]["oracle"]["miss_rate"]:
                    assert policy["energy_j"] >= oracle * (1 - 1e-9)
    assert payload["energy_source"] == "modelled" and "f_max/f" in payload["notes"][0]
    assert (bundle / "simulate.json").is_file()


def test_simulate_takes_the_devices_opp_list(tiny_bundle, mnist_dir):
    # sysfs prints kHz separated by spaces; the option also takes MHz with commas
    result = runner.invoke(app, ["simulate", str(tiny_bundle), "--data-dir", str(mnist_dir), "--limit", "20",
                                 "--pipeline", "cbnet", "--repeats", "1", "--no-save", "--json",
                                 "--frequencies-mhz", "1500000 600000 1100000", "--switch-us", "50"])
    assert result.exit_code == 0, result.output
    run = json.loads(result.output)["pipelines"]["cbnet"]["runs"]["back-to-back"]
    assert run["frequencies_mhz"] == [600, 1100, 1500] and run["switch_us"] == 50
    assert set(run["policies"]["powersave"]["time_at_frequency"]) == {"600"}


def test_simulate_rejects_a_bad_opp_list(tiny_bundle):
    result = runner.invoke(app, ["simulate", str(tiny_bundle), "--frequencies-mhz", "600,fast"])
    assert result.exit_code == 2 and "frequencies in MHz" in result.output


def test_trace_keeps_each_images_path_and_a_median_per_stage(tiny_bundle, mnist_dir):
    from cbnet_tl.runtime.bundle import load_bundle
    from cbnet_tl.runtime.pipelines import Pipeline
    from cbnet_tl.runtime.specs import models_for
    from cbnet_tl.toolchain.ingest.datasets import read_idx_pair
    from cbnet_tl.toolchain.simulation.dvfs_report import trace_of

    images, _ = read_idx_pair(mnist_dir / "t10k-images-idx3-ubyte.gz", mnist_dir / "t10k-labels-idx1-ubyte.gz", 10)
    images = images[:30]
    pipeline = Pipeline(load_bundle(tiny_bundle, models=models_for(["branchynet"])), "branchynet")
    trace = trace_of(pipeline, images, repeats=3)
    paths = pipeline.classify(images).paths
    assert len(trace) == len(images)
    for sample, path in zip(trace, paths):
        names = [name for name, _ in sample]
        assert names[:2] == ["host", "trunk_branch"] and ("main_tail" in names) == (path != "branch")
        assert all(seconds > 0 for name, seconds in sample if name != "host")
