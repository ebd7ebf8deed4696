"""The residual stream as a sum of components: embeddings, blocks, heads, neurons; the logit lens and
direct logit attribution (Elhage et al. 2021, "A Mathematical Framework for Transformer Circuits";
nostalgebraist 2020, "interpreting GPT: the logit lens").

Every supported family (GPT-2, GPT-NeoX, Llama, Mistral, Qwen2) only ever adds to its residual stream, so
the stream before block `layer` is exactly

    resid_pre[layer] = embed (+ pos_embed) + Σ_{l < layer} (attn_out[l] + mlp_out[l])
    attn_out[l] = Σ_h z[l, h] @ W_O[l, h] + b_O[l]        mlp_out[l] = Σ_n post[l, n] W_out[l, n] + b_out[l]

What each family has:
- "pos_embed" only where positions are learned and added to the stream (GPT-2). Rotary models (GPT-NeoX,
  Llama, Mistral, Qwen2) rotate q and k inside attention and add nothing: they have no `hook_pos_embed`,
  and no "pos_embed" component.
- Heads are query heads ("L{l}H{h}", h < n_heads) under grouped-query attention too: z and W_O are per
  query head (several query heads read one shared kv head; each writes its own output).
- Parallel blocks (GPT-NeoX with use_parallel_residual) compute attention and MLP from the same resid_pre;
  they have no resid_mid (`accumulated_resid(incl_mid=True)` refuses), and their ln2 reads resid_pre.
- RMSNorm (Llama, Mistral, Qwen2) does not centre and has no bias: `apply_ln_to_stack` only divides by the
  scale, and the constant part of a logit is just b_U.

Every function returns a `ComponentStack`: `components` `[component, *batch_and_pos, d_model]` with
one label per component. What sums to what (tested to 1e-5 relative in fp32, on every family):
- `decompose_resid` and `get_full_resid_decomposition` sum to the residual stream at `layer`
  (`blocks.{layer}.hook_resid_pre`, or the last `hook_resid_post` when layer is None);
- `stack_head_results` of one block plus its "L{l}_bias" sums to `hook_attn_out`, and
  `stack_neuron_results` plus "L{l}_mlp_bias" to `hook_mlp_out`.
Biases: b_O and b_out are inside "{l}_attn_out" / "{l}_mlp_out"; the per-head and per-neuron stacks
give them their own components. After `fold_value_biases`, b_V is part of b_O. (Families without
biases hold zeros there.)

`layer` names a residual stream (the components of the blocks before it; None = after the last block)
in `accumulated_resid`, `decompose_resid`, `get_full_resid_decomposition` and `apply_ln_to_stack`,
and a single block in `stack_head_results` / `stack_neuron_results` (TransformerLens means "blocks
before" there too). Per-head outputs are derived from `hook_z` and W_O, so `hook_result` (opt-in)
need not be cached.

Normalisation is not linear. `apply_ln_to_stack` linearises it by freezing the cached scale of the
residual the stack sums to: each component is centred (LayerNorm only) and divided by that one scale, so
the normalised components still add up exactly to `hook_normalized`. Direct logit attribution
(`logit_attrs`) is each frozen-norm component's dot product with an unembedding direction.
The logit lens (`accumulated_resid(apply_ln=True)`, `logit_lens`) instead normalises every partial
residual with its own recomputed scale, as if the model stopped there. TransformerLens 3.9's
`accumulated_resid(apply_ln=True)` does so at the final stream (it recomputes ln_final on each partial residual),
but at an earlier `layer` it divides every partial residual by that block's one cached ln1/ln2 scale, which
mis-scales the early layers, whose norms are much smaller (`interp.tl` keeps TransformerLens's behaviour).

pos_slice (int, slice or None) selects positions of every activation read; an int drops the pos axis.
Stacks remember theirs, and `apply_ln_to_stack` / `logit_attrs` slice the LN scale the same way.

Padding. A cache of a padded batch has `cache.attention_mask` `[batch, pos]` (True at real tokens); each row's
real positions hold what its prompt alone gives. A padded position holds no token and its activations mean
nothing, so a `pos_slice` that selects a padded position of any row raises ValueError: left-pad
(`padding_side="left"`) so that -1 is each prompt's last token, or select only real positions. Without a
pos_slice every position is returned, padding included: use `cache.attention_mask` to drop it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Union

import einops
import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.analysis.stack import ComponentStack, PosSlice
from interp.components import affine

# The cache and the model are above this module (the cache's decompose_resid etc. delegate here), so they are
# not imported: `cache` is an `interp.cache.ActivationCache`, `model` an `interp.model.HookedTransformer`.
Cache = Any
Model = Any

Tokens = Union[int, str, list, Int[Tensor, "..."]]
Piece = tuple[list[str], Callable[[], Tensor]]  # labels, and how to compute their [k, *batch_and_pos, d_model]
MODES = ("all", "attn", "mlp")


# ----- helpers ---------------------------------------------------------------------------------
def _check_layer(model: Model, layer: int | None, allow_final: bool) -> int:
    """The layer as an int (None -> n_layers); IndexError naming the valid range otherwise."""
    n_layers = model.cfg.n_layers
    top = n_layers if allow_final else n_layers - 1
    if layer is None and allow_final:
        return n_layers
    if not isinstance(layer, int) or not 0 <= layer <= top:
        what = "a residual stream" if allow_final else "a block"
        final = f" ({n_layers} or None: after the last block)" if allow_final else ""
        raise IndexError(f"layer {layer!r} is out of range for {what}: valid 0..{top}{final}.")
    return layer


def _read(cache: Cache, name: str, pos_slice: PosSlice) -> Tensor:
    """A cached activation with `pos_slice` applied to its pos axis; KeyError naming the missing hook."""
    if name not in cache:
        raise KeyError(f"{name!r} was not cached; include it in run_with_cache(names_filter=...) "
                       "(or pass no names_filter, which caches every default hook).")
    tensor = cache[name]
    if pos_slice is None:
        return tensor
    pos_dim = 1 if cache.has_batch_dim else 0
    check_no_padding(cache, pos_slice, pos_dim)
    return tensor[(slice(None),) * pos_dim + (pos_slice,)]


def check_no_padding(cache: Cache, pos_slice: PosSlice, pos_dim: int) -> None:
    """ValueError if `pos_slice` selects a padded position of some row (see the module doc, Padding)."""
    mask = getattr(cache, "attention_mask", None)
    if mask is None or bool(mask.all()):
        return
    selected = mask[(slice(None),) * pos_dim + (pos_slice,)]
    if bool(selected.all()):
        return
    rows = (~selected).reshape(selected.shape[0], -1).any(-1).nonzero().flatten().tolist() if pos_dim else [0]
    shown = ", ".join(map(str, rows[:10])) + (", ..." if len(rows) > 10 else "")
    raise ValueError(f"pos_slice={pos_slice!r} selects padding in row{'s' if len(rows) > 1 else ''} {shown} "
                     "(cache.attention_mask is False there): a padded position holds no token and its activations "
                     "mean nothing. Use left padding so position -1 is each prompt's last token "
                     "(run_with_cache(texts, padding_side='left'), or model.tokenize(texts, padding_side='left') and "
                     "its attention_mask), or pass a pos_slice that selects only real positions, or pos_slice=None "
                     "and drop padding with cache.attention_mask.")


def _assemble(pieces: list[Piece], pos_slice: PosSlice) -> ComponentStack:
    """Fill one preallocated `[component, ...]` tensor piece by piece (peak memory ≈ the result)."""
    labels = [label for piece_labels, _ in pieces for label in piece_labels]
    if not labels:
        raise ValueError("No components selected: use a later layer, incl_embeds=True or another mode.")
    out, start = None, 0
    for piece_labels, compute in pieces:
        block = compute()
        out = block.new_empty(len(labels), *block.shape[1:]) if out is None else out
        out[start:start + len(piece_labels)] = block
        start += len(piece_labels)
    return ComponentStack(out, labels, pos_slice)


def _bias(bias: Float[Tensor, "d_model"], batch_and_pos: torch.Size,
          like: Tensor) -> Float[Tensor, "1 *batch_and_pos d_model"]:
    return bias.to(like).expand(*batch_and_pos, bias.shape[-1])[None]  # a view: no copy until stacked


def _one(cache: Cache, name: str, pos_slice: PosSlice) -> Callable[[], Tensor]:
    return lambda: _read(cache, name, pos_slice)[None]


# ----- residual streams ------------------------------------------------------------------------
@torch.no_grad()
def accumulated_resid(cache: Cache, layer: int | None = None, incl_mid: bool = False,
                      apply_ln: bool = False, pos_slice: PosSlice = None) -> ComponentStack:
    """The residual stream before each block 0..layer: "0_pre", ("0_mid",) "1_pre", ..., "final_post".

    layer=None (or n_layers) ends with the stream after the last block, "final_post".
    incl_mid=True adds each block's resid_mid (between attention and MLP); parallel blocks (GPT-NeoX with
    use_parallel_residual) have none, and raise ValueError.
    apply_ln=True: the logit-lens input. Each residual goes through ln_final with its own scale (LayerNorm:
    centred, divided by sqrt(mean(centred²) + eps); RMSNorm: divided by sqrt(mean(x²) + eps)), then
    ln_final's gain w and bias b where it has them (none after fold_ln; RMSNorm has no bias).
    """
    if incl_mid and not has_resid_mid(cache.model):
        raise ValueError("incl_mid=True asks for resid_mid, the stream between attention and MLP; this model's blocks "
                         "are parallel (attention and MLP both read resid_pre, resid_post = resid_pre + attn_out + "
                         "mlp_out), so there is no resid_mid. Use incl_mid=False.")
    if apply_ln:
        _refuse_gradients(cache, "accumulated_resid(apply_ln=True)",
                          "use apply_ln=False: the gradient at each residual stream")
    model, n_layers = cache.model, cache.model.cfg.n_layers
    layer = _check_layer(model, layer, allow_final=True)
    kinds = ("pre", "mid") if incl_mid else ("pre",)
    entries = [(f"{index}_{kind}", f"blocks.{index}.hook_resid_{kind}") for index in range(layer) for kind in kinds]
    entries.append(("final_post", f"blocks.{n_layers - 1}.hook_resid_post") if layer == n_layers
                   else (f"{layer}_pre", f"blocks.{layer}.hook_resid_pre"))
    labels = [label for label, _ in entries]
    components = torch.stack([_read(cache, name, pos_slice) for _, name in entries])
    if apply_ln:
        components = model.ln_final.scale_and_normalized(components)[1]  # each with its own scale
        if model.ln_final.w is not None:
            components = components * model.ln_final.w.to(components)
        if model.ln_final.b is not None:
            components = components + model.ln_final.b.to(components)
    return ComponentStack(components, labels, pos_slice)


@torch.no_grad()
def logit_lens(cache: Cache, layer: int | None = None, incl_mid: bool = False,
               pos_slice: PosSlice = None) -> Float[Tensor, "component *batch_and_pos d_vocab"]:
    """Logits read off each partial residual stream: `accumulated_resid(apply_ln=True) @ W_U + b_U`.

    Components are labelled as in `accumulated_resid`; the last one ("final_post") equals the logits.
    """
    normalised = accumulated_resid(cache, layer, incl_mid, apply_ln=True, pos_slice=pos_slice).components
    model = cache.model
    return normalised @ model.W_U.to(normalised) + model.b_U.to(normalised)


@torch.no_grad()
def decompose_resid(cache: Cache, layer: int | None = None, mode: str = "all",
                    incl_embeds: bool = True, pos_slice: PosSlice = None) -> ComponentStack:
    """The residual stream at `layer` as "embed", "pos_embed" (learned positions only), "{l}_attn_out",
    "{l}_mlp_out" (l < layer).

    With mode="all" and incl_embeds=True the components sum to the residual stream at `layer`;
    mode="attn" / "mlp" keeps only that kind of block output and incl_embeds=False drops the
    embeddings, so the stack then sums to only part of it. b_O / b_out are inside attn_out / mlp_out.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
    layer = _check_layer(cache.model, layer, allow_final=True)
    pieces = _embed_pieces(cache, pos_slice) if incl_embeds else []
    for index in range(layer):
        for kind in ("attn", "mlp"):
            if mode in ("all", kind):
                pieces.append(([f"{index}_{kind}_out"], _one(cache, f"blocks.{index}.hook_{kind}_out", pos_slice)))
    return _assemble(pieces, pos_slice)


