"""Padded batches: `model(tokens, attention_mask=mask)` (transformers' convention, 1 = real token).

Every row of a padded batch (left or right, prompts of 5, 9 and 12 tokens) must equal its prompt run alone
at its real positions: logits, per-token and mean loss, every cached activation, attention patterns; the pad
id must not matter; transformers itself (eager, with the mask and position ids from the mask) must agree.
Also: text input pads and masks for you, `padding_side=` finds padding by the pad id, a bad mask is refused
with a message naming the fix, the cache's lazily derived patterns are masked as the hooked ones, and
`start_at_layer` resumes a (padded) forward from a cached residual stream.

References are always independent runs: the prompt alone, transformers, or the full forward.
"""

from __future__ import annotations

import functools

import pytest
import torch

import families
from families import CASES
from interp import HookedTransformer
from interp.analysis.heads import text_scores
from interp.testing import hf_config, random_hf_gpt2
from interp.tokens import gpt2_tokenizer

ALL_CASES = list(CASES)
LENGTHS = (5, 9, 12)  # three prompts of different lengths; 12 > both sliding windows (5 and 4)
WIDTH = max(LENGTHS)
SIDES = ("left", "right")
LOGPROB_ATOL = 1e-5
ACT_ATOL, ACT_RTOL = 1e-5, 1e-5  # as test_parity: activations reach |x| ~ 10-30


# ----- shared runs (module-level caches: each model and reference run is built once) ----------------------
@functools.cache
def model_of(case: str) -> HookedTransformer:
    return families.load(case)


@functools.cache
def prompts(case: str) -> tuple[torch.Tensor, ...]:
    """Three 1-D prompts of LENGTHS tokens."""
    ids = families.tokens(case, batch=len(LENGTHS), pos=WIDTH, seed=11)
    return tuple(ids[row, :n] for row, n in enumerate(LENGTHS))


def pad_batch(rows, side: str, pad="zero", width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens, mask) of 1-D rows padded on `side` to `width`; pad: an int, "zero", or "random" (any id per slot)."""
    width = width or max(len(row) for row in rows)
    tokens = torch.zeros(len(rows), width, dtype=torch.long)
    if pad == "random":
        tokens = torch.randint(0, 100, (len(rows), width), generator=torch.Generator().manual_seed(5))
    elif pad != "zero":
        tokens.fill_(pad)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        where = real(side, len(row), width)
        tokens[i, where] = row
        mask[i, where] = 1
    return tokens, mask


def real(side: str, n: int, width: int = WIDTH) -> slice:
    """The real positions of a row of n tokens padded to `width` on `side`."""
    return slice(width - n, width) if side == "left" else slice(0, n)


def padding(side: str, n: int, width: int = WIDTH) -> slice:
    return slice(0, width - n) if side == "left" else slice(n, width)


def log_probs(logits: torch.Tensor) -> torch.Tensor:
    return logits.double().log_softmax(-1)


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def close(name: str, ours: torch.Tensor, ref: torch.Tensor, atol: float = ACT_ATOL, rtol: float = ACT_RTOL) -> str | None:
    """None if equal within tolerance (infinities must match exactly), else a line saying how they differ."""
    if ours.shape != ref.shape:
        return f"{name}: shape {tuple(ours.shape)} != {tuple(ref.shape)}"
    ours, ref = ours.double(), ref.double()
    inf = torch.isinf(ref)
    if not torch.equal(torch.isinf(ours), inf) or not torch.equal(ours[inf], ref[inf]):
        return f"{name}: infinities differ ({int(torch.isinf(ours).sum())} vs {int(inf.sum())})"
    if torch.isnan(ours).any():
        return f"{name}: NaN"
    error = (ours[~inf] - ref[~inf]).abs()
    bad = error > atol + rtol * ref[~inf].abs()
    if bad.any():
        return f"{name}: max abs error {error.max().item():.3g} ({int(bad.sum())} of {bad.numel()} entries)"
    return None


def report(problems) -> None:
    problems = [p for p in problems if p]
    assert not problems, "\n  ".join(["padded rows differ from the prompts alone:"] + problems[:30])


def is_attention(model: HookedTransformer, name: str) -> bool:
    return model.hook_shapes()[name].endswith("query_pos key_pos")


def materialised(cache) -> dict[str, torch.Tensor]:
    return {name: cache[name] for name in cache}


@functools.cache
def alone(case: str) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """(logits, every cached activation) of each prompt run by itself, batch 1, no mask."""
    model = model_of(case)
    runs = [model.run_with_cache(p[None]) for p in prompts(case)]
    return [logits for logits, _ in runs], [materialised(cache) for _, cache in runs]


@functools.cache
def padded_run(case: str, side: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """(tokens, mask, logits, every cached activation) of the padded batch."""
    tokens, mask = pad_batch(prompts(case), side)
    logits, cache = model_of(case).run_with_cache(tokens, attention_mask=mask)
    return tokens, mask, logits, materialised(cache)


def hooked_patterns(model: HookedTransformer, tokens, **kwargs) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(logits, every layer's hook_pattern) with a hook on hook_pattern: the explicit-attention path."""
    seen: dict[str, torch.Tensor] = {}

    def keep(pattern, hook):
        seen[hook.name] = pattern.detach().clone()

    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(model.cfg.n_layers)]
    with torch.no_grad():
        logits = model.run_with_hooks(tokens, fwd_hooks=[(name, keep) for name in names], **kwargs)
    return logits, seen


