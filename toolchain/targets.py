"""The one table of deployment targets. CLI choices, validation, bundles and tests all read it.

A new target is a new ``Target`` entry in ``TARGETS``. Coral targets carry the same batch-1,
int8-in/int8-out models (the Edge TPU's requirements), the Edge TPU op report, and either the compiled
``*_edgetpu.tflite`` files or a script that compiles them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from cbnet_tl.runtime.delegates import Device
from cbnet_tl.runtime.errors import CbnetError

EDGETPU = Device.EDGETPU.value  # the one accelerator kind so far


@dataclass(frozen=True)
class Target:
    name: str
    title: str
    power_model: str  # key into cbnet_tl.runtime.dvfs.power_tables
    requirements: tuple  # device pip requirements
    install_notes: str
    accelerator: Optional[str] = None  # EDGETPU for Coral targets
    install_dir: str = "/opt/cbnet-tl"
    extra_templates: tuple = field(default_factory=tuple)  # (template name, output name)
    qemu_cpu: str = "cortex-a72"  # the board's core as qemu-aarch64 names it (arm64 check, bench --arm64)

    @property
    def uses_edgetpu(self) -> bool:
        return self.accelerator == EDGETPU


# what every target's bundle installs on the device (an interpreter, and numpy and Pillow for the runtime)
LITERT_REQUIREMENTS = ("numpy>=1.23", "Pillow>=9.0", "ai-edge-litert>=1.0")

RPI4 = Target(
    name="rpi4",
    title="Raspberry Pi 4 (64-bit Raspberry Pi OS, Python 3.9+)",
    power_model="rpi4",
    requirements=LITERT_REQUIREMENTS,
    install_notes=(
        "Use the 64-bit (aarch64) OS: ai-edge-litert has no 32-bit armv7 wheel. If you must use "
        "tflite-runtime instead (Python 3.11 only, last release 2.14), pin `numpy<2`, because "
        "tflite-runtime 2.14 crashes with numpy 2."
    ),
)

RPI5 = Target(
    name="rpi5",
    title="Raspberry Pi 5 (64-bit Raspberry Pi OS, Python 3.9+)",
    power_model="rpi5",
    requirements=LITERT_REQUIREMENTS,
    install_notes=(
        "Use the 64-bit (aarch64) OS: ai-edge-litert has no 32-bit armv7 wheel. The Pi 5's Cortex-A76 has the int8 "
        "dot-product instructions the Pi 4's Cortex-A72 lacks, so the interpreter runs other (faster) int8 kernels here."
    ),
    qemu_cpu="cortex-a76",
)

CORAL_EXTRA_TEMPLATES = (("coral/README.md.j2", "README.md"), ("coral/compile_edgetpu.sh.j2", "compile_edgetpu.sh"))

CORAL_USB = Target(
    name="coral-usb",
    title="Raspberry Pi 4 with the Coral USB Accelerator (64-bit OS)",
    power_model="coral-usb",
    requirements=LITERT_REQUIREMENTS,
    install_notes="The Edge TPU runtime comes from Coral's apt repository (libedgetpu1-std, or libedgetpu1-max for the "
                  "maximum clock, which runs hotter).",
    accelerator=EDGETPU,
    extra_templates=CORAL_EXTRA_TEMPLATES,
)

CORAL_DEVBOARD = Target(
    name="coral-devboard",
    title="Coral Dev Board (Mendel Linux, aarch64)",
    power_model="coral-devboard",
    requirements=LITERT_REQUIREMENTS,
    install_notes="Mendel Linux ships libedgetpu; keep it current with `sudo apt-get update && sudo apt-get dist-upgrade`.",
    accelerator=EDGETPU,
    extra_templates=CORAL_EXTRA_TEMPLATES,
    qemu_cpu="cortex-a53",  # NXP i.MX 8M
)

TARGETS = {target.name: target for target in (RPI4, RPI5, CORAL_USB, CORAL_DEVBOARD)}


def get_target(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise CbnetError(f"Unknown target {name!r}. Expected one of {sorted(TARGETS)}") from None
