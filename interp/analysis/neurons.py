"""MLP neurons read off the weights and off activations.

The "memory management" motif (Elhage et al. 2021; Gurnee et al. 2024 "Universal neurons"): a neuron
whose output weight points opposite to its input weight (cosine near -1) erases the direction it
reads, freeing residual-stream bandwidth. For random directions the cosine is about N(0, 1/d_model),
so |cosine| > 3/sqrt(d_model) is unlikely by chance. With `fold_ln` the input weight includes ln2's
gain, i.e. it is the direction the neuron really reads from the residual stream.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from interp.analysis.circuits import check_head
from interp.model import HookedTransformer, ModelInput


@dataclass(frozen=True)
class Neuron:
    layer: int
    index: int
    value: float  # the cosine, or the activation, depending on who made it


@torch.no_grad()
def neuron_in_out_cosine(model: HookedTransformer) -> Float[Tensor, "layer d_mlp"]:
    """cos(W_in[:, n], W_out[n, :]) for every neuron n of every layer."""
    return F.cosine_similarity(model.W_in.transpose(-1, -2), model.W_out, dim=-1)


def most_negative_neurons(model: HookedTransformer, k: int = 10) -> dict[int, list[Neuron]]:
    """The `k` neurons of each layer with the most negative input/output cosine, most negative first."""
    cosines = neuron_in_out_cosine(model)
    k = min(k, model.cfg.d_mlp)
    lowest = cosines.topk(k, dim=-1, largest=False)
    return {layer: [Neuron(layer, int(index), float(value)) for value, index in zip(lowest.values[layer], lowest.indices[layer])]
            for layer in range(model.cfg.n_layers)}


@torch.no_grad()
def neuron_activations(model: HookedTransformer, input: ModelInput, layer: int) -> Float[Tensor, "batch pos d_mlp"]:
    """`blocks.{layer}.mlp.hook_post` on `input` (the forward stops after that layer)."""
    check_head(model, layer)
    name = f"blocks.{layer % model.cfg.n_layers}.mlp.hook_post"
    _, cache = model.run_with_cache(input, names_filter=name, return_type=None)
    return cache[name]


def top_activating_positions(model: HookedTransformer, tokens: Int[Tensor, "batch pos"], layer: int, neuron: int,
                             k: int = 10) -> list[tuple[int, int, float]]:
    """The `k` (sequence, position, activation) triples where `neuron` of `layer` fires hardest on `tokens`."""
    if not 0 <= neuron < model.cfg.d_mlp:
        raise IndexError(f"neuron {neuron} is out of range: layers have {model.cfg.d_mlp} neurons (valid: 0..{model.cfg.d_mlp - 1}).")
    activations = neuron_activations(model, tokens, layer)[..., neuron]  # [batch, pos]
    top = activations.flatten().topk(min(k, activations.numel()))
    n_pos = activations.shape[1]
    return [(int(i) // n_pos, int(i) % n_pos, float(v)) for v, i in zip(top.values, top.indices)]