# ----- 1. logits ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("case", ALL_CASES)
def test_each_padded_row_equals_its_prompt_alone(case, side):
    """Both attention paths: the fused kernel (no hooks) and the explicit one (hook_pattern hooked)."""
    model = model_of(case)
    tokens, mask = pad_batch(prompts(case), side)
    alone_logits, _ = alone(case)
    with torch.no_grad():
        fused = model(tokens, attention_mask=mask)
    explicit, _ = hooked_patterns(model, tokens, attention_mask=mask)
    for path, logits in (("fused", fused), ("explicit", explicit)):
        for row, n in enumerate(LENGTHS):
            error = max_abs(log_probs(logits[row, real(side, n)]), log_probs(alone_logits[row][0]))
            assert error <= LOGPROB_ATOL, (path, row, n, error)


def test_the_mask_matters():
    """Sanity of the setup: without the mask, left padding does change the real positions' outputs."""
    model = model_of("llama_gqa")
    tokens, mask = pad_batch(prompts("llama_gqa"), "left")
    alone_logits, _ = alone("llama_gqa")
    with torch.no_grad():
        unmasked = model(tokens)
    assert max_abs(log_probs(unmasked[0, real("left", 5)]), log_probs(alone_logits[0][0])) > 1e-2


# ----- 2. loss ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("case", ALL_CASES)
def test_per_token_loss_is_nan_exactly_at_padding(case, side):
    model = model_of(case)
    tokens, mask = pad_batch(prompts(case), side)
    with torch.no_grad():
        losses = model(tokens, attention_mask=mask, return_type="loss", loss_per_token=True)
        singles = [model(p[None], return_type="loss", loss_per_token=True)[0] for p in prompts(case)]
    assert losses.shape == (len(LENGTHS), WIDTH - 1)
    for row, n in enumerate(LENGTHS):
        # loss j predicts token j+1 from token j: real when both are, i.e. the n-1 targets of the prompt
        targets = slice(WIDTH - n, WIDTH - 1) if side == "left" else slice(0, n - 1)
        expected_nan = torch.ones(WIDTH - 1, dtype=torch.bool)
        expected_nan[targets] = False
        assert torch.equal(torch.isnan(losses[row]), expected_nan), (row, losses[row])
        assert max_abs(losses[row, targets], singles[row]) <= 1e-5, row


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("case", ALL_CASES)
def test_mean_loss_is_the_mean_over_real_targets(case, side):
    model = model_of(case)
    tokens, mask = pad_batch(prompts(case), side)
    with torch.no_grad():
        batch_loss = model(tokens, attention_mask=mask, return_type="loss")
        means = [model(p[None], return_type="loss") for p in prompts(case)]
    counts = [n - 1 for n in LENGTHS]
    expected = sum(m.double() * c for m, c in zip(means, counts)) / sum(counts)
    assert batch_loss.ndim == 0 and abs(batch_loss.item() - expected.item()) <= 1e-5, (batch_loss, expected)
    with torch.no_grad():  # both= gives the same loss
        _, both_loss = model(tokens, attention_mask=mask, return_type="both")
    assert abs(both_loss.item() - expected.item()) <= 1e-5


