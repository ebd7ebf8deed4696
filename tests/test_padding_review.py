"""Regressions found in review: right padding in fast patching, KVCache misuse with start_at_layer, holes in masks
of windowed models, run_with_cache with partial forwards, atomic cache commits, ambiguous pad ids."""

import functools

import families
import pytest
import torch

from interp import KVCache
from interp.analysis.patching import Site, patch, patch_by_full_reruns


@functools.cache
def model(case):
    return families.load(case)


def test_fast_patching_of_a_right_padded_batch_equals_full_reruns():
    m = model("gpt2")
    clean = families.tokens("gpt2", batch=2, pos=8, seed=3)
    corrupted = clean.clone()
    corrupted[:, 1] = (corrupted[:, 1] + 1) % m.cfg.d_vocab
    mask = torch.ones_like(clean)
    mask[0, 4:] = 0  # row 0 is 4 tokens long: every chunk starting after it sees a row of padding only

    def metric(logits):  # each row's last real token
        return logits[0, 3, 5] - logits[1, 7, 5]

    sites = [Site(f"blocks.{l}.attn.hook_z", pos=p, head=h) for l in range(2) for p in range(8) for h in range(4)]
    fast = patch(m, clean, corrupted, metric, sites, batch_size=3, progress=False, attention_mask=mask)
    full = patch_by_full_reruns(m, clean, corrupted, metric, sites, batch_size=3, progress=False, attention_mask=mask)
    assert (fast.values - full.values).abs().max() <= 1e-5


def test_a_cache_holding_earlier_blocks_is_refused_with_start_at_layer():
    m = model("llama_gqa")
    ids = families.tokens("llama_gqa", batch=1, pos=6)
    cache = KVCache()
    m(ids[:, :3], past_kv_cache=cache)
    _, full = m.run_with_cache(ids)
    with pytest.raises(ValueError, match="blocks before start_at_layer=1"):
        m(full["blocks.1.hook_resid_pre"][:, 3:], start_at_layer=1, past_kv_cache=cache)
    assert len(cache) == 3
    partial = KVCache()  # filled by a forward that skipped block 0: a later full forward must not use it
    m(full["blocks.1.hook_resid_pre"][:, :3], start_at_layer=1, past_kv_cache=partial)
    with pytest.raises(ValueError, match="no keys of block 0"):
        m(ids[:, 3:4], past_kv_cache=partial)


def test_holes_in_the_mask_of_a_windowed_model_are_refused_and_allowed_elsewhere():
    tokens = families.tokens("mistral_window", batch=1, pos=9)
    holed = torch.ones_like(tokens)
    holed[0, 2] = 0
    with pytest.raises(ValueError, match="padding between real tokens"):
        model("mistral_window")(tokens, attention_mask=holed)
    llama = model("llama_gqa")
    tokens = families.tokens("llama_gqa", batch=1, pos=9)
    keep = holed[0].bool()
    with torch.no_grad():
        out = llama(tokens, attention_mask=holed)[0, keep].log_softmax(-1)
        alone = llama(tokens[:, keep])[0].log_softmax(-1)
    assert (out - alone).abs().max() <= 1e-5


def test_run_with_cache_with_a_partial_forward():
    m = model("gpt2")
    ids = families.tokens("gpt2", batch=1, pos=6)
    _, full = m.run_with_cache(ids)
    with pytest.raises(ValueError, match="start_at_layer=1 runs blocks 1.. only"):
        m.run_with_cache(full["blocks.1.hook_resid_pre"], names_filter=["blocks.0.hook_resid_post"], start_at_layer=1)
    _, later = m.run_with_cache(full["blocks.1.hook_resid_pre"], names_filter=["blocks.1.hook_mlp_out"],
                                start_at_layer=1, return_type=None)
    assert torch.allclose(later["blocks.1.hook_mlp_out"], full["blocks.1.hook_mlp_out"], atol=1e-6)
    cache = KVCache()
    _, first = m.run_with_cache(ids[:, :4], names_filter=["blocks.0.hook_resid_post"], return_type=None,
                                past_kv_cache=cache)
    assert len(cache) == 4 and set(cache.keys) == {0, 1}  # not stopped after block 0: the cache is whole
    assert torch.allclose(first["blocks.0.hook_resid_post"], full["blocks.0.hook_resid_post"][:, :4], atol=1e-6)


def test_a_forward_that_raises_after_the_blocks_leaves_the_cache_as_it_was():
    m = model("gpt2")
    cache = KVCache()
    ids = families.tokens("gpt2", batch=1, pos=6)
    m(ids[:, :3], past_kv_cache=cache)

    def fail(x, hook):
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"), m.hooks([("ln_final.hook_scale", fail)]):
        m(ids[:, 3:], past_kv_cache=cache)
    assert len(cache) == 3 and all(k.shape[1] == 3 for k in cache.keys.values())


def test_right_padding_by_pad_id_is_refused_when_the_pad_id_is_an_eos_id():
    import dataclasses
    m = model("llama_gqa")
    m.cfg = dataclasses.replace(m.cfg, pad_token_id=m.cfg.eos_token_id)
    try:
        with pytest.raises(ValueError, match="also an EOS id"):
            m(families.tokens("llama_gqa", batch=1, pos=4), padding_side="right")
    finally:
        m.cfg = dataclasses.replace(m.cfg, pad_token_id=None)


def test_a_loss_with_no_real_target_is_refused():
    m = model("gpt2")
    ids = families.tokens("gpt2", batch=2, pos=3)
    mask = torch.tensor([[0, 0, 1], [0, 0, 1]])
    with pytest.raises(ValueError, match="no next-token target"):
        m(ids, attention_mask=mask, return_type="loss")