@torch.no_grad()
def stack_head_results(cache: Cache, layer: int | None = None, pos_slice: PosSlice = None,
                       incl_bias: bool = True) -> ComponentStack:
    """Each head's output `z[..., h, :] @ W_O[l, h]` as "L{l}H{h}", for block `layer` (None: every block).

    incl_bias adds one "L{l}_bias" (b_O) per block; a block's heads plus its bias sum to its hook_attn_out.
    Read from the opt-in `attn.hook_result` when it was cached, else derived from `hook_z`; derived results
    that do not add up to a cached `hook_attn_out` (a cache of gradients) raise ValueError. For gradients
    use `GradientCache` (`cache.gradients()`) or `interp.analysis.gradients.stack_head_gradients`.
    """
    _refuse_gradients(cache, "stack_head_results", "use interp.analysis.gradients.stack_head_gradients")
    model = cache.model
    layers = range(model.cfg.n_layers) if layer is None else [_check_layer(model, layer, allow_final=False)]
    return _assemble([piece for index in layers for piece in _head_pieces(cache, index, pos_slice, incl_bias)],
                     pos_slice)


@torch.no_grad()
def stack_neuron_results(cache: Cache, layer: int, neurons: list[int] | slice | Tensor | None = None,
                         pos_slice: PosSlice = None, incl_bias: bool = True) -> ComponentStack:
    """Each neuron's output `post[..., n] * W_out[layer, n]` of block `layer`, as "L{l}N{n}".

    neurons: a subset (indices or a slice) to save memory: all d_mlp neurons of GPT-2 small take
    3072 × batch × pos × 768 floats. incl_bias adds "L{l}_mlp_bias" (b_out); with every neuron the
    stack sums to hook_mlp_out.
    """
    _refuse_gradients(cache, "stack_neuron_results", "use interp.analysis.gradients.stack_neuron_gradients")
    layer = _check_layer(cache.model, layer, allow_final=False)
    return _assemble(_neuron_pieces(cache, layer, neurons, pos_slice, incl_bias), pos_slice)