# ----- 3. every cached activation --------------------------------------------------------------------------
@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("case", ALL_CASES)
def test_every_cached_hook_at_real_positions_equals_the_prompt_alone(case, side):
    model = model_of(case)
    _, _, _, cache = padded_run(case, side)
    _, singles = alone(case)
    assert set(cache) == set(singles[0]) and len(cache) > 20
    problems = []
    for name, activation in cache.items():
        for row, n in enumerate(LENGTHS):
            ref = singles[row][name][0]
            where = real(side, n)
            if is_attention(model, name):
                # [head, real queries, real keys]; with left padding the real keys are offset as the queries are
                ours = activation[row][:, where, where]
                problems.append(close(f"{name} row {row}", ours, ref))
                pad_keys = activation[row][:, where, padding(side, n)]
                if name.endswith("hook_pattern"):
                    if pad_keys.numel() and not bool((pad_keys == 0).all()):
                        problems.append(f"{name} row {row}: real queries attend to padding")
                elif pad_keys.numel() and not bool((pad_keys == float("-inf")).all()):
                    problems.append(f"{name} row {row}: scores at padded keys are not -inf")
            else:
                problems.append(close(f"{name} row {row}", activation[row, where], ref))
    report(problems)


@pytest.mark.parametrize("case", ["gpt2", "neox_parallel", "llama_gqa"])
def test_opt_in_hooks_at_real_positions_equal_the_prompt_alone(case):
    """The per-head hooks (hook_result, hook_q/k/v_input) are cached only when named; they follow the mask too."""
    model = model_of(case)
    names = sorted(model.opt_in_names)
    assert names
    tokens, mask = pad_batch(prompts(case), "left")
    _, cache = model.run_with_cache(tokens, names_filter=names, attention_mask=mask)
    problems = []
    for row, (p, n) in enumerate(zip(prompts(case), LENGTHS)):
        _, single = model.run_with_cache(p[None], names_filter=names)
        problems += [close(f"{name} row {row}", cache[name][row, real("left", n)], single[name][0]) for name in names]
    report(problems)


# ----- 4. head scores on text -------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["gpt2", "mistral_window", "qwen2_bias"])
def test_text_scores_of_a_padded_batch_equal_one_sequence_at_a_time(case):
    model = model_of(case)
    generator = torch.Generator().manual_seed(2)
    a, b = (torch.randint(2, 90, (n,), generator=generator) for n in (5, 8))
    sequences = [torch.cat([a, a]), torch.cat([b, b, b[:3]])]  # 10 and 19 tokens, with repeats to score
    batched = text_scores(model, sequences, batch_size=2, progress=False)
    one_by_one = text_scores(model, sequences, batch_size=1, progress=False)
    assert batched.n_queries == one_by_one.n_queries and all(batched.n_queries.values())
    for score_type, table in one_by_one.scores.items():
        assert max_abs(batched.scores[score_type], table) <= 1e-6, score_type


