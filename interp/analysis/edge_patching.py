"""Exact edge patching: the metric with any set of edges kept and every other edge's sender replaced.

A circuit (a set of kept edges of a `Graph`) is evaluated by giving every receiver channel its own input:

    input_r = resid_r − Σ_{s -> r removed} (out_s − patch_s)

where resid_r is the residual stream the receiver reads in this (patched) run, out_s the sender's output in
this run and patch_s its replacement: its output on the corrupted input (`sender_outputs(corrupted)`), its
mean over a reference set (`mean_outputs`), or zero (`torch.zeros_like`). Kept edges carry the
sender's value in this run, which may itself differ from the clean run because of patches upstream (as in
EAP-IG's and MIB's evaluation). All edges kept is the clean run; none kept gives every receiver its corrupted
input, which is the corrupted run. One forward evaluates many circuits (a row block each), every receiver of
every circuit at once: each head reads its own q/k/v input copy (`hook_q_input`, ...), each MLP its own
`hook_mlp_in`, and the logits the final residual stream minus their removed senders.

`exact_edge_scores` patches one edge at a time, for every edge: score = m(all edges but e) − m(clean), the
quantity EAP estimates. A run for an edge into layer l starts at layer l from the cached clean residual
stream (the layers before are unchanged), with edges batched along the batch axis.

Memory: the sender outputs are `[n_senders, batch, pos, d_model]` floats per run (GPT-2 small, 1×32:
157 × 32 × 768 × 4 B = 15 MB); evaluating C circuits together holds C of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from interp.analysis.graph import Circuit, Graph
from interp.analysis.patching import (HookList, Metric, Tokens, check_metric_ignores_padding, checked_inputs,
                                      scalar_metric)
from interp.hooks import HookPoint
from interp.model import HookedTransformer

SenderOutputs = Float[Tensor, "n_senders batch pos d_model"]


# ----- graph <-> hook points -------------------------------------------------------------------------------
def check_graph(model: HookedTransformer, graph: Graph) -> None:
    """ValueError unless `graph` is this model's graph."""
    if graph != Graph.from_model(model):  # compares the five shape fields only (cheap)
        raise ValueError(f"This graph ({graph.n_layers} layers, {graph.n_heads} heads, {graph.n_kv_heads} kv heads, "
                         f"parallel={graph.parallel}) is not the model's; build it with Graph.from_model(model).")


def head_senders(graph: Graph, layer: int) -> slice:
    start = 1 + layer * (graph.n_heads + 1)
    return slice(start, start + graph.n_heads)


def mlp_sender(graph: Graph, layer: int) -> int:
    return 1 + layer * (graph.n_heads + 1) + graph.n_heads


def receiver_slices(graph: Graph, layer: int) -> dict[str, slice]:
    """Receiver indices of layer `layer`'s q, k, v and mlp channels (and, at layer n_layers, the logits)."""
    if layer == graph.n_layers:
        return {"logits": slice(len(graph.receivers) - 1, len(graph.receivers))}
    H, K = graph.n_heads, graph.n_kv_heads
    base = layer * (H + 2 * K + 1)
    return {"q": slice(base, base + H), "k": slice(base + H, base + H + K),
            "v": slice(base + H + K, base + H + 2 * K), "mlp": slice(base + H + 2 * K, base + H + 2 * K + 1)}


def senders_before(graph: Graph, layer: int, kind: str) -> int:
    """How many senders (a prefix of `graph.senders`) a receiver of this kind in this layer can read."""
    if kind in ("q", "k", "v") or (kind == "mlp" and graph.parallel):
        return 1 + layer * (graph.n_heads + 1)
    return mlp_sender(graph, layer) if kind == "mlp" else len(graph.senders)


RECEIVER_POINTS = {"q": "hook_q_input", "k": "hook_k_input", "v": "hook_v_input", "mlp": "hook_mlp_in"}


def receiver_point(graph: Graph, layer: int, kind: str) -> str:
    if kind == "logits":
        return f"blocks.{graph.n_layers - 1}.hook_resid_post"
    return f"blocks.{layer}.{RECEIVER_POINTS[kind]}"


