"""Measured energy from a meter the board exposes: a hwmon power monitor (a host's RAPL counters are the
toolchain's, ``toolchain/analysis/rapl.py``, passed in as ``host_meters``).

- hwmon (``ROOT/sys/class/hwmon/hwmon*/``) power monitors of the INA2xx/INA3221 family, found by their ``name`` file.
  Per channel, in order of preference: ``energyN_input`` (µJ counter), ``powerN_input`` (µW, integrated over time
  with the trapezoid rule), or ``inN_input`` (mV) × ``currN_input`` (mA) = µW, as the ina3221 driver reports a
  channel. The lowest-numbered channel is used unless another is asked for: channels of a multi-rail monitor can
  nest (total and per rail), so they are never summed.

A meter measures a window: ``start()``, then ``stop()`` returns an ``EnergyReading`` labelled ``measured``; a
background thread samples every ``interval_s`` (tests: ``start(background=False)``, ``sample()``, a fake clock).
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from cbnet_tl.runtime.dvfs.energy import EnergySource
from cbnet_tl.runtime.errors import MeterError

HWMON_DIR = Path("sys/class/hwmon")
POWER_MONITOR_PREFIXES = ("ina",)  # ina209/219/220/226/230/231/238/260/3221 …


@dataclass(frozen=True)
class EnergyReading:
    joules: float
    seconds: float
    meter: str
    num_samples: int
    source: str = EnergySource.MEASURED.value

    @property
    def watts(self) -> float:
        return self.joules / self.seconds if self.seconds > 0 else 0.0


def read_number(path: Path) -> int:
    try:
        return int(path.read_text().strip())
    except FileNotFoundError:
        raise MeterError(f"{path} does not exist; the meter went away or the sysfs root is wrong") from None
    except PermissionError:
        raise MeterError(f"Cannot read {path}: permission denied (RAPL needs root since Linux 5.10)") from None
    except (OSError, ValueError) as error:
        raise MeterError(f"Cannot read a number from {path}: {error}") from None


class Meter:
    """Base class: subclasses define ``_read()`` and either integrate power or difference a counter."""

    description = "meter"

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic):
        if not interval_s > 0:
            raise MeterError(f"Expected interval_s > 0. Received: {interval_s}")
        self.interval_s, self._clock = interval_s, clock
        self._lock, self._stop = threading.Lock(), threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._started_at: Optional[float] = None
        self._last: Optional[tuple] = None  # (time, reading) of the last sample
        self._joules, self._num_samples = 0.0, 0

    def start(self, background: bool = True) -> None:
        with self._lock:
            self._joules, self._num_samples = 0.0, 0
            self._last = (self._clock(), self._read())
            self._started_at = self._last[0]
        if background:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="cbnet-meter", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sample()
            except MeterError:
                return  # stop() samples again and raises the error in the caller's thread

    def sample(self) -> None:
        with self._lock:
            if self._last is None:
                raise MeterError("Meter.sample() called before start()")
            now, value = self._clock(), self._read()
            self._joules += self._increment(self._last, (now, value))
            self._last = (now, value)
            self._num_samples += 1

    def stop(self) -> EnergyReading:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        return self.reading()

    def reading(self) -> EnergyReading:
        """The window from ``start()`` to now, sampled now; the meter keeps measuring."""
        self.sample()
        with self._lock:
            return EnergyReading(self._joules, self._last[0] - self._started_at, self.description,
                                 self._num_samples + 1)

    def _read(self):
        raise NotImplementedError

    def _increment(self, previous: tuple, current: tuple) -> float:
        raise NotImplementedError


class HwmonPowerMeter(Meter):
    """One channel of a hwmon power monitor (INA219, INA226, INA3221, …)."""

    def __init__(self, device: Path, channel: Optional[int] = None, interval_s: float = 0.01,
                 clock: Callable[[], float] = time.monotonic):
        super().__init__(interval_s, clock)
        self.device = Path(device)
        channels = hwmon_channels(self.device)
        if not channels:
            raise MeterError(f"{self.device} has no energyN_input, powerN_input or inN_input+currN_input files")
        self.channel = channels[0] if channel is None else channel
        if self.channel not in channels:
            raise MeterError(f"Channel {channel} not offered by {self.device}. Expected one of {channels}")
        n = self.channel
        if (self.device / f"energy{n}_input").is_file():
            self.kind, self._files = "energy", (self.device / f"energy{n}_input",)
        elif (self.device / f"power{n}_input").is_file():
            self.kind, self._files = "power", (self.device / f"power{n}_input",)
        else:
            self.kind, self._files = "volts*amps", (self.device / f"in{n}_input", self.device / f"curr{n}_input")
        name = (self.device / "name").read_text().strip() if (self.device / "name").is_file() else "hwmon"
        label_file = self.device / f"{'in' if self.kind == 'volts*amps' else self.kind}{n}_label"
        label = f" '{label_file.read_text().strip()}'" if label_file.is_file() else ""
        self.description = f"hwmon {name} ({self.device.name}) channel {n}{label}, {self.kind}"

    def _read(self):
        values = [read_number(path) for path in self._files]
        return values[0] if len(values) == 1 else values[0] * values[1]  # µJ, µW, or mV·mA = µW

    def _increment(self, previous, current):
        (t0, v0), (t1, v1) = previous, current
        if self.kind == "energy":
            return max(0, v1 - v0) * 1e-6
        return (v0 + v1) / 2 * 1e-6 * (t1 - t0)


def hwmon_channels(device: Path) -> list:
    """Channel numbers of ``device`` that give energy, power, or volts and amps."""
    numbers = set()
    for prefix in ("energy", "power", "curr"):
        for path in device.glob(f"{prefix}*_input"):
            match = re.fullmatch(rf"{prefix}(\d+)_input", path.name)
            if match and (prefix != "curr" or (device / f"in{match.group(1)}_input").is_file()):
                numbers.add(int(match.group(1)))
    return sorted(numbers)


def find_meter(root: Path = Path("/"), host_meters: Sequence[Callable] = ()) -> Optional[Meter]:
    """The first readable meter: a hwmon power monitor, else the first that ``host_meters`` (finders taking the root)
    find; None when there is none."""
    hwmon = Path(root) / HWMON_DIR
    for device in sorted(hwmon.glob("hwmon*"), key=lambda p: int(re.sub(r"\D", "", p.name) or 0)):
        for directory in (device, device / "device"):
            name_file = directory / "name"
            if not name_file.is_file() or not name_file.read_text().strip().startswith(POWER_MONITOR_PREFIXES):
                continue
            try:
                meter = HwmonPowerMeter(directory)
                meter._read()
                return meter
            except MeterError:
                continue
    return next((meter for meter in (find(Path(root)) for find in host_meters) if meter is not None), None)
