"""Path attribution: a logit as a sum over paths through the residual stream (Elhage et al. 2021).

With every attention pattern and every norm scale frozen at their values from one run, the
model is linear in what its components write, and the target logit expands exactly into:

- **direct paths** `source -> logits`, for each source: `embed`, `pos_embed` (learned positions only),
  each layer's MLP output
  `mlp{l}` (an MLP is one node: paths into it are not expanded, its cached output is the source)
  and each layer's attention constant `attn_bias{l}` (b_O plus, per head, (ln1 bias · W_V + b_V) W_O,
  which every query receives because pattern rows sum to 1);
- **single-head paths** `source -> L{l}H{h} -> logits`, for sources written before layer l;
- **two-head virtual paths** `source -> L{a}H{i} -> L{b}H{j} -> logits` (V-composition; Q- and
  K-composition are frozen into the patterns), layer a < b;
- `unembed_bias` (ln_final bias · direction + b_U), and a `residual` term: every path through three or
  more heads (and through heads outside `layers`), so the terms sum to the logit exactly.

Every family is exact (the terms sum to the model's logit to float64 rounding of fp32 activations), because
the paths are value paths and the patterns are frozen:
- rotary positions (GPT-NeoX, Llama, Mistral, Qwen2) act on q and k only, so they are inside the frozen
  patterns; nothing positional is written to the residual stream (no `pos_embed` source). What this method
  does not do is split a pattern into per-path QK terms (Q-/K-composition): with rotary q/k such a term
  would depend on the query-key distance, and here none is formed.
- RMSNorm (Llama, Mistral, Qwen2) is frozen like LayerNorm, minus the centring: its frozen form is
  x -> w * x / scale, and it has no bias (the `unembed_bias` is then just b_U).
- grouped-query attention: each query head h is its own path node, reading its kv head's W_V
  (`attn.W_V[h]` is kv head h // group) through its own pattern and writing through its own W_O.
- parallel blocks (GPT-NeoX): a head of layer l reads resid_pre[l], which holds the MLPs of layers < l
  only, exactly as in sequential blocks, so the sources each head can read are the same.
- sliding windows (Mistral, Qwen2) are in the frozen patterns (zeros outside the window).

Computed backwards: the target is a linear functional on the final residual stream; pulling it back
through head h (adjoint of `x -> A_h (LN_frozen(x) W_V W_O)`) gives a functional on the residual
before h's layer, one `[pos, d_model]` tensor per head and per head pair. Cost O(heads² · pos ·
d_model · (pos + d_head)) and memory O(heads² · pos · d_model) for the pair functionals of one layer
pair at a time: GPT-2 small at 64 tokens takes seconds; restrict `layers` for long inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.analysis.decompose import token_ids
from interp.display import block_html, format_number, head_table_html, plural, table_html
from interp.model import HookedTransformer, ModelInput


@dataclass(frozen=True)
class PathAttribution:
    """Contributions of paths to one target (a logit or a logit difference) at one position."""

    paths: list[str]  # "embed -> L0H2 -> L1H3 -> logits", ...
    values: Float[Tensor, "n_paths"]
    target: float  # the model's value of the target (logit or difference), which the terms sum to
    unembed_bias: float
    residual: float  # paths through >= 3 heads, or through heads outside `layers`

    def total(self) -> float:
        return float(self.values.sum()) + self.unembed_bias + self.residual

    def top(self, k: int = 10) -> list[tuple[str, float]]:
        """The k paths with the largest |contribution|, largest first."""
        order = self.values.abs().argsort(descending=True)[:k]
        return [(self.paths[int(i)], float(self.values[i])) for i in order]

    def by_length(self) -> dict[int, float]:
        """Summed contribution of the paths through 0, 1 and 2 heads."""
        sums: dict[int, float] = {}
        for path, value in zip(self.paths, self.values.tolist()):
            n_heads = path.count("->") - 1
            sums[n_heads] = sums.get(n_heads, 0.0) + value
        return sums

    def through_one_head(self) -> Float[Tensor, "layer head"]:
        """Summed contribution of the paths `source -> L{l}H{h} -> logits` per head (0 where none)."""
        sums: dict[tuple[int, int], float] = {}
        for path, value in zip(self.paths, self.values.tolist()):
            route = path.split(" -> ")
            if len(route) == 3:
                layer, head = (int(n) for n in route[1][1:].split("H"))
                sums[layer, head] = sums.get((layer, head), 0.0) + value
        n_layers = max((layer for layer, _ in sums), default=-1) + 1
        table = torch.zeros(n_layers, max((head for _, head in sums), default=-1) + 1)
        for (layer, head), value in sums.items():
            table[layer, head] = value
        return table

    def _lines(self, k: int) -> list[str]:
        lengths = ", ".join(f"{plural(n, 'head') if n else 'direct'} {format_number(v)}"
                            for n, v in sorted(self.by_length().items()))
        top = ", ".join(f"{path} {format_number(value, sign=True)}" for path, value in self.top(k))
        return [f"target {format_number(self.target)} = {plural(len(self.paths), 'path')} "
                f"({format_number(float(self.values.sum()))}) + unembed bias {format_number(self.unembed_bias)} "
                f"+ residual (>= 3 heads) {format_number(self.residual)}",
                f"by heads on the path: {lengths}", f"largest |contribution|: {top}"]

    def __repr__(self) -> str:
        first, *rest = self._lines(3)
        return f"PathAttribution({first}" + "".join(f"\n  {line}" for line in rest) + ")"

    def _repr_html_(self) -> str:
        """The largest paths on a diverging scale, and the single-head paths summed per `[layer, head]`."""
        top = self.top(10)
        parts = [table_html([[value] for _, value in top], [path for path, _ in top], ["contribution"],
                            "largest |contribution|", signed=True)]
        per_head = self.through_one_head()
        if per_head.numel():
            parts.append(head_table_html(per_head, "paths through one head (source -> head -> logits), summed", True))
        first, lengths, _ = self._lines(0)
        return block_html(f"PathAttribution: {first}; {lengths}", *parts)

    def to_markdown(self, k: int = 20) -> str:
        rows = [f"| {path} | {value:+.4f} |" for path, value in self.top(k)]
        totals = [f"| (unembed bias) | {self.unembed_bias:+.4f} |", f"| (residual: >= 3 heads) | {self.residual:+.4f} |",
                  f"| **target** | {self.target:+.4f} |"]
        return "\n".join(["| path | contribution |", "|---|---:|", *rows, *totals])


def _centre(vectors: Tensor, norm: torch.nn.Module) -> Tensor:
    """The adjoint of the norm's centring: subtract the mean for LayerNorm, nothing for RMSNorm."""
    return vectors - vectors.mean(-1, keepdim=True) if norm.centres else vectors


