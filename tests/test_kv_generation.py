"""KV-cached generation and the `KVCache`, on every family.

`model.generate` keeps a `KVCache` by default: the first step runs the prompt, every later step only the new
token. Each result here is compared with an independent computation: the same generation rerunning the full
sequence each step (`use_past_kv_cache=False`), the prompt generated alone, or a full forward over the
concatenated tokens. 12 new tokens after prompts of up to 12 tokens go well past mistral_window's window (5)
and qwen2_bias's (4, layer 1 only).
"""

from __future__ import annotations

import functools

import pytest
import torch

import families
from families import CASES
from interp import HookedTransformer
from interp.components.context import KVCache
from interp.testing import hf_config, random_hf_gpt2
from interp.tokens import gpt2_tokenizer

ALL_CASES = list(CASES)
NEW = 12
LENGTHS = (5, 9, 12)


@functools.cache
def model_of(case: str) -> HookedTransformer:
    return families.load(case)


def prompt(case: str, batch: int = 2, pos: int = 6, seed: int = 0) -> torch.Tensor:
    return families.tokens(case, batch=batch, pos=pos, seed=seed)


def left_padded(case: str) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """(prompts of LENGTHS tokens, left-padded tokens, mask)."""
    ids = families.tokens(case, batch=len(LENGTHS), pos=max(LENGTHS), seed=21)
    rows = [ids[i, :n] for i, n in enumerate(LENGTHS)]
    width = max(LENGTHS)
    tokens = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        tokens[i, width - len(row):] = row
        mask[i, width - len(row):] = 1
    return rows, tokens, mask


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def assert_logits_close(ours: torch.Tensor, ref: torch.Tensor, what=None) -> None:
    """Log-probs within 1e-5 and logits within 1e-5 relative to their size."""
    assert ours.shape == ref.shape, (what, ours.shape, ref.shape)
    lp_error = max_abs(ours.double().log_softmax(-1), ref.double().log_softmax(-1))
    assert lp_error <= 1e-5, (what, lp_error)
    assert max_abs(ours, ref) <= 1e-5 * max(1.0, ref.abs().max().item()), (what, max_abs(ours, ref))


# ----- greedy: the cache changes nothing -----------------------------------------------------------------
@pytest.mark.parametrize("case", ALL_CASES)
def test_cached_greedy_generation_equals_full_recomputation(case):
    model = model_of(case)
    tokens = prompt(case)
    cached = model.generate(tokens, max_new_tokens=NEW)
    full = model.generate(tokens, max_new_tokens=NEW, use_past_kv_cache=False)
    assert cached.shape == (2, 6 + NEW)
    assert torch.equal(cached[:, :6], tokens)
    assert cached.tolist() == full.tolist()


@pytest.mark.parametrize("case", ALL_CASES)
def test_cached_generation_with_an_editing_hook_equals_full_recomputation(case):
    """A fixed vector added to blocks.0.hook_resid_post wherever the hook runs: with the cache that is only the new
    position each step, which is the same edit as the full rerun adding it at every position."""
    model = model_of(case)
    tokens = prompt(case, seed=1)
    shift = 3 * torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0))

    def add_shift(resid, hook):
        return resid + shift

    plain = model.generate(tokens, max_new_tokens=NEW)
    with model.hooks([("blocks.0.hook_resid_post", add_shift)]):
        cached = model.generate(tokens, max_new_tokens=NEW)
        full = model.generate(tokens, max_new_tokens=NEW, use_past_kv_cache=False)
    assert cached.tolist() == full.tolist()
    assert cached.tolist() != plain.tolist(), "the edit should change the generation"


# ----- batched left-padded generation ---------------------------------------------------------------------
@pytest.mark.parametrize("case", ALL_CASES)
def test_left_padded_batch_generates_what_each_prompt_alone_generates(case):
    model = model_of(case)
    rows, tokens, mask = left_padded(case)
    width = tokens.shape[1]
    batched = model.generate(tokens, attention_mask=mask, max_new_tokens=NEW)
    rerun = model.generate(tokens, attention_mask=mask, max_new_tokens=NEW, use_past_kv_cache=False)
    assert batched.shape == (len(rows), width + NEW)
    assert torch.equal(batched[:, :width], tokens)
    for i, row in enumerate(rows):
        alone = model.generate(row[None], max_new_tokens=NEW)[0, len(row):]
        assert batched[i, width:].tolist() == alone.tolist(), i
        assert rerun[i, width:].tolist() == alone.tolist(), i


def test_right_padded_batch_is_refused():
    model = model_of("llama_gqa")
    rows, _, _ = left_padded("llama_gqa")
    tokens = torch.zeros(len(rows), max(LENGTHS), dtype=torch.long)
    mask = torch.zeros_like(tokens)
    for i, row in enumerate(rows):
        tokens[i, : len(row)], mask[i, : len(row)] = row, 1
    for use_cache in (True, False):
        with pytest.raises(ValueError, match="must be left-padded"):
            model.generate(tokens, attention_mask=mask, max_new_tokens=3, use_past_kv_cache=use_cache)


