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