def to_heads_last(x: Tensor) -> Tensor:
    """`[heads, rows, pos, d_model]` -> `[rows, pos, heads, d_model]` (the q/k/v input hooks' layout)."""
    return x.permute(1, 2, 0, 3)


# ----- sender outputs ---------------------------------------------------------------------------------------
@torch.no_grad()
def sender_outputs(model: HookedTransformer, graph: Graph, tokens: Tokens, attention_mask: Tensor | None = None,
                   hooks: HookList = ()) -> SenderOutputs:
    """Every sender's output on `tokens`, `[n_senders, batch, pos, d_model]` in `graph.senders` order: the
    embeddings (`blocks.0.hook_resid_pre`), each head's `attn.hook_result` slice, each `hook_mlp_out`."""
    check_graph(model, graph)
    tokens, mask = model.tokens_and_mask(tokens, attention_mask)
    out: list[Tensor] = [None] * len(graph.senders)  # type: ignore[list-item]
    with model.hooks([*hooks, *sender_recorders(graph, out)]):
        model(tokens, attention_mask=mask, return_type=None)
    return torch.stack(out)


def sender_recorders(graph: Graph, out: list[Tensor]) -> list[tuple[str, Callable]]:
    """Hooks that fill `out` (one entry per sender, `[batch, pos, d_model]`) with the senders' outputs."""
    def keep_input(x: Tensor, hook: HookPoint) -> None:
        out[0] = x.detach().clone()

    def keep_heads(layer: int) -> Callable:
        def fn(x: Tensor, hook: HookPoint) -> None:
            out[head_senders(graph, layer)] = list(x.detach().permute(2, 0, 1, 3))
        return fn

    def keep_mlp(layer: int) -> Callable:
        def fn(x: Tensor, hook: HookPoint) -> None:
            out[mlp_sender(graph, layer)] = x.detach().clone()
        return fn

    recorders = [("blocks.0.hook_resid_pre", keep_input)]
    for layer in range(graph.n_layers):
        recorders += [(f"blocks.{layer}.attn.hook_result", keep_heads(layer)),
                      (f"blocks.{layer}.hook_mlp_out", keep_mlp(layer))]
    return recorders


# ----- evaluating circuits ------------------------------------------------------------------------------------
def removed_matrix(graph: Graph, keep: Bool[Tensor, "circuits n_edges"]) -> Float[Tensor, "circuits n_receivers n_senders"]:
    """1 where the edge sender -> receiver exists and is removed, per circuit."""
    matrix = torch.zeros(keep.shape[0], len(graph.receivers), len(graph.senders))
    matrix[:, graph.edge_receiver, graph.edge_sender] = (~keep).float()
    return matrix


class _CircuitRun:
    """The hooks of one forward that evaluates `circuits` circuits, `batch` rows each (circuit-major rows)."""

    def __init__(self, graph: Graph, removed: Tensor, patch: Tensor, circuits: int, batch: int) -> None:
        self.graph, self.removed, self.patch = graph, removed, patch  # patch: [senders, batch|1, pos|1, d_model]
        self.circuits, self.batch = circuits, batch
        self.delta: Tensor | None = None  # [senders, circuits, batch, pos, d_model]: out_s - patch_s in this run

    def _store(self, index: Any, out: Tensor) -> None:  # out: [senders_here, rows, pos, d_model]
        shaped = out.reshape(out.shape[0], self.circuits, self.batch, *out.shape[2:])
        if self.delta is None:
            self.delta = out.new_zeros(len(self.graph.senders), *shaped.shape[1:])
        self.delta[index] = shaped - self.patch[index].unsqueeze(1)

    def _correction(self, receivers: slice, n_senders: int) -> Tensor | None:
        """Σ removed (out_s - patch_s), `[receivers, rows, pos, d_model]`, or None when nothing is removed."""
        weights = self.removed[:, receivers, :n_senders]
        if not weights.any():
            return None
        delta = self.delta[:n_senders]
        correction = torch.einsum("crs,scbpd->rcbpd", weights.to(delta.dtype), delta)
        return correction.reshape(correction.shape[0], self.circuits * self.batch, *correction.shape[3:])

    def hooks(self) -> list[tuple[str, Callable]]:
        graph = self.graph
        pairs: list[tuple[str, Callable]] = [("blocks.0.hook_resid_pre", lambda x, hook: self._store(slice(0, 1), x[None]))]
        for layer in range(graph.n_layers + 1):
            for kind, receivers in receiver_slices(graph, layer).items():
                if self.removed[:, receivers].any():
                    pairs.append((receiver_point(graph, layer, kind), self._reader(receivers, senders_before(graph, layer, kind), kind)))
            if layer < graph.n_layers:
                pairs += [(f"blocks.{layer}.attn.hook_result",
                           lambda x, hook, s=head_senders(graph, layer): self._store(s, x.permute(2, 0, 1, 3))),
                          (f"blocks.{layer}.hook_mlp_out",
                           lambda x, hook, s=mlp_sender(graph, layer): self._store(slice(s, s + 1), x[None]))]
        return pairs

    def _reader(self, receivers: slice, n_senders: int, kind: str) -> Callable:
        def fn(x: Tensor, hook: HookPoint) -> Tensor | None:
            correction = self._correction(receivers, n_senders)
            if correction is None:
                return None
            if kind in ("q", "k", "v"):
                return x - to_heads_last(correction)
            return x - correction[0]
        return fn


