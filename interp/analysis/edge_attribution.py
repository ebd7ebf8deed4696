"""Edge attribution: gradient estimates of exact single-edge patching for every edge at once.

- **EAP** (Syed et al. 2023, "Attribution Patching Outperforms Automated Circuit Discovery"):
  score(s -> r) = (patch_s − out_s) · ∂m/∂input_r, the gradient on the clean run. Cost: two forwards for the
  senders' outputs (corrupted and clean), one forward-and-backward (and one forward to check the metric
  against padding, when there is padding). Exact when the model is affine in input_r along the patch
  (test it with `interp.analysis.frozen.frozen_hooks`, which freeze patterns, norm scales and MLP gains).
- **EAP-IG** (Hanna et al. 2024, "Have Faith in Faithfulness"; MIB's EAP-IG-inputs): the gradient averaged
  over `steps` runs whose input embeddings are interpolated from the patch's (corrupted) to the clean ones,
  at α = k / steps, k = 0 .. steps − 1 (MIB's points). Cost: steps forwards-and-backwards.
- **Edge IG** (`edge_ig`): integrated gradients along each edge's own patch, input_r − α (out_s − patch_s)
  at the midpoints α = (k + ½) / steps. It converges to exact single-edge patching as steps grow (error
  O(1/steps²) for a smooth model), at the cost of exact patching times steps (and a backward); use it to
  check the cheaper estimates on small models.

Scores are float64 `[n_edges]`, summed over batch and positions of the scalar metric's gradient (so a metric
averaged over the batch gives per-prompt means). Memory: the activations of one forward-and-backward with
every receiver's input split per head (q: n_heads, k and v: n_kv_heads copies of the residual stream per
layer), plus the sender outputs `[n_senders, batch, pos, d_model]`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from interp.analysis.edge_patching import (CleanRun, SenderOutputs, check_graph, check_padding_once, patch_inputs,
                                           edge_chunks, receiver_point, receiver_slices, senders_before,
                                           sender_outputs, single_edge_inputs, single_edge_setup)
from interp.analysis.graph import Circuit, Graph
from interp.analysis.patching import HookList, Metric, Tokens, scalar_metric
from interp.hooks import HookPoint
from interp.model import HookedTransformer


def receiver_gradients(model: HookedTransformer, graph: Graph, tokens: Tensor, mask: Tensor | None, metric: Metric,
                       hooks: HookList = (), embedding: Tensor | None = None) -> dict[tuple[int, str], Tensor]:
    """∂metric/∂input_r for every receiver channel, keyed (layer, kind): q/k/v `[batch, pos, heads, d_model]`,
    mlp and logits `[batch, pos, d_model]`. `embedding` replaces the input embeddings (`[batch, pos, d_model]`)."""
    inputs: dict[tuple[int, str], Tensor] = {}

    def leaf(x: Tensor, hook: HookPoint) -> Tensor:
        return (x if embedding is None else embedding).detach().clone().requires_grad_(True)

    def keep(key: tuple[int, str]) -> Callable:
        def fn(x: Tensor, hook: HookPoint) -> None:
            inputs[key] = x
        return fn

    pairs = [("blocks.0.hook_resid_pre", leaf)]
    for layer in range(graph.n_layers + 1):
        pairs += [(receiver_point(graph, layer, kind), keep((layer, kind))) for kind in receiver_slices(graph, layer)]
    with torch.enable_grad(), model.hooks([*hooks, *pairs]):
        value = scalar_metric(metric, model(tokens, attention_mask=mask))
        keys = list(inputs)
        grads = torch.autograd.grad(value, [inputs[k] for k in keys], allow_unused=True)
    return {k: torch.zeros_like(inputs[k]) if g is None else g.detach() for k, g in zip(keys, grads)}


def scores_from_gradients(graph: Graph, grads: dict[tuple[int, str], Tensor], shift: Tensor, by_position: bool = False
                          ) -> Float[Tensor, "n_edges"] | Float[Tensor, "n_edges pos"]:
    """score(s -> r) = Σ_{batch, pos} shift_s · grad_r for every edge (shift: `[n_senders, batch, pos, d_model]`);
    `by_position`: summed over the batch only, `[n_edges, pos]`."""
    n_pos = shift.shape[2]
    dense = torch.zeros(len(graph.receivers), len(graph.senders), *((n_pos,) if by_position else ()), dtype=torch.float64)
    for (layer, kind), grad in grads.items():
        receivers = receiver_slices(graph, layer)[kind]
        n = senders_before(graph, layer, kind)
        per_head = grad if kind in ("q", "k", "v") else grad.unsqueeze(2)
        pattern = "bphd,sbpd->hsp" if by_position else "bphd,sbpd->hs"
        dense[receivers, :n] = torch.einsum(pattern, per_head.double(), shift[:n].double()).cpu()
    return dense[graph.edge_receiver, graph.edge_sender]


def _prepared(model: HookedTransformer, clean_tokens: Tokens, corrupted_tokens: Tokens | None, metric: Metric,
              graph: Graph | None, patch: SenderOutputs | None, attention_mask: Tensor | None, hooks: HookList
              ) -> tuple[Graph, Tensor, Tensor | None, Tensor, Tensor]:
    graph = Graph.from_model(model) if graph is None else graph
    check_graph(model, graph)
    clean, mask, patch = patch_inputs(model, graph, clean_tokens, corrupted_tokens, patch, attention_mask, hooks)
    check_padding_once(model, metric, clean, mask)
    clean_outputs = sender_outputs(model, graph, clean, mask, hooks)
    return graph, clean, mask, patch, clean_outputs


def eap(model: HookedTransformer, clean_tokens: Tokens, corrupted_tokens: Tokens | None, metric: Metric, *,
        graph: Graph | None = None, patch: SenderOutputs | None = None, attention_mask: Tensor | None = None,
        hooks: HookList = ()) -> Circuit:
    """EAP scores of every edge (see the module docstring): (patch_s − out_s) · ∂m/∂input_r on the clean run.
    `patch` replaces `corrupted_tokens` for mean or zero ablation; `hooks` join every forward."""
    graph = Graph.from_model(model) if graph is None else graph
    scores = _eap(model, clean_tokens, corrupted_tokens, metric, graph, patch, attention_mask, hooks, by_position=False)
    return Circuit.full(graph, scores, method="eap")


def eap_by_position(model: HookedTransformer, clean_tokens: Tokens, corrupted_tokens: Tokens | None, metric: Metric, *,
                    graph: Graph | None = None, patch: SenderOutputs | None = None, attention_mask: Tensor | None = None,
                    hooks: HookList = ()) -> Float[Tensor, "n_edges pos"]:
    """EAP scores per position of the receiver's input (summed over the batch), float64 `[n_edges, pos]`: the
    `eap` scores are its sum over positions. Memory: n_edges × pos floats (GPT-2 small at 32 tokens: 8 MB)."""
    return _eap(model, clean_tokens, corrupted_tokens, metric, graph, patch, attention_mask, hooks, by_position=True)


def _eap(model: HookedTransformer, clean_tokens: Tokens, corrupted_tokens: Tokens | None, metric: Metric,
         graph: Graph | None, patch: SenderOutputs | None, attention_mask: Tensor | None, hooks: HookList,
         by_position: bool) -> Tensor:
    graph, clean, mask, patch, clean_outputs = _prepared(model, clean_tokens, corrupted_tokens, metric, graph, patch,
                                                         attention_mask, hooks)
    grads = receiver_gradients(model, graph, clean, mask, metric, hooks)
    return scores_from_gradients(graph, grads, patch - clean_outputs, by_position=by_position)


def eap_ig(model: HookedTransformer, clean_tokens: Tokens, corrupted_tokens: Tokens | None, metric: Metric, *,
           steps: int = 5, graph: Graph | None = None, patch: SenderOutputs | None = None,
           attention_mask: Tensor | None = None, hooks: HookList = (), progress: bool = True) -> Circuit:
    """EAP-IG (inputs) scores of every edge: (patch_s − out_s) · mean_k ∂m/∂input_r, the gradients taken with the
    input embeddings at patch + (k / steps)(clean − patch), k = 0 .. steps − 1."""
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer (MIB uses 5 or more), got {steps!r}.")
    graph, clean, mask, patch, clean_outputs = _prepared(model, clean_tokens, corrupted_tokens, metric, graph, patch,
                                                         attention_mask, hooks)
    start, end = patch[0].expand_as(clean_outputs[0]), clean_outputs[0]
    total: dict[tuple[int, str], Tensor] = {}
    for k in tqdm(range(steps), desc="EAP-IG steps", disable=not progress):
        grads = receiver_gradients(model, graph, clean, mask, metric, hooks, embedding=start + (k / steps) * (end - start))
        for key, grad in grads.items():
            total[key] = grad.double() if key not in total else total[key] + grad
    mean = {key: grad / steps for key, grad in total.items()}
    return Circuit.full(graph, scores_from_gradients(graph, mean, patch - clean_outputs), method=f"eap-ig ({steps} steps)")


def edge_ig(model: HookedTransformer, clean_tokens: Tokens, corrupted_tokens: Tokens | None, metric: Metric, *,
            steps: int = 5, graph: Graph | None = None, patch: SenderOutputs | None = None,
            attention_mask: Tensor | None = None, hooks: HookList = (), edges_per_run: int = 64,
            progress: bool = True) -> Circuit:
    """Integrated gradients along each edge's own patch (see the module docstring): converges to
    `exact_edge_scores` as steps grow. Cost: steps × (n_edges / edges_per_run) partial forwards and backwards."""
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}.")
    graph, base, delta = single_edge_setup(model, graph, clean_tokens, corrupted_tokens, patch, metric, attention_mask,
                                           hooks, edges_per_run)
    scores = torch.zeros(graph.n_edges, dtype=torch.float64)
    batch = base.tokens.shape[0]
    bar = tqdm(total=graph.n_edges * steps, desc="edge IG", unit="edge", disable=not progress)
    for layer, chunk in edge_chunks(graph, edges_per_run):
        for k in range(steps):
            alpha = torch.full((len(chunk),), (k + 0.5) / steps)
            scores[chunk] += _path_gradient_dot(model, graph, base, delta, chunk, layer, alpha, metric, hooks, batch)
            bar.update(len(chunk))
    bar.close()
    return Circuit.full(graph, scores / steps, method=f"edge-ig ({steps} steps)")


def _path_gradient_dot(model: HookedTransformer, graph: Graph, base: CleanRun, delta: Tensor, chunk: Tensor, layer: int,
                       alpha: Tensor, metric: Metric, hooks: HookList, batch: int) -> Float[Tensor, "k"]:
    """−delta_e · ∂m/∂input_r at input_r − α delta_e, for each edge e of `chunk` (all into `layer`)."""
    resid, fns = single_edge_inputs(graph, base, delta, chunk, layer, scale=alpha)
    k = len(chunk)
    captured: dict[str, Tensor] = {}

    def capturing(name: str, fn: Callable) -> Callable:
        def wrapped(x: Tensor, hook: HookPoint) -> Tensor:
            out = fn(x, hook)  # in the graph (from the starting leaf): other rows' paths run through it
            captured[name] = out
            return out
        return wrapped

    mask = None if base.mask is None else base.mask.repeat(k, 1)
    resid = resid.detach().requires_grad_(True)
    if not fns:  # logits: the final residual stream itself is the receiver's input
        captured["logits"] = resid
    with torch.enable_grad(), model.hooks([*hooks, *[(n, capturing(n, f)) for n, f in fns.items()]]):
        logits = model(resid, start_at_layer=layer, attention_mask=mask)
        total = sum(scalar_metric(metric, logits[i * batch:(i + 1) * batch]) for i in range(k))
        names = list(captured)
        found = torch.autograd.grad(total, [captured[n] for n in names], allow_unused=True)  # unused: frozen q/k
        grads = {n: torch.zeros_like(captured[n]) if g is None else g for n, g in zip(names, found)}
    senders, receivers = graph.edge_sender[chunk], graph.edge_receiver[chunk]
    shift = delta[senders]  # [k, batch, pos, d_model]
    out = torch.zeros(k, dtype=torch.float64)
    slices = receiver_slices(graph, layer)
    for kind, where in slices.items():
        hit = ((receivers >= where.start) & (receivers < where.stop)).nonzero()[:, 0]
        if not len(hit):
            continue
        grad = grads["logits"] if kind == "logits" else grads[receiver_point(graph, layer, kind)]
        grad = grad.reshape(k, batch, *grad.shape[1:])[hit]
        if kind in ("q", "k", "v"):
            heads = receivers[hit] - where.start
            grad = grad[torch.arange(len(hit)), :, :, heads]  # [hit, batch, pos, d_model]
        out[hit] = -(grad.double() * shift[hit].double()).sum((1, 2, 3)).cpu()
    return out
