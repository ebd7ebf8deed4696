"""Presenting results: heatmaps of `[layer, head]` score tables (PNG, matplotlib axes, plain HTML)
and `AttentionView`, a self-contained interactive view of attention patterns.

Presentation only: every number shown here was computed elsewhere (e.g. `interp.analysis.heads`).
matplotlib is optional (`pip install "interp[viz]"`); the HTML outputs need nothing, load nothing
from the network, and work in Jupyter (`_repr_html_`) and as standalone pages (`save`).
"""

from __future__ import annotations

import hashlib
import html
import io
import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.files import write_atomic
from interp.tokens import check_tokens

if TYPE_CHECKING:
    from interp.model import HookedTransformer

# viridis (perceptually uniform) at 0, 1/8, ..., 1: the colour scale of every view in this file.
PALETTE = ["#440154", "#472d7b", "#3b528b", "#2c728e", "#21918c", "#28ae80", "#5ec962", "#addc30", "#fde725"]
MAX_ANNOTATED_CELLS = 400  # above this, cells are too small to print their value


# ----- shared helpers ---------------------------------------------------------------------------
def _checked_table(scores: Tensor) -> Float[Tensor, "layer head"]:
    scores = torch.as_tensor(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be a [layer, head] table, got shape {tuple(scores.shape)}; "
                         "for a single layer pass scores[None].")
    return scores.detach().to("cpu", torch.float64)


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    return int(hex_colour[1:3], 16), int(hex_colour[3:5], 16), int(hex_colour[5:7], 16)


def _palette_colour(fraction: float) -> tuple[int, int, int]:
    """The PALETTE colour at `fraction` in [0, 1] (clamped), linearly interpolated."""
    position = min(max(fraction, 0.0), 1.0) * (len(PALETTE) - 1)
    low = min(int(position), len(PALETTE) - 2)
    weight = position - low
    start, end = _rgb(PALETTE[low]), _rgb(PALETTE[low + 1])
    return tuple(round(a + (b - a) * weight) for a, b in zip(start, end))  # type: ignore[return-value]


def _text_colour(rgb: tuple[float, float, float]) -> str:
    """Black on light cells, white on dark ones (relative luminance of 0..1 channels)."""
    luminance = 0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2]
    return "black" if luminance > 0.5 else "white"


def _figure_size(layers: int, heads: int) -> tuple[float, float]:
    """Inches: about half an inch per cell while values are printed, smaller cells above that."""
    cell = 0.5 if layers * heads <= MAX_ANNOTATED_CELLS else max(0.12, min(0.5, 9.0 / max(layers, heads)))
    return 2.8 + cell * heads, 1.2 + cell * layers  # + room for labels, colorbar and title


def _tick_positions(count: int) -> list[int]:
    return list(range(0, count, max(1, math.ceil(count / 24))))


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError as error:
        raise ImportError('Plotting needs matplotlib: pip install "interp[viz]" '
                          "(or use score_heatmap_html, which needs nothing).") from error


# ----- [layer, head] heatmaps -------------------------------------------------------------------
def plot_score_heatmap(scores: Float[Tensor, "layer head"], title: str, ax: Any = None,
                       vmin: float = 0.0, vmax: float = 1.0) -> Any:
    """Draw a `[layer, head]` table as a heatmap on `ax` (a new pyplot figure if None); return the Axes.

    Rows are layers, columns heads, colours viridis from `vmin` to `vmax` (values outside are
    clamped), and each cell prints its value when the table has at most 400 cells.
    """
    _require_matplotlib()
    table = _checked_table(scores)
    layers, heads = table.shape
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=_figure_size(layers, heads))
    image = ax.imshow(table.numpy(), cmap="viridis", vmin=vmin, vmax=vmax, aspect="equal",
                      interpolation="nearest")
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title(title)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(_tick_positions(heads))
    ax.set_yticks(_tick_positions(layers))
    if layers * heads <= MAX_ANNOTATED_CELLS:
        font_size = 8 if heads <= 16 else 6
        for layer in range(layers):
            for head in range(heads):
                value = float(table[layer, head])
                if not math.isfinite(value):
                    continue
                colour = _text_colour(image.cmap(image.norm(value))[:3])
                ax.text(head, layer, f"{value:.2f}", ha="center", va="center", color=colour,
                        fontsize=font_size)
    return ax


