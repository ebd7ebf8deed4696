"""Residual-stream decompositions, frozen-LN stacks, the logit lens and direct logit attribution.

Sums are compared as max |Δ| / max |reference|: the components are fp32 activations of very different
sizes added in another order than the forward's fused addmm, so only rounding (about 1e-7
relative) separates them; 1e-5 is the DESIGN.md contract. Logits are compared at 1e-4, the contract
for anything that passes through a LayerNorm recomputed outside the forward.
"""

import pytest
import torch

from conftest import random_tokens, tiny_hf_config
from interp import HookedTransformer
from interp.analysis import decompose
from interp.analysis.decompose import ComponentStack
from interp.testing import random_hf_gpt2



def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).abs().max() / expected.abs().max()).item()


def resid_at(cache, layer: int) -> torch.Tensor:
    """The residual stream before block `layer` (after the last block for layer = n_layers)."""
    n_layers = cache.model.cfg.n_layers
    return cache[f"blocks.{n_layers - 1}.hook_resid_post"] if layer == n_layers else cache[f"blocks.{layer}.hook_resid_pre"]


@pytest.fixture(scope="module")
def small(gpt2_small_pair):
    """GPT-2 small shape, raw weights, tokens [2, 16], every default hook cached (attention fused, no hook_result)."""
    _, model = gpt2_small_pair
    logits, cache = model.run_with_cache(random_tokens(model.cfg.d_vocab, batch=2, pos=16))
    return model, logits, cache


@pytest.fixture(scope="module")
def small_short(gpt2_small_pair):
    """GPT-2 small shape on [1, 8] tokens: per-neuron stacks of every layer take 37k × 8 × 768 floats (0.9 GB)."""
    _, model = gpt2_small_pair
    return model.run_with_cache(random_tokens(model.cfg.d_vocab, batch=1, pos=8, seed=1))[1]


@pytest.fixture(scope="module", params=["raw", "processed"])
def tiny_run(request):
    """A 4-layer tiny model with randomised LN, raw or with all four processing steps (fold_ln, centring...)."""
    hf_model = random_hf_gpt2(tiny_hf_config("4L-8H-untied-ninner"), seed=3)
    model = HookedTransformer.from_pretrained(hf_model, process=request.param == "processed")
    tokens = random_tokens(model.cfg.d_vocab, batch=2, pos=16, seed=2)
    logits, cache = model.run_with_cache(tokens)
    return model, tokens, logits, cache


def unattributed_logit(model, tokens: torch.Tensor) -> torch.Tensor:
    """The constant part of each logit that logit_attrs leaves out: ln_final.b @ W_U[:, t] + b_U[t]."""
    bias = model.b_U if model.ln_final.b is None else model.ln_final.b @ model.W_U + model.b_U
    return bias[tokens].detach()


# ----- sums ------------------------------------------------------------------------------------
def test_decompositions_sum_to_the_residual_at_every_layer(small):
    model, _, cache = small
    for layer in range(model.cfg.n_layers + 1):
        expected = resid_at(cache, layer)
        assert relative_error(decompose.decompose_resid(cache, layer).sum(), expected) < 1e-5, layer
        full = decompose.get_full_resid_decomposition(cache, layer, expand_neurons=False)
        assert relative_error(full.sum(), expected) < 1e-5, layer
        assert len(full) == 2 + layer * (model.cfg.n_heads + 2)
    parts = decompose.decompose_resid(cache, 2)
    assert parts.labels == ["embed", "pos_embed", "0_attn_out", "0_mlp_out", "1_attn_out", "1_mlp_out"]
    attn = decompose.decompose_resid(cache, 2, mode="attn", incl_embeds=False)
    mlp = decompose.decompose_resid(cache, 2, mode="mlp", incl_embeds=False)
    assert attn.labels == ["0_attn_out", "1_attn_out"] and mlp.labels == ["0_mlp_out", "1_mlp_out"]
    # Without the embeddings the stack is only part of the stream: adding them back closes the sum.
    rebuilt = attn.sum() + mlp.sum() + cache["hook_embed"] + cache["hook_pos_embed"]
    assert relative_error(rebuilt, resid_at(cache, 2)) < 1e-5
    assert decompose.decompose_resid(cache, None).labels[-1] == "11_mlp_out"


