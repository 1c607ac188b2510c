"""The one classify command: ``python3 run.py classify`` on the device and ``cbnet-tl run`` on a host run
``classify_command`` with the same ``ClassifyOptions``, print the same table and summary, and the same ``--json``.

    python3 run.py classify images/ --batch-size 8 --dvfs eenet --workload burst:64:500 --json
    cbnet-tl run build/fmnist/bundle images/ --batch-size 8 --dvfs eenet --workload burst:64:500 --json

Each option is defined here once: its default (``ClassifyOptions``) and its help (``OPTION_HELP``); the device's
argparse options are made from them (``add_arguments``) and the host's Typer options read them.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Optional, Sequence

from cbnet_tl.runtime.delegates import Device
from cbnet_tl.runtime.errors import ConfigError
from cbnet_tl.runtime.images import MAX_PIXELS_DEFAULT

DEVICES = tuple(device.value for device in Device)


@dataclass(frozen=True)
class ClassifyOptions:
    """Every option of a classify, with its default; checked on construction (``ConfigError``)."""

    pipeline: Optional[str] = None
    threads: int = 1
    device: str = Device.CPU.value
    batch_size: int = 1
    max_pixels: int = MAX_PIXELS_DEFAULT
    input_sha256: bool = False
    fallback_threshold: Optional[float] = None
    convert_image: Optional[Path] = None
    convert: bool = False
    dvfs: str = "off"
    deadline_ms: Optional[float] = None
    period_ms: Optional[float] = None
    workload: Optional[str] = None
    target: str = "rpi4"
    sysfs_root: Path = Path("/")
    json: bool = False

    def __post_init__(self):
        for name in ("threads", "batch_size", "max_pixels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"Expected --{name.replace('_', '-')} >= 1. Received: {getattr(self, name)}")
        if self.fallback_threshold is not None and not 0.0 <= self.fallback_threshold <= 1.0:
            raise ConfigError(f"Expected --fallback-threshold between 0 and 1. Received: {self.fallback_threshold}")
        if self.device not in DEVICES:
            raise ConfigError(f"Expected --device one of {list(DEVICES)}. Received: {self.device!r}")

    @classmethod
    def from_arguments(cls, args: argparse.Namespace) -> "ClassifyOptions":
        return cls(**{field.name: getattr(args, field.name) for field in fields(cls)})

    def session_options(self) -> Optional[dict]:
        """``dvfs_session``'s options, or None when nothing asks for a session (DVFS off, no deadline, no period)."""
        options = dvfs_options(self.dvfs, self.deadline_ms, self.workload, period_ms=self.period_ms,
                               target=self.target, sysfs_root=self.sysfs_root)
        if options["period_ms"] is not None and self.batch_size != 1:
            raise ConfigError("Expected --batch-size 1 with periodic arrivals (--period-ms or --workload camera:FPS): "
                              f"images arrive one at a time. Received: --batch-size {self.batch_size}")
        wanted = options["dvfs"] != "off" or options["deadline_ms"] is not None or options["period_ms"] is not None
        return options if wanted else None


OPTION_HELP = {
    "pipeline": "which pipeline classifies (default: the build's recommendation, in the manifest)",
    "threads": "interpreter threads",
    "device": "what runs the models: cpu, or edgetpu (the Coral delegate; falls back to the CPU with a warning)",
    "batch_size": "images per interpreter call, each call one DVFS batch",
    "max_pixels": "largest image accepted, in pixels, checked from the header before decoding; a larger file "
                  "gets an error entry",
    "input_sha256": "with --json: the sha256 of each model input, to compare pre-processing across machines",
    "fallback_threshold": "for cbnet-fallback: send images whose cbnet confidence is below this (0 to 1) to LeNet "
                          "(default: the threshold the build chose, in the manifest)",
    "convert_image": "also write what the converting autoencoder makes of each readable image, as DIR/<name>.png "
                     "(not timed)",
    "convert": "no longer needed: every image goes through the bundle's input spec (accepted and ignored)",
    "dvfs": "CPU frequency policy: off, performance, powersave, fixed:<MHz> or eenet",
    "deadline_ms": "milliseconds from an image's arrival to its answer; overrides --workload's deadline (a DVFS "
                   "policy needs one of the two)",
    "period_ms": "an image arrives every PERIOD ms (batch size 1); default: back to back",
    "workload": "when images arrive and their deadline: camera:FPS (one every 1000/FPS ms, due within it) or "
                "burst:K:MS (every image there at the start, due within MS ms)",
    "target": "the power model for modelled energy (a target's name)",
    "sysfs_root": "root of the cpufreq tree and power meters (a fake tree for tests: the CPU does not change speed)",
    "json": "print one JSON object",
}
_TYPES = {"threads": int, "batch_size": int, "max_pixels": int, "fallback_threshold": float, "deadline_ms": float,
          "period_ms": float, "convert_image": Path, "sysfs_root": Path}


