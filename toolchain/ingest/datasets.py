"""Dataset loaders: canonical IDX ``.gz`` files (MNIST, Fashion-MNIST, KMNIST) and image folders
(``folders.py``), both as uint8 images (N, height, width, channels) of the build's input spec.

Search order for the IDX sets: ``--data-dir``, then the Debian package's folder (Fashion-MNIST), then
the per-user cache (``~/.cache/cbnet-tl/datasets/NAME``). Nothing is downloaded: the toolchain never uses
the network.
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import Optional

import numpy as np

from cbnet_tl.runtime.errors import DataError
from cbnet_tl.runtime.preprocess import InputSpec, to_model_inputs
from cbnet_tl.toolchain.ingest import folders
from cbnet_tl.toolchain.ingest.inputs import InputChoice, choose_for_headers, choose_for_idx


# The classes are checked on their training images: a class with fewer than MIN_TRAIN_PER_CLASS shows too little of
# its variety to learn it, and when the largest class has more than MAX_CLASS_RATIO times the smallest's, a model
# learns to favour the large classes. Both are warnings (``class_lines``), not errors.
MIN_TRAIN_PER_CLASS = 10
MAX_CLASS_RATIO = 3.0


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
    system_dir: Optional[str]


FILES = {
    Split.TRAIN: ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    Split.TEST: ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

SOURCES = {
    DatasetName.MNIST: DatasetSource(
        labels=tuple(str(i) for i in range(10)),
        system_dir=None,
    ),
    DatasetName.FASHION_MNIST: DatasetSource(
        labels=(
            "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
            "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
        ),
        system_dir="/usr/share/datasets/fashion-mnist",
    ),
    DatasetName.KMNIST: DatasetSource(
        labels=("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
        system_dir=None,
    ),
}


@dataclass(frozen=True)
class Dataset:
    """uint8 images (N, height, width, channels), int64 labels (N,), and the class names.

    ``validation_indices``: images of the training split that a ``val/`` folder gave for validation
    (None: the trainer takes its own seeded share)."""

    name: str
    images: np.ndarray
    labels: np.ndarray
    class_names: tuple
    source: str
    validation_indices: Optional[np.ndarray] = None

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


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cbnet-tl" / "datasets"


def locate_idx(name: DatasetName, split: Split, data_dir: Optional[Path]) -> Path:
    """Return the directory holding this split's two files."""
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
    where = " or ".join(str(c) for c in candidates)
    hint = " (apt-get install dataset-fashion-mnist)" if source.system_dir else " (as published by the dataset's authors)"
    raise DataError(f"{name.value} {split.value} files not found; put {', '.join(FILES[split])} in {where}{hint}")


def seeded_subset(dataset: Dataset, size: int, seed: int) -> Dataset:
    """The first ``size`` images of a seeded permutation, in their original order (the whole set if smaller).
    ``build --max-train-images`` trains on it; later stages call it again to get the same images."""
    if size >= len(dataset):
        return dataset
    keep = np.sort(np.random.default_rng(seed).permutation(len(dataset))[:size])
    validation = None
    if dataset.validation_indices is not None:
        validation = np.flatnonzero(np.isin(keep, dataset.validation_indices))
    return replace(dataset, images=dataset.images[keep], labels=dataset.labels[keep], validation_indices=validation)


def _folder_split(layout, split: Split, spec: InputSpec, choice: InputChoice, report, log, progress) -> Dataset:
    name = "train" if split is Split.TRAIN else "test"
    images, labels = folders.load_split(layout, name, spec, strict=choice.strict, max_pixels=choice.max_pixels,
                                        report=report, log=log, progress=progress)
    validation = None
    if split is Split.TRAIN and layout.splits.get("val"):
        val_images, val_labels = folders.load_split(layout, "val", spec, strict=choice.strict,
                                                    max_pixels=choice.max_pixels, report=report, log=log,
                                                    progress=progress)
        validation = np.arange(len(images), len(images) + len(val_images))
        images, labels = np.concatenate([images, val_images]), np.concatenate([labels, val_labels])
    return Dataset(layout.root.name, images, labels, layout.class_names, str(layout.root), validation)


