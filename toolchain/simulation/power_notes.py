"""Where the built-in power tables' figures come from, or that they are assumed (``runtime/dvfs/power_tables.py``
holds the numbers the board uses), and the model as the simulator reports it."""

from __future__ import annotations

_PI4_NOTES = (
    "OPPs: read from the device (scaling_available_frequencies). Raspberry Pi OS lists 600/750/1000/1500 MHz; "
    "the mainline raspberrypi-cpufreq driver offers 100 MHz steps (RASPBERRYPI_FREQ_INTERVAL); rev 1.4 and the "
    "Pi 400 reach 1800 MHz. 600/750/1000/1500 is only the default when no list is given.",
    "V(f): ASSUMED linear from 0.825 V at 600 MHz to 0.90 V at 1500 MHz (a common assumption; the firmware "
    "sets the voltage and does not expose it per step). Beyond 1500 MHz the line is extended.",
    "Board power: idle 2.7 W (540 mA at 5 V) and 6.4 W with `stress --cpu 4` (1280 mA) at the stock 1.5 GHz, "
    "from Jeff Geerling's Pi Dramble power-consumption benchmarks for the Pi 4 B.",
    "One busy core: ASSUMED to draw a quarter of the 4-core increase, (6.4 - 2.7) / 4 = 0.925 W at 1.5 GHz. "
    "Shared L2/DRAM activity makes the true single-core share larger; that would favour the top frequency "
    "even more when inferences run back to back.",
    "Idle power: ASSUMED independent of the frequency set (idle cores are clock-gated in WFI); no sourced figure "
    "for idle power per frequency exists for the Pi 4.",
    "Frequency switch: 355 us, the 'measured value of how long it takes to change frequency' in the Raspberry Pi "
    "kernel's bcm2835-cpufreq driver (a firmware mailbox call). Energy of a switch: board power at the higher "
    "of the two frequencies for that time (ASSUMED). Pass the device's cpuinfo_transition_latency when it has one.",
    "Firmware throttling (temperature, under-voltage) can override the kernel's choice; `vcgencmd get_throttled` tells.",
)

_PI5_NOTES = (
    "OPPs: read from the device (scaling_available_frequencies). Raspberry Pi's config.txt documentation gives the Pi 5 "
    "arm_freq 2400 MHz and arm_freq_min 1500 MHz (as recalled, UNVERIFIED here); the raspberrypi-cpufreq driver steps "
    "by 100 MHz (RASPBERRYPI_FREQ_INTERVAL), so 1500-2400 MHz in 100 MHz steps is only the default when no list is given.",
    "V(f): ASSUMED linear from 0.75 V at 1500 MHz to 0.90 V at 2400 MHz (no published per-step voltage; the firmware "
    "sets it; `vcgencmd measure_volts core` reads it on the board).",
    "Board power: idle 2.7 W and 7.0 W with 4 cores loaded at 2.4 GHz are ASSUMED, of the order published reviews "
    "report for a Pi 5 with no peripherals (no figure from Raspberry Pi; not verified here). Use a meter for real figures.",
    "One busy core: ASSUMED a quarter of the 4-core increase, (7.0 - 2.7) / 4 = 1.075 W at 2.4 GHz. Idle power "
    "ASSUMED independent of the frequency set.",
    "Frequency switch: 355 us, ASSUMED equal to the Pi 4's (a firmware mailbox call on both); pass the device's "
    "cpuinfo_transition_latency when it has one.",
    "CPU: Broadcom BCM2712, 4x Cortex-A76 at up to 2.4 GHz (Raspberry Pi 5 product brief); the A76 has the int8 "
    "dot-product instructions (Armv8.2 DotProd) the Pi 4's A72 lacks.",
)

_EDGE_TPU_NOTE = (
    "Edge TPU: 4 TOPS int8 at 0.5 W per TOPS, i.e. about 2 W at full throughput (Coral product documentation). "
    "Counted for the whole active time of every inference, as an upper bound: the trace does not say which stage "
    "ran on the TPU, and its idle draw is not published, so it is not modelled."
)

NOTES = {
    "rpi4": _PI4_NOTES,
    "rpi5": _PI5_NOTES,
    "coral-usb": ("Host CPU: ASSUMED to be a Raspberry Pi 4; all rpi4 figures below apply.",) + _PI4_NOTES
    + (_EDGE_TPU_NOTE,),
    "coral-devboard": (
        "OPPs and voltages: 800/1000 MHz at 0.90 V and 1300/1500 MHz at 1.00 V, as recalled from the mainline "
        "imx8mq.dtsi A53 OPP table (UNVERIFIED: read the board's list; speed grades differ).",
        "Board power: idle 3.0 W and 4-core load 5.0 W are PLACEHOLDERS (no public measurement found). Use a "
        "meter (INA2xx via hwmon) on this board; treat modelled energy here as illustrative only.",
        "One busy core: ASSUMED a quarter of the 4-core increase. Idle power ASSUMED independent of frequency.",
        "Frequency switch: 100 us, ASSUMED (no sourced figure; the kernel reports cpuinfo_transition_latency).",
        _EDGE_TPU_NOTE,
    ),
}


def assumptions(table) -> list:
    """A table's own notes (a user's file), else the built-in table's."""
    return list(table.notes or NOTES.get(table.target, ()))


def describe_model(model) -> dict:
    """The energy model as ``simulate --json`` reports it: P(f) and V(f) per OPP, idle power, the switch."""
    return {
        "target": model.table.target,
        "active_cores": model.table.active_cores,
        "energy_source": model.source,
        "idle_w": model.idle_w,
        "switch_us": model.switch_seconds * 1e6,
        "frequencies": {
            str(khz // 1000): {"volts": round(model.volts(khz), 4), "active_w": round(model.active_w(khz), 4)}
            for khz in model.frequencies_khz
        },
        "assumptions": assumptions(model.table),
    }
