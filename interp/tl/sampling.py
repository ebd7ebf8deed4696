"""TransformerLens 3.9's `utils.sample_logits` and `utils.test_prompt` (re-exported by `interp.tl.utils`)."""

from __future__ import annotations

from typing import Any, Optional, Union

import torch
from jaxtyping import Float, Int
from torch import Tensor


def _occurrences(tokens: Int[Tensor, "batch pos"], d_vocab: int, batch: int, what: str
                 ) -> Float[Tensor, "batch d_vocab"]:
    """How often each vocabulary id occurs in each row of tokens."""
    if tokens.ndim != 2 or tokens.shape[0] != batch:
        raise ValueError(f"{what} needs tokens [batch={batch}, pos] (token ids, not embeddings), got shape "
                         f"{tuple(tokens.shape)}.")
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= d_vocab):
        raise ValueError(f"{what}: token ids must be in 0..{d_vocab - 1} (the logits' d_vocab), got "
                         f"{int(tokens.min())}..{int(tokens.max())}.")
    counts = torch.zeros(batch, d_vocab, dtype=torch.get_default_dtype(), device=tokens.device)
    return counts.scatter_add_(1, tokens, torch.ones_like(tokens, dtype=counts.dtype))


def _apply_repetition_penalty(logits: Float[Tensor, "batch d_vocab"], tokens: Int[Tensor, "batch pos"],
                              penalty: float) -> Float[Tensor, "batch d_vocab"]:
    """HF-style: logits of ids present in a row's tokens are divided by penalty if positive, else multiplied."""
    present = _occurrences(tokens, logits.shape[-1], logits.shape[0], "repetition_penalty") > 0
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(present.to(logits.device), penalised, logits)