def score_heatmap_png(scores: Float[Tensor, "layer head"], title: str, vmin: float = 0.0,
                      vmax: float = 1.0) -> bytes:
    """The heatmap of `plot_score_heatmap` as PNG bytes (Agg backend; pyplot state untouched)."""
    _require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    table = _checked_table(scores)
    figure = Figure(figsize=_figure_size(*table.shape), dpi=100)
    FigureCanvasAgg(figure)
    plot_score_heatmap(table, title, ax=figure.subplots(), vmin=vmin, vmax=vmax)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight", metadata={"Software": None})
    return buffer.getvalue()


def score_heatmap_html(scores: Float[Tensor, "layer head"], title: str, vmin: float = 0.0,
                       vmax: float = 1.0) -> str:
    """The heatmap as a plain HTML `<table>` (inline colours, same scale), for use without matplotlib."""
    table = _checked_table(scores)
    span = (vmax - vmin) or 1.0
    header = "".join(f'<th style="padding:2px 6px">{head}</th>' for head in range(table.shape[1]))
    rows = []
    for layer in range(table.shape[0]):
        cells = []
        for head in range(table.shape[1]):
            value = float(table[layer, head])
            if math.isfinite(value):
                rgb = _palette_colour((value - vmin) / span)
                text = _text_colour(tuple(channel / 255 for channel in rgb))  # type: ignore[arg-type]
                style = f"background:#{rgb[0]:02x}{rgb[1]:02x}{rgb[2]:02x};color:{text}"
                shown = f"{value:.2f}"
            else:
                style, shown = "background:#ddd;color:black", "–"
            cells.append(f'<td title="L{layer}H{head}: {shown}" style="{style};padding:2px 6px;'
                         f'text-align:center">{shown}</td>')
        rows.append(f'<tr><th style="padding:2px 6px">{layer}</th>{"".join(cells)}</tr>')
    return (f'<table style="border-collapse:collapse;font:12px monospace">'
            f'<caption style="font-weight:bold">{html.escape(title)}</caption>'
            f'<tr><th style="padding:2px 6px">layer \\ head</th>{header}</tr>{"".join(rows)}</table>')


# ----- interactive attention view ---------------------------------------------------------------
VISIBLE_WHITESPACE = {" ": "·", "\n": "↵", "\t": "⇥", "\r": "␍"}


def visible_token(token: str) -> str:
    """A token label with whitespace made visible: " the" -> "·the", "\\n" -> "↵"."""
    label = "".join(VISIBLE_WHITESPACE.get(character, character) for character in token)
    return label if label else "∅"


def _json_number(value: float) -> str:
    """4-decimal JSON number without trailing zeros ("0.25", "0", "1"); null for NaN/inf."""
    if not math.isfinite(value):
        return "null"
    text = f"{value:.4f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _script_safe(json_text: str) -> str:
    """JSON that cannot end its `<script>` early or open an HTML comment (still valid JSON)."""
    for character, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                              ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        json_text = json_text.replace(character, escape)
    return json_text


