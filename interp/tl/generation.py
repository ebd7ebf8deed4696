"""TransformerLens's `generate`, on interp's KV cache and padding masks.

Its defaults: `do_sample=True` at temperature 1 (pass `do_sample=False` for greedy), `stop_at_eos=True` with the
tokenizer's EOS id, `return_type="input"` (text in, text out: the prompt and continuation decoded with special
tokens skipped, one string for one prompt; ids in, ids out). A list of prompts is left-padded and masked, so each
row continues as its prompt alone would. Sampling is `utils.sample_logits` (top_k, top_p, freq_penalty) and uses
torch's global random state, as TransformerLens: `torch.manual_seed` makes it repeatable.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from interp.generation import continue_sequences
from interp.tokens import is_text


def generate(model: Any, input: Any, max_new_tokens: int, stop_at_eos: bool, eos_token_id: int | list[int] | None,
             do_sample: bool, top_k: int | None, top_p: float | None, temperature: float, freq_penalty: float,
             use_past_kv_cache: bool, prepend_bos: bool | None, padding_side: str | None, return_type: str | None,
             verbose: bool) -> Any:
    """`interp.tl.HookedTransformer.generate` (see the module docstring)."""
    from interp.tl.sampling import sample_logits
    if return_type not in ("input", "str", "tokens"):
        raise ValueError(f"return_type must be 'input', 'str' or 'tokens' (interp.tl has no 'embeds'), got {return_type!r}.")
    as_text = is_text(input)
    if return_type == "input":
        return_type = "str" if as_text else "tokens"
    if as_text:
        side = "left" if isinstance(input, list) and len(input) > 1 else padding_side
        tokens, mask = model._tl_tokenize(input, prepend_bos, side)
    else:
        tokens = model._checked_tokens(input)
        mask = model.tokens_and_mask(tokens, None, padding_side, prepend_bos)[1]
        mask = torch.ones_like(tokens, dtype=torch.bool) if mask is None else mask.bool()
    if not bool(mask[:, -1].all()):
        raise ValueError("generate appends tokens at the end of each row, so a padded batch must be left-padded: "
                         "pass padding_side='left' (a list of prompts is left-padded for you).")
    stop_ids = _stop_ids(model, stop_at_eos, eos_token_id)
    pad_id = _padding_id(model, stop_ids, eos_token_id)
    if tokens.shape[1] + max_new_tokens > model.cfg.n_ctx:
        raise ValueError(f"{tokens.shape[1]} tokens + max_new_tokens={max_new_tokens} exceed n_ctx={model.cfg.n_ctx}.")

    def choose(last_logits: Tensor, tokens_so_far: Tensor) -> Tensor:
        if not do_sample:
            return last_logits.argmax(-1)
        return sample_logits(last_logits, top_k=top_k, top_p=top_p, temperature=temperature,
                             freq_penalty=freq_penalty, tokens=tokens_so_far)

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            tokens, mask = continue_sequences(model, tokens, mask, max_new_tokens, choose, stop_ids, pad_id,
                                              use_past_kv_cache, progress=verbose)
    finally:
        model.train(was_training)
    if return_type == "tokens":
        return tokens
    texts = [model.tokenizer.decode(row[real], skip_special_tokens=True) for row, real in zip(tokens, mask)]
    return texts[0] if len(texts) == 1 else texts


def _padding_id(model: Any, stop_ids: list[int], eos_token_id: int | list[int] | None) -> int:
    """What fills a finished row, as TransformerLens: the EOS id given, or with a list of ids the tokenizer's EOS
    (the list's first id when there is none)."""
    if not stop_ids:
        return 0
    tokenizer_eos = getattr(model.tokenizer, "eos_token_id", None)
    if eos_token_id is None or isinstance(eos_token_id, int) or tokenizer_eos is None:
        return stop_ids[0]
    return tokenizer_eos


def _stop_ids(model: Any, stop_at_eos: bool, eos_token_id: int | list[int] | None) -> list[int]:
    """The ids that end a row (empty: none), the first of them also filling finished rows."""
    if not stop_at_eos:
        return []
    if eos_token_id is None:
        eos_token_id = getattr(model.tokenizer, "eos_token_id", None)
        if eos_token_id is None:
            eos_token_id = model.core_cfg.eos_token_id
        if eos_token_id is None:
            raise ValueError("stop_at_eos=True needs an EOS id: pass eos_token_id=, or stop_at_eos=False.")
    return [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
