"""`AttentionView`: a self-contained interactive view of attention patterns, with a static fallback.

Pick a head from the list or from the overview grid of every head (hover to preview, click to
select), hover the `[query_pos, key_pos]` grid or a token to read the attention, click to lock a
query. Future keys (key > query) of a causal pattern are hatched grey: masked, not zero attention.
When scripts do not run (an untrusted notebook, GitHub's notebook view, JavaScript off) the view
shows an inline PNG of the selected head's pattern instead.

Size bound: each pattern is embedded as one byte per cell (the value x 255, rounded: within 0.002),
only its query >= key half when every pattern is causal, base64-encoded. A view's HTML is therefore
about 4/3 x heads x n(n+1)/2 bytes for n tokens, plus under 300 KB (script, static picture), and a
view holds at most MAX_VIEW_CELLS cells (about 6.7 MB of page): 9 heads at 1,024 tokens give 6.4 MB,
144 heads (GPT-2 small) at 64 tokens 0.4 MB.

Same layer as `interp.viz` (which re-exports it); needs no matplotlib and loads nothing from the network.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
import os
import struct
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.display import plural
from interp.files import write_atomic
from interp.tokens import check_tokens

if TYPE_CHECKING:
    from interp.model import HookedTransformer

# viridis (perceptually uniform) at 0, 1/8, ..., 1: attention 0 -> dark purple, 1 -> yellow.
PALETTE = ["#440154", "#472d7b", "#3b528b", "#2c728e", "#21918c", "#28ae80", "#5ec962", "#addc30", "#fde725"]
HATCH = ((238, 238, 238), (176, 176, 176))  # masked (future) cells: light grey with darker diagonal lines
MAX_VIEW_CELLS = 5_000_000  # embedded pattern cells per view (1 byte each before base64): the size bound
STATIC_SIDE = 384  # pixels of the static picture's side, at most (longer sequences are max-pooled)
VISIBLE_WHITESPACE = {" ": "·", "\n": "↵", "\t": "⇥", "\r": "␍"}


def visible_token(token: str) -> str:
    """A token label with whitespace made visible: " the" -> "·the", "\\n" -> "↵"."""
    label = "".join(VISIBLE_WHITESPACE.get(character, character) for character in token)
    return label if label else "∅"


def viridis(fraction: float) -> tuple[int, int, int]:
    """The PALETTE colour at `fraction` in [0, 1] (clamped), linearly interpolated, as 0..255 RGB."""
    stops = [(int(c[1:3], 16), int(c[3:5], 16), int(c[5:7], 16)) for c in PALETTE]
    position = min(max(fraction, 0.0), 1.0) * (len(stops) - 1)
    low = min(int(position), len(stops) - 2)
    weight = position - low
    return tuple(round(a + (b - a) * weight) for a, b in zip(stops[low], stops[low + 1]))  # type: ignore[return-value]


def _script_safe(json_text: str) -> str:
    """JSON that cannot end its `<script>` early or open an HTML comment (still valid JSON)."""
    for character, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                              ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        json_text = json_text.replace(character, escape)
    return json_text


def _png(indices: Int[Tensor, "height width"], palette: list[tuple[int, int, int]]) -> bytes:
    """An 8-bit indexed PNG of `indices` (values index `palette`), written with zlib only."""
    height, width = indices.shape
    rows = torch.cat([torch.zeros(height, 1, dtype=torch.uint8), indices.to(torch.uint8)], dim=1)  # filter byte 0

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0))
            + chunk(b"PLTE", bytes(channel for colour in palette for channel in colour))
            + chunk(b"IDAT", zlib.compress(rows.numpy().tobytes(), 9)) + chunk(b"IEND", b""))


def pattern_png(pattern: Float[Tensor, "query_pos key_pos"], causal: bool = True) -> bytes:
    """A PNG of one pattern: viridis from 0 to 1, future keys hatched grey when `causal`.

    Rows are query positions, columns key positions. At most STATIC_SIDE pixels a side: short
    sequences get square blocks of pixels per cell, long ones are max-pooled (a spike stays visible).
    """
    n = pattern.shape[0]
    pattern = pattern.detach().to("cpu", torch.float32)
    if causal:
        pattern = pattern.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), -1.0)  # -1 marks masked cells
    step = math.ceil(n / STATIC_SIDE)
    if step > 1:
        pattern = torch.nn.functional.max_pool2d(pattern[None, None], step, ceil_mode=True)[0, 0]
    levels = 254  # indices 0..253 are values, 254 and 255 the hatch colours
    indices = (pattern.clamp(0, 1) * (levels - 1)).round().to(torch.int64)
    block = max(1, STATIC_SIDE // n)
    indices = indices.repeat_interleave(block, 0).repeat_interleave(block, 1)
    masked = (pattern < 0).repeat_interleave(block, 0).repeat_interleave(block, 1)
    side = indices.shape[0]
    diagonal = (torch.arange(side)[:, None] + torch.arange(side)[None, :]) % 6 == 0
    indices = torch.where(masked, torch.where(diagonal, 255, 254), indices)
    palette = [viridis(level / (levels - 1)) for level in range(levels)] + list(HATCH)
    return _png(indices, palette)


def _png_size(png: bytes) -> tuple[int, int]:
    return struct.unpack(">II", png[16:24])


class AttentionView:
    """An interactive attention-pattern view: an overview of every head, one head's grid, the tokens.

    `patterns` maps a label (e.g. "L1H3 induction 0.93") to a `[query_pos, key_pos]` pattern over
    `str_tokens`, with values in [0, 1]. The view opens on `selected` (a label; default the first).
    Renders inline in Jupyter; `save` writes a standalone page. Size: see the module docstring.
    """

    def __init__(self, str_tokens: list[str], patterns: dict[str, Float[Tensor, "query_pos key_pos"]],
                 title: str = "", selected: str | None = None) -> None:
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
            pattern = pattern.to("cpu", torch.float64)
            if not (torch.isfinite(pattern).all() and pattern.min() >= -1e-6 and pattern.max() <= 1 + 1e-6):
                raise ValueError(f"Pattern {name!r} has values outside [0, 1] (or NaN/inf); the view shows attention "
                                 "probabilities: pass cache['pattern', layer], not the pre-softmax scores.")
            checked[str(name)] = pattern.clamp(0, 1)
        if selected is not None and selected not in checked:
            raise KeyError(f"selected={selected!r} is not one of the patterns' labels: {list(checked)}.")
        self.str_tokens = [str(token) for token in str_tokens]
        self.patterns = checked
        self.title = title
        self.selected = selected if selected is not None else next(iter(checked))
        future = torch.ones(positions, positions, dtype=torch.bool).triu(1)
        self.causal = all(bool((pattern[future] == 0).all()) for pattern in checked.values())
        cells = len(checked) * (positions * (positions + 1) // 2 if self.causal else positions * positions)
        if cells > MAX_VIEW_CELLS:
            per_head = cells // len(checked)
            raise ValueError(f"{plural(len(checked), 'pattern')} of {plural(positions, 'token')} are {cells:,} cells, "
                             f"more than one view holds (MAX_VIEW_CELLS = {MAX_VIEW_CELLS:,}, about 6.7 MB of page); "
                             f"pass at most {plural(max(1, MAX_VIEW_CELLS // per_head), 'head')} at this length, "
                             "or a shorter sequence.")

    def _encoded(self, pattern: Tensor) -> str:
        """One byte per cell (round(255 v)), row by row, only key <= query when the view is causal; base64url
        (no "/" so that no "//" in the page looks like a URL)."""
        levels = (pattern * 255).round().to(torch.uint8)
        if self.causal:
            rows, cols = torch.tril_indices(*levels.shape)
            levels = levels[rows, cols]
        return base64.urlsafe_b64encode(levels.numpy().tobytes()).decode("ascii")

    def data_json(self) -> str:
        """The embedded data: {"tokens": visible labels, "names", "selected": index, "causal",
        "patterns": one base64url string of bytes per head (see `_encoded`)}."""
        data = {"tokens": [visible_token(token) for token in self.str_tokens], "names": list(self.patterns),
                "selected": list(self.patterns).index(self.selected), "causal": self.causal,
                "patterns": [self._encoded(pattern) for pattern in self.patterns.values()]}
        return _script_safe(json.dumps(data, ensure_ascii=False))

    def html(self) -> str:
        """A self-contained HTML fragment (`<div>` with inline style and script).

        Its element ids are a hash of the content (title, tokens, patterns): identical views render to
        identical bytes, so reports are reproducible; different views get different ids.
        """
        data = self.data_json()
        element_id = "interp-attention-" + hashlib.sha256(f"{self.title}\0{data}".encode("utf-8")).hexdigest()[:12]
        escape = html.escape
        options = "".join(f'<option value="{index}"{" selected" if name == self.selected else ""}>{escape(name)}</option>'
                          for index, name in enumerate(self.patterns))
        png = pattern_png(self.patterns[self.selected], self.causal)
        width, height = _png_size(png)
        static = (f'<div class="iav-static"><img alt="attention pattern of {escape(self.selected)}" width="{width}" '
                  f'height="{height}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'
                  f'<div class="iav-note">{escape(self.selected)}: rows are query positions (0 at the top), columns '
                  f'key positions (0 at the left); colour 0 (purple) to 1 (yellow){"; hatched: future keys, masked" if self.causal else ""}. '
                  f"A static picture: the interactive view needs JavaScript.</div>"
                  f"<noscript>JavaScript is off: this is a static picture of {escape(self.selected)}. Open the page "
                  "with scripts enabled to choose a head and read the values.</noscript></div>")
        title = f'<div class="iav-title">{escape(self.title)}</div>' if self.title else ""
        script = _SCRIPT.replace("__ID__", element_id).replace("__PALETTE__", json.dumps(PALETTE)).replace("__DATA__", data)
        gradient = ", ".join(PALETTE)
        hatch = '<span class="iav-hatch"></span> future key (masked)' if self.causal else ""
        return (f'<div id="{element_id}" class="interp-attention-view"><style>{_STYLE}</style>{title}{static}'
                f'<div class="iav-live" style="display:none"><div class="iav-controls"><label>head '
                f'<select id="{element_id}-select">{options}</select></label> <span class="iav-scale">attention 0 '
                f'<span class="iav-bar" style="background:linear-gradient(to right, {gradient})"></span> 1 {hatch}'
                f'</span></div><div class="iav-main"><div class="iav-gridbox"><canvas id="{element_id}-grid"></canvas>'
                f'</div><div class="iav-overview"><div class="iav-caption">heads: hover to preview, click to select</div>'
                f'<div id="{element_id}-overview"></div></div></div>'
                f'<div id="{element_id}-info" class="iav-info"></div>'
                f'<div id="{element_id}-tokens" class="iav-tokens"></div>'
                f'<div class="iav-hint">Hover or click a token (query) to colour the keys by the attention it pays them; '
                f'click again to unlock. Values are stored to 1/255.</div></div><script>{script}</script></div>')

    def _repr_html_(self) -> str:
        return self.html()

    def save(self, path: str | os.PathLike) -> Path:
        """Write a standalone HTML page to `path` atomically (`interp.files.write_atomic`); return the path."""
        page = (f'<!DOCTYPE html>\n<html lang="en">\n<head><meta charset="utf-8">'
                f'<meta name="viewport" content="width=device-width, initial-scale=1">'
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
    labelled "L{layer}H{head}", followed by `labels[(layer, head)]` when given. Opens on the first head.
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
.interp-attention-view { font: 13px system-ui, sans-serif; color: #222; background: #fff; padding: 8px;
  display: block; max-width: 100%; box-sizing: border-box; }
.interp-attention-view .iav-title { font-weight: 600; margin-bottom: 4px; }
.interp-attention-view .iav-static img { display: block; max-width: 100%; height: auto; image-rendering: pixelated; }
.interp-attention-view .iav-note, .interp-attention-view noscript { display: block; font-size: 12px; color: #555;
  margin-top: 4px; max-width: 640px; }
.interp-attention-view .iav-controls { display: flex; flex-wrap: wrap; gap: 6px 12px; align-items: center; }
.interp-attention-view select { max-width: 100%; }
.interp-attention-view .iav-scale { font-size: 11px; }
.interp-attention-view .iav-bar { display: inline-block; width: 80px; height: 10px; vertical-align: middle; }
.interp-attention-view .iav-hatch { display: inline-block; width: 14px; height: 10px; vertical-align: middle;
  margin-left: 8px; background: repeating-linear-gradient(45deg, #eee 0 3px, #b0b0b0 3px 4px); }
.interp-attention-view .iav-main { display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-start; margin: 6px 0; }
.interp-attention-view .iav-gridbox { max-width: 100%; max-height: 80vh; overflow: auto; }
.interp-attention-view canvas { display: block; }
.interp-attention-view .iav-gridbox canvas { cursor: crosshair; }
.interp-attention-view .iav-overview { font-size: 11px; max-width: 100%; }
.interp-attention-view .iav-caption { color: #666; margin-bottom: 4px; }
.interp-attention-view .iav-layer { display: flex; flex-wrap: wrap; gap: 4px; margin-bottom: 4px; }
.interp-attention-view .iav-thumb { text-align: center; cursor: pointer; padding: 2px; border: 2px solid transparent;
  border-radius: 3px; }
.interp-attention-view .iav-thumb.iav-chosen { border-color: #d62728; }
.interp-attention-view .iav-info { font-family: monospace; min-height: 1.4em; white-space: pre-wrap;
  overflow-wrap: anywhere; }
.interp-attention-view .iav-tokens { margin-top: 6px; line-height: 1.9; max-width: 900px; max-height: 14em;
  overflow-y: auto; overflow-wrap: anywhere; }
.interp-attention-view .iav-tokens span { display: inline-block; font-family: monospace; white-space: pre-wrap;
  word-break: break-all; line-height: 1.3; padding: 1px 2px; margin: 1px; border: 1px solid #ddd;
  border-radius: 3px; cursor: pointer; }
.interp-attention-view .iav-tokens span.iav-future { color: #999; border-style: dashed; }
.interp-attention-view .iav-tokens span.iav-query { border: 2px solid #d62728; }
.interp-attention-view .iav-hint { font-size: 11px; color: #666; margin-top: 4px; }
"""

