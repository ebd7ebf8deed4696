"""Our forward equals transformers' GPT-2 on the same weights, activation by activation."""

import pytest
import torch

from conftest import TINY_SHAPES, random_tokens, tiny_hf_config
from interp import HookedTransformer
from interp.testing import random_hf_gpt2

# fp32 log-probabilities differ only by summation order between fused and unfused kernels;
# 1e-5 is the contract in DESIGN.md (measured: ~1e-6 on GPT-2 small, ~5e-7 on tiny configs).
LOGPROB_ATOL = 1e-5


def max_logprob_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float().log_softmax(-1) - b.float().log_softmax(-1)).abs().max().item()


@pytest.mark.parametrize("shape", TINY_SHAPES, ids=list(TINY_SHAPES))
def test_tiny_configs_match_transformers(shape):
    hf_model = random_hf_gpt2(tiny_hf_config(shape), seed=3)
    model = HookedTransformer.from_pretrained(hf_model)
    tokens = random_tokens(101, batch=3, pos=48)
    with torch.no_grad():
        assert max_logprob_diff(model(tokens), hf_model(tokens).logits) <= LOGPROB_ATOL


def test_untied_unembedding_is_used():
    hf_model = random_hf_gpt2(tiny_hf_config("2L-4H-untied"), seed=3)
    model = HookedTransformer.from_pretrained(hf_model)
    assert not torch.equal(model.W_U, model.W_E.T)
    torch.testing.assert_close(model.W_U, hf_model.lm_head.weight.T, rtol=0, atol=0)


def test_gpt2_small_shape_matches_transformers(gpt2_small_pair):
    hf_model, model = gpt2_small_pair
    tokens = random_tokens(50257, batch=2, pos=64)
    with torch.no_grad():
        diff = max_logprob_diff(model(tokens), hf_model(tokens).logits)
    assert diff <= LOGPROB_ATOL, diff


def test_sdpa_transformers_matches_too(gpt2_small_pair):
    hf_model, model = gpt2_small_pair
    hf_model.config._attn_implementation = "sdpa"
    try:
        tokens = random_tokens(50257, batch=1, pos=40, seed=5)
        with torch.no_grad():
            assert max_logprob_diff(model(tokens), hf_model(tokens).logits) <= LOGPROB_ATOL
    finally:
        hf_model.config._attn_implementation = "eager"


def test_bf16_close_to_fp32_transformers(tiny_pair):
    hf_model, _ = tiny_pair
    model_bf16 = HookedTransformer.from_pretrained(hf_model, dtype="bf16")
    assert model_bf16.W_E.dtype == torch.bfloat16
    tokens = random_tokens(101, batch=2, pos=32)
    with torch.no_grad():
        diff = max_logprob_diff(model_bf16(tokens), hf_model(tokens).logits)
    # bf16 keeps 8 mantissa bits (relative error 2^-8 ~ 4e-3 per op); through 2 layers and a
    # 101-way softmax of O(1) logits the observed error is ~2e-2, so 0.1 bounds it with margin
    # while still catching a wrong weight (which moves log-probs by O(1)).
    assert diff < 0.1, diff


def test_hidden_states_and_patterns_match_transformers(gpt2_small_pair):
    hf_model, model = gpt2_small_pair
    tokens = random_tokens(50257, batch=2, pos=24, seed=2)
    with torch.no_grad():
        out = hf_model(tokens, output_hidden_states=True, output_attentions=True)
    _, cache = model.run_with_cache(tokens)
    for layer in range(model.cfg.n_layers):
        # Residual stream entries grow to O(10) with randomised LN; 1e-4 absolute is fp32 rounding there.
        torch.testing.assert_close(cache["resid_pre", layer], out.hidden_states[layer], rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(cache["pattern", layer], out.attentions[layer], rtol=0, atol=1e-6)
    # HF's last hidden state is after ln_f.
    final = cache["ln_final.hook_normalized"] * model.ln_final.w + model.ln_final.b
    torch.testing.assert_close(final, out.hidden_states[-1], rtol=1e-5, atol=1e-4)


def test_internal_identities(tiny_pair):
    _, model = tiny_pair
    tokens = random_tokens(101, batch=2, pos=16)
    _, cache = model.run_with_cache(tokens)
    for layer, block in enumerate(model.blocks):
        torch.testing.assert_close(cache["resid_mid", layer], cache["resid_pre", layer] + cache["attn_out", layer])
        torch.testing.assert_close(cache["resid_post", layer], cache["resid_mid", layer] + cache["mlp_out", layer])
        ln_out = torch.nn.functional.layer_norm(cache["resid_pre", layer], (model.cfg.d_model,),
                                                block.ln1.w, block.ln1.b, model.cfg.eps)
        torch.testing.assert_close(cache[f"blocks.{layer}.ln1.hook_normalized"] * block.ln1.w + block.ln1.b, ln_out)
        centered = cache["resid_pre", layer] - cache["resid_pre", layer].mean(-1, keepdim=True)
        torch.testing.assert_close(cache[f"blocks.{layer}.ln1.hook_scale"],
                                   (centered.pow(2).mean(-1, keepdim=True) + model.cfg.eps).sqrt())
        torch.testing.assert_close(cache["pattern", layer].sum(-1), torch.ones(2, model.cfg.n_heads, 16))
        torch.testing.assert_close(cache["pattern", layer], cache["attn_scores", layer].softmax(-1))
    torch.testing.assert_close(cache["resid_pre", 0], cache["hook_embed"] + cache["hook_pos_embed"])


def test_sdpa_and_explicit_attention_agree(gpt2_small_pair):
    _, model = gpt2_small_pair
    tokens = random_tokens(50257, batch=2, pos=48, seed=4)
    with torch.no_grad():
        fast = model(tokens)
        _, cache = model.run_with_cache(tokens, names_filter=lambda name: name.endswith("hook_z"))
        z_fast = [cache["z", layer] for layer in range(model.cfg.n_layers)]
        slow, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith(("hook_pattern", "hook_z")))
    assert max_logprob_diff(fast, slow) <= 1e-5
    for layer in range(model.cfg.n_layers):
        torch.testing.assert_close(cache["z", layer], z_fast[layer], rtol=0, atol=1e-5)


