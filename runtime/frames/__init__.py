"""Frame sources: the Pi's camera, MJPEG streams, OpenCV devices and files, and replayed folders, each delivering
``Frame`` objects; and ``frame_input``, the bundle's one preprocessing function applied to a frame.

    source = open_source("rpicam", fps=30, size=(640, 480))
    with source:
        while (frame := source.read()) is not None:
            pixels = frame_input(frame, manifest.input_spec)

``open_source`` takes: ``rpicam``, ``picamera2``, ``http://…`` or ``https://…`` (MJPEG), ``tcp://HOST:PORT`` (raw
MJPEG), ``/dev/videoN``, ``rtsp://…``, a video file, an image file, a folder or a glob of images. Importing this
package imports only numpy, Pillow and the standard library; OpenCV and picamera2 are imported when a source that
needs them is chosen.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from cbnet_tl.runtime.errors import ConfigError
from cbnet_tl.runtime.frames.base import (DEFAULT_FPS, DEFAULT_CAMERA_SIZE, DEFAULT_TIMEOUT_S, Frame,
                                          FrameSource, SourceError, check_fps, refuse_size)
from cbnet_tl.runtime.frames.camera import Picamera2Source, RpicamSource
from cbnet_tl.runtime.frames.replay import GLOB_CHARACTERS, FolderSource, OpenCvSource, replay_paths
from cbnet_tl.runtime.frames.streams import HttpMjpegSource, TcpMjpegSource
from cbnet_tl.runtime.images import IMAGE_SUFFIXES_DEFAULT, MAX_PIXELS_DEFAULT, prepare_image
from cbnet_tl.runtime.preprocess import InputSpec

__all__ = ["DEFAULT_FPS", "DEFAULT_CAMERA_SIZE", "DEFAULT_TIMEOUT_S", "Frame", "FrameSource", "SourceError",
           "frame_input", "open_source"]

SOURCE_KINDS = ("rpicam, picamera2, http://HOST/PATH (MJPEG), tcp://HOST:PORT (raw MJPEG), /dev/videoN, rtsp://..., "
                "a video file, or a folder or glob of images")
OPENCV_SCHEMES = ("rtsp", "rtsps")
MAX_SIDE = 8192


def _check_size(size, spec: str) -> Optional[tuple]:
    if size is None:
        return None
    try:
        width, height = size
    except (TypeError, ValueError):
        width = height = None
    if not all(isinstance(v, int) and not isinstance(v, bool) and 16 <= v <= MAX_SIDE for v in (width, height)):
        raise ConfigError(f"Expected a frame size (width, height) of 16 to {MAX_SIDE} pixels each for {spec}. "
                          f"Received: {size!r}")
    return width, height


def open_source(spec: str, *, fps: Optional[float] = None, size: Optional[tuple] = None) -> FrameSource:
    """The source ``spec`` names, not yet opened. ``fps`` asks a camera for that rate, paces a replay, and states a
    stream's; ``size`` (width, height) is asked of a camera and refused for anything else. One ``ConfigError`` line
    for a spec that names no source, or when what the source needs is missing."""
    text = str(spec).strip()
    fps, size = check_fps(fps, text or repr(spec)), _check_size(size, text or repr(spec))
    kind = text.lower()
    if kind == "rpicam":
        return RpicamSource(fps=fps, size=size)
    if kind == "picamera2":
        return Picamera2Source(fps=fps, size=size)
    scheme = kind.partition("://")[0] if "://" in kind else ""
    if scheme in ("http", "https", "tcp"):
        refuse_size(size, text)
        return (TcpMjpegSource if scheme == "tcp" else HttpMjpegSource)(text, fps=fps)
    if scheme in OPENCV_SCHEMES or text.startswith("/dev/"):
        return OpenCvSource(text, fps=fps, size=size)
    if scheme:
        raise ConfigError(f"Expected a frame source: {SOURCE_KINDS}. Received: {text!r} (unknown scheme {scheme}://)")
    path = Path(text)
    if text and (GLOB_CHARACTERS & set(text) or path.is_dir()):
        refuse_size(size, text)
        return FolderSource(replay_paths(text), name=text, fps=fps)
    if text and path.is_file():
        if path.suffix.lower() in IMAGE_SUFFIXES_DEFAULT:
            refuse_size(size, text)
            return FolderSource([path], name=text, fps=fps)
        return OpenCvSource(text, fps=fps, size=size)
    raise ConfigError(f"Expected a frame source: {SOURCE_KINDS}. Received: {text!r}, which is no such file or folder")


def frame_input(frame: Frame, spec: InputSpec, max_pixels: Optional[int] = MAX_PIXELS_DEFAULT) -> np.ndarray:
    """The model's input for a frame: the same uint8 (height, width, channels) as ``run.py classify`` gives for the
    same decoded image (for a JPEG frame, for its bytes written to a file); ``ImageError`` over ``max_pixels``."""
    return prepare_image(frame.image, spec, max_pixels=max_pixels, name=f"frame {frame.seq}")
