"""One input spec, one function: for the same file, the build's loader and the bundle's run.py (its own
copy of the runtime, in a child process) give byte-identical model inputs and the same class, in every
resize mode and for every kind of image users have."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import edge_images
from cbnet_tl.runtime.api import open_pipeline
from cbnet_tl.runtime.manifest import read_manifest
from cbnet_tl.toolchain.ingest.datasets import Split, load_dataset


@pytest.fixture(scope="module")
def edge_folder(tmp_path_factory) -> Path:
    """An image folder (train/ and test/ with two classes) whose test images are the edge cases."""
    root = tmp_path_factory.mktemp("edge-data")
    files = edge_images.make_all(root / "test" / "a")
    for label in ("a", "b"):
        (root / "train" / label).mkdir(parents=True)
        shutil.copy2(files[0], root / "train" / label / files[0].name)
    (root / "test" / "b").mkdir()
    edge_images.exif_rotated_jpeg(root / "test" / "b" / "plain.jpg")
    Image.open(root / "test" / "b" / "plain.jpg").transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(
        root / "test" / "b" / "plain.jpg")  # no EXIF tag any more, and other pixels
    return root


def _with_resize(bundle: Path, mode: str, destination: Path) -> Path:
    """A copy of ``bundle`` whose input spec fits images by ``mode`` (same size and channels: same models)."""
    copy = destination / f"bundle-{mode}"
    shutil.copytree(bundle, copy, symlinks=True)
    manifest = read_manifest(copy)
    manifest.replace(input={**manifest.input, "resize": mode, "background": "#3366cc"}).write(copy)
    return copy


def _check_parity(bundle: Path, edge_folder: Path, tmp_path: Path) -> None:
    for mode in ("crop", "squash", "pad"):
        copy = _with_resize(bundle, mode, tmp_path)
        spec = read_manifest(copy).input_spec
        loaded = load_dataset("edge", Split.TEST, edge_folder, spec=spec)  # the build's loader
        files = sorted((edge_folder / "test").rglob("*.*"))
        assert len(loaded.images) == len(files) == len(edge_images.MAKERS) + 1
        expected = [hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest() for image in loaded.images]
        labels = open_pipeline(copy, "cbnet", tuning=None).classify(loaded.images).labels.tolist()

        device = subprocess.run(
            [sys.executable, str(copy / "run.py"), "classify", *map(str, files), "--json", "--input-sha256",
             "--pipeline", "cbnet"], capture_output=True, text=True, cwd=tmp_path)
        assert device.returncode == 0, device.stderr
        results = json.loads(device.stdout)["results"]
        assert [r["file"] for r in results] == [str(f) for f in files]
        assert [r["input_sha256"] for r in results] == expected, mode
        assert [r["label"] for r in results] == labels, mode
        assert len(set(expected)) == len(expected)  # different images, different inputs: the digest is real


def test_gray_bundle_loader_and_device_agree(tiny_bundle, edge_folder, tmp_path):
    assert read_manifest(tiny_bundle).input_spec.channels == 1
    _check_parity(tiny_bundle, edge_folder, tmp_path)


def test_rgb_bundle_loader_and_device_agree(rgb_build, edge_folder, tmp_path):
    assert read_manifest(rgb_build / "bundle").input_spec.channels == 3
    _check_parity(rgb_build / "bundle", edge_folder, tmp_path)
