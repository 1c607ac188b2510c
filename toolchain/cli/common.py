"""What every command shares: the choices (enums built from their tables) and the common options."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from typing_extensions import Annotated

from cbnet_tl.runtime.manifest import PRECISIONS
from cbnet_tl.runtime.specs import FALLBACK_NETWORKS, OPTIONAL_PIPELINES, PIPELINE_SPECS
from cbnet_tl.toolchain.ingest.datasets import DatasetName
from cbnet_tl.toolchain.targets import TARGETS
from cbnet_tl.toolchain.training.train import Recipe


def _choices(name: str, values) -> type:
    return Enum(name, [(value, value) for value in values], type=str)


PipelineChoice = _choices("PipelineChoice", PIPELINE_SPECS)
OptionalPipelineChoice = _choices("OptionalPipelineChoice", OPTIONAL_PIPELINES)  # build --with
FallbackChoice = _choices("FallbackChoice", FALLBACK_NETWORKS)  # build --fallback
TargetChoice = _choices("TargetChoice", TARGETS)
PrecisionChoice = _choices("PrecisionChoice", PRECISIONS)
DatasetChoice = DatasetName
RecipeChoice = Recipe
# recipes.fast.SIZES' keys, restated because recipes/ imports Keras and --help must stay fast; a test keeps them equal
SizeChoice = _choices("SizeChoice", ("small", "default", "large"))

DataDir = Annotated[
    Optional[Path],
    typer.Option(help="Folder with the four IDX .gz files, or an image folder: one sub-folder per class, or train/ (val/, test/) each with class sub-folders. Later commands on a build default to the folder it read."),
]
JsonOutput = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]
Dvfs = Annotated[str, typer.Option(help="CPU frequency policy: off, performance, powersave, fixed:<MHz> or eenet.")]
DeadlineMs = Annotated[Optional[float], typer.Option(help="Deadline per inference in ms (needed by every policy but off).")]
PeriodMs = Annotated[Optional[float], typer.Option(help="Inferences arrive every PERIOD ms (default: back to back).")]
SysfsRoot = Annotated[Path, typer.Option(help="Root of the sysfs tree holding cpufreq (tests pass a copy).")]
PowerTarget = Annotated[TargetChoice, typer.Option(help="Target whose power model gives modelled energy.")]
MaxPixels = Annotated[int, typer.Option(min=1, help="Largest image accepted, in pixels, checked from the header "
                                                   "before decoding; a larger file gets an error entry.")]
DEFAULT_TARGET = TargetChoice("rpi4")


def echo_json(payload) -> None:
    """Print a ``--json`` result as standard JSON: a NaN or an infinity is a bug in the record, not output."""
    typer.echo(json.dumps(payload, indent=2, allow_nan=False))


def power_model(target) -> str:
    """The power table of a target (a target's name need not be its power table's)."""
    return TARGETS[target.value if isinstance(target, Enum) else target].power_model


def parse_frequencies_khz(text: str) -> list:
    """'600,750,1500' (MHz) or kHz values as sysfs prints them ('600000 750000') -> kHz."""
    try:
        values = [float(part) for part in text.replace(",", " ").split()]
    except ValueError:
        raise typer.BadParameter(f"Expected comma-separated frequencies in MHz such as 600,1000,1500. "
                                 f"Received: {text!r}") from None
    if not values or min(values) <= 0:
        raise typer.BadParameter(f"Expected at least one frequency > 0 MHz. Received: {text!r}")
    return [int(round(v if v >= 100_000 else v * 1000)) for v in values]  # sysfs lists kHz


def parse_batches(text: str) -> tuple:
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise typer.BadParameter(f"Expected comma-separated integers such as 1,32. Received: {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise typer.BadParameter(f"Expected batch sizes >= 1. Received: {text!r}")
    return sizes
