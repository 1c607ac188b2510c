"""Which inbox entries are complete, and when each arrived (``run.py watch``; the contract is in ``inbox.py``).

- Names starting with ``.`` or ending in ``.part``/``.tmp`` are never candidates.
- An entry is taken once its (inode, size, mtime) has held still for ``settle_seconds`` of scans: two
  observations, never the wall clock alone, decide that a writer is done.
- It arrived when it last changed: its ctime (a rename into the inbox or the last write), read on the wall
  clock and moved to the settler's clock, but never before the previous scan (a scan that did not see it this
  way shows it was not there yet) nor after the scan that saw it. A file dropped while the service was busy
  with a batch thus counts its wait from its drop, not from the next scan; an entry already there at the
  first scan counts from that scan (a service's downtime is not charged to its deadlines); a wall clock that
  jumps moves an arrival by at most one scan interval.
"""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path
from typing import Callable, NamedTuple, Optional

IGNORED_SUFFIXES = (".part", ".tmp")


def is_candidate(name: str) -> bool:
    return not (name.startswith(".") or name.endswith(IGNORED_SUFFIXES))


class Entry(NamedTuple):
    """A settled inbox entry: its name, identity (inode, size, mtime), kind, and when it settled (arrived: its
    last change, on the settler's clock; see the module's docstring)."""

    name: str
    identity: tuple
    kind: str
    settled_at: float


class Settler:
    """Remembers each inbox entry's (inode, size, mtime), when a scan first saw it that way, and its arrival.
    ``clock``: the clock arrivals are told in (monotonic); ``wall_clock``: the one file times are in."""

    def __init__(self, settle_seconds: float, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time):
        self.settle_seconds, self._clock, self._wall_clock, self._seen = settle_seconds, clock, wall_clock, {}
        self._last_scan: Optional[float] = None

    @property
    def num_seen(self) -> int:
        """Candidates in the inbox at the last scan, settled or not."""
        return len(self._seen)

    def scan(self, inbox: Path) -> list:
        """``Entry``s unchanged for ``settle_seconds``, oldest first."""
        now, wall, seen, ready = self._clock(), self._wall_clock(), {}, []
        previous_scan, self._last_scan = self._last_scan, now
        with os.scandir(inbox) as entries:
            for entry in entries:
                if not is_candidate(entry.name):
                    continue
                try:
                    info = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                identity = (info.st_ino, info.st_size, info.st_mtime_ns)
                before = self._seen.get(entry.name)
                if before and before[0] == identity:
                    first, arrived = before[1], before[2]
                else:
                    first = arrived = now
                    if previous_scan is not None:
                        arrived = min(now, max(previous_scan, now - (wall - info.st_ctime)))
                seen[entry.name] = (identity, first, arrived)
                if now - first >= self.settle_seconds:
                    ready.append((info.st_mtime_ns, Entry(entry.name, identity, _kind(info.st_mode), arrived)))
        self._seen = seen
        return [item[1] for item in sorted(ready)]


def _kind(mode: int) -> str:
    return "file" if stat.S_ISREG(mode) else "directory" if stat.S_ISDIR(mode) else \
        "symlink" if stat.S_ISLNK(mode) else "special"
