"""The pieces of a GPT-2 block, each with hook points at its named activations.

Weights use the circuits names and shapes (Elhage et al. 2021): W_Q, W_K, W_V `[n_heads, d_model, d_head]`,
W_O `[n_heads, d_head, d_model]`, W_in `[d_model, d_mlp]`, W_out `[d_mlp, d_model]`.
Q, K and V are stored fused (`W_QKV`) so the forward is one matrix product, as in `transformers`;
`W_Q`, `W_K`, `W_V` are views of it, so edits to them write through.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import einops
import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from interp.config import Config
from interp.hooks import HookPoint


def affine(x: Float[Tensor, "... d_in"], weight: Float[Tensor, "d_in d_out"],
           bias: Float[Tensor, "d_out"]) -> Float[Tensor, "... d_out"]:
    """x @ weight + bias as one fused BLAS call (addmm), like `transformers`' Conv1D."""
    out = torch.addmm(bias, x.reshape(-1, x.shape[-1]), weight)
    return out.view(*x.shape[:-1], weight.shape[-1])


ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),  # GPT-2's tanh approximation; equal to HF's to fp32 rounding
    "gelu": F.gelu,
    "relu": F.relu,
}


def activation_function(name: str) -> Callable[[Tensor], Tensor]:
    """The MLP activation called `name` (chosen once, at construction); ValueError for any other name."""
    if name not in ACTIVATIONS:
        raise ValueError(f"Unknown activation {name!r}; interp implements {sorted(ACTIVATIONS)}.")
    return ACTIVATIONS[name]


def activation(name: str, x: Tensor) -> Tensor:
    """`activation_function(name)(x)`: raises for an unknown name, never falls back to another function."""
    return activation_function(name)(x)


