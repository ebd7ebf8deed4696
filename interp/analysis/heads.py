"""Head scores: how much of its attention each head puts where an induction, previous-token or
duplicate-token head would (Olsson et al. 2022, "In-context Learning and Induction Heads";
Elhage et al. 2021; duplicate-token heads: Wang et al. 2022, IOI).

A score is the mean, over scored query positions, of the attention mass the query puts on its
target key(s): 1.0 = the head always attends exactly there; about 1/pos = uniform attention.
With `exclude_bos` / `exclude_current_token` the mass is divided by the attention left after
dropping the BOS column / the diagonal (so a head that parks spare attention on BOS is scored on
what it does with the rest). Defaults: neither exclusion (the papers' raw definition).

Scores are reduced inside each layer's `hook_pattern` hook and the pattern is dropped at once:
memory is O(layers x heads), never every layer's `[batch, n_heads, query_pos, key_pos]`.

Every family: `hook_pattern` is the softmax the model uses, per query head, after rotary positions
(computed from hook_rot_q/hook_rot_k), grouped-query sharing (each query head with its kv head's keys)
and sliding windows (keys outside a query's window get exactly 0). So scores are per query head
`[layer, n_heads]`, and a target key outside a layer's window scores 0 there: with the repeated protocol,
a window shorter than L + 1 leaves an induction head nothing to find (the earlier copy is out of sight).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from interp.display import block_html, format_number, head_table_html, plural, text_table_html
from interp.model import HookedTransformer

SCORE_TYPES = ("induction", "previous_token", "duplicate_token")


@dataclass(frozen=True)
class HeadScores:
    """Per-head scores `[layer, head]` for each score type, with how they were computed."""

    scores: dict[str, Float[Tensor, "layer head"]]
    n_queries: dict[str, int]  # scored query positions averaged into each score type
    protocol: dict[str, Any] = field(default_factory=dict)
    loss_first_repeat: float | None = None  # mean next-token loss on the first copy (repeated protocol)
    loss_second_repeat: float | None = None  # ...and on the second copy: induction makes it far lower

    def __getitem__(self, score_type: str) -> Float[Tensor, "layer head"]:
        if score_type not in self.scores:
            raise KeyError(f"No {score_type!r} scores; computed: {sorted(self.scores)}.")
        return self.scores[score_type]

    def measured(self, score_type: str) -> bool:
        """Whether any query was scored for `score_type` (else its table is all zeros and means nothing)."""
        return self.n_queries.get(score_type) != 0

    def top_heads(self, score_type: str, k: int = 5) -> list[tuple[int, int, float]]:
        """The k highest-scoring heads as (layer, head, score), best first.

        Empty when no query was scored for `score_type` (`n_queries[score_type] == 0`, e.g. text with
        no repeated token): its table is then all zeros, which ranks nothing, so no head is returned.
        """
        table = self[score_type]
        if not self.measured(score_type):
            return []
        values, flat = table.flatten().topk(min(k, table.numel()))
        return [(int(i) // table.shape[1], int(i) % table.shape[1], float(v)) for v, i in zip(values, flat)]

    def _summary(self) -> str:
        layers, heads = next(iter(self.scores.values())).shape if self.scores else (0, 0)
        kind, n = self.protocol.get("kind"), self.protocol.get("n_sequences", 0)
        source = {"repeated_random_tokens": f"{plural(n, 'sequence')} of repeated random tokens",
                  "text": f"{plural(n, 'text sequence')}"}.get(kind, "protocol not recorded")
        return f"{plural(layers, 'layer')} x {plural(heads, 'head')}; {source}"

    def _score_line(self, score_type: str, k: int = 3) -> str:
        n = self.n_queries.get(score_type)
        if n == 0:
            return "n/a (0 queries)"
        top = ", ".join(f"L{layer}H{head} {format_number(value)}" for layer, head, value in self.top_heads(score_type, k))
        return top + ("" if n is None else f" ({plural(n, 'query')})")

    def _loss_lines(self) -> list[str]:
        if self.loss_first_repeat is None or self.loss_second_repeat is None:
            return []
        return [f"loss: first copy {format_number(self.loss_first_repeat)}, second copy {format_number(self.loss_second_repeat)}"]

    def __repr__(self) -> str:
        lines = [f"{name}: {self._score_line(name)}" for name in self.scores] + self._loss_lines()
        return f"HeadScores({self._summary()}" + "".join(f"\n  {line}" for line in lines) + ")"

    def _repr_html_(self) -> str:
        """Top heads per score type, and each `[layer, head]` table coloured from 0 (white) to 1."""
        parts = [text_table_html(["score", "top heads"], [(name, self._score_line(name, 5)) for name in self.scores])]
        parts += [head_table_html(table, name, signed=False, vmax=1.0) for name, table in self.scores.items()
                  if self.measured(name)]
        return block_html("; ".join([f"HeadScores: {self._summary()}", *self._loss_lines()]), *parts)


@dataclass
class ScoreSums:
    """Unnormalised totals from which `HeadScores` are computed; totals of disjoint batches add up,
    so a big run can be split into units (saved, resumed, sharded) and merged exactly."""

    sums: dict[str, Float[Tensor, "layer head"]]  # float64 sum of per-query scores
    counts: dict[str, int]  # number of scored queries
    loss_sums: dict[str, float] = field(default_factory=dict)  # "first_repeat"/"second_repeat" -> float64 sum
    loss_counts: dict[str, int] = field(default_factory=dict)

    def merge(self, other: ScoreSums) -> ScoreSums:
        return ScoreSums({k: self.sums[k] + other.sums[k] for k in self.sums},
                         {k: self.counts[k] + other.counts[k] for k in self.counts},
                         {k: self.loss_sums[k] + other.loss_sums[k] for k in self.loss_sums},
                         {k: self.loss_counts[k] + other.loss_counts[k] for k in self.loss_counts})

    def to_scores(self, protocol: dict[str, Any] | None = None) -> HeadScores:
        losses = {k: self.loss_sums[k] / self.loss_counts[k] for k in self.loss_sums if self.loss_counts[k]}
        return HeadScores({k: (v / max(self.counts[k], 1)).float() for k, v in self.sums.items()},
                          dict(self.counts), dict(protocol or {}),
                          losses.get("first_repeat"), losses.get("second_repeat"))

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe; float64 values survive a round trip exactly (repr of a Python float)."""
        return {"sums": {k: v.tolist() for k, v in self.sums.items()}, "counts": self.counts,
                "loss_sums": self.loss_sums, "loss_counts": self.loss_counts}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScoreSums:
        return cls({k: torch.tensor(v, dtype=torch.float64) for k, v in data["sums"].items()},
                   {k: int(v) for k, v in data["counts"].items()},
                   {k: float(v) for k, v in data["loss_sums"].items()},
                   {k: int(v) for k, v in data["loss_counts"].items()})