# ----- 5. the pad id does not matter -----------------------------------------------------------------------
@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("case", ALL_CASES)
def test_the_pad_id_does_not_matter(case, side):
    model = model_of(case)
    outputs = {}
    for pad in (0, 7, "random"):
        tokens, mask = pad_batch(prompts(case), side, pad=pad)
        with torch.no_grad():
            outputs[pad] = model(tokens, attention_mask=mask)
        if pad == "random":  # the explicit-attention path too
            outputs[pad, "explicit"] = hooked_patterns(model, tokens, attention_mask=mask)[0]
    for key, logits in outputs.items():
        for row, n in enumerate(LENGTHS):
            reference = outputs[0][row, real(side, n)]
            assert max_abs(logits[row, real(side, n)], reference) <= 1e-6 * max(1.0, reference.abs().max().item()), \
                (key, row)


# ----- 6. transformers agrees -----------------------------------------------------------------------------
@functools.cache
def hf_of(case: str):
    return families.hf_model(case)


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("case", ALL_CASES)
def test_padded_batch_matches_transformers(case, side):
    """transformers (eager) with the mask and position ids counted over real tokens, as generation does."""
    tokens, mask = pad_batch(prompts(case), side)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        theirs = hf_of(case)(tokens, attention_mask=mask, position_ids=position_ids).logits
        ours = model_of(case)(tokens, attention_mask=mask)
    for row, n in enumerate(LENGTHS):
        where = real(side, n)
        error = max_abs(log_probs(ours[row, where]), log_probs(theirs[row, where]))
        assert error <= LOGPROB_ATOL, (row, error)


# ----- 7. padding is never NaN; a padded query attends only to itself ---------------------------------------
@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("case", ALL_CASES)
def test_padded_batch_has_no_nan_anywhere(case, side):
    model = model_of(case)
    tokens, mask, logits, cache = padded_run(case, side)
    _, hooked = hooked_patterns(model, tokens, attention_mask=mask)
    assert torch.isfinite(logits).all()
    for name, activation in cache.items():
        assert not torch.isnan(activation).any(), name
        if not name.endswith("hook_attn_scores"):  # scores are -inf where attention is not allowed
            assert torch.isfinite(activation).all(), name
        else:
            assert not (activation == float("inf")).any(), name
    for name, patterns in hooked.items():
        sums = patterns.sum(-1)  # every query row, real or padded, is a distribution
        assert torch.isfinite(patterns).all() and max_abs(sums, torch.ones_like(sums)) <= 1e-5, name


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("case", ALL_CASES)
def test_a_padded_query_attends_only_to_itself(case, side):
    """Both the cache's derived patterns and those a hook on hook_pattern sees (the explicit path)."""
    model = model_of(case)
    tokens, mask, _, cache = padded_run(case, side)
    _, hooked = hooked_patterns(model, tokens, attention_mask=mask)
    problems = []
    for layer in range(model.cfg.n_layers):
        name = f"blocks.{layer}.attn.hook_pattern"
        for source, patterns in (("cache", cache[name]), ("hooked", hooked[name])):
            for row, n in enumerate(LENGTHS):
                for query in range(WIDTH)[padding(side, n)]:
                    own = torch.zeros(WIDTH)
                    own[query] = 1
                    row_pattern = patterns[row, :, query]
                    if not torch.equal(row_pattern, own.expand_as(row_pattern)):
                        problems.append(f"{source} {name} row {row} padded query {query}: "
                                        f"{row_pattern[0].numpy().round(3).tolist()} (head 0), expected one-hot")
    assert not problems, "\n  ".join([f"{len(problems)} padded query rows are not one-hot on themselves:"]
                                      + problems[:6])


# ----- 8. text input -----------------------------------------------------------------------------------------
@functools.cache
def hf_tiny_gpt2():
    """A tiny GPT-2 (n_embd 32) with GPT-2's vocabulary, so the real tokenizer fits."""
    return random_hf_gpt2(hf_config(n_layer=2, n_head=4, n_embd=32, n_positions=64), seed=3)


