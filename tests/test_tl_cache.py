"""`interp.tl.ActivationCache`: TransformerLens's cache API, checked against brute-force recomputations from raw
cache entries and weights (per-head results as z_h @ W_O[h], LayerNorm written out, labels written by hand) on
GPT-2, a rotary grouped-query Llama and a parallel-block GPT-NeoX. No transformer_lens needed (see
test_tl_cache_vs_transformer_lens.py for the direct comparison).

Tolerances: fp32 activations summed in another order than the forward's fused kernels differ by rounding
(~1e-6 on these O(1) tiny models); 1e-5 absolute leaves room for it. Anything through a LayerNorm recomputed
outside the forward, or through the unembedding, is compared at 1e-4 (the DESIGN.md contract).
"""

import logging

import pytest
import torch
import torch.nn.functional as F

from families import load, tokens
from interp.analysis import decompose
from interp.cache import ActivationCache as InterpActivationCache
from interp.tl.cache import ActivationCache

CASES = ["gpt2", "llama_gqa", "neox_parallel"]  # learned positions + LN; rotary + GQA + RMSNorm; parallel blocks
ATOL = 1e-5


@pytest.fixture(scope="module", params=CASES)
def case(request):
    return request.param


@pytest.fixture(scope="module")
def model(case):
    return load(case)


def run(model, case, batch=2, pos=8, **kwargs):
    """(logits, a fresh TL cache) of the case's tokens (fresh: some methods change the cache in place)."""
    logits, cache = model.run_with_cache(tokens(case, batch=batch, pos=pos), **kwargs)
    return logits, ActivationCache.from_interp(cache)


def close(actual, expected, atol=ATOL):
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    torch.testing.assert_close(actual.detach(), expected.detach(), atol=atol, rtol=0)


def centred(x):
    return x - x.mean(-1, keepdim=True)


def frozen_ln(model, x, scale):
    """A norm with a given scale, written out: LayerNorm centres then divides, RMSNorm only divides."""
    return (centred(x) if model.cfg.normalization == "LN" else x) / scale


def ln_final_by_hand(model, x):
    """ln_final with x's own statistics, gain and bias (torch's layer_norm, or the RMSNorm formula)."""
    ln, eps = model.ln_final, model.cfg.eps
    if model.cfg.normalization == "LN":
        return F.layer_norm(x, x.shape[-1:], ln.w, ln.b, eps)
    return x / (x.pow(2).mean(-1, keepdim=True) + eps).sqrt() * ln.w


def stream(cache, layer):
    n = cache.model.cfg.n_layers
    return cache[f"blocks.{n - 1}.hook_resid_post"] if layer == n else cache[f"blocks.{layer}.hook_resid_pre"]


def embed_labels(case):
    return ["embed", "pos_embed"] if case == "gpt2" else ["embed"]  # rotary models add no position embedding


