"""TransformerLens 3.9's tokenizer helpers from `utils` (re-exported by `interp.tl.utils`): attention masks of
padded ids, BOS handling, and `tokenize_and_concatenate`."""

from __future__ import annotations

import importlib.util
from typing import Any, Optional, Union

import numpy as np
import torch
from jaxtyping import Int
from torch import Tensor

_MAP_BATCH_SIZE = 1000  # datasets' default batch for Dataset.map: TL concatenates and chunks per batch


def get_cumsum_along_dim(tensor: Tensor, dim: int, reverse: bool = False) -> Tensor:
    """Cumulative sum along dim; reverse=True sums from the end."""
    if reverse:
        return tensor.flip(dims=(dim,)).cumsum(dim=dim).flip(dims=(dim,))
    return tensor.cumsum(dim=dim)


def _pad_token_id(tokenizer: Any) -> int:
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        raise ValueError("The tokenizer has no pad token, so padding cannot be found; set one, e.g. "
                         "tokenizer.pad_token = tokenizer.eos_token (as TransformerLens does on loading).")
    return pad


def get_attention_mask(tokenizer: Any, tokens: Int[Tensor, "batch pos"], prepend_bos: bool,
                       padding_side: Optional[str] = None) -> Int[Tensor, "batch pos"]:
    """1 for real tokens, 0 for padding: the run of pad ids at the padded end of each row (only that run).

    padding_side defaults to `tokenizer.padding_side`. Left padding with prepend_bos and BOS == pad: the last
    pad id of the leading run is the BOS and stays 1. No tokenizer: all ones. Same dtype as tokens.
    """
    attention_mask = torch.ones_like(tokens)
    if tokenizer is None:
        return attention_mask
    side = tokenizer.padding_side if padding_side is None else padding_side
    is_real = tokens.ne(_pad_token_id(tokenizer))
    if side == "right":
        attention_mask[get_cumsum_along_dim(is_real, -1, reverse=True) == 0] = 0
        return attention_mask
    is_leading_pad = get_cumsum_along_dim(is_real, -1) == 0
    attention_mask[is_leading_pad] = 0
    if prepend_bos and tokenizer.bos_token_id == tokenizer.pad_token_id:
        bos_positions = is_leading_pad.sum(-1) - 1
        attention_mask[torch.arange(attention_mask.shape[0]), bos_positions] = 1
    return attention_mask


def get_input_with_manually_prepended_bos(bos_token: Optional[str], input: Union[str, list[str]]
                                          ) -> Union[str, list[str]]:
    """The text with the BOS string in front (each string of a list); unchanged if bos_token is None."""
    if bos_token is None:
        return input
    if isinstance(input, str):
        return bos_token + input
    return [bos_token + text for text in input]


def get_tokens_with_bos_removed(tokenizer: Any, tokens: Int[Tensor, "batch pos"], padding_side: Optional[str] = None
                                ) -> Int[Tensor, "batch pos_minus_1"]:
    """The tokens without each row's BOS: the first position (right padding) or, with left padding, the
    first BOS id (when BOS == pad: the last id of the leading run). Unchanged if the tokenizer has no BOS."""
    if tokenizer.bos_token_id is None:
        return tokens
    side = tokenizer.padding_side if padding_side is None else padding_side
    if side == "right":
        return tokens[..., 1:]
    if tokenizer.bos_token_id == tokenizer.pad_token_id:
        bos_positions = (get_cumsum_along_dim(tokens.ne(tokenizer.pad_token_id), -1) == 0).sum(-1) - 1
    else:
        bos_positions = (tokens == tokenizer.bos_token_id).int().argmax(-1)
    keep = torch.ones_like(tokens, dtype=torch.bool)
    keep[torch.arange(tokens.shape[0]), bos_positions] = False
    return tokens[keep].view(tokens.shape[0], tokens.shape[1] - 1)


def keep_single_column(dataset: Any, col_name: str) -> Any:
    """The `datasets` dataset with every column but col_name removed."""
    for column in list(dataset.features):
        if column != col_name:
            dataset = dataset.remove_columns(column)
    return dataset


