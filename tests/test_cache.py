"""ActivationCache: shorthands, references not copies, conversions."""

import pytest
import torch

from conftest import random_tokens

from interp.cache import derivation


def test_shorthand_indexing(tiny_pair):
    _, model = tiny_pair
    _, cache = model.run_with_cache(random_tokens(101))
    assert cache["pattern", 1] is cache["blocks.1.attn.hook_pattern"]
    assert cache["resid_pre", 0] is cache["blocks.0.hook_resid_pre"]
    assert cache["scale", 1, "ln2"] is cache["blocks.1.ln2.hook_scale"]
    assert cache["scale"] is cache["ln_final.hook_scale"]
    assert ("pattern", 0) in cache and "nonsense" not in cache
    assert set(cache.keys()) == set(cache)


def test_missing_entries_explain_themselves(tiny_pair):
    _, model = tiny_pair
    _, cache = model.run_with_cache(random_tokens(101), names_filter="hook_embed")
    with pytest.raises(KeyError, match="was not cached"):
        cache["pattern", 0]
    with pytest.raises(KeyError, match="Unknown hook name"):
        cache["hook_embd_typo_xyz"]


def test_cache_stores_references_not_copies(tiny_pair):
    _, model = tiny_pair
    seen = {}
    model.add_hook("blocks.0.hook_resid_post", lambda activation, hook: seen.update(ptr=activation.data_ptr()))
    try:
        _, cache = model.run_with_cache(random_tokens(101), names_filter="blocks.0.hook_resid_post")
    finally:
        model.reset_hooks()
    assert cache["resid_post", 0].data_ptr() == seen["ptr"]
    # resid_pre of block 1 is the same tensor as resid_post of block 0: cached once in memory.
    _, cache = model.run_with_cache(random_tokens(101))
    assert cache["resid_pre", 1].data_ptr() == cache["resid_post", 0].data_ptr()


def test_dtype_conversion_and_remove_batch_dim(tiny_pair):
    _, model = tiny_pair
    tokens = random_tokens(101, batch=1)
    _, cache = model.run_with_cache(tokens, dtype=torch.float16)
    assert cache["pattern", 0].dtype == torch.float16
    single = cache.remove_batch_dim()
    assert single["pattern", 0].shape == cache["pattern", 0].shape[1:]
    assert single.to("cpu")["resid_pre", 1].shape == (20, model.cfg.d_model)
    _, batched = model.run_with_cache(random_tokens(101, batch=2))
    with pytest.raises(ValueError, match="batch of 1"):
        batched.remove_batch_dim()


# ----- derived entries: patterns and LayerNorm parts computed on first read -------------------------
DERIVED = ["blocks.1.attn.hook_attn_scores", "blocks.1.attn.hook_pattern", "blocks.0.ln1.hook_scale",
           "blocks.1.ln2.hook_normalized", "ln_final.hook_scale", "ln_final.hook_normalized"]


def test_derived_entries_equal_captured_ones_bit_for_bit(tiny_pair):
    _, model = tiny_pair
    tokens = random_tokens(101, batch=2, pos=13, seed=4)
    _, lazy_cache = model.run_with_cache(tokens)
    assert set(DERIVED) <= set(lazy_cache.derived)  # nothing computed yet
    assert list(lazy_cache) == [n for n in model.hook_names() if n in set(lazy_cache)] and len(lazy_cache) == len(list(lazy_cache))
    noop = [(name, lambda activation, hook: None) for name in DERIVED]  # a hook forces the forward's explicit path
    with model.hooks(noop):
        _, captured = model.run_with_cache(tokens)
    assert not set(DERIVED) & set(captured.derived)
    for name in DERIVED:
        # The derivation is the forward's own arithmetic: from the same run's inputs, the same bits.
        sources, derive = derivation(model, name, [])
        assert torch.equal(derive(*(captured[source] for source in sources)), captured[name]), name
        # The lazy run used fused kernels upstream (fused LayerNorm), so it agrees to float rounding.
        torch.testing.assert_close(lazy_cache[name], captured[name], rtol=1e-5, atol=1e-6)
        assert name not in lazy_cache.derived and lazy_cache[name] is lazy_cache[name]  # computed once, then kept
    torch.testing.assert_close(lazy_cache["pattern", 1].sum(-1), torch.ones(2, 4, 13))


