"""RAPL, the CPU package energy counters of an x86 host (``ROOT/sys/class/powercap/*-rapl:N/energy_uj``, µJ): the
CPU package only, not a board, summed over packages. The counter wraps at ``max_energy_range_uj``; sampling every
``interval_s`` catches every wrap. Reading it needs root since Linux 5.10; an unreadable counter is skipped. A host
command passes ``find_rapl`` to ``dvfs_session(host_meters=...)``: the bundle's boards have no RAPL."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

from cbnet_tl.runtime.dvfs.meters import Meter, read_number
from cbnet_tl.runtime.errors import MeterError

POWERCAP_DIR = Path("sys/class/powercap")
_RAPL_ZONE = re.compile(r"^[a-z]+-rapl:\d+$")  # top-level zones only: sub-zones are parts of a package


class RaplMeter(Meter):
    """Sum of the RAPL package counters (``energy_uj``), wrap-aware."""

    def __init__(self, zones: Sequence[Path], interval_s: float = 1.0, clock: Callable[[], float] = time.monotonic):
        super().__init__(interval_s, clock)
        if not zones:
            raise MeterError("RaplMeter needs at least one powercap zone directory")
        self.zones = [Path(z) for z in zones]
        self._ranges = [read_number(z / "max_energy_range_uj") for z in self.zones]
        self.description = "RAPL " + "+".join(z.name for z in self.zones) + " (CPU package energy, not the board)"

    def _read(self):
        return tuple(read_number(z / "energy_uj") for z in self.zones)

    def _increment(self, previous, current):
        return sum(after - before if after >= before else after + wrap - before
                   for before, after, wrap in zip(previous[1], current[1], self._ranges)) * 1e-6


def find_rapl(root: Path = Path("/")) -> Optional[RaplMeter]:
    """The readable top-level RAPL zones under ``root`` as one meter, or None."""
    zones = sorted(p for p in (Path(root) / POWERCAP_DIR).glob("*") if _RAPL_ZONE.match(p.name)
                   and (p / "energy_uj").is_file())
    readable = []
    for zone in zones:
        try:
            read_number(zone / "energy_uj")
            readable.append(zone)
        except MeterError:
            continue
    try:
        return RaplMeter(readable) if readable else None
    except MeterError:
        return None


HOST_METERS = (find_rapl,)  # what host commands pass as dvfs_session(host_meters=...)
