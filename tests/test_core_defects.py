"""Defects of the core, each reproduced: unknown activations, a tied unembedding after a dtype change,
stacked weight properties, and the id generation stops at."""

import dataclasses

import pytest
import torch

from conftest import force_token_hook, random_tokens, tiny_hf_config
from interp import HookedTransformer
from interp.components import ACTIVATIONS, activation, activation_function
from interp.config import SUPPORTED_ACTIVATIONS
from interp.testing import random_hf_gpt2


def test_unknown_activation_raises_instead_of_falling_back_to_relu():
    x = torch.linspace(-3, 3, 13)
    with pytest.raises(ValueError, match=r"Unknown activation 'quick_gelu'.*\['gelu', 'gelu_new', 'gelu_pytorch_tanh', 'relu', 'silu'\]"):
        activation("quick_gelu", x)
    with pytest.raises(ValueError, match="Unknown activation"):
        activation_function("swish")


@pytest.mark.parametrize("name", SUPPORTED_ACTIVATIONS)
def test_every_supported_activation_equals_transformers(name):
    from transformers.activations import ACT2FN

    assert set(ACTIVATIONS) == set(SUPPORTED_ACTIVATIONS)  # the config's list and the implementations agree
    x = torch.linspace(-6, 6, 101, dtype=torch.float64)
    torch.testing.assert_close(activation(name, x), ACT2FN[name](x), rtol=0, atol=1e-12)


def same_storage(a, b):
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def test_a_tied_unembedding_stays_tied_after_dtype_and_device_moves():
    model = HookedTransformer.from_pretrained(random_hf_gpt2(tiny_hf_config("1L-1H-tied"), seed=0))
    assert model.cfg.tie_word_embeddings and same_storage(model.W_U, model.W_E)
    for convert in (lambda m: m.double(), lambda m: m.to(torch.float16), lambda m: m.float(), lambda m: m.to("cpu")):
        convert(model)
        assert same_storage(model.W_U, model.W_E) and model.W_U.dtype == model.W_E.dtype
        torch.testing.assert_close(model.W_U, model.W_E.T, rtol=0, atol=0)
    with torch.no_grad():
        model.W_E[3, 0] = 42.0  # one tensor: the unembedding sees the edit
    assert model.W_U[0, 3] == 42.0


def test_an_untied_unembedding_is_left_alone_by_dtype_moves(tiny_pair):
    hf_model, _ = tiny_pair
    model = HookedTransformer.from_pretrained(hf_model)  # 2L-4H-untied
    model.double()
    assert not same_storage(model.W_U, model.W_E) and model.W_U.dtype == torch.float64


def test_stacked_weights_are_documented_copies(tiny_pair):
    _, model = tiny_pair
    before = model.blocks[0].attn.W_K.detach().clone()
    stacked = model.W_K
    with torch.no_grad():
        stacked[0] = 0  # a copy: the model is unchanged, as the docstring says
    torch.testing.assert_close(model.blocks[0].attn.W_K, before, rtol=0, atol=0)
    assert "COPY" in type(model)._stack.__doc__


def test_generation_stops_at_the_eos_id_not_the_bos_id(tiny_pair):
    hf_model, base = tiny_pair
    cfg = dataclasses.replace(base.cfg, bos_token_id=100, eos_token_id=7)
    model = HookedTransformer.from_state_dict(cfg, base.state_dict())
    prompt = random_tokens(101, batch=1, pos=4)

    with model.hooks([("ln_final.hook_normalized", force_token_hook(model, 7))]):
        stopped = model.generate(prompt, max_new_tokens=5, stop_at_eos=True)
    assert stopped[0, 4:].tolist() == [7]  # EOS ends it at once
    with model.hooks([("ln_final.hook_normalized", force_token_hook(model, 100))]):
        through_bos = model.generate(prompt, max_new_tokens=5, stop_at_eos=True)
    assert through_bos[0, 4:].tolist() == [100] * 5  # the BOS id is not an end
    no_eos = HookedTransformer.from_state_dict(dataclasses.replace(cfg, eos_token_id=None), base.state_dict())
    with pytest.raises(ValueError, match="no eos_token_id"):
        no_eos.generate(prompt, max_new_tokens=2, stop_at_eos=True)


def test_a_deep_copy_keeps_a_tied_unembedding_tied():
    import copy

    import families

    for case in ("llama_gqa", "gpt2_tied"):
        model = copy.deepcopy(families.load(case))
        assert model.cfg.tie_word_embeddings and same_storage(model.W_U, model.W_E)
        with torch.no_grad():
            model.W_E[5] += 1
        assert torch.equal(model.W_U[:, 5], model.W_E[5])
        assert same_storage(model.double().W_U, model.W_E)


def test_generation_stops_at_any_of_several_eos_ids():
    import dataclasses

    import families

    model = families.load("llama_gqa")
    model.cfg = dataclasses.replace(model.cfg, eos_token_id=3, extra_eos_token_ids=(7, 9))
    prompt = torch.tensor([[1, 2, 4]])
    with model.hooks([("ln_final.hook_normalized", force_token_hook(model, 9))]):
        out = model.generate(prompt, max_new_tokens=5, stop_at_eos=True)
    assert out.tolist() == [[1, 2, 4, 9]]  # the second extra id ends it, one token in


@pytest.mark.parametrize("case, dtype", [("llama_gqa", "bfloat16"), ("gpt2", "bfloat16"), ("neox_parallel", "float16")])
def test_a_read_only_norm_hook_changes_nothing_in_half_precision(case, dtype):
    """Half-precision norms take their statistics in float32 on the hooked path too, as on the fused one: a hook that
    only reads ln scales/outputs leaves the logits bit-identical, and a large coordinate does not overflow fp16."""
    import families

    model, tokens = families.load(case, dtype=dtype), families.tokens(case)

    def big(x, hook):  # one residual coordinate of 300: x² overflows fp16's 65504
        x = x.clone()
        x[..., 0] += 300
        return x

    readers = [(lambda name: name.endswith(("hook_scale", "hook_normalized")), lambda x, hook: None)]
    with torch.no_grad(), model.hooks([("blocks.1.hook_resid_pre", big)]):
        plain = model(tokens)
        with model.hooks(readers):
            read = model(tokens)
        _, cache = model.run_with_cache(tokens, names_filter="blocks.1.ln1.hook_scale")
    assert torch.isfinite(plain).all() and torch.isfinite(cache["blocks.1.ln1.hook_scale"]).all()
    if dtype == "bfloat16":
        assert torch.equal(plain, read)
    else:  # CPU F.layer_norm in fp16 rounds its affine step differently from float32-then-round: an ulp or two
        assert (plain - read).abs().max() <= 4e-3 * plain.abs().max()
