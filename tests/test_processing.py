"""Weight processing leaves the model's function unchanged (tiny and GPT-2 small shapes, randomised LayerNorms)."""

import copy

import pytest
import torch
from conftest import random_tokens, tiny_hf_config

from interp import HookedTransformer
from interp.processing import (STEPS, center_writing_weights, fold_ln, process_state_dict, require_processing,
                               rotate_residual_stream)
from interp.testing import random_hf_gpt2

CASES = [(step,) for step in STEPS] + [STEPS]


@pytest.fixture(scope="module", params=["tiny", pytest.param("gpt2-small", marks=pytest.mark.slow)])
def run(request):
    """(transformers model, tokens, raw logits, transformers logits, raw hook_scale cache) of a 4-layer
    tiny model, or of GPT-2 small's exact shape (slow: seconds per processed copy)."""
    if request.param == "tiny":
        hf_model = random_hf_gpt2(tiny_hf_config("4L-8H-untied-ninner"), seed=6)
        raw = HookedTransformer.from_pretrained(hf_model)
    else:
        hf_model, raw = request.getfixturevalue("gpt2_small_pair")
    tokens = random_tokens(raw.cfg.d_vocab, batch=2, pos=24, seed=5)
    with torch.no_grad():
        hf_logits = hf_model(tokens).logits
        _, raw_cache = raw.run_with_cache(tokens, names_filter=lambda name: name.endswith("hook_scale"))
    return hf_model, tokens, raw(tokens), hf_logits, raw_cache


def _comparable(logits: torch.Tensor, steps) -> torch.Tensor:
    # center_unembed shifts every logit at a position by the same constant; compare log-probabilities then.
    return logits.log_softmax(-1) if "center_unembed" in steps else logits


@pytest.mark.parametrize("steps", CASES, ids=["+".join(case) for case in CASES])
def test_processing_keeps_logits(run, steps):
    hf_model, tokens, raw_logits, hf_logits, _ = run
    model = HookedTransformer.from_pretrained(hf_model, **{step: True for step in steps})
    assert model.processing == {step: step in steps for step in STEPS}
    logits = model(tokens)
    assert (_comparable(logits, steps) - _comparable(raw_logits, steps)).abs().max() < 1e-4
    assert (_comparable(logits, steps) - _comparable(hf_logits, steps)).abs().max() < 1e-4
    if "center_unembed" in steps:  # and the shift really is one constant per position, not zero
        shift = logits - raw_logits
        assert (shift - shift.mean(-1, keepdim=True)).abs().max() < 1e-3
        assert logits.mean(-1).abs().max() < 1e-4


def test_fold_ln_keeps_true_scale_and_strips_gains(run):
    hf_model, tokens, _, _, raw_cache = run
    model = HookedTransformer.from_pretrained(hf_model, process=True)
    assert model.blocks[-1].ln1.w is None and model.ln_final.b is None
    assert not any(".ln" in name or "ln_final" in name for name in model.state_dict())
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: name.endswith("hook_scale"))
    assert set(cache) == set(raw_cache) and len(cache) == 2 * model.cfg.n_layers + 1
    for name in cache:
        torch.testing.assert_close(cache[name], raw_cache[name], rtol=1e-5, atol=1e-6)


def test_process_flag_and_overrides(tiny_pair):
    hf_model, _ = tiny_pair
    model = HookedTransformer.from_pretrained(hf_model, process=True, center_unembed=False)
    assert model.processing == dict(fold_ln=True, center_writing_weights=True, center_unembed=False,
                                    fold_value_biases=True)
    assert HookedTransformer.from_pretrained(hf_model).processing == {step: False for step in STEPS}


def test_processing_twice_is_idempotent(tiny_pair):
    hf_model, _ = tiny_pair
    model = HookedTransformer.from_pretrained(hf_model, process=True)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    model.process_weights_()  # every step already carried: skipped, weights untouched
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name
    # The pure functions are idempotent too: a second application gives the same weights.
    raw_state = HookedTransformer.from_pretrained(hf_model).state_dict()
    once = process_state_dict(raw_state, model.cfg, STEPS)
    twice = process_state_dict(once, model.cfg, STEPS)
    assert once.keys() == twice.keys()
    for name in once:
        torch.testing.assert_close(twice[name], once[name], rtol=0, atol=1e-6)


