"""Small display helpers for result objects: numbers, plurals and coloured HTML tables.

Bottom layer: imports nothing from `interp` and needs no matplotlib, so the analysis classes (whose
`__repr__` / `_repr_html_` use it) and report writers alike can call it. Every HTML fragment is
self-contained: inline styles only, no scripts, nothing loaded from the network.

Colour scales (`table_html`):
- signed data: diverging, centred at 0 with a symmetric range [-m, +m] (m = max |value| unless
  given): 0 is white, +v is red and -v the mirror blue (the same colour with red and blue swapped),
  so equal magnitudes look equally strong whatever their sign;
- non-negative data: sequential from white at 0 to dark blue at m.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

WHITE = (255, 255, 255)
# Positive half of the diverging scale (white -> red); the negative half is the same with red and blue swapped.
DIVERGING_POSITIVE = [WHITE, (244, 165, 130), (178, 24, 43)]
# Sequential scale for non-negative data: white at 0 -> dark blue at the top (matplotlib "Blues" end points).
SEQUENTIAL = [WHITE, (198, 219, 239), (107, 174, 214), (33, 113, 181), (8, 48, 107)]
MISSING = (221, 221, 221)  # nan / inf cells
MAX_HTML_CELLS = 1024  # larger tables are left out of HTML displays
CELL = "padding:2px 6px;text-align:right;border:1px solid #fff;white-space:nowrap"
HEADER = "padding:2px 6px;white-space:nowrap"
CAPTION = "caption-side:top;text-align:left;font-family:sans-serif"
TABLE = "border-collapse:collapse;font-family:monospace;font-size:12px;margin:4px 12px 4px 0"


# ----- text -------------------------------------------------------------------------------------
def plural(n: int, word: str, plural_word: str | None = None) -> str:
    """`n` and the word in agreement: plural(1, "prompt") = "1 prompt", plural(3, "query") = "3 queries".

    Large counts get thousands separators ("3,200 queries"). Irregular plurals: pass `plural_word`.
    """
    if plural_word is None:
        if word.endswith("y") and word[-2:-1] not in tuple("aeiou"):
            plural_word = word[:-1] + "ies"
        elif word.endswith(("s", "x", "z", "ch", "sh")):
            plural_word = word + "es"
        else:
            plural_word = word + "s"
    return f"{n:,} {word if n == 1 else plural_word}"


def format_number(x: float, digits: int = 3, sign: bool = False) -> str:
    """`x` to `digits` significant digits, readable: 0.939, 0.0323, 6.68, 20.9, 1230, 1.23e-05.

    Zero is "0" (never "-0.00"; -0.0 too); a value that rounds to 0 is impossible because small
    values switch to scientific notation (|x| < 1e-3), as do large ones (|x| >= 1e5).
    `sign=True` writes "+" before positive numbers (for effects and contributions).
    """
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return ("+inf" if sign else "inf") if x > 0 else "-inf"
    if x == 0:
        return "0"
    rounded = float(f"{x:.{digits}g}")  # round first, so 0.9996 -> 1.00, not 1.000
    magnitude = abs(rounded)
    if magnitude < 1e-3 or magnitude >= 1e5:
        text = f"{x:.{digits - 1}e}"
    else:
        decimals = max(0, digits - 1 - math.floor(math.log10(magnitude)))
        text = f"{rounded:.{decimals}f}"
    return "+" + text if sign and x > 0 else text


# ----- colours ----------------------------------------------------------------------------------
def _interpolate(stops: Sequence[tuple[int, int, int]], fraction: float) -> tuple[int, int, int]:
    position = min(max(fraction, 0.0), 1.0) * (len(stops) - 1)
    low = min(int(position), len(stops) - 2)
    weight = position - low
    return tuple(round(a + (b - a) * weight) for a, b in zip(stops[low], stops[low + 1]))  # type: ignore[return-value]


def cell_colour(value: float, vmax: float, signed: bool) -> tuple[int, int, int]:
    """The background colour (0..255 RGB) of `value` on the scale described in the module docstring.

    signed: diverging on [-vmax, +vmax], white at 0, mirror colours for +v and -v.
    Otherwise sequential on [0, vmax], white at 0 (negative values are clamped to 0).
    Values beyond the range get the end colour; nan / inf get grey.
    """
    if not math.isfinite(value):
        return MISSING
    vmax = vmax if vmax > 0 else 1.0
    if not signed:
        return _interpolate(SEQUENTIAL, value / vmax)
    red, green, blue = _interpolate(DIVERGING_POSITIVE, abs(value) / vmax)
    return (red, green, blue) if value >= 0 else (blue, green, red)


def text_colour(rgb: tuple[int, int, int]) -> str:
    """Black on light backgrounds, white on dark ones (relative luminance)."""
    luminance = (0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2]) / 255
    return "black" if luminance > 0.45 else "white"


def _hex(rgb: tuple[int, int, int]) -> str:
    return f"#{rgb[0]:02x}{rgb[1]:02x}{rgb[2]:02x}"


# ----- HTML ---------------------------------------------------------------------------------------
def _rows(values: Any) -> list[list[float]]:
    """A 2-D table as lists of floats (accepts nested sequences, tensors and arrays via `tolist`)."""
    if hasattr(values, "detach"):
        values = values.detach().cpu()
    rows = values.tolist() if hasattr(values, "tolist") else values
    if not isinstance(rows, list) or not all(isinstance(row, (list, tuple)) for row in rows):
        raise ValueError("values must be a 2-D table [rows, cols]; for one row pass [values], for one column [[v] for v in values].")
    return [[float(value) for value in row] for row in rows]


def table_html(values: Any, row_labels: Sequence[Any], col_labels: Sequence[Any], caption: str = "",
               signed: bool = False, vmax: float | None = None, corner: str = "") -> str:
    """A small HTML `<table>` of `values [rows, cols]` with coloured cells and formatted numbers.

    signed=True: diverging scale centred at 0 on [-m, +m]; signed=False: sequential from 0 to m.
    m = `vmax`, or max |finite value| when None. The caption is followed by the scale's range, so
    a reader knows what the darkest colour means. Numbers use `format_number`. `corner`: text of
    the top-left header cell (e.g. "layer \\ pos", naming the axes).
    """
    rows = _rows(values)
    if len(rows) != len(row_labels) or any(len(row) != len(col_labels) for row in rows):
        shape = (len(rows), len(rows[0]) if rows else 0)
        raise ValueError(f"values of shape {shape} need {shape[0]} row labels and {shape[1]} column labels; "
                         f"got {len(row_labels)} and {len(col_labels)}.")
    finite = [abs(value) for row in rows for value in row if math.isfinite(value)]
    top = vmax if vmax is not None else max(finite, default=0.0)
    if signed:
        scale = f"colour: {format_number(-top)} blue, 0 white, {format_number(top, sign=True)} red"
    else:
        scale = f"colour: 0 white to {format_number(top)} dark blue"
    caption_text = f"{html.escape(caption)} " if caption else ""
    header = "".join(f'<th style="{HEADER}">{html.escape(str(label))}</th>' for label in col_labels)
    parts = [f'<table style="{TABLE}"><caption style="{CAPTION}">{caption_text}<span style="color:#666">({scale})'
             f'</span></caption><tr><th style="{HEADER};color:#666">{html.escape(corner)}</th>{header}</tr>']
    for label, row in zip(row_labels, rows):
        cells = []
        for value in row:
            background = cell_colour(value, top, signed)
            cells.append(f'<td style="{CELL};background:{_hex(background)};color:{text_colour(background)}">'
                         f"{format_number(value)}</td>")
        parts.append(f'<tr><th style="{HEADER};text-align:right">{html.escape(str(label))}</th>{"".join(cells)}</tr>')
    parts.append("</table>")
    return "".join(parts)


def head_table_html(values: Any, caption: str, signed: bool, vmax: float | None = None) -> str:
    """A `[layer, head]` table via `table_html`, rows "L0", "L1", ..., columns "H0", "H1", ...

    Tables of more than MAX_HTML_CELLS cells are left out (a one-line note instead), so a notebook
    cell stays small for a large model; the top entries are in the object's repr.
    """
    rows = _rows(values)
    n_layers, n_heads = len(rows), len(rows[0]) if rows else 0
    if n_layers * n_heads > MAX_HTML_CELLS:
        return (f'<div style="font-family:sans-serif;color:#666">{html.escape(caption)}: '
                f"{n_layers} x {n_heads} table left out (more than {MAX_HTML_CELLS} cells)</div>")
    return table_html(rows, [f"L{layer}" for layer in range(n_layers)], [f"H{head}" for head in range(n_heads)],
                      caption, signed, vmax)


def text_table_html(header: Sequence[str], rows: Sequence[Sequence[Any]], caption: str = "") -> str:
    """A plain HTML table of already formatted cells (escaped), e.g. a "top entries" list."""
    head = "".join(f'<th style="padding:2px 6px;text-align:left">{html.escape(str(cell))}</th>' for cell in header)
    body = "".join("<tr>" + "".join(f'<td style="padding:2px 6px">{html.escape(str(cell))}</td>' for cell in row)
                   + "</tr>" for row in rows)
    caption_html = f'<caption style="{CAPTION}">{html.escape(caption)}</caption>' if caption else ""
    return f'<table style="{TABLE}">{caption_html}<tr>{head}</tr>{body}</table>'


def block_html(title: str, *parts: str) -> str:
    """Parts (tables) side by side under a bold title, in one `<div>`."""
    inner = "".join(f'<div style="display:inline-block;vertical-align:top">{part}</div>' for part in parts)
    return f'<div style="font-family:sans-serif"><b>{html.escape(title)}</b><br>{inner}</div>'
