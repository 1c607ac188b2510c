"""Dataset loaders: canonical IDX ``.gz`` files (MNIST, Fashion-MNIST, KMNIST) and image folders.

Search order for the IDX sets: ``--data-dir``, then the Debian package's folder (Fashion-MNIST), then
the per-user cache, then (only when the machine is online) the official mirror, verified by MD5.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import urllib.error
import urllib.request
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import Optional

import numpy as np

from cbnet_tl.runtime.errors import DataError, ImageError
from cbnet_tl.runtime.files import write_bytes_atomic
from cbnet_tl.runtime.images import IMAGE_SUFFIXES_DEFAULT as IMAGE_SUFFIXES
from cbnet_tl.runtime.images import load_image


class DatasetName(str, Enum):
    MNIST = "mnist"
    FASHION_MNIST = "fashion-mnist"
    KMNIST = "kmnist"


class Split(str, Enum):
    TRAIN = "train"
    TEST = "t10k"


@dataclass(frozen=True)
class DatasetSource:
    labels: tuple
    mirror: Optional[str]
    system_dir: Optional[str]
    md5: dict  # file name -> published MD5 of the .gz file; downloads are verified against it


FILES = {
    Split.TRAIN: ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    Split.TEST: ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

SOURCES = {
    DatasetName.MNIST: DatasetSource(
        labels=tuple(str(i) for i in range(10)),
        mirror="https://ossci-datasets.s3.amazonaws.com/mnist/",
        system_dir=None,
        md5={
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    ),
    DatasetName.FASHION_MNIST: DatasetSource(
        labels=(
            "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
            "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
        ),
        mirror="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        system_dir="/usr/share/datasets/fashion-mnist",
        md5={  # of the .gz files, as published in zalandoresearch/fashion-mnist's README
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
    ),
    DatasetName.KMNIST: DatasetSource(
        labels=("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
        mirror="http://codh.rois.ac.jp/kmnist/dataset/kmnist/",
        system_dir=None,
        md5={
            "train-images-idx3-ubyte.gz": "bdb82020997e1d708af4cf47b453dcf7",
            "train-labels-idx1-ubyte.gz": "e144d726b3acfaa3e44228e80efcd344",
            "t10k-images-idx3-ubyte.gz": "5c965bf0a639b31b8f53240b1b52f4d7",
            "t10k-labels-idx1-ubyte.gz": "7320c461ea6c1c855c0b718fb2a4b134",
        },
    ),
}


@dataclass(frozen=True)
class Dataset:
    """uint8 images (N, 28, 28), int64 labels (N,), and the class names."""

    name: str
    images: np.ndarray
    labels: np.ndarray
    class_names: tuple
    source: str

    def __len__(self) -> int:
        return int(self.labels.shape[0])


# --- IDX -------------------------------------------------------------------------------------------

def parse_idx(raw: bytes, origin: str) -> np.ndarray:
    """Decode one IDX file (already decompressed) into an array; raise DataError if malformed."""
    if len(raw) < 4:
        raise DataError(f"{origin} is not an IDX file: it has only {len(raw)} bytes")
    zero, dtype_code, num_dims = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise DataError(
            f"{origin} is not an unsigned-byte IDX file (magic {raw[:4].hex()}; expected 00000801 or 00000803)"
        )
    header = 4 + 4 * num_dims
    if num_dims not in (1, 3) or len(raw) < header:
        raise DataError(f"{origin}: expected an IDX file with 1 or 3 dimensions. Received {num_dims}")
    shape = struct.unpack(f">{num_dims}I", raw[4:header])
    expected = int(np.prod(shape, dtype=np.int64))
    if len(raw) - header != expected:
        raise DataError(
            f"{origin} is truncated or padded: its header {shape} needs {expected} bytes of data, "
            f"the file has {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _read_gz(path: Path) -> bytes:
    try:
        with gzip.open(path, "rb") as handle:
            return handle.read()
    except (OSError, EOFError) as error:
        raise DataError(f"{path} is not a readable gzip file ({error}). Re-download it.") from None


def read_idx_pair(images_path: Path, labels_path: Path, num_classes: int) -> tuple:
    images = parse_idx(_read_gz(images_path), str(images_path))
    labels = parse_idx(_read_gz(labels_path), str(labels_path))
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"{images_path}: expected images of shape (N, 28, 28). Received {images.shape}")
    if labels.ndim != 1:
        raise DataError(f"{labels_path}: expected a 1-D label file. Received shape {labels.shape}")
    if len(images) != len(labels):
        raise DataError(
            f"{images_path.name} has {len(images)} images but {labels_path.name} has {len(labels)} labels"
        )
    if labels.size and int(labels.max()) >= num_classes:
        raise DataError(f"{labels_path}: label {int(labels.max())} is out of range 0..{num_classes - 1}")
    return images.copy(), labels.astype(np.int64)


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cbnet-tl" / "datasets"


def _download(url: str, destination: Path, expected_md5: Optional[str]) -> None:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 (fixed https/http mirror)
            data = response.read()
    except (urllib.error.URLError, OSError) as error:
        raise DataError(f"Download of {url} failed: {error}") from None
    if expected_md5 and _md5(data) != expected_md5:
        raise DataError(f"Download of {url} has MD5 {_md5(data)}; expected {expected_md5}. Not cached.")
    write_bytes_atomic(destination, data)


def locate_idx(name: DatasetName, split: Split, data_dir: Optional[Path], allow_download: bool = True) -> tuple:
    """Return the directory holding this split's two files, downloading them when online."""
    source = SOURCES[name]
    candidates = []
    if data_dir is not None:
        candidates.append(Path(data_dir))
    if source.system_dir:
        candidates.append(Path(source.system_dir))
    cache = _cache_dir() / name.value
    candidates.append(cache)
    for folder in candidates:
        if all((folder / f).is_file() for f in FILES[split]):
            return folder
    if data_dir is not None and Path(data_dir).is_dir() and any(Path(data_dir).glob("*-ubyte*")):
        present = sorted(p.name for p in Path(data_dir).glob("*-ubyte*"))
        raise DataError(
            f"{data_dir} holds IDX files {present} but not {', '.join(FILES[split])}"
        )
    if allow_download and source.mirror:
        try:
            for file_name in FILES[split]:
                _download(source.mirror + file_name, cache / file_name, source.md5.get(file_name))
            return cache
        except DataError as error:
            reason = str(error)
    else:
        reason = "downloads are disabled"
    where = " or ".join(str(c) for c in candidates)
    hint = " (apt-get install dataset-fashion-mnist)" if source.system_dir else ""
    raise DataError(
        f"{name.value} {split.value} files not found; put {', '.join(FILES[split])} in {where}{hint}. "
        f"Last attempt: {reason}"
    )


