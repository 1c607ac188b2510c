"""What the systemd service needs besides the inbox: ``run.py watch`` under a DVFS session, ``run.py status`` and
``run.py dvfs-grant``.

    python3 run.py watch --inbox /opt/cbnet-tl/inbox --outbox /opt/cbnet-tl/outbox --dvfs eenet --workload burst:64:500
    python3 run.py status --inbox /opt/cbnet-tl/inbox
    sudo python3 run.py dvfs-grant --group cbnet-tl   # the unit runs this as root (ExecStartPre=+)

``run_watch`` runs the inbox until SIGTERM or SIGINT (or, with ``drain``, until the inbox is empty), then prints one
summary line (``formats.format_dvfs_summary``): inputs handled, misses, energy (modelled or measured, said) and the
time at each frequency. SIGTERM is a clean stop: the CPU's frequency settings are given back first
(``CpufreqController``), then the loop ends, and the inputs handled until then are counted.
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

from cbnet_tl.runtime.dvfs.cpufreq import WRITTEN_FILES, policy_files
from cbnet_tl.runtime.errors import CbnetError
from cbnet_tl.runtime.formats import format_dvfs_summary
from cbnet_tl.runtime.inbox import Inbox, InboxConfig, read_state
from cbnet_tl.runtime.settle import is_candidate


class StopRequested(BaseException):
    """SIGTERM: end the service loop where it is (the inbox contract holds whatever the moment)."""


def _stop(signum, frame) -> None:
    raise StopRequested()


def run_watch(pipeline, config: InboxConfig, dvfs_options: dict, *, drain: bool = False,
              log: Callable[[str], None] = functools.partial(print, flush=True)) -> dict:
    """``run.py watch``: the inbox under ``dvfs_session(**dvfs_options)`` until stopped; the summary line, logged
    and returned (the session's ``summary()`` with ``num_inputs``, the inputs handled, and ``seconds``)."""
    from cbnet_tl.runtime.dvfs.run import dvfs_session

    deadline_ms = dvfs_options.get("deadline_ms")
    if deadline_ms is not None and deadline_ms / 1e3 <= config.settle_seconds:
        print(f"note: the deadline ({deadline_ms:g} ms) counts from when an input settled, and the service waits "
              f"--settle-seconds ({config.settle_seconds:g} s) before it knows: every input will miss it",
              file=sys.stderr)
    previous = signal.signal(signal.SIGTERM, _stop)  # before the controller's own: it gives the CPU back, then this
    began, inbox = time.monotonic(), None
    try:
        # the inputs are the arrivals (each batch's waits and queue from the inbox), not back to back: the service
        # idles between them, as a burst's queue does
        with dvfs_session(**{**dvfs_options, "burst": True}) as session:
            try:
                inbox = Inbox(pipeline, config, session=session)
                inbox.watch(drain=drain)
            except (StopRequested, KeyboardInterrupt):
                pass  # the inputs handled so far are counted, input by input, in inbox.num_handled
    finally:
        signal.signal(signal.SIGTERM, previous)
    handled = 0 if inbox is None else inbox.num_handled
    summary = {**session.summary(), "num_inputs": handled, "seconds": round(time.monotonic() - began, 3)}
    log(format_dvfs_summary(summary, "watch"))
    return summary


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
    for path in policy_files(sysfs_root, ("scaling_cur_freq",)):
        with contextlib.suppress(OSError, ValueError):
            return int(path.read_text().strip())
    return None


def grant_cpufreq(group: str, sysfs_root: Path = Path("/")) -> list:
    """Give ``group`` write access to exactly the cpufreq files the DVFS controller writes (``WRITTEN_FILES``)."""
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        raise CbnetError(f"Expected an existing group. Received: --group {group!r}. Create it with the service's user "
                         f"(sudo useradd --system --user-group {group}), or name another") from None
    granted = []
    for path in policy_files(sysfs_root, WRITTEN_FILES):
        os.chown(path, -1, gid)
        os.chmod(path, (path.stat().st_mode & 0o7777) | 0o020)
        granted.append(str(path))
    return granted
