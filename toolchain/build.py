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
from cbnet_tl.runtime.manifest import Manifest
from cbnet_tl.runtime.specs import BASELINE_PIPELINE, MULTIEXIT_PIPELINE, PIPELINE_SPECS
from cbnet_tl.toolchain.conversion.checks import CheckConfig
from cbnet_tl.toolchain.ingest.inputs import InputChoice
from cbnet_tl.toolchain.training.exit_choice import DEFAULT_MARGIN_PT
from cbnet_tl.toolchain.training.train import CUSTOM_THRESHOLD, DEFAULT_THRESHOLDS, TrainConfig


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
    max_fallback_share: float = 0.04  # cbnet-fallback sends at most this share of images to LeNet (fallback.py)
    train: TrainConfig = field(default_factory=TrainConfig)
    check: CheckConfig = field(default_factory=CheckConfig)
    inputs: InputChoice = field(default_factory=InputChoice)  # size, colour, resize, background; None: from the data
    with_pipelines: tuple = ()  # optional pipelines to build too (runtime.specs.OPTIONAL_PIPELINES)
    fallback: str = BASELINE_PIPELINE  # cbnet-fallback's second network: a key of runtime.specs.FALLBACK_NETWORKS
    multiexit: Optional[object] = None  # recipes.multiexit.MultiExitConfig; None: the recipe's default
    multiexit_margin_pt: float = DEFAULT_MARGIN_PT  # multiexit's thresholds: loss against its last exit within this, at 95%
    default_pipeline: Optional[str] = None  # what the bundle runs when none is named; None: the build's recommendation

    def __post_init__(self):
        from cbnet_tl.runtime.specs import DEPLOYED_PIPELINES, FALLBACK_NETWORKS, MULTIEXIT_PIPELINE, OPTIONAL_PIPELINES

        built = [p for p in DEPLOYED_PIPELINES if not PIPELINE_SPECS[p].optional or p in self.with_pipelines]
        if self.default_pipeline is not None and self.default_pipeline not in built:
            raise CbnetError(f"Expected --default-pipeline one of the pipelines this build makes {built}. "
                             f"Received: {self.default_pipeline!r}")

        unknown = [p for p in self.with_pipelines if p not in OPTIONAL_PIPELINES]
        if unknown:
            raise CbnetError(f"Expected --with one of {list(OPTIONAL_PIPELINES)}. Received: {unknown}")
        if self.fallback not in FALLBACK_NETWORKS:
            raise CbnetError(f"Expected --fallback one of {list(FALLBACK_NETWORKS)}. Received: {self.fallback!r}")
        if self.fallback == MULTIEXIT_PIPELINE and MULTIEXIT_PIPELINE not in self.with_pipelines:
            raise CbnetError("--fallback multiexit needs the multi-exit network: add --with multiexit")
        if not 0.0 <= self.multiexit_margin_pt <= 100.0:
            raise CbnetError(f"Expected --multiexit-margin between 0 and 100 points. Received: {self.multiexit_margin_pt}")

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


def calibration_table(specs: list, test, chosen: int, num_images: int = 2000) -> dict:
    """int8 accuracy of every image model the deployed pipelines ship, at a few calibration sizes (the report
    shows how many are needed)."""
    from cbnet_tl.runtime.specs import DEPLOYED_PIPELINES, models_for
    from cbnet_tl.toolchain.conversion.calibration import calibration_sweep

    shipped = models_for(p for p in DEPLOYED_PIPELINES if not PIPELINE_SPECS[p].optional)
    sizes = sorted({10, 50, 100, chosen})
    images, labels = test.images[:num_images], test.labels[:num_images]
    models = {spec.name: calibration_sweep(spec, images, labels, sizes=sizes)
              for spec in sorted((s for s in specs if s.name in shipped and s.input_type == "uint8"),
                                 key=lambda s: shipped.index(s.name))}
    return {"models": models, "num_test_images": int(min(num_images, len(test))), "chosen": chosen}


# stages: each reads what the stages before it wrote from the build directory -----------------------------