def _gain(module: torch.nn.Module, like: Tensor) -> Tensor:
    return torch.ones_like(like[0]) if module.w is None else module.w.detach()


@torch.no_grad()
def path_attribution(model: HookedTransformer, input: ModelInput, answer: int | str | None = None,
                     wrong: int | str | None = None, direction: Float[Tensor, "d_model"] | None = None,
                     position: int = -1, layers: range | list[int] | None = None) -> PathAttribution:
    """Attribute one logit (`answer`), a logit difference (`answer` - `wrong`) or the component of the
    final LayerNorm's output along `direction` at `position` of a single sequence, to paths (module doc).

    direction `[d_model]` is read from the final norm's output *including its gain and bias* (the
    space W_U reads), so `direction=W_U[:, t]` equals `answer=t` minus b_U[t]; on an unfolded and a
    fold_ln model the same vector means different things.
    answer/wrong: token ids or single-token strings. layers: the layers whose heads are expanded
    (default all); the rest land in `residual`.
    """
    cfg = model.cfg
    tokens = model.to_tokens(input) if isinstance(input, str) else model._checked_tokens(input)
    if tokens.shape[0] != 1:
        raise ValueError(f"path_attribution explains one sequence; got a batch of {tokens.shape[0]}: pass tokens[i:i+1].")
    layers = sorted(set(range(cfg.n_layers) if layers is None else layers))
    if any(not 0 <= layer < cfg.n_layers for layer in layers):
        raise IndexError(f"layers {layers} out of range: the model has {cfg.n_layers} layers (valid: 0..{cfg.n_layers - 1}).")
    answer_id, wrong_id = _target_ids(model, answer, wrong, direction)
    n_pos = tokens.shape[1]
    if not -n_pos <= position < n_pos:
        raise IndexError(f"position {position} is outside the sequence of {n_pos} tokens (valid: {-n_pos}..{n_pos - 1}).")
    if direction is not None:
        unembed = direction.detach().float()  # [d_model], on the final LN output
    else:
        unembed = model.W_U[:, answer_id].detach()
        unembed = unembed - model.W_U[:, wrong_id].detach() if wrong_id is not None else unembed
    wanted = [name for name in ("hook_embed", "hook_pos_embed") if name in model.hook_dict] + [
        "ln_final.hook_scale", f"blocks.{cfg.n_layers - 1}.hook_resid_post"] + [
        f"blocks.{layer}.{name}" for layer in range(cfg.n_layers)
        for name in ("attn.hook_pattern", "ln1.hook_scale", "hook_mlp_out")]
    logits, cache = model.run_with_cache(tokens, names_filter=wanted)
    q = position % n_pos
    device = model.W_E.device

    # The target as a functional on the final residual stream: only position q is read.
    final = torch.zeros(n_pos, cfg.d_model, dtype=torch.float64, device=device)
    final[q] = _centre(_gain(model.ln_final, unembed) * unembed, model.ln_final).double() / \
        cache["ln_final.hook_scale"][0, q].double()
    unembed_bias = 0.0
    if model.ln_final.b is not None:
        unembed_bias += float(model.ln_final.b.double() @ unembed.double())
    if answer_id is not None:
        unembed_bias += float(model.b_U[answer_id]) - (float(model.b_U[wrong_id]) if wrong_id is not None else 0.0)

    source_names, written_after, source_values = _sources(model, cache)  # [source, pos, d_model]
    names: list[str] = []
    values: list[Tensor] = []

    def add(functionals: Tensor, before_layer: int, routes: list[str]) -> None:
        """functionals `[n, pos, d_model]`, one per route; sources written before `before_layer` only."""
        usable = written_after < before_layer
        contributions = torch.einsum("npd,spd->ns", functionals, source_values[usable])  # [route, source]
        used = [name for name, ok in zip(source_names, usable.tolist()) if ok]
        names.extend(f"{source} -> {route}logits" for route in routes for source in used)
        values.append(contributions.flatten())

    add(final[None], cfg.n_layers, [""])
    head_functionals = {layer: _pull_back(model, cache, layer, final) for layer in layers}  # [head, pos, d_model]
    for layer in layers:
        add(head_functionals[layer], layer, [f"L{layer}H{head} -> " for head in range(cfg.n_heads)])
    for index_b, layer_b in enumerate(layers):
        for layer_a in layers[:index_b]:
            pair = _pull_back(model, cache, layer_a, head_functionals[layer_b])  # [head_a, head_b, pos, d_model]
            add(pair.flatten(0, 1), layer_a, [f"L{layer_a}H{head_a} -> L{layer_b}H{head_b} -> "
                                              for head_a in range(cfg.n_heads) for head_b in range(cfg.n_heads)])
    if direction is None:  # the model's own logits: an independent check of the expansion
        target = float(logits[0, q, answer_id]) - (float(logits[0, q, wrong_id]) if wrong_id is not None else 0.0)
    else:  # the final LayerNorm's output along `direction`
        target = float((final * cache[f"blocks.{cfg.n_layers - 1}.hook_resid_post"][0].double()).sum()) + unembed_bias
    values_tensor = torch.cat(values)
    residual = target - float(values_tensor.sum()) - unembed_bias
    return PathAttribution(names, values_tensor, target, unembed_bias, residual)