# ----- targets: which key(s) each query should attend to ------------------------------------------
@dataclass(frozen=True)
class DiagonalTarget:
    """Query i's target is key i - `lag`, for the queries in `query_mask` (cheap: a diagonal view)."""

    lag: int
    query_mask: Bool[Tensor, "batch query_pos"]


@dataclass(frozen=True)
class MaskTarget:
    """Arbitrary target keys per query; queries with no target are not scored."""

    key_mask: Float[Tensor, "batch query_pos key_pos"]  # 1 (or a weight) on target keys

    @property
    def query_mask(self) -> Bool[Tensor, "batch query_pos"]:
        return self.key_mask.sum(-1) > 0


Target = DiagonalTarget | MaskTarget


def _attention_on_target(pattern: Float[Tensor, "batch n_heads query_pos key_pos"],
                         target: Target) -> Float[Tensor, "batch n_heads query_pos"]:
    if isinstance(target, MaskTarget):
        return torch.einsum("bhqk,bqk->bhq", pattern, target.key_mask.to(pattern.dtype))
    on_diagonal = pattern.diagonal(offset=-target.lag, dim1=-2, dim2=-1)  # [batch, n_heads, query_pos - lag]
    return torch.nn.functional.pad(on_diagonal, (target.lag, 0))


def per_query_scores(pattern: Float[Tensor, "batch n_heads query_pos key_pos"], target: Target,
                     exclude_bos: bool = False, exclude_current_token: bool = False) -> Float[Tensor, "batch n_heads query_pos"]:
    """Attention each query puts on its target, as a fraction of the attention not excluded."""
    on_target = _attention_on_target(pattern, target)
    allowed = torch.ones_like(on_target)
    if exclude_bos:
        allowed = allowed - pattern[..., 0]
        if isinstance(target, MaskTarget):
            on_target = on_target - pattern[..., 0] * target.key_mask[:, None, :, 0]
        elif target.lag > 0:  # the query whose target is key 0 loses its target
            on_target[..., target.lag] = 0
    if exclude_current_token:
        diagonal = pattern.diagonal(dim1=-2, dim2=-1)
        allowed = allowed - diagonal
        if isinstance(target, MaskTarget):
            on_target = on_target - diagonal * target.key_mask.diagonal(dim1=-2, dim2=-1)[:, None]
        elif target.lag == 0:
            on_target = torch.zeros_like(on_target)
    if not (exclude_bos or exclude_current_token):
        return on_target
    return torch.where(allowed > 1e-9, on_target / allowed.clamp_min(1e-9), torch.zeros_like(on_target))


