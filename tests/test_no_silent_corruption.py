"""Silent wrong results and corrupted weights found by porting TransformerLens code: each case reproduces one.

Hooks must never reach the weights, per-head gradients must be gradients, and bad input gets an
error that names the problem and the fix.
"""

import json
import re

import pytest
import torch

from conftest import random_tokens, tiny_hf_config
from interp import HookedTransformer
from interp.cache import ActivationCache, GradientCache
from interp.testing import random_hf_gpt2

TOY_PROMPT = "To be or not to be"


@pytest.fixture(scope="module")
def toy():
    return HookedTransformer.from_pretrained("interp-toy")


def weights_copy(model):
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def assert_weights_equal(model, saved):
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, saved[name]), f"{name} changed"


# ----- hooks never receive a view of a parameter ----------------------------------------------------
def test_in_place_edit_of_pos_embed_leaves_w_pos_alone(toy):
    """The reported case: batch 1, no_grad, `x[:] = 0` in hook_pos_embed used to overwrite W_pos for good."""
    tokens = toy.to_tokens(TOY_PROMPT)
    assert tokens.shape[0] == 1
    with torch.no_grad():
        before = toy(tokens)

        def zero_in_place(x, hook):
            x[:] = 0

        edited = toy.run_with_hooks(tokens, fwd_hooks=[("hook_pos_embed", zero_in_place)])
        after = toy(tokens)
    assert (edited - before).abs().max() > 0.1  # the edit acted on that run...
    torch.testing.assert_close(after, before, rtol=0, atol=0)  # ...and on nothing after it


def _models():
    raw = HookedTransformer.from_pretrained(random_hf_gpt2(tiny_hf_config(), seed=3))
    processed = HookedTransformer.from_pretrained(random_hf_gpt2(tiny_hf_config(), seed=3), process=True)
    return {"raw": raw, "processed": processed}


@pytest.mark.parametrize("kind", ["raw", "processed"])
@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_no_hook_point_receives_a_view_of_a_parameter(kind, batch, grad):
    model = _models()[kind]
    parameters = [(name, p) for name, p in model.named_parameters()]
    spans = [(name, p.untyped_storage().data_ptr(), p.untyped_storage().nbytes()) for name, p in parameters]
    shared = []

    def check(activation, hook):
        start = activation.untyped_storage().data_ptr()
        for name, base, size in spans:
            if base <= start < base + size:
                shared.append((hook.name, name))

    tokens = random_tokens(101, batch=batch, pos=7)
    names = model.hook_names()  # every point, the opt-in ones named explicitly
    with torch.set_grad_enabled(grad):
        model.run_with_hooks(tokens, fwd_hooks=[(name, check) for name in names])
    assert shared == []


@pytest.mark.parametrize("batch", [1, 2])
def test_in_place_edits_at_every_hook_point_never_change_the_weights(batch):
    model = _models()["raw"]
    saved = weights_copy(model)
    tokens = random_tokens(101, batch=batch, pos=7)
    def edit_in_place(x, hook):
        x.mul_(0.5).add_(1.0)

    with torch.no_grad():
        for name in model.hook_names():
            model.run_with_hooks(tokens, fwd_hooks=[(name, edit_in_place)])
    assert_weights_equal(model, saved)


def test_in_place_edit_of_one_split_input_reaches_no_other(tiny_pair):
    _, model = tiny_pair
    tokens = random_tokens(101, pos=6)
    seen = {}

    def zero_q(x, hook):
        x[:, :, 0] = 0

    def keep(x, hook):
        seen[hook.name] = x.clone()

    with torch.no_grad():
        model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_q_input", zero_q), ("blocks.0.hook_k_input", keep),
                                                ("blocks.0.hook_resid_pre", keep)])
    resid = seen["blocks.0.hook_resid_pre"]
    for head in range(model.cfg.n_heads):  # k's copies are still the residual stream, head 0's included
        torch.testing.assert_close(seen["blocks.0.hook_k_input"][:, :, head], resid, rtol=0, atol=0)


