"""cpufreq control on fake sysfs trees laid out like the kernel's: taken, used, and always given back."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cbnet_tl.runtime.dvfs.cpufreq import (
    CPUFREQ_DIR,
    ControlMethod,
    CpufreqController,
    FrequencySource,
)
from cbnet_tl.runtime.errors import DvfsError

PI_OS_KHZ = (600000, 750000, 1000000, 1500000)
READ_ONLY_KERNEL_FILE = Path("/sys/devices/system/cpu/kernel_max")  # 0444 in sysfs: refused even to root


def make_tree(root: Path, *, governors=("conservative", "ondemand", "userspace", "powersave", "performance"),
              governor="ondemand", frequencies=PI_OS_KHZ, available=True, policy="policy0") -> Path:
    d = root / CPUFREQ_DIR / policy
    d.mkdir(parents=True)
    files = {
        "scaling_available_governors": " ".join(governors),
        "scaling_governor": governor,
        "scaling_cur_freq": frequencies[0],
        "scaling_setspeed": "<unsupported>",
        "scaling_min_freq": frequencies[0],
        "scaling_max_freq": frequencies[-1],
        "cpuinfo_min_freq": frequencies[0],
        "cpuinfo_max_freq": frequencies[-1],
        "cpuinfo_transition_latency": 355000,
    }
    if available:
        files["scaling_available_frequencies"] = " ".join(str(f) for f in frequencies) + " "
    for name, value in files.items():
        (d / name).write_text(f"{value}\n")
    return d


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def read(directory: Path, name: str) -> str:
    return (directory / name).read_text().strip()


def test_reads_the_device(tmp_path):
    make_tree(tmp_path)
    controller = CpufreqController(tmp_path)
    assert controller.frequencies_khz == PI_OS_KHZ
    assert controller.frequency_source is FrequencySource.AVAILABLE
    assert controller.method is ControlMethod.USERSPACE
    assert controller.current_khz() == 600000
    assert controller.transition_latency_s == pytest.approx(355e-6)
    assert not controller.held


def test_userspace_set_then_restored_on_normal_exit(tmp_path):
    d = make_tree(tmp_path)
    before = snapshot(tmp_path)
    with CpufreqController(tmp_path) as controller:
        assert read(d, "scaling_governor") == "userspace"
        controller.set_khz(1000000)
        assert read(d, "scaling_setspeed") == "1000000"
    assert snapshot(tmp_path) == before
    assert not controller.held


def test_restored_on_exception(tmp_path):
    make_tree(tmp_path, governor="powersave")
    before = snapshot(tmp_path)
    with pytest.raises(RuntimeError, match="boom"):
        with CpufreqController(tmp_path) as controller:
            controller.set_khz(1500000)
            raise RuntimeError("boom")
    assert snapshot(tmp_path) == before


def test_signal_handlers_put_back(tmp_path):
    make_tree(tmp_path)
    previous = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with CpufreqController(tmp_path) as controller:
        assert signal.getsignal(signal.SIGTERM) == controller._on_signal
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == previous


@pytest.fixture
def live_sigint():
    """SIGINT as an interactive process has it, even when the suite runs under nohup (SIGINT ignored)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_sigint_restores_then_raises_keyboard_interrupt(tmp_path, live_sigint):
    make_tree(tmp_path)
    before = snapshot(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        with CpufreqController(tmp_path) as controller:
            controller.set_khz(750000)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(10)  # never reached: the handler raises as soon as the signal arrives
    assert snapshot(tmp_path) == before


def test_ignored_sigint_stays_ignored(tmp_path):
    """Under nohup SIGINT is ignored: the controller must not start catching it (it would not end us)."""
    make_tree(tmp_path)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with CpufreqController(tmp_path):
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


HOLDER = textwrap.dedent("""
    import signal, sys, time
    from pathlib import Path
    signal.signal(signal.SIGINT, signal.default_int_handler)  # live even if the suite runs under nohup
    from cbnet_tl.runtime.dvfs.cpufreq import CpufreqController
    with CpufreqController(Path(sys.argv[1])) as controller:
        controller.set_khz(600000)
        print("switched", flush=True)
        time.sleep(60)
""")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_to_a_subprocess_restores_the_tree(tmp_path, signum):
    d = make_tree(tmp_path, governor="schedutil", governors=("schedutil", "userspace", "performance"))
    before = snapshot(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "switched"
        assert read(d, "scaling_governor") == "userspace"
        assert read(d, "scaling_setspeed") == "600000"
        holder.send_signal(signum)
        holder.wait(timeout=20)
    finally:
        holder.kill()
        holder.wait()
    assert holder.returncode == -signum, holder.stderr.read()  # died of the signal, as without us
    assert snapshot(tmp_path) == before


def test_pin_min_max_without_userspace(tmp_path):
    d = make_tree(tmp_path, governors=("ondemand", "performance"))
    before = snapshot(tmp_path)
    writes = []
    with CpufreqController(tmp_path) as controller:
        assert controller.method is ControlMethod.PIN_MIN_MAX
        write = controller._write

        def spy(name, value):
            write(name, value)
            writes.append((name, value))
            assert int(read(d, "scaling_min_freq")) <= int(read(d, "scaling_max_freq")), writes

        controller._write = spy
        for khz in (1500000, 600000, 1000000, 750000):
            controller.set_khz(khz)
            assert read(d, "scaling_min_freq") == read(d, "scaling_max_freq") == str(khz)
        assert read(d, "scaling_governor") == "ondemand"
    # raising from 600 MHz writes max first; lowering writes min first
    assert writes[4:6] == [("scaling_max_freq", 1000000), ("scaling_min_freq", 1000000)]
    assert writes[6:8] == [("scaling_min_freq", 750000), ("scaling_max_freq", 750000)]
    assert snapshot(tmp_path) == before


def test_limits_are_widened_while_held_and_restored(tmp_path):
    d = make_tree(tmp_path)
    (d / "scaling_max_freq").write_text("1000000\n")  # an admin cap: still restored afterwards
    before = snapshot(tmp_path)
    with CpufreqController(tmp_path) as controller:
        assert read(d, "scaling_max_freq") == "1500000"
        controller.set_khz(1500000)
    assert snapshot(tmp_path) == before


def test_frequency_list_fallbacks(tmp_path):
    d = make_tree(tmp_path, available=False, frequencies=(600000, 1800000))
    assert CpufreqController(tmp_path).frequencies_khz == (600000, 1800000)
    assert CpufreqController(tmp_path).frequency_source is FrequencySource.CPUINFO_BOUNDS
    (d / "stats").mkdir()
    (d / "stats" / "time_in_state").write_text("600000 120\n700000 4\n1800000 9\n")
    controller = CpufreqController(tmp_path)
    assert controller.frequencies_khz == (600000, 700000, 1800000)
    assert controller.frequency_source is FrequencySource.TIME_IN_STATE


def test_no_cpufreq_at_all(tmp_path):
    with pytest.raises(DvfsError, match=r"No cpufreq policy found under .*cpufreq.*DVFS off"):
        CpufreqController(tmp_path)


def test_unknown_policy(tmp_path):
    make_tree(tmp_path)
    with pytest.raises(DvfsError, match=r"policy '4' not found .*\['policy0'\]"):
        CpufreqController(tmp_path, policy="4")
    assert CpufreqController(tmp_path, policy="0").directory.name == "policy0"


@pytest.mark.parametrize("missing", ["scaling_available_governors", "scaling_governor", "scaling_min_freq"])
def test_missing_file_is_named(tmp_path, missing):
    d = make_tree(tmp_path)
    (d / missing).unlink()
    with pytest.raises(DvfsError, match=f"{missing} does not exist"):
        with CpufreqController(tmp_path):
            pass


def test_missing_setspeed_fails_loudly_and_restores(tmp_path):
    d = make_tree(tmp_path)
    (d / "scaling_setspeed").unlink()
    before = snapshot(tmp_path)
    with pytest.raises(DvfsError, match="scaling_setspeed does not exist, so the CPU frequency cannot be set"):
        with CpufreqController(tmp_path) as controller:
            controller.set_khz(600000)
    assert snapshot(tmp_path) == before


def test_permission_denied_says_root_is_needed(tmp_path):
    # cpufreq control is Linux-only, and so is this suite: a missing sysfs is a failure, not a skip
    assert READ_ONLY_KERNEL_FILE.is_file(), f"needs Linux sysfs ({READ_ONLY_KERNEL_FILE}), a file even root cannot write"
    d = make_tree(tmp_path)
    (d / "scaling_setspeed").unlink()
    (d / "scaling_setspeed").symlink_to(READ_ONLY_KERNEL_FILE)  # a real kernel attribute: EACCES for root too
    with pytest.raises(DvfsError, match=r"Cannot write .*scaling_setspeed: permission denied\. .*needs root"):
        with CpufreqController(tmp_path) as controller:
            controller.set_khz(600000)
    assert read(d, "scaling_governor") == "ondemand"


def test_unreadable_or_unwritable_paths_are_errors(tmp_path):
    d = make_tree(tmp_path)
    (d / "scaling_setspeed").unlink()
    (d / "scaling_setspeed").mkdir()  # opening a directory for writing fails for root too
    with pytest.raises(DvfsError, match=r"Cannot write 600000 to .*scaling_setspeed: Is a directory"):
        with CpufreqController(tmp_path) as controller:
            controller.set_khz(600000)
    (d / "scaling_governor").unlink()
    (d / "scaling_governor").mkdir()
    with pytest.raises(DvfsError, match=r"Cannot read .*scaling_governor: Is a directory"):
        with CpufreqController(tmp_path):
            pass


def test_set_khz_needs_control_and_an_offered_frequency(tmp_path):
    make_tree(tmp_path)
    controller = CpufreqController(tmp_path)
    with pytest.raises(DvfsError, match="only be set inside"):
        controller.set_khz(600000)
    with controller:
        with pytest.raises(DvfsError, match=r"Expected one of .*\[600000, 750000, 1000000, 1500000\].*Received: 900000"):
            controller.set_khz(900000)
        with pytest.raises(DvfsError, match="already controlled"):
            controller.__enter__()