class AttentionView:
    """An interactive attention-pattern view: pick a head, hover the grid, hover or click a token.

    `patterns` maps a label (e.g. "L1H3 induction 0.93") to a `[query_pos, key_pos]` pattern over
    `str_tokens`. Values are embedded rounded to 4 decimals. Renders inline in Jupyter; `save`
    writes a standalone page. Nothing is loaded from the network.
    """

    def __init__(self, str_tokens: list[str], patterns: dict[str, Float[Tensor, "query_pos key_pos"]],
                 title: str = "") -> None:
        if not patterns:
            raise ValueError("patterns is empty; pass at least one {label: [query_pos, key_pos] pattern}.")
        positions = len(str_tokens)
        checked = {}
        for name, pattern in patterns.items():
            pattern = torch.as_tensor(pattern).detach()
            if tuple(pattern.shape) != (positions, positions):
                raise ValueError(f"Pattern {name!r} has shape {tuple(pattern.shape)} but must be "
                                 f"[query_pos, key_pos] = {(positions, positions)} for {positions} tokens; "
                                 "pass one sequence's pattern, e.g. cache['pattern', layer][0, head].")
            checked[str(name)] = pattern.to("cpu", torch.float64)
        self.str_tokens = [str(token) for token in str_tokens]
        self.patterns = checked
        self.title = title

    def data_json(self) -> str:
        """The embedded data: {"tokens": visible labels, "names": [...], "patterns": [[[...]]]}."""
        patterns = ",".join(
            "[" + ",".join("[" + ",".join(_json_number(v) for v in row) + "]" for row in pattern.tolist()) + "]"
            for pattern in self.patterns.values())
        tokens = json.dumps([visible_token(token) for token in self.str_tokens])
        names = json.dumps(list(self.patterns))
        return _script_safe(f'{{"tokens": {tokens}, "names": {names}, "patterns": [{patterns}]}}')

    def html(self) -> str:
        """A self-contained HTML fragment (`<div>` with inline style and script).

        Its element ids are a hash of the content (title, tokens, patterns): identical views render to
        identical bytes, so reports are reproducible; different views get different ids.
        """
        data = self.data_json()
        element_id = "interp-attention-" + hashlib.sha256(f"{self.title}\0{data}".encode("utf-8")).hexdigest()[:12]
        options = "".join(f'<option value="{index}">{html.escape(name)}</option>'
                          for index, name in enumerate(self.patterns))
        gradient = ", ".join(PALETTE)
        title = f'<div class="iav-title">{html.escape(self.title)}</div>' if self.title else ""
        script = (_SCRIPT.replace("__ID__", element_id).replace("__PALETTE__", json.dumps(PALETTE))
                  .replace("__DATA__", data))
        return (f'<div id="{element_id}" class="interp-attention-view"><style>{_STYLE}</style>{title}'
                f'<div class="iav-controls"><label>head <select id="{element_id}-select">{options}</select>'
                f'</label> <span class="iav-scale">0 <span class="iav-bar" style="background:'
                f'linear-gradient(to right, {gradient})"></span> 1</span></div>'
                f'<canvas id="{element_id}-grid"></canvas>'
                f'<div id="{element_id}-info" class="iav-info">Hover a cell: query -&gt; key: attention.</div>'
                f'<div id="{element_id}-tokens" class="iav-tokens"></div>'
                f'<div class="iav-hint">Hover or click a token (query) to colour the keys by the attention '
                f'it pays them; click again to unlock.</div><script>{script}</script></div>')

    def _repr_html_(self) -> str:
        return self.html()

    def save(self, path: str | os.PathLike) -> Path:
        """Write a standalone HTML page to `path` atomically (`interp.files.write_atomic`); return the path."""
        page = (f'<!DOCTYPE html>\n<html lang="en">\n<head><meta charset="utf-8">'
                f'<title>{html.escape(self.title or "Attention patterns")}</title></head>\n'
                f'<body>\n{self.html()}\n</body>\n</html>\n')
        return write_atomic(path, page)

    def __repr__(self) -> str:
        return f"AttentionView({len(self.str_tokens)} tokens, heads {list(self.patterns)})"


