"""Stand-ins for the cameras and streams the frame sources read, made of real parts: a stand-in ``rpicam-vid`` on
PATH that writes real MJPEG (JPEG frames made by Pillow) at its ``--framerate``; an MJPEG stream over HTTP
(``multipart/x-mixed-replace``) and a raw MJPEG stream over TCP, served on 127.0.0.1 from a thread; a lossless video
file written by OpenCV; and frames that carry their own number in their colour.

The stand-in ``rpicam-vid`` is told what to do by environment variables, read when it starts:
``FAKE_RPICAM_JPEG_DIR`` (send these ``*.jpg`` files, in order and round again, instead of numbered frames; their
size must be --width x --height), ``FAKE_RPICAM_COLOUR`` ("R,G,B": every frame that colour), ``FAKE_RPICAM_EXIT_AFTER``
(exit with status 1 after N frames, saying why on stderr), ``FAKE_RPICAM_STALL_AFTER`` (write nothing after N frames),
``FAKE_RPICAM_IGNORE_TERM`` (ignore SIGTERM) and ``FAKE_RPICAM_RECORD`` (a file to write its argv and pid to, as JSON).
"""

from __future__ import annotations

import http.server
import io
import json
import os
import signal
import socketserver
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
from PIL import Image

NUMBER_STEP = 10  # numbered frames: red = (k % NUM_NUMBERS) * NUMBER_STEP, far apart for JPEG's small errors
NUM_NUMBERS = 25
BOUNDARY = "cbnetframe"

_STAND_IN = """#!{python}
import sys
sys.path.insert(0, {tests!r})
from frame_helpers import run_fake_rpicam
sys.exit(run_fake_rpicam(sys.argv[1:]))
"""


# --- frames ----------------------------------------------------------------------------------------

def numbered_pixels(k: int, width: int, height: int) -> np.ndarray:
    """A flat RGB frame whose colour says k (modulo NUM_NUMBERS)."""
    level = (k % NUM_NUMBERS) * NUMBER_STEP
    pixels = np.empty((height, width, 3), np.uint8)
    pixels[...] = (level, 250 - level, 128)
    return pixels


def frame_number(image: Image.Image) -> int:
    """The number a frame made by ``numbered_pixels`` carries, read back from its mean red."""
    red = np.asarray(image.convert("RGB"))[..., 0].astype(np.float64).mean()
    return int(round(red / NUMBER_STEP)) % NUM_NUMBERS


def jpeg_bytes(pixels: np.ndarray, quality: int = 95, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(pixels, np.uint8)).save(buffer, format="JPEG", quality=quality, **options)
    return buffer.getvalue()


def solid(colour: Sequence[int], width: int = 64, height: int = 48) -> np.ndarray:
    pixels = np.empty((height, width, 3), np.uint8)
    pixels[...] = colour
    return pixels


def textured(seed: int, width: int = 64, height: int = 48) -> np.ndarray:
    """A colourful frame with gradients and noise, different for each seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // max(1, width - 1), y * 255 // max(1, height - 1), (x + y) * 3 % 256], axis=-1)
    return np.clip(base + rng.integers(-40, 41, base.shape), 0, 255).astype(np.uint8)


def assert_red(image: Image.Image) -> None:
    """A pure red (255, 0, 0) frame arrived as red: R high, G and B low (B, G, R fed as RGB would read blue)."""
    pixels = np.asarray(image.convert("RGB")).reshape(-1, 3).astype(np.int64)
    red, green, blue = pixels.mean(axis=0)
    assert red > 240 and green < 15 and blue < 15, (image.mode, red, green, blue)


def write_video(path: Path, frames: Sequence[np.ndarray], fps: float, fourcc: str = "FFV1") -> Path:
    """RGB frames into a video file through OpenCV (FFV1 in .avi is lossless)."""
    import cv2

    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), float(fps), (width, height))
    assert writer.isOpened(), f"OpenCV cannot write {fourcc} to {path}"
    for frame in frames:
        writer.write(np.ascontiguousarray(frame[..., ::-1]))  # OpenCV writes B, G, R
    writer.release()
    return path


# --- the stand-in rpicam-vid -----------------------------------------------------------------------

def install_fake_rpicam(bin_dir: Path, name: str = "rpicam-vid") -> Path:
    """An executable stand-in ``name`` in ``bin_dir``, run by this interpreter (which has Pillow)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / name
    script.write_text(_STAND_IN.format(python=sys.executable, tests=str(Path(__file__).parent)))
    script.chmod(0o755)
    return script


def _option(args: list, name: str, default: str) -> str:
    return args[args.index(name) + 1] if name in args and args.index(name) + 1 < len(args) else default


