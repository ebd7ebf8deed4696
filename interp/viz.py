"""Presenting results: heatmaps of `[layer, head]` tables (matplotlib axes, PNG, plain HTML) and the
interactive attention view (`AttentionView`, `attention_view`, from `interp.viz_attention`).

Presentation only: every number shown here was computed elsewhere (e.g. `interp.analysis.heads`).
matplotlib is optional (`pip install "interp[viz]"`); the HTML outputs need nothing and load nothing
from the network.

Colour scales (`colour_scale`): a signed quantity (any value < 0, or `signed=True`) gets the diverging
map "RdBu_r" centred at 0 on [-m, +m], m = max |value| (or `vmax`), so -0.13 and +0.13 look equally
strong and 0 is white; a non-negative one (attention-based head scores) gets viridis from 0, up to 1
when every value is at most 1 (a fraction of attention), else up to its maximum. Tables that are
compared share one scale (`plot_score_heatmaps`). The colour bar is labelled with the quantity.

Legibility: cells are CELL_INCHES wide (smaller only for tables beyond 12 heads or 18 layers), the
figure is sized by its number of cells, numbers are printed in the cells only when a font of at
least MIN_FONT_PT fits in a cell, and PNGs are rendered at 200 dpi, i.e. 2x for a page that shows
them at 100 CSS px per inch (`png_css_size`).
"""

from __future__ import annotations

import base64
import html
import io
import math
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from interp.display import table_html
from interp.viz_attention import AttentionView, attention_view, visible_token  # noqa: F401  (re-exported)

DIVERGING, SEQUENTIAL = "RdBu_r", "viridis"
CELL_INCHES = 0.38  # side of one [layer, head] cell
MIN_FONT_PT = 7.0  # smaller numbers are not printed
MAX_FONT_PT = 9.0
PNG_DPI = 200  # PNGs are shown at half their pixel size: sharp on 2x screens


@dataclass(frozen=True)
class ColourScale:
    """How values become colours: a matplotlib colour map from `vmin` to `vmax`, and what it measures."""

    cmap: str
    vmin: float
    vmax: float
    label: str

    @property
    def signed(self) -> bool:
        return self.cmap == DIVERGING


def _checked_table(scores: Tensor) -> Float[Tensor, "layer head"]:
    scores = torch.as_tensor(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be a [layer, head] table, got shape {tuple(scores.shape)}; "
                         "for a single layer pass scores[None].")
    return scores.detach().to("cpu", torch.float64)


def colour_scale(*tables: Float[Tensor, "layer head"], label: str, signed: bool | None = None,
                 vmax: float | None = None) -> ColourScale:
    """One colour scale for all `tables` (tables that are compared must share it); see the module docstring.

    signed: None chooses diverging when any value is negative. `vmax`: the end of the range (±vmax
    when signed) instead of the one read from the data.
    """
    values = torch.cat([_checked_table(table).flatten() for table in tables])
    values = values[torch.isfinite(values)]
    low = float(values.min()) if values.numel() else 0.0
    if signed is None:
        signed = low < 0
    if signed:
        top = vmax if vmax is not None else (float(values.abs().max()) if values.numel() else 0.0)
        top = top if top > 0 else 1.0
        return ColourScale(DIVERGING, -top, top, label)
    if low < 0:
        raise ValueError(f"{label} goes down to {low:.3g}, which a sequential scale from 0 would show as 0; "
                         "leave signed=None (or pass signed=True) for a diverging scale centred at 0.")
    if vmax is None:
        high = float(values.max()) if values.numel() else 1.0
        vmax = 1.0 if high <= 1.0 else high
    return ColourScale(SEQUENTIAL, 0.0, vmax if vmax > 0 else 1.0, label)


def _cell_inches(layers: int, heads: int) -> float:
    return max(0.12, min(CELL_INCHES, 12 / max(heads, 1), 18 / max(layers, 1)))


def _figure_size(layers: int, heads: int, panels: int = 1) -> tuple[float, float]:
    """Inches: the cells plus room for tick labels, axis labels, title and one colour bar."""
    cell = _cell_inches(layers, heads)
    return panels * (0.9 + cell * heads) + 1.3, 1.0 + cell * layers


