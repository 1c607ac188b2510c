"""``run.py serve``: the HTTP server (``server.py``) over the bundle's pipeline, and with ``--source`` the frame loop
(``live.py``) under a DVFS session, until SIGTERM or SIGINT.

    python3 run.py serve                                      # http://127.0.0.1:8080/, classifies what it is sent
    python3 run.py serve --source rpicam --fps 30 --dvfs eenet --log /var/lib/cbnet-tl/live.jsonl
    python3 run.py serve --listen 0.0.0.0:8080 --token-file /etc/cbnet-tl/token --source http://camera/stream.mjpg

The loop runs in the main thread, the server in another. SIGTERM is a clean stop, as in ``run.py watch``: the CPU's
frequency settings are given back first (``CpufreqController``), then the loop ends where it is (the source closed:
a camera process ended), the server stops, and one summary line is printed; the exit status is 0.
"""

from __future__ import annotations

import argparse
import signal
import threading
from dataclasses import fields
from pathlib import Path
from typing import Callable, Optional

from cbnet_tl.runtime.errors import ConfigError
from cbnet_tl.runtime.live_log import LiveConfig
from cbnet_tl.runtime.server import ServerConfig, is_loopback
from cbnet_tl.runtime.service import StopRequested

# the frame loop's options (``LiveConfig``'s fields, with its defaults): their help
LOOP_OPTION_HELP = {
    "log": "write each classified frame's record and each source event to FILE, as JSON lines",
    "log_max_bytes": "rotate the log (FILE.1, FILE.2, ...) before it grows past this many bytes",
    "log_keep": "rotated logs kept",
    "keep_uncertain": "keep the frames whose confidence is below --below in DIR (JPEG and its record), to relabel",
    "below": "the confidence under which --keep-uncertain keeps a frame",
    "keep_max_files": "frames --keep-uncertain keeps at most (the oldest go first)",
    "keep_max_bytes": "bytes --keep-uncertain keeps at most (the oldest go first)",
}
LOOP_ONLY = ("fps", "size", "deadline_ms", "log", "keep_uncertain")  # options that mean nothing without --source


