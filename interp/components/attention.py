"""Causal self-attention: multi-head or grouped-query, learned or rotary positions, full or sliding-window.

Weights use the circuits names (Elhage et al. 2021). Q, K and V are stored fused, `W_QKV`
`[d_model, n_heads + 2 n_kv_heads, d_head]` (query heads, then key heads, then value heads), so the forward
is one matrix product; `W_Q` `[n_heads, d_model, d_head]` and `W_K_kv`/`W_V_kv` `[n_kv_heads, d_model, d_head]`
are views of it (edits write through). Grouped-query attention (Ainslie et al. 2023) shares kv head
`h // group` among query heads h (group = n_heads // n_kv_heads, as `transformers`' repeat_kv);
`W_K`/`W_V` give the shared weights repeated per query head, a copy when group > 1.

The forward runs `F.scaled_dot_product_attention` unless `hook_attn_scores` or `hook_pattern` is hooked
(or cached); only then are scores and pattern materialised, for this layer only.
"""

from __future__ import annotations

import math

import einops
import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from interp.components.context import Context
from interp.components.functional import affine, attention_allowed, softmax
from interp.components.positions import Rotary
from interp.hooks import HookPoint


def per_query_head(kv: Float[Tensor, "batch pos n_kv_heads d_head"], n_heads: int
                   ) -> Float[Tensor, "batch pos n_kv_heads group d_head"]:
    """A `hook_k`/`hook_v` activation of a grouped-query model as seen by each query head, without a copy: an
    expanded view where query head h reads `[..., h // group, h % group, :]`. `.flatten(2, 3)` gives
    `[batch, pos, n_heads, d_head]` (that copies)."""
    group = n_heads // kv.shape[-2]
    return kv.unsqueeze(-2).expand(*kv.shape[:-1], group, kv.shape[-1])


