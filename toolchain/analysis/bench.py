"""``cbnet-tl bench``: every pipeline timed the same way, side by side.

Same interpreter, threads and batch size for every pipeline; each ``classify`` call is timed from outside,
so the check of the images, the gate and the decision are inside the timed region. Pipelines are
interleaved batch by batch, so the machine's noise falls on all of them alike. Ratios are taken within one
run. Each timed pipeline has interpreters of its own, so no pipeline resizes another's tensors.

The floor, honestly: the bare call of an empty model (``set_tensor`` + ``invoke`` + ``get_tensor``,
nothing else) and the same model through the pipeline code (also with its confidences read), timed in a
loop of their own; and for each pipeline, its time beyond the bare calls of the models it ran (each model
at the number of images it ran on in that call, timed right after it).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from cbnet_tl.runtime.bundle import load_bundle, open_manifest
from cbnet_tl.runtime.errors import CbnetError
from cbnet_tl.runtime.interpreter import Model, find_interpreter
from cbnet_tl.runtime.manifest import Manifest
from cbnet_tl.runtime.pipelines import Pipeline
from cbnet_tl.runtime.specs import (
    BASELINE_PIPELINE,
    DEFAULT_PIPELINE,
    EARLY_EXIT_PIPELINE,
    INVOKE_PROBE,
    PIPELINE_SPECS,
    PipelineSpec,
    models_for,
    spec_in,
)
from cbnet_tl.toolchain.scoring import evaluate

BENCH_PIPELINES = tuple(PIPELINE_SPECS)
SPEEDUP_BASES = (BASELINE_PIPELINE, EARLY_EXIT_PIPELINE)  # each row's speedup_vs_<base>
FLOOR = "floor"
FLOOR_SPEC = PipelineSpec(FLOOR, (INVOKE_PROBE,), {(INVOKE_PROBE,): FLOOR}, PIPELINE_SPECS[BASELINE_PIPELINE].runner,
                          deployed=False, description="an empty model through the same pipeline code")


@dataclass(frozen=True)
class BenchConfig:
    threads: int = 1
    batch_sizes: tuple = (1, 32)
    precisions: tuple = ("int8", "float32")
    tuned: bool = True  # also (first) every pipeline at its tuned configuration (runtime/tuning.py)
    num_images: int = 1024
    warmup_batches: int = 3
    power_model: str = "rpi4"  # power table for the modelled energy per image

    def __post_init__(self):
        if self.threads < 1 or self.num_images < 1 or not self.batch_sizes or min(self.batch_sizes) < 1:
            raise CbnetError(
                f"Expected threads >= 1, num_images >= 1 and batch sizes >= 1. Received threads={self.threads}, "
                f"num_images={self.num_images}, batch_sizes={self.batch_sizes}"
            )


def _floor(floor: Optional[dict], batch_size: int) -> dict:
    """The floor's keys of a run, from ``time_floor`` (medians, per call)."""
    if floor is None:
        return {"floor_ms_median": None, "empty_call_us": None, "floor_call_us": None, "floor_vs_empty_call": None,
                "floor_read_call_us": None, "floor_read_vs_empty_call": None}
    empty, through, read = floor["empty"], floor["through"], floor["read"]
    return {"floor_ms_median": through / batch_size * 1e3, "empty_call_us": empty * 1e6,
            "floor_call_us": through * 1e6, "floor_vs_empty_call": through / empty,
            "floor_read_call_us": read * 1e6, "floor_read_vs_empty_call": read / empty}


def _pipeline_macs(manifest: Manifest, name: str, path_shares: dict) -> float:
    """Expected MACs per image: each path's models, weighted by the share of images taking that path."""
    spec = spec_in(name, manifest)
    macs = {m: manifest.models[m].macs or 0 for m in spec.models}
    return float(sum(path_shares.get(label, 0.0) * sum(macs[m] for m in models) for models, label in spec.paths.items()))


