"""Circuit tasks: clean/corrupted prompt pairs with an answer and a wrong token, and their logit-difference metric.

A task file is JSON Lines, one pair per line: `{"clean": "...", "corrupted": "...", "answer": " Mary",
"wrong": " John"}`. Each pair's two prompts must tokenise to the same number of tokens (edge patching swaps
activations position by position); answer and wrong must be one token each. Pairs of different lengths are
right-padded and masked. The metric is the mean over pairs of logit(answer) − logit(wrong) at each pair's
last real token.

Built in: `induction_task` (Olsson et al. 2022): BOS, n random tokens, then their first k again; the answer is
the token that followed the k-th in the first copy. The corrupted prompt has a different random first copy
(same second copy), so induction has nothing to copy; the wrong token is the corrupted copy's k-th successor.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from interp.analysis.graph import Circuit
from interp.model import HookedTransformer
from interp.prompts import text_lines

TASK_KEYS = ("clean", "corrupted", "answer", "wrong")


@dataclass(frozen=True)
class LogitDifference:
    """The mean over rows of logit(answer) − logit(wrong) at each row's `positions` entry. Called on logits
    `[batch, pos, d_vocab]`; it also says which positions it reads (`positions`, `at_positions` on the logits
    there, `[batch, d_vocab]`), so the edge functions unembed only those (about 2× faster at GPT-2's vocabulary)."""

    answer: Int[Tensor, "batch"]
    wrong: Int[Tensor, "batch"]
    positions: Int[Tensor, "batch"]

    def __call__(self, logits: Float[Tensor, "batch pos d_vocab"]) -> Float[Tensor, ""]:
        if logits.ndim != 3 or logits.shape[0] != len(self.answer):
            raise ValueError(f"The metric is for {len(self.answer)} pairs' logits [batch, pos, d_vocab]; got "
                             f"{tuple(logits.shape)}.")
        rows = torch.arange(len(self.answer), device=logits.device)
        return self.at_positions(logits[rows, self.positions.to(logits.device)])

    def at_positions(self, logits: Float[Tensor, "batch d_vocab"]) -> Float[Tensor, ""]:
        if logits.ndim != 2 or logits.shape[0] != len(self.answer):
            raise ValueError(f"at_positions takes the {len(self.answer)} pairs' logits at their positions "
                             f"[batch, d_vocab]; got {tuple(logits.shape)}.")
        rows = torch.arange(len(self.answer), device=logits.device)
        return (logits[rows, self.answer.to(logits.device)] - logits[rows, self.wrong.to(logits.device)]).mean()


@dataclass(frozen=True)
class CircuitTask:
    """Token ids `[batch, pos]` of both runs, their shared padding mask (None: none), and per pair the answer and
    wrong token ids `[batch]` and the position whose logits the metric reads `[batch]`."""

    name: str
    clean: Int[Tensor, "batch pos"]
    corrupted: Int[Tensor, "batch pos"]
    attention_mask: Bool[Tensor, "batch pos"] | None
    answer: Int[Tensor, "batch"]
    wrong: Int[Tensor, "batch"]
    position: Int[Tensor, "batch"]

    def __post_init__(self) -> None:
        if self.clean.shape != self.corrupted.shape:
            raise ValueError(f"clean {tuple(self.clean.shape)} and corrupted {tuple(self.corrupted.shape)} token ids "
                             "must have the same shape.")
        batch = self.clean.shape[0]
        for name in ("answer", "wrong", "position"):
            if tuple(getattr(self, name).shape) != (batch,):
                raise ValueError(f"{name} must have one entry per pair, shape [{batch}].")

    def __len__(self) -> int:
        return self.clean.shape[0]

    @property
    def metric(self) -> LogitDifference:
        """Mean logit(answer) − logit(wrong) at each pair's scored position: `task.metric(logits)`."""
        return LogitDifference(self.answer, self.wrong, self.position)

    def inputs(self) -> dict[str, Any]:
        """The arguments the edge functions take: `eap(model, **task.inputs())`."""
        return {"clean_tokens": self.clean, "corrupted_tokens": self.corrupted, "metric": self.metric,
                "attention_mask": self.attention_mask}

    def subset(self, rows: slice | Tensor, name: str | None = None) -> CircuitTask:
        mask = None if self.attention_mask is None else self.attention_mask[rows]
        return CircuitTask(name or self.name, self.clean[rows], self.corrupted[rows], mask, self.answer[rows],
                           self.wrong[rows], self.position[rows])

    def split(self, n_first: int) -> tuple[CircuitTask, CircuitTask]:
        """(the first n pairs, the rest): score on one, measure faithfulness on the held-out other."""
        if not 0 < n_first < len(self):
            raise ValueError(f"split needs 0 < n_first < {len(self)} pairs, got {n_first}.")
        return self.subset(slice(0, n_first), f"{self.name}[:{n_first}]"), \
            self.subset(slice(n_first, None), f"{self.name}[{n_first}:]")

    # ----- building tasks -----------------------------------------------------------------------------------
    @classmethod
    def from_pairs(cls, model: HookedTransformer, pairs: list[dict[str, str]], name: str = "task",
                   line_numbers: list[int] | None = None) -> CircuitTask:
        """Tokenise `[{"clean", "corrupted", "answer", "wrong"}, ...]` (see the module docstring)."""
        if not pairs:
            raise ValueError("A task needs at least one clean/corrupted pair.")
        where = line_numbers or list(range(1, len(pairs) + 1))
        for pair, line in zip(pairs, where):
            missing = [k for k in TASK_KEYS if not isinstance(pair.get(k) if isinstance(pair, dict) else None, str)]
            if missing:
                raise ValueError(f"Pair {line}: needs string fields {list(TASK_KEYS)}; missing or not text: {missing}.")
        clean_rows = [model.to_tokens(p["clean"])[0] for p in pairs]
        corrupted_rows = [model.to_tokens(p["corrupted"])[0] for p in pairs]
        for a, b, pair, line in zip(clean_rows, corrupted_rows, pairs, where):
            if len(a) != len(b):
                raise ValueError(f"Pair {line}: the clean prompt is {len(a)} tokens and the corrupted one {len(b)} "
                                 f"({model.to_str_tokens(pair['clean'])} vs {model.to_str_tokens(pair['corrupted'])}). "
                                 "Edge patching swaps activations position by position, so reword one so both have "
                                 "the same number of tokens (e.g. swap a name for one of the same token length).")
        answer = [single_token(model, p["answer"], "answer", line) for p, line in zip(pairs, where)]
        wrong = [single_token(model, p["wrong"], "wrong", line) for p, line in zip(pairs, where)]
        lengths = torch.tensor([len(row) for row in clean_rows])
        width = int(lengths.max())
        pad = model.pad_token_id if model.pad_token_id is not None else 0
        clean, corrupted = (torch.full((len(pairs), width), pad, dtype=torch.long) for _ in range(2))
        for i, (a, b) in enumerate(zip(clean_rows, corrupted_rows)):
            clean[i, :len(a)], corrupted[i, :len(b)] = a.cpu(), b.cpu()
        mask = torch.arange(width)[None] < lengths[:, None]
        device = model.W_E.device
        return cls(name, clean.to(device), corrupted.to(device), None if bool(mask.all()) else mask.to(device),
                   torch.tensor(answer, device=device), torch.tensor(wrong, device=device), (lengths - 1).to(device))

    @classmethod
    def from_jsonl(cls, model: HookedTransformer, path: str | Path) -> CircuitTask:
        """Read a task file (JSON Lines, see the module docstring); a bad line is an error naming its number."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"No task file {path}: one JSON object per line with keys {list(TASK_KEYS)}.")
        lines, problems = text_lines(path)
        if problems:
            line, why = problems[0]
            raise ValueError(f"{path}, line {line}: {why}.")
        pairs, numbers = [], []
        for number, text in lines:
            if not text.strip():
                continue
            try:
                pairs.append(json.loads(text))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}, line {number}: not JSON ({error.msg}); each line is one object with "
                                 f"keys {list(TASK_KEYS)}.") from None
            numbers.append(number)
        return cls.from_pairs(model, pairs, name=path.stem, line_numbers=numbers)


def single_token(model: HookedTransformer, text: str, what: str, line: int) -> int:
    """The id of `text` as one token (no BOS), or ValueError showing how it splits."""
    ids = model.to_tokens(text, prepend_bos=False)[0].tolist()
    if len(ids) != 1:
        pieces = model.to_str_tokens(text, prepend_bos=False)
        raise ValueError(f"Pair {line}: the {what} {text!r} is {len(ids)} tokens {pieces}, not one; the metric compares "
                         f"single next-token logits, so pick a one-token {what} (often with a leading space, or "
                         f"its first token {pieces[0]!r}).")
    return ids[0]


def induction_task(model: HookedTransformer, n_pairs: int = 64, n_random: int = 12, n_repeat: int = 8,
                   seed: int = 0) -> CircuitTask:
    """The built-in induction task (see the module docstring): prompts of 1 + n_random + n_repeat tokens."""
    if not 1 <= n_repeat < n_random:
        raise ValueError(f"Need 1 <= n_repeat < n_random so the answer is in the first copy; got {n_repeat}, {n_random}.")
    generator = torch.Generator().manual_seed(seed)
    low = min(100, model.cfg.d_vocab // 2)  # skip the lowest ids (bytes and specials in the bundled tokenizers)
    first = torch.randint(low, model.cfg.d_vocab, (n_pairs, n_random), generator=generator)
    other = torch.randint(low, model.cfg.d_vocab, (n_pairs, n_random), generator=generator)
    bos = torch.full((n_pairs, 1), model.cfg.bos_token_id if model.cfg.bos_token_id is not None else 0)
    clean = torch.cat([bos, first, first[:, :n_repeat]], 1)
    corrupted = torch.cat([bos, other, first[:, :n_repeat]], 1)
    device = model.W_E.device
    return CircuitTask("induction", clean.to(device), corrupted.to(device), None, first[:, n_repeat].to(device),
                       other[:, n_repeat].to(device), torch.full((n_pairs,), clean.shape[1] - 1, device=device))


def in_batches(score: Callable[..., Circuit], model: HookedTransformer, task: CircuitTask, batch_size: int,
               **kwargs: Any) -> Circuit:
    """`score(model, **batch.inputs(), **kwargs)` over batches of `batch_size` pairs, averaged with weights
    len(batch) / len(task). For `eap`, `eap_ig`, `edge_ig` and `exact_edge_scores` this equals scoring the whole
    task at once (their scores are linear in the task's metric, a mean over pairs), with one batch's memory."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    total, first = None, None
    for start in range(0, len(task), batch_size):
        part = task.subset(slice(start, start + batch_size))
        scored = score(model, **part.inputs(), **kwargs)
        if scored.scores is None or not bool(scored.in_graph.all()):
            raise ValueError(f"{getattr(score, '__name__', score)} returned no scores; in_batches averages edge scores "
                             "(eap, eap_ig, edge_ig, exact_edge_scores), not searches.")
        weighted = scored.scores * (len(part) / len(task))
        total, first = (weighted, scored) if total is None else (total + weighted, first)
    return Circuit.full(first.graph, total, method=first.method)
