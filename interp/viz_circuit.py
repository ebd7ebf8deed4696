"""Pictures of edge-level circuits: an SVG of a circuit's nodes and edges, an HTML page with it and its edge
table, and a PNG of faithfulness curves.

Presentation only: the scores, circuits and curves come from `interp.analysis.graph`, `edge_attribution`,
`edge_patching` and `circuit_search`. The SVG and HTML need nothing and load nothing from the network (no
script: hovering an edge shows its name and score through SVG `<title>`); the PNG needs matplotlib
(`pip install "interp[viz]"`).

The circuit SVG: rows from `input` (bottom) to `logits` (top); a layer's heads and its MLP side by side, the
MLP one level higher in a sequential block (it reads the heads' output) and at the heads' height in a parallel
one (it reads the same stream). Only the circuit's nodes are drawn (those of the `max_edges` drawn edges when
it has more). An edge runs upward from its sender's top to the receiving node, passing the rows in between
through the gaps between their nodes; it enters a head at one of three ports, q (solid line), k (dashed) or
v (dotted); a grouped-query kv channel (`a1.kv1<k>`) is drawn to each query head of its group that is in the
circuit (`Circuit.nodes`). Width ∝ |score| (the widest is the largest |score| drawn; none thinner than
MIN_WIDTH px, so every edge stays visible); colour = sign, in the package's diverging convention
(`interp.display`): red +, blue −.
"""

from __future__ import annotations

import html
import io
from collections.abc import Sequence
from typing import TYPE_CHECKING

from interp.analysis.graph import Circuit
from interp.display import format_number
from interp import viz

if TYPE_CHECKING:
    from interp.analysis.circuit_search import FaithfulnessCurve

POSITIVE, NEGATIVE, UNSCORED = "#b2182b", "#2166ac", "#777777"
DASH = {"q": "", "k": "7 4", "v": "1.5 3", "": ""}  # stroke-dasharray per receiving channel
NODE_W, NODE_H, GAP = 66, 34, 24  # node box and the space between boxes (px)
LEVEL = 84  # height of one level of the drawing (px)
MAX_WIDTH, MIN_WIDTH = 8.0, 0.6  # stroke width of the largest |score| drawn, and the floor
MARGIN, LABEL_W = 16, 64  # outer margin; the column of "layer l" labels on the left
CHAR_W = 6.4  # rough width of one 11 px sans-serif character, to size the canvas for the legend
PORT = {"q": -NODE_W / 3, "k": 0.0, "v": NODE_W / 3, "": 0.0}  # where each channel enters a head


def _level(node: str, parallel: bool, n_layers: int) -> float:
    """The node's height in levels above `input` (0): a sequential block takes two (heads, then the MLP that
    reads them), a parallel block one."""
    per_layer = 1 if parallel else 2
    if node == "input":
        return 0.0
    if node == "logits":
        return float(per_layer * n_layers + 1)
    layer = int(node[1:].split(".")[0])
    return 1.0 + per_layer * layer + (1.0 if node.startswith("m") and not parallel else 0.0)


def _positions(circuit: Circuit, nodes: Sequence[str]) -> tuple[dict[str, tuple[float, float]], float, float]:
    """Centre (x, y) of each node, and the drawing's width and height (before the legend)."""
    graph = circuit.graph
    top = _level("logits", graph.parallel, graph.n_layers)
    rows: dict[str, list[str]] = {}  # a layer's heads then its MLP, in one row; input and logits alone
    for node in nodes:
        key = node if node in ("input", "logits") else node[1:].split(".")[0]
        rows.setdefault(key, []).append(node)
    width = max((len(row) * (NODE_W + GAP) - GAP for row in rows.values()), default=NODE_W)
    positions = {}
    for row in rows.values():
        left = LABEL_W + MARGIN + (width - (len(row) * (NODE_W + GAP) - GAP)) / 2 + NODE_W / 2
        for i, node in enumerate(row):
            level = _level(node, graph.parallel, graph.n_layers)
            positions[node] = (left + i * (NODE_W + GAP), MARGIN + 28 + (top - level) * LEVEL + NODE_H / 2)
    return positions, LABEL_W + 2 * MARGIN + width, MARGIN + 28 + top * LEVEL + NODE_H


def _drawn_edges(circuit: Circuit, max_edges: int) -> list[int]:
    """Indices of the circuit's edges to draw: the `max_edges` largest |score|, smallest first (drawn under)."""
    return circuit.ranked()[:max_edges].flip(0).tolist()


