"""Image-folder datasets: any images Pillow reads, in one sub-folder per class.

Two layouts:

- ``FOLDER/<class>/...``: every class's images, split per class by a fixed seed into train (80%) and
  test (20%, at least one image);
- ``FOLDER/train/<class>/...`` with optional ``FOLDER/val/<class>/...`` (validation: early stopping and
  cbnet-fallback's threshold) and ``FOLDER/test/<class>/...`` (without it, test is split from train).

Images are found recursively inside a class folder by their suffix; other files (text, sound, SVG) are
counted and left alone. A file that cannot be read or is over the pixel limit is skipped with a
notice naming it and why (``strict`` refuses instead), and counted in the build record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from cbnet_tl.runtime.errors import DataError, ImageError
from cbnet_tl.runtime.images import IMAGE_SUFFIXES_DEFAULT, MAX_PIXELS_DEFAULT, error_reason, header, load_image
from cbnet_tl.runtime.preprocess import InputSpec

TEST_SHARE = 0.2
MIN_PER_CLASS = 3  # an automatic split needs one test image and two training images per class
SPLIT_FOLDERS = ("train", "val", "test")


@dataclass(frozen=True)
class FolderLayout:
    root: Path
    layout: str  # "class-folders" or "splits"
    class_names: tuple
    splits: dict  # "train" / "val" / "test" -> list of (path, label)
    num_ignored: int = 0  # files without an image suffix


def is_image_folder(data_dir: Path) -> bool:
    data_dir = Path(data_dir)
    return data_dir.is_dir() and any(p.is_dir() for p in data_dir.iterdir()) and not any(
        p.name.endswith("-ubyte.gz") for p in data_dir.iterdir())


def _class_dirs(root: Path) -> list:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_in(folder: Path) -> tuple:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES_DEFAULT]
    return images, len(files) - len(images)


def _split_of(root: Path, class_names: tuple) -> tuple:
    items, ignored = [], 0
    present = {d.name for d in _class_dirs(root)}
    for label, name in enumerate(class_names):
        if name not in present:
            continue
        images, others = _images_in(root / name)
        items.extend((path, label) for path in images)
        ignored += others
    return items, ignored


def scan(data_dir: Path) -> FolderLayout:
    """Find the classes and each split's files (no image is opened yet)."""
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"--data-dir {root} is not a folder")
    splits_present = [name for name in SPLIT_FOLDERS if (root / name).is_dir()]
    if "train" in splits_present:
        class_names = tuple(d.name for d in _class_dirs(root / "train"))
        layout = "splits"
    else:
        class_names = tuple(d.name for d in _class_dirs(root))
        layout = "class-folders"
    where = root / "train" if layout == "splits" else root
    if len(class_names) < 2:
        raise DataError(f"{where}: expected one sub-folder of images per class (at least 2). "
                        f"Received {len(class_names)}")
    splits, ignored = {}, 0
    for split in (SPLIT_FOLDERS if layout == "splits" else ()):
        if (root / split).is_dir():
            splits[split], others = _split_of(root / split, class_names)
            ignored += others
    if layout == "class-folders":
        everything, ignored = _split_of(root, class_names)
        splits["train"] = everything
    by_class = {label: [p for p, lab in splits["train"] if lab == label] for label in range(len(class_names))}
    empty = [class_names[label] for label, paths in by_class.items() if not paths]
    if empty:
        raise DataError(f"{where}: class folder(s) {empty} hold no images "
                        f"({', '.join(sorted(IMAGE_SUFFIXES_DEFAULT))})")
    if "test" not in splits:
        splits["train"], splits["test"] = _seeded_split(by_class, class_names, where)
    return FolderLayout(root, layout, class_names, splits, ignored)


def _seeded_split(by_class: dict, class_names: tuple, where: Path) -> tuple:
    small = {class_names[label]: len(paths) for label, paths in by_class.items() if len(paths) < MIN_PER_CLASS}
    if small:
        raise DataError(f"{where}: class(es) with too few images for a train/test split: "
                        + ", ".join(f"{name} has {count}" for name, count in small.items())
                        + f". Each class needs at least {MIN_PER_CLASS} (1 test, 2 training); add images, or give "
                        "train/ and test/ folders")
    train, test = [], []
    for label, paths in by_class.items():
        order = np.random.default_rng(label).permutation(len(paths))
        num_test = max(1, int(round(TEST_SHARE * len(paths))))
        chosen = set(order[:num_test].tolist())
        for index, path in enumerate(paths):
            (test if index in chosen else train).append((path, label))
    return train, test


@dataclass
class LoadReport:
    """What loading skipped, and why (one line per file)."""

    skipped: list = field(default_factory=list)  # (path, reason)

    def skip(self, error: ImageError, path: Path, strict: bool, log: Callable[[str], None]) -> None:
        """Skip ``path`` with a one-line notice, or with ``strict``, refuse the dataset."""
        if strict:
            raise DataError(f"{error} (--strict refuses a dataset with an unreadable image)") from None
        reason = error_reason(error, path)
        self.skipped.append((str(path), reason))
        log(f"skipped {path}: {reason}")


def scan_headers(items: list, max_pixels: int, strict: bool, report: LoadReport, log: Callable) -> list:
    """(path, label, width, height, mode, colourful) of every readable file; the others skipped (or refused)."""
    out = []
    for path, label in items:
        try:
            width, height, mode, colourful = header(path, max_pixels)
        except ImageError as error:
            report.skip(error, path, strict, log)
            continue
        out.append((path, label, width, height, mode, colourful))
    return out


def load_split(layout: FolderLayout, split: str, spec: InputSpec, *, strict: bool = False,
               max_pixels: int = MAX_PIXELS_DEFAULT, report: Optional[LoadReport] = None,
               log: Callable[[str], None] = print, progress: Callable = lambda iterable, **_: iterable) -> tuple:
    """(uint8 images (N, H, W, C) of ``spec``, int64 labels) of one split, skipping what cannot be read."""
    report = report if report is not None else LoadReport()
    items = layout.splits.get(split, [])
    images, labels = [], []
    already = {path for path, _ in report.skipped}
    for path, label in progress(items, desc=f"load {split} images", unit="image", leave=False):
        if str(path) in already:
            continue
        try:
            images.append(load_image(path, spec, max_pixels=max_pixels))
        except ImageError as error:
            report.skip(error, path, strict, log)
            continue
        labels.append(label)
    missing = sorted(set(range(len(layout.class_names))) - set(labels))
    if split in ("train", "test") and missing:
        raise DataError(f"{layout.root}: no readable {split} image for class(es) "
                        f"{[layout.class_names[i] for i in missing]}; every class needs at least one")
    if not images:
        return np.zeros((0, *spec.shape), np.uint8), np.zeros((0,), np.int64)
    return np.stack(images), np.asarray(labels, dtype=np.int64)
