"""Charts drawn with Pillow (no plotting dependency): bits per decoder layer, training curves.

Each function returns the PIL image and, given `path`, also writes it as a PNG (atomically).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from .images import save_png

__all__ = [
    "bits_per_layer",
    "bits_per_resolution",
    "kl_caption",
    "kl_chart",
    "line_chart",
    "roc_chart",
    "resolution_labels",
]

# Alternating colours for the groups of layers that share a resolution.
_GROUP_COLOURS = ("steelblue", "darkorange")


def bits_per_layer(kl: torch.Tensor) -> torch.Tensor:
    """Mean information per decoder layer in **bits per image**, (L,), from KL in nats: (N, L) or (L,).
    `kl` is usually `model.likelihood(images).kl`."""
    kl = torch.as_tensor(kl, dtype=torch.float64)
    if kl.ndim == 2:
        kl = kl.mean(dim=0)
    if kl.ndim != 1:
        raise ValueError(f"kl must have shape (N, L) or (L,), got {tuple(kl.shape)}")
    return kl / math.log(2)


def bits_per_resolution(kl: torch.Tensor, resolutions: Sequence[int]) -> dict[int, float]:
    """Total bits per image held by the layers of each resolution, {resolution: bits}, lowest first."""
    bits = bits_per_layer(kl)
    if len(resolutions) != len(bits):
        raise ValueError(f"got {len(resolutions)} resolutions for {len(bits)} layers")
    totals: dict[int, float] = {}
    for r, b in zip(resolutions, bits.tolist(), strict=False):
        totals[r] = totals.get(r, 0.0) + b
    return dict(sorted(totals.items()))


def bar_layout(num_layers: int, width: int, margin: int) -> list[tuple[int, int]]:
    """(left, right) pixel columns of each layer's bar in a chart `width` pixels wide."""
    span = (width - 2 * margin) / num_layers
    return [
        (
            int(margin + i * span + 0.15 * span),
            max(int(margin + i * span + 0.15 * span), int(margin + (i + 1) * span - 0.15 * span) - 1),
        )
        for i in range(num_layers)
    ]


def kl_caption(kl: torch.Tensor, resolutions: Sequence[int]) -> str:
    """The chart's caption: total bits per image and each resolution's share of them."""
    totals = bits_per_resolution(kl, resolutions)
    total = sum(totals.values())
    shares = "   ".join(f"{r}x{r}: {t / total:.0%}" if total > 0 else f"{r}x{r}: -" for r, t in totals.items())
    return f"share of {total:.4g} bits per image: {shares}"


def resolution_labels(
    layout: Sequence[tuple[float, float]], resolutions: Sequence[int], y0: float, text_width
) -> list[tuple[tuple[float, float], str]]:
    """Where each resolution group's label goes under the bars: at the group's first bar, in the first of two rows
    where it does not overlap the label before it; a label that fits in neither row is left out (the caption
    gives every resolution's share)."""
    rows_end = [float("-inf"), float("-inf")]
    placed, previous = [], None
    for (left, _), r in zip(layout, resolutions, strict=False):
        if r == previous:
            continue
        previous, text = r, f"{r}x{r}"
        for row in (0, 1):
            if left >= rows_end[row] + 4:
                placed.append(((left, y0 + 6 + 13 * row), text))
                rows_end[row] = left + text_width(text)
                break
    return placed