@functools.cache
def text_model(pad: str = "none") -> HookedTransformer:
    """pad: "none" (neither tokenizer nor config has a pad id), "tokenizer" (pad token "!" = id 0),
    "config" (config pad_token_id 13)."""
    tokenizer = gpt2_tokenizer()
    hf = hf_tiny_gpt2()
    if pad == "tokenizer":
        tokenizer.pad_token = "!"
    if pad == "config":
        hf = random_hf_gpt2(hf_config(n_layer=2, n_head=4, n_embd=32, n_positions=64, pad_token_id=13), seed=3)
    return HookedTransformer.from_pretrained(hf, tokenizer=tokenizer)


TEXTS = ["a b", "a b c d", "The cat sat on the mat, and then"]


@pytest.mark.parametrize("padding_side", [None, "right", "left"])
def test_text_input_is_padded_and_masked(padding_side):
    model = text_model()
    kwargs = {} if padding_side is None else {"padding_side": padding_side}
    with torch.no_grad():
        batch = model(TEXTS, **kwargs)
        singles = [model(text) for text in TEXTS]
    side = padding_side or "right"
    width = batch.shape[1]
    assert width == max(s.shape[1] for s in singles) and width > min(s.shape[1] for s in singles)
    for row, single in enumerate(singles):
        n = single.shape[1]
        error = max_abs(log_probs(batch[row, real(side, n, width)]), log_probs(single[0]))
        assert error <= LOGPROB_ATOL, (row, error)
    with torch.no_grad():  # run_with_cache pads the same way and records the mask
        logits, cache = model.run_with_cache(TEXTS, **kwargs)
    tokens, mask = model.tokenize(TEXTS, padding_side=side)
    assert torch.equal(cache.attention_mask, mask.bool())
    assert max_abs(logits, batch) <= 1e-5


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("pad, expected_fill", [("none", 50256), ("tokenizer", 0), ("config", 13)])
def test_tokenize_pads_with_the_pad_id_and_masks(pad, expected_fill, side):
    model = text_model(pad)
    assert model.pad_token_id == (None if pad == "none" else expected_fill)
    tokens, mask = model.tokenize(TEXTS, padding_side=side)
    singles = [model.tokenize(text)[0][0] for text in TEXTS]
    assert tokens.shape == (len(TEXTS), max(len(s) for s in singles)) and mask.shape == tokens.shape
    width = tokens.shape[1]
    for row, single in enumerate(singles):
        n = len(single)
        assert torch.equal(tokens[row, real(side, n, width)], single)
        assert mask[row, real(side, n, width)].eq(1).all() and mask[row, padding(side, n, width)].eq(0).all()
        assert tokens[row, padding(side, n, width)].eq(expected_fill).all()
    assert int(mask.sum()) == sum(len(s) for s in singles)
    assert set(mask.unique().tolist()) == {0, 1}


# ----- 9. padding_side on token ids ----------------------------------------------------------------------
@functools.cache
def gpt2_with_pad_id(pad_token_id: int) -> HookedTransformer:
    hf = families.hf_model("gpt2")  # BOS = EOS = 100
    hf.config.pad_token_id = pad_token_id
    model = HookedTransformer.from_pretrained(hf)
    assert model.pad_token_id == pad_token_id
    return model


@pytest.mark.parametrize("side", SIDES)
def test_padding_side_masks_the_run_of_pad_ids_at_that_end(side):
    pad = 7
    model = gpt2_with_pad_id(pad)
    rows = [p.clone() for p in prompts("gpt2")]
    rows[1][3] = pad  # a pad id inside a prompt is a real token: only the run at the padded end is padding
    rows[2][0 if side == "right" else -1] = pad  # ... also at the far end of the row
    tokens, mask = pad_batch(rows, side, pad=pad)
    with torch.no_grad():
        found = model(tokens, padding_side=side)
        given = model(tokens, attention_mask=mask)
        singles = [model(row[None]) for row in rows]
    assert max_abs(found, given) <= 1e-6
    for row, n in enumerate(LENGTHS):
        assert max_abs(log_probs(found[row, real(side, n)]), log_probs(singles[row][0])) <= LOGPROB_ATOL, row
    _, cache = model.run_with_cache(tokens, padding_side=side)
    assert torch.equal(cache.attention_mask, mask.bool())


