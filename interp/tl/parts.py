"""`model.embed`, `model.pos_embed`, `model.unembed`: TransformerLens's embedding modules as views of interp's weights.

interp keeps W_E, W_pos, W_U and b_U on the model itself (one copy, one state-dict name each); these small callables
give TransformerLens's `model.embed(tokens)`, `model.embed.W_E`, `model.unembed(residual)` on those same tensors.
They hold no parameters, so saving, `.to()` and processing see each weight once; `unembed` is a module
because it holds TransformerLens's `unembed.hook_in` / `unembed.hook_out` hook points.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from interp.components.context import positions_from_mask
from interp.components.functional import affine
from interp.hooks import HookPoint


class Embed:
    """`embed(tokens)` -> W_E[tokens] `[batch, pos, d_model]` (no hook: the model's `hook_embed` follows it)."""

    def __init__(self, model: Any) -> None:
        self._model = model

    @property
    def W_E(self) -> Float[Tensor, "d_vocab d_model"]:
        return self._model.W_E

    def __call__(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_model"]:
        return F.embedding(tokens, self._model.W_E)


class PosEmbed:
    """`pos_embed(tokens, past_kv_pos_offset=0, attention_mask=None)` -> the learned position vectors
    `[batch, pos, d_model]` of positions offset.. (with a mask: the count of real tokens before each, so left
    padding does not shift them; padded positions get the zero vector, as TransformerLens)."""

    def __init__(self, model: Any) -> None:
        self._model = model

    @property
    def W_pos(self) -> Float[Tensor, "n_ctx d_model"]:
        return self._model.W_pos

    def __call__(self, tokens: Int[Tensor, "batch pos"], past_kv_pos_offset: int = 0,
                 attention_mask: Int[Tensor, "batch offset_pos"] | None = None) -> Float[Tensor, "batch pos d_model"]:
        batch, n_pos = tokens.shape
        if attention_mask is None:
            positions = torch.arange(past_kv_pos_offset, past_kv_pos_offset + n_pos, device=tokens.device)
            positions = positions.expand(batch, n_pos)
        else:
            mask = attention_mask.bool()
            positions = positions_from_mask(mask, mask.shape[1], batch, tokens.device)[:, -n_pos:]
            return F.embedding(positions, self._model.W_pos) * mask[:, -n_pos:, None]
        return F.embedding(positions, self._model.W_pos)


class Unembed(nn.Module):
    """`unembed(residual)` -> residual @ W_U + b_U `[batch, pos, d_vocab]` (the input is ln_final's output), with
    TransformerLens 3.9's `unembed.hook_in` (that input) and `unembed.hook_out` (the logits). A module without
    parameters: the model holds W_U and b_U, and the model's forward computes its logits here."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        object.__setattr__(self, "_model", model)  # a plain reference: not a submodule (no cycle in the module tree)
        self.hook_in = HookPoint("batch pos d_model")
        self.hook_out = HookPoint("batch pos d_vocab")

    @property
    def W_U(self) -> Float[Tensor, "d_model d_vocab"]:
        return self._model.W_U

    @property
    def b_U(self) -> Float[Tensor, "d_vocab"]:
        return self._model.b_U

    def forward(self, residual: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_vocab"]:
        return self.hook_out(affine(self.hook_in(residual), self._model.W_U, self._model.b_U))
