"""Circuits from scores, a greedy exact search, and faithfulness curves (MIB's circuit-localisation metrics).

- `Circuit.top_k` / `top_fraction` (in `interp.analysis.graph`): the highest-|score| edges, pruned to paths
  input -> logits.
- `greedy_circuit` (ACDC, Conmy et al. 2023, "Towards Automated Circuit Discovery"): from the full graph,
  visit receivers from the logits backwards and, for each incoming edge, remove it for good if the exact
  metric (`evaluate_circuits`) moves by at most `threshold` × |m(clean) − m(corrupted)|. One forward per edge.
- `faithfulness_curve`: faithfulness = (m(circuit) − m(corrupted)) / (m(clean) − m(corrupted)) of the top-k
  circuit at MIB's edge fractions, with the areas MIB reports (Mueller et al. 2025, "MIB: A Mechanistic
  Interpretability Benchmark"): CPR, the area under the curve (higher is better), and CMD, the area between
  the curve and 1 (lower is better), trapezoids over the fraction of edges (x from 0.001 to 1, linear).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from interp.analysis.edge_patching import SenderOutputs, evaluate_circuits, patch_inputs
from interp.analysis.graph import Circuit, Graph
from interp.analysis.patching import HookList, Metric, Tokens
from interp.model import HookedTransformer

MIB_FRACTIONS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


@dataclass(frozen=True)
class FaithfulnessCurve:
    """Faithfulness of the top-k circuits of one scoring at `fractions` of the graph's edges.

    `n_edges[i]` is how many edges the pruned circuit at `fractions[i]` keeps; `metric[i]` its exact metric;
    `faithfulness[i]` = (metric − corrupted) / (clean − corrupted): 1 = the full model's behaviour, 0 = none."""

    method: str
    fractions: tuple[float, ...]
    n_edges: tuple[int, ...]
    metric: tuple[float, ...]
    faithfulness: tuple[float, ...]
    clean: float
    corrupted: float
    total_edges: int

    @property
    def cpr(self) -> float:
        """Area under the faithfulness curve over the edge fraction (MIB's CPR; higher is better)."""
        return _area(self.fractions, self.faithfulness)

    @property
    def cmd(self) -> float:
        """Area between the curve and 1 (MIB's CMD; lower is better)."""
        return _area(self.fractions, [abs(1.0 - f) for f in self.faithfulness])

    def to_dict(self) -> dict:
        return {"method": self.method, "fractions": list(self.fractions), "n_edges": list(self.n_edges),
                "metric": list(self.metric), "faithfulness": list(self.faithfulness), "clean": self.clean,
                "corrupted": self.corrupted, "total_edges": self.total_edges, "cpr": self.cpr, "cmd": self.cmd}

    @classmethod
    def from_dict(cls, data: dict) -> FaithfulnessCurve:
        return cls(data["method"], tuple(data["fractions"]), tuple(data["n_edges"]), tuple(data["metric"]),
                   tuple(data["faithfulness"]), data["clean"], data["corrupted"], data["total_edges"])


def _area(x: tuple[float, ...], y: list[float] | tuple[float, ...]) -> float:
    return float(sum((x[i + 1] - x[i]) * (y[i] + y[i + 1]) / 2 for i in range(len(x) - 1)))


def faithfulness(value: float, clean: float, corrupted: float) -> float:
    """(value − corrupted) / (clean − corrupted); ValueError when the two runs' metrics are equal."""
    if clean == corrupted:
        raise ValueError(f"The clean and corrupted metrics are equal ({clean}), so faithfulness is undefined: the "
                         "corruption must change the behaviour being explained.")
    return (value - corrupted) / (clean - corrupted)


def faithfulness_curve(model: HookedTransformer, scores: Circuit, clean_tokens: Tokens, corrupted_tokens: Tokens | None,
                       metric: Metric, *, fractions: tuple[float, ...] = MIB_FRACTIONS, patch: SenderOutputs | None = None,
                       attention_mask: Tensor | None = None, hooks: HookList = (), chunk_size: int = 4,
                       progress: bool = True) -> FaithfulnessCurve:
    """Exact faithfulness of `scores.top_fraction(f)` for each fraction f (evaluate on held-out prompts to
    measure generalisation: the scores may come from other prompts)."""
    if list(fractions) != sorted(fractions) or not all(0 < f <= 1 for f in fractions):
        raise ValueError(f"fractions must increase within (0, 1] (0.05 is 5 % of edges), got {fractions}.")
    graph = scores.graph
    clean, mask, patch = patch_inputs(model, graph, clean_tokens, corrupted_tokens, patch, attention_mask, hooks)
    circuits = [scores.top_fraction(f) for f in fractions]
    ends = [Circuit.full(graph), Circuit.empty(graph)]
    values = evaluate_circuits(model, ends + circuits, clean, patch, metric, attention_mask=mask, hooks=hooks,
                               chunk_size=chunk_size, progress=progress).tolist()
    m_clean, m_corrupted, rest = values[0], values[1], values[2:]
    return FaithfulnessCurve(scores.method, tuple(fractions), tuple(c.n_edges for c in circuits), tuple(rest),
                             tuple(faithfulness(v, m_clean, m_corrupted) for v in rest), m_clean, m_corrupted,
                             graph.n_edges)


def greedy_circuit(model: HookedTransformer, clean_tokens: Tokens, corrupted_tokens: Tokens | None, metric: Metric, *,
                   threshold: float = 0.01, graph: Graph | None = None, patch: SenderOutputs | None = None,
                   attention_mask: Tensor | None = None, hooks: HookList = (), progress: bool = True) -> Circuit:
    """ACDC-style search with exact edge patching (see the module docstring). The result's `scores` are each
    edge's metric change when it was tried, m(without it) − m(with it) (0 for edges never tried: those
    of receivers already cut off from the logits). Cost: one forward per tried edge."""
    if not threshold >= 0:
        raise ValueError(f"threshold is a fraction of |m(clean) - m(corrupted)| and must be >= 0, got {threshold}.")
    graph = Graph.from_model(model) if graph is None else graph
    clean, mask, patch = patch_inputs(model, graph, clean_tokens, corrupted_tokens, patch, attention_mask, hooks)

    def value(circuit: Circuit) -> float:
        return float(evaluate_circuits(model, circuit, clean, patch, metric, attention_mask=mask, hooks=hooks))

    current, m_corrupted = value(Circuit.full(graph)), value(Circuit.empty(graph))
    tolerance = threshold * abs(current - m_corrupted)
    keep = torch.ones(graph.n_edges, dtype=torch.bool)
    tried = torch.zeros(graph.n_edges, dtype=torch.float64)
    feeds = graph.receiver_nodes()
    alive = torch.zeros(len(graph.senders) + 1, dtype=torch.bool)  # nodes with a kept path to the logits
    alive[-1] = True
    bar = tqdm(total=graph.n_edges, desc="greedy (exact) search", unit="edge", disable=not progress)
    for receiver in reversed(range(len(graph.receivers))):
        edges = (graph.edge_receiver == receiver).nonzero()[:, 0].flip(0)
        if not (feeds[receiver] & alive).any():
            bar.update(len(edges))
            keep[edges] = False
            continue
        for edge in edges.tolist():
            keep[edge] = False
            trial = value(Circuit(graph, None, keep.clone()))
            tried[edge] = trial - current
            if abs(trial - current) <= tolerance:
                current = trial
            else:
                keep[edge] = True
                alive[graph.edge_sender[edge]] = True
            bar.update(1)
    bar.close()
    return Circuit(graph, tried, keep, method=f"greedy exact (threshold {threshold})").pruned()
