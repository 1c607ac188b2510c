"""Loaders: canonical IDX files (real MNIST subset, Debian Fashion-MNIST), malformed files, image folders."""

from __future__ import annotations

import gzip
import shutil
import struct

import numpy as np
import pytest
from PIL import Image

from cbnet_tl.runtime.errors import DataError
from cbnet_tl.toolchain.ingest.datasets import Split, load_build_data, load_dataset, parse_idx
from cbnet_tl.toolchain.ingest.inputs import InputChoice


def test_mnist_subset_loads_both_splits(mnist_dir):
    train = load_dataset("mnist", Split.TRAIN, mnist_dir)
    test = load_dataset("mnist", Split.TEST, mnist_dir)
    assert train.images.shape == (6400, 28, 28, 1) and train.images.dtype == np.uint8
    assert test.images.shape == (1600, 28, 28, 1)
    assert set(np.unique(train.labels)) == set(range(10))
    assert train.images.max() == 255


def test_debian_fashion_mnist_test_split():
    test = load_dataset("fashion-mnist", Split.TEST, None)
    assert test.images.shape == (10000, 28, 28, 1)
    assert np.bincount(test.labels).tolist() == [1000] * 10
    assert test.class_names[9] == "Ankle boot"


def _write_idx(path, magic_type, dims, payload: bytes, compress=True):
    raw = struct.pack(">HBB", 0, magic_type, len(dims)) + struct.pack(f">{len(dims)}I", *dims) + payload
    path.write_bytes(gzip.compress(raw) if compress else raw)


@pytest.fixture()
def idx_copy(tmp_path, mnist_dir):
    for f in mnist_dir.iterdir():
        shutil.copy(f, tmp_path / f.name)
    return tmp_path


def test_truncated_idx_is_reported(idx_copy):
    _write_idx(idx_copy / "t10k-images-idx3-ubyte.gz", 8, (10, 28, 28), b"\0" * (10 * 784 - 5))
    with pytest.raises(DataError, match="truncated or padded"):
        load_dataset("mnist", Split.TEST, idx_copy)


def test_bad_magic_is_reported(idx_copy):
    _write_idx(idx_copy / "t10k-labels-idx1-ubyte.gz", 0x0D, (10,), b"\0" * 40)
    with pytest.raises(DataError, match="not an unsigned-byte IDX"):
        load_dataset("mnist", Split.TEST, idx_copy)


def test_not_gzip_is_reported(idx_copy):
    (idx_copy / "t10k-images-idx3-ubyte.gz").write_bytes(b"this is not gzip at all")
    with pytest.raises(DataError, match="not a readable gzip"):
        load_dataset("mnist", Split.TEST, idx_copy)


def test_count_mismatch_is_reported(idx_copy):
    _write_idx(idx_copy / "t10k-labels-idx1-ubyte.gz", 8, (7,), b"\1" * 7)
    with pytest.raises(DataError, match="1600 images but t10k-labels-idx1-ubyte.gz has 7 labels"):
        load_dataset("mnist", Split.TEST, idx_copy)


def test_missing_files_say_where_to_put_them(tmp_path):
    with pytest.raises(DataError, match="put train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz in"):
        load_dataset("kmnist", Split.TRAIN, tmp_path)


def test_evaluation_reads_only_test_split(tmp_path, mnist_dir):
    for f in mnist_dir.glob("t10k-*"):
        shutil.copy(f, tmp_path / f.name)
    assert len(load_dataset("mnist", Split.TEST, tmp_path)) == 1600


def test_parse_idx_rejects_tiny_input():
    with pytest.raises(DataError, match="only 2 bytes"):
        parse_idx(b"\0\0", "x")


def _image_folder(root, samples_dir):
    """Real sample PNGs arranged as class folders, in several modes and sizes."""
    for png in sorted(samples_dir.glob("mnist_*.png")):
        label = png.stem.split("_")[-1]
        folder = root / f"digit{label}"
        folder.mkdir(parents=True, exist_ok=True)
        image = Image.open(png)
        image.save(folder / png.name)
        image.convert("RGB").resize((56, 56)).save(folder / (png.stem + "_rgb.jpg"))
        image.convert("RGBA").save(folder / (png.stem + "_rgba.png"))
    return root


def _quiet(line):
    pass


def test_image_folder_is_a_custom_dataset(tmp_path, samples_dir):
    root = _image_folder(tmp_path / "digits", samples_dir)
    train, test, spec, _ = load_build_data("ignored", root, InputChoice(), log=_quiet)
    assert spec.shape == (28, 28, 3)  # the median image is 28 px; the JPEGs are RGB
    assert train.images.shape[1:] == (28, 28, 3) and train.images.dtype == np.uint8
    assert len(train) + len(test) == 60
    assert train.class_names == tuple(sorted(p.name for p in root.iterdir()))
    again = load_dataset("ignored", Split.TEST, root, spec=spec)  # later stages: the same test images
    assert np.array_equal(again.images, test.images) and np.array_equal(again.labels, test.labels)
    with pytest.raises(DataError, match="read through a build's input spec"):
        load_dataset("ignored", Split.TEST, root)


def test_image_folder_with_empty_class(tmp_path, samples_dir):
    root = _image_folder(tmp_path / "digits", samples_dir)
    (root / "zz_empty").mkdir()
    with pytest.raises(DataError, match=r"class folder\(s\) \['zz_empty'\] hold no images"):
        load_build_data("ignored", root, InputChoice(), log=_quiet)


def test_image_folder_with_corrupt_image_skips_it_or_refuses_strictly(tmp_path, samples_dir):
    root = _image_folder(tmp_path / "digits", samples_dir)
    for image in list((root / "digit7").iterdir()):  # enough images that the skipped one leaves a test image
        shutil.copy(image, root / "digit7" / f"copy_{image.name}")
    (root / "digit7" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    lines = []
    _, _, _, record = load_build_data("ignored", root, InputChoice(), log=lines.append)
    assert record["num_skipped"] == 1 and any("broken.png: not an image Pillow can read" in l for l in lines)
    with pytest.raises(DataError, match="broken.png: not an image Pillow can read"):
        load_build_data("ignored", root, InputChoice(strict=True), log=_quiet)


def test_image_folder_with_one_class(tmp_path, samples_dir):
    root = tmp_path / "one"
    (root / "only").mkdir(parents=True)
    shutil.copy(next(samples_dir.glob("mnist_*.png")), root / "only" / "a.png")
    with pytest.raises(DataError, match="at least 2"):
        load_build_data("ignored", root, InputChoice(), log=_quiet)


def test_unknown_dataset_name():
    with pytest.raises(DataError, match="Unknown dataset 'cifar'"):
        load_dataset("cifar", Split.TEST, None)
