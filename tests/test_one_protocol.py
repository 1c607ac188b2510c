"""One DVFS protocol, one set of energy books: a run on a board (a fake cpufreq tree, a clock that a switch and a
stage take time on) replayed through ``cbnet-tl simulate``'s driver from the stage times it recorded gives the
board session's own totals, decision for decision."""

from __future__ import annotations

import numpy as np
import pytest

from cbnet_tl.runtime.dvfs.cpufreq import CpufreqController
from cbnet_tl.runtime.dvfs.eenet import EENetPolicy
from cbnet_tl.runtime.dvfs.energy import model_for
from cbnet_tl.runtime.dvfs.session import DvfsSession
from cbnet_tl.toolchain.simulation.replay import Job, replay
from test_dvfs import TOP, Clock, StagePipeline, make_tree

STAGES = ("trunk_branch", "main_tail")
EASY, HARD = [("trunk_branch", 100e-6)], [("trunk_branch", 100e-6), ("main_tail", 300e-6)]


class BoardCpu:
    """A board's CPU on a fake tree: the controller writes the tree, a switch takes ``switch_s`` on the clock, and
    what each stage ran at and for how long is recorded (the board's trace)."""

    def __init__(self, controller, clock, switch_s):
        self.controller, self.clock, self.switch_s = controller, clock, switch_s
        self.frequencies_khz, self.method = controller.frequencies_khz, controller.method
        self.current_khz = self.khz_at_start = TOP
        self.decisions = []

    def set_khz(self, khz):
        self.controller.set_khz(khz)
        self.clock.now += self.switch_s
        self.current_khz = khz
        self.decisions.append(khz)


class RecordingPipeline(StagePipeline):
    def classify(self, images, hook=None):
        result = super().classify(images, hook)
        self.trace.append([(stage, top * TOP / khz, khz) for (stage, top), khz in zip(self.stages, self.used)])
        return result


@pytest.mark.parametrize("switch_us", [10.0, 355.0])
def test_a_board_run_replayed_through_the_simulator_gives_the_boards_totals(tmp_path, switch_us):
    d = make_tree(tmp_path)
    clock, period, deadline = Clock(), 3e-3, 1.5e-3
    pattern = [HARD if i % 4 == 0 or i % 7 == 3 else EASY for i in range(120)]
    with CpufreqController(tmp_path) as controller:
        model = model_for("rpi4", controller.frequencies_khz, switch_us * 1e-6)
        cpu = BoardCpu(controller, clock, model.switch_seconds)
        pipeline = RecordingPipeline("branchynet", STAGES, clock, cpu)
        pipeline.trace = []
        with DvfsSession(EENetPolicy(), cpu, model, deadline, period, clock=clock, sleep=clock.sleep) as board:
            for stages in pattern:
                pipeline.stages = stages
                board.classify_next(pipeline, np.zeros((1, 1)))
    totals = board.totals()
    assert cpu.decisions and set(totals["time_at_frequency"]) != {"1500"}  # eenet did decide something

    # the board's trace: each image's stages, each as seconds at the frequency it ran at (cycles = seconds x kHz)
    frequencies = np.array(model.frequencies_khz, dtype=np.float64)
    durations = np.zeros((len(pattern), len(STAGES), len(frequencies)))
    for j, ran in enumerate(pipeline.trace):
        for stage, seconds, khz in ran:
            durations[j, STAGES.index(stage)] = seconds * khz / frequencies
    jobs = [Job(np.array([j * period]), tuple(int(s in {name for name, *_ in ran}) for s in STAGES))
            for j, ran in enumerate(pipeline.trace)]
    simulated = replay(EENetPolicy(), model, deadline, "branchynet", STAGES, jobs, durations, start_s=0.0)

    assert simulated["decisions"] == cpu.decisions
    assert simulated["energy_j_total"] == pytest.approx(totals["energy_j_total"], rel=1e-9)
    assert simulated["misses"] == totals["deadline_misses"]
    assert simulated["switches"] == totals["switches"]
    assert {k: pytest.approx(v, abs=1e-6) for k, v in simulated["time_at_frequency"].items()} == \
        {k: v for k, v in totals["time_at_frequency"].items() if v > 0}


class TickClock:
    """A clock that moves 40 µs of work at the top frequency at every reading (longer at a lower frequency): the same
    calls in the same order give the same times."""

    def __init__(self):
        self.now, self.cpu = 0.0, None

    def __call__(self):
        self.now += 40e-6 * TOP / (self.cpu.current_khz if self.cpu is not None else TOP)
        return self.now

    def sleep(self, seconds):
        self.now += seconds


@pytest.mark.parametrize("period_s", [None, 2e-3])
def test_eval_and_classify_make_the_same_decisions_at_batch_one(tiny_bundle, mnist_dir, tmp_path, period_s):
    """`cbnet-tl eval --dvfs eenet` (evaluation.classify_stream over the test arrays) and `run.py classify --dvfs
    eenet` (classify_paths over the same images as files) on one fake cpufreq tree with the same clock and the same
    arrivals: the same frequency, written to the tree, at every decision."""
    from PIL import Image

    from cbnet_tl.runtime.api import classify_paths, open_pipeline
    from cbnet_tl.toolchain.analysis.evaluation import classify_stream, load_test_split

    _, test = load_test_split(tiny_bundle, mnist_dir, None)
    images = test.images[:40]
    paths = []
    for k, image in enumerate(images):
        paths.append(tmp_path / f"{k:03d}.png")
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(paths[-1])
    pipeline = open_pipeline(tiny_bundle, "branchynet")
    decisions, labels = [], []
    for run in ("eval", "classify"):
        root = tmp_path / run
        make_tree(root)
        clock = TickClock()
        with CpufreqController(root) as controller:
            model = model_for("rpi4", controller.frequencies_khz, 10e-6)
            cpu = clock.cpu = BoardCpu(controller, clock, 0.0)
            with DvfsSession(EENetPolicy(), cpu, model, 0.6e-3, period_s, clock=clock, sleep=clock.sleep) as session:
                if run == "eval":
                    labels.append(classify_stream(pipeline, images, session, 1)[0].tolist())
                else:
                    labels.append([r["label"] for r in classify_paths(pipeline, paths, session=session)])
        decisions.append(cpu.decisions)
    assert labels[0] == labels[1]
    assert decisions[0] == decisions[1]
    if period_s is not None:  # idle gaps: eenet runs slower and speeds up again (back to back it races at the top)
        assert len(set(decisions[0])) >= 2
