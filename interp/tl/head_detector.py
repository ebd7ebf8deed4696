"""TransformerLens's head detector (`transformer_lens.head_detector`): how closely each head's attention
pattern on a prompt matches a pattern you expect (previous-token, duplicate-token, induction, or your own).

Scores, as TL 3.9 defines them, for one head's `[query_pos, key_pos]` attention pattern A and a lower-triangular
detection pattern D of the same size:

- "mul" (default): sum(A * D) / sum(A), the fraction of the head's attention that lands where D is 1
  (1: all of it). `exclude_bos` zeroes A's first column and `exclude_current_token` its diagonal first, so
  the denominator is the attention left after the exclusions.
- "abs": 1 - round(sum|A - D| / seq_len, 3), with the excluded entries of |A - D| set to 0 (the divisor stays
  seq_len): 1 is a perfect match, -1 a perfect mismatch.

A list of prompts (with a head name) scores each prompt on its own and returns the mean; heads not asked for
score -1. Bad input raises `DetectionError`, a ValueError that is also an AssertionError (TL asserts).
"""

from __future__ import annotations

import logging
from typing import Any, Literal, Union, get_args

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.model import HookedTransformer

HeadName = Literal["previous_token_head", "duplicate_token_head", "induction_head"]
HEAD_NAMES = get_args(HeadName)  # a tuple, as TransformerLens prints it
ErrorMeasure = Literal["abs", "mul"]
LayerHeadTuple = tuple[int, int]
LayerToHead = dict[int, list[int]]

logger = logging.getLogger(__name__)


class DetectionError(ValueError, AssertionError):
    """A bad argument to the head detector (an AssertionError too, as TransformerLens raises there)."""


def _one_sequence(tokens: Tensor) -> Int[Tensor, "pos"]:
    if tokens.ndim == 2 and tokens.shape[0] != 1 or tokens.ndim not in (1, 2):
        raise DetectionError(f"Detection patterns are built from one sequence, [1, pos] or [pos]; got tokens of "
                             f"shape {tuple(tokens.shape)}. Build one pattern per prompt.")
    return tokens.reshape(-1).cpu()


def get_previous_token_head_detection_pattern(tokens: Int[Tensor, "1 pos"]) -> Float[Tensor, "pos pos"]:
    """1 where a query attends to the token just before it (entries (i, i - 1)), else 0."""
    n_pos = len(_one_sequence(tokens))
    return torch.diag(torch.ones(max(n_pos - 1, 0)), diagonal=-1)[:n_pos, :n_pos]


def get_duplicate_token_head_detection_pattern(tokens: Int[Tensor, "1 pos"]) -> Float[Tensor, "pos pos"]:
    """1 where a query attends to an earlier occurrence of its own token (j < i, token j == token i), else 0."""
    sequence = _one_sequence(tokens)
    same = sequence[:, None] == sequence[None, :]
    return torch.tril(same.float(), diagonal=-1)


def get_induction_head_detection_pattern(tokens: Int[Tensor, "1 pos"]) -> Float[Tensor, "pos pos"]:
    """1 where a query attends to the token after an earlier occurrence of its own token: (i, j) with j >= 1,
    j <= i and token j - 1 == token i (j - 1 < i), else 0."""
    duplicate = get_duplicate_token_head_detection_pattern(tokens)
    induction = torch.zeros_like(duplicate)
    induction[:, 1:] = duplicate[:, :-1]
    return torch.tril(induction)


def get_supported_heads() -> None:
    """Print the head names `detect_head` accepts as a detection pattern."""
    print(f"Supported heads: {HEAD_NAMES}")


def compute_head_attention_similarity_score(
    attention_pattern: Float[Tensor, "query_pos key_pos"],
    detection_pattern: Float[Tensor, "query_pos key_pos"],
    *,
    exclude_bos: bool,
    exclude_current_token: bool,
    error_measure: ErrorMeasure,
) -> float:
    """The "mul" or "abs" score (see the module docstring) of one head's pattern; the input is not modified."""
    if attention_pattern.ndim != 2 or attention_pattern.shape[0] != attention_pattern.shape[1]:
        raise DetectionError(f"The attention pattern must be square [query_pos, key_pos]; got shape "
                             f"{tuple(attention_pattern.shape)}.")
    detection_pattern = detection_pattern.to(attention_pattern.device)
    if error_measure == "mul":
        attention = attention_pattern.clone()
        if exclude_bos:
            attention[:, 0] = 0
        if exclude_current_token:
            attention.fill_diagonal_(0)
        return ((attention * detection_pattern).sum() / attention.sum()).item()
    difference = (attention_pattern - detection_pattern).abs()
    if bool(difference.triu(diagonal=1).any()):
        raise DetectionError("The attention or detection pattern has entries above the diagonal (a query "
                             "attending to a later key); both must be lower triangular.")
    if exclude_bos:
        difference[:, 0] = 0
    if exclude_current_token:
        difference.fill_diagonal_(0)
    seq_len = len(difference)
    return 1 - round((difference.mean() * seq_len).item(), 3)


def _layer_to_heads(model: HookedTransformer, heads: Any) -> dict[int, list[int]]:
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    if heads is None:
        return {layer: list(range(n_heads)) for layer in range(n_layers)}
    if isinstance(heads, dict):
        chosen = {int(layer): [int(head) for head in layer_heads] for layer, layer_heads in heads.items()}
    else:
        chosen = {}
        for pair in heads:
            layer, head = pair
            chosen.setdefault(int(layer), []).append(int(head))
    for layer, layer_heads in chosen.items():
        for head in layer_heads:
            if not (0 <= layer < n_layers and 0 <= head < n_heads):
                raise IndexError(f"Head ({layer}, {head}) does not exist: this model has layers 0..{n_layers - 1} "
                                 f"and heads 0..{n_heads - 1}.")
    return chosen