def test_full_decomposition_with_every_neuron_sums_to_the_residual(small_short):
    cfg = small_short.model.cfg
    for layer in (1, None):
        full = decompose.get_full_resid_decomposition(small_short, layer)
        n_blocks = cfg.n_layers if layer is None else layer
        assert len(full) == 2 + n_blocks * (cfg.n_heads + 1 + cfg.d_mlp + 1)
        assert full.labels[:4] == ["embed", "pos_embed", "L0H0", "L0H1"] and full.labels[-1] == f"L{n_blocks - 1}_mlp_bias"
        assert relative_error(full.sum(), resid_at(small_short, n_blocks)) < 1e-5
        del full


def test_head_results_plus_bias_sum_to_attn_out(small):
    model, _, cache = small
    for layer in range(model.cfg.n_layers):
        heads = decompose.stack_head_results(cache, layer)
        assert heads.labels[0] == f"L{layer}H0" and heads.labels[-1] == f"L{layer}_bias"
        assert relative_error(heads.sum(), cache[f"blocks.{layer}.hook_attn_out"]) < 1e-5, layer
    every = decompose.stack_head_results(cache, incl_bias=False)
    assert every.components.shape == (model.cfg.n_layers * model.cfg.n_heads, 2, 16, model.cfg.d_model)
    assert every.labels[model.cfg.n_heads] == "L1H0"


def test_head_results_equal_the_opt_in_hook_result(gpt2_small_pair):
    _, model = gpt2_small_pair
    tokens = random_tokens(model.cfg.d_vocab, batch=2, pos=8)
    _, cache = model.run_with_cache(tokens)  # no hook_result: the stack is derived from hook_z
    derived = decompose.stack_head_results(cache, incl_bias=False).components
    results = [f"blocks.{layer}.attn.hook_result" for layer in range(model.cfg.n_layers)]  # opt-in: named
    _, with_results = model.run_with_cache(tokens, names_filter=results)
    cached = torch.cat([with_results[name].movedim(-2, 0) for name in results])
    # Same einsum on the same z and W_O as the forward's hook_result path: equal up to kernel rounding.
    torch.testing.assert_close(derived, cached, atol=1e-6, rtol=0)


def test_neuron_results_sum_to_mlp_out(small_short):
    model = small_short.model
    for layer in (0, 11):
        neurons = decompose.stack_neuron_results(small_short, layer)
        assert len(neurons) == model.cfg.d_mlp + 1 and neurons.labels[-1] == f"L{layer}_mlp_bias"
        assert relative_error(neurons.sum(), small_short[f"blocks.{layer}.hook_mlp_out"]) < 1e-5
    subset = decompose.stack_neuron_results(small_short, 3, neurons=[5, 1200], incl_bias=False)
    assert subset.labels == ["L3N5", "L3N1200"]
    post, W_out = small_short["blocks.3.mlp.hook_post"], model.blocks[3].mlp.W_out
    torch.testing.assert_close(subset["L3N1200"], post[..., 1200, None] * W_out[1200], atol=1e-7, rtol=0)
    assert decompose.stack_neuron_results(small_short, 3, neurons=slice(0, 10)).labels[-2:] == ["L3N9", "L3_mlp_bias"]


# ----- LayerNorm, logits -----------------------------------------------------------------------
def test_frozen_ln_stack_adds_up_to_the_normalized_input(small):
    model, _, cache = small
    full = decompose.get_full_resid_decomposition(cache, expand_neurons=False)
    assert relative_error(decompose.apply_ln_to_stack(cache, full).sum(), cache["ln_final.hook_normalized"]) < 1e-5
    layer = 4
    into_attn = decompose.decompose_resid(cache, layer)
    assert relative_error(decompose.apply_ln_to_stack(cache, into_attn, layer).sum(),
                          cache[f"blocks.{layer}.ln1.hook_normalized"]) < 1e-5
    into_mlp = decompose.decompose_resid(cache, layer + 1)  # drop "4_mlp_out": the rest sums to resid_mid
    into_mlp = ComponentStack(into_mlp.components[:-1], into_mlp.labels[:-1])
    assert relative_error(into_mlp.sum(), cache[f"blocks.{layer}.hook_resid_mid"]) < 1e-5
    assert relative_error(decompose.apply_ln_to_stack(cache, into_mlp, layer, mlp_input=True).sum(),
                          cache[f"blocks.{layer}.ln2.hook_normalized"]) < 1e-5