def _stand_in_frames(width: int, height: int):
    folder = os.environ.get("FAKE_RPICAM_JPEG_DIR")
    if folder:
        files = [path.read_bytes() for path in sorted(Path(folder).glob("*.jpg"))]
        for data in files:
            if Image.open(io.BytesIO(data)).size != (width, height):
                raise SystemExit(f"ERROR: *** a frame in {folder} is not {width}x{height} ***")
        k = 0
        while True:
            yield files[k % len(files)]
            k += 1
    colour = os.environ.get("FAKE_RPICAM_COLOUR")
    k = 0
    while True:
        pixels = solid([int(v) for v in colour.split(",")], width, height) if colour else \
            numbered_pixels(k, width, height)
        yield jpeg_bytes(pixels)
        k += 1


def run_fake_rpicam(args: list) -> int:
    """What the stand-in does: MJPEG on stdout, each frame in three writes, paced at --framerate."""
    record = os.environ.get("FAKE_RPICAM_RECORD")
    if record:
        Path(record).write_text(json.dumps({"argv": args, "pid": os.getpid()}))
    if os.environ.get("FAKE_RPICAM_IGNORE_TERM"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    width, height = int(_option(args, "--width", "640")), int(_option(args, "--height", "480"))
    period = 1.0 / float(_option(args, "--framerate", "30"))
    exit_after = int(os.environ.get("FAKE_RPICAM_EXIT_AFTER", "-1"))
    stall_after = int(os.environ.get("FAKE_RPICAM_STALL_AFTER", "-1"))
    print("[0:00:00.000] [1] INFO Camera camera_manager.cpp: stand-in rpicam-vid", file=sys.stderr, flush=True)
    out = sys.stdout.buffer
    start = time.monotonic()
    try:
        for k, data in enumerate(_stand_in_frames(width, height)):
            if k == exit_after:
                print("ERROR: *** stand-in camera lost ***", file=sys.stderr, flush=True)
                return 1
            while k == stall_after:
                time.sleep(3600)
            time.sleep(max(0.0, start + k * period - time.monotonic()))
            third = len(data) // 3
            for piece in (data[:third], data[third:2 * third], data[2 * third:]):
                out.write(piece)
                out.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no complaint at exit
    return 0


def process_gone(pid: int) -> bool:
    """True when ``pid`` is neither running nor a zombie waiting to be reaped."""
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return status.rsplit(")", 1)[1].split()[0] == "X"


# --- MJPEG servers ---------------------------------------------------------------------------------

class _FrameServer:
    """Sends ``frames`` (JPEG bytes, round again) at ``fps`` to each client; ``stop_after`` frames then closes the
    connection; ``stall_after`` frames then sends nothing more."""

    def __init__(self, frames: Sequence[bytes], fps: float, *, stop_after: Optional[int] = None,
                 stall_after: Optional[int] = None) -> None:
        self.frames, self.period = list(frames), 1.0 / fps
        self.stop_after, self.stall_after = stop_after, stall_after
        self.stopping = threading.Event()
        self.server = None

    def send_frames(self, write: Callable[[bytes], None]) -> None:
        start = time.monotonic()
        k = 0
        while self.stop_after is None or k < self.stop_after:
            if self.stall_after is not None and k >= self.stall_after:
                self.stopping.wait()
                return
            if self.stopping.wait(max(0.0, start + k * self.period - time.monotonic())):
                return
            try:
                write(self.frames[k % len(self.frames)])
            except OSError:  # the client went away
                return
            k += 1

    def start(self, server) -> None:
        self.server = server
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def close(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class MjpegHttpServer(_FrameServer):
    """``GET /stream``: ``multipart/x-mixed-replace`` with a Content-Length in each part (or none, with
    ``content_length=False``); ``GET /missing``: 404; ``GET /plain``: 200 text/plain. ``requests`` keeps each
    request's headers."""

    def __init__(self, frames: Sequence[bytes], fps: float, *, content_length: bool = True, **options) -> None:
        super().__init__(frames, fps, **options)
        self.requests: list = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                owner.requests.append(dict(self.headers))
                if self.path == "/missing":
                    self.send_error(404)
                    return
                plain = self.path == "/plain"
                self.send_response(200)
                self.send_header("Content-Type", "text/plain" if plain else
                                 f"multipart/x-mixed-replace; boundary={BOUNDARY}")
                self.end_headers()
                if not plain:
                    owner.send_frames(self._part)

            def _part(self, data: bytes) -> None:
                length = f"Content-Length: {len(data)}\r\n" if content_length else ""
                head = f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n{length}\r\n".encode()
                self.wfile.write(head + data + b"\r\n")
                self.wfile.flush()

        self.start(http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler))

    def url(self, path: str = "/stream") -> str:
        return f"http://127.0.0.1:{self.port}{path}"


class MjpegTcpServer(_FrameServer):
    """JPEG frames back to back on each TCP connection, each frame in pieces of 1,000 bytes."""

    def __init__(self, frames: Sequence[bytes], fps: float, **options) -> None:
        super().__init__(frames, fps, **options)
        owner = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                owner.send_frames(self._send)

            def _send(self, data: bytes) -> None:
                for start in range(0, len(data), 1000):
                    self.request.sendall(data[start:start + 1000])

        self.start(socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler))

    @property
    def spec(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"