# ----- opt-in points need their names ---------------------------------------------------------------
def test_a_catch_all_filter_does_not_turn_on_opt_in_points(tiny_pair):
    _, model = tiny_pair
    tokens = random_tokens(101, batch=2, pos=5)
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: True)
    assert cache["blocks.0.ln1.hook_scale"].shape == (2, 5, 1)
    assert cache["blocks.0.ln1.hook_normalized"].shape == (2, 5, model.cfg.d_model)
    assert not any(name.endswith(("_input", "hook_result")) for name in cache)
    fired = []
    with model.hooks([(lambda name: True, lambda x, hook: fired.append(hook.name))]):
        model(tokens)
    assert fired and not any(name.endswith(("_input", "hook_result")) for name in fired)
    model.add_hook(lambda name: True, lambda x, hook: None)
    try:
        assert not any(model.hook_point(n).has_hooks for n in model.opt_in_names)
    finally:
        model.reset_hooks()
    # Named explicitly they still work, with their documented shapes.
    _, explicit = model.run_with_cache(tokens, names_filter=["blocks.0.hook_q_input", "blocks.0.ln1.hook_scale"])
    assert explicit["blocks.0.hook_q_input"].shape == (2, 5, model.cfg.n_heads, model.cfg.d_model)
    assert explicit["blocks.0.ln1.hook_scale"].shape == (2, 5, model.cfg.n_heads, 1)


# ----- tokens and text ------------------------------------------------------------------------------
def test_to_str_tokens_refuses_a_batch(toy):
    tokens = toy.to_tokens([TOY_PROMPT, "Hello there my friend"])
    with pytest.raises(ValueError, match=r"batch of 2.*for row in tokens"):
        toy.to_str_tokens(tokens)
    with pytest.raises(ValueError, match="list of 2 strings"):
        toy.to_str_tokens([TOY_PROMPT, "Hello"])
    one = toy.to_str_tokens(tokens[:1])
    assert one == toy.to_str_tokens(tokens[0]) and len(one) == tokens.shape[1]
    assert "".join(toy.to_str_tokens(TOY_PROMPT)[1:]) == TOY_PROMPT


def test_generated_text_starts_with_the_prompt_not_bos(toy):
    out = toy.generate(TOY_PROMPT, max_new_tokens=6)
    assert not out.startswith(toy.tokenizer.decode([toy.cfg.bos_token_id]))
    assert out.startswith(TOY_PROMPT)
    ids = toy.generate(toy.to_tokens(TOY_PROMPT), max_new_tokens=6)  # the same greedy run, as token ids
    new_text = toy.tokenizer.decode(ids[0, -6:].tolist())
    assert out[len(TOY_PROMPT):] == new_text


# ----- per-head gradients ---------------------------------------------------------------------------
def _metric(logits):
    return logits[:, -1].log_softmax(-1)[:, 7].sum()


def _tl_style_caches(model, tokens):
    """Activations and gradients captured by hand with forward and backward hooks, as TransformerLens demos do."""
    acts, grads = {}, {}
    names = [n for n in model.hook_names() if n not in model.opt_in_names]
    with model.hooks([(n, lambda x, hook: acts.__setitem__(hook.name, x.detach())) for n in names],
                     [(n, lambda g, hook: grads.__setitem__(hook.name, g.detach())) for n in names]):
        _metric(model(tokens)).backward()
    model.zero_grad(set_to_none=True)
    return acts, grads


def _brute_force_head_gradients(model, tokens):
    """∂metric/∂result_h from autograd on the opt-in per-head outputs: [layer, batch, pos, head, d_model]."""
    results = []

    def keep(x, hook):
        x.retain_grad()
        results.append(x)

    with model.hooks([(f"blocks.{layer}.attn.hook_result", keep) for layer in range(model.cfg.n_layers)]):
        _metric(model(tokens)).backward()
    model.zero_grad(set_to_none=True)
    return [r.grad for r in results]


