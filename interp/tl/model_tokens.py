"""Tokenisation as TransformerLens does it, for `interp.tl.HookedTransformer` (a mixin of its methods).

TransformerLens's rules: `prepend_bos` defaults to `cfg.default_prepend_bos` (True), padding to
`tokenizer.padding_side` (set by `default_padding_side=`, else the tokenizer's own, else "right"), text is truncated
to n_ctx; `to_str_tokens` maps lists elementwise; `to_string` decodes a `[pos]` tensor to a string and a
`[batch, pos]` one to a list. Unlike TransformerLens, text padded on the right is masked too (logits at real
tokens are the same; the loss then averages real targets only).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from interp import tokens as tokens_module


class TokenizationMixin:
    """TransformerLens's tokenisation methods; mixed into `interp.tl.HookedTransformer` (needs interp's model)."""

    tokenizer: Any
    cfg: Any

    def set_tokenizer(self, tokenizer: Any, default_padding_side: Literal["left", "right"] | None = None) -> None:
        """Use `tokenizer`; `default_padding_side` sets `tokenizer.padding_side`, which every later call follows."""
        if default_padding_side not in ("right", "left", None):
            raise ValueError(f"default_padding_side must be 'right', 'left' or None, got {default_padding_side!r}.")
        self.tokenizer = tokenizer
        if default_padding_side is not None:
            tokenizer.padding_side = default_padding_side
        if getattr(tokenizer, "padding_side", None) is None:
            tokenizer.padding_side = "right"
        # A model built from a HookedTransformerConfig knows its special ids only from its tokenizer.
        known = {name: getattr(tokenizer, name, None) for name in ("bos_token_id", "eos_token_id")}
        missing = {name: value for name, value in known.items()
                   if isinstance(value, int) and getattr(self.core_cfg, name) is None}
        if missing:
            self._replace_config(**missing)
        self.cfg.tokenizer_prepends_bos = len(tokenizer.encode("")) > 0
        self.cfg.tokenizer_name = getattr(tokenizer, "name_or_path", None)
        if getattr(tokenizer, "pad_token", None) is None and getattr(tokenizer, "eos_token", None) is not None:
            tokenizer.pad_token = tokenizer.eos_token

    def _prepend_bos(self, prepend_bos: bool | None) -> bool:
        """TransformerLens's default: `cfg.default_prepend_bos` (True), where the model has a BOS token at all."""
        wanted = self.cfg.default_prepend_bos if prepend_bos is None else prepend_bos
        return bool(wanted) and self.core_cfg.bos_token_id is not None

    def _padding_side(self, padding_side: str | None) -> str:
        return padding_side or getattr(self.tokenizer, "padding_side", None) or "right"

    def _tl_tokenize(self, input: str | list[str], prepend_bos: bool | None, padding_side: str | None,
                     truncate: bool = True) -> tuple[Int[Tensor, "batch pos"], Bool[Tensor, "batch pos"]]:
        """(tokens, real-token mask) of text, TransformerLens's defaults resolved, truncated to n_ctx."""
        side = self._padding_side(padding_side)
        if side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {side!r}.")
        tokens, mask = tokens_module.to_tokens(self.tokenizer, input, self._prepend_bos(prepend_bos),
                                               self.core_cfg.bos_token_id, self.pad_token_id, "right")
        if truncate and tokens.shape[1] > self.cfg.n_ctx:  # each text's first n_ctx tokens, whichever side pads
            tokens, mask = tokens[:, :self.cfg.n_ctx], mask[:, :self.cfg.n_ctx]
        if side == "left":  # move each row's trailing padding to its front
            n_pads = (mask == 0).sum(dim=1).tolist()
            tokens = torch.stack([row.roll(n) for row, n in zip(tokens, n_pads)])
            mask = torch.stack([row.roll(n) for row, n in zip(mask, n_pads)])
        return tokens.to(self.W_E.device), mask.bool().to(self.W_E.device)

    def tokens_and_mask(self, input: Any, attention_mask: Any = None, padding_side: str | None = None,
                        prepend_bos: bool | None = None) -> tuple[Int[Tensor, "batch pos"], Bool[Tensor, "batch pos"] | None]:
        """Token ids and their padding mask (None: no padding), for every forward, cache and generation of this
        model: text is tokenised as `to_tokens` does (truncated to n_ctx) and masked; token ids without a mask,
        when padding is on the left (`padding_side`, else `tokenizer.padding_side`), are masked by their leading
        pad tokens (TransformerLens's `utils.get_attention_mask`)."""
        if tokens_module.is_text(input):
            if attention_mask is not None:
                raise ValueError("attention_mask goes with token ids; text is padded and masked for you.")
            tokens, mask = self._tl_tokenize(input, prepend_bos, padding_side)
            return tokens, None if bool(mask.all()) else mask
        tokens = self._checked_tokens(input)
        if attention_mask is None and self.tokenizer is not None and self._padding_side(padding_side) == "left":
            from interp.tl.tokenization import get_attention_mask
            attention_mask = get_attention_mask(self.tokenizer, tokens, self._prepend_bos(prepend_bos),
                                                padding_side="left")
        if attention_mask is None:
            return tokens, None
        mask = tokens_module.check_attention_mask(attention_mask, tuple(tokens.shape), tokens.device)
        return tokens, None if bool(mask.all()) else mask

    def to_tokens(self, input: str | list[str], prepend_bos: bool | None = None,
                  padding_side: Literal["left", "right"] | None = None, move_to_device: bool = True,
                  truncate: bool = True) -> Int[Tensor, "batch pos"]:
        """Text to `[batch, pos]` ids (a list padded on `padding_side`; see `tokenize` for its mask too)."""
        return self._tl_tokenize(input, prepend_bos, padding_side, truncate)[0]

    def tokenize(self, input: str | list[str], prepend_bos: bool | None = None,
                 padding_side: Literal["left", "right"] | None = None
                 ) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
        """interp's `(tokens, attention_mask)`, with TransformerLens's defaults for BOS and padding side."""
        tokens, mask = self._tl_tokenize(input, prepend_bos, padding_side, truncate=False)
        return self._checked_tokens(tokens), mask.long()

    def to_string(self, tokens: Any) -> str | list[str]:
        """`[pos]` ids (or a list of ints) to a string, `[batch, pos]` to a list of strings."""
        if not isinstance(tokens, Tensor):
            tokens = torch.tensor(np.asarray(tokens))
        if tokens.ndim == 2:
            return self.tokenizer.batch_decode(tokens, clean_up_tokenization_spaces=False)
        if tokens.ndim <= 1:
            return self.tokenizer.decode(tokens, clean_up_tokenization_spaces=False)
        raise ValueError(f"to_string takes [pos] or [batch, pos] ids, got shape {tuple(tokens.shape)}.")

    def to_str_tokens(self, input: Any, prepend_bos: bool | None = None,
                      padding_side: Literal["left", "right"] | None = None) -> list[str] | list[list[str]]:
        """Each token as a string: of a text, of `[pos]` / `[1, pos]` ids; a list maps elementwise."""
        if isinstance(input, list):
            return [self.to_str_tokens(item, prepend_bos, padding_side) for item in input]
        if isinstance(input, str):
            ids = self.to_tokens(input, prepend_bos, padding_side)[0]
        elif isinstance(input, (Tensor, np.ndarray)):
            ids = torch.as_tensor(input).squeeze()
            ids = ids[None] if ids.ndim == 0 else ids
            if ids.ndim != 1:
                raise ValueError(f"to_str_tokens takes one sequence, got shape {tuple(input.shape)}; "
                                 "use [model.to_str_tokens(row) for row in tokens].")
        else:
            raise ValueError(f"to_str_tokens takes text, a list, or a tensor of ids, got {type(input).__name__}.")
        return self.tokenizer.batch_decode([[int(t)] for t in ids.tolist()], clean_up_tokenization_spaces=False)

    def to_single_token(self, string: str) -> int:
        """The id of a string that is exactly one token (ValueError otherwise)."""
        token = self.to_tokens(string, prepend_bos=False).squeeze()
        if token.ndim != 0:
            raise ValueError(f"{string!r} is {token.numel()} tokens, not one: {self.to_str_tokens(token)}.")
        return int(token.item())

    def to_single_str_token(self, int_token: int) -> str:
        if not isinstance(int_token, int):
            raise TypeError(f"to_single_str_token takes an int id, got {type(int_token).__name__}.")
        return self.to_str_tokens(torch.tensor([int_token]))[0]

    def get_token_position(self, single_token: str | int, input: str | Int[Tensor, "pos"] | Int[Tensor, "1 pos"],
                           mode: Literal["first", "last"] = "first", prepend_bos: bool | None = None,
                           padding_side: Literal["left", "right"] | None = None) -> int:
        """Position of `single_token` (a one-token string or an id) in a sequence: its first or last occurrence."""
        tokens = self.to_tokens(input, prepend_bos, padding_side) if isinstance(input, str) else input
        if tokens.ndim == 2:
            if tokens.shape[0] != 1:
                raise ValueError(f"get_token_position takes one sequence, got a batch of shape {tuple(tokens.shape)}.")
            tokens = tokens[0]
        if isinstance(single_token, str):
            single_token = self.to_single_token(single_token)
        elif isinstance(single_token, Tensor):
            single_token = int(single_token.item())
        found = (tokens == single_token).nonzero().flatten()
        if len(found) == 0:
            raise ValueError(f"Token {single_token} does not occur in the sequence.")
        if mode not in ("first", "last"):
            raise ValueError(f"mode must be 'first' or 'last', got {mode!r}.")
        return int(found[0] if mode == "first" else found[-1])

    def tokens_to_residual_directions(self, tokens: str | int | Int[Tensor, "..."]
                                      ) -> Float[Tensor, "... d_model"]:
        """The unembedding column(s) W_U[:, token]: the residual direction whose dot product is that logit
        (meaningful after fold_ln; apply the final LN scale to compare with a residual stream)."""
        if isinstance(tokens, Tensor) and tokens.numel() > 1:
            return self.W_U[:, tokens].movedim(0, -1)
        if isinstance(tokens, str):
            tokens = self.to_single_token(tokens)
        token = int(tokens.item()) if isinstance(tokens, Tensor) else int(tokens)
        return self.W_U[:, token]