def add_arguments(parser: argparse.ArgumentParser, names: Sequence[str], choices: Optional[dict] = None) -> None:
    """argparse options ``--name`` for ``ClassifyOptions``' fields ``names``, with their defaults and help."""
    defaults, choices = ClassifyOptions(), {"device": DEVICES, **(choices or {})}
    for name in names:
        flag, default = f"--{name.replace('_', '-')}", getattr(defaults, name)
        if isinstance(default, bool):
            parser.add_argument(flag, action="store_true", help=OPTION_HELP[name])
            continue
        shown = "" if default is None else f" (default {default:,})" if isinstance(default, int) else \
            f" (default {default})"
        parser.add_argument(flag, type=_TYPES.get(name, str), default=default, choices=choices.get(name),
                            help=OPTION_HELP[name] + shown)


def workload_options(workload: Optional[str], deadline_ms: Optional[float],
                     period_ms: Optional[float] = None) -> dict:
    """``dvfs_session``'s ``deadline_ms``, ``period_ms`` and ``burst`` from ``--workload``, ``--deadline-ms`` and
    ``--period-ms``: ``camera:FPS`` an image every 1/FPS s, due within the period unless ``--deadline-ms`` says
    otherwise; ``burst:K:MS`` every image there at the start, due within MS ms; neither: back to back, or one
    image every ``--period-ms``. A mistyped workload is an error, never ignored. (``arrivals:FILE`` is for
    ``cbnet-tl simulate``: the board's arrivals are its own.)"""
    for name, value in (("--deadline-ms", deadline_ms), ("--period-ms", period_ms)):
        if value is not None and not 0 < value < math.inf:
            raise ConfigError(f"Expected {name} > 0 and finite (milliseconds). Received: {value}")
    if workload is None:
        return {"deadline_ms": deadline_ms, "period_ms": period_ms, "burst": False}
    if period_ms is not None:
        raise ConfigError("--period-ms and --workload both say when images arrive: give one of them")
    kind, _, rest = workload.strip().lower().partition(":")
    parts = rest.split(":")
    try:
        values = [float(part) for part in parts]
    except ValueError:
        values = []
    if kind == "camera" and len(values) == 1 and 0 < values[0] < math.inf:
        period = 1e3 / values[0]
        return {"deadline_ms": period if deadline_ms is None else deadline_ms, "period_ms": period, "burst": False}
    if kind == "burst" and len(values) == 2 and parts[0].isdigit() and int(parts[0]) >= 1 and 0 < values[1] < math.inf:
        return {"deadline_ms": values[1] if deadline_ms is None else deadline_ms, "period_ms": None, "burst": True}
    raise ConfigError(f"Expected --workload camera:FPS or burst:K:MS (e.g. camera:30, burst:64:500). "
                      f"Received: {workload!r}")


def dvfs_options(dvfs: str, deadline_ms: Optional[float], workload: Optional[str], *, target: str,
                 sysfs_root: Path, period_ms: Optional[float] = None) -> dict:
    """``dvfs_session``'s options from --dvfs, --deadline-ms, --workload, --period-ms, --target and --sysfs-root;
    one line that says what to pass when a policy has no deadline to meet."""
    from cbnet_tl.runtime.dvfs.run import parse_policy

    dvfs, arrivals = dvfs.strip().lower(), workload_options(workload, deadline_ms, period_ms)
    if parse_policy(dvfs) is not None and arrivals["deadline_ms"] is None:
        raise ConfigError(f"--dvfs {dvfs} needs a deadline to meet: pass --deadline-ms MS or --workload "
                          "camera:FPS|burst:K:MS")
    return {"dvfs": dvfs, **arrivals, "sysfs_root": Path(sysfs_root), "target": target}