@torch.no_grad()
def get_full_resid_decomposition(cache: Cache, layer: int | None = None, expand_neurons: bool = True,
                                 pos_slice: PosSlice = None) -> ComponentStack:
    """The residual stream at `layer` split as finely as it goes, in forward order.

    "embed", "pos_embed" (learned positions only), then for each block l < layer: "L{l}H{h}" for every
    (query) head, "L{l}_bias",
    and either "L{l}N{n}" for every neuron plus "L{l}_mlp_bias" (expand_neurons) or "{l}_mlp_out".
    Sums to the residual stream at `layer`. With expand_neurons, GPT-2 small has 36,864 neuron
    components (each batch × pos × d_model): keep batch × pos small.
    """
    _refuse_gradients(cache, "get_full_resid_decomposition", "use stack_head_gradients and stack_neuron_gradients")
    layer = _check_layer(cache.model, layer, allow_final=True)
    pieces = _embed_pieces(cache, pos_slice)
    for index in range(layer):
        pieces += _head_pieces(cache, index, pos_slice, incl_bias=True)
        if expand_neurons:
            pieces += _neuron_pieces(cache, index, None, pos_slice, incl_bias=True)
        else:
            pieces.append(([f"{index}_mlp_out"], _one(cache, f"blocks.{index}.hook_mlp_out", pos_slice)))
    return _assemble(pieces, pos_slice)


