"""DVFS per batch on a device: the session hears a batch, tells the policy how many images run each stage,
counts the deadline from the oldest image, and gives the CPU back (a fake cpufreq tree)."""

import pytest

from cbnet_tl.runtime.dvfs.base import PolicyKind
from cbnet_tl.runtime.dvfs.cpufreq import CpufreqController
from cbnet_tl.runtime.dvfs.energy import model_for
from cbnet_tl.runtime.dvfs.policies import parse_policy
from cbnet_tl.runtime.dvfs.session import DvfsSession
from cbnet_tl.runtime.dvfs.static import StaticPolicy
from cbnet_tl.runtime.errors import DvfsError
from test_dvfs import Clock, make_tree

TOP = 1_500_000
STAGES = (("trunk_branch", None, 10e-3), ("main_tail", 8, 6e-3))  # (stage, images, seconds at the top)


def drive_batches(session, clock, khz_now, num=12, waited_s=5e-3):
    for _ in range(num):
        session.begin_batch("branchynet", 32, waited_s=waited_s, queue=((32, 0.1),))
        session.begin_inference("branchynet")
        for stage, count, top_seconds in STAGES:
            session.before_stage(stage, count) if count else session.before_stage(stage)
            seconds = top_seconds * TOP / khz_now()
            clock.now += seconds
            session.after_stage(stage, seconds)
        session.end_inference("mixed")
        clock.now += 0.1  # idle until the next batch


class Recording(StaticPolicy):
    def __init__(self):
        super().__init__(PolicyKind.PERFORMANCE)
        self.events = []

    def on_batch(self, pipeline, num_images, lateness_s, idle_s, queue):
        self.events.append(("batch", num_images, round(lateness_s, 6), queue))
        return self.khz

    def on_batch_stage(self, stage, num_images, elapsed_s):
        self.events.append(("stage", stage, num_images))
        return self.khz

    def on_batch_end(self, latency_s, queue):
        self.events.append(("end", round(latency_s, 6)))
        return self.khz


def on_fake_tree(tmp_path, policy, deadline_s, num):
    """Batches under ``policy`` against a fake cpufreq tree: (summary, tree before, tree after)."""
    d = make_tree(tmp_path)
    before, clock = {p.name: p.read_text() for p in d.iterdir()}, Clock()
    with CpufreqController(tmp_path) as controller:
        session = DvfsSession(policy, controller, model_for("rpi4", controller.frequencies_khz), deadline_s=deadline_s,
                              clock=clock, sleep=clock.sleep)
        with session:
            drive_batches(session, clock, lambda: int((d / "scaling_setspeed").read_text()), num=num)
    return session.summary(), before, {p.name: p.read_text() for p in d.iterdir()}


def test_the_policy_hears_the_batch_and_each_stages_images(tmp_path):
    policy = Recording()
    summary, _, _ = on_fake_tree(tmp_path, policy, 0.05, 1)
    assert policy.events == [("batch", 32, 0.005, ((32, 0.1),)), ("stage", "trunk_branch", 32),
                             ("stage", "main_tail", 8), ("end", 0.021)]
    assert summary["num_inferences"] == 32 and summary["deadline_misses"] == 0
    assert summary["latency_ms_median"] == pytest.approx(21.0)


def test_eenet_per_batch_on_a_fake_tree_slows_down_and_gives_the_cpu_back(tmp_path):
    summary, before, after = on_fake_tree(tmp_path, parse_policy("eenet"), 0.06, 12)
    assert after == before
    assert summary["num_inferences"] == 12 * 32 and summary["deadline_misses"] == 0
    assert set(summary["time_at_frequency"]) > {"1500"}  # it learnt the stages and went below the top


def test_a_batch_needs_images():
    session = DvfsSession(None, None, model_for("rpi4"), deadline_s=1.0)
    with pytest.raises(DvfsError, match="Expected a batch of >= 1 images"):
        session.begin_batch("cbnet", 0)
