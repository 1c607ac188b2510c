"""Run a pipeline image by image under a DVFS policy, on the device or against a sysfs tree.

One function sets everything up in the right order: the cpufreq controller (which always gives the
CPU back), the energy model over the device's OPP list, a meter when the machine has one, and the
session that the pipeline calls between stages.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from cbnet_tl.runtime.cpufreq import CpufreqController
from cbnet_tl.runtime.dvfs import parse_policy
from cbnet_tl.runtime.dvfs_session import DvfsSession
from cbnet_tl.runtime.energy import model_for
from cbnet_tl.runtime.errors import DvfsError
from cbnet_tl.runtime.meters import find_meter

DEFAULT_STATE_FILE = Path("/run/cbnet-tl/cpufreq-saved.json")


@contextlib.contextmanager
def dvfs_session(dvfs: str, *, deadline_ms: Optional[float], period_ms: Optional[float] = None,
                 sysfs_root: Path = Path("/"), target: str = "rpi4",
                 state_file: Optional[Path] = None) -> Iterator[DvfsSession]:
    """A ``DvfsSession`` for ``dvfs`` ('off', 'performance', 'powersave', 'fixed:<MHz>', 'eenet')."""
    policy = parse_policy(dvfs)
    if policy is not None and deadline_ms is None:
        raise DvfsError(f"--dvfs {dvfs} needs --deadline-ms: the policy chooses frequencies to meet it")
    for name, value in (("--deadline-ms", deadline_ms), ("--period-ms", period_ms)):
        if value is not None and not value > 0:
            raise DvfsError(f"Expected {name} > 0. Received: {value}")
    deadline_s = math.inf if deadline_ms is None else deadline_ms / 1e3
    period_s = None if period_ms is None else period_ms / 1e3
    meter = find_meter(Path(sysfs_root))
    if policy is None:
        model = model_for(target)
        with DvfsSession(None, None, meter or model, deadline_s, period_s, model=model) as session:
            yield session
        return
    if state_file is None and Path(sysfs_root) == Path("/"):
        state_file = DEFAULT_STATE_FILE
    with CpufreqController(Path(sysfs_root), state_file=state_file) as controller:
        model = model_for(target, controller.frequencies_khz, controller.transition_latency_s)
        with DvfsSession(policy, controller, meter or model, deadline_s, period_s, model=model) as session:
            yield session


def classify_each(pipeline, images: np.ndarray, session: DvfsSession) -> tuple:
    """Classify one image at a time (one inference each), waiting for periodic arrivals."""
    labels, paths = [], []
    for image in images:
        session.wait_for_arrival()
        result = pipeline.classify(image, hook=session)
        labels.append(int(result.labels[0]))
        paths.append(result.paths[0])
    return np.asarray(labels), paths


def trace_of(pipeline, images: np.ndarray, repeats: int = 3) -> list:
    """Per-image stage times, the input of ``simulate``: ``[("host", s), (stage, s), …]`` per image.

    "host" is the pre/post-processing, gate and softmax time outside the model calls. The whole set is
    run ``repeats`` times, one pass after another, and each stage of each image keeps its median over
    the passes. A model's work does not depend on the pixels, so what varies between runs of one image
    is this (shared) machine's noise, and that comes in bursts: repeats of one image taken back to back
    fall into the same burst, passes far apart in time do not. The path is the same in every pass.
    """
    if repeats < 1:
        raise ValueError(f"Expected repeats >= 1. Received: {repeats}")
    passes = []
    for _ in range(repeats):
        runs = []
        for image in images:
            result = pipeline.classify(image)
            stages = list(result.stage_seconds.items())
            runs.append([("host", max(0.0, result.seconds - sum(s for _, s in stages)))] + stages)
        passes.append(runs)
    trace = []
    for i, first in enumerate(passes[0]):
        names = [name for name, _ in first]
        if any([name for name, _ in runs[i]] != names for runs in passes[1:]):
            raise DvfsError(f"Image {i} took different paths in different passes; expected a deterministic pipeline")
        trace.append([(name, float(np.median([runs[i][j][1] for runs in passes]))) for j, name in enumerate(names)])
    return trace