def has_pos_embed(model: Model) -> bool:
    """Whether learned position embeddings are added to the residual stream (GPT-2); rotary models have none."""
    return "hook_pos_embed" in model.hook_dict


def has_resid_mid(model: Model) -> bool:
    """Whether blocks have a resid_mid (sequential blocks); parallel blocks (GPT-NeoX) do not."""
    return "blocks.0.hook_resid_mid" in model.hook_dict


def _embed_pieces(cache: Cache, pos_slice: PosSlice) -> list[Piece]:
    pieces = [(["embed"], _one(cache, "hook_embed", pos_slice))]
    if has_pos_embed(cache.model):
        pieces.append((["pos_embed"], _one(cache, "hook_pos_embed", pos_slice)))
    return pieces


def _head_pieces(cache: Cache, layer: int, pos_slice: PosSlice, incl_bias: bool) -> list[Piece]:
    attn = cache.model.blocks[layer].attn

    def heads() -> Float[Tensor, "n_heads *batch_and_pos d_model"]:
        if f"blocks.{layer}.attn.hook_result" in cache:  # the opt-in per-head outputs, when they were cached
            result = _read(cache, f"blocks.{layer}.attn.hook_result", pos_slice)
            return einops.rearrange(result, "... n_heads d_model -> n_heads ... d_model")
        z = _read(cache, f"blocks.{layer}.attn.hook_z", pos_slice)
        results = einops.einsum(z, attn.W_O.to(z), "... n_heads d_head, n_heads d_head d_model -> n_heads ... d_model")
        _check_adds_up(cache, results.sum(0) + attn.b_O.to(results), f"blocks.{layer}.hook_attn_out", pos_slice,
                       f"blocks.{layer}.attn.hook_z @ W_O")
        return results

    def bias() -> Float[Tensor, "1 *batch_and_pos d_model"]:
        name = f"blocks.{layer}.attn.hook_result" if f"blocks.{layer}.attn.hook_result" in cache \
            else f"blocks.{layer}.attn.hook_z"
        per_head = _read(cache, name, pos_slice)  # [..., n_heads, d_head or d_model]: its batch/pos shape
        return _bias(attn.b_O, per_head.shape[:-2], per_head)

    pieces = [([f"L{layer}H{head}" for head in range(attn.n_heads)], heads)]
    return pieces + [([f"L{layer}_bias"], bias)] if incl_bias else pieces


