"""A class-folder dataset from Debian's tuxpaint-stamps-default: one class per top-level category.

    python3 scripts/stamps_folder.py /tmp/stamps            # every category with at least 20 images
    python3 scripts/stamps_folder.py /tmp/stamps --min-images 30

Each category folder of ``/usr/share/tuxpaint/stamps`` (animals, food, symbols, ...) becomes one class holding
links to every PNG below it, so ``cbnet-tl build --data-dir /tmp/stamps`` trains on real RGBA, LA and palette
drawings and photos. Categories with fewer than ``--min-images`` images are left out. RESULTS.md's small-data
figures use this folder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

STAMPS = Path("/usr/share/tuxpaint/stamps")


def make_folder(destination: Path, min_images: int = 20, source: Path = STAMPS) -> dict:
    """Link every PNG of each category with at least ``min_images`` into ``destination/CATEGORY/``; return the
    class counts."""
    if not source.is_dir():
        raise SystemExit(f"{source} is missing: apt-get install tuxpaint-stamps-default")
    counts = {}
    for category in sorted(p for p in source.iterdir() if p.is_dir()):
        images = sorted(category.rglob("*.png"))
        if len(images) < min_images:
            continue
        folder = destination / category.name
        folder.mkdir(parents=True, exist_ok=False)
        for index, image in enumerate(images):
            # names made unique: the same file name stands in several sub-folders
            (folder / f"{index:04d}_{image.name}").symlink_to(image)
        counts[category.name] = len(images)
    return counts


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("destination", type=Path, help="a new folder (must not exist)")
    parser.add_argument("--min-images", type=int, default=20, help="leave out smaller categories (default 20)")
    args = parser.parse_args(argv)
    if args.destination.exists():
        print(f"{args.destination} exists; choose a new folder", file=sys.stderr)
        return 1
    counts = make_folder(args.destination, args.min_images)
    print(f"{args.destination}: {len(counts)} classes, {sum(counts.values())} images: "
          + ", ".join(f"{name} {count}" for name, count in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
