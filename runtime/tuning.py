"""Per-device tuning: run each model on the configuration that is fastest on this machine.

A configuration is a precision the bundle carries (int8, or the float32 model whose accuracy the build
checked) and an op resolver (the default one with XNNPACK, or the built-in kernels without default
delegates). ``measure`` times every model of every pipeline under every configuration on real sample
images (interleaved passes, medians), checks that each candidate gives the reference classes on those
samples, and keeps the fastest checked one per model. The record is written outside the checksummed
release (the service's state folder, or a path given) with the machine it was measured on; pipelines
read it with ``read_tuning``, which falls back to the default configuration, with a message, for a
tuning file of another bundle version, a corrupt one, or a configuration this interpreter lacks.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from cbnet_tl.runtime.errors import CbnetError
from cbnet_tl.runtime.files import write_json_atomic
from cbnet_tl.runtime.interpreter import DEFAULT_RESOLVER, RESOLVERS, find_interpreter, resolver_arguments
from cbnet_tl.runtime.manifest import Manifest

TUNING_FORMAT = 1
TUNING_NAME = "tuning.json"
STATE_DIR_ENV = "CBNET_TL_STATE_DIR"


@dataclass(frozen=True)
class ModelConfig:
    precision: str = "int8"
    resolver: str = DEFAULT_RESOLVER

    @property
    def label(self) -> str:
        return f"{self.precision}/{self.resolver}"

    @classmethod
    def parse(cls, label: str) -> "ModelConfig":
        precision, _, resolver = str(label).partition("/")
        return cls(precision, resolver or DEFAULT_RESOLVER)


DEFAULT_CONFIG = ModelConfig()


def default_tuning_path(bundle_dir: Path) -> Path:
    """$CBNET_TL_STATE_DIR/tuning.json; for a deployed release (DIR/releases/V) DIR/state/tuning.json;
    else a file beside the bundle or build directory (never inside the checksummed release)."""
    if os.environ.get(STATE_DIR_ENV):
        return Path(os.environ[STATE_DIR_ENV]) / TUNING_NAME
    directory = Path(bundle_dir).resolve()
    if directory.parent.name == "releases":
        return directory.parent.parent / "state" / TUNING_NAME
    return directory.parent / f"{directory.name}.{TUNING_NAME}"


def machine() -> dict:
    backend = find_interpreter()
    try:
        from importlib import metadata

        version = metadata.version(backend.package)
    except Exception:  # noqa: BLE001 - an interpreter without distribution metadata still runs
        version = "unknown"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle
                        if line.lower().startswith(("model name", "hardware", "cpu model"))), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "interpreter": backend.package, "interpreter_version": version,
            "python": platform.python_version(), "architecture": platform.machine()}


def candidates(manifest: Manifest, model: str) -> list:
    """Configurations a model can run in: its precisions in this directory (int8 only on Coral) × resolvers."""
    precisions = ["int8"] if manifest.accelerator == "edgetpu" else sorted(manifest.models[model].files)
    return [ModelConfig(p, r) for p in precisions for r in RESOLVERS]


def measure(bundle_dir: Path, images: np.ndarray, *, pipelines: Sequence[str], num_threads: int = 1,
            rounds: int = 5, num_timed: int = 32) -> dict:
    """Time and check every (model, configuration); return the tuning record (not yet written)."""
    from cbnet_tl.runtime.bundle import Bundle, load_bundle, open_manifest
    from cbnet_tl.runtime.pipelines import Pipeline
    from cbnet_tl.runtime.specs import models_for, spec_in

    directory, manifest = open_manifest(bundle_dir)
    names = models_for(pipelines, manifest)
    loaded, agrees = {}, {}
    for name in names:
        for config in candidates(manifest, name):
            try:
                bundle = load_bundle(directory, precision=config.precision, num_threads=num_threads, models=[name],
                                     configs={name: config})
            except CbnetError as error:  # a configuration this interpreter lacks is just not a candidate
                agrees[(name, config)] = f"cannot load: {str(error).splitlines()[0]}"
                continue
            loaded[(name, config)] = bundle.models[name]
    reference = load_bundle(directory, num_threads=num_threads, models=names)
    expected = {p: Pipeline(reference, p).classify(images).labels for p in pipelines}
    for (name, config), model in loaded.items():
        using = [p for p in pipelines if name in spec_in(p, manifest).models]
        swapped = Bundle(reference.directory, manifest, reference.precision, {**reference.models, name: model})
        same = all(np.array_equal(Pipeline(swapped, p).classify(images).labels, expected[p]) for p in using)
        agrees[(name, config)] = True if same else "differs from the reference classes on the samples"
    inputs = {}
    for name in names:
        spec = reference.models[name].input
        first = Pipeline(reference, next(p for p in pipelines if name in spec_in(p, manifest).models))
        source = first.model_input(name, images[:num_timed]) if name == first.spec.models[0] else None
        # a later stage (BranchyNet's main_tail) gets zeros: a model's work does not depend on the values
        inputs[name] = [(source[i:i + 1] if source is not None else np.zeros((1, *spec.shape[1:]), spec.dtype))
                        for i in range(min(num_timed, len(images)))]
    timed = _time_each(loaded, inputs, reference, rounds)
    table = {name: {} for name in names}
    for (name, config), result in agrees.items():
        table[name][config.label] = {"us": timed.get((name, config)), "agrees": result is True,
                                     **({} if result is True else {"why": result})}
    winners = {}
    for name in names:
        checked = [(row["us"], label) for label, row in table[name].items() if row["agrees"] and row["us"] is not None]
        us, label = min(checked) if checked else (None, DEFAULT_CONFIG.label)
        winners[name] = {"config": label, "us": us, "agrees": True,
                         "default_us": table[name].get(DEFAULT_CONFIG.label, {}).get("us")}
    return {"format": TUNING_FORMAT, "bundle_version": manifest.version, "machine": machine(),
            "num_threads": num_threads, "num_samples": int(len(images)), "measured_at":
            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "models": winners, "table": table}


def _time_each(loaded: dict, inputs: dict, reference, rounds: int) -> dict:
    """Inputs in each candidate's own storage type (a float32 model takes the real values of the int8 input)."""
    from cbnet_tl.runtime.interpreter import dequantize

    own = {}
    for (name, config), model in loaded.items():
        base = inputs[name]
        if model.input.dtype == reference.models[name].input.dtype:
            own[(name, config)] = base
        else:
            own[(name, config)] = [dequantize(x, reference.models[name].input).astype(model.input.dtype) for x in base]
    samples = {key: [] for key in loaded}
    for _ in range(rounds):
        for key, model in loaded.items():
            for x in own[key]:
                start = time.perf_counter()
                model.invoke_quantized(x)
                samples[key].append(time.perf_counter() - start)
    return {key: float(np.median(values) * 1e6) for key, values in samples.items()}


