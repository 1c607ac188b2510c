"""The runtime's library API: open a pipeline, classify files, self-test and tune a bundle.

Used by the device CLI (``runtime/cli.py``, ``python3 run.py …`` in a bundle), by the toolchain and by
``examples/``; the inbox service is ``inbox.py`` and ``service.py``. Only the stdlib, numpy, Pillow and the
interpreter are used.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np

from cbnet_tl.runtime.bundle import load_bundle, open_manifest, verify_files
from cbnet_tl.runtime.delegates import Device
from cbnet_tl.runtime.errors import BundleError, ImageError
from cbnet_tl.runtime.images import MAX_PIXELS_DEFAULT, error_reason, load_image
from cbnet_tl.runtime.pipelines import Pipeline
from cbnet_tl.runtime.specs import models_for
from cbnet_tl.runtime.tuning import default_tuning_path, read_tuning

SELFTEST_MIN_AGREEMENT = 0.9


AUTO = "auto"


def open_pipeline(bundle_dir: Path, name: str, *, precision: str = "int8", num_threads: int = 1,
                  device: str = "cpu", tuning=AUTO, options: Optional[dict] = None) -> Pipeline:
    """``device``: "cpu", or "edgetpu" (the Edge TPU delegate, falling back to the CPU with a warning).

    ``tuning``: "auto" (the device's tuning file when there is one, see ``tuning.default_tuning_path``), a
    path, or None (the default configuration). What does not apply is said on stderr and not used."""
    delegates, used = (), Device.CPU.value
    if device == Device.EDGETPU:
        from cbnet_tl.runtime.delegates import load_edgetpu

        accelerator = load_edgetpu()
        if accelerator.warning:
            print(f"warning: {accelerator.warning}", file=sys.stderr)
        delegates, used = accelerator.delegates, accelerator.device
    elif device != Device.CPU:
        raise BundleError(f"Expected device cpu or edgetpu. Received: {device!r}")
    _, manifest = open_manifest(bundle_dir)
    names = models_for([name], manifest)  # the manifest's own models (cbnet-fallback's network is the build's)
    configs = {}
    if tuning is not None and precision == "int8" and used == Device.CPU.value:
        path = default_tuning_path(bundle_dir) if tuning == AUTO else Path(tuning)
        configs, messages = read_tuning(path, manifest, names)
        for message in messages:
            print(f"warning: {message}", file=sys.stderr)
    bundle = load_bundle(bundle_dir, precision=precision, num_threads=num_threads, models=names,
                         delegates=delegates, device=used, configs=configs)
    return Pipeline(bundle, name, options)


def classify_paths(pipeline: Pipeline, paths: Sequence[Path], *, batch_size: int = 1,
                   max_pixels: int = MAX_PIXELS_DEFAULT, input_digest: bool = False, session=None,
                   collect_errors: bool = False) -> list:
    """Classify image files of any size and mode (each through the bundle's input spec); one dict per image
    with class, confidence, path taken and time. ``input_digest`` adds the sha256 of each model input (the
    bytes the models read), to compare pre-processing between machines. ``session``: a ``DvfsSession`` that runs
    each batch as the next of its arrival stream (``classify_next``), the files not read yet behind it.
    ``collect_errors``: an unreadable file (corrupt, not an image, over ``max_pixels``, no permission) gets
    ``{"file": ..., "error": ...}`` (no ``label``) in its place and every other file is still classified; without
    it, its ``ImageError`` is raised. Batches hold readable files only."""
    entries, class_names = {}, pipeline.bundle.class_names
    failed = entries if collect_errors else None
    for indices, images, num_read in _readable_batches(paths, pipeline.input_spec, batch_size, max_pixels, failed):
        if session is None:
            result = pipeline.classify(images)
        else:
            result = session.classify_next(pipeline, images, behind=len(paths) - num_read)
        ms = round(result.seconds / len(indices) * 1e3, 4)
        answers = zip(indices, result.labels.tolist(), result.confidences.tolist(), result.paths)
        for position, (index, label, confidence, taken) in enumerate(answers):
            record = {"file": str(paths[index]), "label": label, "class_name": class_names[label],
                      "confidence": round(confidence, 6), "path": taken, "ms": ms, "device": pipeline.device}
            if input_digest:
                record["input_sha256"] = hashlib.sha256(np.ascontiguousarray(images[position]).tobytes()).hexdigest()
            entries[index] = record
    return [entries[index] for index in sorted(entries)]


def _readable_batches(paths: Sequence[Path], spec, batch_size: int, max_pixels: int,
                      failed: Optional[dict]) -> Iterator[tuple]:
    """(indices, images, number of files read so far) for every ``batch_size`` readable files, in order, and the
    last, shorter batch; an unreadable file's entry goes into ``failed`` under its index (None: raise its error)."""
    indices, images = [], []
    for index, path in enumerate(paths):
        try:
            images.append(load_image(path, spec, max_pixels=max_pixels))
            indices.append(index)
        except ImageError as error:
            if failed is None:
                raise
            failed[index] = {"file": str(path), "error": error_reason(error, path)}
        if images and (len(images) == batch_size or index == len(paths) - 1):
            yield indices, np.stack(images), index + 1
            indices, images = [], []


def sample_images(directory: Path, manifest, what: str, spec=None) -> np.ndarray:
    """The bundle's own sample images (its selftest files) through ``spec`` (default: the manifest's), or one
    error line: "``directory``/manifest.json has no ``what``"."""
    files = (manifest.selftest or {}).get("files")
    if not files:
        raise BundleError(f"{directory}/manifest.json has no {what}; rebuild the bundle")
    return np.stack([load_image(directory / f, spec or manifest.input_spec) for f in files])


def selftest(bundle_dir: Path, num_threads: int = 1) -> dict:
    """Verify every checksum, then check the bundled samples give the predictions recorded at build time."""
    directory, manifest = open_manifest(bundle_dir)
    verify_files(directory, manifest)
    images = sample_images(directory, manifest, "selftest samples")
    report = {"bundle": str(directory), "version": manifest.version, "checksums": "ok", "pipelines": {}}
    failed = []
    for name, expected in manifest.selftest["expected"].items():
        result = open_pipeline(directory, name, num_threads=num_threads).classify(images)
        agreement = float(np.mean(result.labels == np.asarray(expected)))
        report["pipelines"][name] = {"agreement": agreement}
        if agreement < SELFTEST_MIN_AGREEMENT:
            failed.append(f"{name} agrees on {agreement:.0%} of samples (needs {SELFTEST_MIN_AGREEMENT:.0%})")
    if failed:
        raise BundleError("Self-test failed: " + "; ".join(failed))
    report["passed"] = True
    return report


def tune_bundle(bundle_dir: Path, out: Optional[Path] = None, *, num_threads: int = 1,
                if_missing: bool = False) -> Optional[dict]:
    """Measure every configuration on the bundle's own samples (selftest images, or the build's) and write
    the winners to ``out`` (default: the state folder). None when ``if_missing`` and a tuning file exists."""
    from cbnet_tl.runtime.specs import deployed_pipelines
    from cbnet_tl.runtime.tuning import measure, write_tuning

    directory, manifest = open_manifest(bundle_dir)
    path = Path(out) if out is not None else default_tuning_path(directory)
    if if_missing and not read_tuning(path, manifest, [])[1] and path.is_file():
        return None  # a readable tuning file of this bundle version is there
    # a build directory tunes on its bundle's samples, and may also choose its float32 models
    sample_dir = directory if manifest.selftest else directory / "bundle"
    if not sample_dir.is_dir():
        raise BundleError(f"{directory}/manifest.json has no sample images to tune on; rebuild the bundle")
    images = sample_images(sample_dir, open_manifest(sample_dir)[1], "sample images to tune on", manifest.input_spec)
    pipelines = list(deployed_pipelines(manifest))
    record = measure(directory, images, pipelines=pipelines, num_threads=num_threads)
    record["file"] = str(write_tuning(path, record))
    return record
