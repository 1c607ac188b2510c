"""The frame sources with real parts: a stand-in rpicam-vid on PATH writing real MJPEG at its frame rate, MJPEG over
HTTP and over TCP served on loopback, a lossless video file read through OpenCV, a folder replay, and picamera2 as a
fake module. Each source: a pure red frame arrives red, frames arrive numbered from 0 in order at the source's rate,
``frame_input`` gives the bytes ``load_image`` (what ``run.py classify`` uses) gives for the same file, and a source
that dies, goes silent or is closed fails with ``SourceError`` instead of hanging or leaving a process behind."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import socket
import subprocess
import sys
import threading
import types

import numpy as np
import pytest
from PIL import Image

import edge_images
from frame_helpers import (MjpegHttpServer, MjpegTcpServer, assert_red, frame_number, install_fake_rpicam,
                           jpeg_bytes, numbered_pixels, process_gone, solid, textured, write_video)

from cbnet_tl.runtime.errors import ConfigError
from cbnet_tl.runtime.frames import SourceError, frame_input, open_source
from cbnet_tl.runtime.frames import camera
from cbnet_tl.runtime.frames.jpeg import ByteStream
from cbnet_tl.runtime.frames.streams import HttpMjpegSource
from cbnet_tl.runtime.images import load_image
from cbnet_tl.runtime.manifest import read_manifest
from cbnet_tl.runtime.preprocess import InputSpec

# The video file goes through OpenCV, which the dev extras install: the runtime-only suite (`-m "not tf"`) leaves it
# out, the full suite fails without it.
KINDS = ("rpicam", "http", "http-no-length", "tcp", pytest.param("video", marks=pytest.mark.tf), "folder")
JPEG_KINDS = ("rpicam", "http", "http-no-length", "tcp", "folder")
RED = (255, 0, 0)


@pytest.fixture
def fake_path(tmp_path, monkeypatch):
    """PATH with the stand-in rpicam-vid first."""
    bin_dir = tmp_path / "bin"
    install_fake_rpicam(bin_dir)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    return bin_dir


@pytest.fixture
def serve(tmp_path, monkeypatch, fake_path):
    """serve(kind, frames, fps) → an opened source that delivers the RGB ``frames`` in order (a camera or a stream:
    round again; a video file or a folder: once), closed at the end of the test."""
    stack = contextlib.ExitStack()

    def start(kind: str, frames, fps: float = 30.0):
        jpegs = [jpeg_bytes(pixels) for pixels in frames]
        folder = tmp_path / f"{kind}-frames"
        if kind in ("rpicam", "folder"):
            folder.mkdir()
            for k, data in enumerate(jpegs):
                (folder / f"{k:04d}.jpg").write_bytes(data)
        if kind == "rpicam":
            monkeypatch.setenv("FAKE_RPICAM_JPEG_DIR", str(folder))
            source = open_source("rpicam", fps=fps, size=(frames[0].shape[1], frames[0].shape[0]))
        elif kind.startswith("http"):
            server = stack.enter_context(MjpegHttpServer(jpegs, fps, content_length=kind == "http"))
            source = open_source(server.url(), fps=fps)
        elif kind == "tcp":
            source = open_source(stack.enter_context(MjpegTcpServer(jpegs, fps)).spec, fps=fps)
        elif kind == "video":
            source = open_source(str(write_video(tmp_path / "clip.avi", frames, fps)))
        else:
            source = open_source(str(folder), fps=fps)
        return stack.enter_context(source)

    yield start
    stack.close()


def read_frames(source, count: int) -> list:
    frames = [source.read() for _ in range(count)]
    assert None not in frames
    return frames


# --- every source ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_a_red_frame_arrives_red(serve, kind):
    frame = serve(kind, [solid(RED)]).read()
    assert frame.image.mode == "RGB"
    assert_red(frame.image)


@pytest.mark.parametrize("kind", KINDS)
def test_frames_arrive_in_order_numbered_from_zero(serve, kind):
    source = serve(kind, [numbered_pixels(k, 64, 48) for k in range(8)])
    frames = read_frames(source, 8)
    assert [f.seq for f in frames] == list(range(8))
    assert [frame_number(f.image) for f in frames] == list(range(8))
    assert all(a.arrival < b.arrival for a, b in zip(frames, frames[1:]))
    for frame in frames:
        assert (frame.jpeg is None) == (kind == "video")
        if frame.jpeg is not None:
            assert np.array_equal(np.asarray(Image.open(io.BytesIO(frame.jpeg))), np.asarray(frame.image))


@pytest.mark.parametrize("kind", KINDS)
def test_frames_arrive_at_the_sources_rate(serve, kind):
    """At 30 frames/s, the median interval between arrivals is within 5% of 1/30 s."""
    source = serve(kind, [numbered_pixels(k, 64, 48) for k in range(31)], fps=30.0)
    assert source.fps == 30.0
    arrivals = [f.arrival for f in read_frames(source, 31)]
    median = float(np.median(np.diff(arrivals)))
    assert abs(median - 1 / 30) < 0.05 / 30, median


@pytest.mark.parametrize("kind", JPEG_KINDS)
@pytest.mark.parametrize("spec", ["bundle", "28x28x1", "32x32x3"])
def test_frame_input_is_what_classify_gives_for_the_same_jpeg_file(serve, kind, spec, tiny_bundle, tmp_path):
    spec = {"bundle": read_manifest(tiny_bundle).input_spec, "28x28x1": InputSpec(28, 28, 1),
            "32x32x3": InputSpec(32, 32, 3, resize="crop", background="black")}[spec]
    source = serve(kind, [textured(seed) for seed in range(3)])
    for frame in read_frames(source, 3):
        path = tmp_path / f"frame-{frame.seq}.jpg"
        path.write_bytes(frame.jpeg)
        expected = load_image(path, spec)
        assert expected.shape == spec.shape
        assert np.array_equal(frame_input(frame, spec), expected)


@pytest.mark.tf  # OpenCV (the dev extras)
def test_a_video_frames_input_is_what_classify_gives_for_it_written_losslessly(serve, tmp_path):
    frames = [textured(seed) for seed in range(3)]
    source = serve("video", frames)
    spec = InputSpec(32, 32, 3)
    for frame, pixels in zip(read_frames(source, 3), frames):
        assert np.array_equal(np.asarray(frame.image), pixels)  # FFV1 is lossless: B, G, R back to the RGB written
        Image.fromarray(pixels).save(tmp_path / "frame.png")
        assert np.array_equal(frame_input(frame, spec), load_image(tmp_path / "frame.png", spec))


# --- rpicam ------------------------------------------------------------------------------------------

def test_rpicam_runs_rpicam_vid_with_size_and_frame_rate(fake_path, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_RPICAM_RECORD", str(tmp_path / "argv.json"))
    with open_source("rpicam", fps=15, size=(320, 240)) as source:
        frame = source.read()
        assert source.description == "rpicam-vid 320x240 at 15 fps"
        assert frame.image.size == (320, 240) and frame.jpeg[:2] == b"\xff\xd8"
    recorded = json.loads((tmp_path / "argv.json").read_text())
    assert recorded["argv"] == ["-t", "0", "-n", "--codec", "mjpeg", "-o", "-", "--width", "320", "--height", "240",
                                "--framerate", "15"]
    assert process_gone(recorded["pid"])


def test_rpicam_falls_back_to_libcamera_vid(tmp_path, monkeypatch):
    install_fake_rpicam(tmp_path / "old", name="libcamera-vid")
    monkeypatch.setenv("PATH", str(tmp_path / "old"))
    monkeypatch.setenv("FAKE_RPICAM_COLOUR", "255,0,0")
    with open_source("rpicam") as source:
        assert source.description == "libcamera-vid 640x480 at 30 fps"
        assert_red(source.read().image)


def test_rpicam_not_on_path_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ConfigError) as error:
        open_source("rpicam")
    assert str(error.value) == "rpicam-vid (or libcamera-vid) not found on PATH: sudo apt install rpicam-apps"


def test_a_camera_process_that_dies_is_a_lost_source(fake_path, monkeypatch):
    monkeypatch.setenv("FAKE_RPICAM_EXIT_AFTER", "3")
    with open_source("rpicam", size=(64, 48)) as source:
        assert [f.seq for f in read_frames(source, 3)] == [0, 1, 2]
        with pytest.raises(SourceError) as error:
            source.read()
    assert str(error.value) == ("rpicam-vid 64x48 at 30 fps: rpicam-vid exited with status 1; its last words: "
                                "[0:00:00.000] [1] INFO Camera camera_manager.cpp: stand-in rpicam-vid | "
                                "ERROR: *** stand-in camera lost ***")


def test_a_silent_camera_is_lost_after_the_timeout(fake_path, monkeypatch):
    monkeypatch.setenv("FAKE_RPICAM_STALL_AFTER", "2")
    source = camera.RpicamSource(size=(64, 48), timeout=0.5)
    with source:
        read_frames(source, 2)
        with pytest.raises(SourceError, match=r"no frame for 0\.5 s"):
            source.read()


def test_close_ends_and_reaps_the_camera_process_and_a_reopen_counts_on(fake_path):
    source = open_source("rpicam", size=(64, 48))
    source.open()
    first = source.pid
    assert [frame_number(f.image) for f in read_frames(source, 3)] == [0, 1, 2]
    source.close()
    assert process_gone(first) and source.pid is None
    source.close()  # idempotent
    source.open()
    frame = source.read()
    assert (frame.seq, frame_number(frame.image)) == (3, 0)  # a new camera process, the count goes on
    second = source.pid
    source.close()
    assert second != first and process_gone(second)


def test_close_kills_a_camera_process_that_ignores_sigterm(fake_path, monkeypatch):
    monkeypatch.setenv("FAKE_RPICAM_IGNORE_TERM", "1")
    monkeypatch.setattr(camera, "STOP_TIMEOUT_S", 0.5)
    source = open_source("rpicam", size=(64, 48))
    with source:
        source.read()
        process = source._process
    assert process.returncode == -9 and process_gone(process.pid)


def _read_in_thread(source) -> tuple:
    outcome = {}

    def run():
        try:
            outcome["frame"] = source.read()
        except SourceError as error:
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


@pytest.mark.parametrize("kind", ["rpicam", "http", "tcp"])
def test_close_from_another_thread_ends_a_blocked_read(fake_path, monkeypatch, kind):
    monkeypatch.setenv("FAKE_RPICAM_STALL_AFTER", "1")
    with contextlib.ExitStack() as stack:
        jpegs = [jpeg_bytes(solid(RED))]
        if kind == "rpicam":
            source = open_source("rpicam", size=(64, 48))
        elif kind == "http":
            source = open_source(stack.enter_context(MjpegHttpServer(jpegs, 30.0, stall_after=1)).url())
        else:
            source = open_source(stack.enter_context(MjpegTcpServer(jpegs, 30.0, stall_after=1)).spec)
        source.open()
        source.read()
        thread, outcome = _read_in_thread(source)
        thread.join(0.3)
        assert thread.is_alive()  # blocked: nothing comes
        source.close()
        thread.join(5.0)
        assert not thread.is_alive() and isinstance(outcome.get("error"), SourceError)



@pytest.mark.parametrize("kind", ["folder", pytest.param("video", marks=pytest.mark.tf)])
def test_close_from_another_thread_wakes_a_paced_read_and_a_reopen_counts_on(tmp_path, kind):
    frames = [numbered_pixels(k, 64, 48) for k in range(3)]
    if kind == "folder":
        for k, pixels in enumerate(frames):
            Image.fromarray(pixels).save(tmp_path / f"{k}.png")
        spec = str(tmp_path)
    else:
        spec = str(write_video(tmp_path / "clip.avi", frames, 20.0))
    source = open_source(spec, fps=0.05)  # a 20 s period
    assert source.closes_from_any_thread
    source.open()
    assert source.read().seq == 0  # the first frame is due at once, the next in 20 s
    thread, outcome = _read_in_thread(source)
    thread.join(0.3)
    assert thread.is_alive()  # waiting for the next frame's turn
    source.close()
    thread.join(2.0)
    assert not thread.is_alive() and isinstance(outcome.get("error"), SourceError), outcome
    assert str(outcome["error"]).endswith(": closed")
    with pytest.raises(SourceError, match=r"after close\(\)$"):
        source.read()
    source.open()  # a reopen plays from the start again, and seq counts on
    frame = source.read()
    source.close()
    assert frame.seq == 1 and frame_number(frame.image) == 0

# --- MJPEG over HTTP and TCP -------------------------------------------------------------------------

def test_an_http_stream_the_server_ends_is_a_lost_source():
    with MjpegHttpServer([jpeg_bytes(solid(RED))], 30.0, stop_after=2) as server:
        with open_source(server.url()) as source:
            read_frames(source, 2)
            with pytest.raises(SourceError) as error:
                source.read()
    assert str(error.value) == f"http://127.0.0.1:{server.port}/stream: the server closed the stream"


def test_a_silent_http_stream_is_lost_after_the_timeout():
    with MjpegHttpServer([jpeg_bytes(solid(RED))], 30.0, stall_after=1) as server:
        with HttpMjpegSource(server.url(), timeout=0.5) as source:
            source.read()
            with pytest.raises(SourceError, match=r"/stream: no data for 0\.5 s$"):
                source.read()


@pytest.mark.parametrize("path, received", [("/missing", "HTTP 404 Not Found, Content-Type 'text/html;charset=utf-8'"),
                                            ("/plain", "HTTP 200 OK, Content-Type 'text/plain'")])
def test_an_http_answer_that_is_no_mjpeg_stream_fails_to_open(path, received):
    with MjpegHttpServer([jpeg_bytes(solid(RED))], 30.0) as server:
        source = open_source(server.url(path))
        with pytest.raises(SourceError) as error:
            source.open()
    assert str(error.value) == (f"{server.url(path)}: expected HTTP 200 with Content-Type multipart/x-mixed-replace "
                                f"(an MJPEG stream). Received: {received}")


def test_http_credentials_are_sent_and_kept_out_of_the_description():
    with MjpegHttpServer([jpeg_bytes(solid(RED))], 30.0) as server:
        url = server.url().replace("http://", "http://viewer:s%3Acret@")
        with open_source(url) as source:
            assert_red(source.read().image)
            assert source.description == f"{server.url()} (MJPEG over HTTP)"
    assert server.requests[0]["Authorization"] == "Basic " + base64.b64encode(b"viewer:s:cret").decode()


def test_undecodable_frames_are_skipped_and_counted_then_too_many_in_a_row_lose_the_source():
    broken = b"\xff\xd8\xff\xe0\x00\x04no\xff\xd9"  # SOI, a segment, EOI: a JPEG's shape, no image
    frames = [jpeg_bytes(numbered_pixels(0, 64, 48)), broken, jpeg_bytes(numbered_pixels(2, 64, 48))]
    with MjpegTcpServer(frames, 60.0) as server, open_source(server.spec) as source:
        assert [(f.seq, frame_number(f.image)) for f in read_frames(source, 2)] == [(0, 0), (2, 2)]
    with MjpegHttpServer([broken], 60.0) as server, open_source(server.url()) as source:
        with pytest.raises(SourceError, match="5 frames in a row could not be decoded; the last: frame: not an image"):
            source.read()


def test_a_tcp_stream_nobody_serves_fails_to_open_and_one_that_ends_is_lost():
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(SourceError, match=rf"^tcp://127.0.0.1:{port}: cannot connect"):
        open_source(f"tcp://127.0.0.1:{port}").open()
    with MjpegTcpServer([jpeg_bytes(solid(RED))], 30.0, stop_after=1) as server, open_source(server.spec) as source:
        source.read()
        with pytest.raises(SourceError, match="the server closed the stream"):
            source.read()


# --- the JPEG splitter -------------------------------------------------------------------------------

def _stream_of(data: bytes, sizes, **options) -> ByteStream:
    """A ByteStream that receives ``data`` in pieces of the given sizes, round again, then ends."""
    pieces, start, k = [], 0, 0
    while start < len(data):
        pieces.append(data[start:start + sizes[k % len(sizes)]])
        start += sizes[k % len(sizes)]
        k += 1
    pieces.reverse()
    return ByteStream(lambda n: pieces.pop() if pieces else b"", **options)


def _tricky_jpegs() -> list:
    pixels = textured(7)
    return [jpeg_bytes(pixels), jpeg_bytes(pixels, progressive=True),  # many scans, tables between them
            jpeg_bytes(pixels, comment=b"an EOI \xff\xd9 inside a comment"), jpeg_bytes(pixels, restart_marker_rows=1),
            jpeg_bytes(pixels)[:-2] + b"\xff\xff\xd9"]  # a fill byte before EOI


@pytest.mark.parametrize("sizes", [[1], [2, 3], [4096], [7, 1, 500, 13]])
def test_the_splitter_finds_every_image_whole_whatever_the_pieces(sizes):
    images = _tricky_jpegs()
    stream = _stream_of(b"junk before" + b"\r\n--x\r\n".join(images) + b"\xff\xd8", sizes)
    assert [stream.next_jpeg() for _ in images] == images
    with pytest.raises(EOFError):
        stream.next_jpeg()


def test_the_splitter_drops_a_cut_image_and_keeps_the_next():
    whole = jpeg_bytes(textured(1))
    stream = _stream_of(whole[: len(whole) // 2] + whole, [100])
    assert stream.next_jpeg() == whole


def test_the_splitter_refuses_a_stream_without_images_end():
    with pytest.raises(SourceError, match="no whole JPEG image within 1,000 bytes: not an MJPEG stream"):
        _stream_of(b"\xff\xd8\xff\xda\x00\x02" + bytes(5000), [256], max_frame_bytes=1000).next_jpeg()


# --- OpenCV, folders, picamera2 ----------------------------------------------------------------------

@pytest.mark.tf  # OpenCV (the dev extras)
def test_a_video_file_plays_at_its_own_rate_unless_fps_says_otherwise_then_ends(tmp_path):
    clip = write_video(tmp_path / "clip.avi", [numbered_pixels(k, 64, 48) for k in range(11)], 20.0)
    for fps, period in ((None, 1 / 20), (50.0, 1 / 50)):
        with open_source(str(clip), fps=fps) as source:
            assert source.fps == 1 / period
            frames = read_frames(source, 11)
            assert source.read() is None and source.read() is None
        assert [frame_number(f.image) for f in frames] == list(range(11))
        assert abs(float(np.median(np.diff([f.arrival for f in frames]))) - period) < 0.05 * period


@pytest.mark.tf  # OpenCV (the dev extras)
def test_a_missing_video_device_fails_to_open():
    with pytest.raises(SourceError, match=r"^/dev/video99 \(device through OpenCV\): OpenCV cannot open it$"):
        open_source("/dev/video99").open()


def test_a_folder_replays_its_files_in_order_each_in_its_own_mode(tmp_path):
    folder = tmp_path / "replay"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(jpeg_bytes(solid(RED)))
    edge_images.exif_rotated_jpeg(folder / "b.jpg")
    edge_images.rgba_png(folder / "c.png")
    (folder / "d.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    Image.fromarray(solid(RED)).save(folder / "e.png")
    spec = InputSpec(32, 32, 3, background="#0000ff")
    with open_source(str(folder)) as source:
        frames = [source.read() for _ in range(4)]
        assert source.read() is None
    assert [f.seq for f in frames] == [0, 1, 2, 4]  # d.png is counted, not delivered
    assert frames[0].jpeg == (folder / "a.jpg").read_bytes() and frames[2].jpeg is None
    assert frames[2].image.mode == "RGBA"  # composited onto the spec's background by frame_input, as classify does
    assert_red(frames[0].image), assert_red(frames[3].image)
    for frame, name in zip(frames, ["a.jpg", "b.jpg", "c.png", "e.png"]):
        assert np.array_equal(frame_input(frame, spec), load_image(folder / name, spec)), name


def test_a_glob_replays_what_it_matches_sorted(tmp_path):
    for k in (2, 0, 1):
        Image.fromarray(numbered_pixels(k, 16, 16)).save(tmp_path / f"f{k}.png")
    with open_source(str(tmp_path / "f*.png"), fps=200) as source:
        assert [frame_number(source.read().image) for _ in range(3)] == [0, 1, 2]
        assert source.read() is None


class _FakePicamera2:
    """picamera2's Picamera2 as far as the source uses it; frames are "RGB888", which is B, G, R in memory."""

    log: list = []

    def create_video_configuration(self, main, controls):
        return {"main": main, "controls": controls}

    def configure(self, config):
        self.log.append(("configure", config))

    def start(self):
        self.log.append(("start",))

    def capture_array(self, name):
        height, width = self.log[0][1]["main"]["size"][::-1]
        return solid(RED, width, height)[..., ::-1].copy()  # red as picamera2 lays it out: B=0, G=0, R=255

    def stop(self):
        self.log.append(("stop",))

    def close(self):
        self.log.append(("close",))