# --- image folders ---------------------------------------------------------------------------------

def is_image_folder(data_dir: Path) -> bool:
    return data_dir.is_dir() and any(p.is_dir() for p in data_dir.iterdir()) and not any(
        p.name.endswith("-ubyte.gz") for p in data_dir.iterdir()
    )


def load_image_folder(data_dir: Path, split: Split) -> Dataset:
    """One sub-folder per class. If ``train/`` and ``test/`` exist, they are the splits; otherwise a
    fixed, seeded 80/20 split of every class."""
    data_dir = Path(data_dir)
    split_dir = data_dir / ("train" if split is Split.TRAIN else "test")
    root = split_dir if split_dir.is_dir() else data_dir
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(class_dirs) < 2:
        raise DataError(f"{root}: expected one sub-folder of images per class (at least 2). Received {len(class_dirs)}")
    images, labels = [], []
    for label, class_dir in enumerate(class_dirs):
        files = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"{class_dir}: class folder holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        if root is data_dir:
            order = np.random.default_rng(label).permutation(len(files))
            cut = max(1, int(round(0.8 * len(files)))) if len(files) > 1 else 1
            chosen = order[:cut] if split is Split.TRAIN else order[cut:]
            files = [files[i] for i in sorted(chosen)]
        for path in files:
            try:
                images.append(load_image(path, resize=True))
            except ImageError as error:
                raise DataError(str(error)) from None
            labels.append(label)
    if not images:
        raise DataError(f"{root}: no images for the {split.value} split")
    return Dataset(
        name=data_dir.name,
        images=np.stack(images),
        labels=np.asarray(labels, dtype=np.int64),
        class_names=tuple(d.name for d in class_dirs),
        source=str(root),
    )


def seeded_subset(dataset: Dataset, size: int, seed: int) -> Dataset:
    """The first ``size`` images of a seeded permutation, in their original order (the whole set if smaller).
    ``build --max-train-images`` trains on it; later stages call it again to get the same images."""
    if size >= len(dataset):
        return dataset
    keep = np.sort(np.random.default_rng(seed).permutation(len(dataset))[:size])
    return replace(dataset, images=dataset.images[keep], labels=dataset.labels[keep])


def load_dataset(
    name: str, split: Split, data_dir: Optional[Path] = None, allow_download: bool = True
) -> Dataset:
    """Load one split. ``data_dir`` holding class sub-folders makes it a custom dataset."""
    if data_dir is not None:
        data_dir = Path(data_dir)
        if not data_dir.exists():
            raise DataError(f"--data-dir {data_dir} does not exist")
        if is_image_folder(data_dir):
            return load_image_folder(data_dir, split)
    try:
        dataset = DatasetName(name)
    except ValueError:
        raise DataError(
            f"Unknown dataset {name!r}. Expected one of {[d.value for d in DatasetName]}, "
            "or --data-dir with one sub-folder of images per class"
        ) from None
    folder = locate_idx(dataset, split, data_dir, allow_download)
    images_name, labels_name = FILES[split]
    images, labels = read_idx_pair(folder / images_name, folder / labels_name, len(SOURCES[dataset].labels))
    return Dataset(dataset.value, images, labels, SOURCES[dataset].labels, str(folder))