def circuit_svg(circuit: Circuit, max_edges: int = 60) -> str:
    """A self-contained SVG of `circuit` (layout and encoding in the module docstring).

    Each drawn node is a `<g class="node" data-node=NAME>`, each drawn line a `<path class="edge"
    data-edge=NAME>` (a GQA kv edge gives one path per drawn query head of its group)."""
    if max_edges < 1:
        raise ValueError(f"max_edges must be >= 1, got {max_edges}.")
    graph = circuit.graph
    edges = _drawn_edges(circuit, max_edges)
    shown = circuit.in_graph.clone()
    shown[:] = False
    shown[edges] = True
    nodes = circuit.with_edges(shown).nodes()
    positions, width, height = _positions(circuit, nodes)
    names = list(graph.senders) + ["logits"]
    feeds = graph.receiver_nodes()
    scores = circuit.scores
    largest = max((abs(float(scores[e])) for e in edges), default=0.0) if scores is not None else 0.0
    rows: dict[float, list[float]] = {}  # y of each row of nodes -> the x of its nodes
    for x, y in positions.values():
        rows.setdefault(y, []).append(x)
    lines = []
    for edge in edges:
        name = graph.edges[edge]
        sender = graph.senders[int(graph.edge_sender[edge])]
        receiver = graph.receivers[int(graph.edge_receiver[edge])]
        channel = receiver[-2] if receiver.endswith(">") else ""
        value = float(scores[edge]) if scores is not None else None
        colour = UNSCORED if not value or largest == 0 else POSITIVE if value > 0 else NEGATIVE
        stroke = 1.5 if value is None or largest == 0 else max(MIN_WIDTH, MAX_WIDTH * abs(value) / largest)
        tip = html.escape(f"{name}: score {format_number(value)}" if value is not None else name)
        x1, y1 = positions[sender][0], positions[sender][1] - NODE_H / 2
        # a GQA kv edge: to each head of its group that is drawn (`Circuit.nodes` decides which are in)
        for target in [t for t in feeds[int(graph.edge_receiver[edge])].nonzero()[:, 0].tolist() if names[t] in positions]:
            x2, y2 = positions[names[target]][0] + PORT[channel], positions[names[target]][1] + NODE_H / 2
            dash = f' stroke-dasharray="{DASH[channel]}"' if DASH[channel] else ""
            lines.append(f'<path class="edge" data-edge="{html.escape(name)}" d="{_route(x1, y1, x2, y2, rows)}" '
                         f'stroke="{colour}" stroke-width="{stroke:.2f}"{dash}><title>{tip}</title></path>')
    boxes = [_node(node, *positions[node]) for node in nodes]
    layer_labels = []
    for layer in range(graph.n_layers):
        if any(node not in ("input", "logits") and int(node[1:].split(".")[0]) == layer for node in nodes):
            level = _level(f"a{layer}.h0", graph.parallel, graph.n_layers)
            y = MARGIN + 28 + (_level("logits", graph.parallel, graph.n_layers) - level) * LEVEL + NODE_H / 2
            layer_labels.append(f'<text x="{MARGIN}" y="{y + 4:.1f}" class="layer">layer {layer}</text>')
    title = (f"{circuit.method or 'circuit'}: {circuit.n_edges} edges, {len(circuit.nodes())} nodes"
             + (f" (drawn: the {len(edges)} largest |score|)" if len(edges) < circuit.n_edges else ""))
    legend, legend_w = _legend(height + 14, largest, scores is not None)
    width = max(width, legend_w + 2 * MARGIN, len(title) * CHAR_W * 1.1 + 2 * MARGIN)
    empty = ([f'<text x="{width / 2:.0f}" y="{height / 2:.0f}" text-anchor="middle" class="layer">empty circuit: '
              "no chosen edge lies on a path from input to logits</text>"] if not edges else [])
    total = height + 14 + 58
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{total:.0f}" '
            f'viewBox="0 0 {width:.0f} {total:.0f}" font-family="system-ui,Helvetica,Arial,sans-serif">'
            f"<title>{html.escape(title)}</title>"
            "<style>.edge{fill:none;stroke-opacity:.8}.node rect{stroke:#333;stroke-width:1}"
            ".node text{font-size:12px;fill:#111}.node .port{font-size:9px;fill:#555}"
            ".layer{font-size:11px;fill:#666}.legend{font-size:11px;fill:#333}</style>"
            f'<rect width="100%" height="100%" fill="#fff"/>'
            f'<text x="{MARGIN}" y="{MARGIN + 6}" font-size="13" font-weight="600">{html.escape(title)}</text>'
            + "".join(layer_labels + lines + boxes + empty + legend) + "</svg>")


