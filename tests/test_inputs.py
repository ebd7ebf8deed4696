"""Bad input gets a clear error that names the fix; text input goes through the tokenizer."""

import pytest
import torch

from conftest import random_tokens
from interp import HookedTransformer
from interp.testing import hf_config, random_hf_gpt2
from interp.tokens import gpt2_tokenizer


def test_token_id_out_of_range(tiny_pair):
    _, model = tiny_pair
    with pytest.raises(ValueError, match=r"Token id 101 is outside the vocabulary \[0, 101\)"):
        model(torch.tensor([[1, 2, 101]]))
    with pytest.raises(ValueError, match="Token id -1"):
        model(torch.tensor([[1, -1]]))


def test_sequence_longer_than_context(tiny_pair):
    _, model = tiny_pair
    with pytest.raises(ValueError, match=r"49 tokens is longer than the model's context n_ctx=48.*truncate"):
        model(torch.zeros(1, 49, dtype=torch.long))


def test_float_tokens(tiny_pair):
    _, model = tiny_pair
    with pytest.raises(TypeError, match=r"integer tensor.*tokens.long\(\)"):
        model(torch.zeros(1, 5))


def test_bad_shapes_and_types(tiny_pair):
    _, model = tiny_pair
    with pytest.raises(ValueError, match=r"\[batch, pos\]"):
        model(torch.zeros(1, 2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="no tokens"):
        model(torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(TypeError, match="text or token ids"):
        model(3.5)
    with pytest.raises(ValueError, match="return_type"):
        model(random_tokens(101), return_type="probs")
    with pytest.raises(ValueError, match="at least 2 tokens"):
        model(torch.tensor([[3]]), return_type="loss")


def test_text_without_tokenizer(tiny_pair):
    _, model = tiny_pair
    assert model.tokenizer is None
    with pytest.raises(ValueError, match="no tokenizer.*tokenizer="):
        model("Hello world")


def test_lists_of_ids_and_1d_tensors_are_accepted(tiny_pair):
    _, model = tiny_pair
    with torch.no_grad():
        expected = model(torch.tensor([[1, 2, 3]]))
        torch.testing.assert_close(model([1, 2, 3]), expected)
        torch.testing.assert_close(model(torch.tensor([1, 2, 3])), expected)


def test_text_is_tokenised_with_bos():
    # Only the tokens matter here: a one-layer model with GPT-2's vocabulary, so the real tokenizer fits.
    hf_model = random_hf_gpt2(hf_config(n_layer=1, n_head=2, n_embd=16, n_positions=64), seed=0)
    model = HookedTransformer.from_pretrained(hf_model, tokenizer=gpt2_tokenizer())
    assert model.to_tokens("Hello world").tolist() == [[50256, 15496, 995]]
    assert model.to_tokens("Hello world", prepend_bos=False).tolist() == [[15496, 995]]
    assert model.to_str_tokens("Hello world") == ["<|endoftext|>", "Hello", " world"]
    assert model.to_string(torch.tensor([15496, 995])) == "Hello world"
    batch = model.to_tokens(["Hello world", "Hi"])
    assert batch.tolist() == [[50256, 15496, 995], [50256, 17250, 50256]]  # right-padded with BOS/EOS
    with torch.no_grad():
        torch.testing.assert_close(model("Hello world"), model(torch.tensor([[50256, 15496, 995]])))
        # Right padding never changes the real tokens' logits (causal attention).
        torch.testing.assert_close(model(["Hello world", "Hi"])[1, :2], model("Hi")[0], rtol=1e-5, atol=1e-4)
