"""ActivationCache: shorthands, references not copies, conversions."""

import pytest
import torch

from conftest import random_tokens


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