def load_build_data(name: str, data_dir: Optional[Path], choice: InputChoice, *, log=print,
                    progress=lambda iterable, **_: iterable) -> tuple:
    """(train, test, spec, record) for a build: the input spec decided from ``choice`` and the data (said in
    one line), both splits through it, the class counts (with warnings, ``class_lines``) and skipped files said
    and kept in ``record``."""
    if data_dir is not None and not Path(data_dir).exists():
        raise DataError(f"--data-dir {data_dir} does not exist")
    if data_dir is not None and folders.is_image_folder(Path(data_dir)):
        layout = folders.scan(Path(data_dir))
        report = folders.LoadReport()
        headers = folders.scan_headers(layout.splits["train"], choice.max_pixels, choice.strict, report, log)
        spec, reason = choose_for_headers(headers, choice)
        log(reason)
        train = _folder_split(layout, Split.TRAIN, spec, choice, report, log, progress)
        test = _folder_split(layout, Split.TEST, spec, choice, report, log, progress)
        counts = class_counts(train, test)
        tail = (f"; skipped {len(report.skipped)} unreadable file(s)" if report.skipped else "") + (
            f"; ignored {layout.num_ignored} non-image file(s)" if layout.num_ignored else "")
        for line in class_lines(counts, tail):
            log(line)
        record = {"name": layout.root.name, "custom": True, "data_dir": str(layout.root.absolute()),
                  "layout": layout.layout, "class_counts": counts, "num_skipped": len(report.skipped),
                  "skipped": [{"file": f, "reason": r} for f, r in report.skipped],
                  "num_ignored": layout.num_ignored}
        return train, test, spec, record
    train = load_dataset(name, Split.TRAIN, data_dir)
    spec, reason = choose_for_idx(train.images, choice)
    log(reason)
    test = load_dataset(name, Split.TEST, data_dir, spec)
    train = replace(train, images=to_model_inputs(train.images, spec))
    counts = class_counts(train, test)
    for line in class_lines(counts):
        log(line)
    record = {"name": train.name, "custom": False, "num_skipped": 0, "class_counts": counts,
              "data_dir": None if data_dir is None else str(Path(data_dir).absolute())}
    return train, test, spec, record


def class_counts(train: Dataset, test: Dataset) -> dict:
    """{class name: {"train": N, "val": N (with a val/ folder), "test": N}} of the images loaded, in class order."""
    labels = {"train": train.labels, "test": test.labels}
    if train.validation_indices is not None:
        labels = {"train": np.delete(train.labels, train.validation_indices),
                  "val": train.labels[train.validation_indices], "test": test.labels}
    return {name: {split: int(np.count_nonzero(values == label)) for split, values in labels.items()}
            for label, name in enumerate(train.class_names)}


def class_lines(counts: dict, tail: str = "") -> list:
    """One line with each class's training images (then ``tail``), a warning when the largest class has more than
    ``MAX_CLASS_RATIO`` times the smallest's, and one naming each class with fewer than ``MIN_TRAIN_PER_CLASS``."""
    train = {name: row["train"] for name, row in counts.items()}
    lines = [f"classes ({len(train)}), training images per class: "
             + ", ".join(f"{name} {count}" for name, count in train.items()) + tail]
    largest, smallest = max(train, key=train.get), min(train, key=train.get)
    if 0 < train[smallest] and train[largest] > MAX_CLASS_RATIO * train[smallest]:
        lines.append(f"warning: the classes are imbalanced: {largest} has {train[largest]} training images, "
                     f"{smallest} {train[smallest]} ({train[largest] / train[smallest]:.1f}x; expected at most "
                     f"{MAX_CLASS_RATIO:g}x): a model then favours the larger classes; add images to the smaller ones")
    small = [f"{name} has {count}" for name, count in train.items() if count < MIN_TRAIN_PER_CLASS]
    if small:
        lines.append(f"warning: too few training images to learn a class from: {', '.join(small)}; expected at "
                     f"least {MIN_TRAIN_PER_CLASS} a class: add images to these classes")
    return lines


def load_dataset(
    name: str, split: Split, data_dir: Optional[Path] = None, spec: Optional[InputSpec] = None,
    max_pixels: Optional[int] = None,
) -> Dataset:
    """Load one split through ``spec`` (an IDX set without one keeps its own size, one channel).
    ``data_dir`` holding class sub-folders makes it a custom dataset, which needs the build's ``spec``."""
    if data_dir is not None:
        data_dir = Path(data_dir)
        if not data_dir.exists():
            raise DataError(f"--data-dir {data_dir} does not exist")
        if folders.is_image_folder(data_dir):
            if spec is None:
                raise DataError(f"{data_dir}: an image folder is read through a build's input spec; none given")
            choice = InputChoice(**({} if max_pixels is None else {"max_pixels": max_pixels}))
            layout = folders.scan(data_dir)
            return _folder_split(layout, split, spec, choice, folders.LoadReport(), lambda line: None,
                                 lambda iterable, **_: iterable)
    try:
        dataset = DatasetName(name)
    except ValueError:
        raise DataError(
            f"Unknown dataset {name!r}. Expected one of {[d.value for d in DatasetName]}, "
            "or --data-dir with one sub-folder of images per class"
        ) from None
    folder = locate_idx(dataset, split, data_dir)
    images_name, labels_name = FILES[split]
    images, labels = read_idx_pair(folder / images_name, folder / labels_name, len(SOURCES[dataset].labels))
    images = images[..., None]  # (N, H, W, 1)
    if spec is not None:
        images = to_model_inputs(images, spec)
    return Dataset(dataset.value, images, labels, SOURCES[dataset].labels, str(folder))
