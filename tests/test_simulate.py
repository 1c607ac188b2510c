"""simulate: replay traces through the rpi4 power model; eenet against the hindsight oracle.

The synthetic traces mimic what this machine measures: tens of µs per stage, lognormal noise and OS
jitter spikes of tens of µs on 1% of the stages. The power model is the documented rpi4 table, untouched.
"""

import numpy as np
import pytest

from cbnet_tl.runtime.errors import DataError, DvfsError
from cbnet_tl.toolchain.simulation.simulate import (
    compare_to_references,
    default_deadline_ms,
    infer_pipeline,
    path_of,
    simulate,
    top_frequency_latency,
)

POLICIES = ["performance", "powersave", "fixed:1000", "eenet", "oracle"]


def noisy(rng, num, base_s):
    times = base_s * rng.lognormal(0.0, 0.05, num)
    spikes = rng.random(num) < 0.01
    times[spikes] += rng.uniform(10e-6, 40e-6, spikes.sum())
    return times


def branchynet_trace(num=2000, seed=0):
    rng = np.random.default_rng(seed)
    trunk, tail, hard = noisy(rng, num, 40e-6), noisy(rng, num, 55e-6), rng.random(num) < 0.2  # ~80% exit
    return [[("trunk_branch", a)] + ([("main_tail", b)] if h else []) for a, b, h in zip(trunk, tail, hard)]


def cbnet_trace(num=2000, seed=1):
    rng = np.random.default_rng(seed)
    return [[("cbnet", a)] for a in noisy(rng, num, 85e-6)]


TRACES = {"branchynet": branchynet_trace(), "cbnet": cbnet_trace()}


def deadline_of(trace, statistic):
    # "twice the top-frequency latency". Not of the median: BranchyNet's median is the early-exit latency,
    # and twice that can be shorter than the full path at any frequency.
    if statistic == "slowest-path":
        return default_deadline_ms(top_frequency_latency(trace)) / 1e3
    return 2 * top_frequency_latency(trace)[statistic] / 1e3


@pytest.mark.parametrize("pipeline", ["branchynet", "cbnet"])
@pytest.mark.parametrize("arrivals", ["back-to-back", "periodic"])
@pytest.mark.parametrize("statistic", ["mean", "p99", "slowest-path"])
def test_eenet_is_close_to_the_oracle_and_meets_deadlines(pipeline, arrivals, statistic):
    trace = TRACES[pipeline]
    deadline = deadline_of(trace, statistic)
    result = simulate(trace, "rpi4", deadline, deadline if arrivals == "periodic" else None, POLICIES)
    eenet, oracle, performance = (result["policies"][p] for p in ("eenet", "oracle", "performance"))
    assert result["pipeline"] == pipeline and result["arrivals"] == arrivals
    assert abs(eenet["energy_j"] / oracle["energy_j"] - 1) <= 0.05
    assert eenet["miss_rate"] <= 0.01
    assert eenet["misses"] <= performance["misses"]


def test_energy_against_the_references_by_hand():
    """eenet at 1.5 J, performance at 2 J, the oracle at 1 J: 25% below performance, 50% above the oracle."""
    results = {"performance": {"energy_j": 2.0}, "eenet": {"energy_j": 1.5}, "oracle": {"energy_j": 1.0}}
    compare_to_references(results)
    assert results["eenet"]["energy_vs_performance"] == pytest.approx(-0.25)
    assert results["eenet"]["energy_vs_oracle"] == pytest.approx(0.5)
    assert results["performance"]["energy_vs_oracle"] == pytest.approx(1.0)
    assert results["oracle"]["energy_vs_performance"] == pytest.approx(-0.5)
    alone = {"eenet": {"energy_j": 1.5}}  # no reference ran: nothing to compare with
    compare_to_references(alone)
    assert alone == {"eenet": {"energy_j": 1.5}}


@pytest.mark.parametrize("pipeline", ["branchynet", "cbnet"])
@pytest.mark.parametrize("period_factor", [None, 1.0, 3.0])
def test_the_oracle_is_a_lower_bound(pipeline, period_factor):
    trace = TRACES[pipeline][:800]
    deadline = deadline_of(trace, "p99")
    period = None if period_factor is None else period_factor * deadline
    for switch_seconds in (None, 10e-6):
        result = simulate(trace, "rpi4", deadline, period, POLICIES, switch_seconds=switch_seconds)
        oracle = result["policies"]["oracle"]
        assert oracle["energy_j"] == pytest.approx(oracle["planned_energy_j"], rel=1e-9)
        for name, other in result["policies"].items():
            if other["misses"] <= oracle["misses"]:
                assert other["energy_j"] >= oracle["energy_j"] * (1 - 1e-9), name


def test_back_to_back_the_model_favours_the_top_frequency():
    trace = TRACES["cbnet"][:500]
    result = simulate(trace, "rpi4", deadline_of(trace, "p99"), None, POLICIES)
    policies = result["policies"]
    assert policies["oracle"]["time_at_frequency"] == policies["performance"]["time_at_frequency"]
    assert policies["eenet"]["energy_j"] == pytest.approx(policies["performance"]["energy_j"])
    assert policies["powersave"]["energy_j"] > 1.5 * policies["performance"]["energy_j"]