def test_processing_is_pure_and_replaces_tied_unembedding():
    hf_model = random_hf_gpt2(tiny_hf_config("1L-1H-tied"), seed=4)
    model = HookedTransformer.from_pretrained(hf_model)
    assert model.W_U.untyped_storage().data_ptr() == model.W_E.untyped_storage().data_ptr()  # tied: one tensor
    old_W_E, old_W_U = model.W_E, model.W_U
    saved_W_E = old_W_E.detach().clone()
    tokens = random_tokens(model.cfg.d_vocab, seed=2)
    raw_logits = model(tokens)
    model.process_weights_(fold_ln=False, center_writing_weights=True, center_unembed=False, fold_value_biases=False)
    # W_E was centred but the unembedding must stay the raw W_Eᵀ, so the tie is broken, not edited through.
    assert torch.equal(old_W_E, saved_W_E) and torch.equal(old_W_U, saved_W_E.T)
    assert model.W_E.mean(-1).abs().max() < 1e-6
    torch.testing.assert_close(model.W_U, saved_W_E.T)
    assert not model.cfg.tie_word_embeddings  # the config says what the weights now are
    torch.testing.assert_close(model(tokens), raw_logits, rtol=0, atol=1e-5)


def test_fold_ln_analytic_single_reader():
    """Hand-computed: one LayerNorm (w, b) read by W, c gives W' = centred(diag(w) W), c' = c + b W."""
    cfg = HookedTransformer.from_pretrained(random_hf_gpt2(tiny_hf_config("1L-1H-tied"), seed=0)).cfg
    state = HookedTransformer.from_pretrained(random_hf_gpt2(tiny_hf_config("1L-1H-tied"), seed=0)).state_dict()
    w, b, W, c = state["ln_final.w"], state["ln_final.b"], state["W_U"], state["b_U"]
    folded = fold_ln(state, cfg)
    expected_W = w[:, None] * W
    expected_W = expected_W - expected_W.mean(0, keepdim=True)
    torch.testing.assert_close(folded["W_U"], expected_W, rtol=0, atol=1e-6)
    torch.testing.assert_close(folded["b_U"], c + b @ W, rtol=0, atol=1e-6)
    assert "ln_final.w" not in folded and "ln_final.w" in state  # input untouched
    assert center_writing_weights(folded, cfg)["W_pos"].mean(-1).abs().max() < 1e-6


def _rotation_fixing_ones(d_model: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.cat([torch.ones(d_model, 1, dtype=torch.float64),
                                          torch.randn(d_model, d_model - 1, generator=generator, dtype=torch.float64)], 1))
    inner, _ = torch.linalg.qr(torch.randn(d_model - 1, d_model - 1, generator=generator, dtype=torch.float64))
    rotation = torch.block_diag(torch.ones(1, 1, dtype=torch.float64), inner)
    return basis @ rotation @ basis.T  # basis[:, 0] is ±ones/√d, which the block rotation fixes


def test_rotating_the_residual_basis_keeps_logits(run):
    hf_model, tokens, raw_logits, _, _ = run
    model = HookedTransformer.from_pretrained(hf_model, fold_ln=True)
    R = _rotation_fixing_ones(model.cfg.d_model, seed=0)
    rotated = copy.deepcopy(model)
    rotated.load_state_dict(rotate_residual_stream(model.state_dict(), model.cfg, R), assign=True)
    assert (rotated.W_E - model.W_E).abs().max() > 1e-2  # the weights really changed
    torch.testing.assert_close(rotated(tokens), raw_logits, rtol=0, atol=1e-4)


def test_rotation_preconditions(tiny_pair):
    hf_model, raw = tiny_pair
    d_model = raw.cfg.d_model
    folded = HookedTransformer.from_pretrained(hf_model, fold_ln=True)
    with pytest.raises(ValueError, match="fold_ln first"):
        rotate_residual_stream(raw.state_dict(), raw.cfg, torch.eye(d_model))
    generic, _ = torch.linalg.qr(torch.randn(d_model, d_model, generator=torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match="all-ones"):
        rotate_residual_stream(folded.state_dict(), folded.cfg, generic)
    with pytest.raises(ValueError, match="orthogonal"):
        rotate_residual_stream(folded.state_dict(), folded.cfg, 2 * torch.eye(d_model))


def test_unknown_step_and_missing_processing_errors(tiny_pair):
    _, raw = tiny_pair
    with pytest.raises(ValueError, match="Unknown processing step"):
        process_state_dict(raw.state_dict(), raw.cfg, ["fold_layernorm"])
    with pytest.raises(ValueError, match=r"fold_ln=True\) or call model.process_weights_\(fold_ln=True\)"):
        require_processing(raw, "fold_ln", purpose="The full QK circuit")


def test_processing_in_two_calls_keeps_the_canonical_order(tiny_pair):
    hf_model, _ = tiny_pair
    model = HookedTransformer.from_pretrained(hf_model, fold_value_biases=True)
    model.process_weights_()  # fold_ln now moves ln1's bias into b_V: fold_value_biases must run again
    assert model.processing == {step: True for step in STEPS}
    assert model.b_V.abs().max() == 0
    at_once = HookedTransformer.from_pretrained(hf_model, process=True)
    for name, tensor in at_once.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], tensor, rtol=0, atol=1e-6)
