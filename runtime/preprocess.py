"""The input spec and the one function that turns any image into a model's input.

A build decides one ``InputSpec`` (size, channels, how to fit the image, what transparent pixels are
composited onto, the resampling filter) and stores it as ``manifest.json``'s ``input`` object. The build's
loader, ``cbnet-tl run``/``eval`` and the bundle's ``run.py`` all call ``to_model_input`` with it, so the
model sees the same bytes for the same file everywhere.

Pillow only decodes. Everything after decoding (alpha compositing, colour conversion, crop, pad and
resize) is integer arithmetic written here, with filter weights computed in Python floats and rounded to
fixed point: it cannot differ between Pillow versions, numpy versions or CPUs (Pillow's own resize code
changed between releases and differs from OpenCV's).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from cbnet_tl.runtime.errors import ConfigError

RESIZE_MODES = ("crop", "squash", "pad")  # centre crop to the aspect ratio; stretch; letterbox
RESAMPLE_FILTERS = ("bilinear", "box")  # both antialiased: the filter widens by the downscale factor
DEFAULT_RESIZE = "pad"
DEFAULT_BACKGROUND = "#ffffff"
DEFAULT_RESAMPLE = "bilinear"
NAMED_COLOURS = {"white": "#ffffff", "black": "#000000", "gray": "#808080", "grey": "#808080"}
_WEIGHT_BITS = 14  # each pass's weights sum to 2**14; both passes together stay exact in int64
_ROWS_PER_BLOCK = 256  # compositing and colour conversion of big images, a block of rows at a time


def parse_colour(text: str) -> str:
    """'white', 'black', '#rrggbb' or 'R,G,B' → '#rrggbb'."""
    value = NAMED_COLOURS.get(str(text).strip().lower(), str(text).strip().lower())
    if "," in value:
        parts = value.split(",")
        if len(parts) == 3 and all(p.strip().isdigit() and int(p) <= 255 for p in parts):
            return "#" + "".join(f"{int(p):02x}" for p in parts)
    elif len(value) == 7 and value.startswith("#"):
        try:
            int(value[1:], 16)
            return value
        except ValueError:
            pass
    raise ConfigError(f"Expected a colour: white, black, #rrggbb or R,G,B. Received: {text!r}")


def _rgb(colour: str) -> tuple:
    return tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))


@dataclass(frozen=True)
class InputSpec:
    """What every model of a build takes: uint8 pixels (N, height, width, channels), NHWC."""

    height: int
    width: int
    channels: int
    resize: str = DEFAULT_RESIZE
    background: str = DEFAULT_BACKGROUND
    resample: str = DEFAULT_RESAMPLE

    def __post_init__(self):
        for name in ("height", "width"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 4 <= value <= 4096:
                raise ConfigError(f"Expected an input {name} of 4 to 4096 pixels. Received: {value!r}")
        if self.channels not in (1, 3):
            raise ConfigError(f"Expected 1 (grayscale) or 3 (RGB) input channels. Received: {self.channels!r}")
        if self.resize not in RESIZE_MODES:
            raise ConfigError(f"Expected resize in {list(RESIZE_MODES)}. Received: {self.resize!r}")
        if self.resample not in RESAMPLE_FILTERS:
            raise ConfigError(f"Expected resample in {list(RESAMPLE_FILTERS)}. Received: {self.resample!r}")
        object.__setattr__(self, "background", parse_colour(self.background))

    @property
    def shape(self) -> tuple:
        return (self.height, self.width, self.channels)

    @property
    def colour(self) -> str:
        return "rgb" if self.channels == 3 else "grayscale"

    def describe(self) -> str:
        return (f"{self.width}x{self.height} {self.colour}, resize {self.resize} ({self.resample}), "
                f"background {self.background}")

    def to_dict(self) -> dict:
        return {"height": self.height, "width": self.width, "channels": self.channels, "resize": self.resize,
                "background": self.background, "resample": self.resample, "dtype": "uint8", "layout": "NHWC"}

    @classmethod
    def from_dict(cls, data: dict) -> "InputSpec":
        if not isinstance(data, dict):
            raise ConfigError(f"Expected the input spec as an object. Received: {data!r}")
        try:
            return cls(int(data["height"]), int(data["width"]), int(data["channels"]), str(data["resize"]),
                       str(data["background"]), str(data["resample"]))
        except KeyError as missing:
            raise ConfigError(f"The input spec lacks {missing}; rebuild with this cbnet-tl") from None


# --- colour ---------------------------------------------------------------------------------------

def _luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601-2 luma in 16-bit fixed point (the weights Pillow's "L" conversion uses)."""
    r, g, b = (rgb[..., i].astype(np.int32) for i in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 32768) >> 16).astype(np.uint8)[..., None]


