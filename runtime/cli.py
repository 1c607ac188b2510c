"""The device's command line (``python3 run.py …`` in a bundle): classify, selftest, watch, serve, status,
trace, dvfs-grant, dvfs-restore.

A thin argparse layer over ``api``, ``classify`` (the options it shares with ``cbnet-tl run``) and ``service``;
every ``CbnetError`` becomes one line on stderr and exit code 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path
from typing import Optional, Sequence

from cbnet_tl.runtime.api import open_pipeline, selftest, tune_bundle
from cbnet_tl.runtime.classify import ClassifyOptions, add_arguments, classify_command, dvfs_options
from cbnet_tl.runtime.errors import CbnetError
from cbnet_tl.runtime.inbox import InboxConfig
from cbnet_tl.runtime.specs import DEPLOYED_PIPELINES, PIPELINES, default_pipeline
from cbnet_tl.runtime.serve import add_serve_arguments, serve_command
from cbnet_tl.runtime.service import StopRequested, grant_cpufreq, run_watch, status
from cbnet_tl.runtime.tuning import format_tuning


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="run.py", description="Run a cbnet-tl bundle on this device.")
    parser.add_argument("--bundle", type=Path, default=None, help="bundle directory (default: this script's)")
    add_arguments(parser, ("threads",))
    commands = parser.add_subparsers(dest="command", required=True)
    classify = commands.add_parser("classify", help="classify image files or folders (an unreadable file gets an "
                                                      "error entry; exit 1 after all if any)")
    classify.add_argument("images", nargs="+", type=Path, help="image files or folders of images")
    add_arguments(classify, [f.name for f in fields(ClassifyOptions) if f.name != "threads"],  # --threads: global
                  {"pipeline": PIPELINES})
    commands.add_parser("selftest", help="verify checksums and sample predictions; exit 0 when they pass")
    tune = commands.add_parser("tune", help="time every model in every configuration here; keep the fastest "
                                            "that gives the reference classes (written outside the release)")
    tune.add_argument("--out", type=Path, default=None, help="tuning file (default: the state folder's tuning.json)")
    tune.add_argument("--if-missing", action="store_true", help="do nothing when the tuning file exists")
    tune.add_argument("--json", action="store_true", help="print the tuning record")
    restore = commands.add_parser("dvfs-restore", help="give back a CPU frequency state left by a killed run")
    restore.add_argument("--state-file", type=Path, default=None)
    watch_parser = commands.add_parser("watch", help="classify images dropped into a folder (the service)")
    _folders(watch_parser)
    watch_parser.add_argument("--outbox", type=Path, required=True)
    watch_parser.add_argument("--pipeline", choices=DEPLOYED_PIPELINES, default=None,
                              help="default: the build's recommendation")
    watch_parser.add_argument("--poll-seconds", type=float, default=0.2,
                              help="scan the inbox this often while it is empty (default 0.2; idle time under DVFS)")
    watch_parser.add_argument("--settle-seconds", type=float, default=1.0,
                              help="take a file once its size and mtime held still this long (default 1)")
    watch_parser.add_argument("--batch-size", type=int, default=32, help="images per batch (default 32)")
    watch_parser.add_argument("--delete-processed", action="store_true", help="delete classified inputs")
    watch_parser.add_argument("--drain", action="store_true",
                              help="stop once the inbox is empty (no input, settled or not), with the summary line")
    # each batch is one DVFS batch; an input's deadline counts from when it settled (the files are the arrivals)
    add_arguments(watch_parser, ("max_pixels", "convert", "dvfs", "deadline_ms", "workload", "target", "sysfs_root"))
    serve = commands.add_parser("serve", help="a web page and HTTP API: classify posted images and, with --source, a "
                                              "camera or stream live (SIGTERM: a clean stop)")
    add_serve_arguments(serve, lambda target, names: add_arguments(target, names, {"pipeline": DEPLOYED_PIPELINES}))
    status_parser = commands.add_parser("status", help="counts, last error, uptime of the watch service")
    _folders(status_parser)
    trace = commands.add_parser("trace", help="time every stage of the bundle's pipelines at batch 1 and --batch-size, "
                                              "at each CPU frequency it may set; write a trace for `cbnet-tl simulate --trace`")
    trace.add_argument("--pipeline", action="append", choices=PIPELINES, default=None,
                       help="a pipeline to time (repeatable; default: every pipeline the bundle deploys)")
    trace.add_argument("--batch-size", type=int, default=32, help="the service's batch size (default 32)")
    trace.add_argument("--repeats", type=int, default=5, help="calls per stage and size; the median is kept (default 5)")
    trace.add_argument("--out", type=Path, default=Path("stage-trace.json"), help="trace file (default stage-trace.json)")
    trace.add_argument("--target", default=None, help="the power table this board matches, recorded in the trace (e.g. rpi4)")
    trace.add_argument("--sysfs-root", type=Path, default=Path("/"),
                       help="root of the cpufreq tree (default /; a fake tree for tests: the CPU does not change speed)")
    grant = commands.add_parser("dvfs-grant", help="(root) let GROUP write the cpufreq files DVFS needs")
    grant.add_argument("--group", required=True)
    grant.add_argument("--sysfs-root", type=Path, default=Path("/"))
    return parser


def _folders(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--inbox", type=Path, required=True)
    parser.add_argument("--done", type=Path, default=None, help="processed inputs (default: done/ beside the inbox)")
    parser.add_argument("--failed", type=Path, default=None, help="failed inputs (default: failed/ beside the inbox)")
    parser.add_argument("--state-dir", type=Path, default=None, help="state file (default: state/ beside the inbox)")


def main(argv: Optional[Sequence[str]] = None, default_bundle: Optional[Path] = None) -> int:
    args = _parser().parse_args(argv)
    bundle_dir = args.bundle or default_bundle or Path.cwd()
    try:
        if args.command == "selftest":
            print(json.dumps(selftest(bundle_dir, args.threads), indent=2))
        elif args.command == "classify":
            return classify_command(bundle_dir, args.images, ClassifyOptions.from_arguments(args))
        elif args.command == "tune":
            record = tune_bundle(bundle_dir, args.out, num_threads=args.threads, if_missing=args.if_missing)
            if record is not None:
                print(json.dumps(record, indent=2) if args.json else format_tuning(record))
        elif args.command == "watch":
            options = dvfs_options(args.dvfs, args.deadline_ms, args.workload, target=args.target,
                                   sysfs_root=args.sysfs_root)
            options = {key: options[key] for key in ("dvfs", "deadline_ms", "sysfs_root", "target")}  # files arrive
            if args.pipeline is None:  # the manifest's (the build's choice)
                from cbnet_tl.runtime.bundle import open_manifest

                args.pipeline = default_pipeline(open_manifest(bundle_dir)[1])
            config = InboxConfig(args.inbox, args.outbox, args.done, args.failed, args.state_dir,
                                 delete_processed=args.delete_processed, poll_seconds=args.poll_seconds,
                                 settle_seconds=args.settle_seconds, batch_size=args.batch_size,
                                 max_pixels=args.max_pixels,
                                 extra={"dvfs": options["dvfs"], "sysfs_root": str(args.sysfs_root)})
            pipeline = open_pipeline(bundle_dir, args.pipeline, num_threads=args.threads)
            run_watch(pipeline, config, options, drain=args.drain)
        elif args.command == "serve":
            return serve_command(bundle_dir, args)
        elif args.command == "status":
            config = InboxConfig(args.inbox, args.inbox.parent / "outbox", args.done, args.failed, args.state_dir)
            print(json.dumps(status(config), indent=2, allow_nan=False))
        elif args.command == "trace":
            from cbnet_tl.runtime.stage_trace import record_trace

            record_trace(bundle_dir, args.out, pipelines=args.pipeline, batch_size=args.batch_size,
                         repeats=args.repeats, sysfs_root=args.sysfs_root, num_threads=args.threads, target=args.target)
        elif args.command == "dvfs-grant":
            granted = grant_cpufreq(args.group, args.sysfs_root)
            print(f"group {args.group} may write {len(granted)} cpufreq files")
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
    except StopRequested:  # SIGTERM before the service loop began
        return 0
    return 0