def kl_chart(
    kl: torch.Tensor,
    resolutions: Sequence[int],
    path: None | str | Path = None,
    *,
    title: str | None = None,
    width: int = 900,
    height: int = 420,
    overwrite: bool = True,
) -> Image.Image:
    """A bar chart of bits per image in each decoder layer (top layer on the left), grouped by resolution.

    `kl`: (N, L) or (L,) nats, e.g. `model.likelihood(images).kl`; `resolutions`: `model.layer_resolutions`.
    Under the bars, each resolution's share of the total rate. Bar heights are linear in bits, from 0.
    """
    bits = bits_per_layer(kl)
    margin, top, bottom = 60, 40, 70
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    y0, y1 = height - bottom, top
    peak = max(float(bits.max()), 1e-9)
    d.line([(margin, y1), (margin, y0), (width - margin, y0)], fill="black")
    d.text((5, y1 - 5), f"{peak:.3g}", fill="black")
    d.text((5, y0 - 10), "0", fill="black")
    d.text((5, 5), title or "bits per layer (per image)", fill="black")
    colour_index, previous = -1, None
    layout = bar_layout(len(bits), width, margin)
    for (x, y), text in resolution_labels(layout, resolutions, y0, d.textlength):
        d.text((x, y), text, fill="black")
    for (left, right), b, r in zip(layout, bits.tolist(), resolutions, strict=False):
        if r != previous:
            colour_index, previous = colour_index + 1, r
        h = max(0.0, b) / peak * (y0 - y1)
        if h >= 1:
            d.rectangle([left, y0 - h, right, y0 - 1], fill=_GROUP_COLOURS[colour_index % 2])
    d.text((margin, height - 30), kl_caption(kl, resolutions), fill="black")
    if path is not None:
        save_png(img, path, overwrite=overwrite)
    return img


def line_chart(
    series: dict[str, Sequence[tuple[float, float]]],
    path: None | str | Path = None,
    *,
    x_label: str = "step",
    width: int = 640,
    height: int = 360,
    overwrite: bool = True,
    x_range: tuple[float, float] | None = None,
    y_range: tuple[float, float] | None = None,
    diagonal: bool = False,
) -> Image.Image:
    """Lines of (x, y) points, one colour per named series, on shared linear axes (non-finite points skipped);
    `x_range` / `y_range` fix the axes, `diagonal` draws the line y = x (a ROC chart's chance level)."""
    pad = 50
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    legend = int(max((measure.textlength(name) for name in series), default=0) + 40)  # beside the plot, never on it
    right = width - pad - legend  # the plot's right edge; the keys stand in the column after it
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    points = [p for s in series.values() for p in s if math.isfinite(p[1])]
    if points:
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        x0, x1 = x_range or (min(xs), max(max(xs), min(xs) + 1))
        yl, yh = y_range or (min(ys), max(max(ys), min(ys) + 1e-6))
        sx = lambda x: pad + (x - x0) / (x1 - x0) * (right - pad)  # noqa: E731
        sy = lambda y: height - pad - (y - yl) / (yh - yl) * (height - 2 * pad)  # noqa: E731
        d.rectangle([pad, pad, right, height - pad], outline="black")
        if diagonal:
            d.line([(sx(x0), sy(x0)), (sx(x1), sy(x1))], fill="lightgray", width=1)
        colours = ("steelblue", "darkorange", "seagreen", "crimson", "purple", "saddlebrown", "teal", "olive")
        for row, (name, s) in enumerate(series.items()):
            colour = colours[row % len(colours)]
            pts = [(sx(x), sy(y)) for x, y in s if math.isfinite(y)]
            if len(pts) > 1:
                d.line(pts, fill=colour, width=2)
            elif pts:
                d.ellipse([pts[0][0] - 3, pts[0][1] - 3, pts[0][0] + 3, pts[0][1] + 3], fill=colour)
            key_x, key_y = right + 10, pad + 4 + 16 * row
            d.line([(key_x, key_y + 6), (key_x + 16, key_y + 6)], fill=colour, width=3)
            d.text((key_x + 22, key_y), name, fill=colour)
        d.text((pad, height - pad + 5), f"{x0:g}", fill="black")
        d.text((right - d.textlength(f"{x1:g}"), height - pad + 5), f"{x1:g}", fill="black")
        d.text(((width - d.textlength(x_label)) / 2, height - pad + 20), x_label, fill="black")
        d.text((5, pad), f"{yh:.3g}", fill="black")
        d.text((5, height - pad - 10), f"{yl:.3g}", fill="black")
    if path is not None:
        save_png(img, path, overwrite=overwrite)
    return img


def roc_chart(
    series: dict[str, Sequence[tuple[float, float]]], path: None | str | Path = None, *, overwrite: bool = True
) -> Image.Image:
    """ROC curves: true positive rate against false positive rate, both 0..1, one named series each."""
    return line_chart(
        series,
        path,
        x_label="false positive rate (x) against true positive rate (y)",
        width=640,
        height=480,
        overwrite=overwrite,
        x_range=(0.0, 1.0),
        y_range=(0.0, 1.0),
        diagonal=True,
    )
