"""The build's input spec: what the user asked for, and defaults chosen from the data, said in one line.

Defaults (the README's "Input spec" section says why):

- size: an IDX dataset's own size; for an image folder, the median shorter side of its images, capped at
  ``FOLDER_SIDE_CAP`` (the dense recipes' cost grows with every input value) and at least ``FOLDER_SIDE_MIN``;
- colour: RGB when any image is in a colour mode (a palette counts only if it holds a colour), else grayscale;
- resize ``pad`` (letterbox: the whole object stays in view, undistorted), filter ``bilinear`` (antialiased);
- background: for an IDX dataset, the colour of its images' borders (black for the MNIST family, so a
  padded digit looks like the training digits); for a folder, white (what drawings and clip art with
  transparency are made to be seen on).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from cbnet_tl.runtime.errors import ConfigError
from cbnet_tl.runtime.images import MAX_PIXELS_DEFAULT
from cbnet_tl.runtime.preprocess import DEFAULT_BACKGROUND, DEFAULT_RESAMPLE, DEFAULT_RESIZE, InputSpec

COLOURS = ("auto", "rgb", "grayscale")
FOLDER_SIDE_CAP = 32
FOLDER_SIDE_MIN = 8


@dataclass(frozen=True)
class InputChoice:
    """The user's input options; None (or "auto") lets the build choose from the data."""

    image_size: Optional[tuple] = None  # (height, width)
    colour: str = "auto"
    resize: Optional[str] = None
    background: Optional[str] = None
    resample: str = DEFAULT_RESAMPLE
    strict: bool = False
    max_pixels: int = MAX_PIXELS_DEFAULT

    def __post_init__(self):
        if self.colour not in COLOURS:
            raise ConfigError(f"Expected --color in {list(COLOURS)}. Received: {self.colour!r}")
        if self.max_pixels < 1:
            raise ConfigError(f"Expected --max-pixels >= 1. Received: {self.max_pixels}")


def parse_image_size(text: Optional[str]) -> Optional[tuple]:
    """'32' → (32, 32); '48x64' → (48, 64) as height x width; None → None."""
    if text is None:
        return None
    parts = str(text).lower().replace("×", "x").split("x")
    try:
        sides = [int(p) for p in parts]
    except ValueError:
        sides = []
    if len(sides) not in (1, 2) or min(sides) < 4 or max(sides) > 4096:
        raise ConfigError(f"Expected --image-size N or HxW with sides of 4 to 4096 pixels, such as 32 or 48x64. "
                          f"Received: {text!r}")
    return (sides[0], sides[-1])


def _spec(choice: InputChoice, size: tuple, channels: int, background: str = DEFAULT_BACKGROUND) -> InputSpec:
    return InputSpec(size[0], size[1], channels, choice.resize or DEFAULT_RESIZE, choice.background or background,
                     choice.resample)


def _tail(choice: InputChoice, background_why: str) -> str:
    parts = []
    if choice.resize is None:
        parts.append("resize pad: the default, README 'Input spec'")
    if choice.background is None:
        parts.append(f"background: {background_why}")
    return "; ".join(parts)


def border_colour(images: np.ndarray) -> str:
    """The median colour of the images' outermost pixels, as #rrggbb (uint8 (N, H, W, C) images)."""
    edges = np.concatenate([images[:, 0].reshape(-1, images.shape[-1]), images[:, -1].reshape(-1, images.shape[-1]),
                            images[:, :, 0].reshape(-1, images.shape[-1]), images[:, :, -1].reshape(-1, images.shape[-1])])
    level = np.median(edges, axis=0).astype(int)
    red, green, blue = (int(level[0]),) * 3 if len(level) == 1 else (int(v) for v in level[:3])
    return f"#{red:02x}{green:02x}{blue:02x}"


def choose_for_idx(images: np.ndarray, choice: InputChoice) -> tuple:
    """(spec, one-line reason) for an IDX dataset of grayscale images (N, height, width, 1)."""
    size = choice.image_size or tuple(images.shape[1:3])
    channels = 3 if choice.colour == "rgb" else 1
    spec = _spec(choice, size, channels, border_colour(images[:2000]))
    why = ["size given" if choice.image_size else "the dataset's own size",
           "colour given" if choice.colour != "auto" else "the dataset is grayscale"]
    tail = _tail(choice, "the images' border colour")
    return spec, f"input: {spec.describe()} ({', '.join(why)}{'; ' + tail if tail else ''})"


def choose_for_headers(headers: list, choice: InputChoice) -> tuple:
    """(spec, one-line reason) from the headers of a folder's training images:
    ``(path, label, width, height, mode, colourful)`` each."""
    if not headers:
        raise ConfigError("Expected at least one readable training image to choose the input spec from")
    why = []
    if choice.image_size:
        size = choice.image_size
        why.append("size given")
    else:
        median = int(np.median([min(h[2], h[3]) for h in headers]))
        side = max(FOLDER_SIDE_MIN, min(FOLDER_SIDE_CAP, median))
        size = (side, side)
        why.append(f"median shorter side {median} px" + (f", capped at {FOLDER_SIDE_CAP}" if median > side else "")
                   + "; --image-size to change")
    colourful = sum(1 for h in headers if h[5])
    if choice.colour == "auto":
        channels = 3 if colourful else 1
        modes = {}
        for h in headers:
            modes[h[4]] = modes.get(h[4], 0) + 1
        mode_text = ", ".join(f"{m} {n}" for m, n in sorted(modes.items(), key=lambda kv: -kv[1]))
        why.append(f"{colourful} of {len(headers)} images in colour (modes {mode_text})")
    else:
        channels = 3 if choice.colour == "rgb" else 1
        why.append("colour given")
    spec = _spec(choice, size, channels)
    tail = _tail(choice, "white, what transparent drawings are made to be seen on")
    return spec, f"input: {spec.describe()} ({'; '.join(why)}{'; ' + tail if tail else ''})"