def test_per_head_gradients_are_gradients_not_grad_z_times_w_o(tiny_pair):
    _, model = tiny_pair
    tokens = random_tokens(101, batch=2, pos=6)
    _, grads = _tl_style_caches(model, tokens)
    with pytest.raises(ValueError, match="do not add up to blocks.0.hook_attn_out.*GradientCache"):
        ActivationCache(grads, model).stack_head_results()
    stack = GradientCache(grads, model).stack_head_results()
    expected = _brute_force_head_gradients(model, tokens)
    for layer in range(model.cfg.n_layers):
        for head in range(model.cfg.n_heads):
            torch.testing.assert_close(stack[f"L{layer}H{head}"], expected[layer][:, :, head], rtol=1e-5, atol=1e-7)


def test_hand_built_gradients_are_refused_even_without_block_outputs_or_for_neuron_subsets(tiny_pair):
    _, model = tiny_pair
    tokens = random_tokens(101, batch=2, pos=6)
    _, grads = _tl_style_caches(model, tokens)
    only_z = {name: grad for name, grad in grads.items() if name.endswith("attn.hook_z")}
    with pytest.raises(ValueError, match="Cannot tell whether this cache holds activations or gradients"):
        ActivationCache(only_z, model).stack_head_results(1)
    with pytest.raises(ValueError, match="do not add up to blocks.0.hook_mlp_out"):
        ActivationCache(grads, model).stack_neuron_results(0, neurons=[0, 5])
    # the same subset of a cache of activations (built by run_with_cache, or by hand with the block output) works
    _, cache = model.run_with_cache(tokens, names_filter=["blocks.0.mlp.hook_post"])
    subset = cache.stack_neuron_results(0, neurons=[0, 5], incl_bias=False).components
    expected = cache["blocks.0.mlp.hook_post"][..., 5, None] * model.blocks[0].mlp.W_out[5]
    torch.testing.assert_close(subset[1], expected, rtol=1e-6, atol=1e-7)


def test_stacks_from_hook_result_alone_include_the_bias(tiny_pair):
    _, model = tiny_pair
    tokens = random_tokens(101, batch=2, pos=6)
    names = ["blocks.0.attn.hook_result", "blocks.0.hook_attn_out"]
    _, cache = model.run_with_cache(tokens, names_filter=names)
    stack = cache.stack_head_results(0)
    torch.testing.assert_close(stack.sum(), cache["blocks.0.hook_attn_out"], rtol=1e-5, atol=1e-6)


def test_gradients_of_an_incl_bwd_cache(tiny_pair):
    _, model = tiny_pair
    tokens = random_tokens(101, batch=1, pos=6)
    _, cache = model.run_with_cache(tokens, return_type="loss", incl_bwd=True)
    grad_cache = cache.gradients()
    assert isinstance(grad_cache, GradientCache)
    torch.testing.assert_close(grad_cache["blocks.1.hook_attn_out"], cache["blocks.1.hook_attn_out_grad"])
    heads = grad_cache.stack_head_results(1, incl_bias=False).components
    # each head's output adds into attn_out: its gradient is attn_out's, at every position
    for head in range(model.cfg.n_heads):
        torch.testing.assert_close(heads[head], cache["blocks.1.hook_attn_out_grad"], rtol=0, atol=0)
    neurons = grad_cache.stack_neuron_results(0, neurons=[0, 5], incl_bias=False).components
    torch.testing.assert_close(neurons[1], cache["blocks.0.hook_mlp_out_grad"], rtol=0, atol=0)
    for refused in (grad_cache.logit_lens, grad_cache.get_full_resid_decomposition,
                    lambda: grad_cache.accumulated_resid(apply_ln=True)):
        with pytest.raises(ValueError, match="holds gradients"):
            refused()
    with pytest.raises(ValueError, match="holds no gradients"):
        model.run_with_cache(tokens)[1].gradients()


