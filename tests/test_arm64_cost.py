"""`cbnet-tl bench --arm64` through the CLI (what it refuses, and how), its arithmetic and printout, the proof
the arm64 check applies to real counts (scripts/arm64_counts.py), and the Raspberry Pi 5 target.

The counting itself needs root and the arm64 check's Debian root, so it runs in the arm64 check
(scripts/arm64_check.py, as root in CI), which also applies ``problems`` to real counts of two bundles;
tests/test_arm64_plugin.py proves the plugin counts exactly.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cbnet_tl.toolchain.arm64 import cost as arm64_cost
from cbnet_tl.toolchain.arm64 import setup as arm64_setup
from cbnet_tl.toolchain.arm64.cost import CountConfig, Job, format_counts
from cbnet_tl.toolchain.cli import app
from cbnet_tl.toolchain.targets import TARGETS

runner = CliRunner()
SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def invoke(args: list):
    return runner.invoke(app, args, env={"COLUMNS": "220"})  # one line per message, as the tests read them


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_help_offers_the_arm64_count():
    result = invoke(["bench", "--help"])
    assert result.exit_code == 0
    for option in ("--arm64", "--arm64-cpu", "--arm64-root", "cortex-a76", "not a time"):
        assert option in result.output


def test_arm64_options_are_refused_when_they_cannot_apply(tiny_bundle, mnist_dir):
    result = invoke(["bench", str(tiny_bundle), "--data-dir", str(mnist_dir), "--arm64-cpu", "cortex-a76"])
    assert result.exit_code != 0 and "--arm64-cpu and --arm64-root go with --arm64" in result.output
    result = invoke(["bench", str(tiny_bundle), "--data-dir", str(mnist_dir), "--arm64", "--threads", "2"])
    assert result.exit_code != 0 and "one interpreter thread. Received: --threads 2" in result.output
    result = invoke(["bench", str(tiny_bundle), "--arm64", "--arm64-cpu", "max"])
    assert result.exit_code != 0 and "cortex-a72" in result.output  # qemu's max has SVE/SME no board has


def test_arm64_count_says_what_it_needs(tiny_bundle, mnist_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(arm64_setup.os, "geteuid", lambda: 1000)
    result = invoke(["bench", str(tiny_bundle), "--data-dir", str(mnist_dir), "--arm64"])
    assert result.exit_code == 1
    assert "counting on arm64 needs root (mount, chroot into the arm64 root): run it with sudo" in result.output
    monkeypatch.setattr(arm64_setup.os, "geteuid", lambda: 0)
    result = invoke(["bench", str(tiny_bundle), "--data-dir", str(mnist_dir), "--arm64",
                                 "--arm64-root", str(tmp_path)])
    assert result.exit_code == 1
    assert f"no Debian arm64 root at {tmp_path}: make it with `sudo python3 scripts/arm64_check.py" in result.output


def _counts(per_image: dict, num_images=64, marks=4_000) -> dict:
    """Counts of the loops on N and on 0 images that give ``per_image`` exactly: pipeline name -> {batch:
    instructions}, bare model -> {(kernels, batch): instructions}."""
    counts = {}
    for (kind, name), row in per_image.items():
        for key, per in row.items():
            resolver, batch = key if kind == "bare" else ("default", key)
            full = (num_images // batch) * batch
            counts[Job(kind, name, batch, full, resolver)] = (marks + per * full, marks)
    return counts


def _bare(b1: int, b32: int, builtin1: int, builtin32: int) -> dict:
    return {("default", 1): b1, ("default", 32): b32, ("builtin", 1): builtin1, ("builtin", 32): builtin32}


def test_per_image_counts_ratios_and_printout():
    per_image = {("pipeline", "cbnet"): {1: 200_000, 32: 150_000}, ("pipeline", "lenet"): {1: 1_400_000, 32: 1_350_000},
                 ("bare", "cbnet"): _bare(180_000, 149_000, 560_000, 170_000),
                 ("bare", "lenet"): _bare(1_380_000, 1_349_000, 1_170_000, 1_100_000),
                 ("bare", "noop"): _bare(21_000, 700, 24_000, 800)}
    config = CountConfig(cpu="cortex-a72", num_images=64)
    versions = {"interpreter": "ai-edge-litert", "interpreter_version": "2.3.0", "python": "3.11.2"}
    report = arm64_cost._report(_counts(per_image), versions, {"cbnet": ("cbnet",), "lenet": ("lenet",)}, config,
                                ["cbnet", "lenet", "noop"])
    assert report["arm64"] == {"cbnet": {"1": 200_000, "32": 150_000}, "lenet": {"1": 1_400_000, "32": 1_350_000}}
    assert report["arm64_vs_lenet"]["cbnet"] == {"1": 7.0, "32": 9.0}
    assert report["arm64_bare"] == {"cbnet": 180_000, "lenet": 1_380_000, "noop": 21_000}  # the kernels pipelines run
    assert report["arm64_bare_kernels"]["lenet"] == {"default": {"1": 1_380_000, "32": 1_349_000},
                                                     "builtin": {"1": 1_170_000, "32": 1_100_000}}
    assert report["arm64_bare_kernels"]["cbnet"]["builtin"]["32"] == 170_000
    setup = report["arm64_setup"]
    assert setup["cpu"] == "cortex-a72" and setup["interpreter_version"] == "2.3.0"
    assert setup["cpuinfo"] == "cortex-a72, MIDR 0x410fd083" and "/proc/cpuinfo" in setup["method"]
    json.dumps(report, allow_nan=False)
    text = format_counts(report)
    assert "-cpu cortex-a72 shown as cortex-a72, MIDR 0x410fd083 in /proc/cpuinfo, ai-edge-litert 2.3.0" in text
    assert "not a time" in text and "200,000     7.00x" in text and "noop 21,000" in text
    assert ("bare call of lenet per image by kernels: XNNPACK (default) batch 1 1,380,000, batch 32 1,349,000; "
            "built-in batch 1 1,170,000, batch 32 1,100,000") in text


def test_the_guest_sees_the_emulated_core_as_the_board_shows_it():
    """The interpreter picks its kernels from /proc/cpuinfo (XNNPACK's for a Cortex-A72 prefetch; its generic ones,
    taken when it finds no core, do not): the count shows the guest the board's core, not the host's x86 one."""
    from cbnet_tl.toolchain.cli.bench import Arm64Cpu

    text = arm64_setup.proc_cpuinfo("cortex-a72")
    cores = [block for block in text.split("\n\n") if block.strip()]
    assert len(cores) == 4 and cores[3].startswith("processor\t: 3\n")
    fields = dict(line.split(":", 1) for line in cores[0].splitlines())
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    assert (fields["CPU implementer"], fields["CPU part"], fields["CPU variant"], fields["CPU revision"]) == \
        ("0x41", "0xd08", "0x0", "3")  # the Pi 4's BCM2711: Cortex-A72 r0p3
    assert fields["CPU architecture"] == "8" and "CPU architecture: 8\n" in text  # as the kernel spells it
    assert "asimddp" not in fields["Features"]  # no dot product on the A72
    pi5 = dict(line.split("\t: ", 1) for line in arm64_setup.proc_cpuinfo("cortex-a76").split("\n\n")[0].splitlines()
               if "\t: " in line)
    assert (pi5["CPU part"], pi5["CPU variant"], pi5["CPU revision"]) == ("0xd0b", "0x4", "1")  # BCM2712: A76 r4p1
    assert "asimddp" in pi5["Features"].split()
    assert {c.value for c in Arm64Cpu} <= set(arm64_setup.CORES)  # every core the CLI offers can be shown
    assert {t.qemu_cpu for t in TARGETS.values()} <= set(arm64_setup.CORES)
    with pytest.raises(arm64_cost.Arm64CountError, match="Expected a core in .* Received: 'max'"):
        arm64_setup.proc_cpuinfo("max")


def test_the_count_binds_the_cores_cpuinfo_over_the_hosts(tmp_path, monkeypatch):
    """The jail mounts /proc first, then a file bind goes onto the file /proc/cpuinfo (no directory made there)."""
    from cbnet_tl.toolchain.arm64 import jail as arm64_jail

    mounts = []
    monkeypatch.setattr(arm64_jail, "_mount", lambda *args: mounts.append(args))
    monkeypatch.setattr(arm64_jail.os, "chroot", lambda path: mounts.append(("chroot", str(path))))
    root, cpuinfo, cache = tmp_path / "root", tmp_path / "cpuinfo", tmp_path / "pip"
    (root / "proc").mkdir(parents=True)
    (root / "proc" / "cpuinfo").write_text("x86\n")
    cpuinfo.write_text(arm64_setup.proc_cpuinfo("cortex-a72"))
    cache.mkdir()
    arm64_jail.enter(root, [(str(cpuinfo), "/proc/cpuinfo"), (str(cache), "/root/.cache/pip")])
    assert mounts.index(("-t", "proc", "proc", str(root / "proc"))) < mounts.index(
        ("--bind", str(cpuinfo), str(root / "proc" / "cpuinfo")))
    assert (root / "proc" / "cpuinfo").is_file() and (root / "root/.cache/pip").is_dir()
    assert mounts[-1] == ("chroot", str(root))


def test_config_is_checked():
    with pytest.raises(arm64_cost.Arm64CountError, match="Received batch_sizes=\\(64,\\), num_images=32"):
        CountConfig(batch_sizes=(64,), num_images=32)


def test_the_check_proves_counts_real_and_refuses_fake_ones():
    counts = _script("arm64_counts")
    manifest = {"models": {"cbnet": {"macs": 618_112}, "lenet": {"macs": 1_140_070}, "noop": {"macs": 0}}}
    real = {"arm64": {"cbnet": {"1": 250_000}}, "arm64_bare": {"cbnet": 180_000, "lenet": 1_400_000, "noop": 21_000}}
    assert counts.problems(real, manifest) == []
    flat = {**real, "arm64_bare": {"cbnet": 180_000, "lenet": 190_000, "noop": 21_000}}  # MACs ignored
    assert any("1.84x the MACs of cbnet but counts 190,000" in p for p in counts.problems(flat, manifest))
    startup = {**real, "arm64_bare": {"cbnet": 9_180_000, "lenet": 10_400_000, "noop": 9_000_000}}  # start-up left in
    assert any("the empty model counts 9,000,000" in p for p in counts.problems(startup, manifest))
    no_pair = {"models": {"cbnet": {"macs": 618_112}, "noop": {"macs": 0}}}
    assert any("cannot be checked against MACs" in p for p in counts.problems(real, no_pair))


def test_the_check_records_counts_and_shows_changes():
    counts = _script("arm64_counts")
    report = {"arm64": {"cbnet": {"1": 220_000}}, "arm64_bare": {}, "arm64_vs_lenet": {"cbnet": {"1": 6.5}},
              "arm64_setup": {"cpu": "cortex-a76", "qemu": "qemu-aarch64 version 7.2.22", "num_images": 1024,
                              "method": "m", "interpreter": "ai-edge-litert", "interpreter_version": "2.3.0"}}
    record = counts.record("rpi5", report)
    assert record["qemu_cpu"] == "cortex-a76" and record["instructions_per_image"] == {"cbnet": {"1": 220_000}}
    assert record["cpuinfo_shown"] is None and record["bare_call_by_kernels"] == {}  # a report from before either
    assert "cbnet" in counts.table([record], {"rpi5": {"cbnet": {"1": 200_000}}})
    assert "(+10.0%)" in counts.table([record], {"rpi5": {"cbnet": {"1": 200_000}}})


def test_the_arm64_check_runs_each_bundle_on_its_targets_core():
    check = _script("arm64_check")
    for combo in check.COMBOS:
        target = "rpi4" if combo.target == "rpi4-rgb" else combo.target
        assert combo.cpu == TARGETS[target].qemu_cpu, combo
    assert {"rpi4", "rpi5"} <= {c.target for c in check.COMBOS}
    assert TARGETS["rpi5"].qemu_cpu == "cortex-a76" and TARGETS["rpi4"].qemu_cpu == "cortex-a72"


def test_rpi5_is_a_target_with_its_power_table(tiny_build, mnist_dir, tmp_path):
    from cbnet_tl.toolchain.delivery.bundle import write_bundle
    from cbnet_tl.toolchain.ingest.datasets import Split, load_dataset

    help_text = invoke(["build", "--help"]).output
    assert "rpi5" in help_text
    build = tmp_path / "build"
    shutil.copytree(tiny_build, build, ignore=shutil.ignore_patterns("bundle", "*.tar.gz"))
    write_bundle(build, TARGETS["rpi5"], load_dataset("mnist", Split.TEST, mnist_dir).images)
    assert json.loads((build / "bundle" / "manifest.json").read_text())["target"] == "rpi5"
    assert "Raspberry Pi 5" in (build / "bundle" / "README.md").read_text()
    result = invoke(["simulate", str(build / "bundle"), "--data-dir", str(mnist_dir), "--limit", "20",
                                 "--pipeline", "cbnet", "--repeats", "1", "--no-save", "--json", "--target", "rpi5"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    described = json.dumps(payload)
    assert "2400" in described and "ASSUMED" in described


ARM64_SAVED = {
    "arm64": {"cbnet": {"1": 215_000, "32": 150_000}, "lenet": {"1": 1_500_000, "32": 1_400_000}},
    "arm64_vs_lenet": {"cbnet": {"1": 6.98, "32": 9.33}, "lenet": {"1": 1.0, "32": 1.0}},
    "arm64_bare": {"cbnet": 175_000, "lenet": 1_450_000, "noop": 21_000},
    "arm64_beyond_bare": {"cbnet": 40_000, "lenet": 50_000},
    "arm64_setup": {"cpu": "cortex-a72", "qemu": "qemu-aarch64 version 7.2.22", "num_images": 1024, "method": "m",
                    "interpreter": "ai-edge-litert", "interpreter_version": "2.3.0", "python": "3.11.2"},
}


def test_host_bench_keeps_the_saved_counts_and_the_report_shows_both(tiny_build, mnist_dir, tmp_path):
    build = tmp_path / "build"
    shutil.copytree(tiny_build, build)
    (build / "bench.json").write_text(json.dumps(ARM64_SAVED))
    page = invoke(["report", str(build), "--data-dir", str(mnist_dir)])
    assert page.exit_code == 0, page.output  # counts alone, no host timings yet
    html = (build / "report" / "index.html").read_text()
    assert "Cost on the board&#39;s instruction set" in html or "Cost on the board's instruction set" in html
    assert "1,500,000" in html and "not a time" in html and "No benchmark yet" in html
    timed = invoke(["bench", str(build), "--data-dir", str(mnist_dir), "--batch", "1,32", "--num-images", "64",
                    "--untuned"])
    assert timed.exit_code == 0, timed.output
    saved = json.loads((build / "bench.json").read_text())
    assert saved["arm64"] == ARM64_SAVED["arm64"] and saved["runs"]  # both, side by side
    assert invoke(["report", str(build), "--data-dir", str(mnist_dir)]).exit_code == 0
    html = (build / "report" / "index.html").read_text()
    side = arm64_cost.side_by_side(saved)
    assert side["host_precision"] == "int8" and all(r["host_vs_lenet"] for r in side["rows"])
    cbnet_host = next(r["host_vs_lenet"] for r in side["rows"] if r["pipeline"] == "cbnet" and r["batch"] == 32)
    assert "9.33" in html and f"{cbnet_host:.2f}" in html and "No benchmark yet" not in html


def test_each_pipeline_counts_beyond_the_bare_calls_of_the_models_its_images_ran(tiny_bundle, mnist_dir, monkeypatch):
    """count_pipelines on a real bundle, the counting replaced: each image's path (run here, the same int8 decisions)
    picks which bare calls it is charged, so cbnet-fallback pays LeNet's only for the images that went on to it."""
    from cbnet_tl.runtime.api import open_pipeline
    from cbnet_tl.toolchain.ingest.datasets import Split, load_dataset
    from cbnet_tl.toolchain.scoring import run_pipeline

    images = load_dataset("mnist", Split.TEST, mnist_dir).images[:64]
    bare = {"cbnet": 200_000, "lenet": 1_400_000, "trunk_branch": 800_000, "main_tail": 780_000, "noop": 18_000}
    seen = {}

    def fake_count(bundle, images, pipelines, config, progress=None, extra_models=()):
        seen.update(pipelines=pipelines, cpu=config.cpu, extra=extra_models)
        return {"arm64": {name: {"1": 2_000_000} for name in pipelines}, "arm64_setup": {}, "arm64_bare": bare}

    monkeypatch.setattr(arm64_cost, "count_bundle", fake_count)
    report = arm64_cost.count_pipelines(tiny_bundle, images, CountConfig(num_images=64))
    assert seen["pipelines"]["cbnet-fallback"] == ("cbnet", "lenet") and seen["extra"] == ("noop",)
    assert seen["cpu"] == TARGETS["rpi4"].qemu_cpu
    assert report["arm64_beyond_bare"]["lenet"] == 600_000 and report["arm64_beyond_bare"]["cbnet"] == 1_800_000
    went_on = sum(p == "cbnet+lenet" for p in run_pipeline(open_pipeline(tiny_bundle, "cbnet-fallback", tuning=None),
                                                           images, batch_size=256)["paths"])
    assert report["arm64_beyond_bare"]["cbnet-fallback"] == round(2_000_000 - 200_000 - 1_400_000 * went_on / 64)


def test_the_set_up_lock_is_taken_on_a_root_counting_has_never_touched(tmp_path):
    # A fresh root (as debootstrap leaves it) has no opt/cbnet-tl-count yet: the first `bench --arm64` must still
    # take the lock, not fail on a path through a folder that does not exist.
    root = tmp_path / "bookworm"
    (root / "usr").mkdir(parents=True)
    with arm64_setup.setup_lock(root):
        locks = list(root.rglob("*.lock"))
    assert len(locks) == 1 and locks[0].is_file()
    assert not arm64_setup.count_dir(root).exists()  # set-up, not the lock, makes its own folder
