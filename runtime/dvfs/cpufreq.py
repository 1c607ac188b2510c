"""CPU frequency control over the kernel's cpufreq sysfs files, always given back.

Files used, under ``ROOT/sys/devices/system/cpu/cpufreq/policyN/`` (frequencies in kHz):
``scaling_available_frequencies``, ``scaling_available_governors``, ``scaling_governor``, ``scaling_cur_freq``,
``scaling_setspeed``, ``scaling_{min,max}_freq``, ``cpuinfo_{min,max}_freq``; ``policy_files`` finds them.

Control goes through the ``userspace`` governor and ``scaling_setspeed``, or else pins ``scaling_min_freq =
scaling_max_freq`` (``.method`` says which). Entering the controller saves the governor and the limits; leaving it
restores them on normal exit, on exceptions and on SIGINT/SIGTERM. SIGKILL cannot be caught: the bundle's systemd
unit restores the governor in ``ExecStopPost``. The OPP list comes from ``scaling_available_frequencies``, else
``stats/time_in_state``, else only the two end points ``cpuinfo_{min,max}_freq`` (guessing steps is not safe).
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Optional, Sequence

from cbnet_tl.runtime.errors import DvfsError
from cbnet_tl.runtime.files import write_json_atomic

CPUFREQ_DIR = Path("sys/devices/system/cpu/cpufreq")
WRITTEN_FILES = ("scaling_governor", "scaling_setspeed", "scaling_min_freq", "scaling_max_freq")  # what control writes
HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_NO_LATENCY = (0, 0xFFFFFFFF)  # CPUFREQ_ETERNAL: the driver did not say


class ControlMethod(str, Enum):
    USERSPACE = "userspace"
    PIN_MIN_MAX = "pin-min-max"


class FrequencySource(str, Enum):
    AVAILABLE = "scaling_available_frequencies"
    TIME_IN_STATE = "stats/time_in_state"
    CPUINFO_BOUNDS = "cpuinfo_min_freq+cpuinfo_max_freq"


@dataclass(frozen=True)
class CpufreqState:
    governor: str
    min_khz: int
    max_khz: int
    setspeed: Optional[str] = None  # a number under userspace, else "<unsupported>"; None when absent


def list_policies(root: Path = Path("/")) -> list:
    base = Path(root) / CPUFREQ_DIR
    found = [p.name for p in base.glob("policy*") if p.is_dir() and p.name[6:].isdigit()] if base.is_dir() else []
    return sorted(found, key=lambda name: int(name[6:]))


def policy_files(root: Path, names: Sequence[str]) -> list:
    """The files ``names`` of every cpufreq policy under ``root`` that exist, policy by policy."""
    base = Path(root) / CPUFREQ_DIR
    return [base / policy / name for policy in list_policies(root) for name in names if (base / policy / name).exists()]


def _policy_dir(root: Path, policy: Optional[str]) -> Path:
    base = Path(root) / CPUFREQ_DIR
    available = list_policies(root)
    if not available:
        raise DvfsError(f"No cpufreq policy found under {base}. Expected policyN directories (a Linux kernel with "
                        "cpufreq). Check the sysfs root, or run with DVFS off")
    if policy is None:
        return base / available[0]
    name = f"policy{policy}" if str(policy).isdigit() else str(policy)
    if name not in available:
        raise DvfsError(f"cpufreq policy {policy!r} not found under {base}. Expected one of {available}")
    return base / name


class CpufreqController:
    """Context manager that owns one cpufreq policy; ``set_khz`` only works inside ``with``."""

    def __init__(self, root: Path = Path("/"), policy: Optional[str] = None, state_file: Optional[Path] = None):
        self.directory = _policy_dir(Path(root), policy)
        self.state_file = None if state_file is None else Path(state_file)  # for restore after SIGKILL
        self.governors = tuple(self._read("scaling_available_governors").split())
        self.method = ControlMethod.USERSPACE if "userspace" in self.governors else ControlMethod.PIN_MIN_MAX
        self.frequencies_khz, self.frequency_source = self._read_frequencies()
        self._saved: Optional[CpufreqState] = None
        self._previous_handlers: dict = {}
        self.signals_handled = False

    def _read(self, name: str) -> str:
        path = self.directory / name
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            raise DvfsError(f"{path} does not exist. Expected the kernel's cpufreq file; this kernel or driver "
                            "does not offer it, or the sysfs root is wrong") from None
        except OSError as error:
            raise DvfsError(f"Cannot read {path}: {error.strerror}") from None

    def _read_khz(self, name: str) -> int:
        text = self._read(name)
        try:
            return int(text)
        except ValueError:
            raise DvfsError(f"Expected a frequency in kHz in {self.directory / name}. Received: {text!r}") from None

    def _read_frequencies(self):
        for name, source in (("scaling_available_frequencies", FrequencySource.AVAILABLE),
                             ("stats/time_in_state", FrequencySource.TIME_IN_STATE)):
            if (self.directory / name).is_file():
                text = self._read(name)
                # one line "600000 750000 …", or "600000 1234\n750000 56\n…" (kHz, time) for time_in_state
                tokens = text.split() if source is FrequencySource.AVAILABLE else [
                    line.split()[0] for line in text.splitlines() if line.strip()]
                try:
                    values = sorted({int(token) for token in tokens})
                except ValueError:
                    raise DvfsError(f"Expected frequencies in kHz in {self.directory / name}. "
                                    f"Received: {text[:80]!r}") from None
                if values:
                    return tuple(values), source
        bounds = sorted({self._read_khz("cpuinfo_min_freq"), self._read_khz("cpuinfo_max_freq")})
        return tuple(bounds), FrequencySource.CPUINFO_BOUNDS

    def read_state(self) -> CpufreqState:
        setspeed = self._read("scaling_setspeed") if (self.directory / "scaling_setspeed").is_file() else None
        return CpufreqState(self._read("scaling_governor"), self._read_khz("scaling_min_freq"),
                            self._read_khz("scaling_max_freq"), setspeed)

    def current_khz(self) -> int:
        """What the kernel reports now (firmware throttling can make it differ from the request)."""
        return self._read_khz("scaling_cur_freq")

    @property
    def transition_latency_s(self) -> Optional[float]:
        """``cpuinfo_transition_latency`` in seconds, or None when absent or unknown to the driver."""
        if not (self.directory / "cpuinfo_transition_latency").is_file():
            return None
        value = self._read_khz("cpuinfo_transition_latency")
        return None if value in _NO_LATENCY else value * 1e-9

    @property
    def held(self) -> bool:
        return self._saved is not None

    def _write(self, name: str, value) -> None:
        path = self.directory / name
        try:
            fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
            try:
                os.write(fd, f"{value}\n".encode())
            finally:
                os.close(fd)
        except FileNotFoundError:
            raise DvfsError(f"{path} does not exist, so the CPU frequency cannot be set. Expected the kernel's "
                            "cpufreq file; check the sysfs root, or run with DVFS off") from None
        except PermissionError:
            raise DvfsError(f"Cannot write {path}: permission denied. Changing the CPU frequency needs root: "
                            "run as root (sudo, or the bundle's service), or run with DVFS off") from None
        except OSError as error:
            raise DvfsError(f"Cannot write {value!r} to {path}: {error.strerror}") from None

    def _write_limits(self, low: int, high: int) -> None:
        """Set (min, max) so that min <= max holds after each single write (old kernels reject min > max)."""
        writes = [("scaling_min_freq", low), ("scaling_max_freq", high)]
        for name, khz in reversed(writes) if low > self._read_khz("scaling_max_freq") else writes:
            self._write(name, khz)

    def set_khz(self, khz: int) -> None:
        if not self.held:
            raise DvfsError("The CPU frequency can only be set inside `with CpufreqController(...)`; "
                            "control is not held (never taken, or already given back)")
        if khz not in self.frequencies_khz:
            raise DvfsError(f"Expected one of the frequencies this CPU offers, {list(self.frequencies_khz)} kHz. "
                            f"Received: {khz}")
        if self.method is ControlMethod.USERSPACE:
            self._write("scaling_setspeed", khz)
        else:
            self._write_limits(khz, khz)

    # taking and giving back ---------------------------------------------------------------------
    def __enter__(self) -> "CpufreqController":
        if self.held:
            raise DvfsError(f"{self.directory} is already controlled by this object; enter it only once")
        self._saved = self.read_state()
        self._install_handlers()
        try:
            if self.state_file is not None:
                save_state(self.state_file, self.directory, self._saved)
            # widen to every OPP (a clamped request would pass silently); pin mode re-pins on the first set_khz
            self._write_limits(self.frequencies_khz[0], self.frequencies_khz[-1])
            if self.method is ControlMethod.USERSPACE:
                self._write("scaling_governor", ControlMethod.USERSPACE.value)
        except BaseException:
            self.release()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()

    def release(self) -> None:
        """Restore the saved limits and governor, then the previous signal handlers. Safe to call twice."""
        saved, self._saved = self._saved, None
        blocked = self.signals_handled and threading.current_thread() is threading.main_thread()
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS) if blocked else None
        try:  # a signal arriving now waits until the files are back, then acts as it would have
            if saved is not None:
                self._restore(saved)
                if self.state_file is not None:
                    self.state_file.unlink(missing_ok=True)
        finally:
            self._uninstall_handlers()
            if mask is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    def _restore(self, saved: CpufreqState) -> None:
        problems = []
        try:
            self._write_limits(saved.min_khz, saved.max_khz)
        except DvfsError as error:
            problems.append(str(error))
        try:
            if self._read("scaling_governor") != saved.governor:
                self._write("scaling_governor", saved.governor)
        except DvfsError as error:
            problems.append(str(error))
        if saved.setspeed is not None and saved.governor == ControlMethod.USERSPACE.value:
            try:
                self._write("scaling_setspeed", saved.setspeed)
            except DvfsError as error:
                problems.append(str(error))
        elif saved.setspeed is not None:  # the kernel shows "<unsupported>" by itself and refuses the write
            with contextlib.suppress(OSError):
                (self.directory / "scaling_setspeed").write_text(f"{saved.setspeed}\n")
        if problems:
            raise DvfsError(f"Could not restore cpufreq {self.directory} to governor {saved.governor!r}, "
                            f"limits {saved.min_khz}-{saved.max_khz} kHz: " + "; ".join(problems))

    def _install_handlers(self) -> None:
        self.signals_handled = threading.current_thread() is threading.main_thread()
        if not self.signals_handled:
            return  # Python delivers signals to the main thread only; its owner must restore on exit
        for signum in HANDLED_SIGNALS:
            previous = signal.getsignal(signum)
            if previous is signal.SIG_IGN:
                continue  # the process ignores it, so it will not end the process either
            self._previous_handlers[signum] = previous
            signal.signal(signum, self._on_signal)

    def _uninstall_handlers(self) -> None:
        handlers, self._previous_handlers = self._previous_handlers, {}
        for signum, previous in handlers.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)

    def _on_signal(self, signum, frame) -> None:
        previous = self._previous_handlers.get(signum, signal.SIG_DFL)
        try:
            self.release()
        except DvfsError as error:
            sys.stderr.write(f"error: {error}\n")
        if callable(previous):
            previous(signum, frame)  # e.g. SIGINT's default raises KeyboardInterrupt
        else:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)  # end the way the signal would have: status 128 + signum


def save_state(path: Path, directory: Path, state: CpufreqState) -> None:
    """Record the state to give back, so another process can restore it if this one is killed."""
    write_json_atomic(path, {"directory": str(directory), "governor": state.governor, "min_khz": state.min_khz,
                             "max_khz": state.max_khz, "setspeed": state.setspeed}, durable=True)


def restore_from_file(path: Path) -> Optional[str]:
    """Restore a state saved by a controller that never got to restore it (e.g. killed with SIGKILL): the policy
    directory restored, or None when there was nothing to restore."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
        directory = Path(saved["directory"])
        state = CpufreqState(saved["governor"], int(saved["min_khz"]), int(saved["max_khz"]), saved.get("setspeed"))
    except (ValueError, KeyError, TypeError) as error:
        raise DvfsError(f"{path} is not a saved cpufreq state ({error}); "
                        "delete it and check the governor by hand") from None
    controller = CpufreqController.__new__(CpufreqController)
    controller.directory = directory
    controller._restore(state)
    path.unlink()
    return str(directory)
