"""MLPs: the standard two-layer MLP and the gated one (SwiGLU, Shazeer 2020), with TransformerLens's hook names.

Weights `[d_model, d_mlp]` (W_in, W_gate) and `[d_mlp, d_model]` (W_out), multiplied on the right.
A neuron is one of the d_mlp hidden units: `hook_post[..., i]` times row i of W_out is what it writes.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor, nn

from interp.components.functional import activation_function, affine
from interp.hooks import HookPoint


class MLP(nn.Module):
    """`act(x W_in + b_in) W_out + b_out`: hook_pre before the activation, hook_post after it."""

    def __init__(self, d_model: int, d_mlp: int, act_fn: str) -> None:
        super().__init__()
        self.act_fn = act_fn
        self.activation = activation_function(act_fn)
        self.W_in = nn.Parameter(torch.empty(d_model, d_mlp))
        self.b_in = nn.Parameter(torch.zeros(d_mlp))
        self.W_out = nn.Parameter(torch.empty(d_mlp, d_model))
        self.b_out = nn.Parameter(torch.zeros(d_model))
        self.hook_pre = HookPoint("batch pos d_mlp")
        self.hook_post = HookPoint("batch pos d_mlp")

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        pre = self.hook_pre(affine(x, self.W_in, self.b_in))
        post = self.hook_post(self.activation(pre))
        return affine(post, self.W_out, self.b_out)


class GatedMLP(nn.Module):
    """`(act(x W_gate + b_gate) * (x W_in + b_in)) W_out + b_out` (SwiGLU with act = silu: Llama, Mistral, Qwen2).

    hook_pre is the gate before the activation, hook_pre_linear the linear branch, hook_post their product
    (as in TransformerLens). `transformers` names: gate_proj = W_gate, up_proj = W_in, down_proj = W_out.
    """

    def __init__(self, d_model: int, d_mlp: int, act_fn: str) -> None:
        super().__init__()
        self.act_fn = act_fn
        self.activation = activation_function(act_fn)
        self.W_gate = nn.Parameter(torch.empty(d_model, d_mlp))
        self.b_gate = nn.Parameter(torch.zeros(d_mlp))
        self.W_in = nn.Parameter(torch.empty(d_model, d_mlp))
        self.b_in = nn.Parameter(torch.zeros(d_mlp))
        self.W_out = nn.Parameter(torch.empty(d_mlp, d_model))
        self.b_out = nn.Parameter(torch.zeros(d_model))
        self.hook_pre = HookPoint("batch pos d_mlp")
        self.hook_pre_linear = HookPoint("batch pos d_mlp")
        self.hook_post = HookPoint("batch pos d_mlp")

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        pre = self.hook_pre(affine(x, self.W_gate, self.b_gate))
        pre_linear = self.hook_pre_linear(affine(x, self.W_in, self.b_in))
        post = self.hook_post(self.activation(pre) * pre_linear)
        return affine(post, self.W_out, self.b_out)