def frozen_ln_logits(model, cache, stack: ComponentStack) -> torch.Tensor:
    """Frozen-LN stack through ln_final's gain and bias (raw models) and the unembedding, b_U once."""
    normalized = decompose.apply_ln_to_stack(cache, stack).sum()
    if model.ln_final.w is not None:  # raw model: LN gain and bias applied once, to the sum
        normalized = normalized * model.ln_final.w + model.ln_final.b
    return normalized @ model.W_U + model.b_U


def test_frozen_ln_stack_through_the_unembedding_gives_the_logits_gpt2_small(small):
    model, logits, cache = small
    stack = decompose.get_full_resid_decomposition(cache, expand_neurons=False)
    torch.testing.assert_close(frozen_ln_logits(model, cache, stack), logits, atol=1e-4, rtol=0)


def test_frozen_ln_stack_through_the_unembedding_gives_the_logits_tiny(tiny_run):
    model, _, logits, cache = tiny_run  # raw, and processed (LN folded, unembedding centred)
    stack = decompose.get_full_resid_decomposition(cache)
    torch.testing.assert_close(frozen_ln_logits(model, cache, stack), logits, atol=1e-4, rtol=0)


def test_logit_lens_uses_each_layers_own_scale(small):
    model, logits, cache = small
    lens = decompose.logit_lens(cache)
    assert lens.shape == (model.cfg.n_layers + 1, 2, 16, model.cfg.d_vocab)
    torch.testing.assert_close(lens[-1], logits, atol=1e-4, rtol=0)
    early = cache["blocks.3.hook_resid_pre"]
    centred = early - early.mean(-1, keepdim=True)
    own_scale = (centred.pow(2).mean(-1, keepdim=True) + model.cfg.eps).sqrt()
    final_scale = cache["ln_final.hook_scale"]

    def unembed(scale):
        return (centred / scale * model.ln_final.w + model.ln_final.b) @ model.W_U + model.b_U

    torch.testing.assert_close(lens[3], unembed(own_scale), atol=1e-4, rtol=0)
    # The TransformerLens recipe (the final layer's cached scale for every layer) gives other logits.
    assert (unembed(final_scale) - lens[3]).abs().max() > 1e-2
    labels = decompose.accumulated_resid(cache, 2, incl_mid=True).labels
    assert labels == ["0_pre", "0_mid", "1_pre", "1_mid", "2_pre"]
    stack = decompose.accumulated_resid(cache)
    assert stack.labels[-1] == "final_post" and torch.equal(stack["final_post"], cache["blocks.11.hook_resid_post"])