# ----- construction, indexing, mapping ------------------------------------------------------------------------
def test_from_interp_is_an_interp_cache_and_keeps_patterns_lazy(model, case):
    _, interp_cache = model.run_with_cache(tokens(case))
    cache = ActivationCache.from_interp(interp_cache)
    assert isinstance(cache, InterpActivationCache)
    assert "blocks.1.attn.hook_pattern" in cache and "blocks.1.attn.hook_pattern" not in cache.cache_dict
    assert list(cache.keys()) == list(interp_cache.keys())
    # The pattern by hand from the (rotated) q and k: causal softmax of q.k / sqrt(d_head), k shared by query groups.
    rotary = "blocks.1.attn.hook_rot_q" in cache
    q, k = (cache[f"blocks.1.attn.hook_{'rot_' if rotary else ''}{x}"] for x in "qk")
    k = k.repeat_interleave(q.shape[2] // k.shape[2], dim=2)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / q.shape[-1] ** 0.5
    future = torch.ones(q.shape[1], q.shape[1], dtype=torch.bool).triu(1)
    close(cache["pattern", 1], scores.masked_fill(future, float("-inf")).softmax(-1))
    assert "blocks.1.attn.hook_pattern" in cache.cache_dict  # computed once, then kept
    # interp's analyses still take it.
    close(decompose.decompose_resid(cache).sum(), stream(cache, model.cfg.n_layers))
    with pytest.raises(TypeError, match="interp.ActivationCache"):
        ActivationCache.from_interp({"hook_embed": torch.zeros(1)})


def test_indexing_as_transformer_lens(model, case):
    _, cache = run(model, case)
    assert cache["pattern", -1] is cache["blocks.1.attn.hook_pattern"]
    assert cache["resid_post", -1] is cache["blocks.1.hook_resid_post"]
    assert cache["resid_pre", -2] is cache["blocks.0.hook_resid_pre"]
    assert cache["scale", 1, "ln1"] is cache["blocks.1.ln1.hook_scale"]
    assert cache["q", 0, "attn"] is cache["blocks.0.attn.hook_q"]
    assert cache["k1"] is cache["blocks.1.attn.hook_k"]
    assert cache["scale0ln2"] is cache["blocks.0.ln2.hook_scale"]
    assert cache["scale"] is cache["ln_final.hook_scale"] and cache["embed"] is cache["hook_embed"]
    assert cache["attn", 1] is cache["pattern", 1] and cache["mlp_post", -1] is cache["blocks.1.mlp.hook_post"]
    assert cache["attn_out", 0, "b"] is cache["blocks.0.hook_attn_out"] and cache["k", 1, "a"] is cache["k1"]
    assert cache[("embed",)] is cache["hook_embed"] and cache["pre0"] is cache["blocks.0.mlp.hook_pre"]
    assert cache.has_embed and cache.has_pos_embed == (case == "gpt2")
    assert len(cache) == len(list(cache)) and set(cache.keys()) == set(dict(cache.items()))
    assert repr(cache).startswith("ActivationCache with keys ['hook_embed'")
    with pytest.raises(KeyError):
        cache["blocks.9.hook_resid_pre"]
    with pytest.raises(TypeError, match="hook name or a tuple"):
        cache[3]
    assert cache.to("cpu") is cache  # in place, as TL


def test_hand_built_cache_as_transformer_lens_users_write_it(model, case):
    _, full = run(model, case)
    cache = ActivationCache({name: full[name] for name in full}, model)  # TL's constructor
    components, labels = cache.accumulated_resid(return_labels=True)
    assert labels == ["0_pre", "1_pre", "final_post"]
    close(components[-1], full["resid_post", 1])


# ----- residual stream --------------------------------------------------------------------------------------
def test_accumulated_resid_labels_and_values(model, case):
    _, cache = run(model, case)
    components, labels = cache.accumulated_resid(return_labels=True)
    assert labels == ["0_pre", "1_pre", "final_post"]
    close(components, torch.stack([cache["resid_pre", 0], cache["resid_pre", 1], cache["resid_post", 1]]))
    assert cache.accumulated_resid(1, return_labels=True)[1] == ["0_pre", "1_pre"]
    assert cache.accumulated_resid(0, return_labels=True)[1] == ["0_pre"]
    close(cache.accumulated_resid(-1), components)  # -1 and None: the stream after the last block
    close(cache.accumulated_resid(pos_slice=-1), components[:, :, -1])
    close(cache.accumulated_resid(pos_slice=(2, 5)), components[:, :, 2:5])
    close(cache.accumulated_resid(pos_slice=[4, 1]), components[:, :, [4, 1]])
    if case == "neox_parallel":
        with pytest.raises(KeyError, match="parallel"):
            cache.accumulated_resid(incl_mid=True)
        return
    mids, labels = cache.accumulated_resid(incl_mid=True, return_labels=True)
    assert labels == ["0_pre", "0_mid", "1_pre", "1_mid", "final_post"]
    close(mids[3], cache["resid_mid", 1])
    assert cache.accumulated_resid(1, mlp_input=True, return_labels=True)[1] == ["0_pre", "1_pre", "1_mid"]


def test_accumulated_resid_apply_ln(model, case):
    logits, cache = run(model, case)
    normalised = cache.accumulated_resid(apply_ln=True)
    raw = cache.accumulated_resid()
    # The final stream: ln_final with each partial residual's own statistics, gain and bias (TL 3.9's logit lens).
    close(normalised, ln_final_by_hand(model, raw), atol=1e-4)
    close(normalised[-1] @ model.W_U + model.b_U, logits, atol=1e-4)  # the last one reads off the logits
    # An earlier stream: every partial residual divided by that block's one cached ln1 scale.
    close(cache.accumulated_resid(1, apply_ln=True), frozen_ln(model, raw[:2], cache["scale", 1, "ln1"]))


def test_decompose_resid_labels_and_sums(model, case):
    _, cache = run(model, case)
    components, labels = cache.decompose_resid(return_labels=True)
    assert labels == embed_labels(case) + ["0_attn_out", "0_mlp_out", "1_attn_out", "1_mlp_out"]
    close(components.sum(0), stream(cache, 2))
    before_1, labels = cache.decompose_resid(1, return_labels=True)
    assert labels == embed_labels(case) + ["0_attn_out", "0_mlp_out"]
    close(before_1.sum(0), stream(cache, 1))
    assert cache.decompose_resid(mode="attn", return_labels=True)[1] == embed_labels(case) + ["0_attn_out", "1_attn_out"]
    assert cache.decompose_resid(mode="mlp", incl_embeds=False, return_labels=True)[1] == ["0_mlp_out", "1_mlp_out"]
    assert cache.decompose_resid(0, return_labels=True)[1] == embed_labels(case)
    # Frozen-scale LN is linear: the normalised components sum to the norm's hook_normalized.
    close(cache.decompose_resid(1, apply_ln=True).sum(0), cache["normalized", 1, "ln1"])
    close(cache.decompose_resid(apply_ln=True, pos_slice=-1).sum(0), cache["ln_final.hook_normalized"][:, -1])
    mlp_in, labels = cache.decompose_resid(1, mlp_input=True, return_labels=True)
    assert labels[-1] == "1_attn_out"
    if case != "neox_parallel":  # sequential blocks: the MLP reads resid_mid (parallel ones read resid_pre)
        close(mlp_in.sum(0), cache["resid_mid", 1])
        close(cache.decompose_resid(1, mlp_input=True, apply_ln=True).sum(0), cache["normalized", 1, "ln2"])


# ----- heads and neurons --------------------------------------------------------------------------------------
def head_result_by_hand(model, cache, layer, head):
    return cache["z", layer][..., head, :] @ model.blocks[layer].attn.W_O[head]


def test_stack_head_results(model, case):
    _, cache = run(model, case)
    n_heads, keys_before = model.cfg.n_heads, len(cache)
    components, labels = cache.stack_head_results(return_labels=True)
    assert labels == [f"L{layer}H{head}" for layer in range(2) for head in range(n_heads)]
    assert len(cache) == keys_before + 2 and "blocks.1.attn.hook_result" in cache  # as TL's compute_head_results
    for index, (layer, head) in enumerate([(layer, head) for layer in range(2) for head in range(n_heads)]):
        close(components[index], head_result_by_hand(model, cache, layer, head))
    close(components[n_heads:].sum(0) + model.blocks[1].attn.b_O, cache["attn_out", 1])
    assert cache.stack_head_results(1, return_labels=True)[1] == [f"L0H{head}" for head in range(n_heads)]
    assert cache.stack_head_results(0).shape == (0, *cache["resid_pre", 0].shape)
    with_rest, labels = cache.stack_head_results(1, incl_remainder=True, return_labels=True, pos_slice=-1)
    assert labels[-1] == "remainder"
    close(with_rest.sum(0), cache["resid_pre", 1][:, -1])
    close(cache.stack_head_results(0, incl_remainder=True)[0], cache["resid_pre", 0])
    close(cache.stack_head_results(apply_ln=True), frozen_ln(model, components, cache["ln_final.hook_scale"]))


def test_compute_head_results_matches_z_times_W_O(model, case, caplog):
    _, cache = run(model, case)
    cache.compute_head_results()
    for layer in range(2):
        expected = torch.stack([head_result_by_hand(model, cache, layer, h) for h in range(model.cfg.n_heads)], dim=-2)
        close(cache["result", layer], expected)
    with caplog.at_level(logging.WARNING):
        cache.compute_head_results()
    assert "already cached" in caplog.text


def test_stack_neuron_results(model, case):
    _, cache = run(model, case)
    d_mlp = model.cfg.d_mlp
    components, labels = cache.stack_neuron_results(-1, neuron_slice=(1, 4), return_labels=True)
    assert labels == ["L0N1", "L0N2", "L0N3", "L1N1", "L1N2", "L1N3"]
    for index, (layer, neuron) in enumerate([(0, 1), (0, 2), (0, 3), (1, 1), (1, 2), (1, 3)]):
        close(components[index], cache["post", layer][..., neuron, None] * model.blocks[layer].mlp.W_out[neuron])
    every = cache.stack_neuron_results(1)
    assert every.shape[0] == d_mlp
    close(every.sum(0) + model.blocks[0].mlp.b_out, cache["mlp_out", 0])
    picked, labels = cache.stack_neuron_results(2, neuron_slice=[5, 0], return_labels=True)
    assert labels == ["L0N5", "L0N0", "L1N5", "L1N0"]
    assert cache.stack_neuron_results(2, neuron_slice=2, return_labels=True)[1] == ["L0N2", "L1N2"]
    with_rest, labels = cache.stack_neuron_results(1, pos_slice=-1, incl_remainder=True, return_labels=True)
    assert labels[-1] == "remainder" and len(labels) == d_mlp + 1
    close(with_rest.sum(0), cache["resid_pre", 1][:, -1])
    close(cache.stack_neuron_results(1, apply_ln=True), frozen_ln(model, every, cache["scale", 1, "ln1"]))
    results = cache.get_neuron_results(-1, pos_slice=-1)
    assert results.shape == (2, d_mlp, model.cfg.d_model)
    close(results[:, 7], cache["post", 1][:, -1, 7, None] * model.blocks[1].mlp.W_out[7])
    assert cache.get_neuron_results(0, neuron_slice=3).shape == (2, 8, model.cfg.d_model)  # an int drops the axis


@pytest.mark.parametrize("width", [None, 3], ids=["1d", "2d"])
def test_projections_equal_projecting_the_stack(model, case, width):
    _, cache = run(model, case)
    shape = (model.cfg.d_model,) if width is None else (model.cfg.d_model, width)
    project = torch.randn(shape, generator=torch.Generator().manual_seed(0))

    def projected(stack):
        return stack @ project

    close(cache.get_neuron_results(1, project_output_onto=project), projected(cache.get_neuron_results(1)))
    for kwargs in [{}, {"apply_ln": True}, {"apply_ln": True, "pos_slice": -1}]:
        close(cache.stack_neuron_results(2, project_output_onto=project, incl_remainder=True, **kwargs),
              projected(cache.stack_neuron_results(2, incl_remainder=True, **kwargs)), atol=1e-4)
        close(cache.get_full_resid_decomposition(project_output_onto=project, **kwargs),
              projected(cache.get_full_resid_decomposition(**kwargs)), atol=1e-4)


def test_get_full_resid_decomposition(model, case):
    _, cache = run(model, case)
    n_heads, d_mlp = model.cfg.n_heads, model.cfg.d_mlp
    heads = [f"L{layer}H{head}" for layer in range(2) for head in range(n_heads)]
    components, labels = cache.get_full_resid_decomposition(return_labels=True)
    assert labels == heads + [f"L{layer}N{n}" for layer in range(2) for n in range(d_mlp)] + embed_labels(case) + ["bias"]
    close(components.sum(0), stream(cache, 2))
    blocks = model.blocks
    close(components[-1][0, 0], blocks[0].attn.b_O + blocks[0].mlp.b_out + blocks[1].attn.b_O + blocks[1].mlp.b_out)
    coarse, labels = cache.get_full_resid_decomposition(1, expand_neurons=False, return_labels=True)
    assert labels == heads[:n_heads] + ["0_mlp_out"] + embed_labels(case) + ["bias"]
    close(coarse.sum(0), stream(cache, 1))
    close(coarse[-1][0, 0], blocks[0].attn.b_O)  # b_out is inside 0_mlp_out
    assert cache.get_full_resid_decomposition(0, return_labels=True)[1] == embed_labels(case) + ["bias"]
    close(cache.get_full_resid_decomposition(apply_ln=True, pos_slice=-1).sum(0),
          cache["ln_final.hook_normalized"][:, -1])
    mlp_in, labels = cache.get_full_resid_decomposition(1, mlp_input=True, return_labels=True)
    assert labels[:2 * n_heads] == heads  # block 1's heads too
    if case != "neox_parallel":
        close(mlp_in.sum(0), cache["resid_mid", 1])
        close(cache.get_full_resid_decomposition(1, mlp_input=True, apply_ln=True).sum(0), cache["normalized", 1, "ln2"])


def test_stack_activation(model, case):
    _, cache = run(model, case)
    close(cache.stack_activation("pattern"), torch.stack([cache["blocks.0.attn.hook_pattern"], cache["pattern", 1]]))
    close(cache.stack_activation("scale", 1, "ln2"), cache["blocks.0.ln2.hook_scale"][None])


# ----- LayerNorm and logits ------------------------------------------------------------------------------------
def test_apply_ln_to_stack_on_a_tensor(model, case):
    _, cache = run(model, case)
    stack = torch.randn(3, 2, 8, model.cfg.d_model, generator=torch.Generator().manual_seed(1))
    close(cache.apply_ln_to_stack(stack), frozen_ln(model, stack, cache["ln_final.hook_scale"]))
    close(cache.apply_ln_to_stack(stack, 1, mlp_input=True), frozen_ln(model, stack, cache["scale", 1, "ln2"]))
    close(cache.apply_ln_to_stack(stack[:, :, 3], 0, pos_slice=3), frozen_ln(model, stack[:, :, 3], cache["scale", 0, "ln1"][:, 3]))
    close(cache.apply_ln_to_stack(stack, batch_slice=[1]), frozen_ln(model, stack[:, [1]], cache["ln_final.hook_scale"][[1]]))
    close(cache.apply_ln_to_stack(stack, recompute_ln=True), ln_final_by_hand(model, stack), atol=1e-4)
    close(cache.apply_ln_to_stack(decompose.decompose_resid(cache)), cache.decompose_resid(apply_ln=True))  # a ComponentStack
    with pytest.raises(ValueError, match="pos_slice / batch_slice"):
        cache.apply_ln_to_stack(stack, pos_slice=(0, 3))


def test_logit_attrs(case):
    model = load(case, process=True)  # fold_ln: ln_final has no gain or bias, so attributions add up to logits
    logits, cache = run(model, case)
    answers = tokens(case, pos=8)[:, -1]
    stack = cache.get_full_resid_decomposition(pos_slice=-1)
    attrs = cache.logit_attrs(stack, answers, pos_slice=-1)
    assert attrs.shape == (stack.shape[0], 2)
    for row in range(2):  # each normalised component dotted with its row's answer column of W_U
        close(attrs[:, row], frozen_ln(model, stack[:, row], cache["ln_final.hook_scale"][row, -1]) @ model.W_U[:, answers[row]])
    close(attrs.sum(0) + model.b_U[answers], logits[[0, 1], -1, answers], atol=1e-4)
    wrong = (answers + 1) % model.cfg.d_vocab
    close(cache.logit_attrs(stack, answers, wrong, pos_slice=-1),
          attrs - cache.logit_attrs(stack, wrong, pos_slice=-1))
    close(cache.logit_attrs(stack, 5, pos_slice=-1), cache.logit_attrs(stack, torch.tensor([5, 5]), pos_slice=-1))
    every = cache.decompose_resid()
    per_position = tokens(case, pos=8).roll(-1, dims=1)
    close(cache.logit_attrs(every, per_position)[:, 1, 3],
          cache.logit_attrs(every[:, :, 3], per_position[[1], 3], pos_slice=3, batch_slice=[1])[:, 0])  # both sliced
    with pytest.raises(ValueError, match="same shape"):
        cache.logit_attrs(stack, answers, 3, pos_slice=-1)
    with pytest.raises(ValueError, match="do not broadcast"):
        cache.logit_attrs(every, answers)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        cache.logit_attrs(stack, model.cfg.d_vocab, pos_slice=-1)


# ----- batch handling ---------------------------------------------------------------------------------------
def test_remove_batch_dim_in_place(model, case, caplog):
    _, batched = run(model, case)
    _, cache = run(model, case, batch=1)
    assert cache.remove_batch_dim() is cache and cache.has_batch_dim is False
    assert "blocks.0.attn.hook_pattern" in cache.derived  # still lazy
    close(cache["pattern", 0], batched["pattern", 0][0])
    close(cache["resid_post", -1], batched["resid_post", -1][0])
    close(cache.accumulated_resid(apply_ln=True, pos_slice=-1), batched.accumulated_resid(apply_ln=True, pos_slice=-1)[:, 0], atol=1e-4)
    close(cache.get_full_resid_decomposition(1), batched.get_full_resid_decomposition(1)[:, 0])
    with caplog.at_level(logging.WARNING):
        assert cache.remove_batch_dim() is cache
    assert "already" in caplog.text and cache["hook_embed"].shape == (8, model.cfg.d_model)
    with pytest.raises(ValueError, match="batch of 1"):
        batched.remove_batch_dim()


def test_apply_slice_to_batch_dim(model, case):
    _, cache = run(model, case, batch=3)
    one = cache.apply_slice_to_batch_dim(1)
    assert one.has_batch_dim is False and cache.has_batch_dim is True
    close(one["pattern", 1], cache["pattern", 1][1])
    close(one["scale"], cache["scale"][1])
    two = cache.apply_slice_to_batch_dim([2, 0])
    close(two["pattern", 0], cache["pattern", 0][[2, 0]])
    close(cache.apply_slice_to_batch_dim((1, 3))["resid_pre", 1], cache["resid_pre", 1][1:3])
    with pytest.raises(ValueError, match="no batch dimension"):
        one.apply_slice_to_batch_dim(0)


def test_padded_batch_slices_and_refuses_padding(model, case):
    token_ids = tokens(case, batch=2, pos=8)
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[0, :3] = 0  # row 0 left-padded: its prompt is positions 3..7
    _, padded = model.run_with_cache(token_ids, attention_mask=mask)
    cache = ActivationCache.from_interp(padded)
    alone = ActivationCache.from_interp(model.run_with_cache(token_ids[:1, 3:])[1])
    row = cache.apply_slice_to_batch_dim([0])  # derived patterns are rebuilt with the selected rows' padding
    close(row["pattern", 1][:, :, 3:, 3:], alone["pattern", 1])
    close(cache.apply_slice_to_batch_dim(1)["pattern", 0], cache["pattern", 0][1])
    close(cache.accumulated_resid(pos_slice=-1)[:, 0], alone.accumulated_resid(pos_slice=-1)[:, 0], atol=1e-4)
    with pytest.raises(ValueError, match="padding"):
        cache.decompose_resid(pos_slice=0)


# ----- bad input -----------------------------------------------------------------------------------------------
def test_bad_input_raises_clearly(model, case):
    _, cache = run(model, case)
    with pytest.raises(IndexError, match="0..2"):
        cache.accumulated_resid(3)
    with pytest.raises(IndexError, match="residual stream"):
        cache.decompose_resid(-2)
    with pytest.raises(IndexError, match="names no block"):
        cache.get_neuron_results(2)
    with pytest.raises(ValueError, match="Invalid pos_slice"):
        cache.accumulated_resid(pos_slice="last")
    with pytest.raises(ValueError, match="is a bool"):
        cache.stack_neuron_results(1, neuron_slice=True)
    with pytest.raises(ValueError, match="mode"):
        cache.decompose_resid(mode="heads")
    with pytest.raises(ValueError, match="No components"):
        cache.decompose_resid(0, incl_embeds=False)
    with pytest.raises(ValueError, match="mlp_input"):
        cache.decompose_resid(mlp_input=True)
    with pytest.raises(ValueError, match="mlp_input"):
        cache.get_full_resid_decomposition(mlp_input=True)
    with pytest.raises(ValueError, match="covers no block"):
        cache.stack_activation("pattern", 0)
    _, partial = model.run_with_cache(tokens(case), names_filter=lambda name: "scale" not in name)
    with pytest.raises(KeyError, match="names_filter"):
        ActivationCache.from_interp(partial).decompose_resid(apply_ln=True)
