"""Load the Coral Edge TPU delegate, or fall back to the CPU with a warning that names the cause."""

from __future__ import annotations

import platform
from dataclasses import dataclass
from enum import Enum
from typing import Optional

from cbnet_tl.runtime.interpreter import find_interpreter


class Device(str, Enum):
    """What runs a model: the CPU, or the Coral Edge TPU through its delegate."""

    CPU = "cpu"
    EDGETPU = "edgetpu"


EDGETPU_LIBRARIES = {"Linux": "libedgetpu.so.1", "Darwin": "libedgetpu.1.dylib", "Windows": "edgetpu.dll"}


@dataclass(frozen=True)
class Accelerator:
    """What will run the models: the delegates to pass to the interpreter, and a device label for results."""

    delegates: tuple
    device: str  # a Device value
    warning: Optional[str] = None


def edgetpu_library(system: Optional[str] = None) -> str:
    system = system or platform.system()
    return EDGETPU_LIBRARIES.get(system, EDGETPU_LIBRARIES["Linux"])


def load_edgetpu(library: Optional[str] = None, device: Optional[str] = None) -> Accelerator:
    """The Edge TPU delegate (``device`` like ``usb`` or ``pci:0`` picks one of several), or the CPU."""
    name = library or edgetpu_library()
    options = {"device": device} if device else {}
    try:
        delegate = find_interpreter().load_delegate(name, options)
    except (ValueError, OSError, RuntimeError) as error:
        cause = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return Accelerator((), Device.CPU.value, f"Edge TPU delegate {name} could not be loaded ({cause}); running on the CPU. "
                                      "Install libedgetpu1-std (or -max) and plug in the accelerator")
    return Accelerator((delegate,), Device.EDGETPU.value)