def test_activation_stacks_still_work_and_use_hook_result_when_cached(tiny_pair):
    _, model = tiny_pair
    tokens = random_tokens(101, batch=2, pos=6)
    names = [n for n in model.hook_names() if n not in model.opt_in_names] + ["blocks.0.attn.hook_result"]
    _, cache = model.run_with_cache(tokens, names_filter=names)
    stack = cache.stack_head_results(0)
    torch.testing.assert_close(stack.sum(), cache["blocks.0.hook_attn_out"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stack["L0H2"], cache["blocks.0.attn.hook_result"][:, :, 2], rtol=0, atol=0)


# ----- loading --------------------------------------------------------------------------------------
@pytest.fixture()
def saved_toy(tmp_path):
    import shutil

    from interp.loading import BUNDLED_MODELS
    shutil.copytree(BUNDLED_MODELS["interp-toy"], tmp_path / "toy")
    return tmp_path / "toy"


def test_nan_weights_are_refused_naming_the_tensor(saved_toy):
    from safetensors.torch import load_file, save_file
    state = load_file(saved_toy / "model.safetensors")
    state["transformer.h.1.mlp.c_fc.weight"][3, 4] = float("nan")
    state["transformer.h.1.mlp.c_fc.weight"][0, 0] = float("inf")
    save_file(state, saved_toy / "model.safetensors")
    with pytest.raises(ValueError, match=r"'transformer.h.1.mlp.c_fc.weight'.*1 NaN and 1 inf.*damaged"):
        HookedTransformer.from_pretrained(saved_toy)


def test_finite_weights_whose_sum_overflows_still_load(saved_toy):
    from safetensors.torch import load_file, save_file
    state = load_file(saved_toy / "model.safetensors")
    state["transformer.h.0.mlp.c_fc.weight"][0, :2] = 3e38  # finite, but their float32 sum is inf
    save_file(state, saved_toy / "model.safetensors")
    model = HookedTransformer.from_pretrained(saved_toy)
    assert model.blocks[0].mlp.W_in[0, 1] == torch.tensor(3e38)


def test_dtype_overflow_is_named_as_such(saved_toy):
    from safetensors.torch import load_file, save_file
    state = load_file(saved_toy / "model.safetensors")
    state["transformer.wpe.weight"][0, 0] = 1e6  # finite in float32, inf in float16
    save_file(state, saved_toy / "model.safetensors")
    HookedTransformer.from_pretrained(saved_toy)  # float32 is fine
    with pytest.raises(ValueError, match=r"'transformer.wpe.weight'.*overflow torch.float16.*float32 or bfloat16"):
        HookedTransformer.from_pretrained(saved_toy, dtype="fp16")


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_damaged_safetensors_names_the_file(saved_toy, damage):
    path = saved_toy / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"not a safetensors file at all")
    with pytest.raises(ValueError, match=re.escape(str(path)) + " is damaged"):
        HookedTransformer.from_pretrained(saved_toy)


@pytest.mark.parametrize("name", ["config.json", "tokenizer.json", "tokenizer_config.json"])
def test_damaged_json_names_the_file_and_the_fix(saved_toy, name):
    (saved_toy / name).write_text('{"model_type": "gpt2", ')
    with pytest.raises(ValueError, match=re.escape(str(saved_toy / name)) + r" is damaged \(not valid JSON.*; \w+"):
        HookedTransformer.from_pretrained(saved_toy)


def test_config_that_is_not_an_object(saved_toy):
    (saved_toy / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="holds list, not a JSON object"):
        HookedTransformer.from_pretrained(saved_toy)


@pytest.mark.parametrize("name", ["./no-such-dir", "no-such-dir/model.safetensors", "~/no-such-model-dir",
                                  "interp/dta/interp-toy"])
def test_a_mistyped_local_path_is_not_a_hub_failure(name, monkeypatch):
    import pathlib
    monkeypatch.chdir(pathlib.Path(__file__).parent.parent)  # so that interp/ exists "partly"
    with pytest.raises(FileNotFoundError, match="No such file or directory") as error:
        HookedTransformer.from_pretrained(name)
    assert "Hub" not in str(error.value)


