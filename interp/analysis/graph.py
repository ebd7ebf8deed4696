"""The edge-level computational graph of a transformer, and circuits in it (subsets of its edges).

Nodes, in forward order: `input` (the token and position embeddings: `blocks.0.hook_resid_pre`), every
attention head `a{l}.h{h}` (its output `z_h W_O^h`, the `attn.hook_result` slice; the output bias b_O
belongs to no node and is never patched), every MLP `m{l}` (`hook_mlp_out`), and `logits`. Every
reader of the residual stream is a receiver channel: a head's query, key and value inputs
`a{l}.h{h}<q>`, `<k>`, `<v>`, an MLP's input `m{l}`, and `logits` (the final residual stream). An edge
runs from each node to each receiver that reads a residual stream it writes to, named as in EAP-IG and
MIB (Hanna et al. 2024; Mueller et al. 2025): `a0.h1->a3.h2<q>`, `input->m0`, `m11->logits`.

Grouped-query attention: keys and values are computed once per key/value head, so the graph has one
`<k>` and one `<v>` channel per kv head, named `a{l}.kv{g}<k>` / `a{l}.kv{g}<v>` (kv head g serves query
heads g·group .. g·group + group − 1). MIB's graphs of GQA models ungroup the keys instead (one per query
head); the different name keeps one format's kv edge from being read as the other's.
Which nodes feed which comes from the block structure: in a sequential block the MLP reads its layer's
heads; in a parallel block (GPT-NeoX, GPT-J) attention and MLP both read resid_pre, so m{l} does not.

Edge count, with L layers, H query heads, K kv heads (K = H without GQA), and s = 1 for sequential
blocks, 0 for parallel ones: n_edges = Σ_l [(H + 2K)(1 + (H+1)l) + 1 + (H+1)l + sH] + 1 + L(H+1).
GPT-2 small (L = H = K = 12, s = 1): 32,491 (as MIB counts it).
"""

from __future__ import annotations

import difflib
import json
import operator
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from interp.files import write_atomic

GRAPH_FORMAT = "EAP-IG/MIB graph JSON: {cfg, nodes: {name: {in_graph}}, edges: {name: {score, in_graph}}}"
_EDGE = re.compile(r"^(input|a\d+\.h\d+|m\d+)->(a\d+\.h\d+<[qkv]>|a\d+\.kv\d+<[kv]>|m\d+|logits)$")


