"""``cbnet-tl build`` and ``cbnet-tl check``."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer
from typing_extensions import Annotated

from cbnet_tl.runtime.specs import BASELINE_PIPELINE
from cbnet_tl.toolchain.training.schedule import TARGET_STEPS
from cbnet_tl.toolchain.cli.common import (DataDir, DatasetChoice, FallbackChoice, OptionalPipelineChoice, RecipeChoice,
                                           SizeChoice, TargetChoice, echo_json)

app = typer.Typer()
ColourChoice = Enum("ColourChoice", [(c, c) for c in ("auto", "rgb", "grayscale")], type=str)
ResizeChoice = Enum("ResizeChoice", [(c, c) for c in ("crop", "squash", "pad")], type=str)
ResampleChoice = Enum("ResampleChoice", [(c, c) for c in ("bilinear", "box")], type=str)


@app.command()
def build(
    dataset: Annotated[DatasetChoice, typer.Option(help="Dataset to train on (ignored for a custom --data-dir).")] = DatasetChoice.FASHION_MNIST,
    out: Annotated[Path, typer.Option(help="Build directory; the bundle lands in OUT/bundle and OUT/*.tar.gz.")] = Path("build"),
    data_dir: DataDir = None,
    target: Annotated[TargetChoice, typer.Option(help="Deployment target.")] = TargetChoice("rpi4"),
    threshold: Annotated[Optional[float], typer.Option(help="Entropy threshold T for easy/hard (default per dataset: mnist 0.05, fashion-mnist 0.5, kmnist 0.025).")] = None,
    max_accuracy_drop: Annotated[float, typer.Option(help="Fail if an int8 pipeline is more than this many points below float32.")] = 1.0,
    blenet_epochs: Annotated[int, typer.Option(min=1, help="Maximum B-LeNet epochs (early stopping), with 5,000 training images or more; below, --steps sets the schedule.")] = 20,
    autoencoder_epochs: Annotated[int, typer.Option(min=1, help="Maximum converting-AE epochs (early stopping).")] = 100,
    steps: Annotated[int, typer.Option(min=1, help="With fewer than 5,000 training images: optimizer steps of B-LeNet at batch 32 (the fast recipe takes three times as many) (the epoch options apply only to larger sets; README 'Few images').")] = TARGET_STEPS,
    recipe: Annotated[RecipeChoice, typer.Option(help="fast: dense converting AE + dense classifier, trained paper-style then jointly, fused in one graph; paper: the authors' AE with the B-LeNet branch as classifier.")] = RecipeChoice("fast"),
    size: Annotated[SizeChoice, typer.Option(help="Size of the fast recipe's layers (recipes/fast.py SIZES); not the image size, see --image-size.")] = SizeChoice("default"),
    image_size: Annotated[Optional[str], typer.Option(help="Model input size: N (square) or HxW, e.g. 32 or 48x64. Default: an IDX dataset's own size; for an image folder the median shorter side, capped at 32.")] = None,
    color: Annotated[ColourChoice, typer.Option(help="Input channels: rgb, grayscale, or auto (rgb when any image of the data is in colour).")] = ColourChoice("auto"),
    resize: Annotated[Optional[ResizeChoice], typer.Option(help="How an image of another aspect ratio fits the input: crop (centre crop, then resize), squash (stretch) or pad (letterbox onto --background). Default: pad.")] = None,
    background: Annotated[Optional[str], typer.Option(help="What transparent pixels are composited onto, and pad's bars: white, black, #rrggbb or R,G,B. Default: white.")] = None,
    resample: Annotated[ResampleChoice, typer.Option(help="Resampling filter (antialiased; computed by cbnet-tl itself, so the device gives the same bytes).")] = ResampleChoice("bilinear"),
    strict: Annotated[bool, typer.Option(help="Refuse the dataset if any image cannot be read or is over --max-pixels (default: skip it with a notice).")] = False,
    max_pixels: Annotated[int, typer.Option(min=1, help="Largest image accepted, in pixels, checked from the header before decoding.")] = 64_000_000,
    seed: Annotated[int, typer.Option(help="Random seed for splits and weights.")] = 0,
    time_budget_minutes: Annotated[float, typer.Option(min=0, help="Wall-clock limit for training (2/3 B-LeNet, 1/3 AE); training keeps the best epoch so far and the terminal says what was cut. Default 0: no limit, the fixed schedule runs whole (the same seed gives the same models on a slow or loaded machine).")] = 0.0,
    max_train_images: Annotated[Optional[int], typer.Option(min=10, help="Train on a seeded subset of this many images (quick smoke builds).")] = None,
    calibration_samples: Annotated[int, typer.Option(min=1, max=4000, help="Training images that calibrate the int8 ranges. Default 500: on our builds LeNet's int8 accuracy is flat from about 100 up (the report's calibration table shows it for each build), and 500 leaves margin for the dense models at about 1 s more per conversion.")] = 500,
    max_fallback_share: Annotated[float, typer.Option(min=0.0, max=1.0, help="cbnet-fallback's cost cap: the share of images it may also send to LeNet. Its threshold is the one with the best accuracy on held-out training images among those sending at most this share; 0.04 keeps the pipeline several times cheaper than LeNet.")] = 0.04,
    with_pipelines: Annotated[Optional[List[OptionalPipelineChoice]], typer.Option("--with", help="Also build an optional pipeline (repeatable). multiexit: a three-exit CNN (about 12 M MACs on its whole path at 28x28, trained jointly for a fixed 10 epochs: minutes per epoch on 2 cores), its exit thresholds chosen on held-out images; the bundle then deploys, evaluates, benches, simulates and serves it too.")] = None,
    fallback: Annotated[FallbackChoice, typer.Option(help="cbnet-fallback's second network: lenet, or multiexit (the multi-exit network's whole path; needs --with multiexit).")] = FallbackChoice(BASELINE_PIPELINE),
    multiexit_margin: Annotated[float, typer.Option(min=0.0, max=100.0, help="multiexit's thresholds give the least average MACs whose accuracy loss against its last exit stays within this many points at 95% confidence on held-out images.")] = 0.5,
    default_pipeline: Annotated[Optional[str], typer.Option(help="The pipeline the bundle runs when none is named (run.py classify and watch, its service, `cbnet-tl run`). Default: the build's recommendation: cbnet when its accuracy on held-out training images is within the uncertainty of the most accurate pipeline's, else the most accurate; never one that failed the learning check.")] = None,
    force: Annotated[bool, typer.Option(help="Replace OUT if it exists.")] = False,
    report: Annotated[bool, typer.Option(help="Write OUT/report/index.html at the end.")] = True,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    json_output: Annotated[bool, typer.Option("--json", help="Print the build record as JSON.")] = False,
):
    """Train the models, convert them to int8 TFLite, check quantized accuracy, and write a bundle."""
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ chatter out of the progress bars
    from cbnet_tl.toolchain.build import BuildConfig
    from cbnet_tl.toolchain.build import build as run_build
    from cbnet_tl.toolchain.conversion.checks import CheckConfig
    from cbnet_tl.toolchain.ingest.inputs import InputChoice, parse_image_size
    from cbnet_tl.toolchain.training.train import Recipe, TrainConfig

    inputs = InputChoice(image_size=parse_image_size(image_size), colour=color.value,
                         resize=resize.value if resize else None, background=background, resample=resample.value,
                         strict=strict, max_pixels=max_pixels)
    config = BuildConfig(
        dataset=dataset.value, out=out, data_dir=data_dir, target=target.value, threshold=threshold, force=force,
        write_report=report, max_train_images=max_train_images,
        calibration_samples=calibration_samples,
        max_fallback_share=max_fallback_share,
        train=TrainConfig(seed=seed, recipe=Recipe(recipe.value), fast_size=size.value, blenet_epochs=blenet_epochs, autoencoder_epochs=autoencoder_epochs, progress=progress,
                          few_image_steps=steps,
                          time_budget_s=time_budget_minutes * 60 or None),
        check=CheckConfig(max_accuracy_drop=max_accuracy_drop), inputs=inputs,
        with_pipelines=tuple(p.value for p in with_pipelines or ()), fallback=fallback.value,
        multiexit_margin_pt=multiexit_margin, default_pipeline=default_pipeline,
    )
    record = run_build(config, log=(lambda m: typer.echo(m, err=True)) if json_output else typer.echo)
    if json_output:
        echo_json(record)
    else:
        typer.echo(f"bundle: {out / 'bundle'}  ({record['tarball']})  in {record['timings']['total_s']:.0f} s")


@app.command()
def check(
    build_dir: Annotated[Path, typer.Argument(help="A build directory from `cbnet-tl build`.")],
    data_dir: DataDir = None,
    max_accuracy_drop: Annotated[Optional[float], typer.Option(help="Allowed drop in points (default: the build's).")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the checks record as JSON.")] = False,
    explain: Annotated[bool, typer.Option(help="Also show each int8 model's worst layers (int8 vs float error per layer) and what to change.")] = False,
):
    """Re-run a build's checks on its test split: float32 vs int8 (quantization), and whether each pipeline learned
    (int8 accuracy surely above always answering the largest class; no class answered more than twice as often as
    it occurs). Exits 1 on a failure, one line per failed pipeline."""
    from cbnet_tl.runtime.files import write_json_atomic
    from cbnet_tl.toolchain.conversion import checks as checks_stage
    from cbnet_tl.toolchain.analysis.evaluation import load_test_split

    allowed = max_accuracy_drop
    if allowed is None:  # the build's own, from its last checks
        previous = checks_stage.read_checks(build_dir, required=False)
        allowed = previous["max_accuracy_drop"] if previous is not None else 1.0
    manifest, test = load_test_split(build_dir, data_dir)
    record = checks_stage.run_checks(build_dir, test.images, test.labels,
                                     checks_stage.CheckConfig(max_accuracy_drop=allowed))
    write_json_atomic(build_dir / checks_stage.CHECKS_NAME, record)
    if explain:
        from cbnet_tl.toolchain.analysis.explain import build_training_images, explain_build, format_explanation

        record["explain"] = explain_build(build_dir, build_training_images(build_dir, data_dir), test.images)
    if json_output:
        echo_json(record)
    else:
        typer.echo(checks_stage.format_table(record, list(manifest.class_names)))
    if explain and not json_output:
        typer.echo("\nworst layers per int8 model (int8 vs float, each layer on its own inputs):")
        typer.echo(format_explanation(record["explain"]))
    failures = checks_stage.learning_failures(record, list(manifest.class_names))
    for line in failures.values():
        typer.echo(f"error: {line}", err=True)
    checks_stage.raise_on_failures(record)
    if failures:
        raise typer.Exit(code=1)



@app.command()
def sizes(
    build_dir: Annotated[Path, typer.Argument(help="A build directory from `cbnet-tl build`.")],
    data_dir: DataDir = None,
    size: Annotated[Optional[List[str]], typer.Option(help="Fast-recipe sizes to train and time (default: all of recipes/fast.py SIZES).")] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
):
    """Train the fast recipe at several sizes on the build's data; accuracy and µs/image of each, in one run."""
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from cbnet_tl.recipes.fast import SIZES
    from cbnet_tl.toolchain.analysis.evaluation import load_test_split, load_train_split
    from cbnet_tl.toolchain.analysis.sizes import format_sizes, run_sizes

    train, seed = load_train_split(build_dir, data_dir)
    _, test = load_test_split(build_dir, data_dir)
    record = run_sizes(build_dir, train, test, size or list(SIZES), seed=seed, progress=progress,
                       log=(lambda m: typer.echo(m, err=True)))
    if json_output:
        echo_json(record)
    else:
        typer.echo(format_sizes(record))