def test_padding_side_without_a_pad_id_is_refused():
    model = model_of("gpt2")
    assert model.pad_token_id is None
    tokens, _ = pad_batch(prompts("gpt2"), "left")
    for side in SIDES:
        with pytest.raises(ValueError, match="no pad_token_id.*attention_mask="):
            model(tokens, padding_side=side)


def test_left_padding_side_with_pad_equal_to_bos_is_refused():
    model = gpt2_with_pad_id(100)  # the BOS id
    tokens, _ = pad_batch(prompts("gpt2"), "left", pad=100)
    with pytest.raises(ValueError, match="also the BOS id"):
        model(tokens, padding_side="left")


# ----- 10. bad masks ---------------------------------------------------------------------------------------
def test_bad_masks_are_refused_with_the_fix():
    model = model_of("llama_gqa")
    tokens, mask = pad_batch(prompts("llama_gqa"), "left")
    with pytest.raises(ValueError, match=r"attention_mask has shape \(3, 11\).*one 0/1 entry per token"):
        model(tokens, attention_mask=mask[:, 1:])
    with pytest.raises(ValueError, match=r"attention_mask has shape \(2, 12\)"):
        model(tokens, attention_mask=mask[:2])
    for bad_value in (2, 0.5, -1):
        bad = mask.clone().to(torch.float if isinstance(bad_value, float) else torch.long)
        bad[0, -1] = bad_value
        with pytest.raises(ValueError, match="only 0 and 1"):
            model(tokens, attention_mask=bad)
    empty = mask.clone()
    empty[1] = 0
    with pytest.raises(ValueError, match=r"rows \[1\] are all padding"):
        model(tokens, attention_mask=empty)
    with pytest.raises(ValueError, match=r"rows \[1\] are all padding"):
        model.run_with_cache(tokens, attention_mask=empty)


def test_a_mask_with_text_is_refused():
    model = text_model()
    _, mask = model.tokenize(TEXTS)
    with pytest.raises(ValueError, match="attention_mask goes with token ids only"):
        model(TEXTS, attention_mask=mask)
    with pytest.raises(ValueError, match="attention_mask goes with token ids only"):
        model.run_with_cache(TEXTS, attention_mask=mask)


def test_float_and_bool_masks_of_zeros_and_ones_are_accepted():
    model = model_of("gpt2")
    tokens, mask = pad_batch(prompts("gpt2"), "left")
    with torch.no_grad():
        reference = model(tokens, attention_mask=mask)
        for variant in (mask.bool(), mask.float()):
            assert max_abs(model(tokens, attention_mask=variant), reference) == 0


# ----- 11. the cache's derived patterns are masked like the hooked ones -------------------------------------
@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("case", ALL_CASES)
def test_cache_mask_and_derived_patterns_match_hooked_ones(case, side):
    model = model_of(case)
    tokens, mask = pad_batch(prompts(case), side)
    _, cache = model.run_with_cache(tokens, attention_mask=mask)
    assert cache.attention_mask.dtype == torch.bool and torch.equal(cache.attention_mask, mask.bool())
    _, hooked = hooked_patterns(model, tokens, attention_mask=mask)
    for layer in range(model.cfg.n_layers):
        name = f"blocks.{layer}.attn.hook_pattern"
        assert name in cache.derived, "the pattern should be derived from q/k after the run, not captured"
        assert max_abs(cache[name], hooked[name]) <= 1e-6, name
    _, unpadded = model.run_with_cache(tokens)
    assert unpadded.attention_mask.dtype == torch.bool and bool(unpadded.attention_mask.all())
    assert unpadded.attention_mask.shape == tokens.shape