def _token_rows(texts: list[str], tokenizer: Any, seq_len: int, add_bos_token: bool, pad_id: int) -> np.ndarray:
    """One map batch as TL makes it: documents joined by EOS, cut into rows of seq_len (the remainder
    dropped; a batch shorter than one row is padded), each row with a BOS in front if add_bos_token."""
    if not texts:
        return np.zeros((0, seq_len + int(add_bos_token)), dtype=np.int64)
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    eos = np.array([tokenizer.eos_token_id], dtype=np.int64)
    pieces = [piece for i, ids in enumerate(encoded)
              for piece in ([np.asarray(ids, dtype=np.int64)] + ([eos] if i < len(encoded) - 1 else []))]
    ids = np.concatenate(pieces)
    if len(ids) < seq_len:
        ids = np.concatenate([ids, np.full(seq_len - len(ids), pad_id, dtype=np.int64)])
    n_rows = len(ids) // seq_len
    rows = ids[: n_rows * seq_len].reshape(n_rows, seq_len)
    if add_bos_token:
        rows = np.concatenate([np.full((n_rows, 1), tokenizer.bos_token_id, dtype=np.int64), rows], axis=1)
    return rows


def tokenize_and_concatenate(dataset: Any, tokenizer: Any, streaming: bool = False, max_length: int = 1024,
                             column_name: str = "text", add_bos_token: bool = True, num_proc: Optional[int] = 10,
                             set_format: bool = True) -> Any:
    """Tokenize documents, join them with EOS and cut them into rows of max_length tokens (BOS first if
    add_bos_token), as TransformerLens 3.9 does per batch of 1000 documents.

    A `datasets.Dataset` / `IterableDataset` gives a dataset with one "tokens" column (torch format if
    set_format), as TL. A plain list of strings needs no `datasets` package and gives `{"tokens": LongTensor
    [rows, max_length]}`. Padding (a batch shorter than one row) uses the pad id, or EOS if there is none;
    unlike TL, the tokenizer is not given a new "<PAD>" token.
    """
    if tokenizer.eos_token_id is None or (add_bos_token and tokenizer.bos_token_id is None):
        raise ValueError("tokenize_and_concatenate needs a tokenizer with an EOS token (and a BOS token when "
                         "add_bos_token=True); set tokenizer.eos_token / bos_token, or pass add_bos_token=False.")
    seq_len = max_length - 1 if add_bos_token else max_length
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if isinstance(dataset, (list, tuple)):
        if not all(isinstance(text, str) for text in dataset):
            raise TypeError("tokenize_and_concatenate takes a list of strings or a datasets.Dataset.")
        batches = [_token_rows(list(dataset[start:start + _MAP_BATCH_SIZE]), tokenizer, seq_len, add_bos_token, pad_id)
                   for start in range(0, len(dataset), _MAP_BATCH_SIZE)]
        rows = np.concatenate(batches) if batches else np.zeros((0, max_length), dtype=np.int64)
        return {"tokens": torch.from_numpy(rows)}
    if not (hasattr(dataset, "map") and hasattr(dataset, "remove_columns")):
        if importlib.util.find_spec("datasets") is None:
            raise ImportError(f"tokenize_and_concatenate got a {type(dataset).__name__}: pass a list of strings, "
                              "or a datasets.Dataset (pip install datasets).")
        raise TypeError(f"tokenize_and_concatenate takes a list of strings or a datasets.Dataset / "
                        f"IterableDataset, got {type(dataset).__name__}.")
    dataset = keep_single_column(dataset, column_name)

    def tokenize(batch: dict) -> dict:
        return {"tokens": _token_rows(batch[column_name], tokenizer, seq_len, add_bos_token, pad_id)}

    tokenized = dataset.map(tokenize, batched=True, remove_columns=[column_name],
                            **({} if streaming else {"num_proc": num_proc}))
    if set_format:
        tokenized.set_format(type="torch", columns=["tokens"])
    return tokenized