def test_logit_attrs_sum_to_the_logit_minus_its_constant_part(tiny_run):
    model, tokens, logits, cache = tiny_run
    answers = tokens[:, 1:]  # next tokens, predicted at positions 0..14
    stack = decompose.get_full_resid_decomposition(cache, pos_slice=slice(0, 15))
    attrs = decompose.logit_attrs(cache, stack, tokens=answers)
    assert attrs.shape == (len(stack), 2, 15)
    answer_logits = logits[:, :15].gather(-1, answers[..., None])[..., 0]
    torch.testing.assert_close(attrs.sum(0), answer_logits - unattributed_logit(model, answers), atol=1e-4, rtol=0)
    # Logit difference = difference of attributions, whichever way it is asked for.
    correct, wrong = torch.tensor([3, 7]), torch.tensor([11, 2])
    last = decompose.get_full_resid_decomposition(cache, pos_slice=-1)
    difference = decompose.logit_attrs(cache, last, tokens=correct, incorrect_tokens=wrong)
    separately = decompose.logit_attrs(cache, last, tokens=correct) - decompose.logit_attrs(cache, last, tokens=wrong)
    torch.testing.assert_close(difference, separately, atol=1e-5, rtol=0)
    by_direction = decompose.logit_attrs(cache, last, directions=decompose.logit_diff_direction(model, correct, wrong))
    torch.testing.assert_close(by_direction, difference, atol=1e-6, rtol=0)
    true_difference = logits[[0, 1], -1, correct] - logits[[0, 1], -1, wrong]
    constant = unattributed_logit(model, correct) - unattributed_logit(model, wrong)
    torch.testing.assert_close(difference.sum(0), true_difference - constant, atol=1e-4, rtol=0)
    # One answer per sequence ([batch]) broadcasts over positions; a single token over everything.
    per_sequence = decompose.logit_attrs(cache, decompose.decompose_resid(cache), tokens=correct)
    assert per_sequence.shape == (2 + 2 * model.cfg.n_layers, 2, 16)
    at_last = decompose.logit_attrs(cache, decompose.decompose_resid(cache, pos_slice=-1), tokens=correct)
    torch.testing.assert_close(per_sequence[:, :, -1], at_last, atol=1e-6, rtol=0)
    assert decompose.logit_attrs(cache, last, tokens=5).shape == (len(last), 2)


def test_single_token_strings_name_answers():
    class StubTokenizer:
        def encode(self, text, add_special_tokens=False):
            return {" Mary": [5], " John": [9], " Mary Ann": [5, 6]}[text]

    model = HookedTransformer.from_pretrained(random_hf_gpt2(tiny_hf_config(), seed=4), tokenizer=StubTokenizer())
    _, cache = model.run_with_cache(random_tokens(model.cfg.d_vocab, batch=2, pos=6))
    stack = decompose.decompose_resid(cache, pos_slice=-1)
    torch.testing.assert_close(decompose.logit_attrs(cache, stack, tokens=" Mary", incorrect_tokens=" John"),
                               decompose.logit_attrs(cache, stack, tokens=5, incorrect_tokens=9), atol=0, rtol=0)
    torch.testing.assert_close(decompose.logit_diff_direction(model, [" Mary", " John"], [" John", " Mary"]),
                               decompose.logit_diff_direction(model, [5, 9], [9, 5]), atol=0, rtol=0)
    with pytest.raises(ValueError, match="one token"):
        decompose.logit_diff_direction(model, " Mary Ann", " John")


# ----- positions, stacks, cache methods ----------------------------------------------------------
def test_pos_slice_selects_positions_and_is_remembered(tiny_run):
    model, _, _, cache = tiny_run
    full = decompose.get_full_resid_decomposition(cache)
    last = decompose.get_full_resid_decomposition(cache, pos_slice=-1)
    middle = decompose.stack_head_results(cache, 1, pos_slice=slice(2, 5))
    assert last.components.shape == (len(full), 2, model.cfg.d_model) and last.pos_slice == -1
    torch.testing.assert_close(last.components, full.components[:, :, -1], atol=1e-7, rtol=0)  # einsum blocking
    torch.testing.assert_close(middle.components, decompose.stack_head_results(cache, 1).components[:, :, 2:5])
    # The LN scale is sliced like the stack, without being told again.
    torch.testing.assert_close(decompose.apply_ln_to_stack(cache, last).components,
                               decompose.apply_ln_to_stack(cache, full).components[:, :, -1], atol=1e-6, rtol=0)


def test_cache_without_batch_dim(small_short):
    single = small_short.remove_batch_dim()
    stack = decompose.decompose_resid(single, 3, pos_slice=slice(1, 4))
    assert stack.components.shape == (8, 3, 768)
    batched = decompose.decompose_resid(small_short, 3, pos_slice=slice(1, 4))
    torch.testing.assert_close(stack.components, batched.components[:, 0], atol=0, rtol=0)
    assert decompose.logit_attrs(single, decompose.decompose_resid(single, pos_slice=-1), tokens=17).shape == (26,)