def test_hooks_that_edit_inputs_or_entries_are_respected(tiny_pair):
    _, model = tiny_pair
    tokens = random_tokens(101, batch=1, pos=9, seed=5)

    def double_q(q, hook):
        return 2 * q

    def flatten_scores(scores, hook):
        return torch.where(torch.isinf(scores), scores, torch.zeros_like(scores))

    with model.hooks([("blocks.0.attn.hook_q", double_q)]):  # q edited upstream: the derived pattern sees it
        _, cache = model.run_with_cache(tokens)
        explicit = []
        model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_pattern", lambda p, hook: explicit.append(p.clone()))])
    assert "blocks.0.attn.hook_pattern" in cache.derived
    torch.testing.assert_close(cache["pattern", 0], explicit[0], rtol=0, atol=1e-7)
    with model.hooks([("blocks.0.attn.hook_attn_scores", flatten_scores)]):  # the scores edited: captured, uniform
        _, cache = model.run_with_cache(tokens)
    assert "blocks.0.attn.hook_pattern" not in cache.derived
    torch.testing.assert_close(cache["pattern", 0][0, :, -1], torch.full((4, 9), 1 / 9))


def test_derived_entries_survive_conversions(tiny_pair):
    _, model = tiny_pair
    tokens = random_tokens(101, batch=1, pos=7, seed=6)
    _, cache = model.run_with_cache(tokens, dtype=torch.float64)
    single = cache.remove_batch_dim()
    assert single["pattern", 1].shape == (4, 7, 7) and single["pattern", 1].dtype == torch.float64
    assert cache.to("cpu")["scale"].shape == (1, 7, 1)
    _, only = model.run_with_cache(tokens, names_filter=lambda name: name.endswith("hook_pattern"))
    assert list(only) == [f"blocks.{layer}.attn.hook_pattern" for layer in range(2)]  # q and k are kept internally only


def test_a_stopped_run_lists_only_what_it_reached(tiny_pair):
    _, model = tiny_pair
    tokens = random_tokens(101, batch=2, pos=6, seed=7)
    _, cache = model.run_with_cache(tokens, stop_at_layer=1)
    assert all(name.startswith(("hook_", "blocks.0.")) for name in cache)
    assert "blocks.0.attn.hook_pattern" in cache and "blocks.1.attn.hook_pattern" not in cache
    assert len(dict(cache.items())) == len(cache) == len([n for n in model.hook_names()
                                                         if n.startswith(("hook_", "blocks.0.")) and "input" not in n
                                                         and "result" not in n and "mlp_in" not in n])


def test_remove_batch_dim_checks_the_inputs_of_derived_entries(tiny_pair):
    _, model = tiny_pair
    _, cache = model.run_with_cache(random_tokens(101, batch=2, pos=5), names_filter=lambda n: n.endswith("hook_pattern"))
    with pytest.raises(ValueError, match="needs a batch of 1"):
        cache.remove_batch_dim()


def test_derived_entries_are_computed_at_full_precision_then_converted(tiny_pair):
    _, model = tiny_pair
    tokens = random_tokens(101, batch=1, pos=8, seed=8)
    _, full = model.run_with_cache(tokens)
    _, half = model.run_with_cache(tokens, dtype=torch.bfloat16)
    assert all(t.dtype == torch.float32 for t in half.inputs.values())
    assert half["pattern", 1].dtype == torch.bfloat16
    torch.testing.assert_close(half["pattern", 1], full["pattern", 1].to(torch.bfloat16), rtol=0, atol=0)
