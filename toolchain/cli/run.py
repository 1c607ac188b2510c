"""``cbnet-tl run`` and ``cbnet-tl eval``: classify and score through the light runtime only."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer
from typing_extensions import Annotated

from cbnet_tl.runtime.classify import DEVICES, OPTION_HELP, ClassifyOptions, fallback_options
from cbnet_tl.toolchain.cli.common import (
    DEFAULT_TARGET,
    DataDir,
    DatasetChoice,
    DeadlineMs,
    Dvfs,
    JsonOutput,
    PeriodMs,
    PipelineChoice,
    PowerTarget,
    PrecisionChoice,
    SysfsRoot,
    TargetChoice,
    echo_json,
    power_model,
)

app = typer.Typer()
DeviceChoice = Enum("DeviceChoice", [(device, device) for device in DEVICES], type=str)
# `run`'s defaults and help are `run.py classify`'s (runtime/classify.py); it leaves the ranges to ClassifyOptions,
# so that both commands refuse a value with the same line
DEFAULTS = ClassifyOptions()


def _help(name: str) -> str:
    """``run.py classify``'s help for option ``name``, as a sentence."""
    return OPTION_HELP[name][0].upper() + OPTION_HELP[name][1:] + "."


FallbackThreshold = Annotated[Optional[float], typer.Option(min=0.0, max=1.0, help=_help("fallback_threshold"))]


@app.command()
def run(
    bundle: Annotated[Path, typer.Argument(help="Bundle or build directory.")],
    images: Annotated[List[Path], typer.Argument(help="Image files or folders of images.")],
    pipeline: Annotated[Optional[PipelineChoice], typer.Option(help=_help("pipeline"))] = None,
    threads: Annotated[int, typer.Option(help=_help("threads"))] = DEFAULTS.threads,
    device: Annotated[DeviceChoice, typer.Option(help=_help("device"))] = DeviceChoice(DEFAULTS.device),
    batch_size: Annotated[int, typer.Option(help=_help("batch_size"))] = DEFAULTS.batch_size,
    max_pixels: Annotated[int, typer.Option(help=_help("max_pixels"))] = DEFAULTS.max_pixels,
    input_sha256: Annotated[bool, typer.Option("--input-sha256", help=_help("input_sha256"))] = DEFAULTS.input_sha256,
    fallback_threshold: Annotated[Optional[float], typer.Option(
        help=_help("fallback_threshold"))] = DEFAULTS.fallback_threshold,
    convert_image: Annotated[Optional[Path], typer.Option(help=_help("convert_image"))] = DEFAULTS.convert_image,
    convert: Annotated[bool, typer.Option("--convert", help=_help("convert"))] = DEFAULTS.convert,
    dvfs: Annotated[str, typer.Option(help=_help("dvfs"))] = DEFAULTS.dvfs,
    deadline_ms: Annotated[Optional[float], typer.Option(help=_help("deadline_ms"))] = DEFAULTS.deadline_ms,
    period_ms: Annotated[Optional[float], typer.Option(help=_help("period_ms"))] = DEFAULTS.period_ms,
    workload: Annotated[Optional[str], typer.Option(help=_help("workload"))] = DEFAULTS.workload,
    target: Annotated[TargetChoice, typer.Option(help=_help("target"))] = DEFAULT_TARGET,
    sysfs_root: Annotated[Path, typer.Option(help=_help("sysfs_root"))] = DEFAULTS.sysfs_root,
    json_output: Annotated[bool, typer.Option("--json", help=_help("json"))] = DEFAULTS.json,
):
    """Classify images with a bundle through the light runtime only: the bundle's `run.py classify`, with its
    options, table, summary and --json.

    Every readable file is classified; an unreadable one (corrupt, not an image, over --max-pixels, no permission)
    gets an error entry in the table and in --json, and the command then exits 1. With --dvfs other than off (or
    --deadline-ms, --period-ms, --workload) the images run under the policy, each batch one DVFS batch, and a
    summary line follows: misses, latency, energy and the time at each frequency."""
    from cbnet_tl.runtime.classify import classify_command
    from cbnet_tl.toolchain.analysis.rapl import HOST_METERS

    options = ClassifyOptions(
        pipeline=pipeline.value if pipeline else None, threads=threads, device=device.value, batch_size=batch_size,
        max_pixels=max_pixels, input_sha256=input_sha256, fallback_threshold=fallback_threshold,
        convert_image=convert_image, convert=convert, dvfs=dvfs, deadline_ms=deadline_ms, period_ms=period_ms,
        workload=workload, target=power_model(target), sysfs_root=sysfs_root, json=json_output)
    code = classify_command(bundle, images, options, host_meters=HOST_METERS)
    if code:
        raise typer.Exit(code=code)