def layer_norm_scale(x: Float[Tensor, "... d_model"], eps: float) -> tuple[Float[Tensor, "... 1"], Float[Tensor, "... d_model"]]:
    """(scale, normalized) of LayerNorm: scale = sqrt(var + eps) of the centred input, normalized = centred / scale."""
    centered = x - x.mean(-1, keepdim=True)
    scale = (centered.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    return scale, centered / scale


def causal_attention_scores(q: Float[Tensor, "batch pos n_heads d_head"], k: Float[Tensor, "batch pos n_heads d_head"]
                            ) -> Float[Tensor, "batch n_heads query_pos key_pos"]:
    """q·k / sqrt(d_head) with future keys set to -inf (`hook_attn_scores`)."""
    scores = torch.matmul(q.transpose(1, 2), k.permute(0, 2, 3, 1)) / math.sqrt(q.shape[-1])
    n_query, n_key = scores.shape[-2:]
    future = torch.ones(n_query, n_key, dtype=torch.bool, device=scores.device).triu_(n_key - n_query + 1)
    return scores.masked_fill_(future, float("-inf"))


class LayerNorm(nn.Module):
    """LayerNorm with hooks on its scale and normalized output (fused `F.layer_norm` when unhooked).

    After `fold_ln` (see `interp.processing`) `w` and `b` are None: the gain and bias live in the
    weights that read from it, and it only centres and scales.
    """

    def __init__(self, d_model: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.w: nn.Parameter | None = nn.Parameter(torch.ones(d_model))
        self.b: nn.Parameter | None = nn.Parameter(torch.zeros(d_model))
        self.hook_scale = HookPoint()  # [batch, pos, 1]
        self.hook_normalized = HookPoint()  # [batch, pos, d_model]

    def forward(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        if not (self.hook_scale.has_hooks or self.hook_normalized.has_hooks):
            return F.layer_norm(x, x.shape[-1:], self.w, self.b, self.eps)
        centered = x - x.mean(-1, keepdim=True)
        scale = self.hook_scale((centered.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        normalized = self.hook_normalized(centered / scale)  # same arithmetic as layer_norm_scale
        return normalized if self.w is None else normalized * self.w + self.b


class Attention(nn.Module):
    """Causal multi-head self-attention.

    Runs `F.scaled_dot_product_attention` unless `hook_attn_scores` or `hook_pattern` is hooked
    (or cached); only then are scores and pattern materialised, for this layer only.
    """

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.n_heads, self.d_head = config.n_heads, config.d_head
        self.W_QKV = nn.Parameter(torch.empty(config.d_model, 3, config.n_heads, config.d_head))
        self.b_QKV = nn.Parameter(torch.zeros(3, config.n_heads, config.d_head))
        self.W_O = nn.Parameter(torch.empty(config.n_heads, config.d_head, config.d_model))
        self.b_O = nn.Parameter(torch.zeros(config.d_model))
        self.hook_q = HookPoint()  # [batch, pos, n_heads, d_head]
        self.hook_k = HookPoint()  # [batch, pos, n_heads, d_head]
        self.hook_v = HookPoint()  # [batch, pos, n_heads, d_head]
        self.hook_attn_scores = HookPoint()  # [batch, n_heads, query_pos, key_pos], masked entries -inf
        self.hook_pattern = HookPoint()  # [batch, n_heads, query_pos, key_pos]
        self.hook_z = HookPoint()  # [batch, pos, n_heads, d_head]
        self.hook_result = HookPoint()  # [batch, pos, n_heads, d_model], opt-in

    # Views of the fused weights in the circuits layout.
    @property
    def W_Q(self) -> Float[Tensor, "n_heads d_model d_head"]:
        return self.W_QKV[:, 0].transpose(0, 1)

    @property
    def W_K(self) -> Float[Tensor, "n_heads d_model d_head"]:
        return self.W_QKV[:, 1].transpose(0, 1)

    @property
    def W_V(self) -> Float[Tensor, "n_heads d_model d_head"]:
        return self.W_QKV[:, 2].transpose(0, 1)

    @property
    def b_Q(self) -> Float[Tensor, "n_heads d_head"]:
        return self.b_QKV[0]

    @property
    def b_K(self) -> Float[Tensor, "n_heads d_head"]:
        return self.b_QKV[1]

    @property
    def b_V(self) -> Float[Tensor, "n_heads d_head"]:
        return self.b_QKV[2]

    @property
    def needs_pattern(self) -> bool:
        return self.hook_attn_scores.has_hooks or self.hook_pattern.has_hooks

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        qkv = affine(x, self.W_QKV.flatten(1), self.b_QKV.flatten())
        q, k, v = einops.rearrange(qkv, "batch pos (three n_heads d_head) -> three batch pos n_heads d_head",
                                   three=3, n_heads=self.n_heads)
        return self.attend(q, k, v)

    def forward_per_head_inputs(self, q_input: Float[Tensor, "batch pos n_heads d_model"],
                                k_input: Float[Tensor, "batch pos n_heads d_model"],
                                v_input: Float[Tensor, "batch pos n_heads d_model"]) -> Float[Tensor, "batch pos d_model"]:
        """Attention where each head reads its own (already normalised) copy of the residual stream."""
        q, k, v = (einops.einsum(x, W, "batch pos n_heads d_model, n_heads d_model d_head -> batch pos n_heads d_head") + b
                   for x, W, b in ((q_input, self.W_Q, self.b_Q), (k_input, self.W_K, self.b_K),
                                   (v_input, self.W_V, self.b_V)))
        return self.attend(q, k, v)

    def attend(self, q: Float[Tensor, "batch pos n_heads d_head"], k: Float[Tensor, "batch pos n_heads d_head"],
               v: Float[Tensor, "batch pos n_heads d_head"]) -> Float[Tensor, "batch pos d_model"]:
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
        if self.needs_pattern:
            z = self._explicit_attention(q, k, v)
        else:
            z = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                               is_causal=True).transpose(1, 2)
        z = self.hook_z(z)
        if not self.hook_result.has_hooks:
            return affine(z.reshape(*z.shape[:2], -1), self.W_O.flatten(0, 1), self.b_O)
        result = einops.einsum(z, self.W_O, "batch pos n_heads d_head, n_heads d_head d_model -> batch pos n_heads d_model")
        return self.hook_result(result).sum(-2) + self.b_O

    def _explicit_attention(self, q: Float[Tensor, "batch pos n_heads d_head"], k: Float[Tensor, "batch pos n_heads d_head"],
                            v: Float[Tensor, "batch pos n_heads d_head"]) -> Float[Tensor, "batch pos n_heads d_head"]:
        scores = self.hook_attn_scores(causal_attention_scores(q, k))  # [batch, n_heads, query_pos, key_pos]
        pattern = self.hook_pattern(scores.softmax(dim=-1))
        return torch.matmul(pattern, v.transpose(1, 2)).transpose(1, 2)  # [batch, pos, n_heads, d_head]


class MLP(nn.Module):
    def __init__(self, config: Config) -> None:
        super().__init__()
        self.act_fn = config.act_fn
        self.activation = activation_function(config.act_fn)
        self.W_in = nn.Parameter(torch.empty(config.d_model, config.d_mlp))
        self.b_in = nn.Parameter(torch.zeros(config.d_mlp))
        self.W_out = nn.Parameter(torch.empty(config.d_mlp, config.d_model))
        self.b_out = nn.Parameter(torch.zeros(config.d_model))
        self.hook_pre = HookPoint()  # [batch, pos, d_mlp]
        self.hook_post = HookPoint()  # [batch, pos, d_mlp]

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        pre = self.hook_pre(affine(x, self.W_in, self.b_in))
        post = self.hook_post(self.activation(pre))
        return affine(post, self.W_out, self.b_out)


class Block(nn.Module):
    """A pre-LayerNorm residual block: resid_mid = resid_pre + attn(ln1(resid_pre)), then the MLP likewise."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.ln1 = LayerNorm(config.d_model, config.eps)
        self.attn = Attention(config)
        self.ln2 = LayerNorm(config.d_model, config.eps)
        self.mlp = MLP(config)
        self.hook_resid_pre = HookPoint()  # [batch, pos, d_model]
        self.hook_q_input = HookPoint()  # [batch, pos, n_heads, d_model], opt-in
        self.hook_k_input = HookPoint()  # [batch, pos, n_heads, d_model], opt-in
        self.hook_v_input = HookPoint()  # [batch, pos, n_heads, d_model], opt-in
        self.hook_attn_out = HookPoint()  # [batch, pos, d_model]
        self.hook_resid_mid = HookPoint()  # [batch, pos, d_model]
        self.hook_mlp_out = HookPoint()  # [batch, pos, d_model]
        self.hook_resid_post = HookPoint()  # [batch, pos, d_model]

    def forward(self, resid_pre: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        resid_pre = self.hook_resid_pre(resid_pre)
        attn_out = self.hook_attn_out(self._attention(resid_pre))
        resid_mid = self.hook_resid_mid(resid_pre + attn_out)
        mlp_out = self.hook_mlp_out(self.mlp(self.ln2(resid_mid)))
        return self.hook_resid_post(resid_mid + mlp_out)

    def _attention(self, resid_pre: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        split = (self.hook_q_input, self.hook_k_input, self.hook_v_input)
        if not any(hook.has_hooks for hook in split):
            return self.attn(self.ln1(resid_pre))
        # Path-patching mode: each head reads its own copy of the residual stream; ln1 runs per copy.
        # A hooked point gets its own copy, so an in-place edit of the q input reaches neither k nor v (nor resid_pre).
        per_head = einops.repeat(resid_pre, "batch pos d_model -> batch pos n_heads d_model", n_heads=self.n_heads)
        return self.attn.forward_per_head_inputs(
            *(self.ln1(hook(per_head.clone()) if hook.has_hooks else per_head) for hook in split))