def scored_queries(target: Target, exclude_bos: bool, exclude_current_token: bool) -> Bool[Tensor, "batch query_pos"]:
    """Queries that keep at least one target key after the exclusions."""
    if isinstance(target, MaskTarget):
        key_mask = target.key_mask.clone()
        if exclude_bos:
            key_mask[..., 0] = 0
        if exclude_current_token:
            key_mask.diagonal(dim1=-2, dim2=-1).zero_()
        return key_mask.sum(-1) > 0
    mask = target.query_mask.clone()
    if exclude_bos and target.lag < mask.shape[1]:
        mask[:, target.lag] = False
    if exclude_current_token and target.lag == 0:
        mask[:] = False
    return mask


# ----- target builders ------------------------------------------------------------------------------
def repeated_random_tokens(d_vocab: int, n_sequences: int, length: int, seed: int = 0,
                           bos_token_id: int | None = None, exclude_ids: Iterable[int] = ()) -> Int[Tensor, "batch pos"]:
    """BOS (if given) + L random token ids + the same L again: `[n_sequences, 2L (+1)]`.

    Ids are uniform over the vocabulary minus `exclude_ids` and the BOS id, from a seeded generator,
    so the same (d_vocab, n_sequences, length, seed) always gives the same tokens.
    """
    if length < 2 or n_sequences < 1:
        raise ValueError(f"Need length >= 2 and n_sequences >= 1, got length={length}, n_sequences={n_sequences}.")
    excluded = set(exclude_ids) | ({bos_token_id} if bos_token_id is not None else set())
    allowed = torch.tensor([i for i in range(d_vocab) if i not in excluded])
    generator = torch.Generator().manual_seed(seed)
    half = allowed[torch.randint(0, len(allowed), (n_sequences, length), generator=generator)]
    parts = [half, half]
    if bos_token_id is not None:
        parts.insert(0, torch.full((n_sequences, 1), bos_token_id))
    return torch.cat(parts, dim=1)


def repeated_targets(batch: int, length: int, has_bos: bool) -> dict[str, Target]:
    """The usual protocol's targets on [BOS] + r + r: second-copy queries for induction (i -> i-L+1)
    and duplicate-token (i -> i-L); every query from position 1 on for previous-token (i -> i-1)."""
    start = 1 if has_bos else 0  # position of the first copy's first token
    positions = torch.arange(start + 2 * length)
    second_copy = (positions >= start + length).expand(batch, -1)
    return {
        "induction": DiagonalTarget(length - 1, second_copy),
        "duplicate_token": DiagonalTarget(length, second_copy),
        "previous_token": DiagonalTarget(1, (positions >= 1).expand(batch, -1)),
    }


