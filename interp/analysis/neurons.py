"""MLP neurons read off the weights and off activations.

The "memory management" motif (Elhage et al. 2021; Gurnee et al. 2024 "Universal neurons"): a neuron
whose output weight points opposite to its input weight (cosine near -1) erases the direction it
reads, freeing residual-stream bandwidth. For random directions the cosine is about N(0, 1/d_model),
so |cosine| > 3/sqrt(d_model) is unlikely by chance. With `fold_ln` the input weight includes ln2's
gain, i.e. it is the direction the neuron really reads from the residual stream.

Gated MLPs (SwiGLU: Llama, Mistral, Qwen2) read the stream twice per neuron: `post = act(x·W_gate[:, n]) *
(x·W_in[:, n])`. W_in (`up_proj`) is the linear branch: while the gate is open, the neuron's value is
proportional to x·W_in[:, n], so W_in is the direction whose content it writes back (and erases, at
cosine -1): `neuron_in_out_cosine` uses it by default. W_gate (`gate_proj`) only decides how much passes
(silu is ~0 for negative inputs); `reading="gate"` gives its cosine with W_out instead. A standard MLP
has only W_in, and `reading="gate"` raises there.
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


READINGS = ("in", "gate")


def input_weights(model: HookedTransformer, reading: str = "in") -> Float[Tensor, "layer d_model d_mlp"]:
    """The input weights `reading` names: "in" = W_in (a standard MLP's only input; a gated MLP's linear
    branch, up_proj), "gate" = W_gate (gated MLPs only: the gate, gate_proj). ValueError otherwise."""
    if reading not in READINGS:
        raise ValueError(f"reading must be one of {READINGS}, got {reading!r}.")
    gated = model.cfg.gated_mlp
    if reading == "gate" and not gated:
        raise ValueError("reading='gate' asks for W_gate, the gate of a gated (SwiGLU) MLP; this model's MLP is not "
                         "gated and reads the stream through W_in only: use reading='in'.")
    return model.W_gate if reading == "gate" else model.W_in


@torch.no_grad()
def neuron_in_out_cosine(model: HookedTransformer, reading: str = "in") -> Float[Tensor, "layer d_mlp"]:
    """cos(W_in[:, n], W_out[n, :]) for every neuron n of every layer.

    On gated MLPs W_in is the linear branch (the direction whose content the neuron passes on while its gate
    is open); `reading="gate"` uses the gate W_gate instead (gated MLPs only; see the module doc)."""
    return F.cosine_similarity(input_weights(model, reading).transpose(-1, -2), model.W_out, dim=-1)


def most_negative_neurons(model: HookedTransformer, k: int = 10, reading: str = "in") -> dict[int, list[Neuron]]:
    """The `k` neurons of each layer with the most negative input/output cosine, most negative first
    (`reading` as in `neuron_in_out_cosine`)."""
    cosines = neuron_in_out_cosine(model, reading)
    k = min(k, model.cfg.d_mlp)
    lowest = cosines.topk(k, dim=-1, largest=False)
    return {layer: [Neuron(layer, int(index), float(value)) for value, index in zip(lowest.values[layer], lowest.indices[layer])]
            for layer in range(model.cfg.n_layers)}


@torch.no_grad()
def neuron_activations(model: HookedTransformer, input: ModelInput, layer: int) -> Float[Tensor, "batch pos d_mlp"]:
    """`blocks.{layer}.mlp.hook_post` on `input` (the forward stops after that layer): on gated MLPs the
    product act(gate) * linear, the value W_out reads."""
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
