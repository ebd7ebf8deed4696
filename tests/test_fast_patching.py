"""`patch` reruns only the blocks and positions a site can change; it must give the numbers of one full
forward per site (`patch_by_full_reruns`, and a plain `run_with_hooks` written here) on every family.

The runs patch every head at every position (hook_z), the residual stream at every position, keys at
every position, attention patterns, and sites that must run in full (hook_embed), with and without
padding and in both directions.
"""

import functools

import families
import pytest
import torch

from interp.analysis.patching import Site, _Setup, patch, patch_by_full_reruns, patch_head_out_by_pos, patch_resid_pre

TOLERANCE = 1e-5


@functools.cache
def model(case):
    return families.load(case)


@functools.cache
def pair(case):
    clean = families.tokens(case, batch=2, pos=7, seed=1)
    corrupted = clean.clone()
    vocab = model(case).cfg.d_vocab
    corrupted[:, 2] = (corrupted[:, 2] + 5) % vocab
    corrupted[:, 4] = (corrupted[:, 4] + 3) % vocab
    return clean, corrupted


def metric(logits):
    """A logit difference at the last position and a mean over every position (so positions < p count too)."""
    return (logits[:, -1, 3] - logits[:, -1, 4]).mean() + 0.1 * logits[..., 2].mean()


def metric_of_real_positions(logits):
    """`metric` on the positions `left_padding_mask` leaves real in every row (a metric may not read padding)."""
    return (logits[:, -1, 3] - logits[:, -1, 4]).mean() + 0.1 * logits[:, 2:, 2].mean()


def sites_of(case):
    cfg = model(case).cfg
    key = "rot_k" if case in families.ROTARY else "k"
    n_pos = pair(case)[0].shape[1]
    sites = [Site(f"blocks.{layer}.attn.hook_z", pos=pos, head=head)
             for layer in range(cfg.n_layers) for pos in range(n_pos) for head in range(cfg.n_heads)]
    sites += [Site(f"blocks.{layer}.hook_resid_pre", pos=pos) for layer in range(cfg.n_layers) for pos in range(n_pos)]
    sites += [Site(f"blocks.{layer}.attn.hook_{key}", pos=pos, head=0) for layer in range(cfg.n_layers)
              for pos in range(n_pos)]
    sites += [Site("blocks.1.attn.hook_pattern", pos=pos, head=1) for pos in range(n_pos)]
    sites += [Site("blocks.1.hook_mlp_out", pos=3), Site("blocks.0.attn.hook_v", head=0), Site("hook_embed", pos=4)]
    return sites


def left_padding_mask(batch, n_pos):
    mask = torch.ones(batch, n_pos, dtype=torch.long)
    mask[0, :2] = 0
    return mask


@pytest.mark.parametrize("case", list(families.CASES))
def test_fast_patching_equals_full_reruns_on_every_family(case):
    clean, corrupted = pair(case)
    sites = sites_of(case)
    fast = patch(model(case), clean, corrupted, metric, sites, batch_size=8, progress=False)
    full = patch_by_full_reruns(model(case), clean, corrupted, metric, sites, batch_size=8, progress=False)
    assert fast.clean_metric == full.clean_metric and fast.corrupted_metric == full.corrupted_metric
    assert (fast.values - full.values).abs().max() <= TOLERANCE
    assert (full.values - full.corrupted_metric).abs().max() > 1e-3  # the patches do something


@pytest.mark.parametrize("case", ["gpt2", "neox_parallel", "llama_gqa", "mistral_window", "qwen2_bias"])
@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_fast_patching_of_a_padded_batch_equals_full_reruns(case, direction):
    clean, corrupted = pair(case)
    mask = left_padding_mask(*clean.shape)
    sites = sites_of(case)
    fast = patch(model(case), clean, corrupted, metric_of_real_positions, sites, direction=direction, batch_size=5,
                 progress=False, attention_mask=mask)
    full = patch_by_full_reruns(model(case), clean, corrupted, metric_of_real_positions, sites, direction=direction,
                                batch_size=5, progress=False, attention_mask=mask)
    assert (fast.values - full.values).abs().max() <= TOLERANCE
    with pytest.raises(ValueError, match="reads logits at padded positions"):
        patch(model(case), clean, corrupted, metric, sites[:2], progress=False, attention_mask=mask)