def test_pickled_objects_are_refused_without_running_or_advising_unsafe_loading(tmp_path):
    import pickle
    marker = tmp_path / "ran.txt"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    legacy, current = tmp_path / "legacy.bin", tmp_path / "current.bin"
    with open(legacy, "wb") as file:
        pickle.dump({"wte.weight": Evil()}, file)
    torch.save({"wte.weight": Evil()}, current)
    (tmp_path / "config.json").write_text(json.dumps(tiny_hf_config().to_dict()))
    for path in (legacy, current):
        with pytest.raises(ValueError, match="objects other than tensors, so it was not loaded") as error:
            HookedTransformer.from_pretrained(path)
        assert "weights_only=False" not in str(error.value)
    assert not marker.exists()


# ----- API messages ---------------------------------------------------------------------------------
@pytest.mark.parametrize("bad, error, message", [
    ([], ValueError, "empty list"),
    (torch.zeros(0, 5, dtype=torch.long), ValueError, "batch is empty"),
    ([[1, 2, 3], [4, 5]], ValueError, r"different lengths \[2, 3\].*pad them"),
    ([1, "a"], TypeError, r"holds 'a' \(str\)"),
    ([[1, 2], 3], TypeError, "mixes token ids and lists"),
    ([1.5, 2.0], TypeError, "must be ints"),
    ([torch.tensor(True), 2], TypeError, "must be ints"),
])
def test_bad_model_inputs_name_the_problem(tiny_pair, bad, error, message):
    _, model = tiny_pair
    with pytest.raises(error, match=message):
        model(bad)


def test_list_inputs_that_are_fine(tiny_pair):
    import numpy as np
    _, model = tiny_pair
    with torch.no_grad():
        torch.testing.assert_close(model(list(np.array([1, 2, 3]))), model(torch.tensor([[1, 2, 3]])), rtol=0, atol=0)
        torch.testing.assert_close(model([torch.tensor(1), 2, 3]), model(torch.tensor([[1, 2, 3]])), rtol=0, atol=0)
        torch.testing.assert_close(model([[1, 2, 3]]), model(torch.tensor([[1, 2, 3]])), rtol=0, atol=0)
        torch.testing.assert_close(model([1, 2, 3]), model(torch.tensor([[1, 2, 3]])), rtol=0, atol=0)


def test_hook_returning_the_wrong_dtype_names_the_hook(tiny_pair):
    _, model = tiny_pair
    with pytest.raises(TypeError, match=r"'blocks.1.hook_mlp_out' returned a torch.float64 tensor.*\.to\("):
        model.run_with_hooks(random_tokens(101), fwd_hooks=[("blocks.1.hook_mlp_out", lambda x, hook: x.double())])
    assert not any(point.has_hooks for point in model.hook_dict.values())


def test_one_pair_instead_of_a_list_of_pairs(tiny_pair):
    _, model = tiny_pair
    with pytest.raises(TypeError, match=r"got one pair; write fwd_hooks=\[\('hook_embed', fn\)\]"):
        model.run_with_hooks(random_tokens(101), fwd_hooks=("hook_embed", lambda x, hook: None))
    with pytest.raises(TypeError, match="must be a \\(name_or_filter, fn\\) pair"):
        model.run_with_hooks(random_tokens(101), fwd_hooks=["hook_embed"])


def test_stop_at_layer_range_and_message_agree(tiny_pair):
    _, model = tiny_pair
    n = model.cfg.n_layers
    tokens = random_tokens(101)
    with torch.no_grad():
        torch.testing.assert_close(model(tokens, stop_at_layer=-1), model(tokens, stop_at_layer=n - 1), rtol=0, atol=0)
        model(tokens, stop_at_layer=-n)
    for bad in (n + 1, -n - 1):
        with pytest.raises(ValueError, match=re.escape(f"outside [{-n}, {n}]")):
            model(tokens, stop_at_layer=bad)
