"""Generation: greedy or sampled continuation with a key/value cache, for `HookedTransformer.generate`
(documented there). A function of the model rather than a method body, so the model module stays the model."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import tqdm
from jaxtyping import Bool, Float, Int
from torch import Tensor

from interp.components.context import KVCache
from interp.tokens import is_text


def generate(model: Any, input: Any, max_new_tokens: int, temperature: float, top_k: int | None, seed: int | None,
             stop_at_eos: bool, prepend_bos: bool | None, attention_mask: Tensor | None,
             use_past_kv_cache: bool) -> str | list[str] | Int[Tensor, "batch pos"]:
    """`model.generate(...)`: see `interp.model.HookedTransformer.generate`."""
    as_text = is_text(input)
    tokens, mask = model.tokens_and_mask(input, attention_mask, "left" if as_text else None, prepend_bos)
    mask = torch.ones_like(tokens, dtype=torch.bool) if mask is None else mask
    if not bool(mask[:, -1].all()):
        raise ValueError("generate appends new tokens at the end of each row, so a padded batch must be "
                         "left-padded (every row's last token real): use model.tokenize(texts, "
                         "padding_side='left'), or pass the texts themselves.")
    n_added = 1 if as_text and model._prepend_bos(prepend_bos) else 0  # the BOS to_tokens put before the text
    if max_new_tokens < 0 or temperature < 0:
        raise ValueError("max_new_tokens and temperature must be >= 0.")
    if tokens.shape[1] + max_new_tokens > model.cfg.n_ctx:
        raise ValueError(f"{tokens.shape[1]} tokens + max_new_tokens={max_new_tokens} exceeds n_ctx={model.cfg.n_ctx}; "
                         "generate fewer tokens or shorten the prompt.")
    eos = model.cfg.eos_token_id
    if stop_at_eos and eos is None:
        raise ValueError("stop_at_eos=True but the model's config has no eos_token_id; load the model with a "
                         "config that sets it, or let max_new_tokens end the generation.")
    n_prompt_tokens = tokens.shape[1]
    generator = torch.Generator(device=tokens.device).manual_seed(seed) if seed is not None else None
    eos_ids = torch.tensor(model.cfg.eos_token_ids, dtype=torch.long, device=tokens.device)
    tokens, mask = continue_sequences(
        model, tokens, mask, max_new_tokens, lambda logits, _: sample_next(logits.float(), temperature, top_k, generator),
        model.cfg.eos_token_ids if stop_at_eos else (), eos, use_past_kv_cache)  # any of the config's end ids
    if not as_text:
        return tokens
    rows = [row[real][n_added:] for row, real in zip(tokens, mask)]
    if stop_at_eos:  # text ends at a row's first EOS (its later ones only kept the batch rectangular)
        n_prompt = [len(row) - (tokens.shape[1] - n_prompt_tokens) for row in rows]
        rows = [row[:start + _through_first(row[start:], eos_ids)] for row, start in zip(rows, n_prompt)]
    texts = [model.to_string(row) for row in rows]
    return texts[0] if isinstance(input, str) else texts


def continue_sequences(model: Any, tokens: Int[Tensor, "batch pos"], mask: Bool[Tensor, "batch pos"],
                       max_new_tokens: int, choose: Callable[[Tensor, Tensor], Tensor], stop_ids: Sequence[int],
                       fill_id: int | None, use_past_kv_cache: bool, progress: bool = False
                       ) -> tuple[Int[Tensor, "batch pos_plus_new"], Bool[Tensor, "batch pos_plus_new"]]:
    """The generation loop: append `choose(last_logits [batch, d_vocab], tokens so far)` to every (left-padded)
    row, up to `max_new_tokens` times. A row that emits one of `stop_ids` is finished and keeps getting `fill_id`;
    the loop ends when every row is. With a `KVCache` each step after the first runs only the new tokens."""
    finished = torch.zeros(tokens.shape[0], dtype=torch.bool, device=tokens.device)
    stops = torch.tensor(list(stop_ids), dtype=torch.long, device=tokens.device)
    cache = KVCache() if use_past_kv_cache else None
    step_tokens, step_mask = tokens, mask
    for _ in tqdm.tqdm(range(max_new_tokens), disable=not progress):
        inputs = (step_tokens, step_mask) if cache is not None else (tokens, mask)
        logits = model(inputs[0], attention_mask=inputs[1], past_kv_cache=cache)[:, -1, :]
        next_token = choose(logits, tokens).to(tokens.device)
        if len(stops):
            next_token = next_token.masked_fill(finished, fill_id)
            finished |= torch.isin(next_token, stops)
        tokens = torch.cat([tokens, next_token[:, None]], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        # An explicit mask for the new tokens: a model that infers padding from pad ids (interp.tl) must not.
        step_tokens, step_mask = next_token[:, None], torch.ones_like(mask[:, :1])
        if len(stops) and bool(finished.all()):
            break
    return tokens, mask


def sample_next(logits: Float[Tensor, "batch d_vocab"], temperature: float, top_k: int | None,
                generator: torch.Generator | None) -> Int[Tensor, "batch"]:
    """The next token of each row: the argmax at temperature 0, else a draw from softmax(logits / temperature),
    restricted to the `top_k` most likely tokens if given."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k is not None:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)


def _through_first(new_tokens: Int[Tensor, "new"], eos_ids: Int[Tensor, "n_eos"]) -> int:
    """How many of the new tokens to keep: up to and including the first EOS (all if there is none)."""
    ends = torch.isin(new_tokens, eos_ids).nonzero()
    return int(ends[0]) + 1 if len(ends) else len(new_tokens)
