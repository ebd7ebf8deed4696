"""Path attribution: the expansion is exact, and each path equals a forward computation of it."""

import itertools

import pytest
import torch
from conftest import random_tokens, tiny_hf_config

from interp import HookedTransformer
from interp.analysis.heads import protocol_tokens
from interp.analysis.paths import path_attribution
from interp.testing import random_hf_gpt2


def attention_only(shape: str, seed: int, **load) -> HookedTransformer:
    model = HookedTransformer.from_pretrained(random_hf_gpt2(tiny_hf_config(shape), seed=seed), **load)
    with torch.no_grad():
        for block in model.blocks:  # an attention-only transformer: the MLPs write nothing
            block.mlp.W_out.zero_()
            block.mlp.b_out.zero_()
    with torch.no_grad():  # scale the weights up so paths are not all ~1e-4 (default init is 0.02)
        for block in model.blocks:
            block.attn.W_O.mul_(8)
    return model


def brute_force_paths(model, tokens, answer, q, with_pairs=True):
    """Every path's value by running it forwards: source -> head -> head -> final LayerNorm -> W_U[:, answer]."""
    _, cache = model.run_with_cache(tokens)
    cfg = model.cfg

    def frozen_ln(x, scale, ln):  # LayerNorm at its cached scale, without its bias (a constant, counted elsewhere)
        normalized = (x - x.mean(-1, keepdim=True)) / scale
        return normalized if ln.w is None else normalized * ln.w

    def head_forward(layer, head, x):  # x [pos, d_model] -> what head writes [pos, d_model]
        block = model.blocks[layer]
        v = frozen_ln(x, cache["scale", layer, "ln1"][0], block.ln1) @ block.attn.W_V[head]
        return cache["pattern", layer][0, head] @ v @ block.attn.W_O[head]

    def readout(x, token=answer):
        return float(frozen_ln(x[q], cache["scale"][0, q], model.ln_final) @ model.W_U[:, token])

    sources = {"embed": (-1, cache["embed"][0]), "pos_embed": (-1, cache["pos_embed"][0])}
    for layer, block in enumerate(model.blocks):
        ln_b = torch.zeros(cfg.d_model) if block.ln1.b is None else block.ln1.b
        per_head = [(ln_b @ block.attn.W_V[h] + block.attn.b_V[h]) @ block.attn.W_O[h] for h in range(cfg.n_heads)]
        sources[f"attn_bias{layer}"] = (layer, (block.attn.b_O + sum(per_head)).expand(tokens.shape[1], -1))
        sources[f"mlp{layer}"] = (layer, cache["mlp_out", layer][0])
    paths = {}
    heads = [(layer, head) for layer in range(cfg.n_layers) for head in range(cfg.n_heads)]
    for name, (after, vector) in sources.items():
        paths[f"{name} -> logits"] = readout(vector)
        for layer, head in heads:
            if after < layer:
                paths[f"{name} -> L{layer}H{head} -> logits"] = readout(head_forward(layer, head, vector))
        for (layer_a, head_a), (layer_b, head_b) in itertools.product(heads, heads) if with_pairs else ():
            if after < layer_a < layer_b:
                through = head_forward(layer_b, head_b, head_forward(layer_a, head_a, vector))
                paths[f"{name} -> L{layer_a}H{head_a} -> L{layer_b}H{head_b} -> logits"] = readout(through)
    return paths, sources, head_forward, readout


@torch.no_grad()
def test_two_layer_paths_match_brute_force_and_leave_no_residual():
    model = attention_only("2L-4H-untied", seed=2)
    tokens = random_tokens(model.cfg.d_vocab, batch=1, pos=10, seed=1)
    result = path_attribution(model, tokens, answer=7, position=-1)
    expected, _, _, _ = brute_force_paths(model, tokens, 7, q=9)
    got = dict(zip(result.paths, result.values.tolist()))
    # 6 sources direct; 4 layer-0 heads x 2 embeddings; 4 layer-1 heads x 4 sources; 16 pairs x 2 embeddings
    assert got.keys() == expected.keys() and len(got) == 6 + 4 * 2 + 4 * 4 + 16 * 2
    scale = max(abs(v) for v in expected.values())
    assert max(abs(got[name] - expected[name]) for name in got) < 1e-5 * scale
    assert any(abs(expected[name]) > 1e-3 * scale for name in expected if name.count("->") == 3)  # pairs matter
    # Two layers: no path goes through three heads, so the terms sum to the model's logit with no residual.
    logit = float(model(tokens)[0, -1, 7])
    assert result.target == pytest.approx(logit, abs=1e-6)
    assert abs(result.residual) < 1e-4 * max(1.0, abs(logit))
    assert result.total() == pytest.approx(logit, abs=1e-6)