def text_targets(tokens: Int[Tensor, "batch pos"], lengths: Int[Tensor, "batch"] | None = None) -> dict[str, Target]:
    """Targets found from the tokens themselves: for a query whose token occurred earlier at j,
    the duplicate-token targets are those j and the induction targets are the j+1 (keys <= i)."""
    batch, pos = tokens.shape
    lengths = torch.full((batch,), pos) if lengths is None else lengths
    valid = torch.arange(pos)[None, :] < lengths[:, None]  # [batch, pos]
    earlier = torch.ones(pos, pos, dtype=torch.bool).tril(-1)  # key < query
    same = (tokens[:, :, None] == tokens[:, None, :]) & earlier & valid[:, :, None] & valid[:, None, :]
    after_same = torch.zeros_like(same)
    after_same[:, :, 1:] = same[:, :, :-1]  # key j+1 for each earlier occurrence j (j+1 <= i)
    previous_queries = (torch.arange(pos) >= 1)[None, :] & valid
    return {
        "induction": MaskTarget(after_same.float()),
        "duplicate_token": MaskTarget(same.float()),
        "previous_token": DiagonalTarget(1, previous_queries),
    }


# ----- streaming reduction ----------------------------------------------------------------------------
class _Accumulator:
    """Running sums of per-query scores per (score type, layer, head), in float64."""

    def __init__(self, model: HookedTransformer, score_types: Sequence[str], exclude_bos: bool,
                 exclude_current_token: bool) -> None:
        shape = (model.cfg.n_layers, model.cfg.n_heads)
        self.device = model.W_E.device
        self.sums = {name: torch.zeros(shape, dtype=torch.float64) for name in score_types}
        self.counts = dict.fromkeys(score_types, 0)
        self.exclude = (exclude_bos, exclude_current_token)
        self.batch: dict[str, tuple[Target, Tensor]] = {}

    def add_batch(self, targets: dict[str, Target]) -> None:
        """Set the targets of the next forward (computed once per batch, used by every layer)."""
        self.batch = {}
        for name in self.sums:
            queries = scored_queries(targets[name], *self.exclude)
            self.counts[name] += int(queries.sum())
            self.batch[name] = (_on(targets[name], self.device), queries.to(self.device))

    def hook(self, layer: int) -> Callable[[Tensor, Any], None]:
        def reduce(pattern: Tensor, hook: Any) -> None:
            for name, (target, queries) in self.batch.items():
                per_query = per_query_scores(pattern, target, *self.exclude)
                self.sums[name][layer] += (per_query * queries[:, None]).sum((0, 2)).double().cpu()
        return reduce

    def totals(self, loss_sums: dict[str, float] | None = None, loss_counts: dict[str, int] | None = None) -> ScoreSums:
        return ScoreSums(self.sums, self.counts, dict(loss_sums or {}), dict(loss_counts or {}))


def _on(target: Target, device: torch.device) -> Target:
    if isinstance(target, MaskTarget):
        return MaskTarget(target.key_mask.to(device))
    return DiagonalTarget(target.lag, target.query_mask.to(device))


def _check_score_types(score_types: Sequence[str]) -> None:
    unknown = [name for name in score_types if name not in SCORE_TYPES]
    if unknown:
        raise ValueError(f"Unknown score types {unknown}; choose from {list(SCORE_TYPES)} "
                         "(or use pattern_score for a head type of your own).")


def _pattern_hooks(accumulator: _Accumulator, model: HookedTransformer) -> list[tuple[str, Any]]:
    return [(f"blocks.{layer}.attn.hook_pattern", accumulator.hook(layer)) for layer in range(model.cfg.n_layers)]


def repeated_protocol(length: int, n_sequences: int, seed: int, has_bos: bool, exclude_bos: bool,
                      exclude_current_token: bool) -> dict[str, Any]:
    """The record of how repeated-token scores were computed (goes into every report)."""
    return {
        "kind": "repeated_random_tokens", "length": length, "n_sequences": n_sequences, "seed": seed,
        "sequence_length": 2 * length + has_bos, "bos": has_bos, "token_ids": "uniform over non-special ids",
        "queries": {"induction": "second copy, i -> i-L+1", "duplicate_token": "second copy, i -> i-L",
                    "previous_token": "every i >= 1, i -> i-1"},
        "loss": "mean next-token loss on tokens 2..L of each copy",
        "exclude_bos": exclude_bos, "exclude_current_token": exclude_current_token,
    }


