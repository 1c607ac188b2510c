"""The power model: tables as data, P(f) over the device's OPP list, energy of a run."""

import pytest

from cbnet_tl.runtime.dvfs.energy import EnergyModel, model_for
from cbnet_tl.runtime.dvfs.power_tables import TABLES, power_table
from cbnet_tl.toolchain.simulation.dvfs_report import frequency_curve
from cbnet_tl.toolchain.simulation.power_notes import assumptions, describe_model
from cbnet_tl.runtime.errors import DvfsError


def test_rpi4_defaults_and_documented_figures():
    model = model_for("rpi4")
    assert model.frequencies_khz == (600000, 750000, 1000000, 1500000)
    assert model.source == "modelled"
    assert model.volts(600000) == pytest.approx(0.825)
    assert model.volts(1500000) == pytest.approx(0.90)
    assert model.volts(1800000) == pytest.approx(0.925)  # the line extended for rev 1.4 boards
    assert model.idle_w == 2.7
    assert model.active_w(1500000) == pytest.approx(2.7 + (6.4 - 2.7) / 4)  # one core of four
    assert model.switch_seconds == pytest.approx(355e-6)


def test_dynamic_power_scales_as_v_squared_f():
    model = model_for("rpi4")
    ratio = model.core_w(1000000) / model.core_w(1500000)
    assert ratio == pytest.approx(model.volts(1000000) ** 2 * 1.0 / (0.90 ** 2 * 1.5))


def test_the_device_list_is_used():
    mainline = [mhz * 1000 for mhz in range(600, 1501, 100)]
    model = model_for("rpi4", reversed(mainline), switch_seconds=20e-6)
    assert model.frequencies_khz == tuple(mainline)
    assert model.top_khz == 1500000 and model.switch_seconds == 20e-6
    curve = frequency_curve(model, {"cbnet": 1.0})  # 1 ms at the top takes 2.5 ms at 600 MHz (time ∝ 1/f)
    assert curve["energy_mj"]["cbnet"][curve["mhz"].index(600)] == pytest.approx(model.active_w(600000) * 2.5)


def test_what_the_model_implies_for_one_inference():
    """Back to back, board idle power makes the top frequency cheapest per inference (race to idle);
    with idle gaps, only the dynamic part counts and the lowest frequency is cheapest per cycle."""
    model = model_for("rpi4")
    cycles = 1e6
    back_to_back = {f: model.active_w(f) * cycles / (f * 1e3) for f in model.frequencies_khz}
    dynamic = {f: (model.active_w(f) - model.idle_w) * cycles / (f * 1e3) for f in model.frequencies_khz}
    assert min(back_to_back, key=back_to_back.get) == 1500000
    assert min(dynamic, key=dynamic.get) == 600000


def test_energy_of_a_run():
    model = model_for("rpi4")
    busy = {1500000: 0.002, 600000: 0.001}
    expected = model.active_w(1500000) * 0.002 + model.active_w(600000) * 0.001 + 2.7 * 0.01
    expected += 2 * 355e-6 * model.active_w(1500000)
    assert model.energy_j(busy, 0.01, [(1500000, 600000), (600000, 1500000)]) == pytest.approx(expected)
    assert model.switch_j(600000, 600000) == 0.0


def test_every_table_documents_its_assumptions():
    assert set(TABLES) == {"rpi4", "rpi5", "coral-usb", "coral-devboard"}
    for target, table in TABLES.items():
        assert table.target == target and len(assumptions(table)) >= 3
        described = describe_model(model_for(target))
        assert described["energy_source"] == "modelled" and described["assumptions"]
    assert power_table("coral-usb").accelerator_w == 2.0
    assert model_for("coral-usb").active_w(1500000) == pytest.approx(model_for("rpi4").active_w(1500000) + 2.0)


def test_bad_input_is_refused():
    with pytest.raises(DvfsError, match=r"Unknown power-model target 'pi5'. Expected one of \['rpi4'"):
        model_for("pi5")
    with pytest.raises(DvfsError, match=r"positive integer frequencies in kHz. Received: \[0\]"):
        model_for("rpi4", [0])
    with pytest.raises(DvfsError, match="switch_seconds >= 0"):
        EnergyModel(power_table("rpi4"), (600000,), -1.0)