def evaluate_circuits(model: HookedTransformer, circuits: Sequence[Circuit] | Circuit, clean_tokens: Tokens,
                      patch: SenderOutputs, metric: Metric, *, attention_mask: Tensor | None = None,
                      hooks: HookList = (), chunk_size: int = 8, progress: bool = False) -> Float[Tensor, "circuits"]:
    """The metric of each circuit on `clean_tokens`, every removed edge's sender replaced by `patch`
    (`[n_senders, batch or 1, pos or 1, d_model]`: `sender_outputs(model, graph, corrupted)`, `mean_outputs`, zeros),
    float64.

    `chunk_size` circuits share one forward (`chunk_size × batch` rows). `hooks` are added to every forward
    (e.g. `frozen_hooks`). The metric is called on each circuit's `[batch, pos, d_vocab]` logits."""
    single = isinstance(circuits, Circuit)
    circuits = [circuits] if single else list(circuits)
    if not circuits:
        raise ValueError("No circuits to evaluate.")
    graph = circuits[0].graph
    check_graph(model, graph)
    if any(c.graph != graph for c in circuits):
        raise ValueError("All circuits must belong to the same graph.")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size (circuits per forward) must be a positive integer, got {chunk_size!r}.")
    tokens, mask = model.tokens_and_mask(clean_tokens, attention_mask)
    patch = checked_patch(model, graph, patch, tokens)
    values: list[float] = []
    chunks = range(0, len(circuits), chunk_size)
    for start in tqdm(chunks, desc="circuits", disable=not progress or len(chunks) < 2):
        chunk = circuits[start:start + chunk_size]
        keep = torch.stack([c.in_graph for c in chunk])
        run = _CircuitRun(graph, removed_matrix(graph, keep).to(patch.device), patch, len(chunk), tokens.shape[0])
        rows = len(chunk)
        if start == 0:  # once per call: a metric reading padded positions would make every value meaningless
            check_positions_are_real(metric, mask)
        with torch.no_grad(), model.hooks([*hooks, *run.hooks()]):
            values += block_metrics(model, metric, tokens.repeat(rows, 1), rows, padding=mask if start == 0 else None,
                                    attention_mask=None if mask is None else mask.repeat(rows, 1))
    result = torch.tensor(values, dtype=torch.float64)
    return result[0] if single else result


def checked_patch(model: HookedTransformer, graph: Graph, patch: Tensor, tokens: Tensor) -> Tensor:
    """`patch` checked to be `[n_senders, batch or 1, pos or 1, d_model]` for these tokens, on the model's device
    and in its dtype."""
    shape = (len(graph.senders), *tokens.shape, graph.d_model)
    if not isinstance(patch, Tensor) or patch.ndim != 4 or patch.shape[0] != shape[0] or patch.shape[3] != shape[3] \
            or patch.shape[1] not in (1, shape[1]) or patch.shape[2] not in (1, shape[2]):
        got = tuple(patch.shape) if isinstance(patch, Tensor) else type(patch).__name__
        raise ValueError(f"patch must be the senders' replacement outputs [n_senders={shape[0]}, batch={shape[1]} or 1, "
                         f"pos={shape[2]} or 1, d_model={shape[3]}] (sender_outputs(model, graph, corrupted), or its "
                         f".mean(1, keepdim=True), or zeros), got {got}.")
    if not patch.is_floating_point():
        raise ValueError(f"patch must be a float tensor, got {patch.dtype}.")
    return patch.to(device=model.W_E.device, dtype=model.W_E.dtype)