def train_stage(work: Path, train, threshold: float, config: BuildConfig, log=print) -> dict:
    """Train the Keras models into ``work/keras`` and write ``work/train.json``; return that record. A stage
    the user's --time-budget-minutes cut short is said in one line."""
    from cbnet_tl.toolchain.training.train import train_all

    record = train_all(train, work, threshold, config.train)
    if record.get("schedule") == "few images":
        from cbnet_tl.toolchain.training.schedule import BATCH_SIZE, FAST_STEP_FACTOR, FEW_IMAGES

        log(f"few images ({len(train)} < {FEW_IMAGES:,}): B-LeNet trained for {config.train.few_image_steps:,} "
            f"optimizer steps at batch {BATCH_SIZE} (--steps; {record['blenet']['epochs_run']} epochs), the fast recipe "
            f"for {FAST_STEP_FACTOR}x as many, on augmented images with balanced classes; {record['num_validation']} "
            f"images held out for the choices below (README 'Few images')")
    if MULTIEXIT_PIPELINE in config.with_pipelines:  # on the same split: its thresholds come from the held-out half
        from cbnet_tl.toolchain.training.multiexit import train_multiexit

        held_out = np.asarray(record["validation_indices"], dtype=np.int64)
        record["multiexit"] = train_multiexit(train, work, held_out, config.multiexit, seed=config.train.seed,
                                              progress=config.train.progress, log=log)
    for stage, label, planned in (("blenet", "B-LeNet", config.train.blenet_epochs),
                                  ("autoencoder", "the converting AE", config.train.autoencoder_epochs)):
        if record.get(stage, {}).get("stopped_by") == "time budget":
            log(f"time budget: {label} stopped after {record[stage]['epochs_run']} of {planned} epochs "
                f"(--time-budget-minutes); the best epoch so far is kept")
    return record


def convert_stage(work: Path, train_images: np.ndarray, config: BuildConfig, progress) -> dict:
    """Convert ``work/keras``'s models to float32 and int8 ``work/models/*.tflite``; return the manifest's models."""
    from cbnet_tl.toolchain.conversion.convert import convert_all
    from cbnet_tl.toolchain.training.export import export_specs

    specs = export_specs(work, train_images, config.calibration_samples)
    return convert_all(specs, work / "models", progress=progress)


def _held_out(work: Path) -> np.ndarray:
    """The held-out training images ``work/train.json`` names (no model was trained on them or stopped by them)."""
    return np.asarray(json.loads((work / "train.json").read_text())["validation_indices"], dtype=np.int64)


def multiexit_stage(work: Path, train, manifest: Manifest, margin_pt: float, num_test: int, log) -> dict:
    """multiexit's exit thresholds and EENet's exit table, chosen on the held-out images ``work/train.json`` names,
    for a margin that holds on a test set of ``num_test`` images."""
    from cbnet_tl.runtime.exits import EXIT_THRESHOLDS
    from cbnet_tl.toolchain.scoring import format_share
    from cbnet_tl.toolchain.training.exit_choice import multiexit_options

    validation = _held_out(work)
    options = multiexit_options(work, train.images[validation], train.labels[validation], manifest, margin_pt,
                                num_new_images=num_test)
    n = options["num_selection"] + options["num_certification"]
    log(f"{MULTIEXIT_PIPELINE}: exit thresholds {', '.join(f'{t:.4f}' for t in options[EXIT_THRESHOLDS])} (on {n} "
        f"held-out images: accuracy {format_share(round(options['validation_accuracy'] * n), n)} vs the last exit's "
        f"{format_share(round(options['validation_last_exit_accuracy'] * n), n)}; loss bound "
        f"{options['validation_loss_bound_pt']:.2f} pt, certified on {options['num_certification']} of them for a "
        f"sample of {num_test}, within the margin {margin_pt:g} pt; exit shares "
        + " / ".join(format_share(round(s * n), n) for s in options["validation_exit_shares"])
        + f"; {options['validation_macs_per_image'] / 1e6:.2f} M MACs per image, "
        f"{options['validation_macs_share_of_last']:.1%} of the whole path's)")
    return options


def evidence_stage(work: Path, train, manifest: Manifest):
    """The evidence the build's held-out choices are made on (``training.evidence``): every pipeline ``manifest``
    deploys, int8, on the held-out images ``work/train.json`` names. Another source of ``Evidence`` goes here."""
    from cbnet_tl.toolchain.training.evidence import held_out_evidence

    validation = _held_out(work)
    return held_out_evidence(work, train.images[validation], train.labels[validation], manifest)