def _route(x1: float, y1: float, x2: float, y2: float, rows: dict[float, list[float]]) -> str:
    """SVG path data from a sender's top (x1, y1) up to a receiver's port (x2, y2) that never crosses a node: it
    passes each row of nodes in between vertically, through the gap nearest the straight line, and bends
    (cubic curves with vertical ends) only in the free space between rows."""
    points, path = [(x1, y1)], f"M{x1:.1f},{y1:.1f}"
    for y in sorted((y for y in rows if y2 < y < y1), reverse=True):
        xs = sorted(rows[y])
        ideal = x1 + (x2 - x1) * (y1 - y) / (y1 - y2)
        if any(abs(ideal - x) < NODE_W / 2 + 4 for x in xs):
            gaps = [xs[0] - NODE_W / 2 - GAP / 2 - 2, *((a + b) / 2 for a, b in zip(xs, xs[1:])),
                    xs[-1] + NODE_W / 2 + GAP / 2 + 2]
            ideal = min(gaps, key=lambda gap: abs(gap - ideal))
        points += [(ideal, y + NODE_H / 2 + 4), (ideal, y - NODE_H / 2 - 4)]
    points.append((x2, y2))
    for i in range(0, len(points) - 1, 2):  # a curve through free space, then the straight pass through a row
        (xa, ya), (xb, yb) = points[i], points[i + 1]
        middle = (ya + yb) / 2
        path += f" C{xa:.1f},{middle:.1f} {xb:.1f},{middle:.1f} {xb:.1f},{yb:.1f}"
        if i + 2 < len(points):
            path += f" L{points[i + 2][0]:.1f},{points[i + 2][1]:.1f}"
    return path


def _node(name: str, x: float, y: float) -> str:
    fill = "#fde9c8" if name.startswith("m") else "#e7eef7" if name.startswith("a") else "#eeeeee"
    parts = [f'<g class="node" data-node="{name}"><rect x="{x - NODE_W / 2:.1f}" y="{y - NODE_H / 2:.1f}" '
             f'width="{NODE_W}" height="{NODE_H}" rx="5" fill="{fill}"/>']
    if name.startswith("a"):  # a head: label above, its three input ports below
        parts.append(f'<text x="{x:.1f}" y="{y - 2:.1f}" text-anchor="middle">{name}</text>')
        parts += [f'<text class="port" x="{x + PORT[c]:.1f}" y="{y + NODE_H / 2 - 4:.1f}" text-anchor="middle">{c}'
                  "</text>" for c in "qkv"]
    else:
        parts.append(f'<text x="{x:.1f}" y="{y + 4:.1f}" text-anchor="middle">{name}</text>')
    return "".join(parts) + "</g>"


def _legend(y: float, largest: float, scored: bool) -> tuple[list[str], float]:
    """Legend rows from height y, and their width."""
    x = MARGIN
    sample = lambda dx, dy, colour, w, dash="": (  # noqa: E731
        f'<line class="legend-line" x1="{x + dx}" y1="{y + dy}" x2="{x + dx + 26}" y2="{y + dy}" stroke="{colour}" '
        f'stroke-width="{w}"' + (f' stroke-dasharray="{dash}"' if dash else "") + "/>")
    if scored and largest > 0:
        first = (f"edge width ∝ |score| (widest: |score| = {format_number(largest)}), colour = sign: "
                 "red positive, blue negative")
        row1 = [sample(0, 0, POSITIVE, MAX_WIDTH), sample(32, 0, NEGATIVE, MAX_WIDTH / 2)]
    else:
        first, row1 = "edges unscored (all drawn at one width)", [sample(0, 0, UNSCORED, 1.5)]
    second = "into a head: solid = query (q), dashed = key (k), dotted = value (v); edges run upward"
    row2 = [sample(0, 22, "#333", 1.5), sample(32, 22, "#333", 1.5, DASH["k"]), sample(64, 22, "#333", 1.5, DASH["v"])]
    texts = [f'<text class="legend" x="{x + 100}" y="{y + 4}">{html.escape(first)}</text>',
             f'<text class="legend" x="{x + 100}" y="{y + 26}">{html.escape(second)}</text>']
    return row1 + row2 + texts, 100 + CHAR_W * max(len(first), len(second))


# ----- HTML --------------------------------------------------------------------------------------
STYLE = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
         "svg{max-width:100%;height:auto}table{border-collapse:collapse;margin:.5em 0}"
         "td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}td.num{text-align:right;font-family:monospace}"
         "section{margin-bottom:2.5em}")


def html_page(title: str, body: str) -> str:
    """A self-contained page in this module's style (`interp.viz.html_page`)."""
    return viz.html_page(title, body, STYLE)


def inline_svg(svg: str) -> str:
    """An SVG for embedding in HTML, where the namespace attribute is implied."""
    return svg.replace(' xmlns="http://www.w3.org/2000/svg"', "", 1)