# ----- exact scores: one edge at a time ----------------------------------------------------------------------
class CleanRun:
    """What the single-edge runs start from: clean tokens, mask, the residual stream before each block and after
    the last (`[n_layers + 1, batch, pos, d_model]`), the clean sender outputs and the clean metric."""

    def __init__(self, model: HookedTransformer, graph: Graph, tokens: Tensor, mask: Tensor | None, metric: Metric,
                 hooks: HookList) -> None:
        self.tokens, self.mask = tokens, mask
        names = [f"blocks.{l}.hook_resid_pre" for l in range(graph.n_layers)] + \
                [f"blocks.{graph.n_layers - 1}.hook_resid_post"]
        stream: dict[str, Tensor] = {}

        def keep(x: Tensor, hook: HookPoint) -> None:
            stream[hook.name] = x.detach().clone()

        outputs: list[Tensor] = [None] * len(graph.senders)  # type: ignore[list-item]
        with torch.no_grad(), model.hooks([*hooks, *[(n, keep) for n in names], *sender_recorders(graph, outputs)]):
            (self.metric,) = block_metrics(model, metric, tokens, 1, attention_mask=mask)
        self.resid = torch.stack([stream[n] for n in names])
        self.outputs = torch.stack(outputs)


def exact_edge_scores(model: HookedTransformer, clean_tokens: Tokens, corrupted_tokens: Tokens | None, metric: Metric,
                      *, graph: Graph | None = None, patch: SenderOutputs | None = None,
                      attention_mask: Tensor | None = None, hooks: HookList = (), edges_per_run: int = 64,
                      progress: bool = True) -> Circuit:
    """Exact single-edge patching of every edge: score_e = m(every edge but e) − m(clean) (float64), with e's
    sender replaced by its output on `corrupted_tokens` (or by `patch`, e.g. a mean). One partial forward per
    `edges_per_run` edges (× batch rows), starting at the receiver's block. `hooks` join every forward."""
    graph, base, delta = single_edge_setup(model, graph, clean_tokens, corrupted_tokens, patch, metric, attention_mask,
                                           hooks, edges_per_run)
    scores = torch.zeros(graph.n_edges, dtype=torch.float64)
    bar = tqdm(total=graph.n_edges, desc="exact edge patching", unit="edge", disable=not progress)
    for layer, chunk in edge_chunks(graph, edges_per_run):
        scores[chunk] = single_edge_metrics(model, graph, base, delta, chunk, layer, metric, hooks) - base.metric
        bar.update(len(chunk))
    bar.close()
    return Circuit.full(graph, scores, method="exact")


def edge_chunks(graph: Graph, edges_per_run: int) -> Iterator[tuple[int, Int[Tensor, "k"]]]:
    """(receiver layer, up to `edges_per_run` edge indices into it) for every edge, layer by layer (n_layers:
    the logits): the batches of the one-edge-at-a-time runs, each starting at its receivers' block."""
    layer_of = graph.receiver_layer()[graph.edge_receiver]
    for layer in range(graph.n_layers + 1):
        edges = (layer_of == layer).nonzero()[:, 0]
        for start in range(0, len(edges), edges_per_run):
            yield layer, edges[start:start + edges_per_run]


def patch_inputs(model: HookedTransformer, graph: Graph, clean_tokens: Tokens, corrupted_tokens: Tokens | None,
                 patch: Tensor | None, attention_mask: Tensor | None, hooks: HookList) -> tuple[Tensor, Tensor | None, Tensor]:
    """(clean tokens, mask, patch [senders, batch|1, pos|1, d_model]) from the corrupted tokens or a given patch."""
    if (corrupted_tokens is None) == (patch is None):
        raise ValueError("Give exactly one of corrupted_tokens (patch each sender with its corrupted output) and "
                         "patch= (e.g. a mean over a reference set, or zeros).")
    if corrupted_tokens is not None:
        clean, corrupted, mask = checked_inputs(model, clean_tokens, corrupted_tokens, attention_mask)
        return clean, mask, sender_outputs(model, graph, corrupted, mask, hooks)
    clean, mask = model.tokens_and_mask(clean_tokens, attention_mask)
    return clean, mask, checked_patch(model, graph, patch, clean)