def protocol_tokens(model: HookedTransformer, n_sequences: int, length: int, seed: int) -> Int[Tensor, "batch pos"]:
    """The repeated random tokens of the protocol for this model (checked to fit its context)."""
    max_length = (model.cfg.n_ctx - (model.cfg.bos_token_id is not None)) // 2
    if not 2 <= length <= max_length:
        raise ValueError(f"length={length} needs 2 <= length <= {max_length} so that BOS + 2L tokens fit n_ctx={model.cfg.n_ctx}.")
    special = set(getattr(model.tokenizer, "all_special_ids", []) or [])
    return repeated_random_tokens(model.cfg.d_vocab, n_sequences, length, seed, model.cfg.bos_token_id, special)


@torch.no_grad()
def repeated_score_sums(model: HookedTransformer, tokens: Int[Tensor, "batch pos"], length: int,
                        batch_size: int = 16, score_types: Sequence[str] = SCORE_TYPES, exclude_bos: bool = False,
                        exclude_current_token: bool = False, with_loss: bool = True,
                        progress: bool = True) -> ScoreSums:
    """Streaming totals over sequences of the repeated protocol (see `repeated_random_scores`)."""
    _check_score_types(score_types)
    has_bos = model.cfg.bos_token_id is not None
    start = 1 if has_bos else 0
    if tokens.shape[1] != 2 * length + start:
        raise ValueError(f"Repeated-token sequences of length={length} have {2 * length + start} tokens, got {tokens.shape[1]}.")
    accumulator = _Accumulator(model, score_types, exclude_bos, exclude_current_token)
    loss_sums, loss_counts = {"first_repeat": 0.0, "second_repeat": 0.0}, {"first_repeat": 0, "second_repeat": 0}
    with model.hooks(_pattern_hooks(accumulator, model)):
        for batch in tqdm(tokens.split(batch_size), desc="head scores", disable=not progress, unit="batch"):
            accumulator.add_batch(repeated_targets(len(batch), length, has_bos))
            batch = batch.to(model.W_E.device)
            if not with_loss:
                model(batch, stop_at_layer=model.cfg.n_layers)
                continue
            losses = model(batch, return_type="loss", loss_per_token=True).double().cpu()
            # losses[:, p] predicts token p+1: tokens 2..L of each copy, each from context in its own copy
            for name, first in (("first_repeat", start), ("second_repeat", start + length)):
                part = losses[:, first: first + length - 1]
                loss_sums[name] += float(part.sum())
                loss_counts[name] += part.numel()
    return accumulator.totals(loss_sums if with_loss else None, loss_counts if with_loss else None)


def repeated_random_scores(model: HookedTransformer, n_sequences: int = 64, length: int = 50, seed: int = 0,
                           batch_size: int = 16, score_types: Sequence[str] = SCORE_TYPES,
                           exclude_bos: bool = False, exclude_current_token: bool = False,
                           with_loss: bool = True, progress: bool = True) -> HeadScores:
    """Induction, previous-token and duplicate-token scores on BOS + L random tokens repeated twice.

    The usual protocol (Olsson et al. 2022): induction = mean attention from second-copy query i
    to i-L+1 (the token after the query's earlier occurrence); duplicate-token = i to i-L;
    previous-token = every query i >= 1 to i-1. With `with_loss`, also the mean next-token loss on
    each copy (positions predicting tokens 2..L of each copy): induction heads make the second
    far lower. Without it the forward stops after the last layer and skips the unembedding.
    """
    _check_score_types(score_types)
    tokens = protocol_tokens(model, n_sequences, length, seed)
    totals = repeated_score_sums(model, tokens, length, batch_size, score_types, exclude_bos,
                                 exclude_current_token, with_loss, progress)
    has_bos = model.cfg.bos_token_id is not None
    return totals.to_scores(repeated_protocol(length, n_sequences, seed, has_bos, exclude_bos, exclude_current_token))


