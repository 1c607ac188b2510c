"""The frame loop on every source at 30 fps, grey (Fashion-MNIST test images, the tiny build) and colour (tuxpaint
drawings, the RGB build): each classified frame gets what `run.py classify` gives the same frame (JPEG sources: the
same JPEG file; the video file: its frames written losslessly), the log's arrivals show the source's frame rate within
5%, and every frame read is classified or counted as dropped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from frame_helpers import MjpegHttpServer, MjpegTcpServer, install_fake_rpicam, jpeg_bytes, write_video
from test_live import Running, assert_as_classify_gives, read_log, source_period, strict_json

from cbnet_tl.runtime.api import open_pipeline
from cbnet_tl.runtime.dvfs.run import dvfs_session
from cbnet_tl.runtime.frames import open_source
from cbnet_tl.runtime.live import LiveConfig, LiveLoop

FPS, NUM_FRAMES, WAIT_S = 30.0, 45, 60.0
FASHION = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist (scripts/setup.sh)
STAMPS = Path("/usr/share/tuxpaint/stamps")  # Debian's tuxpaint-stamps-default


def fashion_frames(count: int) -> list:
    import gzip

    files = sorted(FASHION.rglob("t10k-images-idx3-ubyte*"))
    assert files, f"Fashion-MNIST test images not found under {FASHION}: run scripts/setup.sh"
    raw = (gzip.open if files[0].suffix == ".gz" else open)(files[0], "rb").read()
    return [pixels for pixels in np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 28, 28)[:count]]


def drawing_frames(count: int) -> list:
    paths = sorted(STAMPS.rglob("*.png"))[::7][:count]
    assert len(paths) == count, f"tuxpaint drawings not found under {STAMPS}: run scripts/setup.sh"
    frames = []
    for path in paths:  # a camera's frame: RGB, one size; the drawing on white
        image = Image.open(path).convert("RGBA").resize((64, 48))
        canvas = Image.new("RGB", image.size, (255, 255, 255))
        canvas.paste(image, mask=image.getchannel("A"))
        frames.append(np.asarray(canvas))
    return frames


@pytest.fixture(scope="module")
def grey(tiny_bundle):
    return open_pipeline(tiny_bundle, "cbnet"), fashion_frames(NUM_FRAMES)


@pytest.fixture(scope="module")
def colour(rgb_build):
    return open_pipeline(rgb_build / "bundle", "cbnet"), drawing_frames(NUM_FRAMES)


@pytest.mark.parametrize("data", ["grey", pytest.param("colour", marks=pytest.mark.tf)])  # colour: the RGB build
@pytest.mark.parametrize("kind", ["rpicam", "http", "tcp", pytest.param("video", marks=pytest.mark.tf), "folder"])
def test_every_source_is_classified_frame_by_frame_as_classify_does(kind, data, request, tmp_path, monkeypatch):
    pipeline, frames = request.getfixturevalue(data)
    folder = tmp_path / "frames"
    folder.mkdir()
    if kind == "video":  # what classify reads: the frames written losslessly
        paths = [folder / f"{k:04d}.png" for k in range(len(frames))]
        for pixels, path in zip(frames, paths):
            Image.fromarray(pixels).save(path)
        rgb = [np.stack([p] * 3, axis=-1) if p.ndim == 2 else p for p in frames]
        spec = str(write_video(tmp_path / "clip.avi", rgb, FPS))
    else:  # JPEG sources: classify reads the very JPEG files
        paths = [folder / f"{k:04d}.jpg" for k in range(len(frames))]
        for pixels, path in zip(frames, paths):
            path.write_bytes(jpeg_bytes(pixels, quality=90))
        spec = str(folder)
    with_stream = {"http": MjpegHttpServer, "tcp": MjpegTcpServer}.get(kind)
    server = with_stream([p.read_bytes() for p in paths], FPS).__enter__() if with_stream else None
    try:
        if kind == "rpicam":
            install_fake_rpicam(tmp_path / "bin")
            monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
            monkeypatch.setenv("FAKE_RPICAM_JPEG_DIR", str(folder))
            monkeypatch.setenv("FAKE_RPICAM_RECORD", str(tmp_path / "rpicam.json"))
            spec = "rpicam"
        elif server is not None:
            spec = server.url() if kind == "http" else server.spec
        size = frames[0].shape[1::-1] if kind == "rpicam" else None
        with dvfs_session("off", deadline_ms=None) as session:
            loop = LiveLoop(pipeline, open_source(spec, fps=FPS, size=size), session,
                            LiveConfig(log=tmp_path / "live.log"))
            with Running(loop) as running:
                loop.wait_until(lambda s: s["frames_read"] >= NUM_FRAMES or s["source_state"] == "ended", WAIT_S)
                status = strict_json(running.finish())
    finally:
        if server is not None:
            server.__exit__(None, None, None)
    records = [line for line in read_log(tmp_path / "live.log") if "seq" in line]
    assert status["frames_read"] >= NUM_FRAMES
    # every frame read is classified or dropped, but one a stop found waiting for the model
    assert status["frames_read"] - (status["frames_classified"] + status["frames_dropped"]) in (0, 1)
    assert status["frames_classified"] == len(records) > NUM_FRAMES // 2
    assert_as_classify_gives(records, pipeline, paths)
    assert abs(source_period(records) - 1 / FPS) < 0.05 / FPS, source_period(records)
