"""``cbnet-tl run`` and ``cbnet-tl eval``: classify and score through the light runtime only."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from typing_extensions import Annotated

from cbnet_tl.runtime.images import MAX_PIXELS_DEFAULT
from cbnet_tl.toolchain.cli.common import (
    DEFAULT_TARGET,
    DataDir,
    DatasetChoice,
    DeadlineMs,
    Dvfs,
    JsonOutput,
    MaxPixels,
    PeriodMs,
    PipelineChoice,
    PowerTarget,
    PrecisionChoice,
    SysfsRoot,
    echo_json,
    power_model,
)

app = typer.Typer()

FallbackThreshold = Annotated[Optional[float], typer.Option(
    min=0.0, max=1.0, help="cbnet-fallback: send images whose cbnet confidence is below this to LeNet "
    "(default: the threshold the build chose on validation data, in the manifest).")]


def fallback_options(threshold: Optional[float]) -> Optional[dict]:
    from cbnet_tl.runtime.runners import CONFIDENCE_THRESHOLD

    return None if threshold is None else {CONFIDENCE_THRESHOLD: threshold}


@app.command()
def run(
    bundle: Annotated[Path, typer.Argument(help="Bundle or build directory.")],
    images: Annotated[List[Path], typer.Argument(help="Image files or folders of images.")],
    pipeline: Annotated[Optional[PipelineChoice], typer.Option(help="Which pipeline classifies (default: the build's recommendation, in its manifest).")] = None,
    convert: Annotated[bool, typer.Option(help="No longer needed: every image goes through the bundle's input spec (accepted and ignored).")] = False,
    threads: Annotated[int, typer.Option(min=1, help="Interpreter threads.")] = 1,
    fallback_threshold: FallbackThreshold = None,
    convert_image: Annotated[Optional[Path], typer.Option(help="Also write what the converting autoencoder makes of each image, as DIR/<name>.png (not timed).")] = None,
    dvfs: Dvfs = "off",
    deadline_ms: DeadlineMs = None,
    period_ms: PeriodMs = None,
    sysfs_root: SysfsRoot = Path("/"),
    target: PowerTarget = DEFAULT_TARGET,
    max_pixels: MaxPixels = MAX_PIXELS_DEFAULT,
    json_output: JsonOutput = False,
):
    """Classify images with a bundle, through the light runtime only, optionally under a DVFS policy.

    Every readable file is classified; an unreadable one (corrupt, not an image, over --max-pixels, no permission)
    gets an error entry in the table and in --json, and the command then exits 1."""
    from cbnet_tl.runtime.api import classify_paths, format_results, open_pipeline, unreadable_error
    from cbnet_tl.runtime.dvfs.run import dvfs_session
    from cbnet_tl.runtime.images import collect_image_paths
    from cbnet_tl.toolchain.analysis.evaluation import format_dvfs_summary, write_converted

    from cbnet_tl.runtime.bundle import open_manifest
    from cbnet_tl.runtime.specs import default_pipeline

    pipeline = pipeline or PipelineChoice(default_pipeline(open_manifest(bundle)[1]))
    # the device's tuning file (`cbnet-tl tune`) when there is one; it says so and what it runs
    runner = open_pipeline(bundle, pipeline.value, num_threads=threads, options=fallback_options(fallback_threshold))
    if convert:
        typer.echo(f"note: --convert is no longer needed; every image goes through the bundle's input spec "
                   f"({runner.input_spec.describe()})", err=True)
    paths = collect_image_paths(images)
    with dvfs_session(dvfs, deadline_ms=deadline_ms, period_ms=period_ms, sysfs_root=sysfs_root,
                      target=power_model(target)) as session:
        records = []
        for path in paths:
            session.wait_for_arrival()
            records.extend(classify_paths(runner, [path], hook=session, max_pixels=max_pixels, collect_errors=True))
    summary = session.summary()
    readable = [Path(r["file"]) for r in records if "error" not in r]
    if convert_image is not None and readable:
        write_converted(bundle, readable, convert_image)
    if json_output:
        echo_json({"pipeline": pipeline.value, "configuration": runner.configuration, "results": records,
                   "dvfs": summary})
    else:
        typer.echo("configuration: " + ", ".join(f"{m} {c}" for m, c in runner.configuration.items()), err=True)
        for line in format_results(records):
            typer.echo(line)
        if summary["num_inferences"]:
            typer.echo(format_dvfs_summary(summary))
    failure = unreadable_error(records)
    if failure is not None:
        typer.echo(failure, err=True)
        raise typer.Exit(code=1)


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
