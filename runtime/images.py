"""Read image files into the uint8 arrays the pipelines take, through the build's input spec.

Pillow decodes (and applies a JPEG's EXIF orientation, an exact transpose); ``preprocess.to_model_input``
does the rest. Any mode Pillow reads is taken: 1, L, LA, P (with or without transparency), PA, RGB,
RGBA, CMYK, 16-bit and 32-bit grayscale, float.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cbnet_tl.runtime.errors import ImageError
from cbnet_tl.runtime.preprocess import InputSpec, to_model_input

IMAGE_SUFFIXES_DEFAULT = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"})
# Our own limit, checked from the header before any pixel is decoded: above a 48 MP phone or camera frame
# (8064x6048 is 48.8 MP) and below Pillow's decompression-bomb limit (about 179 MP).
MAX_PIXELS_DEFAULT = 64_000_000
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_SIXTEEN_BIT = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})


def _arrays(image: Image.Image) -> tuple:
    """A decoded image → (uint8 pixels (h, w, 1|3), uint8 alpha (h, w) or None), without resampling."""
    mode = image.mode
    if mode == "P" or mode == "PA":
        has_alpha = mode == "PA" or "transparency" in image.info or image.palette.mode == "RGBA"
        image, mode = image.convert("RGBA" if has_alpha else "RGB"), ("RGBA" if has_alpha else "RGB")
    if mode in ("L", "RGB"):
        array = np.asarray(image)
        return (array[..., None] if array.ndim == 2 else array), None
    if mode in ("LA", "RGBA"):
        array = np.asarray(image)
        return np.ascontiguousarray(array[..., :-1]), np.ascontiguousarray(array[..., -1])
    if mode == "RGBX":
        return np.ascontiguousarray(np.asarray(image)[..., :3]), None
    if mode == "1":
        return (np.asarray(image, dtype=np.uint8) * 255)[..., None], None
    if mode == "CMYK":
        cmyk = np.asarray(image).astype(np.int32)
        white = 255 - cmyk[..., 3:4]
        return (((255 - cmyk[..., :3]) * white + 127) // 255).astype(np.uint8), None
    if mode in _SIXTEEN_BIT:  # 16-bit grayscale (Pillow opens it as I;16 or I): 0..65535 → 0..255
        values = np.clip(np.asarray(image).astype(np.int64), 0, 65535)
        return ((values * 255 + 32767) // 65535).astype(np.uint8)[..., None], None
    if mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0)
        return np.clip(np.round(values), 0, 255).astype(np.uint8)[..., None], None
    if mode in ("La", "RGBa"):  # premultiplied alpha
        return _arrays(image.convert("RGBA"))
    return _arrays(image.convert("RGB"))  # YCbCr, LAB, HSV: Pillow's own conversion


@contextlib.contextmanager
def _opened(path: Path, max_pixels: Optional[int]) -> Iterator[Image.Image]:
    """The opened image, its size checked against ``max_pixels`` from the header; any problem with the file,
    in the block too (decoding, a truncated stream), is one ``ImageError`` line naming it. Pillow's own warnings
    (its decompression-bomb warning, notices about malformed tags), in the block too, are kept out of the output:
    that one line, or nothing for a file that is read, is the message."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            warnings.filterwarnings("ignore", module=r"PIL(\.|$)")
            with Image.open(path) as image:
                if max_pixels is not None:
                    check_pixels(path, image.size, max_pixels)
                yield image
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a directory, expected an image file") from None
    except PermissionError:
        raise ImageError(f"{path}: permission denied") from None
    except Image.DecompressionBombError as error:
        raise _refused_by_pillow(path, error, max_pixels) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        if _is_empty(path):
            raise ImageError(f"{path}: empty file (0 bytes), expected an image") from None
        raise ImageError(f"{path}: not an image Pillow can read, or truncated ({type(error).__name__}: "
                         f"{str(error)[:80]})") from None


def _oriented_arrays(image: Image.Image) -> tuple:
    image.load()
    oriented = ImageOps.exif_transpose(image)
    return _arrays(oriented if oriented is not None else image)