def test_eenet_switches_within_an_inference_when_switches_are_cheap():
    rng = np.random.default_rng(3)
    num = 1500
    trunk, tail, hard = noisy(rng, num, 1e-3), noisy(rng, num, 3e-3), rng.random(num) < 0.2
    trace = [[("trunk_branch", a)] + ([("main_tail", b)] if h else []) for a, b, h in zip(trunk, tail, hard)]
    deadline = 6.5e-3
    result = simulate(trace, "rpi4", deadline, 20e-3, ["performance", "eenet", "oracle"], switch_seconds=20e-6)
    eenet = result["policies"]["eenet"]
    assert eenet["switches"] > 100 and set(eenet["time_at_frequency"]) >= {"600", "1500"}
    assert eenet["energy_vs_oracle"] <= 0.05 and eenet["miss_rate"] <= 0.01
    assert eenet["energy_vs_performance"] < 0  # small: the idle board dominates a 20 ms period


def test_result_says_what_it_is():
    trace = TRACES["branchynet"][:200]
    result = simulate(trace, "rpi4", 1e-3, None, ["performance", "oracle"], frequencies_khz=[600000, 1500000])
    assert result["energy_source"] == "modelled"
    assert result["frequencies_mhz"] == [600, 1500]
    assert any("count as times at the top frequency (1500 MHz)" in note for note in result["notes"])
    assert result["assumptions"] and result["num_inferences"] == 200
    assert set(result["top_frequency_latency_ms"]) == {"median", "mean", "p95", "p99", "max", "median_by_path"}
    assert result["unavoidable_miss_rate"] == 0.0  # every sample meets 1 ms at the top frequency
    for field in ("energy_j", "miss_rate", "latency_ms_median", "latency_ms_p95", "time_at_frequency"):
        assert field in result["policies"]["performance"]


def test_pipelines_and_paths():
    assert infer_pipeline(["cbnet"]) == "cbnet" and infer_pipeline(["host", "cbnet", "lenet"]) == "cbnet-fallback"
    assert infer_pipeline(["trunk_branch"]) == "branchynet"
    assert infer_pipeline(["lenet"]) == "lenet" and infer_pipeline(["branch"]) == "branch"
    assert path_of("branchynet", ["trunk_branch"]) == "branch"
    assert path_of("branchynet", ["trunk_branch", "main_tail"]) == "branch+main"
    assert path_of("cbnet", ["cbnet"]) == "ae+classifier"
    assert path_of("cbnet-fallback", ["cbnet"]) == "cbnet"
    assert path_of("cbnet-fallback", ["host", "cbnet", "lenet"]) == "cbnet+lenet"
    with pytest.raises(DataError, match="Cannot tell the pipeline"):
        infer_pipeline(["autoencoder", "branch"])


def test_bad_input():
    with pytest.raises(DataError, match="at least one sample"):
        simulate([], "rpi4", 1e-3, None, ["eenet"])
    with pytest.raises(DataError, match=r"sample 1 .*seconds >= 0"):
        simulate([[("lenet", 1e-4)], [("lenet", -1.0)]], "rpi4", 1e-3, None, ["eenet"])
    with pytest.raises(DataError, match="Cannot tell the pipeline"):
        simulate([[("mystery", 1e-4)]], "rpi4", 1e-3, None, ["eenet"])
    with pytest.raises(DvfsError, match="'off' leaves the frequency to the governor"):
        simulate([[("lenet", 1e-4)]], "rpi4", 1e-3, None, ["off"])
    with pytest.raises(DvfsError, match="Unknown power-model target"):
        simulate([[("lenet", 1e-4)]], "pi5", 1e-3, None, ["eenet"])


def test_the_frequency_is_set_before_the_first_arrival():
    # a switch (355 us) is longer than the period: only the one made before the stream starts is free of misses
    trace = [[("cbnet", 80e-6)] for _ in range(300)]
    opps = [khz * 1000 for khz in range(600, 1600, 100)]
    result = simulate(trace, "rpi4", 160e-6, 160e-6, ["performance", "fixed:800", "eenet", "oracle"],
                      frequencies_khz=opps)
    policies = result["policies"]
    assert policies["fixed:800"]["misses"] == 0 and policies["fixed:800"]["switches"] == 1
    assert set(policies["oracle"]["time_at_frequency"]) == {"800"} and policies["oracle"]["misses"] == 0
    assert policies["oracle"]["energy_vs_performance"] < 0  # V(f) falls with f: less energy above idle
    assert policies["eenet"]["miss_rate"] <= 0.01 and policies["eenet"]["energy_vs_oracle"] <= 0.05


def test_default_deadline_covers_the_slowest_path():
    trace = branchynet_trace(num=1000)
    latency = top_frequency_latency(trace)
    assert set(latency["median_by_path"]) == {"branch", "branch+main"}
    full = latency["median_by_path"]["branch+main"]
    assert full > latency["median"] and default_deadline_ms(latency) == pytest.approx(2 * full)
    result = simulate(trace, "rpi4", default_deadline_ms(latency) / 1e3, None, ["performance"])
    assert result["unavoidable_miss_rate"] == 0.0
