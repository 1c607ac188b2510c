"""Modelled energy: P(f) from a target's power table over the device's OPP list.

Energy of a run = Σ P_active(f)·t(f) over the time spent inferring at each frequency
               + P_idle · the time spent idle between inferences
               + Σ over frequency switches of switch_seconds · P_active(higher of the two frequencies).
Everything this module returns is labelled ``modelled``; ``meters`` gives ``measured`` energy.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum
from typing import Iterable, Mapping, Optional, Sequence

from cbnet_tl.runtime.dvfs.power_tables import PowerTable, power_table
from cbnet_tl.runtime.errors import DvfsError


class EnergySource(str, Enum):
    MEASURED = "measured"
    MODELLED = "modelled"


def check_frequencies(frequencies_khz: Iterable) -> tuple:
    """Validate an OPP list (kHz) and return it sorted ascending, without duplicates."""
    values = list(frequencies_khz)
    if not values or any(not isinstance(v, int) or isinstance(v, bool) or v <= 0 for v in values):
        raise DvfsError(f"Expected a non-empty list of positive integer frequencies in kHz. Received: {values}")
    return tuple(sorted(set(values)))


@dataclass(frozen=True)
class EnergyModel:
    table: PowerTable
    frequencies_khz: tuple
    switch_seconds: float

    def __post_init__(self):
        if check_frequencies(self.frequencies_khz) != self.frequencies_khz:
            raise DvfsError("Expected the OPP list as a tuple sorted ascending, without duplicates (use model_for). "
                            f"Received: {self.frequencies_khz}")
        if not self.switch_seconds >= 0:
            raise DvfsError(f"Expected switch_seconds >= 0. Received: {self.switch_seconds}")

    source = EnergySource.MODELLED.value

    @property
    def top_khz(self) -> int:
        return self.frequencies_khz[-1]

    @property
    def idle_w(self) -> float:
        return self.table.idle_w

    def volts(self, khz: int) -> float:
        """V(f), linear between the table's points and extended along the nearest segment beyond them."""
        points = self.table.volt_points
        mhz = khz / 1000.0
        if len(points) == 1:
            return points[0][1]
        segment = next((i for i in range(1, len(points) - 1) if mhz < points[i][0]), len(points) - 1)
        (f0, v0), (f1, v1) = points[segment - 1], points[segment]
        return v0 + (v1 - v0) * (mhz - f0) / (f1 - f0)

    def core_w(self, khz: int) -> float:
        """Dynamic power of one busy core, ∝ V²·f, scaled from the table's loaded measurement."""
        t = self.table
        reference = (t.loaded_w - t.idle_w) / t.loaded_cores
        ref_khz = t.loaded_mhz * 1000
        return reference * (self.volts(khz) ** 2 * khz) / (self.volts(ref_khz) ** 2 * ref_khz)

    def active_w(self, khz: int) -> float:
        """Board power while one inference runs at ``khz``."""
        t = self.table
        return t.idle_w + t.active_cores * self.core_w(khz) + t.accelerator_w

    def switch_j(self, from_khz: int, to_khz: int) -> float:
        return 0.0 if from_khz == to_khz else self.switch_seconds * self.active_w(max(from_khz, to_khz))

    def energy_j(self, busy_seconds: Mapping, idle_seconds: float = 0.0, switches: Sequence = ()) -> float:
        """Energy of a run: ``busy_seconds`` maps kHz → seconds inferring; ``switches`` lists (from, to) kHz."""
        busy = sum(self.active_w(khz) * seconds for khz, seconds in busy_seconds.items())
        return busy + self.idle_w * idle_seconds + sum(self.switch_j(a, b) for a, b in switches)


def model_for(target, frequencies_khz: Optional[Iterable] = None,
              switch_seconds: Optional[float] = None, active_cores: Optional[int] = None) -> EnergyModel:
    """The energy model of ``target`` (a table's name or a ``PowerTable``) over the device's OPP list (kHz); the
    table's defaults when none is given. ``active_cores``: the cores the interpreter keeps busy (its threads)."""
    table = target if isinstance(target, PowerTable) else power_table(target)
    if active_cores is not None:
        if not isinstance(active_cores, int) or active_cores < 1:
            raise DvfsError(f"Expected active_cores (interpreter threads) >= 1. Received: {active_cores}")
        table = replace(table, active_cores=active_cores)
    if frequencies_khz is None:
        frequencies_khz = [int(round(mhz * 1000)) for mhz in table.default_frequencies_mhz]
    return EnergyModel(table, check_frequencies(frequencies_khz),
                       table.switch_seconds if switch_seconds is None else float(switch_seconds))