def test_picamera2_frames_are_turned_from_bgr_into_rgb(monkeypatch):
    _FakePicamera2.log = []
    monkeypatch.setitem(sys.modules, "picamera2", types.SimpleNamespace(Picamera2=_FakePicamera2))
    with open_source("picamera2", fps=15, size=(96, 64)) as source:
        frames = read_frames(source, 2)
    assert [f.seq for f in frames] == [0, 1] and frames[0].image.size == (96, 64)
    assert_red(frames[0].image)
    assert _FakePicamera2.log[0] == ("configure", {"main": {"size": (96, 64), "format": "RGB888"},
                                                   "controls": {"FrameRate": 15.0}})
    assert _FakePicamera2.log[-2:] == [("stop",), ("close",)]


# --- specs, and what importing costs -----------------------------------------------------------------

@pytest.mark.parametrize("spec, options, message", [
    ("ftp://cam/x", {}, "Expected a frame source: rpicam, picamera2, http://HOST/PATH (MJPEG), tcp://HOST:PORT (raw "
                        "MJPEG), /dev/videoN, rtsp://..., a video file, or a folder or glob of images. Received: "
                        "'ftp://cam/x' (unknown scheme ftp://)"),
    ("/no/such/clip.avi", {}, "Received: '/no/such/clip.avi', which is no such file or folder"),
    ("rpicam", {"fps": 0}, "Expected a frame rate above 0 and at most 1000 frames/s for rpicam. Received: 0"),
    ("rpicam", {"size": (640,)}, "Expected a frame size (width, height) of 16 to 8192 pixels each for rpicam. "
                                 "Received: (640,)"),
    ("http://cam/stream", {"size": (640, 480)}, "Expected a size only for a camera (rpicam, picamera2, /dev/videoN): "
                                                "http://cam/stream delivers the size it was made in. Received: 640x480"),
    ("tcp://cam", {}, "Expected a TCP stream as tcp://HOST:PORT. Received: 'tcp://cam'"),
])
def test_a_bad_spec_is_one_clear_line(spec, options, message):
    with pytest.raises(ConfigError) as error:
        open_source(spec, **options)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_an_empty_folder_or_glob_and_a_missing_opencv_are_clear(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="Expected a folder of images to replay. Received: .*holds no images"):
        open_source(str(tmp_path))
    with pytest.raises(ConfigError, match=r"which matches none$"):
        open_source(str(tmp_path / "*.jpg"))
    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(ConfigError) as error:
        open_source("/dev/video0")
    assert str(error.value) == "OpenCV (cv2) is needed for /dev/video0: pip install opencv-python-headless"


def test_importing_the_frame_sources_loads_no_optional_module():
    code = ("import sys, json, cbnet_tl.runtime.frames\n"
            "print(json.dumps([m for m in ('cv2', 'picamera2', 'tensorflow') if m in sys.modules]))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []
