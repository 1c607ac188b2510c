"""bench's floor on the tiny real build: the empty model's bare call, the same model through the pipeline code,
and every pipeline's time beyond the bare calls of the models it ran; strict JSON."""

from __future__ import annotations

import gzip
import json
import math

import numpy as np
import pytest

from cbnet_tl.runtime.bundle import load_bundle
from cbnet_tl.runtime.pipelines import Pipeline
from cbnet_tl.runtime.specs import FALLBACK_PIPELINE, INVOKE_PROBE, PIPELINE_SPECS
from cbnet_tl.toolchain.analysis.bench import BareCalls, BenchConfig, Timing, _floor, run_bench, time_pipelines

from conftest import MNIST_8K


def _test_split():
    images = np.frombuffer(gzip.open(MNIST_8K / "t10k-images-idx3-ubyte.gz").read(), np.uint8, offset=16)
    labels = np.frombuffer(gzip.open(MNIST_8K / "t10k-labels-idx1-ubyte.gz").read(), np.uint8, offset=8)
    return images.reshape(-1, 28, 28, 1), labels.astype(np.int64)


def test_bench_reports_the_floor_and_the_time_beyond_the_bare_calls(tiny_build):
    images, labels = _test_split()
    config = BenchConfig(batch_sizes=(1, 8), precisions=("int8",), tuned=False, num_images=64, warmup_batches=1)
    report = json.loads(json.dumps(run_bench(tiny_build, images[:400], labels[:400], config), allow_nan=False))
    for run in report["runs"]:
        assert 0 < run["invoke_overhead_us"] and 0 < run["empty_call_us"]
        assert all(0 < run[key] < math.inf for key in ("floor_ms_median", "floor_call_us", "floor_vs_empty_call",
                                                        "floor_read_call_us", "floor_read_vs_empty_call"))
        for name, row in run["pipelines"].items():
            assert math.isfinite(row["beyond_bare_us_median"])
            assert set(row["stage_ms_median"]) <= set(PIPELINE_SPECS[name].models)
            assert 0 < sum(row["stage_ms_median"].values()) and row["latency_ms_median"] > 0


def test_each_call_is_paired_with_bare_calls_of_the_models_it_ran_at_their_sizes(tiny_build):
    """cbnet-fallback at a threshold between confidences: some calls run LeNet on part of a batch only."""
    images = _test_split()[0][:64]
    bundle = load_bundle(tiny_build, models=list(PIPELINE_SPECS[FALLBACK_PIPELINE].models))
    observed = Pipeline(bundle, FALLBACK_PIPELINE, {"confidence_threshold": 0.0}).classify(images).confidences
    pipeline = Pipeline(bundle, FALLBACK_PIPELINE, {"confidence_threshold": float(np.median(observed))})
    sizes = []

    class Recording(BareCalls):
        def __call__(self, name, num_images):
            sizes.append((name, num_images))
            return super().__call__(name, num_images)

    bare = Recording(load_bundle(tiny_build, models=[*PIPELINE_SPECS[FALLBACK_PIPELINE].models, INVOKE_PROBE]).models)
    timing = time_pipelines({FALLBACK_PIPELINE: pipeline}, images, 8, 1, bare)[FALLBACK_PIPELINE]
    assert isinstance(timing, Timing) and len(timing.seconds) == len(timing.bare) == 8
    first, second = PIPELINE_SPECS[FALLBACK_PIPELINE].models
    expected = []
    for start in range(0, 64, 8):
        unsure = int(np.sum(observed[start:start + 8] < pipeline.options["confidence_threshold"]))
        expected += [(first, 8)] + ([(second, unsure)] if unsure else [])
    assert sizes == expected and any(0 < n < 8 for name, n in sizes if name == second)
    assert np.all(timing.beyond < timing.seconds)  # every call ran a model, and its bare call took time


def test_the_floors_keys_from_known_medians():
    """An empty call of 2 µs, 5 µs through the pipeline code and 6 µs with confidences read, per call of 4 images."""
    assert _floor({"empty": 2e-6, "through": 5e-6, "read": 6e-6}, 4) == pytest.approx({
        "floor_ms_median": 0.00125, "empty_call_us": 2.0, "floor_call_us": 5.0, "floor_vs_empty_call": 2.5,
        "floor_read_call_us": 6.0, "floor_read_vs_empty_call": 3.0})


def test_time_beyond_the_bare_calls_and_stage_medians_from_known_calls():
    """Three calls: the first two ran both models, the third only the first (no image went on)."""
    timing = Timing(np.array([0.010, 0.020, 0.030]),
                    ({"cbnet": 0.001, "lenet": 0.004}, {"cbnet": 0.002, "lenet": 0.008}, {"cbnet": 0.009}))
    assert timing.beyond == pytest.approx([0.005, 0.010, 0.021])
    # per model over the calls that ran it: cbnet's median of 1, 2 and 9 ms (its mean would be 4)
    assert timing.stage_medians() == pytest.approx({"cbnet": 0.002, "lenet": 0.006})