# Plain ES5, no external resources. __ID__, __PALETTE__ and __DATA__ are filled in by html().
_SCRIPT = """
(function () {
  var id = "__ID__", palette = __PALETTE__, data = __DATA__;
  var root = document.getElementById(id);
  if (!root) { return; }
  var select = document.getElementById(id + "-select"), canvas = document.getElementById(id + "-grid");
  var info = document.getElementById(id + "-info"), line = document.getElementById(id + "-tokens");
  var overview = document.getElementById(id + "-overview");
  var tokens = data.tokens, n = tokens.length, causal = data.causal, names = data.names;
  var head = data.selected, preview = null, query = n - 1, locked = false, hover = null;
  var idle = "Hover a cell: query -> key: attention.";
  var stops = palette.map(function (h) { return [1, 3, 5].map(function (i) { return parseInt(h.substr(i, 2), 16); }); });
  var bytes = data.patterns.map(function (text) {
    var binary = atob(text.replace(/-/g, "+").replace(/_/g, "/")), out = new Uint8Array(binary.length);
    for (var k = 0; k < binary.length; k++) { out[k] = binary.charCodeAt(k); }
    return out;
  });
  function value(h, i, j) {  // attention of query i on key j in [0, 1]; null for a masked (future) key
    if (causal) { return j > i ? null : bytes[h][i * (i + 1) / 2 + j] / 255; }
    return bytes[h][i * n + j] / 255;
  }
  function colour(v) {
    if (v === null) { return [224, 224, 224]; }
    var x = Math.min(Math.max(v, 0), 1) * (stops.length - 1), low = Math.min(Math.floor(x), stops.length - 2), w = x - low;
    return [0, 1, 2].map(function (c) { return Math.round(stops[low][c] + (stops[low + 1][c] - stops[low][c]) * w); });
  }
  function format(v) { return v === null ? "future key (masked)" : v.toFixed(3); }
  function short(label) { return label.length > 14 ? label.slice(0, 13) + "\\u2026" : label; }
  function shown() { return preview === null ? head : preview; }
  function picture(h, step) {  // a canvas of ceil(n / step) pixels a side: block maxima of the pattern
    var m = Math.ceil(n / step), out = document.createElement("canvas"); out.width = m; out.height = m;
    var pctx = out.getContext("2d"), image = pctx.createImageData(m, m);
    for (var a = 0; a < m; a++) { for (var b = 0; b < m; b++) {
      var best = null;
      for (var i = a * step; i < Math.min(n, (a + 1) * step); i++) { for (var j = b * step; j < Math.min(n, (b + 1) * step); j++) {
        var v = value(h, i, j); if (v !== null && (best === null || v > best)) { best = v; }
      } }
      var c = colour(best), k = 4 * (a * m + b);
      image.data[k] = c[0]; image.data[k + 1] = c[1]; image.data[k + 2] = c[2]; image.data[k + 3] = 255;
    } }
    pctx.putImageData(image, 0, 0);
    return out;
  }
  // ----- the main grid: one cell per (query, key); axis titles always, token labels when cells are big enough
  var cell = Math.max(1, Math.min(24, Math.floor(560 / n))), labelled = cell >= 9, font = Math.min(11, cell - 2);
  var ctx = canvas.getContext("2d"), band = 16, labels = 0;
  var tick = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000].filter(function (s) { return s * cell >= 40; })[0] || 10000;
  ctx.font = (labelled ? font : 10) + "px monospace";
  if (labelled) { tokens.forEach(function (t) { labels = Math.max(labels, ctx.measureText(short(t)).width + 8); }); }
  else { labels = ctx.measureText(String(n - 1)).width + 8; }
  var margin = band + labels, side = margin + n * cell + 2;
  var ratio = Math.max(1, Math.min(window.devicePixelRatio || 1, 2, Math.floor(4096 / side) || 1));
  canvas.width = side * ratio; canvas.height = side * ratio;
  canvas.style.width = side + "px"; canvas.style.height = side + "px";
  var hatch = document.createElement("canvas"); hatch.width = 6; hatch.height = 6;
  var hctx = hatch.getContext("2d");
  hctx.fillStyle = "#eeeeee"; hctx.fillRect(0, 0, 6, 6);
  hctx.strokeStyle = "#b0b0b0"; hctx.lineWidth = 1; hctx.beginPath(); hctx.moveTo(0, 6); hctx.lineTo(6, 0); hctx.stroke();
  var pictures = {};
  function full(h) { return pictures[h] || (pictures[h] = picture(h, 1)); }
  function draw() {
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, side, side);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(full(shown()), margin, margin, n * cell, n * cell);
    if (causal) {
      ctx.fillStyle = ctx.createPattern(hatch, "repeat");
      for (var r = 0; r < n - 1; r++) { ctx.fillRect(margin + (r + 1) * cell, margin + r * cell, (n - r - 1) * cell, cell); }
    }
    ctx.fillStyle = "#222"; ctx.font = "11px system-ui, sans-serif"; ctx.textBaseline = "middle";
    ctx.textAlign = "center"; ctx.fillText("key position \\u2192", margin + n * cell / 2, band / 2);
    ctx.save(); ctx.translate(band / 2, margin + n * cell / 2); ctx.rotate(-Math.PI / 2);
    ctx.fillText("\\u2190 query position", 0, 0); ctx.restore();
    ctx.font = (labelled ? font : 10) + "px monospace";
    for (var i = 0; i < n; i++) {
      if (!labelled && i % tick !== 0) { continue; }
      var text = labelled ? short(tokens[i]) : String(i), middle = margin + (i + 0.5) * cell;
      ctx.fillStyle = i === query ? "#d62728" : "#222";
      ctx.textAlign = "right"; ctx.fillText(text, margin - 4, middle);
      ctx.save(); ctx.translate(middle, margin - 4); ctx.rotate(-Math.PI / 2);
      ctx.fillStyle = "#222"; ctx.textAlign = "left"; ctx.fillText(text, 0, 0); ctx.restore();
    }
    ctx.lineWidth = 1.5; ctx.strokeStyle = "#d62728";
    ctx.strokeRect(margin, margin + query * cell, n * cell, cell);
    if (hover) { ctx.strokeStyle = "#fff"; ctx.strokeRect(margin + hover[1] * cell, margin + hover[0] * cell, cell, cell); }
  }
  // ----- the token row: the query's attention on each key
  var spans = tokens.map(function (t, i) {
    var span = document.createElement("span");
    span.textContent = t; span.title = "position " + i;
    span.addEventListener("mouseenter", function () { if (!locked) { setQuery(i); } });
    span.addEventListener("click", function () { locked = !(locked && query === i); setQuery(i); });
    line.appendChild(span);
    return span;
  });
  function paintTokens() {
    spans.forEach(function (span, j) {
      var v = value(shown(), query, j), a = v === null ? 0 : v;
      span.style.background = v === null ? "transparent" : "rgba(33, 102, 172, " + a.toFixed(3) + ")";
      span.style.color = v === null ? "#999" : (a > 0.55 ? "#fff" : "#222");
      span.className = j === query ? "iav-query" : (v === null ? "iav-future" : "");
      span.title = "position " + j + ": " + format(v) + " from query " + query;
    });
  }
  function setQuery(i) { query = i; paintTokens(); draw(); }
  function refresh() { paintTokens(); draw(); thumbs.forEach(function (t, k) { t.className = "iav-thumb" + (k === head ? " iav-chosen" : ""); }); }
  function cellAt(event) {
    var rect = canvas.getBoundingClientRect();
    var i = Math.floor((event.clientY - rect.top - margin) / cell), j = Math.floor((event.clientX - rect.left - margin) / cell);
    return i >= 0 && i < n && j >= 0 && j < n ? [i, j] : null;
  }
  canvas.addEventListener("mousemove", function (event) {
    hover = cellAt(event);
    info.textContent = hover ? "query " + tokens[hover[0]] + " [" + hover[0] + "] -> key " + tokens[hover[1]] + " [" +
      hover[1] + "]: " + format(value(shown(), hover[0], hover[1])) : idle;
    if (hover && !locked) { setQuery(hover[0]); } else { draw(); }
  });
  canvas.addEventListener("mouseleave", function () { hover = null; info.textContent = idle; draw(); });
  canvas.addEventListener("click", function (event) {
    var target = cellAt(event);
    if (target) { locked = !(locked && query === target[0]); setQuery(target[0]); }
  });
  select.addEventListener("change", function () { head = select.selectedIndex; preview = null; refresh(); });
  // ----- the overview: a small picture of every head, one row per layer when labels start with "L{layer}H{head}"
  var thumbSide = 44, step = Math.max(1, Math.ceil(n / thumbSide)), rows = {};
  var thumbs = names.map(function (name, k) {
    var match = /^L(\\d+)H(\\d+)/.exec(name), layer = match ? match[1] : "";
    if (!rows[layer]) { rows[layer] = document.createElement("div"); rows[layer].className = "iav-layer"; overview.appendChild(rows[layer]); }
    var box = document.createElement("div"), small = document.createElement("canvas"), caption = document.createElement("div");
    small.width = thumbSide * 2; small.height = thumbSide * 2;
    small.style.width = thumbSide + "px"; small.style.height = thumbSide + "px";
    var sctx = small.getContext("2d"); sctx.imageSmoothingEnabled = false;
    sctx.drawImage(picture(k, step), 0, 0, thumbSide * 2, thumbSide * 2);
    caption.textContent = match ? match[0] : short(name);
    box.title = name + " (hover to preview, click to select)";
    box.appendChild(small); box.appendChild(caption); rows[layer].appendChild(box);
    box.addEventListener("mouseenter", function () { preview = k; info.textContent = "preview: " + name + " (click to select)"; refresh(); });
    box.addEventListener("mouseleave", function () { preview = null; info.textContent = idle; refresh(); });
    box.addEventListener("click", function () { head = k; preview = null; select.selectedIndex = k; info.textContent = idle; refresh(); });
    return box;
  });
  info.textContent = idle;
  root.querySelector(".iav-static").style.display = "none";
  root.querySelector(".iav-live").style.display = "";
  refresh();
})();
"""