@torch.no_grad()
def test_three_layer_residual_is_the_three_head_paths():
    model = attention_only("3L-2H-tied-relu", seed=3, fold_ln=True)
    tokens = random_tokens(model.cfg.d_vocab, batch=1, pos=8, seed=2)
    result = path_attribution(model, tokens, answer=3, wrong=11, position=5)
    _, sources, head_forward, readout = brute_force_paths(model, tokens, 3, q=5, with_pairs=False)
    three_head = 0.0
    for name, (after, vector) in sources.items():
        if after >= 0:
            continue  # only the embeddings are written before layer 0
        for heads in itertools.product(range(2), repeat=3):
            through = vector
            for layer, head in enumerate(heads):
                through = head_forward(layer, head, through)
            three_head += readout(through, 3) - readout(through, 11)
    logits = model(tokens)[0, 5]
    assert result.target == pytest.approx(float(logits[3] - logits[11]), abs=1e-5)
    assert abs(three_head) > 1e-4  # the check has something to find
    assert result.residual == pytest.approx(three_head, abs=1e-5)


@torch.no_grad()
def test_logit_difference_and_direction_are_linear(tiny_pair):
    _, model = tiny_pair
    tokens = random_tokens(model.cfg.d_vocab, batch=1, pos=9, seed=4)
    right, wrong = path_attribution(model, tokens, answer=4), path_attribution(model, tokens, answer=9)
    difference = path_attribution(model, tokens, answer=4, wrong=9)
    scale = float(right.values.abs().max())  # (the difference vector is formed in float32: rounding ~1e-7)
    torch.testing.assert_close(difference.values, right.values - wrong.values, rtol=0, atol=1e-5 * scale)
    along = path_attribution(model, tokens, direction=model.W_U[:, 4])
    torch.testing.assert_close(along.values, right.values, rtol=0, atol=1e-9 * scale)
    assert along.target == pytest.approx(right.target - float(model.b_U[4]), abs=1e-5)
    assert sum(difference.by_length().values()) == pytest.approx(float(difference.values.sum()))


def test_induction_head_carries_the_copied_token():
    model = HookedTransformer.from_pretrained("interp-toy")
    tokens = protocol_tokens(model, n_sequences=1, length=20, seed=3)
    q = 30  # in the second copy: the next token is predictable only by induction
    result = path_attribution(model, tokens[:, : q + 1], answer=int(tokens[0, q + 1]))
    head_paths = [(path, value) for path, value in result.top(len(result.paths)) if "L" in path]
    assert "L1H3" in head_paths[0][0]  # the largest path through a head goes through the induction head
    through_induction = sum(value for path, value in zip(result.paths, result.values.tolist()) if "L1H3" in path)
    assert through_induction > 0.25 * result.target > 0
    assert "| **target** |" in result.to_markdown(5)


def test_errors(tiny_pair):
    _, model = tiny_pair
    tokens = random_tokens(model.cfg.d_vocab, batch=2, pos=6)
    with pytest.raises(ValueError, match=r"one sequence.*tokens\[i:i\+1\]"):
        path_attribution(model, tokens, answer=1)
    with pytest.raises(IndexError, match=r"valid: 0..1"):
        path_attribution(model, tokens[:1], answer=1, layers=[0, 2])
    with pytest.raises(ValueError, match="Say what to attribute"):
        path_attribution(model, tokens[:1])
    with pytest.raises(ValueError, match="either direction= or answer="):
        path_attribution(model, tokens[:1], answer=1, direction=torch.zeros(model.cfg.d_model))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        path_attribution(model, tokens[:1], answer=model.cfg.d_vocab)
    with pytest.raises(IndexError, match=r"position 6 is outside the sequence of 6 tokens \(valid: -6..5\)"):
        path_attribution(model, tokens[:1], answer=1, position=6)
    toy = HookedTransformer.from_pretrained("interp-toy")
    with pytest.raises(ValueError, match="single token"):
        path_attribution(toy, "To be or not", answer=" questionable nonsense")