def fallback_options(threshold: Optional[float]) -> Optional[dict]:
    """A pipeline's options for ``--fallback-threshold`` (None: the manifest's)."""
    from cbnet_tl.runtime.specs import CONFIDENCE_THRESHOLD

    return None if threshold is None else {CONFIDENCE_THRESHOLD: threshold}


def classify_command(bundle_dir: Path, images: Sequence[Path], options: ClassifyOptions,
                     host_meters: Sequence = ()) -> int:
    """Classify every readable file of ``images`` (files or folders) and print the results: the table on stdout
    (the configuration and the DVFS summary on stderr), or one JSON object. An unreadable file gets an error entry,
    and the closing error line on stderr; the exit code is then 1, else 0."""
    from cbnet_tl.runtime.api import classify_paths, open_pipeline
    from cbnet_tl.runtime.bundle import open_manifest
    from cbnet_tl.runtime.formats import format_dvfs_summary, format_results, unreadable_error
    from cbnet_tl.runtime.images import collect_image_paths
    from cbnet_tl.runtime.specs import default_pipeline

    name = options.pipeline or default_pipeline(open_manifest(bundle_dir)[1])
    session_options = options.session_options()
    pipeline = open_pipeline(bundle_dir, name, num_threads=options.threads, device=options.device,
                             options=fallback_options(options.fallback_threshold))
    if options.convert:
        print("note: --convert is no longer needed; every image goes through the bundle's input spec "
              f"({pipeline.input_spec.describe()})", file=sys.stderr)
    paths, summary = collect_image_paths(images), None
    how = {"batch_size": options.batch_size, "max_pixels": options.max_pixels, "input_digest": options.input_sha256,
           "collect_errors": True}
    if session_options is None:
        records = classify_paths(pipeline, paths, **how)
    else:
        from cbnet_tl.runtime.dvfs.run import dvfs_session

        with dvfs_session(**session_options, host_meters=host_meters) as session:
            records = classify_paths(pipeline, paths, session=session, **how)
        summary = session.summary()
    readable = [Path(r["file"]) for r in records if "error" not in r]
    written = write_converted(bundle_dir, readable, options.convert_image) if options.convert_image and readable \
        else []
    if options.json:
        print(json.dumps(classify_json(pipeline, records, summary), indent=2, allow_nan=False))
    else:
        print("configuration: " + ", ".join(f"{m} {c}" for m, c in pipeline.configuration.items()), file=sys.stderr)
        for line in format_results(records):
            print(line)
        if summary is not None:
            print(format_dvfs_summary(summary, "classify"), file=sys.stderr)
        if written:
            print(f"wrote what the autoencoder makes of {len(written)} images to {options.convert_image}",
                  file=sys.stderr)
    failure = unreadable_error(records)
    if failure is not None:
        print(failure, file=sys.stderr)
        return 1
    return 0


def classify_json(pipeline, records: list, summary: Optional[dict] = None) -> dict:
    """What ``--json`` prints (and ``run.py serve`` answers a posted image with): the pipeline, its configuration
    and input spec, one record per file, and the DVFS summary when a session ran."""
    return {"pipeline": pipeline.name, "configuration": pipeline.configuration, "input": pipeline.input_spec.to_dict(),
            "results": records, **({} if summary is None else {"dvfs": summary})}


def write_converted(bundle_dir: Path, paths: Sequence[Path], out_dir: Path) -> list:
    """What the bundle's converting autoencoder makes of each image file, written as OUT/<name>.png (atomically)."""
    import io

    from cbnet_tl.runtime.bundle import load_bundle
    from cbnet_tl.runtime.files import write_bytes_atomic
    from cbnet_tl.runtime.images import as_pil, load_images
    from cbnet_tl.runtime.pipelines import convert_images
    from cbnet_tl.runtime.specs import CONVERTER

    bundle = load_bundle(bundle_dir, models=[CONVERTER])
    written = []
    images = load_images(paths, bundle.manifest.input_spec)
    for path, image in zip(paths, convert_images(bundle.models[CONVERTER], images)):
        buffer = io.BytesIO()
        as_pil(image).save(buffer, format="PNG")
        target = Path(out_dir) / f"{Path(path).name}.png"
        write_bytes_atomic(target, buffer.getvalue())
        written.append(target)
    return written