def test_component_stack_basics(tiny_run):
    cache = tiny_run[3]
    stack = decompose.decompose_resid(cache, 1)
    assert len(stack) == 4 and torch.equal(stack["embed"], cache["hook_embed"])
    torch.testing.assert_close(stack["0_mlp_out"], cache["blocks.0.hook_mlp_out"], atol=0, rtol=0)
    wide = stack.to(torch.float64)
    assert wide.components.dtype == torch.float64 and wide.labels == stack.labels and stack.components.dtype == torch.float32
    with pytest.raises(KeyError, match="Did you mean"):
        stack["0_mlp_oot"]
    with pytest.raises(ValueError, match="one label each"):
        ComponentStack(stack.components, ["embed"])


def test_cache_methods_delegate(tiny_run):
    cache = tiny_run[3]
    stack = cache.get_full_resid_decomposition(2, expand_neurons=False)
    pairs = [
        (cache.decompose_resid(2, mode="attn").components, decompose.decompose_resid(cache, 2, mode="attn").components),
        (cache.accumulated_resid(2, True, True).components, decompose.accumulated_resid(cache, 2, True, True).components),
        (cache.logit_lens(1), decompose.logit_lens(cache, 1)),
        (cache.stack_head_results(1).components, decompose.stack_head_results(cache, 1).components),
        (cache.stack_neuron_results(1, [0, 3]).components, decompose.stack_neuron_results(cache, 1, [0, 3]).components),
        (stack.components, decompose.get_full_resid_decomposition(cache, 2, expand_neurons=False).components),
        (cache.apply_ln_to_stack(stack, 2).components, decompose.apply_ln_to_stack(cache, stack, 2).components),
        (cache.logit_attrs(stack, tokens=4), decompose.logit_attrs(cache, stack, tokens=4)),
    ]
    for method, function in pairs:
        torch.testing.assert_close(method, function, atol=0, rtol=0)


# ----- errors -------------------------------------------------------------------------------------
def test_errors_name_the_fix(tiny_run):
    model, tokens, _, cache = tiny_run
    with pytest.raises(IndexError, match=r"valid 0\.\.4 \(4 or None"):
        decompose.decompose_resid(cache, 5)
    with pytest.raises(IndexError, match=r"valid 0\.\.4"):
        decompose.accumulated_resid(cache, -1)
    with pytest.raises(IndexError, match=r"block: valid 0\.\.3"):
        decompose.stack_head_results(cache, 4)
    with pytest.raises(IndexError, match=r"neurons must be in 0\.\.95"):
        decompose.stack_neuron_results(cache, 0, neurons=[96])
    with pytest.raises(ValueError, match="mode must be one of"):
        decompose.decompose_resid(cache, mode="heads")
    with pytest.raises(ValueError, match="No components selected"):
        decompose.decompose_resid(cache, 0, incl_embeds=False)
    with pytest.raises(ValueError, match="mlp_input=True selects ln2"):
        decompose.apply_ln_to_stack(cache, decompose.decompose_resid(cache), mlp_input=True)
    last = decompose.decompose_resid(cache, pos_slice=-1)
    with pytest.raises(ValueError, match="built with pos_slice=-1"):
        decompose.apply_ln_to_stack(cache, last, pos_slice=0)
    with pytest.raises(ValueError, match="pass the pos_slice the stack was built with"):
        decompose.apply_ln_to_stack(cache, ComponentStack(last.components, last.labels))
    with pytest.raises(ValueError, match="exactly one of tokens"):
        decompose.logit_attrs(cache, last)
    with pytest.raises(ValueError, match="do not fit"):
        decompose.logit_attrs(cache, last, tokens=torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="in \\[0, 101\\)"):
        decompose.logit_attrs(cache, last, tokens=101)
    _, partial = model.run_with_cache(tokens, names_filter=lambda name: "resid" in name or "embed" in name)
    stack = decompose.decompose_resid(partial, 0)
    with pytest.raises(KeyError, match=r"'ln_final.hook_scale' was not cached; include it in run_with_cache\(names_filter"):
        decompose.apply_ln_to_stack(partial, stack)
    with pytest.raises(KeyError, match="'blocks.0.attn.hook_z' was not cached"):
        decompose.stack_head_results(partial, 0)
