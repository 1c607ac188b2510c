"""Read images into the uint8 (28, 28) arrays the pipelines take."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from cbnet_tl.runtime.errors import ImageError

IMAGE_SIZE = (28, 28)
GRAYSCALE_MODES = ("L", "1")
IMAGE_SUFFIXES_DEFAULT = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"})
# Our own limit, checked from the header before any pixel is decoded: far above a real camera frame
# (a 12 MP sensor gives 4056x3040) and far below Pillow's decompression-bomb limit (about 179 MP).
MAX_PIXELS_DEFAULT = 50_000_000


def load_image(path: Path, *, resize: bool = False, size: Sequence[int] = IMAGE_SIZE,
               max_pixels: int = MAX_PIXELS_DEFAULT) -> np.ndarray:
    """Load one image as uint8 (H, W).

    By default the image must already be grayscale and of the model's size, so that a wrong input
    fails loudly instead of being silently changed. ``resize=True`` converts any mode Pillow reads to
    grayscale (alpha composited onto black) and resizes it. An image of more than ``max_pixels``
    pixels is refused from its header, before it is decoded.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            _check_pixels(path, image.size, max_pixels)
            image.load()
            if resize:
                return _convert(image, size)
            if image.mode not in GRAYSCALE_MODES:
                raise ImageError(
                    f"{path}: expected a grayscale image (mode L). Received mode {image.mode}. "
                    "Convert it, or pass --convert to convert and resize inputs"
                )
            if image.size != tuple(size):
                raise ImageError(
                    f"{path}: expected a {size[0]}x{size[1]} image. Received {image.size[0]}x{image.size[1]}. "
                    "Pass --convert to resize inputs"
                )
            return np.asarray(image.convert("L"), dtype=np.uint8)
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a directory, expected an image file") from None
    except PermissionError:
        raise ImageError(f"{path}: permission denied") from None
    except Image.DecompressionBombError:
        raise ImageError(f"{path}: over the pixel limit of {max_pixels:,} pixels (Pillow refused it as a "
                         "decompression bomb); a real camera frame is far smaller") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        if _is_empty(path):
            raise ImageError(f"{path}: empty file (0 bytes), expected an image") from None
        raise ImageError(f"{path}: not an image Pillow can read, or truncated ({type(error).__name__}: "
                         f"{str(error)[:80]})") from None


def _is_empty(path: Path) -> bool:
    try:
        return path.stat().st_size == 0
    except OSError:
        return False


def _check_pixels(path: Path, size: Sequence[int], max_pixels: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise ImageError(f"{path}: {width}x{height} is {width * height:,} pixels, over the pixel limit of "
                         f"{max_pixels:,} (--max-pixels); refused before decoding")


def _convert(image: Image.Image, size: Sequence[int]) -> np.ndarray:
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, rgba)
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        values = np.asarray(image, dtype=np.float64)
        span = values.max() - values.min()
        values = (values - values.min()) / span * 255.0 if span > 0 else np.zeros_like(values)
        image = Image.fromarray(values.astype(np.uint8), mode="L")
    gray = image.convert("L")
    if gray.size != tuple(size):
        gray = gray.resize(tuple(size), Image.BILINEAR)
    return np.asarray(gray, dtype=np.uint8)


def collect_image_paths(inputs: Iterable[Path]) -> list:
    """Expand directories (sorted, recursively) into image files; keep files as given."""
    suffixes = IMAGE_SUFFIXES_DEFAULT
    paths = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
            if not found:
                raise ImageError(f"{item}: directory holds no images")
            paths.extend(found)
        elif item.exists():
            paths.append(item)
        else:
            raise ImageError(f"{item}: no such file or directory")
    return paths


def load_images(paths: Sequence[Path], *, resize: bool = False, max_pixels: int = MAX_PIXELS_DEFAULT) -> np.ndarray:
    if not paths:
        raise ImageError("No input images given")
    return np.stack([load_image(p, resize=resize, max_pixels=max_pixels) for p in paths])
