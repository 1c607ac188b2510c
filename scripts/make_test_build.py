#!/usr/bin/env python3
"""Regenerate tests/data/tiny-build: a real build on 2,000 MNIST images, committed so that the runtime
suite runs without TensorFlow (``pytest -m "not tf"``). Run it after any change to the recipes, the
converter or the manifest schema:

    .venv/bin/python scripts/make_test_build.py

The build is real (every stage runs); only its size is small. The bundle inside it is re-rendered by
the test fixtures from the current templates and runtime, so only models, manifest and records matter.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DESTINATION = ROOT / "tests" / "data" / "tiny-build"
# no keras/ (10 MB); no report/, bundle/lib/ or bundle/models/ (the fixtures make them again from the current
# code, and the bundle's models are byte for byte the build's)
KEEP = ("manifest.json", "checks.json", "train.json", "build.json", "bench.json", "calibration.json", "models", "bundle")


def main() -> int:
    from cbnet_tl.toolchain.quiet import prefer_onednn

    prefer_onednn()  # as the CLI does, before TensorFlow is imported
    from cbnet_tl.runtime.files import staged_directory
    from cbnet_tl.toolchain.build import BuildConfig, build
    from cbnet_tl.toolchain.conversion.checks import CheckConfig
    from cbnet_tl.toolchain.training.train import TrainConfig

    with tempfile.TemporaryDirectory() as work:
        out = Path(work) / "build"
        build(BuildConfig(dataset="mnist", out=out, data_dir=ROOT / "tests" / "data" / "mnist-8k",
                          max_train_images=2000,
                          train=TrainConfig(blenet_epochs=4, autoencoder_epochs=20, progress=False,
                                            min_autoencoder_pairs=0, augment_shift_pixels=0, time_budget_s=None),
                          check=CheckConfig(max_accuracy_drop=5.0), write_report=True), log=print)
        with staged_directory(DESTINATION) as staging:
            for name in KEEP:
                source = out / name
                if source.is_dir():
                    shutil.copytree(source, staging / name)
                elif source.is_file():
                    shutil.copy2(source, staging / name)
    from cbnet_tl.runtime.manifest import read_manifest

    for folder in (DESTINATION, DESTINATION / "bundle"):  # no path of this machine in committed files
        manifest = read_manifest(folder)
        if manifest.data is not None:
            manifest.replace(data={**manifest.data, "data_dir": None}).write(folder)
    for dropped in ("lib", "models"):
        shutil.rmtree(DESTINATION / "bundle" / dropped, ignore_errors=True)
    size = sum(p.stat().st_size for p in DESTINATION.rglob("*") if p.is_file())
    print(f"wrote {DESTINATION} ({size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