def neuron_indices(d_mlp: int, neurons: list[int] | slice | Tensor | None) -> Int[Tensor, "neuron"]:
    """The neuron indices a selection names (None: all), or IndexError naming the valid range."""
    if isinstance(neurons, (list, tuple, Tensor)) and any(not 0 <= int(n) < d_mlp for n in neurons):
        raise IndexError(f"neurons must be in 0..{d_mlp - 1} (d_mlp={d_mlp}), got {neurons}.")
    return torch.arange(d_mlp)[slice(None) if neurons is None else neurons].reshape(-1)


def _check_adds_up(cache: Cache, total: Tensor, name: str, pos_slice: PosSlice, made_from: str) -> None:
    """Refuse per-component results that do not add up to the cached block output `name`.

    They always do for activations of one run (to rounding); they do not when the cache holds gradients
    (the gradient of a head's output is attn_out's gradient, not grad_z @ W_O) or a hook edited `name`.
    A cache built by hand (not by run_with_cache) without `name` is refused: nothing could tell.
    """
    if name not in cache:
        if getattr(cache, "from_run", False):  # activations of one run_with_cache forward: nothing to doubt
            return
        raise ValueError(
            f"Cannot tell whether this cache holds activations or gradients: {name} is not in it, so components "
            f"computed from {made_from} cannot be checked against it. Build the cache with model.run_with_cache, or "
            f"include {name}; for gradients use GradientCache(grads, model).")
    expected = _read(cache, name, pos_slice).to(total)
    tolerance = 1e-3 if total.dtype in (torch.float32, torch.float64) else 5e-2  # relative; fp32 rounding is ~1e-6
    error = float((total - expected).norm() / expected.norm().clamp_min(1e-30))
    if error > tolerance:
        raise ValueError(
            f"Components computed from {made_from} do not add up to {name} (relative error {error:.2g}). "
            "If this cache holds gradients, use GradientCache(grads, model).stack_head_results() or "
            "cache.gradients() of a run_with_cache(..., incl_bwd=True): a head's output adds into attn_out, so its "
            "gradient is attn_out's gradient. If a hook edited that output, cache attn.hook_result (opt-in) instead.")


def _refuse_gradients(cache: Cache, what: str, instead: str) -> None:
    if getattr(cache, "holds_gradients", False):
        raise ValueError(f"{what} combines activations with weights, and this cache holds gradients; {instead}.")