def _pull_back(model: HookedTransformer, cache, layer: int, functional: Float[Tensor, "... pos d_model"]
               ) -> Float[Tensor, "head ... pos d_model"]:
    """Adjoint of every (query) head of `layer` (frozen pattern and ln1 scale): functionals on its output
    `[..., pos, d_model]` -> functionals on the residual stream before the layer `[head, ..., pos, d_model]`.
    Under grouped-query attention `attn.W_V` is per query head (kv head h // group, repeated)."""
    attn, ln1 = model.blocks[layer].attn, model.blocks[layer].ln1
    pattern = cache[f"blocks.{layer}.attn.hook_pattern"][0].double()  # [head, query, key]
    scale = cache[f"blocks.{layer}.ln1.hook_scale"][0].double()  # [pos, 1]
    W_V, W_O = attn.W_V.detach().double(), attn.W_O.detach().double()  # [head, d_model, d_head], [head, d_head, d_model]
    gain = _gain(ln1, W_O[0, 0]).double()
    # Through W_O first (d_model -> d_head), then the pattern (query -> key), then W_V (d_head -> d_model).
    through_O = torch.einsum("...qd,hed->h...qe", functional, W_O)
    through_pattern = torch.einsum("hqk,h...qe->h...ke", pattern, through_O)
    through_V = torch.einsum("h...ke,hme->h...km", through_pattern, W_V)
    return _centre(gain * through_V, ln1) / scale


