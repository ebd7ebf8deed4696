"""Composition scores against the dense definition."""

import pytest
import torch

from conftest import tiny_hf_config
from interp import HookedTransformer
from interp.analysis.circuits import composition_scores
from interp.testing import random_hf_gpt2


@pytest.mark.parametrize("kind", ["Q", "K", "V"])
def test_composition_scores_equal_dense_products(kind):
    model = HookedTransformer.from_pretrained(random_hf_gpt2(tiny_hf_config("3L-2H-tied-relu"), seed=4))
    scores = composition_scores(model, kind)
    W_OV = (model.W_V @ model.W_O).double()  # [layer, head, d_model, d_model]
    W_QK = (model.W_Q @ model.W_K.transpose(-1, -2)).double()
    later = {"Q": W_QK, "K": W_QK.transpose(-1, -2), "V": W_OV}[kind]
    for layer_a in range(3):
        for head_a in range(2):
            for layer_b in range(3):
                for head_b in range(2):
                    if layer_a >= layer_b:
                        assert scores[layer_a, head_a, layer_b, head_b] == 0
                        continue
                    a, b = W_OV[layer_a, head_a], later[layer_b, head_b]
                    dense = torch.linalg.norm(a @ b) / (torch.linalg.norm(a) * torch.linalg.norm(b))
                    assert abs(float(scores[layer_a, head_a, layer_b, head_b]) - float(dense)) < 1e-5
    with pytest.raises(ValueError, match="kind"):
        composition_scores(model, "X")