def _neuron_pieces(cache: Cache, layer: int, neurons: list[int] | slice | Tensor | None,
                   pos_slice: PosSlice, incl_bias: bool) -> list[Piece]:
    mlp, d_mlp = cache.model.blocks[layer].mlp, cache.model.cfg.d_mlp
    indices = neuron_indices(d_mlp, neurons)

    def outputs() -> Float[Tensor, "neuron *batch_and_pos d_model"]:
        every = _read(cache, f"blocks.{layer}.mlp.hook_post", pos_slice)
        # Every neuron together, even for a subset: only the whole adds up to mlp_out, the check's reference.
        _check_adds_up(cache, affine(every, mlp.W_out.to(every), mlp.b_out.to(every)), f"blocks.{layer}.hook_mlp_out",
                       pos_slice, f"blocks.{layer}.mlp.hook_post * W_out")
        post = every[..., indices.to(every.device)]
        W_out = mlp.W_out[indices.to(mlp.W_out.device)].to(post)
        return einops.einsum(post, W_out, "... neuron, neuron d_model -> neuron ... d_model")

    def bias() -> Float[Tensor, "1 *batch_and_pos d_model"]:
        post = _read(cache, f"blocks.{layer}.mlp.hook_post", pos_slice)
        return _bias(mlp.b_out, post.shape[:-1], post)

    pieces = [([f"L{layer}N{int(n)}" for n in indices], outputs)]
    return pieces + [([f"L{layer}_mlp_bias"], bias)] if incl_bias else pieces


# ----- LayerNorm and logits ----------------------------------------------------------------------
@torch.no_grad()
def apply_ln_to_stack(cache: Cache, stack: ComponentStack, layer: int | None = None,
                      mlp_input: bool = False, pos_slice: PosSlice = None) -> ComponentStack:
    """Each component normalised with the cached scale of the norm that reads the residual stream at `layer`:
    centred and divided by the scale for LayerNorm, only divided by it for RMSNorm (which does not centre).

    The scale is `ln_final.hook_scale` (layer None or n_layers), `blocks.{layer}.ln1.hook_scale`, or
    ln2's with mlp_input=True. ln2 reads resid_mid in sequential blocks and resid_pre in parallel blocks
    (GPT-NeoX), so with mlp_input=True the stack should sum to that: `decompose_resid(cache, layer)` plus
    `{layer}_attn_out` (sequential), or `decompose_resid(cache, layer)` itself (parallel). Freezing the scale
    makes the norm linear, so the results still add up: to that norm's `hook_normalized` when the stack
    sums to its input. The norm's w and b are not applied (see `logit_attrs`; after fold_ln there are none).
    pos_slice: the positions the stack covers; by default the one it was built with.
    """
    _refuse_gradients(cache, "apply_ln_to_stack", "apply it to a stack of activations")
    model = cache.model
    layer = _check_layer(model, layer, allow_final=True)
    if layer == model.cfg.n_layers:
        if mlp_input:
            raise ValueError("mlp_input=True selects ln2 of a block: give a layer in "
                             f"0..{model.cfg.n_layers - 1}, or mlp_input=False for ln_final.")
        name, norm = "ln_final.hook_scale", model.ln_final
    else:
        which = "ln2" if mlp_input else "ln1"
        name, norm = f"blocks.{layer}.{which}.hook_scale", getattr(model.blocks[layer], which)
    if pos_slice is not None and stack.pos_slice is not None and stack.pos_slice != pos_slice:
        raise ValueError(f"The stack was built with pos_slice={stack.pos_slice!r} but pos_slice={pos_slice!r} was "
                         "given; leave pos_slice out to use the stack's own.")
    pos_slice = stack.pos_slice if pos_slice is None else pos_slice
    scale = _read(cache, name, pos_slice)  # [*batch_and_pos, 1]
    if scale.shape[:-1] != stack.components.shape[1:-1]:
        raise ValueError(f"The stack covers batch/pos shape {tuple(stack.components.shape[1:-1])} but {name} "
                         f"with pos_slice={pos_slice!r} has {tuple(scale.shape[:-1])}; pass the pos_slice the stack "
                         "was built with.")
    components = stack.components
    if norm.centres:  # LayerNorm subtracts the mean (a linear map: it distributes over the components)
        components = components - components.mean(-1, keepdim=True)
    return ComponentStack(components / scale.to(components), stack.labels, pos_slice)


