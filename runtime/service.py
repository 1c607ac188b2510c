"""What the systemd service needs besides the inbox: ``run.py watch`` under a DVFS session, ``run.py status`` and
``run.py dvfs-grant``.

    python3 run.py watch --inbox /opt/cbnet-tl/inbox --outbox /opt/cbnet-tl/outbox --dvfs eenet --workload burst:64:500
    python3 run.py status --inbox /opt/cbnet-tl/inbox
    sudo python3 run.py dvfs-grant --group cbnet-tl   # the unit runs this as root (ExecStartPre=+)

``serve`` runs the inbox until SIGTERM or SIGINT (or, with ``drain``, until the inbox is empty), then prints one
summary line: inputs, misses, energy (modelled or measured, said) and the time at each frequency. SIGTERM is a
clean stop: the CPU's frequency settings are given back first (``CpufreqController``), then the loop ends.
"""

from __future__ import annotations

import contextlib
import functools
import grp
import os
import signal
import sys
import time
from pathlib import Path
from typing import Callable, Optional

from cbnet_tl.runtime.errors import CbnetError
from cbnet_tl.runtime.inbox import InboxConfig, read_state, watch_inbox
from cbnet_tl.runtime.settle import is_candidate

CPUFREQ_DIR = Path("sys/devices/system/cpu/cpufreq")
CPUFREQ_WRITABLE = ("scaling_governor", "scaling_setspeed", "scaling_min_freq", "scaling_max_freq")


class StopRequested(BaseException):
    """SIGTERM: end the service loop where it is (the inbox contract holds whatever the moment)."""


def _stop(signum, frame) -> None:
    raise StopRequested()


def serve(pipeline, config: InboxConfig, dvfs_options: dict, *, drain: bool = False,
          log: Callable[[str], None] = functools.partial(print, flush=True)) -> dict:
    """``run.py watch``: the inbox under ``dvfs_session(**dvfs_options)`` until stopped; the summary line, logged
    and returned (the session's ``summary()`` with ``num_inputs`` and ``seconds``)."""
    from cbnet_tl.runtime.dvfs.run import dvfs_session

    deadline_ms = dvfs_options.get("deadline_ms")
    if deadline_ms is not None and deadline_ms / 1e3 <= config.settle_seconds:
        print(f"note: the deadline ({deadline_ms:g} ms) counts from when an input settled, and the service waits "
              f"--settle-seconds ({config.settle_seconds:g} s) before it knows: every input will miss it",
              file=sys.stderr)
    previous = signal.signal(signal.SIGTERM, _stop)  # before the controller's own: it gives the CPU back, then this
    began, handled = time.monotonic(), 0
    try:
        with dvfs_session(**dvfs_options) as session:
            try:
                handled = watch_inbox(pipeline, config, session=session, drain=drain)
            except (StopRequested, KeyboardInterrupt):
                handled = None
    finally:
        signal.signal(signal.SIGTERM, previous)
    summary = {**session.summary(), "num_inputs": handled, "seconds": round(time.monotonic() - began, 3)}
    log(format_summary(summary))
    return summary


def format_summary(summary: dict, command: str = "watch") -> str:
    """One line: inputs, deadline misses, energy (modelled or measured) and the time at each frequency."""
    count = summary["num_inferences"]
    inputs = "" if summary.get("num_inputs") is None else f"{summary['num_inputs']} inputs, "
    misses = "no deadline" if summary["deadline_ms"] is None else (
        f"deadline {summary['deadline_ms']:g} ms missed by {summary['deadline_misses']}/{count} "
        f"({summary['miss_rate']:.1%})")
    source = summary.get("energy_model") or summary.get("energy_meter")
    if summary.get("energy_note"):  # DVFS off: the frequency the governor chose is not known
        source += ", at the top frequency: DVFS off"
    energy = f"energy {summary['energy_j_total']:.4g} J ({summary['energy_source']}, {source})"
    if count:
        energy += f", {summary['energy_j'] * 1e3:.4g} mJ/image"
    busy = sum(summary["time_at_frequency"].values())
    use = ", ".join(f"{k}{'' if k == 'uncontrolled' else ' MHz'} {v:.3f} s ({v / busy:.0%})"
                    for k, v in summary["time_at_frequency"].items()) if busy else "none busy"
    took = "" if summary.get("seconds") is None else f" in {summary['seconds']:.1f} s"
    return (f"{command} summary: {inputs}{count} classified{took}; dvfs "
            f"{summary['dvfs']}{' (' + summary['method'] + ')' if summary.get('method') else ''}; {misses}; "
            f"{energy}; time at {use}; idle {summary['idle_s']:.3f} s; frequency switches: {summary['switches']}")


def status(config: InboxConfig, sysfs_root: Optional[Path] = None) -> dict:
    """Counts, the last error, uptime, the running service's DVFS totals since it started (``session``: energy,
    misses, time at each frequency) and (under a DVFS policy) the CPU's current frequency, read from the sysfs
    root the service uses unless ``sysfs_root`` is given."""
    state = read_state(config.state_file)
    try:
        queued = sum(1 for entry in os.scandir(config.inbox) if is_candidate(entry.name))
    except FileNotFoundError:
        queued = 0
    running = _alive(state.get("pid"))
    report = {"running": running, "processed": state.get("processed", 0), "failed": state.get("failed", 0),
              "queued": queued, "last_error": state.get("last_error"),
              "uptime_s": round(time.time() - state["started_at"], 1) if running else None,
              "dvfs": state.get("dvfs", "off"), "cpu_khz": None, "session": state.get("session")}
    if running and report["dvfs"] != "off":
        report["cpu_khz"] = _current_khz(Path(sysfs_root or state.get("sysfs_root") or "/"))
    return report


def _alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _current_khz(sysfs_root: Path) -> Optional[int]:
    for policy in sorted((sysfs_root / CPUFREQ_DIR).glob("policy*")):
        with contextlib.suppress(OSError, ValueError):
            return int((policy / "scaling_cur_freq").read_text().strip())
    return None


def grant_cpufreq(group: str, sysfs_root: Path = Path("/")) -> list:
    """Give ``group`` write access to exactly the cpufreq files the DVFS controller writes."""
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        raise CbnetError(f"No group {group!r}. Create it (sudo useradd --system --user-group {group})") from None
    granted = []
    for policy in sorted((Path(sysfs_root) / CPUFREQ_DIR).glob("policy*")):
        for name in CPUFREQ_WRITABLE:
            path = policy / name
            if path.exists():
                os.chown(path, -1, gid)
                os.chmod(path, (path.stat().st_mode & 0o7777) | 0o020)
                granted.append(str(path))
    return granted
