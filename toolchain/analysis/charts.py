"""Small PNG charts drawn with Pillow, so reports need no plotting library and no JavaScript."""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]
WIDTH, HEIGHT, MARGIN = 720, 360, 60


def _font():
    return ImageFont.load_default()


def _axes(draw: ImageDraw.ImageDraw, title: str, ylabel: str, top: float) -> None:
    draw.text((MARGIN, 10), title, fill="black", font=_font())
    draw.line([(MARGIN, MARGIN), (MARGIN, HEIGHT - MARGIN), (WIDTH - 20, HEIGHT - MARGIN)], fill="black")
    for i in range(5):
        value = top * i / 4
        y = HEIGHT - MARGIN - (HEIGHT - 2 * MARGIN) * i / 4
        draw.line([(MARGIN - 4, y), (WIDTH - 20, y)], fill="#dddddd")
        draw.text((4, y - 6), f"{value:.3g}", fill="black", font=_font())
    draw.text((4, MARGIN - 30), ylabel, fill="black", font=_font())


def _legend(draw, names: Sequence[str]) -> None:
    x = WIDTH - 200
    for i, name in enumerate(names):
        y = 12 + 14 * i
        draw.rectangle([x, y, x + 10, y + 10], fill=PALETTE[i % len(PALETTE)])
        draw.text((x + 16, y - 1), name, fill="black", font=_font())


def bar_chart(groups: Sequence[str], series: dict, title: str, ylabel: str) -> Image.Image:
    """Grouped bars: one group per x label, one bar per series; ``None`` values are left out."""
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    values = [v for vs in series.values() for v in vs if v is not None]
    top = max(values) * 1.15 if values and max(values) > 0 else 1.0
    _axes(draw, title, ylabel, top)
    plot_width = WIDTH - 20 - MARGIN
    group_width = plot_width / max(1, len(groups))
    bar_width = group_width * 0.8 / max(1, len(series))
    for g, group in enumerate(groups):
        x0 = MARGIN + g * group_width + group_width * 0.1
        for s, (name, vs) in enumerate(series.items()):
            value = vs[g]
            if value is None:
                continue
            height = (HEIGHT - 2 * MARGIN) * value / top
            left = x0 + s * bar_width
            draw.rectangle([left, HEIGHT - MARGIN - height, left + bar_width - 2, HEIGHT - MARGIN],
                           fill=PALETTE[s % len(PALETTE)])
            draw.text((left, HEIGHT - MARGIN - height - 12), f"{value:.3g}", fill="black", font=_font())
        draw.text((x0, HEIGHT - MARGIN + 8), group, fill="black", font=_font())
    _legend(draw, list(series))
    return image


def line_chart(x: Sequence[float], series: dict, title: str, xlabel: str, ylabel: str,
               markers: Optional[dict] = None) -> Image.Image:
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    values = [v for vs in series.values() for v in vs if v is not None]
    top = max(values) * 1.15 if values and max(values) > 0 else 1.0
    _axes(draw, title, ylabel, top)
    x = np.asarray(x, dtype=float)
    span = (x.max() - x.min()) or 1.0

    def px(xv, yv):
        return (MARGIN + (WIDTH - 40 - MARGIN) * (xv - x.min()) / span, HEIGHT - MARGIN - (HEIGHT - 2 * MARGIN) * yv / top)

    for s, (name, vs) in enumerate(series.items()):
        points = [px(a, b) for a, b in zip(x, vs) if b is not None]
        color = PALETTE[s % len(PALETTE)]
        if len(points) > 1:
            draw.line(points, fill=color, width=2)
        for p in points:
            draw.ellipse([p[0] - 3, p[1] - 3, p[0] + 3, p[1] + 3], fill=color)
    for xv in x:
        draw.text((px(xv, 0)[0] - 10, HEIGHT - MARGIN + 8), f"{xv:.0f}", fill="black", font=_font())
    draw.text((WIDTH // 2 - 40, HEIGHT - 24), xlabel, fill="black", font=_font())
    _legend(draw, list(series))
    return image


def scatter_chart(points: Sequence[tuple], title: str, xlabel: str, ylabel: str, footer: str = "") -> Image.Image:
    """Labelled points ``(label, x, y, group)``; the y axis spans the points' range (accuracy-vs-time views)."""
    image = Image.new("RGB", (WIDTH, HEIGHT + 20), "white")
    draw = ImageDraw.Draw(image)
    xs = np.asarray([p[1] for p in points], dtype=float)
    ys = np.asarray([p[2] for p in points], dtype=float)
    x_top = xs.max() * 1.15 if len(xs) and xs.max() > 0 else 1.0
    y_low, y_high = (ys.min(), ys.max()) if len(ys) else (0.0, 1.0)
    pad = max((y_high - y_low) * 0.15, 0.5)
    y_low, y_high = y_low - pad, y_high + pad
    draw.text((MARGIN, 10), title, fill="black", font=_font())
    draw.line([(MARGIN, MARGIN), (MARGIN, HEIGHT - MARGIN), (WIDTH - 20, HEIGHT - MARGIN)], fill="black")

    def px(xv, yv):
        return (MARGIN + (WIDTH - 40 - MARGIN) * xv / x_top,
                HEIGHT - MARGIN - (HEIGHT - 2 * MARGIN) * (yv - y_low) / (y_high - y_low))

    for i in range(5):
        yv = y_low + (y_high - y_low) * i / 4
        y = px(0, yv)[1]
        draw.line([(MARGIN - 4, y), (WIDTH - 20, y)], fill="#dddddd")
        draw.text((4, y - 6), f"{yv:.3g}", fill="black", font=_font())
        xv = x_top * i / 4
        draw.text((px(xv, y_low)[0] - 10, HEIGHT - MARGIN + 8), f"{xv:.3g}", fill="black", font=_font())
    groups = list(dict.fromkeys(p[3] for p in points))
    placed: list = []
    for label, xv, yv, group in points:
        x, y = px(xv, yv)
        color = PALETTE[groups.index(group) % len(PALETTE)]
        draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=color)
        ty = y - 6
        while any(abs(ty - py) < 12 and abs(x - px_) < 90 for px_, py in placed):  # keep labels apart
            ty += 12
        placed.append((x, ty))
        draw.text((x + 6, ty), label, fill="black", font=_font())
    draw.text((4, MARGIN - 30), ylabel, fill="black", font=_font())
    draw.text((WIDTH // 2 - 60, HEIGHT - 30), xlabel, fill="black", font=_font())
    draw.text((MARGIN, HEIGHT - 4), footer, fill="#555555", font=_font())
    _legend(draw, groups)
    return image


def image_grid(rows: Sequence[Sequence[np.ndarray]], scale: int = 3, gap: int = 4) -> Image.Image:
    """uint8 images (H, W, C), grayscale or RGB, laid out in rows (e.g. input, converted), enlarged
    ``scale`` times; RGB images stay in colour."""
    num_rows, num_cols = len(rows), max(len(r) for r in rows)
    first = np.asarray(rows[0][0])
    height, width = first.shape[0] * scale, first.shape[1] * scale
    mode = "RGB" if first.ndim == 3 and first.shape[-1] == 3 else "L"
    image = Image.new(mode, (num_cols * (width + gap) + gap, num_rows * (height + gap) + gap), "white")
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            tile = np.asarray(tile, dtype=np.uint8)
            tile = tile[..., 0] if mode == "L" and tile.ndim == 3 else tile
            picture = Image.fromarray(tile, mode=mode).resize((width, height), Image.NEAREST)
            image.paste(picture, (gap + c * (width + gap), gap + r * (height + gap)))
    return image
