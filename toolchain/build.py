"""``cbnet-tl build``: train → convert → check → bundle (→ report), into one build directory.

The build runs in a temporary sibling directory and is renamed into place only when every stage
succeeded, so a failed or interrupted build never leaves a half-written output behind.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Optional

import numpy as np

from cbnet_tl.runtime.errors import CbnetError, OutputExistsError, QuantizationCheckError
from cbnet_tl.runtime.files import staged_directory
from cbnet_tl.toolchain.checks import CheckConfig
from cbnet_tl.toolchain.inputs import InputChoice
from cbnet_tl.toolchain.train import CUSTOM_THRESHOLD, DEFAULT_THRESHOLDS, TrainConfig


@dataclass(frozen=True)
class BuildConfig:
    dataset: str
    out: Path
    data_dir: Optional[Path] = None
    target: str = "rpi4"
    threshold: Optional[float] = None
    force: bool = False
    write_report: bool = False
    max_train_images: Optional[int] = None  # a seeded subset, for quick smoke builds
    calibration_samples: int = 500  # int8 calibration images (see export.DEFAULT_CALIBRATION_SAMPLES)
    train: TrainConfig = field(default_factory=TrainConfig)
    check: CheckConfig = field(default_factory=CheckConfig)
    inputs: InputChoice = field(default_factory=InputChoice)  # size, colour, resize, background; None: from the data

    def entropy_threshold(self, custom: bool) -> float:
        if self.threshold is not None:
            if self.threshold <= 0:
                raise CbnetError(f"Expected --threshold > 0. Received: {self.threshold}")
            return float(self.threshold)
        return CUSTOM_THRESHOLD if custom else DEFAULT_THRESHOLDS[self.dataset]


def tool_versions() -> dict:
    versions = {"python": platform.python_version()}
    for package in ("cbnet-tl", "tensorflow", "tensorflow-cpu", "keras", "ai-edge-litert", "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _progress(enabled: bool):
    from tqdm.auto import tqdm

    return lambda iterable, **kwargs: tqdm(iterable, disable=not enabled, **kwargs)


def check_output(out: Path, force: bool) -> Path:
    out = Path(out).absolute()
    if out.exists() and (out.is_file() or any(out.iterdir())) and not force:
        raise OutputExistsError(f"{out} exists and is not empty; pass --force to replace it, or choose another --out")
    return out


def calibration_table(specs: list, test, chosen: int, model: str = "lenet", num_images: int = 2000) -> dict:
    """int8 accuracy of one model at a few calibration sizes (the report shows how many are needed)."""
    from cbnet_tl.toolchain.calibration import calibration_sweep

    spec = next(s for s in specs if s.name == model)
    sizes = sorted({10, 50, 100, chosen})
    rows = calibration_sweep(spec, test.images[:num_images], test.labels[:num_images], sizes=sizes)
    return {"model": model, "num_test_images": int(min(num_images, len(test))), "chosen": chosen, "rows": rows}


def build(config: BuildConfig, log=print) -> dict:
    """Run every stage; return the build record (also written to ``OUT/build.json``)."""
    from cbnet_tl.runtime.files import write_json_atomic
    from cbnet_tl.runtime.manifest import Manifest, PipelineEntry
    from cbnet_tl.runtime.pipelines import PIPELINE_SPECS
    from cbnet_tl.toolchain import checks as checks_stage
    from cbnet_tl.toolchain.bundle import new_version, write_bundle
    from cbnet_tl.toolchain.convert import convert_all, file_hashes
    from cbnet_tl.toolchain.datasets import load_build_data, seeded_subset
    from cbnet_tl.toolchain.export import export_specs
    from cbnet_tl.toolchain.fallback import fallback_options
    from cbnet_tl.toolchain.targets import get_target
    from cbnet_tl.toolchain.train import train_all

    target = get_target(config.target)
    progress = _progress(config.train.progress)
    started = time.perf_counter()
    timings: dict = {}
    train, test, spec, data_record = load_build_data(config.dataset, config.data_dir, config.inputs,
                                                     log=log, progress=progress)
    if config.max_train_images is not None:
        train = seeded_subset(train, config.max_train_images, config.train.seed)
    custom = bool(data_record["custom"])
    threshold = config.entropy_threshold(custom)
    dataset_name = train.name if custom else config.dataset
    log(f"data: {dataset_name}: {len(train)} training and {len(test)} test images from {train.source}")

    with staged_directory(check_output(config.out, config.force)) as work:
        stage = time.perf_counter()
        train_record = train_all(train, work, threshold, config.train)
        timings["train_s"] = time.perf_counter() - stage

        stage = time.perf_counter()
        specs = export_specs(work, train.images, config.calibration_samples)
        models = convert_all(specs, work / "models", progress=progress)
        timings["convert_s"] = time.perf_counter() - stage
        log(f"MACs per image at {spec.width}x{spec.height}x{spec.channels}: " + ", ".join(
            f"{name} {entry.macs / 1e6:.3f} M" for name, entry in models.items() if entry.macs is not None))
        hashes = file_hashes(work, [f.file for m in models.values() for f in m.files.values()])
        manifest = Manifest(
            dataset=dataset_name, class_names=tuple(train.class_names), entropy_threshold=threshold,
            models=models, pipelines={name: PipelineEntry(spec.models) for name, spec in PIPELINE_SPECS.items()},
            files=hashes, kind="build", version=new_version(list(hashes.values())),
            built_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), tools=tool_versions(),
            input=spec.to_dict(),
            data={**data_record, "name": dataset_name if custom else config.dataset, "source": train.source,
                  "num_train": len(train), "num_test": len(test)},
        )
        manifest.write(work)
        validation = np.asarray(train_record["validation_indices"], dtype=np.int64)
        options = fallback_options(work, train.images[validation], train.labels[validation])
        pipelines = {**manifest.pipelines, "cbnet-fallback": PipelineEntry(PIPELINE_SPECS["cbnet-fallback"].models,
                                                                            options=options)}
        manifest = manifest.replace(pipelines=pipelines)
        manifest.write(work)
        log(f"cbnet-fallback: confidence threshold {options['confidence_threshold']:.4f} (validation: "
            f"{options['validation_fallback_share']:.1%} of images to LeNet, accuracy "
            f"{options['validation_accuracy']:.2%} vs LeNet {options['validation_lenet_accuracy']:.2%})")

        stage = time.perf_counter()
        record = checks_stage.run_checks(work, test.images, test.labels, config.check, progress=progress)
        timings["check_s"] = time.perf_counter() - stage
        write_json_atomic(work / "checks.json", record)
        log(checks_stage.format_table(record, list(train.class_names)))
        try:
            checks_stage.raise_on_failures(record)
        except QuantizationCheckError:
            from cbnet_tl.toolchain.explain import explain_build, format_explanation

            log("which layers lost the accuracy (int8 against float, per layer, worst first):")
            log(format_explanation(explain_build(work, train.images, test.images)))
            raise
        write_json_atomic(work / "calibration.json", calibration_table(specs, test, config.calibration_samples))

        stage = time.perf_counter()
        tarball = write_bundle(work, target, test.images)
        timings["bundle_s"] = time.perf_counter() - stage
        if target.uses_edgetpu:
            from cbnet_tl.toolchain.coral import format_inspection

            edgetpu = json.loads((work / "bundle" / "edgetpu_report.json").read_text())
            log("\n".join(line for line in format_inspection(edgetpu["inspect"]).splitlines() if not line.startswith("  ")))
            compile_result = edgetpu["compile"]
            log("edgetpu_compiler: " + ("compiled " + ", ".join(compile_result["models"]) if compile_result["compiled"]
                                        else "NOT run: " + compile_result["reason"]))
        timings["total_s"] = time.perf_counter() - started
        build_record = {
            "dataset": dataset_name, "target": target.name, "version": manifest.version,
            "threshold": threshold, "timings": {k: round(v, 2) for k, v in timings.items()},
            "input": spec.to_dict(), "num_skipped_images": data_record["num_skipped"],
            "train": train_record, "tarball": tarball.name,
            "accuracy": {name: {"float32": r["float32"]["accuracy"], "int8": r["int8"]["accuracy"]}
                         for name, r in record["pipelines"].items()},
        }
        write_json_atomic(work / "build.json", build_record)
        if config.write_report:
            from cbnet_tl.toolchain.bench import BenchConfig, run_bench
            from cbnet_tl.toolchain.report import write_report

            stage = time.perf_counter()
            quick = BenchConfig(batch_sizes=(1,), num_images=min(512, len(test)), power_model=target.power_model)
            write_json_atomic(work / "bench.json", run_bench(work, test.images, test.labels, quick))
            write_report(work, test_images=test.images, test_labels=test.labels)
            build_record["timings"]["report_s"] = round(time.perf_counter() - stage, 2)
            write_json_atomic(work / "build.json", build_record)
    return build_record