def test_causal_mask_future_tokens_do_not_matter(tiny_pair):
    _, model = tiny_pair
    tokens = random_tokens(101, batch=1, pos=30)
    changed = tokens.clone()
    changed[:, 17:] = (changed[:, 17:] + 7) % 101
    with torch.no_grad():
        before, after = model(tokens), model(changed)
    torch.testing.assert_close(before[:, :17], after[:, :17], rtol=0, atol=0)
    assert not torch.allclose(before[:, 17:], after[:, 17:])


def test_permutation_equivariance_without_positions():
    """With W_pos zeroed, attention + MLP is permutation-equivariant. The causal mask breaks that
    for multi-layer models, so we (a) check a 1-layer model, whose last position sees the multiset of
    tokens only, and (b) unmask attention through hooks and check full equivariance of every position."""
    hf_model = random_hf_gpt2(tiny_hf_config("2L-4H-untied"), seed=8)
    model = HookedTransformer.from_pretrained(hf_model)
    with torch.no_grad():
        model.W_pos.zero_()
    tokens = random_tokens(101, batch=1, pos=20, seed=9)
    permutation = torch.randperm(20, generator=torch.Generator().manual_seed(0))
    queries, keys = {}, {}

    def keep(store):
        def hook(activation, hook):
            store[hook.name.split(".")[1]] = activation
        return hook

    def unmask(scores, hook):
        layer = hook.name.split(".")[1]
        return torch.einsum("bqhd,bkhd->bhqk", queries[layer], keys[layer]) / model.cfg.d_head ** 0.5

    bidirectional = [(lambda n: n.endswith("hook_q"), keep(queries)), (lambda n: n.endswith("hook_k"), keep(keys)),
                     (lambda n: n.endswith("hook_attn_scores"), unmask)]
    with torch.no_grad(), model.hooks(bidirectional):
        logits, logits_shuffled = model(tokens), model(tokens[:, permutation])
    torch.testing.assert_close(logits[:, permutation], logits_shuffled, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # with the causal mask back, order matters
        assert not torch.allclose(model(tokens)[:, permutation], model(tokens[:, permutation]), atol=1e-3)

    one_layer = HookedTransformer.from_pretrained(random_hf_gpt2(tiny_hf_config("1L-1H-tied"), seed=8))
    with torch.no_grad():
        one_layer.W_pos.zero_()
        prefix_shuffled = torch.cat([tokens[:, :19][:, torch.randperm(19)], tokens[:, 19:]], dim=1)
        torch.testing.assert_close(one_layer(tokens)[:, -1], one_layer(prefix_shuffled)[:, -1], rtol=1e-5, atol=1e-5)


def test_per_token_loss_equals_transformers_shifted_cross_entropy(tiny_pair):
    hf_model, model = tiny_pair
    tokens = random_tokens(101, batch=3, pos=25)
    with torch.no_grad():
        hf_loss = hf_model(tokens, labels=tokens).loss
        logits = hf_model(tokens).logits
        ours = model(tokens, return_type="loss", loss_per_token=True)
        reference = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), tokens[:, 1:], reduction="none")
        logits_both, loss_both = model(tokens, return_type="both")
    assert ours.shape == (3, 24)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5)
    torch.testing.assert_close(ours.mean(), hf_loss, rtol=0, atol=1e-5)
    torch.testing.assert_close(loss_both, hf_loss, rtol=0, atol=1e-5)
    assert logits_both.shape == (3, 25, 101)


def test_stop_at_layer_returns_residual_before_block(tiny_pair):
    _, model = tiny_pair
    tokens = random_tokens(101, batch=2, pos=12)
    _, cache = model.run_with_cache(tokens)
    with torch.no_grad():
        for layer in range(model.cfg.n_layers):
            torch.testing.assert_close(model(tokens, stop_at_layer=layer), cache["resid_pre", layer])
    assert model(tokens, return_type=None) is None