def parse_listen(text: str) -> tuple:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) → (host, port)."""
    host, sep, port = str(text).strip().rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"Expected --listen HOST:PORT (e.g. 127.0.0.1:8080, 0.0.0.0:8080, [::1]:8080). "
                          f"Received: {text!r}")
    return host, int(port)


def check_exposure(host: str, token: Optional[str], no_token: bool) -> None:
    """A server other machines can reach needs a token, or ``--no-token`` said on purpose."""
    if token is not None and no_token:
        raise ConfigError("Expected one of --token-file and --no-token. Received both")
    if not is_loopback(host) and token is None and not no_token:
        raise ConfigError(f"Expected a loopback --listen (127.0.0.1, localhost, ::1) without a token. Received: "
                          f"{host}, which other machines can reach: pass --token-file FILE (clients then send "
                          "Authorization: Bearer TOKEN), or --no-token to serve anyone who can connect")


def read_token(path: Path) -> str:
    """The token in ``path`` (its first line, stripped): at least 16 characters."""
    try:
        token = Path(path).read_text(encoding="utf-8").strip().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"Cannot read --token-file {path}: {getattr(error, 'strerror', None) or error}") from None
    if not token or len(token[0].strip()) < 16:
        raise ConfigError(f"Expected a token of at least 16 characters in --token-file {path}. Received "
                          f"{len(token[0].strip()) if token else 0}; make one with: python3 -c \"import secrets; "
                          f"print(secrets.token_urlsafe(32))\" > {path}")
    return token[0].strip()


def _size(text: str) -> tuple:
    width, sep, height = text.lower().partition("x")
    if not sep or not width.isdigit() or not height.isdigit():
        raise argparse.ArgumentTypeError(f"Expected WIDTHxHEIGHT (e.g. 640x480). Received: {text!r}")
    return int(width), int(height)


def add_serve_arguments(serve: argparse.ArgumentParser, add_shared: Callable) -> None:
    """``run.py serve``'s options; ``add_shared(parser, names)`` adds those ``classify`` shares (its table)."""
    serve.add_argument("--listen", default="127.0.0.1:8080", metavar="HOST:PORT",
                       help="address to serve on (default 127.0.0.1:8080, this machine only; port 0: any free one). "
                            "Another address needs --token-file or --no-token")
    serve.add_argument("--source", default=None, metavar="SRC",
                       help="frames to classify live: rpicam, picamera2, http://... (MJPEG), tcp://HOST:PORT, "
                            "/dev/videoN, rtsp://..., a video file, or a folder or glob of images (default: none, "
                            "the server classifies the images it is sent)")
    add_shared(serve, ("pipeline", "device", "fallback_threshold", "max_pixels", "dvfs"))
    serve.add_argument("--fps", type=float, default=None,
                       help="frame rate asked of a camera, the pace of a folder or video file, the rate of a stream "
                            "that states none; the frame period is the deadline unless --deadline-ms says otherwise "
                            "(default: the source's own, 30 for a camera or a folder)")
    serve.add_argument("--size", type=_size, default=None, metavar="WxH",
                       help="frame size asked of a camera (rpicam, picamera2, /dev/videoN; default 640x480)")
    serve.add_argument("--deadline-ms", type=float, default=None,
                       help="milliseconds from a frame's arrival to its answer (default: the frame period); the "
                            "DVFS policy meets it at the least energy")
    add_shared(serve, ("target", "sysfs_root"))
    defaults = LiveConfig()
    for name, help_text in LOOP_OPTION_HELP.items():
        default = getattr(defaults, name)
        kind = type(default) if default is not None else Path
        shown = "" if default is None else f" (default {default:,})" if isinstance(default, int) else \
            f" (default {default})"
        serve.add_argument(f"--{name.replace('_', '-')}", type=kind, default=default, help=help_text + shown,
                           metavar={"log": "FILE", "keep_uncertain": "DIR"}.get(name))
    serve.add_argument("--token-file", type=Path, default=None, metavar="FILE",
                       help="require Authorization: Bearer TOKEN (the first line of FILE, 16 characters or more) on "
                            "every endpoint but /healthz; a browser asks for it as the password")
    serve.add_argument("--no-token", action="store_true",
                       help="serve a non-loopback --listen without a token: anyone who can connect may use it")
    serve.add_argument("--max-body-bytes", type=int, default=ServerConfig.max_body_bytes,
                       help=f"largest image body accepted, refused from its Content-Length (413) "
                            f"(default {ServerConfig.max_body_bytes:,})")
    serve.add_argument("--max-in-flight", type=int, default=ServerConfig.max_in_flight,
                       help=f"requests answered at once; more get 503 with Retry-After "
                            f"(default {ServerConfig.max_in_flight})")
    serve.add_argument("--read-timeout", type=float, default=ServerConfig.read_timeout_s,
                       help="seconds a client has to send a request's headers, and its body (plus one per 64 KiB); "
                            f"a slower one gets 408 (default {ServerConfig.read_timeout_s:g})")


def serve_command(bundle_dir: Path, args: argparse.Namespace) -> int:
    """Serve until SIGTERM or SIGINT; then the summary line on stdout, and 0."""
    from cbnet_tl.runtime.api import open_pipeline
    from cbnet_tl.runtime.bundle import open_manifest
    from cbnet_tl.runtime.classify import fallback_options
    from cbnet_tl.runtime.specs import default_pipeline

    host, port = parse_listen(args.listen)
    token = None if args.token_file is None else read_token(args.token_file)
    check_exposure(host, token, args.no_token)
    config = ServerConfig(host, port, token, max_body_bytes=args.max_body_bytes, max_pixels=args.max_pixels,
                          max_in_flight=args.max_in_flight, read_timeout_s=args.read_timeout)
    if args.source is None:
        given = [f"--{name.replace('_', '-')}" for name in LOOP_ONLY if getattr(args, name) is not None]
        given += ["--dvfs"] if args.dvfs.strip().lower() != "off" else []
        if given:
            raise ConfigError(f"Expected --source with {', '.join(given)}: they set the frame loop. Received no "
                              "source (the server then classifies only the images it is sent)")
    live = None if args.source is None else _live_config(args)
    name = args.pipeline or default_pipeline(open_manifest(bundle_dir)[1])
    pipeline = open_pipeline(bundle_dir, name, num_threads=args.threads, device=args.device,
                             options=fallback_options(args.fallback_threshold))
    stop = _StopOnSignal()
    previous = signal.signal(signal.SIGTERM, stop)  # before the DVFS controller's: it gives the CPU back, then this
    try:
        line = _serve(pipeline, config, args, live, stop)
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(line, flush=True)
    return 0