@pytest.mark.parametrize("case", ["gpt2", "llama_gqa", "mistral_window"])
def test_fast_patching_equals_one_plain_forward_per_site(case):
    """The reference written without interp.analysis: run_with_hooks with a hook that overwrites one slice."""
    m = model(case)
    clean, corrupted = pair(case)
    clean_cache = m.run_with_cache(clean)[1]
    sites = [Site("blocks.1.attn.hook_z", pos=pos, head=2) for pos in range(clean.shape[1])]
    fast = patch(m, clean, corrupted, metric, sites, progress=False)
    for value, site in zip(fast.values, sites):
        def overwrite(z, hook, pos=site.pos):
            z = z.clone()
            z[:, pos, 2] = clean_cache[hook.name][:, pos, 2]
            return z
        with torch.no_grad():
            expected = float(metric(m.run_with_hooks(corrupted, fwd_hooks=[(site.hook_name, overwrite)])))
        assert abs(float(value) - expected) <= TOLERANCE


@pytest.mark.parametrize("case", ["gpt2", "llama_gqa"])
def test_patching_clean_into_clean_is_exactly_the_clean_metric(case):
    clean, _ = pair(case)
    result = patch(model(case), clean, clean, metric, sites_of(case), progress=False)
    assert (result.values == result.clean_metric).all()


def test_the_fast_path_runs_partial_forwards(monkeypatch):
    """Only hook_embed (outside the blocks) runs in full; every other site starts at its block and position."""
    calls = {"partial": [], "full": []}
    partial, full = _Setup.run_partial, _Setup.run_full
    monkeypatch.setattr(_Setup, "run_partial", lambda self, rows, layer, start: (
        calls["partial"].append((layer, start)), partial(self, rows, layer, start))[1])
    monkeypatch.setattr(_Setup, "run_full", lambda self, rows: (calls["full"].append(rows), full(self, rows))[1])
    clean, corrupted = pair("llama_gqa")
    sites = [Site("blocks.1.hook_resid_pre", pos=5), Site("hook_embed", pos=4)]
    patch(model("llama_gqa"), clean, corrupted, metric, sites, progress=False)
    assert calls["partial"] == [(1, 5)] and len(calls["full"]) == 1


def test_corrupted_hooks_in_later_blocks_force_full_reruns_and_keep_the_numbers():
    """Noise on a block's output defines the corrupted run there: a site before it cannot start late."""
    m = model("gpt2")
    clean, _ = pair("gpt2")
    noise = torch.randn(1, 1, m.cfg.d_model, generator=torch.Generator().manual_seed(0))
    hooks = [("blocks.1.hook_resid_post", lambda x, hook: x + noise), ("hook_embed", lambda x, hook: x + noise)]
    sites = sites_of("gpt2")
    fast = patch(m, clean, clean, metric, sites, corrupted_hooks=hooks, progress=False)
    full = patch_by_full_reruns(m, clean, clean, metric, sites, corrupted_hooks=hooks, progress=False)
    assert (fast.values - full.values).abs().max() <= TOLERANCE
    assert (full.values - full.corrupted_metric).abs().max() > 1e-3


def test_the_table_functions_use_the_fast_path_and_keep_their_values():
    m = model("neox_serial")
    clean, corrupted = pair("neox_serial")
    heads = patch_head_out_by_pos(m, clean, corrupted, metric, progress=False)
    resid = patch_resid_pre(m, clean, corrupted, metric, progress=False)
    n_layers, n_pos, n_heads = m.cfg.n_layers, clean.shape[1], m.cfg.n_heads
    head_sites = [Site(f"blocks.{l}.attn.hook_z", pos=p, head=h)
                  for l in range(n_layers) for p in range(n_pos) for h in range(n_heads)]
    resid_sites = [Site(f"blocks.{l}.hook_resid_pre", pos=p) for l in range(n_layers) for p in range(n_pos)]
    reference_heads = patch_by_full_reruns(m, clean, corrupted, metric, head_sites, progress=False)
    reference_resid = patch_by_full_reruns(m, clean, corrupted, metric, resid_sites, progress=False)
    assert (heads.values.flatten() - reference_heads.values).abs().max() <= TOLERANCE
    assert (resid.values.flatten() - reference_resid.values).abs().max() <= TOLERANCE
