import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may download; hub look-ups fail at once
torch.set_num_threads(min(2, torch.get_num_threads()))

from interp import HookedTransformer  # noqa: E402
from interp.testing import hf_config, random_hf_gpt2  # noqa: E402

# (n_layer, n_head, n_embd, tie_word_embeddings): different depths, head counts, widths, tied and untied.
TINY_SHAPES = {
    "1L-1H-tied": dict(n_layer=1, n_head=1, n_embd=16, tie_word_embeddings=True),
    "2L-4H-untied": dict(n_layer=2, n_head=4, n_embd=32, tie_word_embeddings=False),
    "3L-2H-tied-relu": dict(n_layer=3, n_head=2, n_embd=24, activation_function="relu"),
    "4L-8H-untied-ninner": dict(n_layer=4, n_head=8, n_embd=64, n_inner=96, tie_word_embeddings=False),
}


def tiny_hf_config(name: str = "2L-4H-untied", **overrides):
    settings = dict(TINY_SHAPES[name], n_positions=48, vocab_size=101)
    settings.update(overrides)
    return hf_config(**settings)


@pytest.fixture(scope="session")
def gpt2_small_pair():
    """(transformers model, interp model) with the same random weights, exact GPT-2 small shape."""
    hf_model = random_hf_gpt2(hf_config(), seed=0)
    return hf_model, HookedTransformer.from_pretrained(hf_model)


@pytest.fixture(scope="session")
def tiny_pair():
    hf_model = random_hf_gpt2(tiny_hf_config(), seed=1)
    return hf_model, HookedTransformer.from_pretrained(hf_model)


def random_tokens(n_vocab: int, batch: int = 2, pos: int = 20, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, n_vocab, (batch, pos), generator=torch.Generator().manual_seed(seed))


def force_token_hook(model, token: int):
    """A hook for `ln_final.hook_normalized` that makes every position's largest logit `token`: it replaces the
    normalised residual by the least-squares direction whose unembedding is 100 x one-hot(token)."""
    target = torch.nn.functional.one_hot(torch.tensor(token), model.cfg.d_vocab).float() * 100
    direction = torch.linalg.lstsq(model.W_U.detach().T, target).solution

    def hook(normalized, hook_point):
        return direction.expand_as(normalized).clone()
    return hook
