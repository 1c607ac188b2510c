"""bench's floor on the tiny real build: the empty model's bare call, the same model through the pipeline code,
and every pipeline's time beyond the bare calls of the models it ran; strict JSON."""

from __future__ import annotations

import gzip
import json
import math

import numpy as np

from cbnet_tl.runtime.bundle import load_bundle
from cbnet_tl.runtime.pipelines import Pipeline
from cbnet_tl.runtime.specs import FALLBACK_PIPELINE, INVOKE_PROBE, PIPELINE_SPECS
from cbnet_tl.toolchain.analysis.bench import BareCalls, BenchConfig, Timing, run_bench, time_pipelines

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
        assert math.isclose(run["floor_vs_empty_call"], run["floor_call_us"] / run["empty_call_us"])
        assert math.isclose(run["floor_read_vs_empty_call"], run["floor_read_call_us"] / run["empty_call_us"])
        assert math.isclose(run["floor_ms_median"] * 1e3, run["floor_call_us"] / run["batch_size"])
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
    assert np.array_equal(timing.beyond, timing.seconds - [sum(ran.values()) for ran in timing.bare])
