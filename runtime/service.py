"""What the systemd service needs besides the inbox: ``run.py status`` and ``run.py dvfs-grant``.

    python3 run.py status --inbox /opt/cbnet-tl/inbox
    sudo python3 run.py dvfs-grant --group cbnet-tl   # the unit runs this as root (ExecStartPre=+)
"""

from __future__ import annotations

import contextlib
import grp
import os
import time
from pathlib import Path
from typing import Optional

from cbnet_tl.runtime.errors import CbnetError
from cbnet_tl.runtime.inbox import InboxConfig, is_candidate, read_state

CPUFREQ_DIR = Path("sys/devices/system/cpu/cpufreq")
CPUFREQ_WRITABLE = ("scaling_governor", "scaling_setspeed", "scaling_min_freq", "scaling_max_freq")


def status(config: InboxConfig, sysfs_root: Path = Path("/")) -> dict:
    """Counts, the last error, uptime and (under a DVFS policy) the CPU's current frequency."""
    state = read_state(config.state_file)
    try:
        queued = sum(1 for entry in os.scandir(config.inbox) if is_candidate(entry.name))
    except FileNotFoundError:
        queued = 0
    running = _alive(state.get("pid"))
    report = {"running": running, "processed": state.get("processed", 0), "failed": state.get("failed", 0),
              "queued": queued, "last_error": state.get("last_error"),
              "uptime_s": round(time.time() - state["started_at"], 1) if running else None,
              "dvfs": state.get("dvfs", "off"), "cpu_khz": None}
    if running and report["dvfs"] != "off":
        report["cpu_khz"] = _current_khz(Path(sysfs_root))
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