def attention_view(model: HookedTransformer, input: str | Int[Tensor, "pos"] | Int[Tensor, "1 pos"],
                   heads: list[tuple[int, int]], labels: dict[tuple[int, int], str] | None = None,
                   title: str = "") -> AttentionView:
    """Run `model` on one sequence and view the attention patterns of `heads` ((layer, head) pairs).

    Text is tokenised with `model.to_tokens`; token ids may be `[pos]` or `[1, pos]`. Each head is
    labelled "L{layer}H{head}", followed by `labels[(layer, head)]` when given.
    """
    if not heads:
        raise ValueError("heads is empty; pass (layer, head) pairs, e.g. heads=[(1, 3)].")
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    for layer, head in heads:
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            raise ValueError(f"Head (layer={layer}, head={head}) does not exist: layer must be in "
                             f"[0, {n_layers}) and head in [0, {n_heads}) for this model.")
    if isinstance(input, str):
        tokens = model.to_tokens(input)
    else:
        tokens = check_tokens(input, model.cfg.d_vocab, model.cfg.n_ctx, model.W_E.device)
    if tokens.shape[0] != 1:
        raise ValueError(f"attention_view shows one sequence, got a batch of {tokens.shape[0]}; "
                         "pass one string or tokens[:1].")
    layers = sorted({layer for layer, _ in heads})
    _, cache = model.run_with_cache(tokens, names_filter=[f"blocks.{layer}.attn.hook_pattern" for layer in layers],
                                    return_type=None)
    if model.tokenizer is not None:
        str_tokens = model.to_str_tokens(tokens[0])
    else:
        str_tokens = [str(token) for token in tokens[0].tolist()]
    labels = labels or {}
    patterns = {}
    for layer, head in heads:
        name = f"L{layer}H{head}" + (f" {labels[(layer, head)]}" if (layer, head) in labels else "")
        patterns[name] = cache["pattern", layer][0, head]
    return AttentionView(str_tokens, patterns, title)


_STYLE = """
.interp-attention-view { font: 13px system-ui, sans-serif; color: #222; background: #fff;
  padding: 8px; display: inline-block; max-width: 100%; box-sizing: border-box; }
.interp-attention-view .iav-title { font-weight: 600; margin-bottom: 4px; }
.interp-attention-view .iav-scale { margin-left: 12px; font-size: 11px; }
.interp-attention-view .iav-bar { display: inline-block; width: 80px; height: 10px; vertical-align: middle; }
.interp-attention-view canvas { display: block; margin: 6px 0; cursor: crosshair; }
.interp-attention-view .iav-info { font-family: monospace; min-height: 1.4em; white-space: pre; }
.interp-attention-view .iav-tokens { margin-top: 6px; line-height: 1.9; max-width: 900px; }
.interp-attention-view .iav-tokens span { font-family: monospace; white-space: pre; padding: 1px 2px;
  margin: 0 1px; border: 1px solid #ddd; border-radius: 3px; cursor: pointer; }
.interp-attention-view .iav-tokens span.iav-query { border: 2px solid #d62728; }
.interp-attention-view .iav-hint { font-size: 11px; color: #666; margin-top: 4px; }
"""

