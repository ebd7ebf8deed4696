"""Hook points: reading, editing, removal on error, name filters, gradients."""

import pytest
import torch

from conftest import random_tokens


# TransformerLens's GPT-2 hook names, written out by hand (not generated): one block, in forward order, plus the
# opt-in points TransformerLens has behind use_split_qkv_input / use_attn_result / use_hook_mlp_in.
TL_BLOCK_NAMES = [
    "hook_resid_pre", "hook_q_input", "hook_k_input", "hook_v_input", "ln1.hook_scale", "ln1.hook_normalized",
    "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_attn_scores", "attn.hook_pattern", "attn.hook_z",
    "attn.hook_result", "hook_attn_out", "hook_resid_mid", "hook_mlp_in", "ln2.hook_scale", "ln2.hook_normalized",
    "mlp.hook_pre", "mlp.hook_post", "hook_mlp_out", "hook_resid_post",
]


def test_hook_names_follow_the_contract(tiny_pair):
    _, model = tiny_pair
    expected = ["hook_embed", "hook_pos_embed"]
    for layer in range(2):
        expected += [f"blocks.{layer}.{suffix}" for suffix in TL_BLOCK_NAMES]
    expected += ["ln_final.hook_scale", "ln_final.hook_normalized"]
    assert model.cfg.n_layers == 2 and model.hook_names() == expected
    assert sorted(model.opt_in_names) == sorted(f"blocks.{layer}.{suffix}" for layer in range(2) for suffix in
                                                ["hook_q_input", "hook_k_input", "hook_v_input", "attn.hook_result",
                                                                 "hook_mlp_in"])
    for name in ["hook_embed", "hook_pos_embed", "blocks.0.hook_resid_pre", "blocks.1.attn.hook_pattern",
                 "blocks.1.ln2.hook_scale", "blocks.0.mlp.hook_post", "ln_final.hook_normalized"]:
        assert model.hook_point(name).name == name
    assert model.blocks[1].attn.hook_pattern is model.hook_point("blocks.1.attn.hook_pattern")


def test_zero_ablating_a_head_changes_logits_and_identity_does_not(tiny_pair):
    _, model = tiny_pair
    tokens = random_tokens(101)
    with torch.no_grad():
        clean = model(tokens)

        def ablate_head_2(z, hook):
            z = z.clone()
            z[:, :, 2] = 0
            return z

        ablated = model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_z", ablate_head_2)])
        identity = model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_z", lambda z, hook: z)])
        read_only = model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_z", lambda z, hook: None)])
    assert (ablated - clean).abs().max() > 1e-3
    torch.testing.assert_close(identity, clean, rtol=0, atol=0)
    torch.testing.assert_close(read_only, clean, rtol=0, atol=0)


def test_head_ablation_equals_zeroing_its_output_weights(tiny_pair):
    hf_model, model = tiny_pair
    from interp import HookedTransformer
    tokens = random_tokens(101)

    def ablate(z, hook):
        z = z.clone()
        z[:, :, 1] = 0
        return z

    edited = HookedTransformer.from_pretrained(hf_model)
    with torch.no_grad():
        edited.blocks[1].attn.W_O[1] = 0
        torch.testing.assert_close(model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.attn.hook_z", ablate)]),
                                   edited(tokens), rtol=0, atol=1e-6)


def test_hooks_are_removed_when_the_forward_raises(tiny_pair):
    _, model = tiny_pair

    def explode(activation, hook):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        model.run_with_hooks(random_tokens(101), fwd_hooks=[("blocks.1.hook_resid_pre", explode)])
    with pytest.raises(RuntimeError, match="boom"):
        with model.hooks([(lambda name: "hook_pattern" in name, explode)]):
            model(random_tokens(101))
    assert not any(point.has_hooks for point in model.hook_points().values())


def test_hooks_removed_after_keyboard_interrupt(tiny_pair):
    _, model = tiny_pair

    def interrupt(activation, hook):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        model.run_with_hooks(random_tokens(101), fwd_hooks=[("hook_embed", interrupt)])
    assert not any(point.has_hooks for point in model.hook_points().values())


def test_unknown_hook_name_suggests_close_names(tiny_pair):
    _, model = tiny_pair
    with pytest.raises(KeyError, match=r"blocks\.0\.attn\.hook_pattern"):
        model.run_with_hooks(random_tokens(101), fwd_hooks=[("blocks.0.attn.hook_patern", lambda a, h: None)])
    with pytest.raises(KeyError, match="model.hook_names"):
        model.hook_point("completely_wrong")
    with pytest.raises(KeyError, match="Did you mean"):
        model.run_with_cache(random_tokens(101), names_filter=["blocks.0.hook_resid_pr"])


def test_hook_returning_wrong_shape_or_type_is_refused(tiny_pair):
    _, model = tiny_pair
    with pytest.raises(ValueError, match="keep the activation's shape"):
        model.run_with_hooks(random_tokens(101), fwd_hooks=[("blocks.0.hook_resid_pre", lambda a, h: a[:, :1])])
    with pytest.raises(TypeError, match="return a Tensor"):
        model.run_with_hooks(random_tokens(101), fwd_hooks=[("blocks.0.hook_resid_pre", lambda a, h: 3.0)])
    assert not any(point.has_hooks for point in model.hook_points().values())


