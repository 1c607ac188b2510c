"""Coral targets: a Raspberry Pi with the USB Accelerator, and the Coral Dev Board.

Their bundles carry the same batch-1, int8-in/int8-out models (the Edge TPU's requirements), the
Edge TPU op report, and either the compiled ``*_edgetpu.tflite`` files or a script that compiles them.
"""

from cbnet_tl.toolchain.targets import Target, register

CORAL_EXTRA_TEMPLATES = (("coral/README.md.j2", "README.md"), ("coral/compile_edgetpu.sh.j2", "compile_edgetpu.sh"))

CORAL_USB = Target(
    name="coral-usb",
    title="Raspberry Pi 4 with the Coral USB Accelerator (64-bit OS)",
    power_model="coral-usb",
    requirements=("numpy>=1.23", "Pillow>=9.0", "ai-edge-litert>=1.0"),
    install_notes="The Edge TPU runtime comes from Coral's apt repository (libedgetpu1-std, or libedgetpu1-max for the "
                  "maximum clock, which runs hotter).",
    accelerator="edgetpu",
    extra_templates=CORAL_EXTRA_TEMPLATES,
)

CORAL_DEVBOARD = Target(
    name="coral-devboard",
    title="Coral Dev Board (Mendel Linux, aarch64)",
    power_model="coral-devboard",
    requirements=("numpy>=1.23", "Pillow>=9.0", "ai-edge-litert>=1.0"),
    install_notes="Mendel Linux ships libedgetpu; keep it current with `sudo apt-get update && sudo apt-get dist-upgrade`.",
    accelerator="edgetpu",
    extra_templates=CORAL_EXTRA_TEMPLATES,
)

for _target in (CORAL_USB, CORAL_DEVBOARD):
    register(_target)