@app.command("eval")
def evaluate_command(
    bundle: Annotated[Path, typer.Argument(help="Bundle or build directory.")],
    dataset: Annotated[Optional[DatasetChoice], typer.Option(help="Dataset (default: the bundle's).")] = None,
    data_dir: DataDir = None,
    pipeline: Annotated[Optional[List[PipelineChoice]], typer.Option(help="Pipeline(s) to evaluate (default: every deployed pipeline).")] = None,
    precision: Annotated[PrecisionChoice, typer.Option(help="int8, or float32 (build directories only).")] = PrecisionChoice("int8"),
    batch_size: Annotated[int, typer.Option(min=1, help="Images per interpreter call.")] = 1,
    fallback_threshold: FallbackThreshold = None,
    limit: Annotated[Optional[int], typer.Option(min=1, help="Evaluate only the first N test images.")] = None,
    dvfs: Dvfs = "off",
    deadline_ms: DeadlineMs = None,
    period_ms: PeriodMs = None,
    sysfs_root: SysfsRoot = Path("/"),
    target: PowerTarget = DEFAULT_TARGET,
    json_output: JsonOutput = False,
):
    """Accuracy, share of each path and time per image on this machine, through the runtime only.

    With --dvfs other than off (or --deadline-ms/--period-ms), images run under the policy and each pipeline
    also reports misses, latency, energy per inference and time at each frequency: one at a time (arriving every
    --period-ms if given), or with --batch-size N as a burst in batches of N, each one DVFS batch whose deadline
    counts from the start.
    """
    from cbnet_tl.toolchain.analysis.evaluation import evaluate_bundle, format_evaluation

    names = [p.value for p in pipeline] if pipeline else None
    dvfs_options = None
    if dvfs != "off" or deadline_ms is not None or period_ms is not None:
        dvfs_options = {"dvfs": dvfs, "deadline_ms": deadline_ms, "period_ms": period_ms,
                        "sysfs_root": sysfs_root, "target": power_model(target)}
    result = evaluate_bundle(bundle, dataset.value if dataset else None, data_dir, names,
                             precision=precision.value, batch_size=batch_size, limit=limit, dvfs=dvfs_options,
                             options=fallback_options(fallback_threshold))
    if json_output:
        echo_json(result)
    else:
        typer.echo(format_evaluation(result))


@app.command()
def tune(
    bundle: Annotated[Path, typer.Argument(help="Bundle or build directory (a build directory may also choose float32 models).")],
    out: Annotated[Optional[Path], typer.Option(help="Tuning file to write (default: beside the directory, or the release's state folder; never inside the release).")] = None,
    threads: Annotated[int, typer.Option(min=1, help="Interpreter threads to tune for.")] = 1,
    json_output: JsonOutput = False,
):
    """Time every model of every pipeline in every configuration on this machine; keep the fastest that gives
    the reference classes on the samples. Pipelines then run those (`run`, `eval`, the bundle's run.py)."""
    from cbnet_tl.runtime.api import tune_bundle
    from cbnet_tl.runtime.tuning import format_tuning

    record = tune_bundle(bundle, out, num_threads=threads)
    if json_output:
        echo_json(record)
    else:
        typer.echo(format_tuning(record) + f"\nwritten to {record['file']}")