# Plain ES5, no external resources. __ID__, __PALETTE__ and __DATA__ are filled in by html().
_SCRIPT = """
(function () {
  var id = "__ID__";
  var palette = __PALETTE__;
  var data = __DATA__;
  var root = document.getElementById(id);
  if (!root) { return; }
  var select = document.getElementById(id + "-select"), canvas = document.getElementById(id + "-grid");
  var info = document.getElementById(id + "-info"), line = document.getElementById(id + "-tokens");
  var tokens = data.tokens, n = tokens.length, head = 0, query = n - 1, locked = false, hover = null;
  var stops = palette.map(function (h) {
    return [1, 3, 5].map(function (i) { return parseInt(h.substr(i, 2), 16); });
  });
  function colour(v) {
    if (v === null) { return [200, 200, 200]; }
    var x = Math.min(Math.max(v, 0), 1) * (stops.length - 1);
    var low = Math.min(Math.floor(x), stops.length - 2), w = x - low;
    return [0, 1, 2].map(function (c) { return Math.round(stops[low][c] + (stops[low + 1][c] - stops[low][c]) * w); });
  }
  function format(v) { return v === null ? "nan" : v.toFixed(4); }
  function short(label) { return label.length > 14 ? label.slice(0, 13) + "\\u2026" : label; }
  var cell = Math.max(2, Math.min(24, Math.floor(560 / n))), font = Math.min(11, cell - 2), labelled = cell >= 9;
  var ctx = canvas.getContext("2d"), margin = 4;
  if (labelled) {
    ctx.font = font + "px monospace";
    tokens.forEach(function (t) { margin = Math.max(margin, ctx.measureText(short(t)).width + 8); });
  }
  var side = margin + n * cell + 2, ratio = window.devicePixelRatio || 1;
  canvas.width = side * ratio; canvas.height = side * ratio;
  canvas.style.width = side + "px"; canvas.style.height = side + "px";
  var pixels = document.createElement("canvas"); pixels.width = n; pixels.height = n;
  function paintPattern() {
    var p = data.patterns[head], pctx = pixels.getContext("2d"), image = pctx.createImageData(n, n);
    for (var i = 0; i < n; i++) { for (var j = 0; j < n; j++) {
      var c = colour(p[i][j]), k = 4 * (i * n + j);
      image.data[k] = c[0]; image.data[k + 1] = c[1]; image.data[k + 2] = c[2]; image.data[k + 3] = 255;
    } }
    pctx.putImageData(image, 0, 0);
  }
  function draw() {
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, side, side);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(pixels, margin, margin, n * cell, n * cell);
    if (labelled) {
      ctx.font = font + "px monospace"; ctx.fillStyle = "#222"; ctx.textBaseline = "middle";
      for (var i = 0; i < n; i++) {
        ctx.fillStyle = i === query ? "#d62728" : "#222";
        ctx.textAlign = "right"; ctx.fillText(short(tokens[i]), margin - 4, margin + (i + 0.5) * cell);
        ctx.save(); ctx.translate(margin + (i + 0.5) * cell, margin - 4); ctx.rotate(-Math.PI / 2);
        ctx.fillStyle = "#222"; ctx.textAlign = "left"; ctx.fillText(short(tokens[i]), 0, 0); ctx.restore();
      }
    }
    ctx.lineWidth = 1.5;
    if (query !== null) { ctx.strokeStyle = "#d62728"; ctx.strokeRect(margin, margin + query * cell, n * cell, cell); }
    if (hover) {
      ctx.strokeStyle = "#fff"; ctx.strokeRect(margin + hover[1] * cell, margin + hover[0] * cell, cell, cell);
    }
  }
  var spans = tokens.map(function (t, i) {
    var span = document.createElement("span");
    span.textContent = t; span.title = "position " + i;
    span.addEventListener("mouseenter", function () { if (!locked) { setQuery(i); } });
    span.addEventListener("click", function () { locked = !(locked && query === i); setQuery(i); });
    line.appendChild(span);
    return span;
  });
  function setQuery(i) {
    query = i;
    var row = data.patterns[head][i];
    spans.forEach(function (span, j) {
      var v = row[j] === null ? 0 : Math.min(Math.max(row[j], 0), 1);
      span.style.background = "rgba(33, 102, 172, " + v.toFixed(3) + ")";
      span.style.color = v > 0.55 ? "#fff" : "#222";
      span.className = j === i ? "iav-query" : "";
      span.title = "position " + j + ": " + format(row[j]) + " from query " + i;
    });
    draw();
  }
  function cellAt(event) {
    var rect = canvas.getBoundingClientRect();
    var i = Math.floor((event.clientY - rect.top - margin) / cell);
    var j = Math.floor((event.clientX - rect.left - margin) / cell);
    return i >= 0 && i < n && j >= 0 && j < n ? [i, j] : null;
  }
  canvas.addEventListener("mousemove", function (event) {
    hover = cellAt(event);
    if (hover) {
      info.textContent = "query " + tokens[hover[0]] + " [" + hover[0] + "] -> key " + tokens[hover[1]] +
        " [" + hover[1] + "]: " + format(data.patterns[head][hover[0]][hover[1]]);
    }
    if (hover && !locked) { setQuery(hover[0]); } else { draw(); }
  });
  canvas.addEventListener("mouseleave", function () { hover = null; draw(); });
  canvas.addEventListener("click", function (event) {
    var target = cellAt(event);
    if (target) { locked = !(locked && query === target[0]); setQuery(target[0]); }
  });
  select.addEventListener("change", function () { head = select.selectedIndex; paintPattern(); setQuery(query); });
  paintPattern(); setQuery(query);
})();
"""
