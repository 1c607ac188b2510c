"""Power tables per target, as data; where each figure comes from, or that it is assumed, is said beside it in the
toolchain (``simulation/power_notes.py``: the board needs only the numbers).

``energy.EnergyModel`` turns a table into P(f) over the device's OPP list; for one single-threaded inference

    P_active(f) = idle_w + active_cores · core_w(f) + accelerator_w
    core_w(f)   = core_w_ref · V(f)² · f / (V(f_ref)² · f_ref)          (dynamic power ∝ C·V²·f)
    core_w_ref  = (loaded_w − idle_w) / loaded_cores                     (measured at f_ref = loaded_mhz)

and the board draws ``idle_w`` between inferences, whatever frequency is set.
"""

from __future__ import annotations

from dataclasses import dataclass

from cbnet_tl.runtime.errors import DvfsError


@dataclass(frozen=True)
class PowerTable:
    target: str
    cpu: str
    default_frequencies_mhz: tuple  # used only when the device's own OPP list is not given
    volt_points: tuple  # ((MHz, V), ...): V(f) is linear between points and extended beyond them
    idle_w: float  # whole board, no inference running
    loaded_w: float  # whole board, ``loaded_cores`` cores busy at ``loaded_mhz``
    loaded_cores: int
    loaded_mhz: int
    switch_seconds: float  # one frequency change; the requesting core waits that long
    active_cores: int = 1  # the interpreter runs with num_threads=1
    accelerator_w: float = 0.0  # added while an inference runs (upper bound, see notes)
    notes: tuple = ()  # where the figures come from (a user's table file; the built-in tables' are the toolchain's)


TABLES = {
    "rpi4": PowerTable(target="rpi4", cpu="Broadcom BCM2711, 4x Cortex-A72 sharing one cpufreq policy",
                       default_frequencies_mhz=(600, 750, 1000, 1500), volt_points=((600, 0.825), (1500, 0.90)),
                       idle_w=2.7, loaded_w=6.4, loaded_cores=4, loaded_mhz=1500, switch_seconds=355e-6),
    "rpi5": PowerTable(target="rpi5", cpu="Broadcom BCM2712, 4x Cortex-A76 sharing one cpufreq policy",
                       default_frequencies_mhz=tuple(range(1500, 2401, 100)), volt_points=((1500, 0.75), (2400, 0.90)),
                       idle_w=2.7, loaded_w=7.0, loaded_cores=4, loaded_mhz=2400, switch_seconds=355e-6),
    "coral-usb": PowerTable(target="coral-usb", cpu="host: Raspberry Pi 4 (BCM2711) with the Coral USB Accelerator",
                            default_frequencies_mhz=(600, 750, 1000, 1500), volt_points=((600, 0.825), (1500, 0.90)),
                            idle_w=2.7, loaded_w=6.4, loaded_cores=4, loaded_mhz=1500, switch_seconds=355e-6,
                            accelerator_w=2.0),
    "coral-devboard": PowerTable(target="coral-devboard",
                                 cpu="NXP i.MX 8M Quad, 4x Cortex-A53 up to 1.5 GHz, with an Edge TPU",
                                 default_frequencies_mhz=(800, 1000, 1300, 1500),
                                 volt_points=((800, 0.90), (1000, 0.90), (1300, 1.00), (1500, 1.00)),
                                 idle_w=3.0, loaded_w=5.0, loaded_cores=4, loaded_mhz=1500, switch_seconds=100e-6,
                                 accelerator_w=2.0),
}


def power_table(target: str) -> PowerTable:
    """The built-in table of ``target``."""
    if target not in TABLES:
        raise DvfsError(f"Unknown power-model target {target!r}. Expected one of {list(TABLES)}")
    return TABLES[target]