@torch.no_grad()
def check_padding_once(model: HookedTransformer, metric: Metric, tokens: Tensor, mask: Tensor | None) -> None:
    """`check_metric_ignores_padding` on a clean forward (none is run when there is no padding, or when the metric
    names the positions it reads)."""
    if mask is not None and not check_positions_are_real(metric, mask):
        check_metric_ignores_padding(metric, model(tokens, attention_mask=mask), mask)


def reads_positions(metric: Metric) -> bool:
    """Whether the metric says which positions it reads: a `positions` `[batch]` tensor and an
    `at_positions(logits [batch, d_vocab])` method (as `CircuitTask.metric`), so only those logits are needed."""
    return isinstance(getattr(metric, "positions", None), Tensor) and callable(getattr(metric, "at_positions", None))


def check_positions_are_real(metric: Metric, mask: Tensor | None) -> bool:
    """For a metric that names its positions: ValueError if one is padding; True when it was checked this way."""
    if not reads_positions(metric):
        return False  # a full-logits metric is checked on its logits (check_metric_ignores_padding)
    if mask is not None:
        check_positions_shape(metric, mask.shape[0])
        positions = metric.positions.to(mask.device)
        if not bool(mask[torch.arange(mask.shape[0], device=mask.device), positions].all()):
            raise ValueError("The metric reads positions that are padding (attention_mask is 0 there); each row's "
                             "position must be a real token, e.g. its last one, attention_mask.sum(-1) - 1.")
    return True


def check_positions_shape(metric: Metric, batch: int) -> None:
    if tuple(metric.positions.shape) != (batch,):
        raise ValueError(f"The metric names {tuple(metric.positions.shape)} positions for a batch of {batch} rows; it "
                         f"must name one per row (a metric built for these prompts, e.g. this task's task.metric).")


