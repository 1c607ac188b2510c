"""The on-device entry point (``python3 run.py …`` in a bundle): classify, self-test, watch a folder.

Only the stdlib, numpy, Pillow and the interpreter are used, so a bundle runs in a venv holding just
``numpy pillow ai-edge-litert``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from cbnet_tl.runtime.bundle import load_bundle, read_manifest, resolve_bundle_dir, verify_files
from cbnet_tl.runtime.errors import BundleError, CbnetError
from cbnet_tl.runtime.images import IMAGE_SUFFIXES_DEFAULT, collect_image_paths, load_image, load_images
from cbnet_tl.runtime.pipelines import DEPLOYED_PIPELINES, PIPELINES, Pipeline, models_for

SELFTEST_MIN_AGREEMENT = 0.9


def open_pipeline(bundle_dir: Path, name: str, *, precision: str = "int8", num_threads: int = 1,
                  device: str = "cpu") -> Pipeline:
    """``device``: "cpu", or "edgetpu" (the Edge TPU delegate, falling back to the CPU with a warning)."""
    delegates, used = (), "cpu"
    if device == "edgetpu":
        from cbnet_tl.runtime.delegates import load_edgetpu

        accelerator = load_edgetpu()
        if accelerator.warning:
            print(f"warning: {accelerator.warning}", file=sys.stderr)
        delegates, used = accelerator.delegates, accelerator.device
    elif device != "cpu":
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
    directory = resolve_bundle_dir(bundle_dir)
    manifest = read_manifest(directory)
    verify_files(directory, manifest)
    samples = manifest.get("selftest")
    if not samples or not samples.get("files"):
        raise BundleError(f"{directory}/manifest.json has no selftest samples; rebuild the bundle")
    images = np.stack([load_image(directory / f) for f in samples["files"]])
    report = {"bundle": str(directory), "version": manifest.get("version"), "checksums": "ok", "pipelines": {}}
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
            target = outbox / f"{path.stem}.json"
            tmp = target.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(record) + "\n")
            tmp.replace(target)
            path.unlink(missing_ok=True)
            done += 1
    return done


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="run.py", description="Run a cbnet-tl bundle on this device.")
    parser.add_argument("--bundle", type=Path, default=None, help="bundle directory (default: this script's)")
    parser.add_argument("--threads", type=int, default=1, help="interpreter threads (default 1)")
    commands = parser.add_subparsers(dest="command", required=True)
    classify = commands.add_parser("classify", help="classify image files or folders")
    classify.add_argument("images", nargs="+", type=Path)
    classify.add_argument("--pipeline", choices=PIPELINES, default="cbnet")
    classify.add_argument("--convert", action="store_true", help="convert any image to 28x28 grayscale")
    classify.add_argument("--json", action="store_true", help="print one JSON object")
    classify.add_argument("--device", choices=("cpu", "edgetpu"), default="cpu",
                          help="edgetpu: use the Coral delegate (falls back to the CPU with a warning)")
    commands.add_parser("selftest", help="verify checksums and sample predictions; exit 0 when they pass")
    restore = commands.add_parser("dvfs-restore", help="give back a CPU frequency state left by a killed run")
    restore.add_argument("--state-file", type=Path, default=None)
    watch_parser = commands.add_parser("watch", help="classify images dropped into a folder (the service)")
    watch_parser.add_argument("--inbox", type=Path, required=True)
    watch_parser.add_argument("--outbox", type=Path, required=True)
    watch_parser.add_argument("--pipeline", choices=DEPLOYED_PIPELINES, default="cbnet")
    watch_parser.add_argument("--poll-seconds", type=float, default=0.2)
    watch_parser.add_argument("--convert", action="store_true")
    watch_parser.add_argument("--dvfs", default="off", help="off, performance, powersave, fixed:<MHz> or eenet")
    watch_parser.add_argument("--deadline-ms", type=float, default=None)
    watch_parser.add_argument("--target", default="rpi4", help="power model for modelled energy")
    return parser


def main(argv: Optional[Sequence[str]] = None, default_bundle: Optional[Path] = None) -> int:
    args = _parser().parse_args(argv)
    bundle_dir = args.bundle or default_bundle or Path.cwd()
    try:
        if args.command == "selftest":
            print(json.dumps(selftest(bundle_dir, args.threads), indent=2))
        elif args.command == "classify":
            pipeline = open_pipeline(bundle_dir, args.pipeline, num_threads=args.threads, device=args.device)
            records = classify_paths(pipeline, collect_image_paths(args.images), resize=args.convert)
            if args.json:
                print(json.dumps({"pipeline": args.pipeline, "results": records}, indent=2))
            else:
                for r in records:
                    print(f"{r['file']}\t{r['class_name']}\t{r['confidence']:.3f}\t{r['path']}\t{r['ms']:.3f} ms")
        elif args.command == "watch":
            from cbnet_tl.runtime.dvfs_run import dvfs_session

            pipeline = open_pipeline(bundle_dir, args.pipeline, num_threads=args.threads)
            with dvfs_session(args.dvfs, deadline_ms=args.deadline_ms, target=args.target) as session:
                watch(pipeline, args.inbox, args.outbox, args.poll_seconds, args.convert, hook=session)
        elif args.command == "dvfs-restore":
            from cbnet_tl.runtime.cpufreq import restore_from_file
            from cbnet_tl.runtime.dvfs_run import DEFAULT_STATE_FILE

            restored = restore_from_file(args.state_file or DEFAULT_STATE_FILE)
            print(f"restored {restored}" if restored else "nothing to restore")
    except CbnetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
