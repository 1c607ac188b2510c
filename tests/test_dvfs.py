"""DVFS policies as pure decision objects, and DvfsSession on a fake cpufreq tree with a fake clock."""

from pathlib import Path

import pytest

from cbnet_tl.runtime.dvfs.cpufreq import CPUFREQ_DIR, CpufreqController
from cbnet_tl.runtime.dvfs.energy import model_for
from cbnet_tl.runtime.dvfs.meters import EnergyReading
from cbnet_tl.runtime.dvfs.policies import (
    DvfsContext,
    EENetPolicy,
    StaticPolicy,
    parse_policy,
)
from cbnet_tl.runtime.dvfs.session import DvfsSession
from cbnet_tl.runtime.errors import DvfsError

TOP = 1500000


def context(deadline_s, period_s=None, switch_seconds=None):
    return DvfsContext(model_for("rpi4", switch_seconds=switch_seconds), deadline_s, period_s)


def run(policy, stages, lateness=0.0, idle=0.0, slow=1.0, pipeline="cbnet"):
    """One inference through the policy, as a driver would: returns (frequencies used, latency).
    Switches inside the inference take the model's switch time; the one at the end falls in the idle gap."""
    switch_s = policy.context.model.switch_seconds
    previous = getattr(policy, "_current", None)
    used, current = [], policy.on_begin(pipeline, lateness, idle)
    elapsed = lateness + (switch_s if previous is not None and current != previous else 0.0)
    for stage, top_seconds in stages:
        chosen = policy.on_stage(stage, elapsed)
        elapsed += switch_s if chosen != current else 0.0
        current = chosen
        seconds = top_seconds * slow * TOP / current
        policy.on_stage_done(stage, seconds, current)
        used.append(current)
        elapsed += seconds
    policy.on_end("path", elapsed)
    return used, elapsed


def test_parse_policy():
    assert parse_policy("off") is None
    assert isinstance(parse_policy("performance"), StaticPolicy) and parse_policy("performance").name == "performance"
    assert parse_policy(" Fixed:1000 ").name == "fixed:1000"
    assert isinstance(parse_policy("eenet"), EENetPolicy)
    for bad in ("fixed:abc", "fixed:0", "turbo", ""):
        with pytest.raises(DvfsError, match=r"Expected a DVFS policy, one of \['off', 'performance'"):
            parse_policy(bad)
    with pytest.raises(DvfsError, match="only `cbnet-tl simulate` offers it"):
        parse_policy("oracle")


def test_static_policies():
    for spec, khz in (("performance", TOP), ("powersave", 600000), ("fixed:750", 750000)):
        policy = parse_policy(spec)
        policy.bind(context(1e-3))
        assert run(policy, [("autoencoder", 1e-4), ("branch", 1e-4)])[0] == [khz, khz]
    with pytest.raises(DvfsError, match=r"\[600, 750, 1000, 1500\] MHz. Received: fixed:900"):
        parse_policy("fixed:900").bind(context(1e-3))


CBNET = [("autoencoder", 70e-6), ("branch", 30e-6)]


def test_eenet_warms_up_at_the_top_then_races_to_idle_back_to_back():
    policy = EENetPolicy(warmup=16)
    policy.bind(context(deadline_s=1e-3))  # 10x slack, but back to back idle power dominates
    assert all(run(policy, CBNET)[0] == [TOP, TOP] for _ in range(16))
    assert all(run(policy, CBNET)[0] == [TOP, TOP] for _ in range(50))


def test_eenet_picks_the_lowest_frequency_that_meets_the_deadline_with_idle_gaps():
    loose = EENetPolicy()
    loose.bind(context(deadline_s=1e-3, period_s=2e-3))
    tight = EENetPolicy()
    tight.bind(context(deadline_s=200e-6, period_s=1e-3))  # 100 µs at the top: 750 MHz would be exactly 200
    for _ in range(80):
        loose_used, _ = run(loose, CBNET, idle=1e-3)
        tight_used, latency = run(tight, CBNET, idle=1e-3)
        assert latency <= 200e-6
    assert loose_used == [600000, 600000]
    assert tight_used == [1000000, 1000000]


BRANCHYNET_EASY = [("trunk_branch", 100e-6)]
BRANCHYNET_HARD = [("trunk_branch", 100e-6), ("main_tail", 300e-6)]


def test_eenet_speeds_up_the_tail_once_the_branch_did_not_exit():
    policy = EENetPolicy()
    policy.bind(context(deadline_s=600e-6, period_s=2e-3, switch_seconds=10e-6))
    for i in range(100):
        used, latency = run(policy, BRANCHYNET_HARD if i % 5 == 0 else BRANCHYNET_EASY, idle=1e-3,
                            pipeline="branchynet")
        assert latency <= 600e-6
    # at one frequency the hard path needs 1500 MHz; slow trunk + fast tail pays for its two switches
    assert run(policy, BRANCHYNET_EASY, idle=1e-3, pipeline="branchynet")[0] == [600000]
    assert run(policy, BRANCHYNET_HARD, idle=1e-3, pipeline="branchynet")[0] == [600000, TOP]


def test_eenet_does_not_switch_when_the_switch_costs_too_much():
    policy = EENetPolicy()
    policy.bind(context(deadline_s=600e-6, period_s=2e-3))  # 355 µs switch: no time for it
    for i in range(100):
        run(policy, BRANCHYNET_HARD if i % 5 == 0 else BRANCHYNET_EASY, idle=1e-3, pipeline="branchynet")
    assert run(policy, BRANCHYNET_HARD, idle=1e-3, pipeline="branchynet")[0] == [TOP, TOP]