def edge_table(circuit: Circuit, max_rows: int = 500) -> str:
    """The circuit's edges and scores, by |score|, as an HTML table (the first `max_rows`; the rest are in the
    graph JSON)."""
    edges = circuit.edges
    rows = "".join(f"<tr><td>{rank}</td><td>{html.escape(edge)}</td><td class=num>"
                   f"{format_number(circuit.score(edge)) if circuit.scores is not None else ''}</td></tr>"
                   for rank, edge in enumerate(edges[:max_rows], 1))
    more = (f"<p>{len(edges) - max_rows:,} more edges, smaller |score|, are in the graph JSON.</p>"
            if len(edges) > max_rows else "")
    return f"<table><tr><th>rank</th><th>edge</th><th>score</th></tr>{rows}</table>{more}"


def circuit_section(circuit: Circuit, title: str, max_edges: int = 60, extra_html: str = "") -> str:
    """An HTML `<section>`: heading, `extra_html`, the circuit's SVG and (folded) its edge table."""
    return (f"<section><h2>{html.escape(title)}</h2>{extra_html}{inline_svg(circuit_svg(circuit, max_edges))}"
            f"<details><summary>The {circuit.n_edges} edges of the circuit and their scores</summary>"
            f"{edge_table(circuit)}</details></section>")


def circuit_html(circuit: Circuit, title: str, extra_html: str = "") -> str:
    """A self-contained page: the circuit's SVG and its edge table (`extra_html` goes under the heading)."""
    return html_page(title, f"<h1>{html.escape(title)}</h1>" + circuit_section(circuit, circuit.method or "circuit",
                                                                                 extra_html=extra_html))


# ----- faithfulness curves -----------------------------------------------------------------------
def faithfulness_table(curves: Sequence[FaithfulnessCurve]) -> str:
    """The curves as an HTML table (methods by fractions of edges), for use without matplotlib."""
    head = "".join(f"<th>{format_number(100 * f)} %</th>" for f in curves[0].fractions)
    rows = "".join(f"<tr><td>{html.escape(c.method)}</td>" + "".join(f"<td class=num>{v:.3f}</td>"
                                                                   for v in c.faithfulness) + "</tr>" for c in curves)
    return f"<table><tr><th>faithfulness \\ edges</th>{head}</tr>{rows}</table>"


def faithfulness_png(curves: Sequence[FaithfulnessCurve], title: str = "") -> bytes:
    """Faithfulness against the fraction of edges kept (log axis, 0.1 % to 100 %), one line per method, with the
    0 (corrupted run) and 1 (full model) lines; the legend gives each method's CPR and CMD. PNG at `viz.PNG_DPI`."""
    viz._require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, NullLocator

    if not curves:
        raise ValueError("No faithfulness curve to plot; pass at least one FaithfulnessCurve.")
    figure = Figure(figsize=(6.4, 4.0), dpi=100)
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    ax.axhline(1.0, color="#444", lw=0.9, ls="--")
    ax.axhline(0.0, color="#444", lw=0.9, ls=":")
    for curve, marker in zip(curves, "osD^vP*X" * 4):
        ax.plot(curve.fractions, curve.faithfulness, marker=marker, ms=4, lw=1.6,
                label=f"{curve.method}  (CPR {curve.cpr:.3f}, CMD {curve.cmd:.3f})")
    ax.set_xscale("log")
    ax.set_xlim(0.0008, 1.25)
    ticks = [0.001, 0.01, 0.1, 1.0]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticks(ticks, ["0.1 %", "1 %", "10 %", "100 %"])
    low = min(0.0, *(min(c.faithfulness) for c in curves))
    high = max(1.0, *(max(c.faithfulness) for c in curves))
    pad = 0.06 * (high - low)
    ax.set_ylim(low - pad, high + pad)
    side = ax.get_yaxis_transform()  # x in axes fractions: label the two lines just right of the plot
    ax.text(1.01, 1.0, "full model", transform=side, va="center", fontsize=8, color="#444")
    ax.text(1.01, 0.0, "corrupted run", transform=side, va="center", fontsize=8, color="#444")
    ax.set_xlabel(f"fraction of the graph's {curves[0].total_edges:,} edges in the circuit (log scale)")
    ax.set_ylabel("faithfulness (1 = full model)")
    ax.set_title(title or "Faithfulness of the top-|score| circuits", fontsize=11)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False,  # below: hides no data
              title="CPR: area under the curve (higher is better); CMD: area between it and 1 (lower is better)",
              title_fontsize=8)
    ax.grid(True, which="major", alpha=0.3)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=viz.PNG_DPI, bbox_inches="tight", metadata={"Software": None})
    return buffer.getvalue()
