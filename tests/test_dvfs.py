"""DVFS policies on the one protocol (a batch of one is a batch), driven by the device's DvfsSession with a fake
clock: on an in-memory CPU whose switches take the model's switch time, and on a fake cpufreq tree."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from cbnet_tl.runtime.dvfs.cpufreq import CPUFREQ_DIR, CpufreqController
from cbnet_tl.runtime.dvfs.eenet import EENetPolicy
from cbnet_tl.runtime.dvfs.energy import model_for
from cbnet_tl.runtime.dvfs.meters import EnergyReading
from cbnet_tl.runtime.dvfs.policy import Policy, StaticPolicy
from cbnet_tl.runtime.classify import workload_options
from cbnet_tl.runtime.dvfs.run import parse_policy
from cbnet_tl.runtime.dvfs.session import DvfsSession
from cbnet_tl.runtime.errors import ConfigError, DvfsError

TOP = 1500000


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


class Cpu:
    """The CPU's frequency in memory: a switch takes ``switch_s`` on the clock."""

    method = None

    def __init__(self, clock, model):
        self.clock, self.frequencies_khz, self.switch_s = clock, model.frequencies_khz, model.switch_seconds
        self.current_khz = self.khz_at_start = model.top_khz

    def set_khz(self, khz):
        assert khz in self.frequencies_khz
        self.clock.now += self.switch_s if khz != self.current_khz else 0.0
        self.current_khz = khz


class StagePipeline:
    """Stands for a pipeline: each ``classify`` runs ``self.stages`` ((stage, seconds at the top) pairs, or (stage,
    seconds, images that run it)), each taking its time × TOP / the CPU's frequency × ``slow`` on the clock, and
    records the frequency of each."""

    def __init__(self, name, models, clock, cpu, options=None):
        self.name, self.spec, self.options = name, SimpleNamespace(models=tuple(models)), options or {}
        self.clock, self.cpu, self.stages, self.slow, self.used = clock, cpu, [], 1.0, []

    def classify(self, images, hook=None):
        self.used = []
        for stage, top_seconds, *count in self.stages:
            if hook is not None:
                hook.before_stage(stage, count[0] if count else len(images))
            khz = self.cpu.current_khz if hook is not None else TOP
            self.used.append(khz)
            seconds = top_seconds * self.slow * TOP / khz
            self.clock.now += seconds
            if hook is not None:
                hook.after_stage(stage, seconds)
        return SimpleNamespace(labels=np.zeros(len(images), dtype=int), paths=["path"] * len(images))


def setup(policy, deadline_s, models, period_s=None, switch_seconds=None, burst=False, name="cbnet"):
    clock = Clock()
    model = model_for("rpi4", switch_seconds=switch_seconds)
    cpu = Cpu(clock, model)
    session = DvfsSession(policy, cpu, model, deadline_s, period_s, burst=burst, clock=clock, sleep=clock.sleep)
    session.__enter__()
    return session, StagePipeline(name, models, clock, cpu), clock


def run(session, pipeline, stages, waited=0.0, idle=0.0, slow=1.0):
    """One image through the session, ``waited`` s after it arrived, after ``idle`` s of idle board: (frequencies
    used per stage, latency)."""
    session.idle(idle)
    pipeline.clock.now += idle
    pipeline.stages, pipeline.slow = stages, slow
    start = pipeline.clock.now
    session.classify_batch(pipeline, np.zeros((1, 1)), [waited])
    return pipeline.used, pipeline.clock.now - start + waited


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


def test_workload_options_say_when_images_arrive():
    assert workload_options(None, 20.0) == {"deadline_ms": 20.0, "period_ms": None, "burst": False}
    assert workload_options("camera:25", None) == {"deadline_ms": 40.0, "period_ms": 40.0, "burst": False}
    assert workload_options("camera:25", 10.0)["deadline_ms"] == 10.0
    assert workload_options("burst:64:500", None) == {"deadline_ms": 500.0, "period_ms": None, "burst": True}
    for bad in ("camera", "camera:0", "burst:0:5", "burst:4", "arrivals:f.txt", "webcam:30"):
        with pytest.raises(ConfigError, match="Expected --workload camera:FPS or burst:K:MS"):
            workload_options(bad, None)
    with pytest.raises(ConfigError, match="give one of them"):
        workload_options("camera:30", None, period_ms=10.0)
    with pytest.raises(ConfigError, match="--deadline-ms > 0"):
        workload_options(None, -1.0)


CBNET_MODELS = ("autoencoder", "branch")
CBNET = [("autoencoder", 70e-6), ("branch", 30e-6)]


def test_static_policies():
    for spec, khz in (("performance", TOP), ("powersave", 600000), ("fixed:750", 750000)):
        session, pipeline, _ = setup(parse_policy(spec), 1e-3, CBNET_MODELS)
        assert run(session, pipeline, CBNET)[0] == [khz, khz]
    with pytest.raises(DvfsError, match=r"\[600, 750, 1000, 1500\] MHz. Received: fixed:900"):
        setup(parse_policy("fixed:900"), 1e-3, CBNET_MODELS)


