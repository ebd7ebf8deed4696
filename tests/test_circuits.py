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
    W_OV = (model.W_V @ model.W_O).double().detach()  # [layer, head, d_model, d_model]
    W_QK = (model.W_Q @ model.W_K.transpose(-1, -2)).double().detach()
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


# ----- QK/OV circuits, full circuits, copying and composition significance ----------------------
import copy  # noqa: E402

from interp.analysis.circuits import (composition_baseline, composition_score, composition_z_scores,  # noqa: E402
                                      copying_score, copying_scores, full_ov_circuit, full_qk_circuit,
                                      ov_circuit, positional_qk_circuit, qk_circuit)
from interp.factored import FactoredMatrix  # noqa: E402


@pytest.fixture(scope="module")
def folded():
    return HookedTransformer.from_pretrained(random_hf_gpt2(tiny_hf_config("2L-4H-untied"), seed=6), fold_ln=True)


def test_qk_ov_equal_dense_and_have_rank_at_most_d_head(folded):
    QK, OV = folded.QK, folded.OV
    assert QK.shape == OV.shape == (2, 4, 32, 32)
    torch.testing.assert_close(QK.AB, folded.W_Q @ folded.W_K.transpose(-1, -2))
    torch.testing.assert_close(OV.AB, folded.W_V @ folded.W_O)
    d_head = folded.cfg.d_head
    assert d_head < folded.cfg.d_model
    assert torch.all(torch.linalg.matrix_rank(QK.double().AB) == d_head)  # generic heads: exactly d_head
    assert torch.all(torch.linalg.matrix_rank(OV.double().AB) == d_head)
    torch.testing.assert_close(qk_circuit(folded, 1, 2).AB, QK.AB[1, 2])
    torch.testing.assert_close(ov_circuit(folded, head=3).AB, OV.AB[:, 3])


def test_full_and_positional_circuits_equal_dense(folded):
    W_E, W_pos, W_U = folded.W_E.detach(), folded.W_pos.detach(), folded.W_U.detach()
    QK, OV = folded.QK.AB, folded.OV.AB
    torch.testing.assert_close(full_qk_circuit(folded).AB, W_E @ QK @ W_E.T, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(full_ov_circuit(folded, 1).AB, W_E @ OV[1] @ W_U, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(positional_qk_circuit(folded, 0, 1, n_positions=10).AB,
                               W_pos[:10] @ QK[0, 1] @ W_pos[:10].T, rtol=1e-5, atol=1e-5)


def test_copying_scores_equal_dense_eigenvalues(folded):
    scores = copying_scores(folded)
    for layer in range(2):
        for head in range(4):
            dense = (folded.W_E @ folded.OV.AB[layer, head] @ folded.W_U).detach().double()
            eigenvalues = torch.linalg.eigvals(dense)
            expected = eigenvalues.sum().real / eigenvalues.abs().sum()
            assert abs(float(scores[layer, head]) - float(expected)) < 1e-4
    assert scores.abs().max() < 0.6  # random heads neither copy nor suppress much


def test_hand_built_copying_head_scores_plus_minus_one(folded):
    model = copy.deepcopy(folded)
    d_head, n_heads = model.cfg.d_head, model.cfg.n_heads
    with torch.no_grad():
        model.W_U = torch.nn.Parameter(model.W_E.T.clone())  # unembedding = embeddingᵀ
        projector = torch.linalg.qr(torch.randn(model.cfg.d_model, d_head, generator=torch.Generator().manual_seed(0)))[0]
        attn = model.blocks[1].attn
        attn.W_V[0] = projector  # (a view of W_QKV) head 0: W_OV = P Pᵀ, so W_E W_OV W_Eᵀ is positive semi-definite
        attn.W_O[0] = projector.T
        attn.W_V[1] = projector  # head 1: its negative
        attn.W_O[1] = -projector.T
    scores = copying_scores(model)
    assert scores[1, 0] > 0.999 and scores[1, 1] < -0.999
    assert abs(float(copying_score(full_ov_circuit(model, 1, 0))) - float(scores[1, 0])) < 1e-4
    assert n_heads == 4


def test_hand_built_composing_pair_beats_the_random_baseline(folded):
    model = copy.deepcopy(folded)
    generator = torch.Generator().manual_seed(1)
    direction = torch.randn(model.cfg.d_model, generator=generator)
    with torch.no_grad():  # layer-0 head 2 writes only along `direction`; layer-1 head 3's queries read only it
        model.blocks[0].attn.W_O[2] = torch.outer(torch.randn(model.cfg.d_head, generator=generator), direction)
        model.blocks[1].attn.W_Q[3] = torch.outer(direction, torch.randn(model.cfg.d_head, generator=generator))
    assert composition_scores(model, "Q")[0, 2, 1, 3] > 0.999  # rank-1 and aligned: the maximum, 1
    mean, std = composition_baseline(model)
    d_model = model.cfg.d_model
    assert 0.5 / d_model**0.5 < mean < 2 / d_model**0.5 and 0 < std < mean
    z = composition_z_scores(model, "Q")
    assert z[0, 2, 1, 3] > 10 and z[0, 2, 1, 3] == z[0].flatten(1).max()
    assert torch.all(z[1] == 0)  # no later layer to compose into
    # composition_score on FactoredMatrix equals the model-wide fast path
    pair = composition_score(ov_circuit(model, 0, 2), qk_circuit(model, 1, 3))
    assert abs(float(pair) - float(composition_scores(model, "Q")[0, 2, 1, 3])) < 1e-5
    # untouched random heads are within a few baseline stds
    assert z[0, :2, 1, :3].abs().max() < 6


def test_scaling_queries_and_keys_leaves_qk_and_logits(gpt2_small_pair):
    _, raw = gpt2_small_pair
    scaled = copy.deepcopy(raw)
    c = 3.7
    with torch.no_grad():
        for block in scaled.blocks:
            block.attn.W_Q.mul_(c)  # views of W_QKV / b_QKV: the edits write through
            block.attn.b_Q.mul_(c)
            block.attn.W_K.div_(c)
            block.attn.b_K.div_(c)
    assert (scaled.W_Q - raw.W_Q).abs().max() > 0.1
    torch.testing.assert_close(scaled.QK[3].AB, raw.QK[3].AB, rtol=1e-4, atol=1e-5)
    tokens = torch.randint(0, raw.cfg.d_vocab, (1, 16), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(scaled(tokens), raw(tokens), rtol=0, atol=1e-4)


def test_circuit_errors_name_the_fix(tiny_pair, folded):
    _, raw = tiny_pair
    for circuit in (full_qk_circuit, full_ov_circuit, positional_qk_circuit):
        with pytest.raises(ValueError, match=r"from_pretrained\(\.\.\., fold_ln=True\)"):
            circuit(raw)
    with pytest.raises(ValueError, match="fold_ln"):
        copying_scores(raw)
    with pytest.raises(IndexError, match=r"layer 2 is out of range: the model has 2 layers \(valid: 0..1\)"):
        qk_circuit(folded, 2)
    with pytest.raises(IndexError, match=r"head 4 is out of range.*valid: 0..3"):
        ov_circuit(folded, 0, 4)
    assert isinstance(full_ov_circuit(folded, -1, -1), FactoredMatrix)
