"""`run.py trace` on a fake cpufreq tree: every deployed pipeline's stages, at batch 1 and the batch size, at every
frequency the tree offers, written as a stage trace that says the CPU did not change speed; the tree given back."""

from __future__ import annotations

from cbnet_tl.runtime.cli import main
from cbnet_tl.toolchain.simulation.trace_read import read_trace
from cbnet_tl.runtime.manifest import read_manifest
from cbnet_tl.runtime.specs import DEPLOYED_PIPELINES, PIPELINE_SPECS
from test_cpufreq import PI_OS_KHZ, make_tree, snapshot


def test_trace_on_a_fake_tree_times_every_stage_at_every_frequency(tiny_bundle, tmp_path, capsys):
    make_tree(tmp_path / "sys")
    before = snapshot(tmp_path / "sys")
    out = tmp_path / "trace.json"
    code = main(["--bundle", str(tiny_bundle), "trace", "--sysfs-root", str(tmp_path / "sys"), "--batch-size", "4",
                 "--repeats", "1", "--out", str(out), "--target", "rpi4"])
    assert code == 0, capsys.readouterr().err
    assert snapshot(tmp_path / "sys") == before  # the governor and limits given back
    trace = read_trace(out)
    assert trace["speed_changed"] is False and "did not change speed" in " ".join(trace["notes"])
    assert trace["frequencies_mhz"] == [khz / 1000 for khz in PI_OS_KHZ] and trace["target"] == "rpi4"
    deployed = [p for p in DEPLOYED_PIPELINES if p in read_manifest(tiny_bundle).pipelines]
    assert sorted(trace["pipelines"]) == sorted(deployed) and len(deployed) >= 3
    for name in deployed:
        stages = trace["pipelines"][name]["stages"]
        assert list(stages) == ["host", *PIPELINE_SPECS[name].models]  # every stage ran, in the order a batch runs them
        for stage, sizes in stages.items():
            assert sorted(sizes) == ["1", "4"], (name, stage)
            for at in sizes.values():
                assert sorted(float(f) for f in at) == trace["frequencies_mhz"]
                assert all(seconds > 0 for seconds in at.values()), (name, stage, at)
    # a model stage on 4 images takes longer than on 1 (every image goes through every stage while timing)
    tail = trace["pipelines"]["branchynet"]["stages"]["main_tail"]
    assert max(tail["4"].values()) > min(tail["1"].values())
    assert "-> " in capsys.readouterr().out


def test_trace_needs_cpufreq_and_says_so_in_one_line(tiny_bundle, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code = main(["--bundle", str(tiny_bundle), "trace", "--sysfs-root", str(tmp_path / "empty"), "--repeats", "1",
                 "--out", str(tmp_path / "trace.json")])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: A trace needs cpufreq") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "trace.json").exists()


def test_trace_of_one_pipeline(tiny_bundle, tmp_path):
    make_tree(tmp_path / "sys")
    out = tmp_path / "t.json"
    assert main(["--bundle", str(tiny_bundle), "trace", "--sysfs-root", str(tmp_path / "sys"), "--pipeline", "cbnet",
                 "--batch-size", "1", "--repeats", "1", "--out", str(out)]) == 0
    trace = read_trace(out)
    assert list(trace["pipelines"]) == ["cbnet"] and set(trace["pipelines"]["cbnet"]["stages"]["cbnet"]) == {"1"}