def options_stage(work: Path, draft: Manifest, train, num_test: int, log, config: BuildConfig) -> tuple:
    """The options chosen on held-out images (multiexit's thresholds where built, then cbnet-fallback's threshold on
    the held-out evidence), added to the draft manifest (not written yet); return it and the evidence, with
    cbnet-fallback's outcomes at its threshold."""
    from cbnet_tl.runtime.manifest import PipelineEntry
    from cbnet_tl.runtime.runners import CONFIDENCE_THRESHOLD
    from cbnet_tl.runtime.specs import FALLBACK_PIPELINE
    from cbnet_tl.toolchain.training.fallback import describe_threshold, threshold_from

    pipelines = dict(draft.pipelines)
    if MULTIEXIT_PIPELINE in pipelines:
        options = multiexit_stage(work, train, draft, config.multiexit_margin_pt, num_test, log)
        pipelines[MULTIEXIT_PIPELINE] = PipelineEntry(pipelines[MULTIEXIT_PIPELINE].models, options=options)
    evidence = evidence_stage(work, train, draft.replace(pipelines=pipelines))
    options = threshold_from(evidence, config.max_fallback_share)
    pipelines[FALLBACK_PIPELINE] = PipelineEntry(pipelines[FALLBACK_PIPELINE].models, options=options)
    log(describe_threshold(options, evidence, pipelines[FALLBACK_PIPELINE].models[-1]))
    return draft.replace(pipelines=pipelines), evidence.with_fallback(options[CONFIDENCE_THRESHOLD])


def check_stage(work: Path, manifest: Manifest, train, test, config: BuildConfig, log, progress) -> dict:
    """Score both precisions of every pipeline in ``work`` (``manifest``: the build's, not written yet), write
    ``work/checks.json`` and say which pipelines failed the learning check; on a quantization failure, say which
    layers lost the accuracy (``explain_stage``) and raise."""
    from cbnet_tl.runtime.files import write_json_atomic
    from cbnet_tl.toolchain.conversion import checks

    record = checks.run_checks(work, test.images, test.labels, config.check, progress=progress, manifest=manifest)
    write_json_atomic(work / checks.CHECKS_NAME, record)
    log(checks.format_table(record, list(train.class_names)))
    for line in checks.learning_failures(record, list(train.class_names)).values():
        log(line)
    try:
        checks.raise_on_failures(record)
    except QuantizationCheckError:
        explain_stage(work, train.images, test.images, log)
        raise
    return record


def default_stage(work: Path, manifest: Manifest, evidence, checks_record: dict, config: BuildConfig, log) -> Manifest:
    """The recommended pipeline (never one that failed the learning check) and the default one (the user's
    --default-pipeline, else the recommendation) into the manifest, written to ``work/manifest.json`` once."""
    from cbnet_tl.toolchain.conversion.checks import failed_learning
    from cbnet_tl.runtime.specs import DEFAULT_PIPELINE
    from cbnet_tl.toolchain.training.evidence import recommend_pipeline

    failed = failed_learning(checks_record)
    macs = {name: entry.macs for name, entry in manifest.models.items()}
    cheaper = not (macs.get("cbnet") and macs.get("lenet")) or macs["cbnet"] < macs["lenet"]
    recommendation = recommend_pipeline(evidence.correct, failed, evidence.source, cbnet_cheaper=cheaper)
    log(recommendation["reason"])
    chosen = config.default_pipeline or recommendation["pipeline"]
    if chosen is None:  # every pipeline failed: the bundle still runs, on the most accurate, and says so
        counts = recommendation["num_correct"]
        chosen = max(counts, key=lambda name: counts[name]) if counts else DEFAULT_PIPELINE
        log(f"warning: no pipeline passed the learning check; the bundle's default is {chosen}, the most accurate on "
            f"the {recommendation['source']}, so that it and its service run; `cbnet-tl check` fails until one "
            f"learns (more images per class, fewer classes, or a larger --image-size)")
    elif config.default_pipeline is not None:
        log(f"default pipeline: {chosen} (--default-pipeline)"
            + (", which failed the learning check" if chosen in failed else ""))
    manifest = manifest.replace(default_pipeline=chosen, recommendation={
        k: recommendation[k] for k in ("pipeline", "best", "reason", "source", "num_images")})
    manifest.write(work)
    return manifest


def explain_stage(work: Path, train_images: np.ndarray, test_images: np.ndarray, log) -> None:
    from cbnet_tl.toolchain.analysis.explain import explain_build, format_explanation

    log("which layers lost the accuracy (int8 against float, per layer, worst first):")
    log(format_explanation(explain_build(work, train_images, test_images)))