def decode(path: Path, max_pixels: int = MAX_PIXELS_DEFAULT) -> tuple:
    """(pixels, alpha) of one file, oriented as its EXIF tag says; one ``ImageError`` line for any problem."""
    path = Path(path)
    with _opened(path, max_pixels) as image:
        return _oriented_arrays(image)


def load_image(path: Path, spec: InputSpec, *, max_pixels: int = MAX_PIXELS_DEFAULT) -> np.ndarray:
    """One file as the model's input: uint8 (height, width, channels) of ``spec``."""
    pixels, alpha = decode(path, max_pixels)
    return to_model_input(pixels, spec, alpha)


def prepare_image(image: Image.Image, spec: InputSpec, *, max_pixels: Optional[int] = MAX_PIXELS_DEFAULT,
                  name: str = "image") -> np.ndarray:
    """An image Pillow has opened or decoded (a camera frame, a posted body) as the model's input: the same bytes
    ``load_image`` gives for a file that decodes to it. ``name`` opens the ``ImageError`` of an image over
    ``max_pixels``."""
    if max_pixels is not None:
        check_pixels(name, image.size, max_pixels)
    pixels, alpha = _oriented_arrays(image)
    return to_model_input(pixels, spec, alpha)


def load_images(paths: Sequence[Path], spec: InputSpec, *, max_pixels: int = MAX_PIXELS_DEFAULT) -> np.ndarray:
    if not paths:
        raise ImageError("No input images given")
    return np.stack([load_image(p, spec, max_pixels=max_pixels) for p in paths])


def header(path: Path, max_pixels: Optional[int] = MAX_PIXELS_DEFAULT) -> tuple:
    """(width, height, mode, colourful) from the header alone; ``ImageError`` if unreadable or too large.
    ``colourful`` is False for the grayscale modes and for palettes whose entries are all gray."""
    path = Path(path)
    with _opened(path, max_pixels) as image:
        colourful = image.mode not in GRAY_MODES
        if image.mode in ("P", "PA") and image.palette is not None:
            palette = np.frombuffer(image.palette.tobytes(), np.uint8)
            width = len(image.palette.mode)
            if width >= 3 and palette.size >= width:
                entries = palette[: palette.size // width * width].reshape(-1, width)
                colourful = bool(np.any(entries[:, 0] != entries[:, 1]) or np.any(entries[:, 1] != entries[:, 2]))
        return image.size[0], image.size[1], image.mode, colourful


def as_pil(image: np.ndarray) -> Image.Image:
    """A model-input array (H, W, 1|3) as a Pillow image (L or RGB), e.g. to save a sample or a conversion."""
    image = np.asarray(image, dtype=np.uint8)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    return Image.fromarray(image, mode="L" if image.ndim == 2 else "RGB")


def _is_empty(path: Path) -> bool:
    try:
        return path.stat().st_size == 0
    except OSError:
        return False


def check_pixels(path: Path, size: Sequence[int], max_pixels: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise ImageError(_over_limit(path, _our_limit(max_pixels), f"{width}x{height} is {width * height:,} pixels"))


def _our_limit(max_pixels: int) -> str:
    return f"the pixel limit of {max_pixels:,} (--max-pixels)"


def _over_limit(path: Path, limit: str, size: str) -> str:
    return f"{path}: over {limit}: {size}; refused before decoding"


def _refused_by_pillow(path: Path, error: Exception, max_pixels: Optional[int]) -> ImageError:
    """Pillow's ``DecompressionBombError`` (it refuses more than twice ``Image.MAX_IMAGE_PIXELS`` while opening,
    before our own check) as our one line: our limit when it is the lower one, else Pillow's."""
    found = re.search(r"\((\d+) pixels\)", str(error))
    size = f"{int(found.group(1)):,} pixels" if found else "too many pixels"
    pillow_limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
    if max_pixels is not None and max_pixels < pillow_limit:
        return ImageError(_over_limit(path, _our_limit(max_pixels), size))
    return ImageError(_over_limit(path, f"Pillow's decompression-bomb limit of {pillow_limit:,} pixels", size))


def error_reason(error: ImageError, path: Path) -> str:
    """An ``ImageError``'s text without the file name it opens with: "PATH: reason" → "reason"."""
    text, prefix = str(error), f"{Path(path)}: "
    return text[len(prefix):] if text.startswith(prefix) else text


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