def test_eenet_races_to_idle_back_to_back():
    """Back to back there is no idle time to fill: a slower stage costs the whole board's power for longer, and on
    the rpi4 model the top frequency does a cycle for the least energy."""
    session, pipeline, _ = setup(EENetPolicy(), 1e-3, CBNET_MODELS)  # 10x slack
    assert session.context.back_to_back
    assert all(run(session, pipeline, CBNET)[0] == [TOP, TOP] for _ in range(50))


def test_eenet_picks_the_lowest_frequency_that_meets_the_deadline_with_idle_gaps():
    loose, loose_pipe, _ = setup(EENetPolicy(), 1e-3, CBNET_MODELS, period_s=2e-3)
    tight, tight_pipe, _ = setup(EENetPolicy(), 200e-6, CBNET_MODELS, period_s=1e-3, switch_seconds=10e-6)
    assert not loose.context.back_to_back
    for _ in range(40):
        loose_used, _ = run(loose, loose_pipe, CBNET, idle=1e-3)
        tight_used, latency = run(tight, tight_pipe, CBNET, idle=1e-3)
        assert latency <= 200e-6
    assert loose_used == [600000, 600000]
    assert tight_used == [1000000, 1000000]  # 100 µs at the top; 750 MHz is exactly 200 µs: no room for a margin
    assert tight.num_misses == 0


BRANCHYNET_MODELS = ("trunk_branch", "main_tail")
BRANCHYNET_EASY = [("trunk_branch", 100e-6)]
BRANCHYNET_HARD = [("trunk_branch", 100e-6), ("main_tail", 300e-6)]


def test_eenet_learns_the_exit_share_from_stages_no_image_reached():
    """An image that exits early never calls the tail: the session still tells the policy the tail ran 0 images,
    so the share that goes on is learned (1 in 5 here), not stuck at its prior of 1."""
    session, pipeline, _ = setup(EENetPolicy(), 600e-6, BRANCHYNET_MODELS, period_s=2e-3, name="branchynet")
    for i in range(100):
        run(session, pipeline, BRANCHYNET_HARD if i % 5 == 0 else BRANCHYNET_EASY, idle=1e-3)
    assert session.policy._pipelines["branchynet"].share("main_tail") == pytest.approx(0.2, abs=0.05)


def test_eenet_runs_the_trunk_slow_and_the_tail_fast_once_the_branch_did_not_exit():
    session, pipeline, _ = setup(EENetPolicy(), 600e-6, BRANCHYNET_MODELS, period_s=2e-3, switch_seconds=10e-6,
                                 name="branchynet")
    for i in range(100):
        _, latency = run(session, pipeline, BRANCHYNET_HARD if i % 5 == 0 else BRANCHYNET_EASY, idle=1e-3)
        assert latency <= 600e-6
    easy, hard = run(session, pipeline, BRANCHYNET_EASY, idle=1e-3)[0], run(session, pipeline, BRANCHYNET_HARD,
                                                                           idle=1e-3)[0]
    assert easy[0] < TOP and hard[0] < hard[1] == TOP  # the tail's 300 µs needs the top; the trunk need not


def test_eenet_does_not_switch_when_the_switch_takes_the_slack():
    session, pipeline, _ = setup(EENetPolicy(), 600e-6, BRANCHYNET_MODELS, period_s=2e-3, name="branchynet")
    assert session.model.switch_seconds > 300e-6  # rpi4's switch: longer than the hard path's slack
    for i in range(100):
        run(session, pipeline, BRANCHYNET_HARD if i % 5 == 0 else BRANCHYNET_EASY, idle=1e-3)
    assert run(session, pipeline, BRANCHYNET_HARD, idle=1e-3)[0] == [TOP, TOP]
    assert session.num_misses == 0


def test_eenet_hurries_when_late_and_raises_its_margin_after_a_miss():
    session, pipeline, _ = setup(EENetPolicy(), 1e-3, CBNET_MODELS, period_s=2e-3)
    cbnet = [("autoencoder", 200e-6), ("branch", 100e-6)]  # 750 µs at 600 MHz
    for _ in range(40):
        run(session, pipeline, cbnet, idle=1e-3)
    assert run(session, pipeline, cbnet, idle=1e-3)[0] == [600000, 600000]
    assert run(session, pipeline, cbnet, waited=600e-6)[0][0] > 600000  # arrived late: hurry
    assert [run(session, pipeline, cbnet, idle=1e-3)[0] for _ in range(10)][-1] == [600000, 600000]  # back, in a gap
    _, latency = run(session, pipeline, cbnet, idle=1e-3, slow=1.5)  # the device got slower: a miss
    assert latency > 1e-3 and session.policy.margin > session.policy.min_margin
    used = [run(session, pipeline, cbnet, idle=1e-3, slow=1.5)[0][0] for _ in range(60)]
    assert used[-1] > 600000