def test_eenet_raises_its_margin_after_misses_and_when_late():
    policy = EENetPolicy()
    policy.bind(context(deadline_s=1e-3, period_s=2e-3))
    cbnet = [("autoencoder", 200e-6), ("branch", 100e-6)]  # 750 µs at 600 MHz
    for _ in range(40):
        run(policy, cbnet, idle=1e-3)
    assert run(policy, cbnet, idle=1e-3)[0] == [600000, 600000]
    assert run(policy, cbnet, lateness=700e-6, idle=0.0)[0] == [TOP, TOP]  # arrived late: hurry
    _, latency = run(policy, cbnet, idle=1e-3, slow=1.5)  # the device got slower: a miss
    assert latency > 1e-3 and policy.margin > policy.min_margin
    used = [run(policy, cbnet, idle=1e-3, slow=1.5)[0][0] for _ in range(60)]
    assert used[-1] > 600000


# DvfsSession ---------------------------------------------------------------------------------------

def make_tree(root: Path) -> Path:
    d = root / CPUFREQ_DIR / "policy0"
    d.mkdir(parents=True)
    for name, value in {"scaling_available_frequencies": "600000 750000 1000000 1500000",
                        "scaling_available_governors": "ondemand userspace performance",
                        "scaling_governor": "ondemand", "scaling_setspeed": "<unsupported>",
                        "scaling_cur_freq": 600000, "scaling_min_freq": 600000, "scaling_max_freq": 1500000,
                        "cpuinfo_min_freq": 600000, "cpuinfo_max_freq": 1500000}.items():
        (d / name).write_text(f"{value}\n")
    return d


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def drive(session, clock, khz_now, num=40, stages=CBNET):
    for _ in range(num):
        session.wait_for_arrival()
        session.begin_inference("cbnet")
        for stage, top_seconds in stages:
            session.before_stage(stage)
            seconds = top_seconds * TOP / khz_now()
            clock.now += seconds
            session.after_stage(stage, seconds)
        session.end_inference("ae+branch")
        clock.now += 5e-6  # the caller's own work between inferences


def test_session_applies_eenet_on_a_fake_tree_and_gives_it_back(tmp_path):
    d = make_tree(tmp_path)
    before = {p.name: p.read_text() for p in d.iterdir()}
    clock = Clock()
    with CpufreqController(tmp_path) as controller:
        model = model_for("rpi4", controller.frequencies_khz)
        with DvfsSession(parse_policy("eenet"), controller, model, deadline_s=1e-3, period_s=2e-3,
                         clock=clock, sleep=clock.sleep) as session:
            drive(session, clock, lambda: int((d / "scaling_setspeed").read_text()))
        summary = session.summary()
        assert (d / "scaling_setspeed").read_text().strip() == "600000"
    assert {p.name: p.read_text() for p in d.iterdir()} == before
    assert summary["dvfs"] == "eenet" and summary["method"] == "userspace"
    assert summary["num_inferences"] == 40 and summary["deadline_misses"] == 0 and summary["miss_rate"] == 0
    assert 0.1 < summary["latency_ms_median"] <= summary["latency_ms_p95"] < 1.0
    assert summary["energy_source"] == "modelled" and summary["energy_j"] > 2.7 * 2e-3
    assert set(summary["time_at_frequency"]) == {"600", "1500"} and summary["switches"] >= 1


def test_session_without_dvfs_still_reports_latency():
    clock = Clock()
    session = DvfsSession(None, None, model_for("rpi4"), deadline_s=120e-6, clock=clock)
    drive(session, clock, lambda: TOP, num=10)
    summary = session.summary()
    assert summary["dvfs"] == "off" and summary["method"] is None
    assert summary["latency_ms_median"] == pytest.approx(0.1)
    assert summary["deadline_misses"] == 0 and "uncontrolled" in summary["time_at_frequency"]
    assert "not controlled" in summary["energy_note"]


class FakeMeter:
    def start(self, background=True):
        self.started = True

    def stop(self):
        return EnergyReading(joules=0.5, seconds=1.0, meter="hwmon ina219 (hwmon0) channel 1", num_samples=100)


def test_session_with_a_meter_reports_measured_energy():
    clock = Clock()
    with DvfsSession(None, None, FakeMeter(), deadline_s=1e-3, clock=clock) as session:
        drive(session, clock, lambda: TOP, num=10)
    summary = session.summary()
    assert summary["energy_source"] == "measured" and summary["energy_j"] == pytest.approx(0.05)
    assert "ina219" in summary["energy_meter"]


def test_session_refuses_to_run_a_policy_without_control(tmp_path):
    with pytest.raises(DvfsError, match="A DVFS policy needs a CpufreqController"):
        DvfsSession(parse_policy("eenet"), None, model_for("rpi4"), deadline_s=1e-3)
    make_tree(tmp_path)
    controller = CpufreqController(tmp_path)
    with pytest.raises(DvfsError, match=r"model_for\(target, controller.frequencies_khz\)"):
        DvfsSession(parse_policy("eenet"), controller, model_for("rpi4", [600000, 1200000]), deadline_s=1e-3)
    with pytest.raises(DvfsError, match="Expected a deadline > 0 s. Received: 0"):
        DvfsSession(parse_policy("performance"), controller, model_for("rpi4"), deadline_s=0)