def _real_sequences(model: HookedTransformer, tokens: Sequence[Int[Tensor, "pos"]] | Int[Tensor, "batch pos"],
                    attention_mask: Any) -> list[Tensor]:
    """Each sequence's real tokens: the rows of a `[batch, pos]` tensor, stripped to `attention_mask`'s real
    tokens (left or right padding alike); a list of sequences as it is."""
    if not isinstance(tokens, Tensor):
        if attention_mask is not None:
            raise ValueError("attention_mask goes with a [batch, pos] tensor of padded rows; a list of sequences "
                             "needs none (give each sequence without padding).")
        return [torch.as_tensor(seq) for seq in tokens]
    if tokens.ndim == 1:
        tokens = tokens[None]
    if attention_mask is None:
        return list(tokens.unbind(0))
    tokens, mask = model.tokens_and_mask(tokens, attention_mask)
    if mask is None:
        return list(tokens.unbind(0))
    return [row[real] for row, real in zip(tokens, mask)]


@torch.no_grad()
def text_score_sums(model: HookedTransformer, sequences: Sequence[Int[Tensor, "pos"]] | Int[Tensor, "batch pos"],
                    batch_size: int = 8, score_types: Sequence[str] = SCORE_TYPES, exclude_bos: bool = False,
                    exclude_current_token: bool = False, progress: bool = True, *,
                    attention_mask: Int[Tensor, "batch pos"] | Bool[Tensor, "batch pos"] | None = None) -> ScoreSums:
    """Streaming totals over token sequences of any lengths (see `text_scores`, also for `attention_mask`)."""
    _check_score_types(score_types)
    sequences = _real_sequences(model, sequences, attention_mask)
    if not sequences:
        raise ValueError("No sequences to score.")
    accumulator = _Accumulator(model, score_types, exclude_bos, exclude_current_token)
    pad = model.cfg.bos_token_id or 0
    with model.hooks(_pattern_hooks(accumulator, model)):
        for start in tqdm(range(0, len(sequences), batch_size), desc="head scores", disable=not progress, unit="batch"):
            chunk = sequences[start: start + batch_size]
            lengths = torch.tensor([len(seq) for seq in chunk])
            batch = torch.full((len(chunk), int(lengths.max())), pad, dtype=torch.long)
            for row, seq in enumerate(chunk):
                batch[row, : len(seq)] = seq
            mask = torch.arange(batch.shape[1])[None, :] < lengths[:, None]  # right padding: never attended
            accumulator.add_batch(text_targets(batch, lengths))
            device = model.W_E.device
            model(batch.to(device), attention_mask=mask.to(device), stop_at_layer=model.cfg.n_layers)
    return accumulator.totals()


def text_protocol(n_sequences: int, n_tokens: int, exclude_bos: bool, exclude_current_token: bool) -> dict[str, Any]:
    return {"kind": "text", "n_sequences": n_sequences, "n_tokens": n_tokens,
            "queries": {"induction": "i -> j+1 for each earlier j with token j == token i",
                        "duplicate_token": "i -> each earlier j with token j == token i",
                        "previous_token": "every i >= 1, i -> i-1"},
            "exclude_bos": exclude_bos, "exclude_current_token": exclude_current_token}


def text_scores(model: HookedTransformer, tokens: Sequence[Int[Tensor, "pos"]] | Int[Tensor, "batch pos"],
                batch_size: int = 8, score_types: Sequence[str] = SCORE_TYPES, exclude_bos: bool = False,
                exclude_current_token: bool = False, progress: bool = True, *,
                attention_mask: Int[Tensor, "batch pos"] | Bool[Tensor, "batch pos"] | None = None) -> HeadScores:
    """The same three scores on any token sequences; repeats are found from the tokens themselves.

    Induction targets of query i: every key j+1 (<= i) where token j equals token i; duplicate-token
    targets: every such j; previous-token: i-1. Only queries with a target are scored; sequences
    of different lengths are right-padded, masked (no query attends to padding) and the padding is never scored.

    tokens: a list of sequences, or a `[batch, pos]` tensor whose rows are the sequences. A padded tensor
    takes `attention_mask` `[batch, pos]` (1 = real token): each row's real tokens are its sequence, scored
    exactly as that sequence alone (left or right padding alike; padding is never a target or a query).
    """
    sequences = _real_sequences(model, tokens, attention_mask)
    totals = text_score_sums(model, sequences, batch_size, score_types, exclude_bos, exclude_current_token, progress)
    n_tokens = int(sum(len(seq) for seq in sequences))
    return totals.to_scores(text_protocol(len(sequences), n_tokens, exclude_bos, exclude_current_token))