@dataclass(frozen=True)
class Graph:
    """The structure: which senders feed which receivers (see the module docstring). Built by `from_model`.

    `senders` (forward order), `receivers` (per layer: H `<q>`, K `<k>`, K `<v>`, then the MLP; `logits` last)
    and `edges` are names; `edge_sender[e]` / `edge_receiver[e]` index them. Edges are ordered by receiver."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    parallel: bool
    d_model: int
    senders: tuple[str, ...] = field(init=False, repr=False, compare=False)  # derived from the five fields above
    receivers: tuple[str, ...] = field(init=False, repr=False, compare=False)
    edges: tuple[str, ...] = field(init=False, repr=False, compare=False)
    edge_sender: Int[Tensor, "n_edges"] = field(init=False, repr=False, compare=False)
    edge_receiver: Int[Tensor, "n_edges"] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}.")
        senders, receivers, pairs = ["input"], [], []
        for layer in range(self.n_layers):
            before = len(senders)  # nodes writing to this layer's resid_pre
            for kind, count in (("q", self.n_heads), ("k", self.n_kv_heads), ("v", self.n_kv_heads)):
                unit = "kv" if kind != "q" and self.n_kv_heads != self.n_heads else "h"
                for head in range(count):
                    pairs += [(s, len(receivers)) for s in range(before)]
                    receivers.append(f"a{layer}.{unit}{head}<{kind}>")
            senders += [f"a{layer}.h{h}" for h in range(self.n_heads)]
            pairs += [(s, len(receivers)) for s in range(before if self.parallel else len(senders))]
            receivers.append(f"m{layer}")
            senders.append(f"m{layer}")
        pairs += [(s, len(receivers)) for s in range(len(senders))]
        receivers.append("logits")
        set_ = object.__setattr__
        set_(self, "senders", tuple(senders))
        set_(self, "receivers", tuple(receivers))
        set_(self, "edges", tuple(f"{senders[s]}->{receivers[r]}" for s, r in pairs))
        set_(self, "edge_sender", torch.tensor([s for s, _ in pairs], dtype=torch.long))
        set_(self, "edge_receiver", torch.tensor([r for _, r in pairs], dtype=torch.long))

    @classmethod
    def from_model(cls, model_or_config: Any) -> Graph:
        """The graph of a `HookedTransformer` (or its `Config`). A grouped-query model whose attention was switched
        to per-query-head keys and values (`blocks.set_ungrouped`, interp.tl's ungroup_grouped_query_attention)
        gets one `<k>`/`<v>` channel per query head, `a{l}.h{h}<k>`: MIB's layout."""
        cfg = getattr(model_or_config, "cfg", model_or_config)
        blocks = getattr(model_or_config, "blocks", None)
        n_kv = cfg.n_kv_heads if blocks is None else blocks[0].attn.n_kv_inputs
        if blocks is not None and any(block.attn.n_kv_inputs != n_kv for block in blocks):
            raise ValueError("Some blocks have per-query-head keys (set_ungrouped) and some do not; switch all or none.")
        return cls(cfg.n_layers, cfg.n_heads, n_kv, bool(cfg.parallel_blocks), cfg.d_model)

    @property
    def n_edges(self) -> int:
        return len(self.edges)

    @property
    def group(self) -> int:
        return self.n_heads // self.n_kv_heads

    def index(self, edge: str) -> int:
        """The position of an edge name in `edges` (KeyError naming close names if there is none)."""
        lookup = self._lookup()
        if edge not in lookup:
            raise KeyError(_unknown_edge(self, edge))
        return lookup[edge]

    def indices(self, edges: Sequence[str]) -> Int[Tensor, "k"]:
        return torch.tensor([self.index(e) for e in edges], dtype=torch.long)

    def _lookup(self) -> dict[str, int]:
        cached = self.__dict__.get("_lookup_table")
        if cached is None:
            cached = {name: i for i, name in enumerate(self.edges)}
            object.__setattr__(self, "_lookup_table", cached)
        return cached

    def receiver_layer(self) -> Int[Tensor, "n_receivers"]:
        """The block each receiver reads in (n_layers for `logits`)."""
        return torch.tensor([int(name[1:].split(".")[0].split("<")[0]) for name in self.receivers[:-1]] + [self.n_layers])

    def receiver_nodes(self) -> Bool[Tensor, "n_receivers n_nodes"]:
        """Which nodes (senders, then `logits` last) each receiver channel feeds: its own head or MLP; a GQA key
        or value channel feeds every query head of its group."""
        position = {name: i for i, name in enumerate(self.senders)}
        feeds = torch.zeros(len(self.receivers), len(self.senders) + 1, dtype=torch.bool)
        for r, name in enumerate(self.receivers[:-1]):
            node = name.split("<")[0]
            if ".kv" in node:
                layer, group = node[1:].split(".kv")
                for h in range(int(group) * self.group, (int(group) + 1) * self.group):
                    feeds[r, position[f"a{layer}.h{h}"]] = True
            else:
                feeds[r, position[node]] = True
        feeds[-1, -1] = True
        return feeds

    def cfg(self) -> dict[str, Any]:
        """The `cfg` entry of the EAP-IG/MIB JSON (their keys, plus n_key_value_heads)."""
        return {"n_layers": self.n_layers, "n_heads": self.n_heads, "n_key_value_heads": self.n_kv_heads,
                "parallel_attn_mlp": self.parallel, "d_model": self.d_model}


def _stages(graph: Graph) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """The receivers and edges of each stage (a layer's q/k/v channels; its MLP; the logits) as index ranges:
    edges are ordered by receiver, and a stage's senders all come from earlier stages."""
    cached = graph.__dict__.get("_stage_table")
    if cached is None:
        bounds = torch.searchsorted(graph.edge_receiver, torch.arange(len(graph.receivers) + 1)).tolist()
        per_layer = graph.n_heads + 2 * graph.n_kv_heads + 1
        cuts = [0]
        for layer in range(graph.n_layers):
            cuts += [layer * per_layer + per_layer - 1, (layer + 1) * per_layer]
        cuts.append(len(graph.receivers))
        cached = [((a, b), (bounds[a], bounds[b])) for a, b in zip(cuts, cuts[1:])]
        object.__setattr__(graph, "_stage_table", cached)
    return cached


def _unknown_edge(graph: Graph, edge: str) -> str:
    if not _EDGE.match(edge):
        return (f"{edge!r} is not an edge name; edges are 'SENDER->RECEIVER' with senders input, a{{l}}.h{{h}}, "
                f"m{{l}} and receivers a{{l}}.h{{h}}<q|k|v>, m{{l}}, logits (e.g. 'a0.h1->a1.h2<k>').")
    sender, _, receiver = edge.partition("->")
    nearby = [e for e in graph.edges if e.startswith(sender + "->") or e.endswith("->" + receiver)][:5000]
    close = difflib.get_close_matches(edge, nearby, n=3)
    return (f"{edge!r} is not an edge of this graph ({graph.n_layers} layers, {graph.n_heads} heads, "
            f"{graph.n_kv_heads} kv heads, {'parallel' if graph.parallel else 'sequential'} blocks; an edge runs "
            f"forward only, and <k>/<v> are per kv head). Close: {close}.")


@dataclass(frozen=True)
class Circuit:
    """Edge scores and a subset of edges of a `Graph`.

    `scores` `[n_edges]` (None: unscored), float; `in_graph` `[n_edges]` bool. Attribution methods return
    one with every edge in; `top_k`, `threshold` and the searches in `interp.analysis.circuit_search`
    return smaller ones. A node is in the circuit when an edge of it is."""

    graph: Graph
    scores: Float[Tensor, "n_edges"] | None
    in_graph: Bool[Tensor, "n_edges"]
    method: str = ""

    def __post_init__(self) -> None:
        n = self.graph.n_edges
        if self.scores is not None and tuple(self.scores.shape) != (n,):
            raise ValueError(f"scores must have shape [n_edges] = [{n}], got {tuple(self.scores.shape)}.")
        if tuple(self.in_graph.shape) != (n,) or self.in_graph.dtype != torch.bool:
            raise ValueError(f"in_graph must be a bool tensor of shape [{n}], got {self.in_graph.dtype} "
                             f"{tuple(self.in_graph.shape)}.")

    @classmethod
    def full(cls, graph: Graph, scores: Tensor | None = None, method: str = "") -> Circuit:
        return cls(graph, scores, torch.ones(graph.n_edges, dtype=torch.bool), method)

    @classmethod
    def empty(cls, graph: Graph) -> Circuit:
        """No edge kept: every receiver reads only patched senders (the corrupted run, for a corrupted patch)."""
        return cls(graph, None, torch.zeros(graph.n_edges, dtype=torch.bool))

    @classmethod
    def from_edges(cls, graph: Graph, edges: Sequence[str], scores: Tensor | None = None) -> Circuit:
        """The circuit of the named edges."""
        in_graph = torch.zeros(graph.n_edges, dtype=torch.bool)
        in_graph[graph.indices(edges)] = True
        return cls(graph, scores, in_graph)

    @property
    def n_edges(self) -> int:
        """How many edges are in the circuit."""
        return int(self.in_graph.sum())

    @property
    def edges(self) -> list[str]:
        """The circuit's edge names, by |score| (descending) when scored, else in graph order."""
        return [self.graph.edges[i] for i in self.ranked().tolist()]

    def ranked(self) -> Int[Tensor, "k"]:
        """Indices of the circuit's edges, by |score| (descending, ties in graph order) when scored."""
        chosen = self.in_graph.nonzero()[:, 0]
        if self.scores is not None:
            chosen = chosen[self.scores[chosen].abs().argsort(descending=True, stable=True)]
        return chosen

    def score(self, edge: str) -> float:
        if self.scores is None:
            raise ValueError("This circuit has no scores.")
        return float(self.scores[self.graph.index(edge)])

    def __contains__(self, edge: str) -> bool:
        return bool(self.in_graph[self.graph.index(edge)])

    def nodes(self) -> list[str]:
        """Nodes with an edge in the circuit, in forward order (`logits` last if it has one): every sender of a
        circuit edge and every head or MLP a circuit edge feeds; a GQA key/value edge, which feeds every head
        of its group, counts the group's heads already in the circuit (all of them if none is)."""
        graph = self.graph
        feeds = graph.receiver_nodes()
        used = torch.zeros(len(graph.senders) + 1, dtype=torch.bool)
        used[graph.edge_sender[self.in_graph]] = True
        receivers = graph.edge_receiver[self.in_graph].unique()
        grouped = torch.tensor([".kv" in graph.receivers[r] for r in receivers.tolist()], dtype=torch.bool)
        if len(receivers):
            used |= feeds[receivers[~grouped]].any(0)
            for r in receivers[grouped].tolist():
                used |= feeds[r] if not (feeds[r] & used).any() else torch.zeros_like(used)
        names = list(graph.senders) + ["logits"]
        return [names[i] for i in used.nonzero()[:, 0].tolist()]

    def with_edges(self, in_graph: Bool[Tensor, "n_edges"], method: str | None = None) -> Circuit:
        return Circuit(self.graph, self.scores, in_graph, self.method if method is None else method)

    # ----- circuits from scores ------------------------------------------------------------------------
    def _by_score(self, absolute: bool) -> Tensor:
        if self.scores is None:
            raise ValueError("This circuit has no scores; score it first (eap, eap_ig or exact_edge_scores).")
        if not torch.isfinite(self.scores).all():
            raise ValueError("The edge scores have NaN or inf entries; check the metric and the inputs.")
        key = self.scores.abs() if absolute else self.scores
        return key.argsort(descending=True, stable=True)

    def top_k(self, k: int, absolute: bool = True, prune: bool = True) -> Circuit:
        """The k highest-scoring edges (by |score| when `absolute`), then (`prune`) only those on some path
        from `input` to `logits` inside the chosen set, as MIB's apply_topn + prune do (so it may keep fewer)."""
        try:
            k = operator.index(k) if not isinstance(k, bool) else None  # int, numpy or 0-dim torch integers
        except TypeError:
            k = None
        if k is None or not 0 <= k <= self.graph.n_edges:
            raise ValueError(f"k must be an integer between 0 and the number of edges, {self.graph.n_edges}.")
        in_graph = torch.zeros(self.graph.n_edges, dtype=torch.bool)
        in_graph[self._by_score(absolute)[:k]] = True
        chosen = self.with_edges(in_graph, method=f"{self.method} top-{k}".strip())
        return chosen.pruned() if prune else chosen

    def top_fraction(self, fraction: float, absolute: bool = True, prune: bool = True) -> Circuit:
        """`top_k(int(fraction * n_edges))` (MIB's edge count at a fraction)."""
        if not 0 <= fraction <= 1:
            raise ValueError(f"fraction must be in [0, 1] (0.05 is 5 % of edges), got {fraction}.")
        return self.top_k(int(fraction * self.graph.n_edges), absolute, prune)

    def threshold(self, value: float, absolute: bool = True, prune: bool = True) -> Circuit:
        """The edges whose (|score|) is at least `value`, pruned to input->logits paths."""
        if self.scores is None:
            raise ValueError("This circuit has no scores; score it first (eap, eap_ig or exact_edge_scores).")
        key = self.scores.abs() if absolute else self.scores
        chosen = self.with_edges(key >= value)
        return chosen.pruned() if prune else chosen

    def pruned(self) -> Circuit:
        """Only the edges that lie on a path input -> ... -> logits made of circuit edges: an edge whose sender is
        reached from `input` and one of whose fed nodes reaches `logits`. One forward and one backward sweep over
        the stages of the model (each layer's attention, then its MLP), vectorised over each stage's edges."""
        graph, keep = self.graph, self.in_graph
        feeds = graph.receiver_nodes()  # [n_receivers, n_nodes]
        stages = _stages(graph)  # (receiver range, edge range) per stage, in forward order
        reached = torch.zeros(len(graph.senders) + 1, dtype=torch.bool)
        reached[0] = True
        for (r0, r1), (e0, e1) in stages:  # a node is reached when a kept edge from a reached node feeds it
            live = keep[e0:e1] & reached[graph.edge_sender[e0:e1]]
            fed = torch.zeros(r1 - r0, dtype=torch.bool)
            fed[graph.edge_receiver[e0:e1][live] - r0] = True
            reached |= feeds[r0:r1][fed].any(0)
        useful = torch.zeros(len(graph.senders) + 1, dtype=torch.bool)  # reaches logits along kept edges
        useful[-1] = True
        useful_receiver = torch.zeros(len(graph.receivers), dtype=torch.bool)
        for (r0, r1), (e0, e1) in reversed(stages):  # later stages first: a node's readers are all later
            useful_receiver[r0:r1] = (feeds[r0:r1] & useful & reached).any(1)
            going = keep[e0:e1] & useful_receiver[graph.edge_receiver[e0:e1]]
            useful[graph.edge_sender[e0:e1][going]] = True
        on_path = keep & reached[graph.edge_sender] & useful_receiver[graph.edge_receiver]
        return self.with_edges(on_path)

    # ----- exchange ------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The EAP-IG/MIB JSON object: cfg, nodes (in_graph), edges (score, in_graph)."""
        nodes = set(self.nodes())
        scores = [0.0] * self.graph.n_edges if self.scores is None else self.scores.double().tolist()
        in_graph = self.in_graph.tolist()
        return {"cfg": self.graph.cfg(),
                "nodes": {name: {"in_graph": name in nodes} for name in (*self.graph.senders, "logits")},
                "edges": {name: {"score": score, "in_graph": keep}
                          for name, score, keep in zip(self.graph.edges, scores, in_graph)},
                **({"method": self.method} if self.method else {})}

    def to_json(self, path: str | os.PathLike) -> Path:
        """Write `to_dict()` atomically (temp file, then rename)."""
        path = Path(path)
        write_atomic(path, json.dumps(self.to_dict()).encode())
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Circuit:
        for key in ("cfg", "edges"):
            if key not in data:
                raise ValueError(f"Not a circuit graph: no {key!r} key ({GRAPH_FORMAT}).")
        cfg = data["cfg"]
        missing = [k for k in ("n_layers", "n_heads", "d_model") if k not in cfg]
        if missing:
            raise ValueError(f"The graph's cfg lacks {missing} ({GRAPH_FORMAT}).")
        graph = Graph(int(cfg["n_layers"]), int(cfg["n_heads"]),
                      int(cfg.get("n_key_value_heads") or cfg["n_heads"]), bool(cfg.get("parallel_attn_mlp", False)),
                      int(cfg["d_model"]))
        scores = torch.zeros(graph.n_edges, dtype=torch.float64)
        in_graph = torch.zeros(graph.n_edges, dtype=torch.bool)
        for name, entry in data["edges"].items():
            i = graph.index(name)
            scores[i] = float(entry.get("score", 0.0))
            in_graph[i] = bool(entry.get("in_graph", False))
        return cls(graph, scores, in_graph, str(data.get("method", "")))

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> Circuit:
        """Read a graph JSON written by `to_json` or by EAP-IG/MIB (`Graph.to_json`)."""
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))