# ----- 12. start_at_layer -----------------------------------------------------------------------------------
@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "left-padded"])
@pytest.mark.parametrize("case", ALL_CASES)
def test_start_at_layer_resumes_the_forward(case, padded):
    model = model_of(case)
    n_layers = model.cfg.n_layers
    if padded:
        tokens, mask = pad_batch(prompts(case), "left")
        kwargs = {"attention_mask": mask}
    else:
        tokens, mask = families.tokens(case, batch=2, pos=WIDTH, seed=4), None
        kwargs = {}
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens, **kwargs)
        full_loss = model(tokens, return_type="loss", **kwargs)
        full_per_token = model(tokens, return_type="loss", loss_per_token=True, **kwargs)
        residuals = {k: cache[f"blocks.{k}.hook_resid_pre"] for k in range(n_layers)}
        residuals[n_layers] = cache[f"blocks.{n_layers - 1}.hook_resid_post"]
        for k, residual in residuals.items():
            resumed = model(residual, start_at_layer=k, **kwargs)
            assert max_abs(resumed, logits) <= 1e-5 * max(1.0, logits.abs().max().item()), k
        loss = model(residuals[1], start_at_layer=1, tokens=tokens, return_type="loss", **kwargs)
        assert abs(loss.item() - full_loss.item()) <= 1e-5
        per_token = model(residuals[1], start_at_layer=1, tokens=tokens, return_type="loss", loss_per_token=True,
                          **kwargs)
        assert torch.equal(torch.isnan(per_token), torch.isnan(full_per_token))
        assert max_abs(per_token.nan_to_num(), full_per_token.nan_to_num()) <= 1e-5
        # start and stop compose: [start, stop) of the blocks
        mid = model(residuals[0], start_at_layer=0, stop_at_layer=1, **kwargs)
        assert close("start 0 stop 1", mid, residuals[1]) is None
        last = model(residuals[1], start_at_layer=1, stop_at_layer=2, **kwargs)
        assert close("start 1 stop 2", last, residuals[2]) is None
        assert close("stop 1", model(tokens, stop_at_layer=1, **kwargs), residuals[1]) is None


def test_start_at_layer_needs_the_mask_of_a_padded_batch():
    """Sanity: the resumed padded forward differs without the mask, so the test above can fail."""
    model = model_of("llama_gqa")
    tokens, mask = pad_batch(prompts("llama_gqa"), "left")
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens, attention_mask=mask)
        unmasked = model(cache["blocks.1.hook_resid_pre"], start_at_layer=1)
    assert max_abs(log_probs(unmasked[0, -5:]), log_probs(logits[0, -5:])) > 1e-3


def test_start_at_layer_errors():
    model = model_of("gpt2")
    tokens = families.tokens("gpt2", batch=2, pos=8)
    with torch.no_grad():
        residual = model(tokens, stop_at_layer=1)
        with pytest.raises(ValueError, match=r"residual stream before block 1.*float \[batch, pos, d_model=32\]"):
            model(tokens, start_at_layer=1)  # token ids, not a residual stream
        with pytest.raises(ValueError, match=r"d_model=32"):
            model(residual[..., :16], start_at_layer=1)
        with pytest.raises(ValueError, match="The loss needs the token ids.*tokens="):
            model(residual, start_at_layer=1, return_type="loss")
        with pytest.raises(ValueError, match="must match the residual stream"):
            model(residual, start_at_layer=1, tokens=tokens[:, :5], return_type="loss")
        with pytest.raises(ValueError, match="attention_mask has shape"):
            model(residual, start_at_layer=1, attention_mask=torch.ones(2, 5))