def calibration_stage(work: Path, train_images: np.ndarray, test, chosen: int) -> dict:
    """``work/calibration.json``: the shipped image models (from ``work/keras``) at a few calibration sizes."""
    from cbnet_tl.runtime.files import write_json_atomic
    from cbnet_tl.toolchain.training.export import export_specs

    record = calibration_table(export_specs(work, train_images, chosen), test, chosen)
    write_json_atomic(work / "calibration.json", record)
    return record


def bundle_stage(work: Path, target, test_images: np.ndarray, log) -> Path:
    """Render ``work/bundle`` and its tarball from ``work``'s manifest, models and checks; return the tarball."""
    from cbnet_tl.toolchain.delivery.bundle import write_bundle

    tarball = write_bundle(work, target, test_images)
    if target.uses_edgetpu:
        coral_stage(work, log)
    return tarball


def coral_stage(work: Path, log) -> None:
    """Say what ``work/bundle/edgetpu_report.json`` holds: the Edge TPU mapping and whether the compiler ran."""
    from cbnet_tl.toolchain.edgetpu.coral import format_inspection

    edgetpu = json.loads((work / "bundle" / "edgetpu_report.json").read_text())
    log("\n".join(line for line in format_inspection(edgetpu["inspect"]).splitlines() if not line.startswith("  ")))
    compile_result = edgetpu["compile"]
    log("edgetpu_compiler: " + ("compiled " + ", ".join(compile_result["models"]) if compile_result["compiled"]
                                else "NOT run: " + compile_result["reason"]))


def report_stage(work: Path, test, target) -> None:
    """A quick ``work/bench.json`` and ``work/report/`` from everything the build wrote."""
    from cbnet_tl.runtime.files import write_json_atomic
    from cbnet_tl.toolchain.analysis.bench import BenchConfig, run_bench
    from cbnet_tl.toolchain.analysis.report import write_report

    quick = BenchConfig(batch_sizes=(1,), num_images=min(512, len(test)), power_model=target.power_model)
    write_json_atomic(work / "bench.json", run_bench(work, test.images, test.labels, quick))
    write_report(work, test_images=test.images, test_labels=test.labels)


def multiexit_summary(work: Path, manifest: Manifest, test) -> dict:
    """multiexit on the test split (int8): each exit alone, and the pipeline with its thresholds, with MACs."""
    from cbnet_tl.runtime.bundle import load_bundle
    from cbnet_tl.runtime.exits import EXIT_THRESHOLDS, exit_scores
    from cbnet_tl.runtime.pipelines import Pipeline
    from cbnet_tl.toolchain.training.exit_choice import exit_depths

    spec, options = PIPELINE_SPECS[MULTIEXIT_PIPELINE], manifest.pipelines[MULTIEXIT_PIPELINE].options
    pipeline = Pipeline(load_bundle(work, precision="int8", models=list(spec.models), manifest=manifest), spec)
    labels, confidences = exit_scores(pipeline, test.images)
    depth = exit_depths(confidences, options[EXIT_THRESHOLDS])
    cumulative = np.cumsum([manifest.models[m].macs for m in spec.models]).astype(np.float64)
    correct = labels == test.labels[None, :]
    return {"exit_accuracies_int8": [float(c.mean()) for c in correct],
            "exit_macs": [int(m) for m in cumulative], "thresholds": options[EXIT_THRESHOLDS],
            "accuracy_int8": float(correct[depth, np.arange(len(depth))].mean()),
            "exit_shares": [float(np.mean(depth == k)) for k in range(len(spec.models))],
            "macs_per_image": float(cumulative[depth].mean()),
            "macs_share_of_last": float(cumulative[depth].mean() / cumulative[-1])}