def sample_logits(final_logits: Float[Tensor, "batch d_vocab"], top_k: Optional[int] = None,
                  top_p: Optional[float] = None, temperature: float = 1.0, freq_penalty: float = 0.0,
                  repetition_penalty: float = 1.0, tokens: Optional[Int[Tensor, "batch pos"]] = None
                  ) -> Int[Tensor, "batch"]:
    """One sampled token id per row, as TransformerLens 3.9 samples.

    Order: repetition penalty (if != 1 and tokens are given); temperature 0 then returns the argmax.
    Otherwise logits / temperature, minus freq_penalty x (count of the id in tokens) if freq_penalty > 0
    (tokens required), then top_k (keep the ids whose logit >= the k-th largest; k is clamped to d_vocab)
    or else top_p (keep the smallest top set whose probability reaches top_p; the top id always stays),
    then a draw from the softmax (torch.distributions.Categorical, in float32) with torch's global RNG.
    """
    if repetition_penalty != 1.0 and tokens is not None:
        final_logits = _apply_repetition_penalty(final_logits, tokens, repetition_penalty)
    if temperature == 0.0:
        return final_logits.argmax(dim=-1)
    final_logits = final_logits / temperature
    if freq_penalty > 0:
        if tokens is None:
            raise ValueError("freq_penalty > 0 needs tokens= (the ids generated so far) to count repeats.")
        counts = _occurrences(tokens, final_logits.shape[-1], final_logits.shape[0], "freq_penalty")
        final_logits = (final_logits - freq_penalty * counts.to(final_logits.device)).to(final_logits.dtype)
    if top_k is not None:
        if top_k <= 0:
            raise ValueError(f"top_k must be a positive int, got {top_k}; use None to keep every token.")
        kth_largest = final_logits.topk(min(top_k, final_logits.shape[-1]), dim=-1).values[..., -1:]
        final_logits = final_logits.masked_fill(final_logits < kth_largest, -float("inf"))
    elif top_p is not None:
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}.")
        sorted_logits, sorted_ids = torch.sort(final_logits, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # Drop an id once the ids ranked above it already reach top_p (the first id is always kept).
        drop_sorted = torch.zeros_like(cumulative, dtype=torch.bool)
        drop_sorted[..., 1:] = cumulative[..., :-1] > top_p
        drop = drop_sorted.scatter(-1, sorted_ids, drop_sorted)
        final_logits = final_logits.masked_fill(drop, -float("inf"))
    return torch.distributions.categorical.Categorical(logits=final_logits.to(torch.float32)).sample()


def _printer() -> Any:
    """rich's print where rich is installed (as TL prints), else print without rich's [b] markup."""
    try:
        from rich import print as rich_print
    except ImportError:
        return lambda text: print(text.replace("[b]", "").replace("[/b]", ""))
    return rich_print


@torch.no_grad()
def test_prompt(prompt: str, answer: Union[str, list[str]], model: Any, prepend_space_to_answer: bool = True,
                print_details: bool = True, prepend_bos: Optional[bool] = None, top_k: int = 10) -> None:
    """Print how the model ranks `answer` after `prompt`, as TransformerLens 3.9 prints it (returns None).

    One answer: each of its tokens, teacher-forced. A list of answers: their first tokens, as alternatives for
    the next token. Prints the tokenized prompt and answer(s), then per answer position the rank, logit and
    probability of the answer token(s) and the top_k tokens, and finally the ranks. The model needs
    to_tokens, to_str_tokens, to_string and a forward returning logits (interp and TL models both have them).
    """
    answers = [answer] if isinstance(answer, str) else list(answer)
    if not answers:
        raise ValueError("test_prompt needs an answer: a string or a non-empty list of strings.")
    n_answers = len(answers)
    multiple = n_answers > 1
    if prepend_space_to_answer:
        answers = [text if text.startswith(" ") else " " + text for text in answers]
    answer_tokens = model.to_tokens(answers, prepend_bos=False)
    if multiple:
        answer_tokens = answer_tokens[:, :1]
    prompt_tokens = model.to_tokens(prompt, prepend_bos=prepend_bos).repeat(answer_tokens.shape[0], 1)
    tokens = torch.cat((prompt_tokens, answer_tokens), dim=1)
    prompt_str_tokens = model.to_str_tokens(prompt, prepend_bos=prepend_bos)
    answer_str_tokens = [model.to_str_tokens(text, prepend_bos=False) for text in answers]
    prompt_length = len(prompt_str_tokens)
    answer_length = 1 if multiple else len(answer_str_tokens[0])
    rich_print = _printer()

    if print_details:
        print("Tokenized prompt:", prompt_str_tokens)
        if multiple:
            print("Tokenized answers:", answer_str_tokens)
        else:
            print("Tokenized answer:", answer_str_tokens[0])
    logits = model(tokens)
    probs = logits.softmax(dim=-1)
    ranks = []
    for index in range(prompt_length, prompt_length + answer_length):
        targets = tokens[:, index]
        target_strings = [strings[index - prompt_length] for strings in answer_str_tokens]
        position_probs = probs[:, index - 1]  # the logits before a token predict it
        sorted_probs, sorted_ids = position_probs.sort(descending=True)
        target_ranks = sorted_ids.argsort(-1)[range(n_answers), targets.cpu()].tolist()
        ranks.append(list(zip(target_strings, target_ranks)))
        if not print_details:
            continue
        lines = [f"[b]Rank: {target_ranks[i]: <8} Logit: {logits[i, index - 1, targets[i]].item():5.2f} "
                 f"Prob: {position_probs[i, targets[i]].item():6.2%} Token: |{target_strings[i]}|[/b]"
                 for i in range(n_answers)]
        rich_print(f"Performance on answer token{'s' if multiple else ''}:\n" + "\n".join(lines))
        for i in range(min(top_k, sorted_ids.shape[-1])):
            print(f"Top {i}th token. Logit: {logits[0, index - 1, sorted_ids[0, i]].item():5.2f} "
                  f"Prob: {sorted_probs[0, i].item():6.2%} Token: |{model.to_string(sorted_ids[0, i])}|")
    rich_print(f"[b]Ranks of the answer tokens:[/b] {[row[0] for row in ranks] if not multiple else ranks}")


test_prompt.__test__ = False  # a library function, not a pytest test, wherever it is imported