class _StopOnSignal:
    """SIGTERM's handler: ``StopRequested`` where the main thread is, once (a second one during the stop is
    ignored)."""

    def __init__(self) -> None:
        self.raised = False

    def __call__(self, signum, frame) -> None:
        if not self.raised:
            self.raised = True
            raise StopRequested()


def _live_config(args: argparse.Namespace) -> LiveConfig:
    return LiveConfig(deadline_s=None if args.deadline_ms is None else args.deadline_ms / 1e3,
                      **{f.name: getattr(args, f.name) for f in fields(LiveConfig) if f.name in LOOP_OPTION_HELP})


def _session_options(args: argparse.Namespace, fps: Optional[float]) -> dict:
    """``dvfs_session``'s options: one frame every 1/fps s, due within that period unless --deadline-ms."""
    from cbnet_tl.runtime.classify import dvfs_options
    from cbnet_tl.runtime.dvfs.run import parse_policy

    if parse_policy(args.dvfs) is not None and fps is None and args.deadline_ms is None:
        raise ConfigError(f"--dvfs {args.dvfs} needs a deadline to meet, and {args.source} states no frame rate: "
                          "pass --fps FPS (the deadline is then the frame period) or --deadline-ms MS")
    return dvfs_options(args.dvfs, args.deadline_ms, None if fps is None else f"camera:{fps!r}",
                        target=args.target, sysfs_root=args.sysfs_root)


def _serve(pipeline, config: ServerConfig, args: argparse.Namespace, live: Optional[LiveConfig],
           on_signal: _StopOnSignal) -> str:
    """Run the server (and the loop) until stopped; the summary line."""
    from cbnet_tl.runtime.formats import format_dvfs_summary
    from cbnet_tl.runtime.server import make_server

    if live is None:
        server = make_server(pipeline, config)
        _run(server, None, on_signal)
        return _summary(server.status())
    from cbnet_tl.runtime.dvfs.run import dvfs_session
    from cbnet_tl.runtime.frames import open_source
    from cbnet_tl.runtime.live import LiveLoop

    source = open_source(args.source, fps=args.fps, size=args.size)
    fps = args.fps or source.fps
    with dvfs_session(**_session_options(args, fps)) as session:
        loop = LiveLoop(pipeline, source, session, live, fps=fps)
        server = make_server(pipeline, config, loop)
        _run(server, loop, on_signal)
    status = server.status()
    totals = {**session.summary(), "num_inputs": status["frames_read"], "seconds": status["uptime_s"]}
    return f"{_summary(status)}; frames: {format_dvfs_summary(totals)}"


def _run(server, loop, on_signal: _StopOnSignal) -> None:
    """Serve from a thread, run the loop here (then wait), until SIGTERM or SIGINT; then stop both."""
    stop = threading.Event()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="http", daemon=True)
    thread.start()
    print(f"serving {server.url}" + ("" if loop is None else f" ({loop.source.description})"), flush=True)
    try:
        if loop is not None:
            loop.run(stop)  # until stopped, or the source played out: then the server goes on
        while not stop.wait(3600):
            pass
    except (StopRequested, KeyboardInterrupt):
        stop.set()
    finally:
        on_signal.raised = True  # stopping now: another SIGTERM changes nothing
        server.shutdown()
        server.server_close()
        thread.join()


def _summary(status: dict) -> str:
    server = status["server"]
    codes = ", ".join(f"{code}: {count}" for code, count in server["requests"].items())
    posted = server["posted"]
    return (f"serve summary: HTTP requests: {server['requests_total']}{f' ({codes})' if codes else ''}; "
            f"posted images: {posted['classified']} classified, {posted['refused']} refused; "
            f"up {server['uptime_s']:.1f} s")