def _sources(model: HookedTransformer, cache) -> tuple[list[str], Int[Tensor, "source"], Float[Tensor, "source pos d_model"]]:
    """What is written to the residual stream and not expanded further, and the layer each follows (-1: none)."""
    names, after, vectors = ["embed"], [-1], [cache["hook_embed"][0]]
    if "hook_pos_embed" in model.hook_dict:  # learned positions; rotary models write nothing positional
        names, after, vectors = names + ["pos_embed"], after + [-1], vectors + [cache["hook_pos_embed"][0]]
    n_pos = cache["hook_embed"].shape[1]
    for layer, block in enumerate(model.blocks):
        attn = block.attn
        ln_bias = torch.zeros(model.cfg.d_model, dtype=torch.float64, device=model.W_E.device) if block.ln1.b is None \
            else block.ln1.b.detach().double()
        value_bias = torch.einsum("d,hde->he", ln_bias, attn.W_V.detach().double()) + attn.b_V.detach().double()
        constant = attn.b_O.detach().double() + torch.einsum("he,hed->d", value_bias, attn.W_O.detach().double())
        names += [f"attn_bias{layer}", f"mlp{layer}"]
        after += [layer, layer]
        vectors += [constant.expand(n_pos, -1), cache[f"blocks.{layer}.hook_mlp_out"][0]]
    return names, torch.tensor(after, device=model.W_E.device), torch.stack([vector.double() for vector in vectors])


def _target_ids(model: HookedTransformer, answer, wrong, direction) -> tuple[int | None, int | None]:
    """The answer and wrong token ids, after checking that exactly one kind of target was asked for."""
    if direction is not None:
        if answer is not None or wrong is not None:
            raise ValueError("Pass either direction= or answer= (and wrong=), not both.")
        if direction.shape != (model.cfg.d_model,):
            raise ValueError(f"direction must have shape [d_model] = [{model.cfg.d_model}], got {tuple(direction.shape)}.")
        return None, None
    if answer is None:
        raise ValueError("Say what to attribute: answer= (a logit), answer= and wrong= (a logit difference) or direction=.")
    return int(token_ids(model, answer)), None if wrong is None else int(token_ids(model, wrong))