class Attention(nn.Module):
    """Causal attention with learned (absolute) positions, added to the residual stream before block 0."""

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, d_head: int, window: int | None = None,
                 layer: int = 0) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.d_head, self.window = n_heads, n_kv_heads, d_head, window
        self.layer = layer  # which entry of a KVCache is this layer's
        self.group = n_heads // n_kv_heads
        self.W_QKV = nn.Parameter(torch.empty(d_model, n_heads + 2 * n_kv_heads, d_head))
        self.b_QKV = nn.Parameter(torch.zeros(n_heads + 2 * n_kv_heads, d_head))
        self.W_O = nn.Parameter(torch.empty(n_heads, d_head, d_model))
        self.b_O = nn.Parameter(torch.zeros(d_model))
        self.hook_q = HookPoint("batch pos n_heads d_head")
        self.hook_k = HookPoint("batch pos n_kv_heads d_head")
        self.hook_v = HookPoint("batch pos n_kv_heads d_head")
        self._position_hooks()
        self.hook_attn_scores = HookPoint("batch n_heads query_pos key_pos")  # masked entries -inf
        self.hook_pattern = HookPoint("batch n_heads query_pos key_pos")
        self.hook_z = HookPoint("batch pos n_heads d_head")
        self.hook_result = HookPoint("batch pos n_heads d_model", opt_in=True)  # per-head outputs

    def _position_hooks(self) -> None:
        """Hook points between hook_v and hook_attn_scores (none here; rotary adds hook_rot_q/k)."""

    # ----- views of the fused weights, in the circuits layout -----
    @property
    def W_Q(self) -> Float[Tensor, "n_heads d_model d_head"]:
        return self.W_QKV[:, : self.n_heads].transpose(0, 1)

    @property
    def W_K_kv(self) -> Float[Tensor, "n_kv_heads d_model d_head"]:
        return self.W_QKV[:, self.n_heads: self.n_heads + self.n_kv_heads].transpose(0, 1)

    @property
    def W_V_kv(self) -> Float[Tensor, "n_kv_heads d_model d_head"]:
        return self.W_QKV[:, self.n_heads + self.n_kv_heads:].transpose(0, 1)

    @property
    def b_Q(self) -> Float[Tensor, "n_heads d_head"]:
        return self.b_QKV[: self.n_heads]

    @property
    def b_K_kv(self) -> Float[Tensor, "n_kv_heads d_head"]:
        return self.b_QKV[self.n_heads: self.n_heads + self.n_kv_heads]

    @property
    def b_V_kv(self) -> Float[Tensor, "n_kv_heads d_head"]:
        return self.b_QKV[self.n_heads + self.n_kv_heads:]

    def _per_query_head(self, kv_weight: Tensor) -> Tensor:
        return kv_weight if self.group == 1 else kv_weight.repeat_interleave(self.group, dim=0)

    @property
    def W_K(self) -> Float[Tensor, "n_heads d_model d_head"]:
        """Key weights per query head: a view of W_QKV for multi-head attention, a copy under GQA (edit W_K_kv)."""
        return self._per_query_head(self.W_K_kv)

    @property
    def W_V(self) -> Float[Tensor, "n_heads d_model d_head"]:
        """Value weights per query head: a view for multi-head attention, a copy under GQA (edit W_V_kv)."""
        return self._per_query_head(self.W_V_kv)

    @property
    def b_K(self) -> Float[Tensor, "n_heads d_head"]:
        return self._per_query_head(self.b_K_kv)

    @property
    def b_V(self) -> Float[Tensor, "n_heads d_head"]:
        return self._per_query_head(self.b_V_kv)

    @property
    def needs_pattern(self) -> bool:
        return self.hook_attn_scores.has_hooks or self.hook_pattern.has_hooks

    # ----- forward -----
    def forward(self, x: Float[Tensor, "batch pos d_model"], context: Context) -> Float[Tensor, "batch pos d_model"]:
        qkv = affine(x, self.W_QKV.flatten(1), self.b_QKV.flatten())
        qkv = qkv.view(*x.shape[:2], -1, self.d_head)  # [batch, pos, n_heads + 2 n_kv_heads, d_head]
        q, k, v = qkv.split([self.n_heads, self.n_kv_heads, self.n_kv_heads], dim=2)
        return self.attend(q, *self._kv_per_input(k, v), context)

    def _kv_per_input(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values as the hooks see them: one per kv head (see `Ungrouped` for one per query head)."""
        return k, v

    @property
    def n_kv_inputs(self) -> int:
        """How many key (and value) heads read their own input copy in `forward_per_head_inputs`."""
        return self.n_kv_heads

    def forward_per_head_inputs(self, q_input: Float[Tensor, "batch pos n_heads d_model"],
                                k_input: Float[Tensor, "batch pos n_kv_inputs d_model"],
                                v_input: Float[Tensor, "batch pos n_kv_inputs d_model"],
                                context: Context) -> Float[Tensor, "batch pos d_model"]:
        """Attention where each head reads its own (already normalised) copy of the residual stream."""
        q, k, v = (einops.einsum(x, W, "batch pos heads d_model, heads d_model d_head -> batch pos heads d_head") + b
                   for x, (W, b) in zip((q_input, k_input, v_input), ((self.W_Q, self.b_Q), *self._kv_weights())))
        return self.attend(q, k, v, context)

    def _kv_weights(self) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        return (self.W_K_kv, self.b_K_kv), (self.W_V_kv, self.b_V_kv)

    def attend(self, q: Float[Tensor, "batch pos n_heads d_head"], k: Float[Tensor, "batch pos n_kv_heads d_head"],
               v: Float[Tensor, "batch pos n_kv_heads d_head"], context: Context) -> Float[Tensor, "batch pos d_model"]:
        """Attention of this forward's queries to its keys (and, in cached generation, the cached ones)."""
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
        q, k = self.position_qk(q, k, context.position_ids)
        k, v = context.keys_values(self.layer, k, v)
        z = self.hook_z(self._explicit_attention(q, k, v, context) if self.needs_pattern
                        else self._fused_attention(q, k, v, context))
        if not self.hook_result.has_hooks:
            return affine(z.reshape(*z.shape[:2], -1), self.W_O.flatten(0, 1), self.b_O)
        result = einops.einsum(z, self.W_O, "batch pos n_heads d_head, n_heads d_head d_model -> batch pos n_heads d_model")
        return self.hook_result(result).sum(-2) + self.b_O

    def position_qk(self, q: Tensor, k: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        """q and k as the scores read them: unchanged here (positions were added to the residual stream)."""
        return q, k

    def _fused_attention(self, q: Tensor, k: Tensor, v: Tensor, context: Context
                         ) -> Float[Tensor, "batch pos n_heads d_head"]:
        mask = context.sdpa_mask(q.shape[1], k.shape[1], self.window, q.device)
        z = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           enable_gqa=k.shape[2] != q.shape[2], **mask)
        return z.transpose(1, 2)

    def scores(self, q: Float[Tensor, "batch query_pos n_heads d_head"], k: Float[Tensor, "batch key_pos n_kv_heads d_head"],
               key_mask: Bool[Tensor, "batch key_pos"] | None = None, allowed: Tensor | None = None
               ) -> Float[Tensor, "batch n_heads query_pos key_pos"]:
        """q·k / sqrt(d_head) per query head (kv head h // group): `hook_attn_scores`. Entries a query may not
        attend to are -inf: future keys, keys beyond the window, and padding (`key_mask` False; a padded
        query keeps only its own key). `allowed` is that mask when the caller has made it already."""
        batch, n_query, n_kv = q.shape[0], q.shape[1], k.shape[2]  # n_kv: n_heads when ungrouped (see Ungrouped)
        grouped = q.reshape(batch, n_query, n_kv, self.n_heads // n_kv, self.d_head)  # query head = kv * group + g
        scores = torch.matmul(grouped.permute(0, 2, 3, 1, 4), k.permute(0, 2, 3, 1)[:, :, None])
        scores = scores.reshape(batch, self.n_heads, n_query, k.shape[1]) / math.sqrt(self.d_head)
        if allowed is None:
            allowed = attention_allowed(n_query, k.shape[1], self.window, key_mask, q.device)
        return scores.masked_fill_(~allowed, float("-inf"))

    def _explicit_attention(self, q: Tensor, k: Tensor, v: Tensor, context: Context
                            ) -> Float[Tensor, "batch pos n_heads d_head"]:
        allowed = context.allowed(q.shape[1], k.shape[1], self.window, q.device)
        scores = self.hook_attn_scores(self.scores(q, k, allowed=allowed))
        pattern = self.hook_pattern(softmax(scores))
        batch, n_query, n_key, n_kv = q.shape[0], q.shape[1], k.shape[1], v.shape[2]
        grouped = pattern.view(batch, n_kv, self.n_heads // n_kv, n_query, n_key)
        z = torch.matmul(grouped, v.permute(0, 2, 1, 3)[:, :, None])  # [batch, n_kv_heads, group, query_pos, d_head]
        return z.reshape(batch, self.n_heads, n_query, self.d_head).transpose(1, 2)


class RotaryAttention(Attention):
    """Causal attention with rotary positions: q and k are rotated (`hook_rot_q`, `hook_rot_k`) before the
    scores, so patterns are computed from the rotated q/k; nothing is added to the residual stream."""

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, d_head: int, rotary: Rotary,
                 window: int | None = None, layer: int = 0) -> None:
        self.rotary = rotary
        super().__init__(d_model, n_heads, n_kv_heads, d_head, window, layer)

    def _position_hooks(self) -> None:
        self.hook_rot_q = HookPoint("batch pos n_heads d_head")
        self.hook_rot_k = HookPoint("batch pos n_kv_heads d_head")

    def position_qk(self, q: Tensor, k: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        return self.hook_rot_q(self.rotary(q, positions)), self.hook_rot_k(self.rotary(k, positions))

    def extra_repr(self) -> str:
        return f"rotary_dim={self.rotary.rotary_dim}, base={self.rotary.base}, window={self.window}"


class Ungrouped:
    """Mixin for a grouped-query attention class: each query head gets its own copy of its shared key and value
    (`hook_k`/`hook_v`/`hook_rot_k` and the block's `hook_k_input`/`hook_v_input` then have n_heads heads), so
    an edit of one head's key or value reaches that query head only (TransformerLens's
    ungroup_grouped_query_attention). The numbers are the grouped model's; the copies cost memory.
    Switch a module with `set_ungrouped(attention, True)`."""

    n_heads: int
    group: int

    @property
    def n_kv_inputs(self) -> int:
        return self.n_heads

    def _kv_per_input(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        return k.repeat_interleave(self.group, dim=2), v.repeat_interleave(self.group, dim=2)  # head h: kv h // group

    def _kv_weights(self) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        return (self.W_K, self.b_K), (self.W_V, self.b_V)


class UngroupedAttention(Ungrouped, Attention):
    """`Attention` with per-query-head keys and values (see `Ungrouped`)."""


class UngroupedRotaryAttention(Ungrouped, RotaryAttention):
    """`RotaryAttention` with per-query-head keys and values (see `Ungrouped`)."""


_KV_POINTS = ("hook_k", "hook_v", "hook_rot_k")
_UNGROUPED = {Attention: UngroupedAttention, RotaryAttention: UngroupedRotaryAttention}
_GROUPED = {ungrouped: grouped for grouped, ungrouped in _UNGROUPED.items()}


def set_ungrouped(attention: Attention, ungroup: bool) -> None:
    """Switch the module (same parameters, same hook points) to per-query-head keys and values (`Ungrouped`), or
    back to one per kv head; the declared shapes of its key and value points follow."""
    table = _UNGROUPED if ungroup else _GROUPED
    if type(attention) not in table:
        if isinstance(attention, Ungrouped) == ungroup:
            return  # already so
        raise TypeError(f"set_ungrouped knows {sorted(c.__name__ for c in _UNGROUPED)}, not {type(attention).__name__}.")
    attention.__class__ = table[type(attention)]
    heads = "n_heads" if ungroup else "n_kv_heads"
    for name in _KV_POINTS:
        if hasattr(attention, name):
            getattr(attention, name).shape = f"batch pos {heads} d_head"
