"""Generation: greedy equals transformers' greedy decoding; sampling is seeded; hooks act."""

import pytest
import torch

from conftest import force_token_hook, random_tokens


def test_greedy_matches_transformers(tiny_pair):
    hf_model, model = tiny_pair
    prompt = random_tokens(101, batch=1, pos=6)
    ours = model.generate(prompt, max_new_tokens=10)
    with torch.no_grad():
        theirs = hf_model.generate(prompt, max_new_tokens=10, do_sample=False, attention_mask=torch.ones_like(prompt),
                                   pad_token_id=0, eos_token_id=None)
    assert ours.tolist() == theirs.tolist()


def test_sampling_is_reproducible_with_a_seed(tiny_pair):
    _, model = tiny_pair
    prompt = random_tokens(101, batch=2, pos=4)
    first = model.generate(prompt, max_new_tokens=12, temperature=1.0, top_k=10, seed=7)
    second = model.generate(prompt, max_new_tokens=12, temperature=1.0, top_k=10, seed=7)
    other = model.generate(prompt, max_new_tokens=12, temperature=1.0, top_k=10, seed=8)
    assert torch.equal(first, second) and not torch.equal(first, other)
    assert first.shape == (2, 16)


def test_top_k_one_is_greedy(tiny_pair):
    _, model = tiny_pair
    prompt = random_tokens(101, batch=1, pos=4)
    assert torch.equal(model.generate(prompt, 8, temperature=0.7, top_k=1, seed=0), model.generate(prompt, 8))


def test_hooks_act_during_generation(tiny_pair):
    _, model = tiny_pair
    prompt = random_tokens(101, batch=1, pos=4)
    calls = []

    to_5 = force_token_hook(model, 5)

    def force_token_5(normalized, hook):
        calls.append(normalized.shape[1])
        return to_5(normalized, hook)

    plain = model.generate(prompt, max_new_tokens=3)
    with model.hooks([("ln_final.hook_normalized", force_token_5)]):
        forced = model.generate(prompt, max_new_tokens=3)
        assert calls == [4, 1, 1]  # the prompt, then only the new token (keys and values come from the cache)
        calls.clear()
        assert torch.equal(model.generate(prompt, max_new_tokens=3, use_past_kv_cache=False), forced)
        assert calls == [4, 5, 6]  # one full forward per step
    assert forced[0, 4:].tolist() == [5, 5, 5] and plain[0, 4:].tolist() != [5, 5, 5]
    assert torch.equal(model.generate(prompt, max_new_tokens=3), plain)  # and the hook is gone


def test_generation_past_context_is_refused(tiny_pair):
    _, model = tiny_pair
    with pytest.raises(ValueError, match="exceeds n_ctx=48"):
        model.generate(random_tokens(101, batch=1, pos=40), max_new_tokens=10)