# ----- sampling and EOS -----------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["gpt2", "neox_serial", "mistral_window", "qwen2_bias"])
def test_seeded_sampling_is_reproducible(case):
    model = model_of(case)
    tokens = prompt(case)
    first = model.generate(tokens, max_new_tokens=NEW, temperature=1.0, seed=0)
    second = model.generate(tokens, max_new_tokens=NEW, temperature=1.0, seed=0)
    other = model.generate(tokens, max_new_tokens=NEW, temperature=1.0, seed=1)
    assert first.tolist() == second.tolist()
    assert first.tolist() != other.tolist()
    # The same draws from (to ~1e-7) the same distributions: the cache does not change a seeded sample either.
    assert model.generate(tokens, max_new_tokens=NEW, temperature=1.0, seed=0,
                          use_past_kv_cache=False).tolist() == first.tolist()


def eos_forcing_hook(model: HookedTransformer, when: dict[int, int]):
    """A hook for ln_final.hook_normalized that, at generation step `when[row]`, replaces that row's last
    position by a vector whose logits (after ln_final's gain/bias and the unembedding) are 100 x one-hot(EOS)."""
    eos = model.cfg.eos_token_id
    gain, bias = getattr(model.ln_final, "w", None), getattr(model.ln_final, "b", None)
    gain = torch.ones(model.cfg.d_model) if gain is None else gain.detach()
    offset = model.b_U.detach() + (0 if bias is None else bias.detach() @ model.W_U.detach())
    target = 100 * torch.nn.functional.one_hot(torch.tensor(eos), model.cfg.d_vocab).float() - offset
    direction = torch.linalg.lstsq((gain[:, None] * model.W_U.detach()).T, target).solution
    steps = [0]

    def hook(normalized, hook):
        out = normalized.clone()
        for row, step in when.items():
            if step == steps[0]:
                out[row, -1] = direction
        steps[0] += 1
        return out
    return hook


@pytest.mark.parametrize("case", ["gpt2", "llama_gqa"])
def test_stop_at_eos_stops_at_the_configs_eos(case):
    model = model_of(case)
    eos = model.cfg.eos_token_id
    tokens = prompt(case, seed=2)
    plain = model.generate(tokens, max_new_tokens=NEW)
    assert not (plain[:, 6:] == eos).any(), "precondition: no EOS is generated unforced"
    with model.hooks([("ln_final.hook_normalized", eos_forcing_hook(model, {0: 2, 1: 4}))]):
        forced = model.generate(tokens, max_new_tokens=NEW)  # EOS at steps 2 and 4, then the generation goes on
    with model.hooks([("ln_final.hook_normalized", eos_forcing_hook(model, {0: 2, 1: 4}))]):
        stopped = model.generate(tokens, max_new_tokens=NEW, stop_at_eos=True)
    assert forced.shape == (2, 6 + NEW) and forced[0, 6 + 2] == eos and forced[1, 6 + 4] == eos
    assert stopped.shape == (2, 6 + 5), "generation ends at the step where the last row emits EOS"
    assert stopped[0, 6:].tolist() == forced[0, 6:8].tolist() + [eos] * 3  # a finished row keeps emitting EOS
    assert stopped[1, 6:].tolist() == forced[1, 6:11].tolist()
    assert not (forced[:, 6:8] == eos).any()


# ----- text -----------------------------------------------------------------------------------------------
@functools.cache
def text_model() -> HookedTransformer:
    hf = random_hf_gpt2(hf_config(n_layer=2, n_head=4, n_embd=32, n_positions=64), seed=3)
    return HookedTransformer.from_pretrained(hf, tokenizer=gpt2_tokenizer())


def test_text_generation_of_a_list_equals_each_string_alone():
    model = text_model()
    texts = ["a b", "The cat sat on the mat", "Hello"]
    together = model.generate(texts, max_new_tokens=8)
    assert isinstance(together, list) and len(together) == len(texts)
    for text, out in zip(texts, together):
        alone = model.generate(text, max_new_tokens=8)
        assert isinstance(alone, str) and out == alone
        assert out.startswith(text) and len(out) > len(text)
    with pytest.raises(ValueError, match="attention_mask goes with token ids only"):
        model.generate(texts, attention_mask=model.tokenize(texts)[1])


