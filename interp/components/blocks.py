"""Residual blocks: sequential pre-norm (GPT-2, Llama, ...) and parallel attention + MLP (GPT-NeoX, GPT-J).

A block is built from constructors of its parts (`make_norm`, `make_attention`, `make_mlp`), so that it
creates its hook points and its parts in forward order (the order of the hook table).
"""

from __future__ import annotations

from collections.abc import Callable

import einops
from jaxtyping import Float
from torch import Tensor, nn

from interp.components.attention import Attention
from interp.components.attention import set_ungrouped as set_attention_ungrouped
from interp.components.context import Context
from interp.components.norms import Norm
from interp.hooks import HookPoint


class Block(nn.Module):
    """Sequential pre-norm block: resid_mid = resid_pre + attn(ln1(resid_pre)); resid_post = resid_mid + mlp(ln2(resid_mid))."""

    def __init__(self, make_norm: Callable[[], Norm], make_attention: Callable[[], Attention],
                 make_mlp: Callable[[], nn.Module]) -> None:
        super().__init__()
        self.hook_resid_pre = HookPoint("batch pos d_model")
        # Opt-in per-head copies of resid_pre (path patching): while one is hooked, ln1 runs per copy and
        # ln1.hook_scale / ln1.hook_normalized gain a heads axis before their last one.
        self.hook_q_input = HookPoint("batch pos n_heads d_model", opt_in=True)
        self.hook_k_input = HookPoint("batch pos n_kv_heads d_model", opt_in=True)
        self.hook_v_input = HookPoint("batch pos n_kv_heads d_model", opt_in=True)
        self.ln1 = make_norm()
        self.attn = make_attention()
        self.hook_attn_out = HookPoint("batch pos d_model")
        self._middle()
        # Opt-in: the MLP's own copy of its input (resid_mid; resid_pre in parallel blocks), so an edit reaches the
        # MLP only, not the residual stream (edge-level circuits; TransformerLens's use_hook_mlp_in).
        self.hook_mlp_in = HookPoint("batch pos d_model", opt_in=True)
        self.ln2 = make_norm()
        self.mlp = make_mlp()
        self.hook_mlp_out = HookPoint("batch pos d_model")
        self.hook_resid_post = HookPoint("batch pos d_model")

    def _middle(self) -> None:
        self.hook_resid_mid = HookPoint("batch pos d_model")

    def forward(self, resid_pre: Float[Tensor, "batch pos d_model"], context: Context | None = None
                ) -> Float[Tensor, "batch pos d_model"]:
        """`context` None: positions 0.. and no padding (a block called on its own, `model.blocks[l](resid)`)."""
        context = Context.unpadded(resid_pre) if context is None else context
        resid_pre = self.hook_resid_pre(resid_pre)
        attn_out = self.hook_attn_out(self._attention(resid_pre, context))
        resid_mid = self.hook_resid_mid(resid_pre + attn_out)
        mlp_out = self.hook_mlp_out(self.mlp(self.ln2(self._mlp_input(resid_mid))))
        return self.hook_resid_post(resid_mid + mlp_out)

    def _mlp_input(self, resid: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        return self.hook_mlp_in(resid.clone()) if self.hook_mlp_in.has_hooks else resid

    def _attention(self, resid_pre: Float[Tensor, "batch pos d_model"], context: Context
                   ) -> Float[Tensor, "batch pos d_model"]:
        split = (self.hook_q_input, self.hook_k_input, self.hook_v_input)
        if not any(hook.has_hooks for hook in split):
            return self.attn(self.ln1(resid_pre), context)
        # Path-patching mode: each head reads its own copy of the residual stream; ln1 runs per copy.
        # A hooked point gets its own copy, so an in-place edit of the q input reaches neither k nor v (nor resid_pre).
        copies = []
        for hook, n_copies in zip(split, (self.attn.n_heads, self.attn.n_kv_inputs, self.attn.n_kv_inputs)):
            per_head = einops.repeat(resid_pre, "batch pos d_model -> batch pos heads d_model", heads=n_copies)
            copies.append(self.ln1(hook(per_head.clone()) if hook.has_hooks else per_head))
        return self.attn.forward_per_head_inputs(*copies, context)


def set_ungrouped(block: Block, ungroup: bool) -> None:
    """Per-query-head keys and values in this block's attention, and key/value inputs (see `attention.Ungrouped`)."""
    set_attention_ungrouped(block.attn, ungroup)
    heads = "n_heads" if ungroup else "n_kv_heads"
    block.hook_k_input.shape = block.hook_v_input.shape = f"batch pos {heads} d_model"


class ParallelBlock(Block):
    """Attention and MLP both read resid_pre: resid_post = resid_pre + (attn(ln1(resid_pre)) + mlp(ln2(resid_pre))).
    There is no resid_mid. (The sum's order is `transformers`' GPT-NeoX's, so rounding matches too.)"""

    def _middle(self) -> None:
        pass

    def forward(self, resid_pre: Float[Tensor, "batch pos d_model"], context: Context | None = None
                ) -> Float[Tensor, "batch pos d_model"]:
        context = Context.unpadded(resid_pre) if context is None else context
        resid_pre = self.hook_resid_pre(resid_pre)
        attn_out = self.hook_attn_out(self._attention(resid_pre, context))
        mlp_out = self.hook_mlp_out(self.mlp(self.ln2(self._mlp_input(resid_pre))))
        return self.hook_resid_post(resid_pre + (mlp_out + attn_out))