def _pattern_of(cache: Any, layer: int) -> Float[Tensor, "n_heads query_pos key_pos"]:
    pattern = cache[f"blocks.{layer}.attn.hook_pattern"]
    if pattern.ndim == 4:
        if pattern.shape[0] != 1:
            raise DetectionError(f"The cache holds a batch of {pattern.shape[0]} patterns; detect_head reads one "
                                 "prompt: pass the cache of a single prompt (or its cache.remove_batch_dim()).")
        pattern = pattern[0]
    return pattern


def detect_head(
    model: HookedTransformer,
    seq: Union[str, list[str]],
    detection_pattern: Union[Float[Tensor, "pos pos"], HeadName],
    heads: Union[list[LayerHeadTuple], LayerToHead, None] = None,
    cache: Any = None,
    *,
    exclude_bos: bool = False,
    exclude_current_token: bool = False,
    error_measure: ErrorMeasure = "mul",
) -> Float[Tensor, "layer head"]:
    """Score every head (or `heads`, the others -1) on how well its attention on `seq` matches `detection_pattern`.

    detection_pattern: a lower-triangular `[pos, pos]` tensor for the tokenised `seq` (BOS included as
    `model.to_tokens` adds it), or one of `HEAD_NAMES`, built from the tokens. heads: `[(layer, head), ...]`
    or `{layer: [head, ...]}`. cache: a run of `seq` (one prompt) to read the patterns from instead of running
    the model. A list of prompts needs a head name and no cache: the mean of the per-prompt scores.
    Returns `[n_layers, n_heads]` in the model's dtype.
    """
    if error_measure not in get_args(ErrorMeasure):
        raise DetectionError(f"Invalid error_measure={error_measure!r}; valid values are {get_args(ErrorMeasure)}.")
    if isinstance(detection_pattern, str) and detection_pattern not in HEAD_NAMES:
        raise DetectionError(f"detection_pattern must be a Tensor or one of the head names {HEAD_NAMES}; "
                             f"got {detection_pattern!r}.")
    if isinstance(seq, (list, tuple)):
        if not isinstance(detection_pattern, str):
            raise DetectionError("A list of prompts is scored prompt by prompt with a head name; a detection "
                                 "pattern tensor fits one prompt's tokens: call detect_head once per prompt.")
        if cache is not None:
            raise DetectionError("One cache holds one prompt's activations, so cache= cannot serve a list of "
                                 "prompts: pass one prompt at a time, or leave cache=None.")
        scores = [detect_head(model, one, detection_pattern, heads=heads, exclude_bos=exclude_bos,
                              exclude_current_token=exclude_current_token, error_measure=error_measure)
                  for one in seq]
        return torch.stack(scores).mean(0)
    tokens = model.to_tokens(seq)
    seq_len = tokens.shape[-1]
    if isinstance(detection_pattern, str):
        build = {"previous_token_head": get_previous_token_head_detection_pattern,
                 "duplicate_token_head": get_duplicate_token_head_detection_pattern,
                 "induction_head": get_induction_head_detection_pattern}[detection_pattern]
        detection_pattern = build(tokens.cpu())
    if error_measure == "mul" and not set(detection_pattern.unique().tolist()) <= {0, 1}:
        logger.warning("Using detection pattern with values other than 0 or 1 with error_measure 'mul'")
    if not 1 < seq_len < model.cfg.n_ctx:
        raise DetectionError(f"The sequence has {seq_len} tokens; it must have at least 2 and fewer than "
                             f"n_ctx={model.cfg.n_ctx}.")
    square = detection_pattern.ndim == 2 and detection_pattern.shape[0] == detection_pattern.shape[1]
    if not (square and torch.equal(detection_pattern, detection_pattern.tril()) and len(detection_pattern) == seq_len):
        raise DetectionError(f"The detection pattern must be a lower-triangular [{seq_len}, {seq_len}] matrix "
                             f"(the prompt has {seq_len} tokens, BOS included); got shape "
                             f"{tuple(detection_pattern.shape)}.")
    layer_to_heads = _layer_to_heads(model, heads)
    if cache is None:
        names = [f"blocks.{layer}.attn.hook_pattern" for layer in layer_to_heads]
        with torch.no_grad():
            _, cache = HookedTransformer.run_with_cache(model, tokens, names_filter=names)
    dtype = getattr(model.cfg, "dtype", None) or model.W_E.dtype
    scores = -torch.ones(model.cfg.n_layers, model.cfg.n_heads, dtype=dtype)
    for layer, layer_heads in layer_to_heads.items():
        pattern = _pattern_of(cache, layer)
        for head in layer_heads:
            scores[layer, head] = compute_head_attention_similarity_score(
                pattern[head], detection_pattern, exclude_bos=exclude_bos,
                exclude_current_token=exclude_current_token, error_measure=error_measure)
    return scores


__all__ = ["HEAD_NAMES", "DetectionError", "compute_head_attention_similarity_score", "detect_head",
                          "get_duplicate_token_head_detection_pattern", "get_induction_head_detection_pattern",
                          "get_previous_token_head_detection_pattern", "get_supported_heads"]