# ----- the KVCache itself -----------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ALL_CASES)
def test_kv_cache_forward_equals_the_full_forward(case):
    model = model_of(case)
    tokens = families.tokens(case, batch=2, pos=14, seed=3)
    with torch.no_grad():
        full = model(tokens)
        cache = KVCache()
        assert len(cache) == 0
        first = model(tokens[:, :7], past_kv_cache=cache)
        assert len(cache) == 7
        chunk = model(tokens[:, 7:13], past_kv_cache=cache)  # several new tokens at once, past the windows
        assert len(cache) == 13
        last = model(tokens[:, 13:], past_kv_cache=cache)
        assert len(cache) == 14 and cache.batch_size == 2
    assert_logits_close(first, full[:, :7], "prefix")
    assert_logits_close(chunk, full[:, 7:13], "chunk")
    assert_logits_close(last, full[:, 13:], "last")


@pytest.mark.parametrize("case", ALL_CASES)
def test_kv_cache_of_a_left_padded_prefix(case):
    """A left-padded prefix (with its mask) then unpadded new tokens: each row as its prompt + tokens alone."""
    model = model_of(case)
    rows, tokens, mask = left_padded(case)
    new = families.tokens(case, batch=len(rows), pos=4, seed=9)
    with torch.no_grad():
        cache = KVCache()
        model(tokens, attention_mask=mask, past_kv_cache=cache)
        logits = model(new, past_kv_cache=cache)
        for i, row in enumerate(rows):
            alone = model(torch.cat([row, new[i]])[None])[0, len(row):]
            assert_logits_close(logits[i], alone, i)


def test_a_forward_that_raises_leaves_the_cache_unchanged():
    model = model_of("qwen2_bias")
    tokens = families.tokens("qwen2_bias", batch=2, pos=12, seed=4)
    with torch.no_grad():
        full = model(tokens)
        cache = KVCache()
        model(tokens[:, :6], past_kv_cache=cache)
    before = ({k: v.clone() for k, v in cache.keys.items()}, {k: v.clone() for k, v in cache.values.items()},
              cache.key_mask.clone())

    def fail(activation, hook):
        raise RuntimeError("hook failed")

    with pytest.raises(RuntimeError, match="hook failed"), model.hooks([("blocks.1.hook_resid_post", fail)]):
        model(tokens[:, 6:9], past_kv_cache=cache)  # layer 0 has run (and seen its new keys) before the raise
    assert len(cache) == 6
    assert cache.keys.keys() == before[0].keys() and cache.values.keys() == before[1].keys()
    assert all(torch.equal(cache.keys[k], before[0][k]) and torch.equal(cache.values[k], before[1][k])
               for k in before[0])
    assert torch.equal(cache.key_mask, before[2])
    with torch.no_grad():  # and it goes on as if the failed forward never happened
        rest = model(tokens[:, 6:], past_kv_cache=cache)
    assert_logits_close(rest, full[:, 6:])


def test_kv_cache_errors():
    model = model_of("gpt2")
    tokens = families.tokens("gpt2", batch=2, pos=8)
    cache = KVCache()
    with torch.no_grad():
        model(tokens[:, :4], past_kv_cache=cache)
        with pytest.raises(ValueError, match="batch of 2.*3 rows.*one cache per batch"):
            model(families.tokens("gpt2", batch=3, pos=2), past_kv_cache=cache)
        with pytest.raises(ValueError, match="stop_at_layer with past_kv_cache"):
            model(tokens[:, 4:], past_kv_cache=cache, stop_at_layer=1)
    assert len(cache) == 4


# ----- what hooks see during cached generation -------------------------------------------------------------
@pytest.mark.parametrize("case", ["gpt2", "neox_parallel", "llama_gqa", "mistral_window", "qwen2_bias"])
def test_hooks_see_one_new_position_per_step(case):
    model = model_of(case)
    tokens = prompt(case, pos=6, seed=5)
    batch, n_prompt, n_new = 2, 6, 8
    resid_shapes, patterns = [], []

    def keep_resid(resid, hook):
        resid_shapes.append(tuple(resid.shape))

    def keep_pattern(pattern, hook):
        patterns.append(pattern.detach().clone())

    with model.hooks([("blocks.0.hook_resid_post", keep_resid), ("blocks.1.attn.hook_pattern", keep_pattern)]):
        out = model.generate(tokens, max_new_tokens=n_new)
    d_model, n_heads = model.cfg.d_model, model.cfg.n_heads
    assert resid_shapes == [(batch, n_prompt, d_model)] + [(batch, 1, d_model)] * (n_new - 1)
    assert [tuple(p.shape) for p in patterns] == [(batch, n_heads, n_prompt, n_prompt)] + [
        (batch, n_heads, 1, n_prompt + step) for step in range(1, n_new)]
    # each step's pattern row is the full forward's row of that query over the keys so far
    _, cache = model.run_with_cache(out, names_filter="blocks.1.attn.hook_pattern")
    full = cache["blocks.1.attn.hook_pattern"]
    assert max_abs(patterns[0], full[:, :, :n_prompt, :n_prompt]) <= 1e-6
    for step in range(1, n_new):
        query = n_prompt + step - 1
        assert max_abs(patterns[step][:, :, 0], full[:, :, query, : query + 1]) <= 1e-6, step