class Recorder(Policy):
    """Performance, recording every event it hears."""

    name = "recorder"

    def __init__(self):
        self.events = []

    def on_batch(self, pipeline, num_images, lateness_s, idle_s, queue):
        self.events.append(("batch", num_images, round(lateness_s, 9), queue))
        return self.context.model.top_khz

    def on_stage(self, stage, num_images, elapsed_s):
        self.events.append(("stage", stage, num_images))
        return self.context.model.top_khz

    def on_stage_done(self, stage, num_images, seconds, khz):
        self.events.append(("done", stage, num_images))

    def on_end(self, latency_s):
        self.events.append(("end",))
        return self.context.model.top_khz


def test_the_policy_hears_every_stage_in_order_with_zero_for_those_no_image_reached():
    session, pipeline, _ = setup(Recorder(), 1e-3, ("a", "b", "c"))
    run(session, pipeline, [("a", 1e-5)], waited=2e-4)
    assert session.policy.events == [("batch", 1, 2e-4, ()), ("stage", "a", 1), ("done", "a", 1), ("stage", "b", 0),
                                     ("done", "b", 0), ("stage", "c", 0), ("done", "c", 0), ("end",)]


def test_classify_next_periodic_burst_and_back_to_back():
    images = np.zeros((6, 1))
    # periodic: each image waits for its arrival; the time waited is idle
    session, pipeline, clock = setup(Recorder(), 1e-3, ("a",), period_s=1e-3)
    pipeline.stages = [("a", 1e-4)]
    for k in range(3):
        session.classify_next(pipeline, images[k:k + 1])
    assert [e[2] for e in session.policy.events if e[0] == "batch"] == [0.0, 0.0, 0.0]
    assert session.idle_seconds == pytest.approx(2 * 0.9e-3) and clock.now == pytest.approx(2.1e-3)
    with pytest.raises(DvfsError, match="one image at a time"):
        session.classify_next(pipeline, images[:2])
    # a burst: every image there at the start, the rest queued behind each batch
    session, pipeline, _ = setup(Recorder(), 1e-3, ("a",), burst=True)
    pipeline.stages = [("a", 1e-4)]
    for start in range(0, 6, 2):
        session.classify_next(pipeline, images[start:start + 2], behind=4 - start)
    batches = [e for e in session.policy.events if e[0] == "batch"]
    assert [b[2] for b in batches] == pytest.approx([0.0, 1e-4, 2e-4])
    assert [len(b[3]) for b in batches] == [2, 1, 0] and batches[0][3][0] == pytest.approx((2, 1e-3))
    # back to back: each batch arrives when the CPU takes it
    session, pipeline, _ = setup(Recorder(), 1e-3, ("a",))
    pipeline.stages = [("a", 1e-4)]
    for start in range(0, 6, 2):
        session.classify_next(pipeline, images[start:start + 2], behind=4 - start)
    assert [e[2:] for e in session.policy.events if e[0] == "batch"] == [(0.0, ())] * 3


# DvfsSession on a fake cpufreq tree ---------------------------------------------------------------

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


class TreeCpu:
    """What the stage pipeline reads of a fake tree: the frequency the controller wrote."""

    def __init__(self, d):
        self.d = d

    @property
    def current_khz(self):
        text = (self.d / "scaling_setspeed").read_text().strip()
        return int(text) if text.isdigit() else TOP


def drive(session, pipeline, num=40, stages=CBNET):
    pipeline.stages = stages
    for _ in range(num):
        session.classify_next(pipeline, np.zeros((1, 1)))
        pipeline.clock.now += 5e-6  # the caller's own work between inferences


def test_session_applies_eenet_on_a_fake_tree_and_gives_it_back(tmp_path):
    d = make_tree(tmp_path)
    before = {p.name: p.read_text() for p in d.iterdir()}
    clock = Clock()
    with CpufreqController(tmp_path) as controller:
        model = model_for("rpi4", controller.frequencies_khz)
        with DvfsSession(parse_policy("eenet"), controller, model, deadline_s=1e-3, period_s=2e-3,
                         clock=clock, sleep=clock.sleep) as session:
            drive(session, StagePipeline("cbnet", CBNET_MODELS, clock, TreeCpu(d)))
        summary = session.summary()
        assert (d / "scaling_setspeed").read_text().strip() == "600000"
    assert {p.name: p.read_text() for p in d.iterdir()} == before
    assert summary["dvfs"] == "eenet" and summary["method"] == "userspace"
    assert summary["num_inferences"] == 40 and summary["deadline_misses"] == 0 and summary["miss_rate"] == 0
    assert 0.1 < summary["latency_ms_median"] <= summary["latency_ms_p95"] < 1.0
    assert summary["energy_source"] == "modelled" and summary["energy_j_total"] > 2.7 * 39 * 2e-3  # idle at least
    assert set(summary["time_at_frequency"]) == {"600", "1500"} and summary["switches"] >= 1


def test_session_without_dvfs_still_reports_latency():
    clock = Clock()
    session = DvfsSession(None, None, model_for("rpi4"), deadline_s=120e-6, clock=clock)
    drive(session, StagePipeline("cbnet", CBNET_MODELS, clock, None), num=10)
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
        drive(session, StagePipeline("cbnet", CBNET_MODELS, clock, None), num=10)
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
