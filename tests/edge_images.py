"""Images in the modes users' folders hold, made by Pillow in the tests (no file is committed):
a JPEG with an EXIF rotation, RGBA, a palette with transparency, LA, 16-bit grayscale, CMYK, bilevel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

EXIF_ORIENTATION = 0x0112


def _gradient(width: int, height: int) -> np.ndarray:
    x = np.linspace(0, 255, width, dtype=np.float64)[None, :]
    y = np.linspace(0, 255, height, dtype=np.float64)[:, None]
    return np.stack([np.broadcast_to(x, (height, width)), np.broadcast_to(y, (height, width)),
                     np.full((height, width), 90.0)], axis=-1).astype(np.uint8)


def exif_rotated_jpeg(path: Path) -> Path:
    """60 wide x 40 high, left half red, right half blue, tagged 'rotate 90° clockwise to display'."""
    pixels = np.zeros((40, 60, 3), np.uint8)
    pixels[:, :30] = (220, 20, 20)
    pixels[:, 30:] = (20, 20, 220)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    Image.fromarray(pixels).save(path, format="JPEG", quality=95, exif=exif.tobytes())
    return path


def rgba_png(path: Path) -> Path:
    """50x30, transparent, with an opaque green square and a half-transparent red bar."""
    pixels = np.zeros((30, 50, 4), np.uint8)
    pixels[5:25, 5:25] = (0, 255, 0, 255)
    pixels[5:25, 30:45] = (255, 0, 0, 128)
    Image.fromarray(pixels, mode="RGBA").save(path)
    return path


def palette_png(path: Path) -> Path:
    """A palette image whose index 0 is transparent."""
    indices = np.zeros((36, 24), np.uint8)
    indices[6:30, 4:20] = 1
    indices[10:20, 8:16] = 2
    image = Image.fromarray(indices, mode="P")
    image.putpalette([0, 0, 0, 250, 200, 0, 0, 0, 180] + [0] * (253 * 3))
    image.save(path, transparency=0)
    return path


def la_png(path: Path) -> Path:
    gray = np.tile(np.linspace(0, 255, 40, dtype=np.uint8), (20, 1))
    alpha = np.zeros((20, 40), np.uint8)
    alpha[:, 10:] = 128
    alpha[:, 25:] = 255
    Image.fromarray(np.stack([gray, alpha], axis=-1), mode="LA").save(path)
    return path


def gray16_png(path: Path) -> Path:
    values = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (48, 1))
    Image.frombytes("I;16", (values.shape[1], values.shape[0]), values.astype("<u2").tobytes()).save(path)
    return path


def cmyk_jpeg(path: Path) -> Path:
    rgb = Image.fromarray(_gradient(45, 70))
    rgb.convert("CMYK").save(path, format="JPEG", quality=95)
    return path


def cmyk_tiff(path: Path) -> Path:
    """Lossless CMYK: cyan, magenta, yellow and black quarters."""
    pixels = np.zeros((20, 20, 4), np.uint8)
    pixels[:10, :10, 0] = 255
    pixels[:10, 10:, 1] = 255
    pixels[10:, :10, 2] = 255
    pixels[10:, 10:, 3] = 255
    Image.fromarray(pixels, mode="CMYK").save(path, format="TIFF")
    return path


def bilevel_png(path: Path) -> Path:
    pixels = np.zeros((30, 30), bool)
    pixels[::3] = True
    Image.fromarray(pixels).save(path)
    return path


MAKERS = {
    "exif.jpg": exif_rotated_jpeg, "rgba.png": rgba_png, "palette.png": palette_png, "la.png": la_png,
    "gray16.png": gray16_png, "cmyk.jpg": cmyk_jpeg, "cmyk.tif": cmyk_tiff, "bilevel.png": bilevel_png,
}


def make_all(folder: Path) -> list:
    folder.mkdir(parents=True, exist_ok=True)
    return [maker(folder / name) for name, maker in MAKERS.items()]


if __name__ == "__main__":  # scripts/arm64_check.py makes them for its parity step: python edge_images.py OUT
    import sys

    make_all(Path(sys.argv[1]))
