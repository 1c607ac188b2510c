"""Energy meters on fake sysfs trees: hwmon power monitors (INA219, INA3221) and RAPL with wraparound."""

import time
from pathlib import Path

import pytest

from cbnet_tl.runtime.dvfs.meters import (
    HWMON_DIR,
    HwmonPowerMeter,
    MeterError,
    find_meter,
)
from cbnet_tl.toolchain.analysis.rapl import HOST_METERS, POWERCAP_DIR, RaplMeter


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def hwmon(root: Path, index: int, name: str, **files) -> Path:
    d = root / HWMON_DIR / f"hwmon{index}"
    d.mkdir(parents=True)
    (d / "name").write_text(f"{name}\n")
    for file, value in files.items():
        (d / file).write_text(f"{value}\n")
    return d


def rapl(root: Path, zone: str, energy_uj: int, max_range_uj: int = 262143328850, name="package-0") -> Path:
    d = root / POWERCAP_DIR / zone
    d.mkdir(parents=True)
    (d / "name").write_text(f"{name}\n")
    (d / "energy_uj").write_text(f"{energy_uj}\n")
    (d / "max_energy_range_uj").write_text(f"{max_range_uj}\n")
    return d


def test_ina219_power_is_integrated_over_time(tmp_path):
    d = hwmon(tmp_path, 0, "ina219", power1_input=2_000_000, in1_input=5000, curr1_input=400)
    clock = FakeClock()
    meter = HwmonPowerMeter(d, interval_s=0.01, clock=clock)
    assert meter.kind == "power" and meter.channel == 1
    meter.start(background=False)
    clock.now += 1.0
    (d / "power1_input").write_text("4000000\n")  # µW
    meter.sample()
    clock.now += 2.0
    reading = meter.stop()
    assert reading.joules == pytest.approx((2 + 4) / 2 * 1 + 4 * 2)
    assert reading.seconds == pytest.approx(3.0)
    assert reading.watts == pytest.approx(11 / 3)
    assert reading.source == "measured"
    assert "ina219" in reading.meter and reading.num_samples == 3


def test_ina3221_channel_power_is_volts_times_amps(tmp_path):
    d = hwmon(tmp_path, 2, "ina3221", in1_input=5000, curr1_input=600, in1_label="VDD_IN",
              in2_input=1000, curr2_input=100)
    clock = FakeClock()
    meter = HwmonPowerMeter(d, clock=clock)
    assert meter.kind == "volts*amps" and meter.channel == 1 and "VDD_IN" in meter.description
    meter.start(background=False)
    clock.now += 0.5
    assert meter.stop().joules == pytest.approx(5.0 * 0.6 * 0.5)
    assert HwmonPowerMeter(d, channel=2).channel == 2
    with pytest.raises(MeterError, match=r"Channel 7 not offered .*Expected one of \[1, 2\]"):
        HwmonPowerMeter(d, channel=7)


def test_hwmon_energy_counter_is_preferred(tmp_path):
    d = hwmon(tmp_path, 0, "ina238", energy1_input=1_000_000, power1_input=123)
    meter = HwmonPowerMeter(d, clock=FakeClock())
    assert meter.kind == "energy"
    meter.start(background=False)
    (d / "energy1_input").write_text("3500000\n")
    assert meter.stop().joules == pytest.approx(2.5)


def test_rapl_sums_packages_and_handles_wraparound(tmp_path):
    zone0 = rapl(tmp_path, "intel-rapl:0", energy_uj=999_000_000, max_range_uj=1_000_000_000)
    zone1 = rapl(tmp_path, "intel-rapl:1", energy_uj=10, name="package-1")
    meter = RaplMeter([zone0, zone1], clock=FakeClock())
    meter.start(background=False)
    (zone0 / "energy_uj").write_text("500000\n")  # wrapped: 1 J to the top, then 0.5 J
    (zone1 / "energy_uj").write_text("2000010\n")
    meter.sample()
    (zone0 / "energy_uj").write_text("1500000\n")
    reading = meter.stop()
    assert reading.joules == pytest.approx(1.5 + 2.0 + 1.0)
    assert reading.source == "measured" and "intel-rapl:0+intel-rapl:1" in reading.meter


def test_find_meter_prefers_a_board_monitor_and_skips_others(tmp_path):
    assert find_meter(tmp_path, HOST_METERS) is None
    hwmon(tmp_path, 0, "coretemp", temp1_input=40000)
    hwmon(tmp_path, 1, "amdgpu", power1_input=9_000_000)  # a GPU's power, not the board's: ignored
    rapl(tmp_path, "intel-rapl:0", energy_uj=5)
    rapl(tmp_path, "intel-rapl:0:0", energy_uj=3, name="core")  # a sub-zone: part of package 0
    assert find_meter(tmp_path) is None  # the board's runtime alone knows no RAPL: hosts pass it in
    meter = find_meter(tmp_path, HOST_METERS)
    assert isinstance(meter, RaplMeter) and [z.name for z in meter.zones] == ["intel-rapl:0"]
    hwmon(tmp_path, 3, "ina226", power1_input=1_000_000)
    meter = find_meter(tmp_path, HOST_METERS)
    assert isinstance(meter, HwmonPowerMeter) and meter.device.name == "hwmon3"


def test_background_sampling_thread(tmp_path):
    d = hwmon(tmp_path, 0, "ina219", power1_input=3_000_000)
    meter = HwmonPowerMeter(d, interval_s=0.002)
    meter.start()
    time.sleep(0.05)
    reading = meter.stop()
    assert reading.num_samples > 3
    assert reading.joules == pytest.approx(3.0 * reading.seconds, rel=1e-6)


def test_a_meter_that_goes_away_is_an_error(tmp_path):
    d = hwmon(tmp_path, 0, "ina219", power1_input=1)
    meter = HwmonPowerMeter(d, clock=FakeClock())
    meter.start(background=False)
    (d / "power1_input").unlink()
    with pytest.raises(MeterError, match="power1_input does not exist"):
        meter.stop()
    with pytest.raises(MeterError, match="no energyN_input, powerN_input or inN_input"):
        HwmonPowerMeter(hwmon(tmp_path, 1, "ina219"))
