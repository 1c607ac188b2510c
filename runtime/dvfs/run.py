"""Run pipelines under a DVFS policy, on the device or against a sysfs tree: ``dvfs_session`` sets up, in order, the
cpufreq controller (which always gives the CPU back), the energy model over the device's OPP list, a meter when the
machine has one, and the session the pipeline calls."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Iterator, Optional, Sequence

from cbnet_tl.runtime.dvfs.cpufreq import CpufreqController
from cbnet_tl.runtime.dvfs.energy import model_for
from cbnet_tl.runtime.dvfs.meters import find_meter
from cbnet_tl.runtime.dvfs.eenet import EENetPolicy
from cbnet_tl.runtime.dvfs.policy import POLICY_CHOICES, Policy, PolicyKind, StaticPolicy
from cbnet_tl.runtime.dvfs.session import DvfsSession
from cbnet_tl.runtime.errors import DvfsError

DEFAULT_STATE_FILE = Path("/run/cbnet-tl/cpufreq-saved.json")


def parse_policy(text: str) -> Optional[Policy]:
    """``off`` → None; ``performance``, ``powersave``, ``fixed:<MHz>``, ``eenet`` → an unbound policy."""
    spec = str(text).strip().lower()
    if spec == "off":
        return None
    if spec in (PolicyKind.PERFORMANCE.value, PolicyKind.POWERSAVE.value):
        return StaticPolicy(PolicyKind(spec))
    if spec == PolicyKind.EENET.value:
        return EENetPolicy()
    if spec.startswith("fixed:") and spec[6:].isdigit() and int(spec[6:]) > 0:
        return StaticPolicy(PolicyKind.FIXED, int(spec[6:]))
    hint = " The oracle needs the whole trace: only `cbnet-tl simulate` offers it." if spec == "oracle" else ""
    raise DvfsError(f"Expected a DVFS policy, one of {list(POLICY_CHOICES)} (e.g. fixed:1000). "
                    f"Received: {text!r}.{hint}")


@contextlib.contextmanager
def dvfs_session(dvfs: str, *, deadline_ms: Optional[float], period_ms: Optional[float] = None,
                 burst: bool = False, sysfs_root: Path = Path("/"), target: str = "rpi4",
                 state_file: Optional[Path] = None, host_meters: Sequence = ()) -> Iterator[DvfsSession]:
    """A ``DvfsSession`` for ``dvfs`` ('off', 'performance', 'powersave', 'fixed:<MHz>', 'eenet'); its arrivals
    periodic (``period_ms``), a burst (``burst``: every image there at the start) or back to back."""
    policy = parse_policy(dvfs)
    if policy is not None and deadline_ms is None:
        raise DvfsError(f"--dvfs {dvfs} needs --deadline-ms: the policy chooses frequencies to meet it")
    for name, value in (("--deadline-ms", deadline_ms), ("--period-ms", period_ms)):
        if value is not None and not value > 0:
            raise DvfsError(f"Expected {name} > 0. Received: {value}")
    deadline_s = math.inf if deadline_ms is None else deadline_ms / 1e3
    period_s = None if period_ms is None else period_ms / 1e3
    meter = find_meter(Path(sysfs_root), host_meters)  # the board's hwmon monitor, else a host's (RAPL)
    if policy is None:
        model = model_for(target)
        with DvfsSession(None, None, meter or model, deadline_s, period_s, model=model, burst=burst) as session:
            yield session
        return
    if state_file is None and Path(sysfs_root) == Path("/"):
        state_file = DEFAULT_STATE_FILE
    with CpufreqController(Path(sysfs_root), state_file=state_file) as controller:
        model = model_for(target, controller.frequencies_khz, controller.transition_latency_s)
        with DvfsSession(policy, controller, meter or model, deadline_s, period_s, model=model, burst=burst) as session:
            yield session