def block_metrics(model: HookedTransformer, metric: Metric, input: Tensor, n_blocks: int, padding: Tensor | None = None,
                  **forward_kwargs: Any) -> list[float]:
    """The metric of each of `n_blocks` equal blocks of rows of `model(input, **forward_kwargs)`. A metric that
    names its positions (`reads_positions`) gets only the logits there, `[batch, d_vocab]`: ln_final runs on the
    whole stream (its hooks see what they always see), the unembedding on those rows only, unless a hook is on a
    point after ln_final (interp.tl's `unembed.hook_in`/`hook_out`, which must see every position). Otherwise
    the metric gets each block's `[batch, pos, d_vocab]` logits (and `padding`, given, checks the first block)."""
    after_norm = any(point.has_hooks for name, point in model.hook_dict.items() if name.startswith("unembed."))
    if reads_positions(metric) and not after_norm:
        check_positions_shape(metric, input.shape[0] // n_blocks)
        resid = model(input, stop_at_layer=model.cfg.n_layers, **forward_kwargs)
        normalized = model.ln_final(resid)
        rows = resid.shape[0]
        where = metric.positions.to(resid.device).repeat(n_blocks)
        logits = model._unembed(normalized[torch.arange(rows, device=resid.device), where])
        score = metric.at_positions
    else:
        logits = model(input, **forward_kwargs)
        if padding is not None:
            check_metric_ignores_padding(metric, logits[:rows_per(logits, n_blocks)], padding)
        score = metric
    batch = rows_per(logits, n_blocks)
    return [float(scalar_metric(score, logits[i * batch:(i + 1) * batch])) for i in range(n_blocks)]


def rows_per(logits: Tensor, n_blocks: int) -> int:
    return logits.shape[0] // n_blocks


@torch.no_grad()
def mean_outputs(model: HookedTransformer, graph: Graph, tokens: Tokens, attention_mask: Tensor | None = None,
                 hooks: HookList = ()) -> Float[Tensor, "n_senders 1 pos d_model"]:
    """Each sender's mean output over a reference set, per position, real tokens only (a position padded in
    every row gets 0): a `patch` for mean ablation. Right padding keeps positions aligned across rows; with
    left padding a position index means different tokens in different rows."""
    tokens, mask = model.tokens_and_mask(tokens, attention_mask)
    outputs = sender_outputs(model, graph, tokens, mask, hooks)
    if mask is None:
        return outputs.mean(1, keepdim=True)
    weights = mask.to(outputs.dtype)[None, :, :, None]
    count = weights.sum(1, keepdim=True)
    return (outputs * weights).sum(1, keepdim=True) / count.clamp(min=1)


def single_edge_setup(model: HookedTransformer, graph: Graph | None, clean_tokens: Tokens, corrupted_tokens: Tokens | None,
                      patch: Tensor | None, metric: Metric, attention_mask: Tensor | None, hooks: HookList,
                      edges_per_run: int) -> tuple[Graph, CleanRun, Tensor]:
    """What one-edge-at-a-time runs start from: the graph, the clean run, and out_s − patch_s
    `[senders, batch, pos, d_model]` (checked: graph, inputs, `edges_per_run`, the metric against padding)."""
    graph = Graph.from_model(model) if graph is None else graph
    check_graph(model, graph)
    clean, mask, patch = patch_inputs(model, graph, clean_tokens, corrupted_tokens, patch, attention_mask, hooks)
    if not isinstance(edges_per_run, int) or edges_per_run < 1:
        raise ValueError(f"edges_per_run must be a positive integer, got {edges_per_run!r}.")
    base = CleanRun(model, graph, clean, mask, metric, hooks)
    check_padding_once(model, metric, clean, mask)
    return graph, base, base.outputs - patch


def single_edge_inputs(graph: Graph, base: CleanRun, delta: Tensor, chunk: Int[Tensor, "k"], layer: int,
                       scale: Tensor | None = None) -> tuple[Tensor, dict[str, Callable]]:
    """The starting residual stream `[k × batch, pos, d_model]` for edges `chunk` (all into `layer`) and the
    receiver hooks that take e's sender out of e's receiver in e's rows (`scale` [k]: a fraction of it)."""
    batch = base.tokens.shape[0]
    k = len(chunk)
    resid = base.resid[layer].repeat(k, 1, 1)
    senders, receivers = graph.edge_sender[chunk], graph.edge_receiver[chunk]
    shift = delta[senders]  # [k, batch, pos, d_model]
    if scale is not None:
        shift = shift * scale.to(shift.device, shift.dtype)[:, None, None, None]
    shift = shift.reshape(k * batch, *shift.shape[2:])
    rows = torch.arange(k * batch)
    slices = receiver_slices(graph, layer)
    row_receiver = receivers.repeat_interleave(batch)
    if "logits" in slices:
        return resid - shift, {}
    fns: dict[str, Callable] = {}
    for kind, where in slices.items():
        hit = (row_receiver >= where.start) & (row_receiver < where.stop)
        if not hit.any():
            continue
        these_rows, heads = rows[hit], row_receiver[hit] - where.start

        def fn(x: Tensor, hook: HookPoint, these_rows=these_rows, heads=heads, hit=hit, kind=kind) -> Tensor:
            x = x.clone()
            if kind == "mlp":
                x[these_rows] = x[these_rows] - shift[hit]
            else:
                x[these_rows, :, heads] = x[these_rows, :, heads] - shift[hit]
            return x
        fns[receiver_point(graph, layer, kind)] = fn
    return resid, fns


def single_edge_metrics(model: HookedTransformer, graph: Graph, base: CleanRun, delta: Tensor, chunk: Tensor, layer: int,
                        metric: Metric, hooks: HookList) -> Float[Tensor, "k"]:
    """m(every edge but e) for each edge e of `chunk` (all into receivers of `layer`)."""
    resid, fns = single_edge_inputs(graph, base, delta, chunk, layer)
    k = len(chunk)
    mask = None if base.mask is None else base.mask.repeat(k, 1)
    with torch.no_grad(), model.hooks([*hooks, *fns.items()]):
        values = block_metrics(model, metric, resid, k, start_at_layer=layer, attention_mask=mask)
    return torch.tensor(values, dtype=torch.float64)