@torch.no_grad()
def pattern_score(model: HookedTransformer, tokens: Int[Tensor, "batch pos"],
                  target_pattern: Float[Tensor, "query_pos key_pos"] | Float[Tensor, "batch query_pos key_pos"],
                  exclude_bos: bool = False, exclude_current_token: bool = False, *,
                  attention_mask: Int[Tensor, "batch pos"] | Bool[Tensor, "batch pos"] | None = None
                  ) -> Float[Tensor, "layer head"]:
    """Score every head against a head type of your own: mean attention mass each query (with any
    target) puts on the keys where `target_pattern` is nonzero, weighted by `target_pattern`.

    A padded batch takes `attention_mask` `[batch, pos]` (1 = real token); `target_pattern` is then in the
    padded batch's positions. Padded queries and keys never count (their target weight is dropped), and
    each row is scored exactly as its real tokens alone, left or right padding alike: "BOS" (exclude_bos)
    is each row's first real token."""
    tokens, mask = model.tokens_and_mask(tokens, attention_mask)
    target = target_pattern.float()
    if target.ndim == 2:
        target = target.expand(tokens.shape[0], -1, -1)
    if target.shape != (tokens.shape[0], tokens.shape[1], tokens.shape[1]):
        raise ValueError(f"target_pattern must be [query_pos, key_pos] or [batch, query_pos, key_pos] = "
                         f"{(tokens.shape[0], tokens.shape[1], tokens.shape[1])}, got {tuple(target_pattern.shape)}.")
    if torch.triu(target, diagonal=1).any():
        raise ValueError("target_pattern puts weight on future keys (key > query), which causal heads cannot attend to.")
    if mask is not None:
        tokens, target, mask = _right_aligned(tokens, target, mask)
    accumulator = _Accumulator(model, ["custom"], exclude_bos, exclude_current_token)
    accumulator.add_batch({"custom": MaskTarget(target)})
    with model.hooks(_pattern_hooks(accumulator, model)):
        model(tokens, attention_mask=mask, stop_at_layer=model.cfg.n_layers)
    return accumulator.totals().to_scores()["custom"]


def _right_aligned(tokens: Int[Tensor, "batch pos"], target: Float[Tensor, "batch query_pos key_pos"],
                   mask: Bool[Tensor, "batch pos"]) -> tuple[Tensor, Tensor, Tensor]:
    """Each row's real tokens (and their block of the target) moved to positions 0..n-1, padding after them,
    the target zero at every padded query and key: key 0 is then each row's first token, as when alone."""
    target = target.to(mask.device)
    lengths = mask.sum(-1)
    aligned_mask = torch.arange(tokens.shape[1], device=mask.device)[None, :] < lengths[:, None]
    aligned_tokens = torch.full_like(tokens, int(tokens[0, 0]))
    aligned_target = torch.zeros_like(target)
    for row in range(tokens.shape[0]):
        real, n = mask[row], int(lengths[row])
        aligned_tokens[row, :n] = tokens[row, real]
        aligned_target[row, :n, :n] = target[row][real][:, real]
    return aligned_tokens, aligned_target, aligned_mask


def scores_from_patterns(patterns: Sequence[Float[Tensor, "batch n_heads query_pos key_pos"]],
                         targets: dict[str, Target], exclude_bos: bool = False,
                         exclude_current_token: bool = False) -> dict[str, Float[Tensor, "layer head"]]:
    """The same scores from patterns already in memory (e.g. a cache, or `transformers` attentions)."""
    result = {}
    for name, target in targets.items():
        queries = scored_queries(target, exclude_bos, exclude_current_token)
        rows = [(per_query_scores(p.double(), target, exclude_bos, exclude_current_token) * queries[:, None]).sum((0, 2))
                for p in patterns]
        result[name] = (torch.stack(rows) / max(int(queries.sum()), 1)).float()
    return result