def _colour_block(pixels: np.ndarray, alpha, spec: InputSpec) -> np.ndarray:
    if spec.channels == 3 and pixels.shape[-1] == 1:
        pixels = np.repeat(pixels, 3, axis=-1)
    if alpha is not None:
        background = np.asarray(_rgb(spec.background), np.int32)
        if pixels.shape[-1] == 1:
            background = _luma(background[None].astype(np.uint8))[0].astype(np.int32)
        a = alpha.astype(np.int32)[..., None]
        pixels = ((pixels.astype(np.int32) * a + background * (255 - a) + 127) // 255).astype(np.uint8)
    if spec.channels == 1 and pixels.shape[-1] == 3:
        pixels = _luma(pixels)
    return pixels


def _to_colour(pixels: np.ndarray, alpha, spec: InputSpec) -> np.ndarray:
    """Composite onto the background and convert to the spec's channels, a block of rows at a time."""
    if alpha is None and pixels.shape[-1] == spec.channels:
        return pixels
    if pixels.shape[0] <= _ROWS_PER_BLOCK:
        return _colour_block(pixels, alpha, spec)
    out = np.empty((*pixels.shape[:-1], spec.channels), np.uint8)
    for top in range(0, pixels.shape[0], _ROWS_PER_BLOCK):
        rows = slice(top, top + _ROWS_PER_BLOCK)
        out[rows] = _colour_block(pixels[rows], None if alpha is None else alpha[rows], spec)
    return out


# --- geometry -------------------------------------------------------------------------------------

def _round_ratio(numerator: int, denominator: int) -> int:
    """round(numerator / denominator), halves up, in integers."""
    return (2 * numerator + denominator) // (2 * denominator)


def _filter(kind: str, t: float) -> float:
    if kind == "box":
        return 1.0 if -0.5 <= t < 0.5 else 0.0
    t = abs(t)
    return 1.0 - t if t < 1.0 else 0.0


def _weights(in_size: int, out_size: int, kind: str) -> list:
    """Per output index: (first input index, integer weights summing to 2**_WEIGHT_BITS).

    An antialiased filter: when shrinking, its support widens by the factor, so every input pixel counts.
    Pure Python floats (IEEE double, no fused operations), then rounding to fixed point."""
    scale = in_size / out_size
    stretch = max(scale, 1.0)
    support = (0.5 if kind == "box" else 1.0) * stretch
    total = 1 << _WEIGHT_BITS
    out = []
    for i in range(out_size):
        centre = (i + 0.5) * scale
        low = max(int(centre - support + 0.5), 0)
        high = min(int(centre + support + 0.5), in_size)
        raw = [_filter(kind, (x - centre + 0.5) / stretch) for x in range(low, high)]
        if sum(raw) <= 0.0:  # cannot happen for these filters; keep the nearest pixel
            low, raw = min(int(centre), in_size - 1), [1.0]
        norm = sum(raw)
        fixed = [int(round(w / norm * total)) for w in raw]
        fixed[fixed.index(max(fixed))] += total - sum(fixed)
        out.append((low, np.asarray(fixed, np.float64)))
    return out


def resize(pixels: np.ndarray, height: int, width: int, kind: str) -> np.ndarray:
    """uint8 (..., h, w, C) → uint8 (..., height, width, C).

    Integer weights and pixels, multiplied and summed as float64: every product and partial sum is an
    integer below 2**53, so the result is exact whatever order a product sums in (BLAS, CPU)."""
    h, w, channels = pixels.shape[-3:]
    if (h, w) == (height, width):
        return pixels
    lead = pixels.shape[:-3]
    rows = pixels.reshape(*lead, h, w * channels)
    tall = np.empty((*lead, height, w * channels), np.float64)
    for i, (low, fixed) in enumerate(_weights(h, height, kind)):  # only each output row's band is read
        tall[..., i, :] = fixed @ rows[..., low:low + len(fixed), :].astype(np.float64)
    across = np.zeros((w, width), np.float64)
    for j, (low, fixed) in enumerate(_weights(w, width, kind)):
        across[low:low + len(fixed), j] = fixed
    values = tall.reshape(*lead, height, w, channels).swapaxes(-1, -2) @ across  # (..., height, C, width)
    values = np.floor((values + float(1 << (2 * _WEIGHT_BITS - 1))) / float(1 << (2 * _WEIGHT_BITS)))
    return np.clip(values, 0, 255).astype(np.uint8).swapaxes(-1, -2)


def fit(pixels: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Crop, squash or pad uint8 (..., h, w, C) to the spec's size (already in the spec's channels)."""
    h, w = pixels.shape[-3], pixels.shape[-2]
    height, width = spec.height, spec.width
    if spec.resize == "crop" and w * height != h * width:
        if w * height > h * width:  # wider than the target: keep the middle columns
            keep = max(1, _round_ratio(h * width, height))
            left = (w - keep) // 2
            pixels = pixels[..., :, left:left + keep, :]
        else:
            keep = max(1, _round_ratio(w * height, width))
            top = (h - keep) // 2
            pixels = pixels[..., top:top + keep, :, :]
    elif spec.resize == "pad" and w * height != h * width:
        if w * height > h * width:
            inner_w, inner_h = width, max(1, _round_ratio(h * width, w))
        else:
            inner_w, inner_h = max(1, _round_ratio(w * height, h)), height
        inner = resize(pixels, inner_h, inner_w, spec.resample)
        background = np.asarray(_rgb(spec.background), np.uint8)
        if spec.channels == 1:
            background = _luma(background[None])[0]
        canvas = np.empty((*pixels.shape[:-3], height, width, spec.channels), np.uint8)
        canvas[...] = background
        top, left = (height - inner_h) // 2, (width - inner_w) // 2
        canvas[..., top:top + inner_h, left:left + inner_w, :] = inner
        return canvas
    return resize(pixels, height, width, spec.resample)


def to_model_input(pixels: np.ndarray, spec: InputSpec, alpha=None) -> np.ndarray:
    """uint8 pixels (h, w), (h, w, 1) or (h, w, 3), with an optional uint8 alpha (h, w) → the model's
    input (height, width, channels). Also takes a stack (N, h, w, C) without alpha."""
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8:
        raise ConfigError(f"Expected uint8 pixels. Received dtype {pixels.dtype}")
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.ndim not in (3, 4) or pixels.shape[-1] not in (1, 3):
        raise ConfigError(f"Expected pixels (h, w), (h, w, 1|3) or (N, h, w, 1|3). Received {pixels.shape}")
    if alpha is not None and pixels.ndim != 3:
        raise ConfigError("Expected an alpha channel only with a single image")
    red, green, blue = _rgb(spec.background)
    if alpha is None and pixels.shape[-1] == 1 and spec.channels == 3 and red == green == blue:
        # gray in, RGB out: fit in one channel, then repeat it (the same bytes for a third of the work)
        return np.repeat(fit(pixels, replace(spec, channels=1)), 3, axis=-1)
    return fit(_to_colour(pixels, alpha, spec), spec)


def to_model_inputs(stack: np.ndarray, spec: InputSpec, chunk: int = 2048) -> np.ndarray:
    """A stack of uint8 images (N, h, w) or (N, h, w, C) → (N, height, width, channels), in chunks."""
    stack = np.asarray(stack)
    if stack.ndim == 3:
        stack = stack[..., None]
    out = np.empty((len(stack), *spec.shape), np.uint8)
    for start in range(0, len(stack), chunk):
        out[start:start + chunk] = to_model_input(stack[start:start + chunk], spec)
    return out
