"""The device's command line (``python3 run.py …`` in a bundle): classify, selftest, watch, dvfs-restore.

A thin argparse layer over ``api``; every ``CbnetError`` becomes one line on stderr and exit code 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

from cbnet_tl.runtime.api import classify_paths, open_pipeline, selftest, watch
from cbnet_tl.runtime.delegates import Device
from cbnet_tl.runtime.errors import CbnetError
from cbnet_tl.runtime.images import collect_image_paths
from cbnet_tl.runtime.pipelines import DEPLOYED_PIPELINES, PIPELINES


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
    classify.add_argument("--device", choices=[d.value for d in Device], default=Device.CPU.value,
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
            from cbnet_tl.runtime.dvfs.run import dvfs_session

            pipeline = open_pipeline(bundle_dir, args.pipeline, num_threads=args.threads)
            with dvfs_session(args.dvfs, deadline_ms=args.deadline_ms, target=args.target) as session:
                watch(pipeline, args.inbox, args.outbox, args.poll_seconds, args.convert, hook=session)
        elif args.command == "dvfs-restore":
            from cbnet_tl.runtime.dvfs.cpufreq import restore_from_file
            from cbnet_tl.runtime.dvfs.run import DEFAULT_STATE_FILE

            restored = restore_from_file(args.state_file or DEFAULT_STATE_FILE)
            print(f"restored {restored}" if restored else "nothing to restore")
    except CbnetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