def _cell_text(value: float, scale: ColourScale) -> str:
    magnitude = max(abs(scale.vmin), abs(scale.vmax))
    text = f"{value:.{2 if magnitude < 10 else 1 if magnitude < 100 else 0}f}"
    return text[1:] if text.lstrip("-0.") == "" and text.startswith("-") else text  # never "-0.00"


def _font_size(cell_inches: float, texts: list[str]) -> float | None:
    """The font (pt) for the cell numbers: the largest up to MAX_FONT_PT that fits; None below MIN_FONT_PT."""
    from matplotlib.textpath import TextPath

    cell_points = cell_inches * 72
    widest = max((TextPath((0, 0), text, size=1).get_extents().width for text in set(texts)), default=1.0)  # em
    size = min(MAX_FONT_PT, 0.8 * cell_points / max(widest, 1e-9), 0.6 * cell_points)
    return size if size >= MIN_FONT_PT else None


def _tick_positions(count: int) -> list[int]:
    return list(range(0, count, max(1, math.ceil(count / 24))))


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError as error:
        raise ImportError('Plotting needs matplotlib: pip install "interp[viz]" '
                          "(or use score_heatmap_html, which needs nothing).") from error


def _draw(ax: Any, table: Tensor, title: str, scale: ColourScale, outline: Iterable[tuple[int, int]]) -> Any:
    """One heatmap on `ax` (no colour bar, no numbers yet: see `_annotate`); returns the image."""
    import matplotlib
    from matplotlib.patches import Rectangle

    layers, heads = table.shape
    cmap = matplotlib.colormaps[scale.cmap].with_extremes(bad="#dddddd")  # NaN / inf cells: grey
    image = ax.imshow(table.numpy(), cmap=cmap, vmin=scale.vmin, vmax=scale.vmax, aspect="equal",
                      interpolation="nearest")
    ax.set_title(title)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(_tick_positions(heads))
    ax.set_yticks(_tick_positions(layers))
    for layer, head in outline:  # the cells to notice (e.g. the top heads): black and white, visible on any colour
        for width, colour in ((3.0, "black"), (1.2, "white")):
            ax.add_patch(Rectangle((head - 0.5, layer - 0.5), 1, 1, fill=False, edgecolor=colour, linewidth=width))
    return image


def _annotate(ax: Any, table: Tensor, scale: ColourScale, image: Any) -> None:
    """Print each cell's value, in the largest font up to MAX_FONT_PT that fits the cell as laid out, or none."""
    layers, heads = table.shape
    ax.figure.canvas.figure.draw_without_rendering()  # lay the figure out (colour bars, aspect) to measure a cell
    box = ax.get_window_extent()
    cell_inches = min(box.width / heads, box.height / layers) / ax.figure.canvas.figure.dpi
    finite = [(layer, head, float(table[layer, head])) for layer in range(layers) for head in range(heads)
              if math.isfinite(float(table[layer, head]))]
    texts = [_cell_text(value, scale) for _, _, value in finite]
    font = _font_size(cell_inches, texts)
    if font is None:
        return
    for (layer, head, value), text in zip(finite, texts):
        red, green, blue = image.cmap(image.norm(value))[:3]
        colour = "black" if 0.2126 * red + 0.7152 * green + 0.0722 * blue > 0.5 else "white"
        ax.text(head, layer, text, ha="center", va="center", color=colour, fontsize=font)


def plot_score_heatmap(scores: Float[Tensor, "layer head"], title: str, ax: Any = None, *, label: str = "score",
                       signed: bool | None = None, vmax: float | None = None,
                       outline: Iterable[tuple[int, int]] = ()) -> Any:
    """Draw a `[layer, head]` table as a heatmap on `ax` (a new pyplot figure if None); return the Axes.

    Rows are layers, columns heads; the scale is `colour_scale(scores, label=label, signed=signed,
    vmax=vmax)` and its colour bar is labelled `label`. Cells print their value when it is legible.
    outline: (layer, head) cells to frame, e.g. `[(l, h) for l, h, _ in head_scores.top_heads("induction", 3)]`.
    To compare several tables on one scale use `plot_score_heatmaps`.
    """
    _require_matplotlib()
    table = _checked_table(scores)
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=_figure_size(*table.shape))
    scale = colour_scale(table, label=label, signed=signed, vmax=vmax)
    image = _draw(ax, table, title, scale, list(outline))
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label=label)
    _annotate(ax, table, scale, image)
    return ax