def token_ids(model: Model, tokens: Tokens) -> Int[Tensor, "..."]:
    """Token ids from ints, a tensor, or single-token strings (" Mary"; no BOS is prepended), checked."""
    if isinstance(tokens, str) or (isinstance(tokens, list) and tokens and isinstance(tokens[0], str)):
        rows = [model.to_tokens(text, prepend_bos=False)[0] for text in ([tokens] if isinstance(tokens, str) else tokens)]
        if any(len(row) != 1 for row in rows):
            raise ValueError(f"Each string must be one token (pass a single token, e.g. with a leading space, or its id); {tokens!r} "
                             f"tokenise to {[row.tolist() for row in rows]}.")
        return torch.cat(rows)[0] if isinstance(tokens, str) else torch.cat(rows)
    ids = torch.as_tensor(tokens, device=model.W_U.device)
    if ids.is_floating_point() or (ids.numel() and not (0 <= int(ids.min()) and int(ids.max()) < model.cfg.d_vocab)):
        raise ValueError(f"Token ids must be integers in [0, {model.cfg.d_vocab}); {tokens!r} is outside the vocabulary.")
    return ids


@torch.no_grad()
def logit_diff_direction(model: Model, correct: Tokens,
                         incorrect: Tokens) -> Float[Tensor, "*batch d_model"]:
    """W_U[:, correct] - W_U[:, incorrect]: the direction read by the logit difference (e.g. " Mary" - " John").

    Lives where W_U reads, after ln_final: `logit_attrs(directions=...)` applies ln_final.w to it.
    """
    return model.W_U.T[token_ids(model, correct)] - model.W_U.T[token_ids(model, incorrect)]


@torch.no_grad()
def logit_attrs(cache: Cache, stack: ComponentStack, tokens: Tokens | None = None,
                directions: Float[Tensor, "*batch d_model"] | None = None, incorrect_tokens: Tokens | None = None,
                pos_slice: PosSlice = None) -> Float[Tensor, "component *batch_and_pos"]:
    """Direct logit attribution: each component's contribution to the logit of `tokens` (Elhage et al. 2021).

    The stack (components of the final residual stream) goes through `apply_ln_to_stack` with the
    cached `ln_final.hook_scale` (LayerNorm: centred and scaled; RMSNorm: scaled), then is dotted with
    `ln_final.w * W_U[:, token]` (just W_U after fold_ln). With incorrect_tokens, the logit difference tokens - incorrect_tokens. `directions`
    instead of tokens: vectors where W_U reads (e.g. `logit_diff_direction`), ln_final.w applied alike.
    tokens / directions have the stack's batch/pos shape, or a prefix of it (e.g. `[batch]` for one
    answer per sequence, broadcast over positions), or are a single token / `[d_model]` vector.

    Bias convention: what is not attributed is the logit's constant part, `ln_final.b @ W_U[:, t] + b_U[t]`
    (`b_U[t]` after fold_ln, and on RMSNorm models, whose norms have no bias). For a full decomposition the attributions sum to logit[t] minus that.
    """
    _refuse_gradients(cache, "logit_attrs", "attribute with a cache of activations")
    model = cache.model
    if (tokens is None) == (directions is None):
        raise ValueError("Give exactly one of tokens= (answer token ids) or directions= (vectors in d_model).")
    if directions is not None and incorrect_tokens is not None:
        raise ValueError("incorrect_tokens works with tokens=; for directions= pass logit_diff_direction(...) instead.")
    if tokens is not None:
        directions = (model.W_U.T[token_ids(model, tokens)] if incorrect_tokens is None
                      else logit_diff_direction(model, tokens, incorrect_tokens))
    normalised = apply_ln_to_stack(cache, stack, None, pos_slice=pos_slice).components
    directions = directions.to(normalised)
    if model.ln_final.w is not None:
        directions = directions * model.ln_final.w.to(normalised)
    batch_and_pos, lead = normalised.shape[1:-1], directions.shape[:-1]
    if len(lead) > len(batch_and_pos) or any(size not in (1, want) for size, want in zip(lead, batch_and_pos)):
        raise ValueError(f"tokens/directions of batch shape {tuple(lead)} do not fit the stack's batch/pos shape "
                         f"{tuple(batch_and_pos)}; give that shape or a prefix of it.")
    directions = directions.reshape(*lead, *[1] * (len(batch_and_pos) - len(lead)), directions.shape[-1])
    return torch.einsum("c...d,...d->c...", normalised, directions)  # no [component, ..., d_model] product
