"""The runtime's library API: open a pipeline, classify files, self-test a bundle, watch a folder.

Used by the device CLI (``runtime/cli.py``, ``python3 run.py …`` in a bundle), by the toolchain and by
``examples/``. Only the stdlib, numpy, Pillow and the interpreter are used.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from cbnet_tl.runtime.bundle import load_bundle, open_manifest, verify_files
from cbnet_tl.runtime.delegates import Device
from cbnet_tl.runtime.errors import BundleError, CbnetError
from cbnet_tl.runtime.files import write_json_atomic
from cbnet_tl.runtime.images import IMAGE_SUFFIXES_DEFAULT, load_image, load_images
from cbnet_tl.runtime.pipelines import Pipeline, models_for

SELFTEST_MIN_AGREEMENT = 0.9


def open_pipeline(bundle_dir: Path, name: str, *, precision: str = "int8", num_threads: int = 1,
                  device: str = "cpu") -> Pipeline:
    """``device``: "cpu", or "edgetpu" (the Edge TPU delegate, falling back to the CPU with a warning)."""
    delegates, used = (), Device.CPU.value
    if device == Device.EDGETPU:
        from cbnet_tl.runtime.delegates import load_edgetpu

        accelerator = load_edgetpu()
        if accelerator.warning:
            print(f"warning: {accelerator.warning}", file=sys.stderr)
        delegates, used = accelerator.delegates, accelerator.device
    elif device != Device.CPU:
        raise BundleError(f"Expected device cpu or edgetpu. Received: {device!r}")
    bundle = load_bundle(bundle_dir, precision=precision, num_threads=num_threads, models=models_for([name]),
                         delegates=delegates, device=used)
    return Pipeline(bundle, name)


def classify_paths(pipeline: Pipeline, paths: Sequence[Path], *, resize: bool = False, batch_size: int = 1,
                   hook=None) -> list:
    """Classify image files; one dict per image with class, confidence, path taken and time."""
    records = []
    for start in range(0, len(paths), batch_size):
        chunk = list(paths[start : start + batch_size])
        result = pipeline.classify(load_images(chunk, resize=resize), hook=hook)
        for path, prediction in zip(chunk, result.predictions(pipeline.bundle.class_names)):
            records.append({
                "file": str(path), "label": prediction.label, "class_name": prediction.class_name,
                "confidence": round(prediction.confidence, 6), "path": prediction.path,
                "ms": round(prediction.seconds * 1e3, 4), "device": pipeline.device,
            })
    return records


def selftest(bundle_dir: Path, num_threads: int = 1) -> dict:
    """Verify every checksum, then check the bundled samples give the predictions recorded at build time."""
    directory, manifest = open_manifest(bundle_dir)
    verify_files(directory, manifest)
    samples = manifest.selftest
    if not samples or not samples.get("files"):
        raise BundleError(f"{directory}/manifest.json has no selftest samples; rebuild the bundle")
    images = np.stack([load_image(directory / f) for f in samples["files"]])
    report = {"bundle": str(directory), "version": manifest.version, "checksums": "ok", "pipelines": {}}
    failed = []
    for name, expected in samples["expected"].items():
        result = open_pipeline(directory, name, num_threads=num_threads).classify(images)
        agreement = float(np.mean(result.labels == np.asarray(expected)))
        report["pipelines"][name] = {"agreement": agreement}
        if agreement < SELFTEST_MIN_AGREEMENT:
            failed.append(f"{name} agrees on {agreement:.0%} of samples (needs {SELFTEST_MIN_AGREEMENT:.0%})")
    if failed:
        raise BundleError("Self-test failed: " + "; ".join(failed))
    report["passed"] = True
    return report


def watch(pipeline: Pipeline, inbox: Path, outbox: Path, poll_seconds: float, resize: bool,
          max_images: Optional[int] = None, hook=None) -> int:
    """Classify each image that appears in ``inbox``; write ``outbox/NAME.json`` and remove the image."""
    inbox.mkdir(parents=True, exist_ok=True)
    outbox.mkdir(parents=True, exist_ok=True)
    done = 0
    while max_images is None or done < max_images:
        pending = sorted(p for p in inbox.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES_DEFAULT)
        if not pending:
            time.sleep(poll_seconds)
            continue
        for path in pending:
            try:
                record = classify_paths(pipeline, [path], resize=resize, hook=hook)[0]
            except CbnetError as error:
                record = {"file": str(path), "error": str(error)}
            write_json_atomic(outbox / f"{path.stem}.json", record, durable=True)
            path.unlink(missing_ok=True)
            done += 1
    return done