def plot_score_heatmaps(tables: dict[str, Float[Tensor, "layer head"]], label: str, *, signed: bool | None = None,
                        vmax: float | None = None, outline: dict[str, Iterable[tuple[int, int]]] | None = None) -> Any:
    """Tables to compare (e.g. Q-, K- and V-composition), side by side on ONE shared scale; return the Figure.

    The panels are titled by the keys of `tables`; one colour bar, labelled `label`, serves them all.
    signed, vmax: as in `colour_scale`, over every table together. outline: title -> cells to frame.
    """
    _require_matplotlib()
    import matplotlib.pyplot as plt

    if not tables:
        raise ValueError("tables is empty; pass {title: [layer, head] table}.")
    checked = {title: _checked_table(table) for title, table in tables.items()}
    shapes = {tuple(table.shape) for table in checked.values()}
    layers, heads = max(shapes)
    figure, axes = plt.subplots(1, len(checked), figsize=_figure_size(layers, heads, len(checked)), squeeze=False,
                                layout="constrained")
    scale = colour_scale(*checked.values(), label=label, signed=signed, vmax=vmax)
    outline = outline or {}
    images = [_draw(ax, table, title, scale, list(outline.get(title, ()))) for ax, (title, table)
              in zip(axes[0], checked.items())]
    figure.colorbar(images[0], ax=list(axes[0]), fraction=0.046 / len(checked), pad=0.02, label=label)
    for ax, table, image in zip(axes[0], checked.values(), images):
        _annotate(ax, table, scale, image)
    return figure


def score_heatmap_png(scores: Float[Tensor, "layer head"], title: str, *, label: str = "score",
                      signed: bool | None = None, vmax: float | None = None,
                      outline: Iterable[tuple[int, int]] = ()) -> bytes:
    """The heatmap of `plot_score_heatmap` as PNG bytes at PNG_DPI (Agg backend; pyplot state untouched).

    Show it at `png_css_size(png)` (half its pixels) so it is sharp on 2x screens and its numbers are
    at least MIN_FONT_PT.
    """
    _require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    table = _checked_table(scores)
    figure = Figure(figsize=_figure_size(*table.shape), dpi=100)
    FigureCanvasAgg(figure)
    plot_score_heatmap(table, title, ax=figure.subplots(), label=label, signed=signed, vmax=vmax, outline=outline)
    from PIL import Image  # a dependency of matplotlib

    rendered, buffer = io.BytesIO(), io.BytesIO()
    figure.savefig(rendered, format="png", dpi=PNG_DPI, bbox_inches="tight", metadata={"Software": None})
    # 256 colours (indexed PNG): a quarter of the bytes of RGBA, and no visible change.
    Image.open(rendered).convert("RGB").quantize(256).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def png_css_size(png: bytes) -> tuple[int, int]:
    """(width, height) in CSS pixels at which to show a PNG of this module: half its pixels (2x)."""
    width, height = struct.unpack(">II", png[16:24])
    return round(width * 100 / PNG_DPI), round(height * 100 / PNG_DPI)


def png_img(png: bytes, alt: str) -> str:
    """An `<img>` embedding a PNG of this module inline (base64), shown at `png_css_size`."""
    width, height = png_css_size(png)
    return (f'<img alt="{html.escape(alt)}" width="{width}" height="{height}" '
            f'src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">')


def html_page(title: str, body: str, style: str) -> str:
    """A self-contained HTML page: inline `style`, no scripts of its own, nothing loaded from the network."""
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width, initial-scale=1"><title>{html.escape(title)}</title>'
            f"<style>{style}</style></head><body>{body}</body></html>\n")


def score_heatmap_html(scores: Float[Tensor, "layer head"], title: str, *, signed: bool | None = None,
                       vmax: float | None = None) -> str:
    """The heatmap as a plain HTML `<table>` (`interp.display.table_html`), for use without matplotlib.

    signed=None: diverging (centred at 0, symmetric) when any value is negative, else sequential from 0.
    """
    table = _checked_table(scores)
    finite = table[torch.isfinite(table)]
    if signed is None:
        signed = bool(finite.numel()) and float(finite.min()) < 0
    layers, heads = table.shape
    return table_html(table, [f"L{layer}" for layer in range(layers)], [f"H{head}" for head in range(heads)],
                      title, signed=signed, vmax=vmax)
