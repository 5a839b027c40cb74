"""The paper's figures as pictures (uint8 (H, W, 3) arrays; the commands write them).

* `progression_strip` — Fig. 4: the raw input, the image after steps 1, 5, 10, 15 and 20 of
  the search (each with its guider score), optionally the target (expert C), and the strategy
  line underneath. Drawn from a search's trajectory: nothing is searched again.
* `sweep_plot` — Fig. 5: histogram intersection with the target at every step, one line per
  learning rate, one panel per statistic (and the guider's score), with a row of the final
  images per rate under it.

Drawn with Pillow (already a dependency) rather than matplotlib: a few lines and labels do not
justify another library. Pillow's default font lacks "×", so texts use "x".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from common.images import to_uint8
from piea_jax.enhance import render, resize_preview
from piea_jax.params import FILTER_ORDER

PROGRESSION_STEPS = (1, 5, 10, 15, 20)
THUMBNAIL_HEIGHT = 160
# Line colours of `sweep_plot`, one per learning rate (matplotlib's "tab10" cycle).
COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2")
_PAD, _LABEL_H, _LINE_H = 6, 20, 18


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size only.
        return ImageFont.load_default()


def _wrap(text: str, font, width: int) -> list[str]:
    """Greedy wrap at ", " so that each line fits `width` pixels."""
    lines: list[str] = []
    for part in text.split(", "):
        candidate = f"{lines[-1]}, {part}" if lines else part
        if lines and font.getlength(candidate) <= width:
            lines[-1] = candidate
        else:
            lines.append(part)
    return lines


def thumbnail(image, height: int = THUMBNAIL_HEIGHT) -> np.ndarray:
    """ONE image (H, W, 3) in [0, 1] resized to `height` (aspect kept; never enlarged)."""
    h, w = image.shape[:2]
    if h <= height:
        return np.asarray(image, np.float32)
    return np.asarray(resize_preview(image, (height, max(1, round(w * height / h)))))


def labelled_row(tiles: Sequence[tuple[str, np.ndarray]], text: str = "") -> np.ndarray:
    """Images of one height side by side, each under its label, with `text` (wrapped at ", ")
    underneath -> uint8 (H, W, 3) on white."""
    font = _font(13)
    height = max(t.shape[0] for _, t in tiles)
    width = _PAD + sum(t.shape[1] + _PAD for _, t in tiles)
    lines = _wrap(text.replace("×", "x"), font, width - 2 * _PAD) if text else []
    total_height = _LABEL_H + height + 3 * _PAD + _LINE_H * len(lines)
    canvas = Image.new("RGB", (width, total_height), "white")
    draw = ImageDraw.Draw(canvas)
    x = _PAD
    for label, tile in tiles:
        draw.text((x, _PAD), label, fill="black", font=font)
        canvas.paste(Image.fromarray(to_uint8(tile)), (x, _PAD + _LABEL_H))
        x += tile.shape[1] + _PAD
    for k, line in enumerate(lines):
        draw.text((_PAD, 2 * _PAD + _LABEL_H + height + k * _LINE_H), line, fill="black", font=font)
    return np.asarray(canvas)


def progression_strip(
    image,
    trajectory: Mapping[str, object],
    scores,
    strategy: str,
    *,
    order: Sequence[str] = FILTER_ORDER,
    target=None,
    target_label: str = "Expert C",
) -> np.ndarray:
    """Paper Fig. 4 as one picture: the raw input, then the image after steps 1, 5, 10, 15, 20
    (those that exist, plus the last), each labelled with its score, optionally the target,
    and the strategy line.

    Args:
      image: the input (H, W, 3) in [0, 1].
      trajectory: physical parameters at steps 0..M, {name: (M + 1, ...)}
        (`EnhanceResult.trajectory.params` of one image).
      scores: (M + 1,) guider scores at steps 0..M.
      strategy: the readable strategy line (`piea_jax.describe`).
      order: the filter chain.
      target: optional (H', W', 3) image shown last (e.g. expert C).
      target_label: its label.

    Returns:
      uint8 (H, W, 3). Tiles are thumbnails 160 px high, rendered from the thumbnail with each
      step's parameters (the filters act per pixel, so this is the image at that step, smaller).
    """
    steps = len(scores) - 1
    shown = [t for t in PROGRESSION_STEPS if t < steps] + [steps]
    thumb = thumbnail(image)
    tiles = [("Raw", thumb)]
    for t in shown:
        params = jax.tree.map(lambda p, t=t: np.asarray(p)[t], dict(trajectory))
        label = f"{t} step{'s' if t > 1 else ''} · S {float(scores[t]):.2f}"
        tiles.append((label, np.asarray(render(thumb, params, tuple(order)))))
    if target is not None:
        tiles.append((target_label, thumbnail(target)))
    return labelled_row(tiles, strategy)


def _nice_ticks(lo: float, hi: float, count: int = 5, *, integer: bool = False) -> np.ndarray:
    """Round tick values covering [lo, hi], about `count` of them (whole numbers if
    `integer`)."""
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    raw = max((hi - lo) / count, 1.0) if integer else (hi - lo) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    return np.arange(math.floor(lo / step), math.ceil(hi / step) + 1) * step


def _panel(draw, box, title, x_values, curves, colours, font) -> None:
    """One line chart in `box` (left, top, right, bottom): axes, ticks, a line per curve."""
    left, top, right, bottom = box
    ticks = _nice_ticks(float(np.min(curves)), float(np.max(curves)))
    lo, hi = float(ticks[0]), float(ticks[-1])
    x0, x1 = left + 44, right - 8
    y0, y1 = top + 22, bottom - 34
    last = max(x_values[-1], 1)
    to_x = lambda x: x0 + (x1 - x0) * x / last  # noqa: E731
    to_y = lambda y: y1 - (y1 - y0) * (y - lo) / (hi - lo)  # noqa: E731
    draw.text((x0, top + 2), title, fill="black", font=font)
    decimals = max(0, -math.floor(math.log10(ticks[1] - ticks[0]))) if len(ticks) > 1 else 1
    for tick in ticks:
        y = to_y(tick)
        draw.line((x0 - 3, y, x0, y), fill="black")
        draw.line((x0 + 1, y, x1 - 1, y), fill="#e8e8e8")
        draw.text((left, y - 7), f"{tick:.{decimals}f}", fill="black", font=font)
    draw.rectangle((x0, y0, x1, y1), outline="black")  # over the grid lines
    step_ticks = _nice_ticks(0, last, 4, integer=True)
    for step in step_ticks[step_ticks <= last]:
        x = to_x(step)
        draw.line((x, y1, x, y1 + 3), fill="black")
        draw.text((x - 4, y1 + 5), f"{step:g}", fill="black", font=font)
    draw.text(((x0 + x1) / 2 - 12, bottom - 14), "step", fill="black", font=font)
    for curve, colour in zip(curves, colours, strict=True):
        points = [(to_x(x), to_y(float(y))) for x, y in zip(x_values, curve, strict=True)]
        draw.line(points, fill=colour, width=2)


def sweep_plot(
    rates: Sequence[float],
    panels: Mapping[str, np.ndarray],
    *,
    title: Sequence[str] = (),
    images: Sequence[tuple[str, np.ndarray]] = (),
) -> np.ndarray:
    """Paper Fig. 5: one line chart per panel, one line per learning rate, over steps 0..M.

    Args:
      rates: the K learning rates (legend).
      panels: panel title -> (K, M + 1) values (e.g. "luminance (%)" -> intersections in %).
      title: lines of text above the charts (what was measured, on which data, guider, seed).
      images: optional (label, image in [0, 1]) tiles shown in a row under the charts (e.g.
        the input, the final image at each rate, the target).

    Returns:
      uint8 (H, W, 3).
    """
    font = _font(12)
    panel_w, panel_h = 300, 230
    colours = [COLOURS[k % len(COLOURS)] for k in range(len(rates))]
    width = _PAD + len(panels) * (panel_w + _PAD)
    legend_h = _LINE_H + _PAD
    head = _PAD + _LINE_H * len(title)
    row = labelled_row([(label, thumbnail(x)) for label, x in images]) if images else None
    height = head + panel_h + legend_h + (row.shape[0] if row is not None else 0) + _PAD
    width = max(width, row.shape[1] if row is not None else 0)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for k, line in enumerate(title):
        draw.text((_PAD, _PAD + k * _LINE_H), line, fill="black", font=_font(13))
    for k, (name, values) in enumerate(panels.items()):
        values = np.asarray(values, np.float64)
        left = _PAD + k * (panel_w + _PAD)
        steps = np.arange(values.shape[1])
        box = (left, head, left + panel_w, head + panel_h)
        _panel(draw, box, name, steps, values, colours, font)
    x, y = _PAD + 44, head + panel_h + 4
    draw.text((_PAD, y), "rate:", fill="black", font=font)
    for rate, colour in zip(rates, colours, strict=True):
        draw.line((x, y + 7, x + 18, y + 7), fill=colour, width=3)
        draw.text((x + 22, y), f"{rate:g}", fill="black", font=font)
        x += 30 + font.getlength(f"{rate:g}") + 12
    if row is not None:
        canvas.paste(Image.fromarray(row), (0, head + panel_h + legend_h))
    return np.asarray(canvas)
