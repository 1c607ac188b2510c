"""DVFS per batch in ``run.py watch`` and ``run.py classify --batch-size`` (issue 18, item 1), on fake cpufreq trees.

A batch's deadline counts from when its oldest input settled, each image's latency from its own, the polling sleep
is idle time, the policy sets the tree's frequency while a batch runs, the tree is given back, and the service says
what it cost: its summary line and ``run.py status`` (energy, labelled modelled or measured; misses; time at each
frequency).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cbnet_tl.runtime.api import open_pipeline
from cbnet_tl.runtime.cli import main
from cbnet_tl.runtime.dvfs.energy import model_for
from cbnet_tl.runtime.classify import workload_options
from cbnet_tl.runtime.dvfs.run import dvfs_session
from cbnet_tl.runtime.dvfs.session import DvfsSession
from cbnet_tl.runtime.errors import ConfigError
from cbnet_tl.runtime.inbox import Inbox, InboxConfig, watch_inbox
from cbnet_tl.runtime.service import run_watch
from cbnet_tl.runtime.settle import Settler
from test_cpufreq import PI_OS_KHZ, make_tree, snapshot
from test_watch import Watch, _check_exactly_once, _fill, wait_for

TOP = PI_OS_KHZ[-1]
SUMMARY = re.compile(r"^watch summary: (\d+) inputs, (\d+) classified in [\d.]+ s; dvfs (\S+) \((\S+)\); "
                     r"deadline ([\d.]+) ms missed by (\d+)/(\d+) \([\d.]+%\); latency median [\d.]+ ms, p95 [\d.]+ ms; "
                     r"energy [\d.e+-]+ J \(modelled, rpi4\), "
                     r"[\d.e+-]+ mJ/image; time at (.+); idle [\d.]+ s; frequency switches: (\d+)$", re.MULTILINE)


def strict_json(text: str):
    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def frequency_use(text: str) -> dict:
    """"600 MHz 1.234 s (80%), 1500 MHz 0.3 s (20%)" -> {"600": 1.234, "1500": 0.3}."""
    return {mhz: float(s) for mhz, s in re.findall(r"(\d+) MHz ([\d.]+) s", text)}


def test_a_burst_of_2000_drains_under_eenet_on_a_fake_tree(tiny_bundle, samples_dir, tmp_path):
    """The issue's "done when": every input in done/, the tree as it was, and the summary printed."""
    make_tree(tmp_path / "sys")
    before = snapshot(tmp_path / "sys")
    w = Watch(tiny_bundle, tmp_path, "--batch-size", "64", "--pipeline", "branchynet", "--dvfs", "eenet",
              "--workload", "burst:2000:600000", "--sysfs-root", str(tmp_path / "sys"), "--drain")
    names = _fill(w.inbox, samples_dir, 2000, prefix="burst")
    run = subprocess.run(w.args, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr
    _check_exactly_once(tmp_path, names)
    assert snapshot(tmp_path / "sys") == before  # governor, limits and setspeed given back
    match = SUMMARY.search(run.stdout)
    assert match, run.stdout
    inputs, classified, policy, method, deadline, missed, total, use, switches = match.groups()
    assert (inputs, classified, total, policy, method) == ("2000", "2000", "2000", "eenet", "userspace")
    assert float(deadline) == 600000 and missed == "0"  # counted from the clock's zero or the epoch, all would miss
    use = frequency_use(use)
    assert len(use) >= 2 and str(TOP // 1000) in use and int(switches) >= 1  # it left the top for part of the burst
    status = subprocess.run([sys.executable, str(tiny_bundle / "run.py"), "status", "--inbox", str(w.inbox)],
                            capture_output=True, text=True, check=True)
    report = strict_json(status.stdout)
    session = report["session"]
    assert not report["running"] and report["processed"] == 2000 and report["dvfs"] == "eenet"
    assert session["num_inferences"] == 2000 and session["energy_source"] == "modelled"
    assert session["energy_model"] == "rpi4" and session["energy_j_total"] > 0
    assert session["deadline_ms"] == 600000 and session["deadline_misses"] == int(missed)
    assert set(session["time_at_frequency"]) == set(use) and session["idle_s"] >= 0


class FrequencyDuringStages:
    """Reads the fake tree's ``scaling_setspeed`` at the end of every stage: what the CPU ran that stage at."""

    def __init__(self, session: DvfsSession, policy_dir: Path):
        self.seen, self._after, self._file = [], session.after_stage, policy_dir / "scaling_setspeed"
        session.after_stage = self

    def __call__(self, stage: str, seconds: float) -> None:
        self.seen.append((stage, int(self._file.read_text())))
        self._after(stage, seconds)


def test_eenet_sets_the_trees_frequency_while_a_batch_runs(tiny_bundle, samples_dir, tmp_path):
    """Twelve batches of 8: a per-inference EENet would still be warming up at the top (16 inferences), and a
    policy that is never consulted leaves the top set when the session began."""
    policy_dir = make_tree(tmp_path / "sys")
    before = snapshot(tmp_path / "sys")
    config = InboxConfig(tmp_path / "inbox", tmp_path / "outbox", settle_seconds=0.05, poll_seconds=0.02, batch_size=8)
    config.inbox.mkdir()
    _fill(config.inbox, samples_dir, 96)
    pipeline = open_pipeline(tiny_bundle, "branchynet")
    with dvfs_session("eenet", deadline_ms=60_000, burst=True, sysfs_root=tmp_path / "sys", target="rpi4") as session:
        spy = FrequencyDuringStages(session, policy_dir)  # burst: the inbox's arrivals, as run_watch opens it
        assert watch_inbox(pipeline, config, session=session, drain=True) == 96
    assert snapshot(tmp_path / "sys") == before
    assert spy.seen[0] == ("trunk_branch", TOP)  # nothing known yet: the first stage at the top
    below = [khz for _, khz in spy.seen if khz < TOP]
    assert below and set(khz for _, khz in spy.seen) <= set(PI_OS_KHZ)
    totals = session.totals()
    assert totals["num_inferences"] == 96 and totals["switches"] >= 1
    assert {str(khz // 1000) for _, khz in spy.seen} <= set(totals["time_at_frequency"])


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_latency_counts_from_when_each_input_settled_to_its_result_written(tiny_bundle, samples_dir, tmp_path,
                                                                            monkeypatch):
    """a and b are there at the first scan (0 s); c is dropped at 1.5 s and first scanned at 2 s; their batch runs
    at 3 s and each result takes 0.25 s to write (fake clocks): latencies 3.75, 3.75 and 2.25 s, so with a 2.5 s
    deadline a and b miss and c does not. Counted from the dequeue, from the scan that saw c, from the end of the
    interpreter calls, or every image from the oldest one, they would differ."""
    import cbnet_tl.runtime.inbox as inbox_module

    clock, wall = Clock(), Clock()
    config = InboxConfig(tmp_path / "inbox", tmp_path / "outbox", settle_seconds=0.4)
    config.inbox.mkdir()
    write = inbox_module.write_json_atomic

    def slow_write(path, payload, **options):
        if Path(path).parent == config.outbox:
            clock.now += 0.25
        return write(path, payload, **options)

    monkeypatch.setattr(inbox_module, "write_json_atomic", slow_write)
    session = DvfsSession(None, None, model_for("rpi4"), deadline_s=2.5, clock=clock)
    inbox = Inbox(open_pipeline(tiny_bundle, "cbnet"), config, session=session, clock=clock)
    settler = Settler(0.4, clock, wall)
    samples = sorted(samples_dir.glob("*.png"))
    for name, sample in (("a.png", samples[0]), ("b.png", samples[1])):
        (config.inbox / name).write_bytes(sample.read_bytes())
    assert settler.scan(config.inbox) == []
    clock.now = 2.0
    (config.inbox / "c.png").write_bytes(samples[2].read_bytes())
    wall.now = (config.inbox / "c.png").stat().st_ctime + 0.5
    assert [e.name for e in settler.scan(config.inbox)] == ["a.png", "b.png"]
    clock.now, wall.now = 2.5, wall.now + 0.5
    ready = settler.scan(config.inbox)
    assert sorted(e.name for e in ready) == ["a.png", "b.png", "c.png"]
    assert sorted(e.settled_at for e in ready) == pytest.approx([0.0, 0.0, 1.5])
    clock.now = 3.0
    assert inbox.process(ready) == 3
    assert sorted(session.latencies) == pytest.approx([2.25, 3.75, 3.75])
    totals = session.totals()
    assert totals["num_inferences"] == 3 and totals["deadline_misses"] == 2
    assert sum(totals["time_at_frequency"].values()) == pytest.approx(0.75)  # writing the results: busy
    state = strict_json(config.state_file.read_text())["session"]
    assert state["deadline_misses"] == 2 and state["deadline_ms"] == 2500


def test_an_input_arrives_at_its_last_change_within_the_scans_that_bound_it(tmp_path):
    """Arrival is the file's ctime moved to the settler's clock, kept between the scan before (which did not see
    it) and the scan that saw it: a wall clock off by minutes moves it by one scan interval at most."""
    clock, wall = Clock(), Clock()
    settler = Settler(0.4, clock, wall)

    def drop(name: str, clock_now: float, wall_after_change: float) -> None:
        (tmp_path / name).write_bytes(name.encode())
        clock.now, wall.now = clock_now, (tmp_path / name).stat().st_ctime + wall_after_change
        settler.scan(tmp_path)

    drop("early.png", 10.0, 3600.0)  # there at the first scan: from that scan (a downtime is not charged)
    drop("busy.png", 13.0, 2.0)  # dropped at 11 s, while a batch ran: from its drop
    drop("skewed.png", 14.0, 600.0)  # the wall clock jumped ahead: no earlier than the scan before (13 s)
    drop("behind.png", 15.0, -5.0)  # the wall clock went back: no later than the scan that saw it (15 s)
    clock.now = 20.0
    assert {e.name: e.settled_at for e in settler.scan(tmp_path)} == pytest.approx(
        {"early.png": 10.0, "busy.png": 11.0, "skewed.png": 13.0, "behind.png": 15.0})


def test_polling_sleep_is_idle_not_busy(tiny_bundle, samples_dir, tmp_path):
    """Between two batches the service polls while the second group settles (1 s): idle, not busy time."""
    config = InboxConfig(tmp_path / "inbox", tmp_path / "outbox", settle_seconds=1.0, poll_seconds=0.02, batch_size=4)
    config.inbox.mkdir()
    _fill(config.inbox, samples_dir, 3, prefix="first")
    after_first = []

    def sleep(seconds):
        if not after_first and len(list(config.outbox.glob("*.json"))) == 3:  # the first batch is out
            after_first.append(session.totals())
            _fill(config.inbox, samples_dir, 3, prefix="second")
        time.sleep(seconds)

    with dvfs_session("off", deadline_ms=10_000, target="rpi4") as session:
        assert watch_inbox(open_pipeline(tiny_bundle, "cbnet"), config, session=session, max_images=6,
                           sleep=sleep) == 6
    first, last = after_first[0], session.totals()
    idle = last["idle_s"] - first["idle_s"]
    busy = sum(last["time_at_frequency"].values()) - sum(first["time_at_frequency"].values())
    assert last["num_inferences"] == 6 and idle >= 0.9 and busy < idle, (first, last)
    session.idle(1.5)  # idle after the last batch: in the totals (and the summary) at once, not at a next batch
    assert session.totals()["idle_s"] == pytest.approx(last["idle_s"] + 1.5)


def test_classify_with_a_batch_size_runs_each_batch_under_the_policy(tiny_bundle, samples_dir, tmp_path, capsys):
    """Every file arrived when the command began: 20 images in batches of 8 are 20 inferences (a per-inference
    session would count 3), their deadline from the start; the tree is given back; --json stays strict."""
    make_tree(tmp_path / "sys")
    before = snapshot(tmp_path / "sys")
    files = [str(p) for p in sorted(samples_dir.glob("*.png"))[:20]]
    code = main(["--bundle", str(tiny_bundle), "classify", *files, "--pipeline", "branchynet", "--batch-size", "8",
                 "--dvfs", "eenet", "--workload", "burst:20:30000", "--sysfs-root", str(tmp_path / "sys"), "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    payload = strict_json(out.out)
    summary = payload["dvfs"]
    assert len(payload["results"]) == 20 and summary["num_inferences"] == 20 and summary["dvfs"] == "eenet"
    assert summary["deadline_ms"] == 30000 and summary["deadline_misses"] == 0 and summary["method"] == "userspace"
    assert summary["energy_source"] == "modelled" and summary["energy_j_total"] > 0
    assert snapshot(tmp_path / "sys") == before
    code = main(["--bundle", str(tiny_bundle), "classify", *files[:3], "--batch-size", "2", "--dvfs", "performance",
                 "--deadline-ms", "1000", "--sysfs-root", str(tmp_path / "sys")])
    err = capsys.readouterr().err
    assert code == 0 and "classify summary: 3 classified; dvfs performance (userspace); deadline 1000 ms" in err
    assert "(modelled, rpi4)" in err and "1500 MHz" in err


def test_sigterm_stops_the_service_cleanly_with_its_summary(tiny_bundle, samples_dir, tmp_path):
    """A real ``run.py watch`` stopped by SIGTERM once its five inputs are in done/: the tree given back, and the
    summary counts the five inputs it handled (a loop that lost its count on the signal printed none)."""
    make_tree(tmp_path / "sys")
    before = snapshot(tmp_path / "sys")
    w = Watch(tiny_bundle, tmp_path, "--dvfs", "powersave", "--deadline-ms", "5000", "--sysfs-root",
              str(tmp_path / "sys"))
    _fill(w.inbox, samples_dir, 5)
    w.start()
    wait_for(lambda: len(list((tmp_path / "done").glob("*.png"))) == 5,
             what="five inputs in done/")
    wait_for(lambda: json.loads((tmp_path / "state" / "watch-state.json").read_text()).get("processed") == 5,
             what="the state file to count them")  # the batch's last step: the loop is back to polling
    w.process.send_signal(signal.SIGTERM)
    assert w.process.wait(timeout=60) == 0
    assert snapshot(tmp_path / "sys") == before
    log = (tmp_path / "watch.log").read_text()
    assert "watch summary: 5 inputs, 5 classified" in log and "dvfs powersave" in log and "600 MHz" in log, log


def test_a_workload_sets_the_deadline_unless_deadline_ms_does(tiny_bundle, tmp_path, capsys):
    assert workload_options("camera:25", None)["deadline_ms"] == pytest.approx(40.0)
    assert workload_options("burst:64:500", None)["deadline_ms"] == 500.0
    assert workload_options("burst:64:500", 80.0)["deadline_ms"] == 80.0
    assert workload_options(None, None)["deadline_ms"] is None
    with pytest.raises(ConfigError, match="Expected --workload camera:FPS or burst:K:MS"):
        workload_options("burst:64", None)
    arrivals = tmp_path / "arrivals.txt"
    arrivals.write_text("0\n0.5\n")  # a simulator's arrivals file: the service's arrivals are its files
    code = main(["--bundle", str(tiny_bundle), "watch", "--inbox", str(tmp_path / "in"), "--outbox",
                 str(tmp_path / "out"), "--dvfs", "eenet", "--workload", f"arrivals:{arrivals}"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: Expected --workload camera:FPS or burst:K:MS") and "arrivals:" in err
    assert len(err.strip().splitlines()) == 1


def test_totals_under_a_meter_are_measured_and_leave_it_running(tmp_path):
    """``run.py status`` reads the totals after every batch: a meter there must keep measuring."""
    from cbnet_tl.runtime.dvfs.meters import HwmonPowerMeter
    from test_meters import hwmon

    device = hwmon(tmp_path, 0, "ina219", energy1_input=0)
    meter = HwmonPowerMeter(device, interval_s=600)  # no background sample during the test: only the reads below
    session = DvfsSession(None, None, meter, deadline_s=1.0, model=model_for("rpi4"))
    with session:
        (device / "energy1_input").write_text("2000000\n")  # µJ
        first = session.totals()
        (device / "energy1_input").write_text("5000000\n")
        second = session.totals()
    final = session.summary()
    assert (first["energy_j_total"], second["energy_j_total"], final["energy_j_total"]) == (2.0, 5.0, 5.0)
    assert final["energy_source"] == "measured" and "ina219" in final["energy_meter"]
    assert "energy_model" not in final and final["energy_j"] is None  # no inference: no energy per inference


def _serve_options(tmp_path: Path, dvfs: str = "powersave") -> dict:
    return {"dvfs": dvfs, "deadline_ms": 60_000, "sysfs_root": tmp_path / "sys", "target": "rpi4"}


def _in_second_batch(monkeypatch, act) -> list:
    """Calls ``act(session)`` once, inside the first stage of the second batch (the CPU held by the policy); returns
    what the tree's governor and setspeed were then."""
    after_stage, held = DvfsSession.after_stage, []

    def hooked(self, stage, seconds):
        after_stage(self, stage, seconds)
        if self.num_inferences == 8 and not held:  # the first batch of 8 is answered: the second one runs
            policy_dir = self.controller.directory
            held.append(((policy_dir / "scaling_governor").read_text().strip(),
                         int((policy_dir / "scaling_setspeed").read_text())))
            act(self)

    monkeypatch.setattr(DvfsSession, "after_stage", hooked)
    return held


def _inbox_of(tmp_path: Path, samples_dir: Path, count: int) -> tuple:
    config = InboxConfig(tmp_path / "inbox", tmp_path / "outbox", settle_seconds=0.05, poll_seconds=0.02, batch_size=8)
    config.inbox.mkdir()
    return config, _fill(config.inbox, samples_dir, count)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_mid_batch_gives_the_cpu_back_and_loses_nothing(tiny_bundle, samples_dir, tmp_path, monkeypatch,
                                                                 signum):
    """The signal lands inside a stage of the second batch while powersave holds the CPU at 600 MHz: the tree is
    given back, the signal handlers are as they were, the summary is logged, and the inputs not answered wait in
    the inbox; a restart leaves every input in done/ with exactly one result."""
    # as at a terminal: a shell without job control starts background jobs with SIGINT ignored
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _signal_mid_batch(tiny_bundle, samples_dir, tmp_path, monkeypatch, signum)
    finally:
        signal.signal(signal.SIGINT, previous_int)


def _signal_mid_batch(tiny_bundle, samples_dir, tmp_path, monkeypatch, signum) -> None:
    make_tree(tmp_path / "sys")
    before, handlers = snapshot(tmp_path / "sys"), (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT))
    config, names = _inbox_of(tmp_path, samples_dir, 24)
    held = _in_second_batch(monkeypatch, lambda session: os.kill(os.getpid(), signum))
    lines = []
    summary = run_watch(open_pipeline(tiny_bundle, "branchynet"), config, _serve_options(tmp_path), drain=True,
                    log=lines.append)
    assert held == [("userspace", PI_OS_KHZ[0])]  # the service had the CPU when the signal came
    assert snapshot(tmp_path / "sys") == before
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == handlers
    assert summary["num_inputs"] == 8 and summary["num_inferences"] == 8  # the first batch's 8, kept on the signal
    assert len(lines) == 1 and lines[0].startswith("watch summary: 8 inputs, 8 classified") and "600 MHz" in lines[0]
    left = sorted(p.name for p in config.inbox.iterdir())
    assert len(left) == 16  # the second and third batches: not answered, not lost
    assert watch_inbox(open_pipeline(tiny_bundle, "branchynet"), config, drain=True) == 16
    _check_exactly_once(tmp_path, names)


def test_an_error_mid_batch_gives_the_cpu_back(tiny_bundle, samples_dir, tmp_path, monkeypatch):
    """A bug mid-batch ends the service with its traceback, the tree given back and no input lost."""
    make_tree(tmp_path / "sys")
    before, handler = snapshot(tmp_path / "sys"), signal.getsignal(signal.SIGTERM)
    config, names = _inbox_of(tmp_path, samples_dir, 24)

    def fail(session):
        raise RuntimeError("a bug in a stage")

    held = _in_second_batch(monkeypatch, fail)
    with pytest.raises(RuntimeError, match="a bug in a stage"):
        run_watch(open_pipeline(tiny_bundle, "branchynet"), config, _serve_options(tmp_path), drain=True,
              log=lambda line: None)
    assert held == [("userspace", PI_OS_KHZ[0])]
    assert snapshot(tmp_path / "sys") == before and signal.getsignal(signal.SIGTERM) == handler
    done = sorted(p.name for p in (tmp_path / "done").iterdir())
    assert len(done) == 8 and sorted(done + [p.name for p in config.inbox.iterdir()]) == names


def test_bad_inputs_mid_batch_fail_alone_under_dvfs(tiny_bundle, samples_dir, tmp_path):
    """Two broken files inside a batch: they go to failed/, the other images of their batch and the batches after
    it are classified under the policy, only classified images count as inferences, and the tree is given back."""
    make_tree(tmp_path / "sys")
    before = snapshot(tmp_path / "sys")
    config, names = _inbox_of(tmp_path, samples_dir, 12)
    (config.inbox / "img00003.png").write_bytes(b"")  # replaces a good one: the first batch, between good ones
    (config.inbox / "img00010.png").write_text("not an image")
    lines = []
    summary = run_watch(open_pipeline(tiny_bundle, "branchynet"), config, _serve_options(tmp_path, "eenet"), drain=True,
                    log=lines.append)
    assert snapshot(tmp_path / "sys") == before
    assert summary["num_inputs"] == 12 and summary["num_inferences"] == 10 and "12 inputs, 10 classified" in lines[0]
    assert sorted(p.name for p in (tmp_path / "failed").iterdir()) == ["img00003.png", "img00010.png"]
    assert len(list((tmp_path / "done").iterdir())) == 10 and not list(config.inbox.iterdir())
    assert strict_json(config.state_file.read_text())["session"]["num_inferences"] == 10


def test_without_a_policy_nothing_runs_per_stage(tiny_bundle, samples_dir, tmp_path, monkeypatch, capsys):
    """DVFS off: the service's batches and classify's calls reach the pipeline without a stage hook, classify
    without a deadline opens no session at all, and the summary says its energy is modelled at the top."""
    from cbnet_tl.runtime.dvfs import run as dvfs_run
    from cbnet_tl.runtime.pipelines import Pipeline

    hooks, classify = [], Pipeline.classify
    monkeypatch.setattr(Pipeline, "classify", lambda self, images, hook=None: hooks.append(hook) or classify(
        self, images, hook))
    config, _ = _inbox_of(tmp_path, samples_dir, 20)
    lines = []
    summary = run_watch(open_pipeline(tiny_bundle, "branchynet"), config, {"dvfs": "off", "deadline_ms": None},
                    drain=True, log=lines.append)
    assert hooks == [None] * 3 and summary["num_inferences"] == 20 and summary["deadline_ms"] is None
    assert "no deadline" in lines[0] and "(modelled, rpi4, at the top frequency: DVFS off)" in lines[0]

    def no_session(*args, **options):
        raise AssertionError("classify without --dvfs or a deadline opened a DVFS session")

    monkeypatch.setattr(dvfs_run, "dvfs_session", no_session)
    files = [str(p) for p in sorted(samples_dir.glob("*.png"))[:5]]
    assert main(["--bundle", str(tiny_bundle), "classify", *files, "--batch-size", "4"]) == 0, capsys.readouterr().err
    assert hooks[3:] == [None, None]


def test_the_dvfs_options_fail_in_one_line_that_says_what_to_pass(tiny_bundle, tmp_path, capsys):
    with pytest.raises(ConfigError, match="Expected --workload camera:FPS or burst:K:MS"):
        workload_options("camera:fast", 40.0)  # a mistyped workload is refused even when --deadline-ms is given
    with pytest.raises(ConfigError, match=r"Expected --deadline-ms > 0 and finite \(milliseconds\). Received: inf"):
        workload_options(None, float("inf"))
    for extra, message in ((["--dvfs", "eenet"], "error: --dvfs eenet needs a deadline to meet: pass --deadline-ms MS "
                                                  "or --workload camera:FPS|burst:K:MS"),
                           (["--dvfs", "eenet", "--deadline-ms", "0"], "error: Expected --deadline-ms > 0 and finite"),
                           (["--workload", "burst:0:500"], "error: Expected --workload camera:FPS or burst:K:MS"),
                           (["--dvfs", "turbo", "--deadline-ms", "40"], "error: Expected a DVFS policy, one of")):
        code = main(["--bundle", str(tiny_bundle), "watch", "--inbox", str(tmp_path / "in"), "--outbox",
                     str(tmp_path / "out"), *extra])
        err = capsys.readouterr().err
        assert code == 1 and err.startswith(message) and len(err.strip().splitlines()) == 1, err
