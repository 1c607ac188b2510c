"""The one table of deployment targets. CLI choices, validation, bundles and tests all read it.

A new target is a new ``Target`` entry (Coral targets live in ``targets_coral.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from cbnet_tl.runtime.errors import CbnetError


@dataclass(frozen=True)
class Target:
    name: str
    title: str
    power_model: str  # key into cbnet_tl.runtime.power_tables
    requirements: tuple  # device pip requirements
    install_notes: str
    accelerator: Optional[str] = None  # "edgetpu" for Coral targets
    install_dir: str = "/opt/cbnet-tl"
    extra_templates: tuple = field(default_factory=tuple)  # (template name, output name)


RPI4 = Target(
    name="rpi4",
    title="Raspberry Pi 4 (64-bit Raspberry Pi OS, Python 3.9+)",
    power_model="rpi4",
    requirements=("numpy>=1.23", "Pillow>=9.0", "ai-edge-litert>=1.0"),
    install_notes=(
        "Use the 64-bit (aarch64) OS: ai-edge-litert has no 32-bit armv7 wheel. If you must use "
        "tflite-runtime instead (Python 3.11 only, last release 2.14), pin `numpy<2`, because "
        "tflite-runtime 2.14 crashes with numpy 2."
    ),
)

TARGETS = {RPI4.name: RPI4}


def register(target: Target) -> None:
    if target.name in TARGETS:
        raise ValueError(f"Target {target.name!r} is already registered")
    TARGETS[target.name] = target


def get_target(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise CbnetError(f"Unknown target {name!r}. Expected one of {sorted(TARGETS)}") from None


def _load_plugins() -> None:
    """Targets defined in their own modules (one file per family)."""
    from cbnet_tl.toolchain import targets_coral  # noqa: F401  (registers on import)


_load_plugins()