def _draft_manifest(work: Path, models: dict, train, test, spec, data_record: dict, dataset: str,
                    config: BuildConfig, threshold: float) -> Manifest:
    """The build's manifest before the options chosen on held-out images are known (``options_stage`` adds them):
    every pipeline but the optional ones not asked for, cbnet-fallback with the build's --fallback network."""
    from cbnet_tl.runtime.manifest import PipelineEntry
    from cbnet_tl.runtime.specs import FALLBACK_NETWORKS, FALLBACK_PIPELINE, PIPELINE_SPECS
    from cbnet_tl.toolchain.delivery.bundle import new_version
    from cbnet_tl.toolchain.conversion.convert import file_hashes

    hashes = file_hashes(work, [f.file for m in models.values() for f in m.files.values()])
    return Manifest(
        dataset=dataset, class_names=tuple(train.class_names), entropy_threshold=threshold,
        models=models, pipelines={name: PipelineEntry(
            (s.models[0], FALLBACK_NETWORKS[config.fallback]) if name == FALLBACK_PIPELINE else s.models)
            for name, s in PIPELINE_SPECS.items() if not s.optional or name in config.with_pipelines},
        files=hashes, kind="build", version=new_version(list(hashes.values())),
        built_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), tools=tool_versions(),
        input=spec.to_dict(),
        data={**data_record, "name": dataset, "source": train.source, "num_train": len(train), "num_test": len(test)},
    )


def build(config: BuildConfig, log=print) -> dict:
    """Run every stage; return the build record (also written to ``OUT/build.json``)."""
    from cbnet_tl.runtime.files import write_json_atomic
    from cbnet_tl.toolchain.ingest.datasets import load_build_data, seeded_subset
    from cbnet_tl.toolchain.targets import get_target

    target = get_target(config.target)
    progress = _progress(config.train.progress)
    started = time.perf_counter()
    timings: dict = {}

    def timed(key: str, stage, *args):
        begin = time.perf_counter()
        result = stage(*args)
        timings[key] = time.perf_counter() - begin
        return result

    train, test, spec, data_record = load_build_data(config.dataset, config.data_dir, config.inputs,
                                                     log=log, progress=progress)
    if config.max_train_images is not None:
        train = seeded_subset(train, config.max_train_images, config.train.seed)
    custom = bool(data_record["custom"])
    threshold = config.entropy_threshold(custom)
    dataset_name = train.name if custom else config.dataset
    log(f"data: {dataset_name}: {len(train)} training and {len(test)} test images from {train.source}")

    with staged_directory(check_output(config.out, config.force)) as work:
        train_record = timed("train_s", train_stage, work, train, threshold, config, log)
        models = timed("convert_s", convert_stage, work, train.images, config, progress)
        log(f"MACs per image at {spec.width}x{spec.height}x{spec.channels}: " + ", ".join(
            f"{name} {entry.macs / 1e6:.3f} M" for name, entry in models.items() if entry.macs is not None))
        if MULTIEXIT_PIPELINE in config.with_pipelines:
            log(f"{MULTIEXIT_PIPELINE}: MACs per image to each exit " + ", ".join(
                f"{m / 1e6:.3f} M" for m in np.cumsum([models[s].macs for s in PIPELINE_SPECS[MULTIEXIT_PIPELINE].models])))
        draft = _draft_manifest(work, models, train, test, spec, data_record, dataset_name, config, threshold)
        manifest, evidence = options_stage(work, draft, train, len(test), log, config)
        record = timed("check_s", check_stage, work, manifest, train, test, config, log, progress)
        manifest = default_stage(work, manifest, evidence, record, config, log)
        timed("calibration_s", calibration_stage, work, train.images, test, config.calibration_samples)
        tarball = timed("bundle_s", bundle_stage, work, target, test.images, log)
        timings["total_s"] = time.perf_counter() - started
        build_record = {
            "dataset": dataset_name, "target": target.name, "version": manifest.version,
            "threshold": threshold, "timings": {k: round(v, 2) for k, v in timings.items()},
            "input": spec.to_dict(), "num_skipped_images": data_record["num_skipped"],
            "train": train_record, "tarball": tarball.name,
            "accuracy": {name: {"float32": r["float32"]["accuracy"], "int8": r["int8"]["accuracy"],
                                "int8_interval": r["int8_accuracy_interval"], "learned": r["learned"]}
                         for name, r in record["pipelines"].items()},
            "default_pipeline": manifest.default_pipeline, "recommendation": manifest.recommendation,
        }
        if MULTIEXIT_PIPELINE in manifest.pipelines:
            build_record[MULTIEXIT_PIPELINE] = multiexit_summary(work, manifest, test)
        write_json_atomic(work / "build.json", build_record)
        if config.write_report:
            begin = time.perf_counter()
            report_stage(work, test, target)
            build_record["timings"]["report_s"] = round(time.perf_counter() - begin, 2)
            write_json_atomic(work / "build.json", build_record)
    return build_record