def _pipeline_params(manifest: Manifest, name: str) -> int:
    """Weights a pipeline holds (branchynet: trunk + branch + main path, each counted once)."""
    return int(sum(manifest.models[m].params or 0 for m in spec_in(name, manifest).models))


def cpu_model() -> str:
    """The CPU's name as the kernel reports it (ratios between pipelines depend on it), with its core count."""
    from cbnet_tl.runtime.tuning import machine

    described = machine()
    return f"{described['cpu']} ({described['cores']} cores)"


def time_invoke_overhead(model: Model, num_repeats: int = 200) -> float:
    """Median seconds of one invoke on an already-set input: the fixed cost of calling the interpreter."""
    sample = np.zeros((1, *model.input.shape[1:]), dtype=model.input.dtype)
    model.invoke_quantized(sample)
    times = []
    for _ in range(num_repeats):
        start = time.perf_counter()
        model._interpreter.invoke()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


class BareCalls:
    """Times bare calls of models on interpreters of their own: ``set_tensor`` + ``invoke`` + ``get_tensor`` of
    the first output (the scores), nothing else. The least any code calling a model can cost."""

    def __init__(self, models: dict):
        self.models, self._inputs = models, {}

    def __call__(self, name: str, num_images: int) -> float:
        """Seconds of one bare call of model ``name`` on ``num_images`` inputs."""
        model = self.models[name]
        values = self._inputs.get((name, num_images))
        if values is None:
            values = self._inputs[(name, num_images)] = np.zeros((num_images, *model.input.shape[1:]), model.input.dtype)
        if model._batch != num_images:  # resize, and a first call at the new size, untimed
            model.invoke_quantized(values)
        interpreter, clock = model._interpreter, time.perf_counter
        start = clock()
        interpreter.set_tensor(model.input.index, values)
        interpreter.invoke()
        interpreter.get_tensor(model.outputs[0].index)
        return clock() - start


@dataclass(frozen=True)
class Timing:
    """One pipeline at one batch size, per timed call: its seconds, and the seconds of a bare call of each model
    it ran, at the number of images it ran on, timed right after it (so the machine's noise falls on both)."""

    seconds: np.ndarray
    bare: tuple  # per call: {model: seconds}

    @property
    def beyond(self) -> np.ndarray:
        """Seconds of each call beyond the bare calls of the models it ran."""
        return self.seconds - np.array([sum(ran.values()) for ran in self.bare])

    def stage_medians(self) -> dict:
        """Median seconds of each model's bare call, over the calls that ran it."""
        stages: dict = {}
        for ran in self.bare:
            for model, seconds in ran.items():
                stages.setdefault(model, []).append(seconds)
        return {model: float(np.median(values)) for model, values in stages.items()}


def _images_per_model(spec: PipelineSpec, paths: tuple) -> dict:
    by_label = {label: models for models, label in spec.paths.items()}
    counts: dict = {}
    for label in paths:
        for model in by_label[label]:
            counts[model] = counts.get(model, 0) + 1
    return counts


def _batches(images: np.ndarray, batch_size: int) -> list:
    batches = [images[i : i + batch_size] for i in range(0, len(images) - batch_size + 1, batch_size)]
    if not batches:
        raise CbnetError(f"Need at least {batch_size} images to time batch size {batch_size}")
    return batches


def time_floor(pipeline: Pipeline, bare: BareCalls, images: np.ndarray, batch_size: int, warmup_batches: int) -> dict:
    """Median seconds per call of the empty model (``pipeline``'s one model): its bare call ("empty"), the
    model through the pipeline code ("through"), and that with the confidences read ("read"). In a loop of
    their own, in an order that rotates every batch, so neither side is the one called just after the other."""
    clock, probe = time.perf_counter, pipeline.spec.models[0]

    def through(batch: np.ndarray) -> float:
        start = clock()
        pipeline.classify(batch)
        return clock() - start

    def read(batch: np.ndarray) -> float:
        start = clock()
        pipeline.classify(batch).confidences
        return clock() - start

    steps = (("empty", lambda batch: bare(probe, len(batch))), ("through", through), ("read", read))
    batches = _batches(images, batch_size)
    for batch in batches[:warmup_batches]:
        for _, step in steps:
            step(batch)
    samples: dict = {key: [] for key, _ in steps}
    for round_index, batch in enumerate(batches):
        for key, step in steps[round_index % 3:] + steps[: round_index % 3]:
            samples[key].append(step(batch))
    return {key: float(np.median(values)) for key, values in samples.items()}


