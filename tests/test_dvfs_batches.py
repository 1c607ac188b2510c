"""DVFS per batch on a device: the session hears a batch, tells the policy how many images run each stage,
counts the deadline from the oldest image and each image's latency from its own arrival, and gives the CPU
back (a fake cpufreq tree)."""

import numpy as np
import pytest

from cbnet_tl.runtime.dvfs.cpufreq import CpufreqController
from cbnet_tl.runtime.dvfs.energy import model_for
from cbnet_tl.runtime.dvfs.run import parse_policy
from cbnet_tl.runtime.dvfs.session import DvfsSession
from cbnet_tl.runtime.errors import DvfsError
from test_dvfs import Clock, Recorder, StagePipeline, TreeCpu, make_tree

STAGES = [("trunk_branch", 10e-3, 32), ("main_tail", 6e-3, 8)]  # (stage, seconds at the top, images)


def on_fake_tree(tmp_path, policy, deadline_s, num, waits=(5e-3,) * 32):
    """Batches of 32 under ``policy`` against a fake cpufreq tree, each with one batch of 32 queued behind it and
    0.1 s idle after it: (summary, tree before, tree after)."""
    d = make_tree(tmp_path)
    before, clock = {p.name: p.read_text() for p in d.iterdir()}, Clock()
    with CpufreqController(tmp_path) as controller:
        session = DvfsSession(policy, controller, model_for("rpi4", controller.frequencies_khz), deadline_s=deadline_s,
                              burst=True, clock=clock, sleep=clock.sleep)
        pipeline = StagePipeline("branchynet", ("trunk_branch", "main_tail"), clock, TreeCpu(d))
        pipeline.stages = STAGES
        with session:
            for _ in range(num):
                session.classify_batch(pipeline, np.zeros((32, 1)), list(waits), [(32, 0.0)])
                session.idle(0.1)
                clock.now += 0.1
    return session.summary(), before, {p.name: p.read_text() for p in d.iterdir()}


def test_the_policy_hears_the_batch_and_each_stages_images(tmp_path):
    policy = Recorder()
    summary, _, _ = on_fake_tree(tmp_path, policy, 0.05, 1, waits=[5e-3] + [1e-3] * 31)
    assert policy.events == [("batch", 32, 0.005, ((32, 0.05),)), ("stage", "trunk_branch", 32),
                             ("done", "trunk_branch", 32), ("stage", "main_tail", 8), ("done", "main_tail", 8),
                             ("end",)]
    assert summary["num_inferences"] == 32 and summary["deadline_misses"] == 0 and summary["num_batches"] == 1
    # each image from its own arrival (1 ms + 16 ms of stages), not from the oldest's (5 ms + 16 ms)
    assert summary["latency_ms_median"] == pytest.approx(17.0)


def test_eenet_per_batch_on_a_fake_tree_slows_down_and_gives_the_cpu_back(tmp_path):
    summary, before, after = on_fake_tree(tmp_path, parse_policy("eenet"), 0.06, 12)
    assert after == before
    assert summary["num_inferences"] == 12 * 32 and summary["deadline_misses"] == 0
    assert set(summary["time_at_frequency"]) > {"1500"}  # it learnt the stages and went below the top


def test_a_batch_needs_images():
    session = DvfsSession(None, None, model_for("rpi4"), deadline_s=1.0)
    with pytest.raises(DvfsError, match="Expected a batch of >= 1 images"):
        session.classify_batch(None, np.zeros((0, 1)), [])
    with pytest.raises(DvfsError, match="Expected a batch of >= 1 images"):
        session.classify_batch(None, np.zeros((1, 1)), [-1.0])
