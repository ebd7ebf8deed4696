"""Neuron input/output cosines and top-activating positions."""

import copy

import pytest
import torch
from conftest import random_tokens, tiny_hf_config

from interp import HookedTransformer
from interp.analysis.neurons import most_negative_neurons, neuron_in_out_cosine, top_activating_positions
from interp.testing import random_hf_gpt2


@pytest.fixture(scope="module")
def model():
    return HookedTransformer.from_pretrained(random_hf_gpt2(tiny_hf_config("2L-4H-untied"), seed=8), fold_ln=True)


def test_cosine_matches_a_direct_loop(model):
    cosines = neuron_in_out_cosine(model)
    assert cosines.shape == (2, model.cfg.d_mlp)
    for layer, neuron in [(0, 0), (1, 17), (1, model.cfg.d_mlp - 1)]:
        w_in, w_out = model.W_in[layer, :, neuron].detach(), model.W_out[layer, neuron].detach()
        expected = (w_in @ w_out) / (w_in.norm() * w_out.norm())
        assert abs(float(cosines[layer, neuron]) - float(expected)) < 1e-6


def test_an_eraser_neuron_is_listed_first(model):
    edited = copy.deepcopy(model)
    with torch.no_grad():
        edited.blocks[1].mlp.W_out[5] = -2.5 * edited.blocks[1].mlp.W_in[:, 5]  # writes back minus what it reads
    listed = most_negative_neurons(edited, k=4)
    assert listed[1][0].index == 5 and abs(listed[1][0].value + 1) < 1e-5
    assert [n.value for n in listed[0]] == sorted(n.value for n in listed[0]) and len(listed[0]) == 4
    assert listed[0][0].index == int(neuron_in_out_cosine(edited)[0].argmin())


def test_top_activating_positions_match_the_cache(model):
    tokens = random_tokens(model.cfg.d_vocab, batch=3, pos=12, seed=3)
    _, cache = model.run_with_cache(tokens)
    post = cache["blocks.1.mlp.hook_post"][..., 7]
    top = top_activating_positions(model, tokens, 1, 7, k=5)
    # (the full cache runs LayerNorm unfused, so values agree to float rounding, not bit for bit)
    assert [value for _, _, value in top] == pytest.approx(sorted(post.flatten().tolist(), reverse=True)[:5], abs=1e-5)
    for sequence, position, value in top:
        assert abs(float(post[sequence, position]) - value) < 1e-5
    with pytest.raises(IndexError, match="valid: 0.."):
        top_activating_positions(model, tokens, 1, model.cfg.d_mlp)
    with pytest.raises(IndexError, match="layer 5 is out of range"):
        top_activating_positions(model, tokens, 5, 0)