def test_names_filter_variants(tiny_pair):
    _, model = tiny_pair
    tokens = random_tokens(101)
    _, everything = model.run_with_cache(tokens)
    assert "blocks.0.attn.hook_result" not in everything  # opt-in points are left out by default
    assert len(everything) == len(model.hook_names()) - 5 * model.cfg.n_layers  # q/k/v inputs, result, mlp_in
    _, one = model.run_with_cache(tokens, names_filter="blocks.1.hook_resid_post")
    assert list(one) == ["blocks.1.hook_resid_post"]
    _, some = model.run_with_cache(tokens, names_filter=["hook_embed", "blocks.0.attn.hook_q"])
    assert set(some) == {"hook_embed", "blocks.0.attn.hook_q"}
    _, patterns = model.run_with_cache(tokens, names_filter=lambda name: name.endswith("hook_pattern"))
    assert set(patterns) == {f"blocks.{layer}.attn.hook_pattern" for layer in range(model.cfg.n_layers)}
    for name in some:
        torch.testing.assert_close(some[name], everything[name])


def test_run_with_cache_stops_after_last_needed_layer(tiny_pair):
    _, model = tiny_pair
    reached = []
    model.add_hook("blocks.1.hook_resid_pre", lambda a, h: reached.append(h.name))
    try:
        output, cache = model.run_with_cache(random_tokens(101), names_filter="blocks.0.attn.hook_pattern",
                                             return_type=None)
        assert output is None and reached == [] and list(cache) == ["blocks.0.attn.hook_pattern"]
        model.run_with_cache(random_tokens(101), names_filter="blocks.0.attn.hook_pattern")
        assert reached == ["blocks.1.hook_resid_pre"]
    finally:
        model.reset_hooks()
    assert not model.hook_point("blocks.1.hook_resid_pre").has_hooks


def test_opt_in_per_head_result_sums_to_attn_out(tiny_pair):
    _, model = tiny_pair
    names = ["blocks.1.attn.hook_result", "blocks.1.hook_attn_out"]
    logits, cache = model.run_with_cache(random_tokens(101), names_filter=names)
    torch.testing.assert_close(cache["blocks.1.attn.hook_result"].sum(-2) + model.blocks[1].attn.b_O,
                               cache["blocks.1.hook_attn_out"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits, model(random_tokens(101)).detach(), rtol=1e-5, atol=1e-5)


def test_split_qkv_inputs_match_and_patch_per_head(tiny_pair):
    _, model = tiny_pair
    tokens, other = random_tokens(101, seed=0), random_tokens(101, seed=1)
    with torch.no_grad():
        clean = model(tokens)
        _, other_cache = model.run_with_cache(other, names_filter="blocks.1.hook_resid_pre")
        same = model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.hook_v_input", lambda a, h: None)])
        torch.testing.assert_close(same, clean, rtol=1e-5, atol=1e-5)

        def patch_head_0_values(v_input, hook):
            v_input = v_input.clone()
            v_input[:, :, 0] = other_cache["resid_pre", 1]
            return v_input

        patched = model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.hook_v_input", patch_head_0_values)])
    assert (patched - clean).abs().max() > 1e-4


def test_incl_bwd_gradients_equal_autograd(tiny_pair):
    _, model = tiny_pair
    tokens = random_tokens(101)
    names = ["blocks.0.hook_resid_mid", "blocks.1.attn.hook_pattern", "blocks.1.mlp.hook_post"]
    loss, cache = model.run_with_cache(tokens, names_filter=names, incl_bwd=True, return_type="loss")
    assert all(parameter.grad is None for parameter in model.parameters())

    captured = {}

    def capture(activation, hook):
        activation.retain_grad()
        captured[hook.name] = activation

    with model.hooks([(name, capture) for name in names]):
        reference_loss = model(tokens, return_type="loss")
    grads = torch.autograd.grad(reference_loss, [captured[name] for name in names])
    torch.testing.assert_close(loss.detach(), reference_loss.detach())
    for name, grad in zip(names, grads):
        torch.testing.assert_close(cache[name + "_grad"], grad, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="scalar"):
        model.run_with_cache(tokens, names_filter=names, incl_bwd=True)


def test_backward_hook_can_edit_gradients(tiny_pair):
    _, model = tiny_pair
    tokens = random_tokens(101)
    try:
        with model.hooks(bwd_hooks=[("blocks.0.hook_resid_post", lambda grad, hook: torch.zeros_like(grad))]):
            model(tokens, return_type="loss").backward()
        w_pos_grad, w_in_1_grad = model.W_pos.grad.clone(), model.blocks[1].mlp.W_in.grad.clone()
    finally:
        model.zero_grad(set_to_none=True)
    # everything upstream of layer 0's output only reaches the loss through it: its gradient is zero,
    # while block 1 (after the edit) still gets a gradient, so the backward pass did run
    assert torch.count_nonzero(w_pos_grad) == 0
    assert torch.count_nonzero(w_in_1_grad) > 0
    model(tokens, return_type="loss").backward()  # without the hook W_pos does get a gradient
    try:
        assert torch.count_nonzero(model.W_pos.grad) > 0
    finally:
        model.zero_grad(set_to_none=True)