def time_pipelines(pipelines: dict, images: np.ndarray, batch_size: int, warmup_batches: int, bare: BareCalls,
                   progress: Optional[Callable] = None) -> dict:
    """A ``Timing`` of every pipeline, each call timed from outside ``classify``, interleaved round-robin."""
    batches = _batches(images, batch_size)
    for batch in batches[:warmup_batches]:
        for pipeline in pipelines.values():
            pipeline.classify(batch)
    clock, names = time.perf_counter, list(pipelines)
    seconds = {name: [] for name in names}
    bare_seconds = {name: [] for name in names}
    rounds = range(len(batches))
    for round_index in progress(rounds) if progress else rounds:
        batch = batches[round_index]
        for name in names[round_index % len(names):] + names[: round_index % len(names)]:
            classify = pipelines[name].classify
            start = clock()
            result = classify(batch)
            seconds[name].append(clock() - start)
            ran = _images_per_model(pipelines[name].spec, result.paths)
            bare_seconds[name].append({model: bare(model, num_images) for model, num_images in ran.items()})
    return {name: Timing(np.asarray(seconds[name]), tuple(bare_seconds[name])) for name in names}


def footprint(bundle_dir: Path) -> dict:
    """Import time of the runtime and peak RSS of a fresh process that loads the bundle and classifies."""
    code = (
        "import json, resource, time, sys\n"
        "start = time.perf_counter()\n"
        "import cbnet_tl.runtime.api as api\n"
        "from cbnet_tl.runtime.interpreter import find_interpreter\n"
        "find_interpreter()\n"
        "imported = time.perf_counter() - start\n"
        "import numpy as np\n"
        f"pipeline = api.open_pipeline({str(bundle_dir)!r}, {DEFAULT_PIPELINE!r})\n"
        "pipeline.classify(np.zeros((1, *pipeline.input_shape), np.uint8))\n"
        "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024\n"
        "try:\n"  # VmHWM belongs to this address space; ru_maxrss survives exec from a big parent
        "    peak = [int(l.split()[1]) / 1024 for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
        "except (OSError, IndexError):\n"
        "    pass\n"
        "print(json.dumps({'import_s': imported, 'peak_rss_mb': peak}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    files = [p for p in Path(bundle_dir).rglob("*") if p.is_file()]
    measured["bundle_bytes"] = int(sum(p.stat().st_size for p in files))
    measured["model_bytes"] = int(sum(p.stat().st_size for p in files if p.suffix == ".tflite"))
    return measured


def _energy_per_image(power_model: str, seconds: float) -> dict:
    """Modelled energy of one image on a target: this machine's time counted as time at its top frequency."""
    from cbnet_tl.runtime.dvfs.energy import model_for

    model = model_for(power_model)
    return {"energy_j": model.active_w(model.top_khz) * seconds, "source": "modelled", "target": power_model,
            "frequency_mhz": model.top_khz // 1000}


def run_bench(path: Path, images: np.ndarray, labels: np.ndarray, config: BenchConfig,
              progress: Optional[Callable] = None) -> dict:
    directory, manifest = open_manifest(path)
    bench_pipelines = [p for p in BENCH_PIPELINES if all(m in manifest.models for m in spec_in(p, manifest).models)]
    bench_models = models_for(bench_pipelines, manifest)
    precisions = [p for p in config.precisions if all(p in manifest.models[m].files for m in bench_models)]
    if not precisions:
        raise CbnetError(f"{directory} has none of the precisions {config.precisions}")
    names = bench_models + ([INVOKE_PROBE] if INVOKE_PROBE in manifest.models else [])
    timed = images[: config.num_images]
    report = {"bundle": str(directory), "dataset": manifest.dataset, "num_timed_images": int(len(timed)),
              "machine": cpu_model(),
              "num_accuracy_images": int(len(labels)), "threads": config.threads, "interpreter": None,
              "runs": [], "notes": []}
    settings = [(p, p, {}) for p in precisions]  # (label, precision, per-model configurations)
    if config.tuned:
        from cbnet_tl.runtime.tuning import ModelConfig, measure

        tuning = measure(directory, images[:64], pipelines=bench_pipelines, num_threads=config.threads)
        report["tuning"] = tuning
        settings.insert(0, ("tuned", "int8", {m: ModelConfig.parse(w["config"]) for m, w in tuning["models"].items()}))
    for precision_label, precision, configs in settings:
        bundle = load_bundle(directory, precision=precision, num_threads=config.threads, models=names, configs=configs)
        report["interpreter"] = find_interpreter().package
        scored = {name: evaluate(Pipeline(bundle, name), images, labels, batch_size=250) for name in bench_pipelines}
        specs = {name: spec_in(name, manifest) for name in bench_pipelines}
        if INVOKE_PROBE in bundle.models:  # the floor: an empty model with the same Python around it
            specs[FLOOR] = FLOOR_SPEC
        timed_pipelines = {name: Pipeline(load_bundle(directory, precision=precision, num_threads=config.threads,
                                                      models=list(spec.models), configs=configs), spec)
                           for name, spec in specs.items()}
        floor_pipeline = timed_pipelines.pop(FLOOR, None)
        overhead = time_invoke_overhead(bundle.models[INVOKE_PROBE]) if INVOKE_PROBE in bundle.models else None
        bare_invoke = {m: time_invoke_overhead(bundle.models[m]) for m in bench_models}
        bare = BareCalls(load_bundle(directory, precision=precision, num_threads=config.threads, models=names,
                                     configs=configs).models)
        for batch_size in config.batch_sizes:
            wrapped = (lambda it, d=f"bench {precision_label} batch {batch_size}": progress(it, desc=d)) if progress else None
            timings = time_pipelines(timed_pipelines, timed, batch_size, config.warmup_batches, bare, wrapped)
            run = {"precision": precision_label, "batch_size": batch_size,
                   "configuration": {m: (configs.get(m).label if m in configs else f"{precision}/default")
                                     for m in bench_models}, "invoke_overhead_us": None if overhead is None else overhead * 1e6,
                   "bare_invoke_us": {m: t * 1e6 for m, t in bare_invoke.items()}, "pipelines": {},
                   **_floor(time_floor(floor_pipeline, bare, timed, batch_size, config.warmup_batches)
                            if floor_pipeline is not None else None, batch_size)}
            for name, timing in timings.items():
                per_image = timing.seconds / batch_size
                row = {
                    "latency_ms_median": float(np.median(per_image) * 1e3),
                    "latency_ms_p95": float(np.percentile(per_image, 95) * 1e3),
                    "images_per_s": float(len(per_image) / per_image.sum()),
                    "accuracy": scored[name]["accuracy"],
                    "path_shares": scored[name]["path_shares"],
                    "macs": _pipeline_macs(manifest, name, scored[name]["path_shares"]),
                    "params": _pipeline_params(manifest, name),
                    "stage_ms_median": {m: t / batch_size * 1e3 for m, t in timing.stage_medians().items()},
                    "beyond_bare_us_median": float(np.median(timing.beyond) / batch_size * 1e6),
                }
                row["energy_j_per_image"] = _energy_per_image(config.power_model, float(np.median(per_image)))
                if run["floor_ms_median"]:
                    row["multiple_of_floor"] = row["latency_ms_median"] / run["floor_ms_median"]
                run["pipelines"][name] = row
            for base in SPEEDUP_BASES:
                base_latency = run["pipelines"][base]["latency_ms_median"]
                for row in run["pipelines"].values():
                    row[f"speedup_vs_{base}"] = base_latency / row["latency_ms_median"]
            report["runs"].append(run)
    report["pipelines"] = report["runs"][0]["pipelines"]
    report["primary"] = {"precision": report["runs"][0]["precision"], "batch_size": report["runs"][0]["batch_size"]}
    deployed = directory / "bundle" if (directory / "bundle" / "manifest.json").is_file() else directory
    report["footprint"] = footprint(deployed)
    if "float32" not in precisions and "float32" in config.precisions:
        report["notes"].append("float32 models are only in build directories; this bundle was timed in int8 only")
    report["notes"].append("Times are on this machine, not on the target; energy is modelled for the target at its top frequency.")
    report["notes"].append("beyond bare: a pipeline's time per image minus the bare calls (set_tensor + invoke + get_tensor "
                           "of the scores) of the models it ran, each at the number of images it ran on; stage_ms_median "
                           "is those bare calls per model. It is an upper bound: each call follows other pipelines' "
                           "calls, its bare calls follow it (warm), and on a busy machine the gap is cache misses too.")
    report["notes"].append("A call is timed until classify returns: classes, and confidences where a gate needs them "
                           "(cbnet-fallback, branchynet); the other pipelines compute confidences when they are read, "
                           "which the floor's 'confidences read' figure includes.")
    return report


def format_bench(report: dict) -> str:
    lines = [f"{report['dataset']}: {report['num_timed_images']} timed images, {report['threads']} thread(s), {report['interpreter']}"]
    for run in report["runs"]:
        lines.append(f"\n{run['precision']}, batch {run['batch_size']}")
        if run.get("empty_call_us"):
            lines.append(f"floor: an empty model's bare call (set_tensor + invoke + get_tensor) {run['empty_call_us']:.1f} µs; "
                         f"through the pipeline code {run['floor_call_us']:.1f} µs ({run['floor_vs_empty_call']:.2f}x), "
                         f"{run['floor_read_call_us']:.1f} µs with its confidences read ({run['floor_read_vs_empty_call']:.2f}x); "
                         f"invoke alone {run['invoke_overhead_us']:.1f} µs")
        lines.append(f"{'pipeline':<15}{'ms/img':>9}{'p95':>9}{'img/s':>10}{'acc':>8}{'MMACs':>8}"
                     + "".join(f"{'vs ' + base[:7]:>11}" for base in SPEEDUP_BASES) + f"{'x floor':>9}{'beyond bare':>13}")
        for name, r in run["pipelines"].items():
            lines.append(f"{name:<15}{r['latency_ms_median']:>9.4f}{r['latency_ms_p95']:>9.4f}{r['images_per_s']:>10.0f}"
                         f"{r['accuracy'] * 100:>7.2f}%{r['macs'] / 1e6:>8.3f}"
                         + "".join(f"{r['speedup_vs_' + base]:>10.2f}x" for base in SPEEDUP_BASES)
                         + f"{r.get('multiple_of_floor', float('nan')):>8.1f}x{r['beyond_bare_us_median']:>8.1f} µs/img")
    if report.get("tuning"):
        from cbnet_tl.runtime.tuning import format_tuning

        lines.append("\nevery model in every configuration (tuned runs use the chosen ones):\n" + format_tuning(report["tuning"]))
    fp = report["footprint"]
    lines.append(f"\nruntime import {fp['import_s'] * 1e3:.0f} ms, peak RSS {fp['peak_rss_mb']:.0f} MB, "
                 f"bundle {fp['bundle_bytes'] / 1e6:.2f} MB ({fp['model_bytes'] / 1e6:.2f} MB models)")
    lines.extend(f"note: {n}" for n in report["notes"])
    return "\n".join(lines)