def write_tuning(path: Path, record: dict) -> Path:
    write_json_atomic(path, record, durable=True)
    return Path(path)


def read_tuning(path: Optional[Path], manifest: Manifest, models: Sequence[str]) -> tuple:
    """({model: ModelConfig}, [messages]): the checked winners that apply here; the default for anything else."""
    if path is None or not Path(path).is_file():
        return {}, []
    try:
        record = json.loads(Path(path).read_text())
        winners = record["models"]
        if record.get("format") != TUNING_FORMAT or not isinstance(winners, dict):
            raise ValueError(f"format {record.get('format')!r}")
    except (OSError, ValueError, KeyError, TypeError) as error:
        return {}, [f"tuning file {path} is unreadable or corrupt ({type(error).__name__}: {error}); "
                    "running the default configuration. Run `run.py tune` again"]
    if record.get("bundle_version") != manifest.version:
        return {}, [f"tuning file {path} was measured for bundle version {record.get('bundle_version')!r}, "
                    f"this is {manifest.version!r}; running the default configuration. Run `run.py tune` again"]
    configs, messages = {}, []
    backend = find_interpreter()
    for name in models:
        entry = winners.get(name)
        if not isinstance(entry, dict):
            continue
        config = ModelConfig.parse(entry.get("config", DEFAULT_CONFIG.label))
        if entry.get("agrees") is not True:
            messages.append(f"tuning: {name} {config.label} was not checked against the reference classes; not used")
        elif config.precision not in manifest.models[name].files:
            messages.append(f"tuning: {name} has no {config.precision} model here; running {DEFAULT_CONFIG.label}")
        else:
            try:
                resolver_arguments(backend, config.resolver)
            except CbnetError as error:  # ModelError: the interpreter lacks this resolver
                messages.append(f"tuning: {name} {config.label}: {error}; running {DEFAULT_CONFIG.label}")
                continue
            configs[name] = config
    return configs, messages


def format_tuning(record: dict) -> str:
    m = record["machine"]
    lines = [f"measured on {m['cpu']} ({m['cores']} cores), {m['interpreter']} {m['interpreter_version']}, "
             f"{record['num_threads']} thread(s), {record['num_samples']} sample images",
             f"{'model':<14}{'configuration':<22}{'µs/invoke':>10}  checked"]
    for name, rows in record["table"].items():
        winner = record["models"][name]["config"]
        for label, row in rows.items():
            us = f"{row['us']:.1f}" if row["us"] is not None else "-"
            mark = "  <- chosen" if label == winner else ""
            lines.append(f"{name:<14}{label:<22}{us:>10}  {'yes' if row['agrees'] else 'NO: ' + row.get('why', '')}{mark}")
    return "\n".join(lines)
