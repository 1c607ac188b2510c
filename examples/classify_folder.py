"""Classify every image in a folder with a cbnet-tl bundle, using only the light runtime.

    python examples/classify_folder.py BUNDLE_DIR tests/data/samples --pipeline cbnet

Prints one line per image (file, class, confidence, path taken) and the accuracy when file names
end in ``_<label>`` (as the sample PNGs do).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cbnet_tl.runtime.api import classify_paths, open_pipeline
from cbnet_tl.runtime.errors import CbnetError
from cbnet_tl.runtime.images import collect_image_paths
from cbnet_tl.runtime.specs import DEFAULT_PIPELINE, PIPELINES


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Classify a folder of images with a bundle.")
    parser.add_argument("bundle", type=Path)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--pipeline", default=DEFAULT_PIPELINE, choices=PIPELINES)
    parser.add_argument("--glob", default="mnist_*", help="file name pattern inside the folder")
    args = parser.parse_args(argv)
    try:
        pipeline = open_pipeline(args.bundle, args.pipeline)
        paths = sorted(args.folder.glob(args.glob + ".png")) or collect_image_paths([args.folder])
        records = classify_paths(pipeline, paths)
    except CbnetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    correct = labelled = 0
    for record in records:
        print(f"{Path(record['file']).name}\t{record['class_name']}\t{record['confidence']:.3f}\t{record['path']}")
        suffix = Path(record["file"]).stem.rsplit("_", 1)[-1]
        if suffix.isdigit():
            labelled += 1
            correct += int(suffix) == record["label"]
    if labelled:
        print(f"accuracy on {labelled} labelled images: {correct / labelled:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
