"""Gradients of a scalar with respect to each component's output: heads, neurons (for attribution patching).

A head's output `result_h = z_h W_O[h]` is added straight into `hook_attn_out`, so
∂metric/∂result_h = ∂metric/∂attn_out at the same position, for every head of the block; likewise every
neuron's output `post_n W_out[n]` adds into `hook_mlp_out`. Multiplying z's gradient by W_O, as one would
for activations, gives `∂/∂attn_out @ W_Oᵀ W_O`: a different, wrong number. These functions take a
`GradientCache` (`cache.gradients()` of a `run_with_cache(..., incl_bwd=True)`, or built from gradients
captured with backward hooks) and return the true gradients, stacked and labelled like the activations'
`stack_head_results` / `stack_neuron_results`, so `(corrupted - clean) · grad` is attribution patching.
"""

from __future__ import annotations

import einops
import torch
from jaxtyping import Float
from torch import Tensor

from interp.analysis.decompose import Cache, ComponentStack, PosSlice, _assemble, _check_layer, _read, neuron_indices



def _require_gradients(cache: Cache, what: str) -> None:
    if not getattr(cache, "holds_gradients", False):
        raise ValueError(f"{what} reads a cache of gradients: use cache.gradients() of run_with_cache(..., "
                         "incl_bwd=True), or GradientCache(grads, model) for gradients you captured yourself.")


@torch.no_grad()
def stack_head_gradients(cache: Cache, layer: int | None = None, pos_slice: PosSlice = None,
                         incl_bias: bool = True) -> ComponentStack:
    """∂metric/∂(each head's output) as "L{l}H{h}" (and "L{l}_bias" for b_O), `[component, *batch_and_pos, d_model]`.

    From the gradient of `attn.hook_result` where it was cached, else the gradient of `hook_attn_out`,
    which is every head's (and the bias's) gradient.
    """
    _require_gradients(cache, "stack_head_gradients")
    model = cache.model
    layers = range(model.cfg.n_layers) if layer is None else [_check_layer(model, layer, allow_final=False)]
    pieces = []
    for index in layers:
        n_heads = model.cfg.n_heads

        def heads(index: int = index) -> Float[Tensor, "n_heads *batch_and_pos d_model"]:
            if f"blocks.{index}.attn.hook_result" in cache:
                result = _read(cache, f"blocks.{index}.attn.hook_result", pos_slice)
                return einops.rearrange(result, "... n_heads d_model -> n_heads ... d_model")
            attn_out = _read(cache, f"blocks.{index}.hook_attn_out", pos_slice)
            return einops.repeat(attn_out, "... d_model -> n_heads ... d_model", n_heads=n_heads)

        pieces.append(([f"L{index}H{head}" for head in range(n_heads)], heads))
        if incl_bias:
            pieces.append(([f"L{index}_bias"], lambda index=index: _read(cache, f"blocks.{index}.hook_attn_out", pos_slice)[None]))
    return _assemble(pieces, pos_slice)


@torch.no_grad()
def stack_neuron_gradients(cache: Cache, layer: int, neurons: list[int] | slice | Tensor | None = None,
                           pos_slice: PosSlice = None, incl_bias: bool = True) -> ComponentStack:
    """∂metric/∂(each neuron's output `post_n W_out[n]`) of block `layer`, as "L{l}N{n}" (and "L{l}_mlp_bias").

    Every one equals the gradient of `hook_mlp_out`. For the gradient of the neuron's activation itself
    read `cache["mlp.hook_post", layer]` of the GradientCache.
    """
    _require_gradients(cache, "stack_neuron_gradients")
    layer = _check_layer(cache.model, layer, allow_final=False)
    indices = neuron_indices(cache.model.cfg.d_mlp, neurons)

    def outputs() -> Float[Tensor, "neuron *batch_and_pos d_model"]:
        mlp_out = _read(cache, f"blocks.{layer}.hook_mlp_out", pos_slice)
        return einops.repeat(mlp_out, "... d_model -> neuron ... d_model", neuron=len(indices))

    pieces = [([f"L{layer}N{int(n)}" for n in indices], outputs)]
    if incl_bias:
        pieces.append(([f"L{layer}_mlp_bias"], lambda: _read(cache, f"blocks.{layer}.hook_mlp_out", pos_slice)[None]))
    return _assemble(pieces, pos_slice)
