"""Every family interp loads equals `transformers` on the same weights: log-probs, the residual stream,
attention patterns, and every other hook against the matching `transformers` submodule.

The checkpoints are the tiny random ones of `families.py`, saved with `save_pretrained` and loaded
back with `HookedTransformer.from_pretrained(directory)`. References come from `transformers` only:
its outputs, forward (pre-)hooks on its submodules, and its own `apply_rotary_pos_emb`, never from
interp's code.
"""

from __future__ import annotations

import functools
import importlib
import math

import pytest
import torch

import families
from families import CASES, GATED, PARALLEL, ROTARY

ALL_CASES = list(CASES)
BATCH, POS = 2, 16  # 16 positions: longer than mistral_window's window (5) and qwen2_bias's (4)

# fp32 throughout. Log-probs, patterns and most activations are O(1), where fused vs unfused kernels
# and another summation order differ by ~1e-7..1e-6, so 1e-5 absolute catches any real mistake.
LOGPROB_ATOL = 1e-5
PATTERN_ATOL = 1e-6
# Activations: 1e-5 absolute, plus 1e-5 relative because the residual stream, MLP pre-activations and
# unnormalised scores reach |x| ~ 10-30 with these weights (std 0.15, gains up to ~2), where one fp32 ulp
# is already ~2e-6 and a different summation order costs a few ulps; relative 1e-5 is still ~10 ulps.
ACT_ATOL, ACT_RTOL = 1e-5, 1e-5


# ----- transformers side: where each family keeps its modules --------------------------------------------
LLAMA_LIKE = dict(layers="model.layers", embed="model.embed_tokens", final_norm="model.norm", ln1="input_layernorm",
                  ln2="post_attention_layernorm", attn="self_attn", out_proj="self_attn.o_proj", mlp="mlp",
                  mlp_in="mlp.gate_proj", mlp_linear="mlp.up_proj", mlp_out="mlp.down_proj", rotary="model.rotary_emb")
LAYOUTS = {
    "gpt2": dict(layers="transformer.h", embed="transformer.wte", pos_embed="transformer.wpe",
                 final_norm="transformer.ln_f", ln1="ln_1", ln2="ln_2", attn="attn", qkv="attn.c_attn",
                 out_proj="attn.c_proj", mlp="mlp", mlp_in="mlp.c_fc", mlp_out="mlp.c_proj"),
    "gpt_neox": dict(layers="gpt_neox.layers", embed="gpt_neox.embed_in", final_norm="gpt_neox.final_layer_norm",
                     ln1="input_layernorm", ln2="post_attention_layernorm", attn="attention",
                     qkv="attention.query_key_value", out_proj="attention.dense", mlp="mlp",
                     mlp_in="mlp.dense_h_to_4h", mlp_out="mlp.dense_4h_to_h", rotary="gpt_neox.rotary_emb"),
    "llama": LLAMA_LIKE, "mistral": LLAMA_LIKE, "qwen2": LLAMA_LIKE,
}


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def log_probs(logits: torch.Tensor) -> torch.Tensor:
    return logits.float().log_softmax(-1)


def _norm_scale(norm: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The norm's scale, by its formula, from its captured input: LayerNorm sqrt(var + eps), RMSNorm sqrt(mean x^2 + eps)."""
    if isinstance(norm, torch.nn.LayerNorm):
        return (x.var(-1, unbiased=False, keepdim=True) + norm.eps).sqrt()
    return (x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon).sqrt()


@functools.cache
def hf_reference(case: str) -> dict:
    """`transformers` eager on `families.tokens(case)`: outputs and every submodule activation, under interp's
    hook names (shapes as interp's), plus the norms' inputs and outputs and the q/k/v used for the scores."""
    model = families.hf_model(case)
    layout = LAYOUTS[model.config.model_type]
    cfg = model.config
    n_heads = cfg.num_attention_heads if hasattr(cfg, "num_attention_heads") else cfg.n_head
    d_model = cfg.hidden_size
    n_layers = cfg.num_hidden_layers
    d_head = getattr(cfg, "head_dim", None) or d_model // n_heads
    n_kv = getattr(cfg, "num_key_value_heads", None) or n_heads
    captured: dict[str, object] = {}
    handles = []

    def on_output(key, module):
        handles.append(module.register_forward_hook(lambda m, args, out: captured.__setitem__(key, out)))

    def on_input(key, module):
        handles.append(module.register_forward_pre_hook(lambda m, args: captured.__setitem__(key, args[0])))

    get = model.get_submodule
    on_output("hook_embed", get(layout["embed"]))
    if "pos_embed" in layout:
        on_output("hook_pos_embed", get(layout["pos_embed"]))
    if "rotary" in layout:
        on_output("cos_sin", get(layout["rotary"]))
    on_input("final_norm.in", get(layout["final_norm"]))
    on_output("final_norm.out", get(layout["final_norm"]))
    for layer in range(n_layers):
        block = get(layout["layers"])[layer]
        p = f"blocks.{layer}."
        for ours, theirs in (("ln1", "ln1"), ("ln2", "ln2")):
            on_input(p + ours + ".in", block.get_submodule(layout[theirs]))
            on_output(p + ours + ".out", block.get_submodule(layout[theirs]))
        if "qkv" in layout:
            on_output(p + "qkv", block.get_submodule(layout["qkv"]))
        else:
            attn = block.get_submodule(layout["attn"])
            for name in ("q", "k", "v"):
                on_output(p + name, getattr(attn, f"{name}_proj"))
        on_input(p + "attn.hook_z", block.get_submodule(layout["out_proj"]))
        on_output(p + "hook_attn_out", block.get_submodule(layout["attn"]))
        on_output(p + "hook_mlp_out", block.get_submodule(layout["mlp"]))
        on_output(p + "mlp.hook_pre", block.get_submodule(layout["mlp_in"]))
        if "mlp_linear" in layout:
            on_output(p + "mlp.hook_pre_linear", block.get_submodule(layout["mlp_linear"]))
        on_input(p + "mlp.hook_post", block.get_submodule(layout["mlp_out"]))
    tokens = families.tokens(case, BATCH, POS)
    try:
        with torch.no_grad():
            out = model(tokens, output_hidden_states=True, output_attentions=True)
    finally:
        for handle in handles:
            handle.remove()

    ref: dict = {"logits": out.logits, "hidden_states": out.hidden_states, "attentions": out.attentions,
                 "tokens": tokens, "model": model, "n_heads": n_heads, "n_kv_heads": n_kv, "d_head": d_head,
                 "n_layers": n_layers}
    ref["hook_embed"] = captured["hook_embed"]
    if "hook_pos_embed" in captured:
        # transformers embeds one row of position ids, [1, pos, d_model]; interp's hook is per sequence.
        ref["hook_pos_embed"] = captured["hook_pos_embed"].expand(BATCH, -1, -1)
    apply_rotary = importlib.import_module(type(model).__module__).apply_rotary_pos_emb if "rotary" in layout else None
    norms = {"ln_final": (get(layout["final_norm"]), "final_norm")}
    for layer in range(n_layers):
        block = get(layout["layers"])[layer]
        p = f"blocks.{layer}."
        norms[p + "ln1"] = (block.get_submodule(layout["ln1"]), p + "ln1")
        norms[p + "ln2"] = (block.get_submodule(layout["ln2"]), p + "ln2")
        if "qkv" not in layout:
            q, k, v = (captured[p + name].view(BATCH, POS, -1, d_head) for name in "qkv")
        elif model.config.model_type == "gpt2":  # c_attn: [q | k | v], each d_model wide
            q, k, v = (t.view(BATCH, POS, n_heads, d_head) for t in captured[p + "qkv"].split(d_model, dim=-1))
        else:  # NeoX query_key_value: per head [q | k | v]
            q, k, v = captured[p + "qkv"].view(BATCH, POS, n_heads, 3 * d_head).chunk(3, dim=-1)
        ref[p + "attn.hook_q"], ref[p + "attn.hook_k"], ref[p + "attn.hook_v"] = q, k, v
        if apply_rotary is not None:
            cos, sin = captured["cos_sin"]
            q_rot, k_rot = apply_rotary(q.transpose(1, 2), k.transpose(1, 2), cos, sin)  # HF's [b, heads, pos, d]
            q_rot, k_rot = q_rot.transpose(1, 2), k_rot.transpose(1, 2)
            ref[p + "attn.hook_rot_q"], ref[p + "attn.hook_rot_k"] = q_rot, k_rot
        else:
            q_rot, k_rot = q, k
        k_per_query_head = k_rot.repeat_interleave(n_heads // n_kv, dim=2)  # query head h reads kv head h // group
        ref[p + "scores"] = torch.einsum("bqhd,bkhd->bhqk", q_rot, k_per_query_head) / math.sqrt(d_head)
        ref[p + "attn.hook_z"] = captured[p + "attn.hook_z"].view(BATCH, POS, n_heads, d_head)
        attn_out = captured[p + "hook_attn_out"]
        ref[p + "hook_attn_out"] = attn_out[0] if isinstance(attn_out, tuple) else attn_out
        ref[p + "hook_mlp_out"] = captured[p + "hook_mlp_out"]
        if case not in PARALLEL:
            ref[p + "hook_resid_mid"] = out.hidden_states[layer] + ref[p + "hook_attn_out"]
        for name in ("mlp.hook_pre", "mlp.hook_pre_linear", "mlp.hook_post"):
            if p + name in captured:
                ref[p + name] = captured[p + name]
    for ours, (module, key) in norms.items():
        x = captured[key + ".in"]
        ref[ours + ".in"], ref[ours + ".out"] = x, captured[key + ".out"]
        ref[ours + ".weight"], ref[ours + ".bias"] = module.weight, getattr(module, "bias", None)
        ref[ours + ".hook_scale"] = _norm_scale(module, x)
    return ref


@functools.cache
def interp_run(case: str) -> tuple[object, torch.Tensor, dict]:
    """(interp model, logits, {hook name: activation}) of `run_with_cache` on the reference's tokens."""
    model = families.load(case)
    logits, cache = model.run_with_cache(hf_reference(case)["tokens"])
    return model, logits, {name: cache[name] for name in cache}


def _close(name: str, ours: torch.Tensor, theirs: torch.Tensor, atol: float = ACT_ATOL,
           rtol: float = ACT_RTOL) -> str | None:
    """None if equal within tolerance, else a line saying where and by how much they differ."""
    if ours.shape != theirs.shape:
        return f"{name}: shape {tuple(ours.shape)} != transformers' {tuple(theirs.shape)}"
    error = (ours.double() - theirs.double()).abs()
    bad = error > atol + rtol * theirs.double().abs()
    if bad.any():
        where = tuple(int(i) for i in (bad.nonzero()[0]))
        return (f"{name}: max abs error {error.max().item():.3g} ({int(bad.sum())} of {bad.numel()} entries "
                f"outside atol={atol:g} rtol={rtol:g}, first at {where})")
    return None


def _report(problems: list[str | None]) -> None:
    problems = [p for p in problems if p]
    assert not problems, "interp differs from transformers:\n  " + "\n  ".join(problems)


# ----- 1. log-probs -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ALL_CASES)
def test_log_probs_match_eager_and_sdpa(case):
    _, logits, _ = interp_run(case)
    ref = hf_reference(case)
    with torch.no_grad():
        sdpa = families.hf_model(case, attn_implementation="sdpa")(ref["tokens"]).logits
        plain = families.load(case)(ref["tokens"])  # the fused path, with no hook attached
    ours = log_probs(logits)
    assert max_abs(ours, log_probs(ref["logits"])) <= LOGPROB_ATOL, ("eager", max_abs(ours, log_probs(ref["logits"])))
    assert max_abs(ours, log_probs(sdpa)) <= LOGPROB_ATOL, ("sdpa", max_abs(ours, log_probs(sdpa)))
    assert max_abs(log_probs(plain), log_probs(ref["logits"])) <= LOGPROB_ATOL


# ----- 2. residual stream -------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ALL_CASES)
def test_residual_stream_matches_hidden_states(case):
    _, _, cache = interp_run(case)
    ref = hf_reference(case)
    n_layers = ref["n_layers"]
    problems = [_close(f"blocks.{layer}.hook_resid_pre", cache[f"blocks.{layer}.hook_resid_pre"],
                       ref["hidden_states"][layer]) for layer in range(n_layers)]
    problems += [_close(f"blocks.{layer}.hook_resid_post", cache[f"blocks.{layer}.hook_resid_post"],
                        ref["hidden_states"][layer + 1]) for layer in range(n_layers - 1)]
    # transformers' last hidden state is after the final norm; compare with the norm's input instead.
    last = f"blocks.{n_layers - 1}.hook_resid_post"
    problems.append(_close(last, cache[last], ref["ln_final.in"]))
    _report(problems)


# ----- 3. attention patterns ------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ALL_CASES)
def test_attention_patterns_match(case):
    """Patterns read from the cache (computed from q and k after the run) and captured by a hook during the
    forward (which makes the layer take its explicit-attention path) both equal transformers' eager ones."""
    model, _, cache = interp_run(case)
    ref = hf_reference(case)
    hooked: dict[str, torch.Tensor] = {}

    def keep(pattern, hook):
        hooked[hook.name] = pattern.detach().clone()

    with torch.no_grad():
        logits = model.run_with_hooks(ref["tokens"], fwd_hooks=[(lambda n: n.endswith("attn.hook_pattern"), keep)])
    problems = []
    for layer in range(ref["n_layers"]):
        name = f"blocks.{layer}.attn.hook_pattern"
        problems.append(_close(name + " (cache)", cache[name], ref["attentions"][layer], PATTERN_ATOL, 0))
        problems.append(_close(name + " (hooked)", hooked[name], ref["attentions"][layer], PATTERN_ATOL, 0))
    problems.append(_close("log-probs with patterns hooked", log_probs(logits), log_probs(ref["logits"]),
                           LOGPROB_ATOL, 0))
    _report(problems)


# ----- 4. every other hook ----------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ALL_CASES)
def test_every_hook_matches_transformers_submodule(case):
    _, _, cache = interp_run(case)
    ref = hf_reference(case)
    problems = [_close("hook_embed", cache["hook_embed"], ref["hook_embed"])]
    if "hook_pos_embed" in ref:
        problems.append(_close("hook_pos_embed", cache["hook_pos_embed"], ref["hook_pos_embed"]))
    norms = ["ln_final"] + [f"blocks.{layer}.{ln}" for layer in range(ref["n_layers"]) for ln in ("ln1", "ln2")]
    for norm in norms:
        normalized, scale = cache[norm + ".hook_normalized"], cache[norm + ".hook_scale"]
        out = normalized * ref[norm + ".weight"]
        if ref[norm + ".bias"] is not None:
            out = out + ref[norm + ".bias"]
        problems.append(_close(norm + ".hook_normalized * gain + bias", out, ref[norm + ".out"]))
        problems.append(_close(norm + ".hook_scale", scale, ref[norm + ".hook_scale"]))
    compared = ["attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_z", "hook_attn_out", "hook_mlp_out",
                "mlp.hook_pre", "mlp.hook_post"]
    compared += ["attn.hook_rot_q", "attn.hook_rot_k"] if case in ROTARY else []
    compared += ["hook_resid_mid"] if case not in PARALLEL else []
    compared += ["mlp.hook_pre_linear"] if case in GATED else []
    for layer in range(ref["n_layers"]):
        p = f"blocks.{layer}."
        problems += [_close(p + name, cache[p + name], ref[p + name]) for name in compared]
        scores, pattern = cache[p + "attn.hook_attn_scores"], ref["attentions"][layer]
        if scores.shape != pattern.shape:
            problems.append(f"{p}attn.hook_attn_scores: shape {tuple(scores.shape)} != {tuple(pattern.shape)}")
            continue
        masked = torch.isinf(scores)
        if not torch.equal(masked, pattern == 0):
            problems.append(f"{p}attn.hook_attn_scores: -inf at {int(masked.sum())} entries, transformers' pattern "
                            f"is 0 at {int((pattern == 0).sum())}; they disagree at "
                            f"{int((masked != (pattern == 0)).sum())}")
        elif (scores[masked] > 0).any():
            problems.append(f"{p}attn.hook_attn_scores: masked entries are +inf")
        else:
            problems.append(_close(p + "attn.hook_attn_scores (unmasked)", scores[~masked], ref[p + "scores"][~masked]))
    _report(problems)


# ----- 5. the hook set per family ---------------------------------------------------------------------------
@pytest.mark.parametrize("case", ALL_CASES)
def test_hook_set_follows_the_family(case):
    model = families.load(case)
    names = set(model.hook_names())
    n_layers = families.CASES[case]().num_hidden_layers
    per_layer = {"attn.hook_rot_q": case in ROTARY, "attn.hook_rot_k": case in ROTARY,
                 "hook_resid_mid": case not in PARALLEL, "mlp.hook_pre_linear": case in GATED,
                 "attn.hook_pattern": True, "mlp.hook_post": True}
    for layer in range(n_layers):
        for suffix, expected in per_layer.items():
            assert (f"blocks.{layer}.{suffix}" in names) == expected, (layer, suffix, expected)
    assert ("hook_pos_embed" in names) == (families.family(case) == "gpt2")
    assert not any(name.startswith(f"blocks.{n_layers}.") for name in names)


# ----- 6. bf16 ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["gpt2", "llama_gqa"])
def test_bf16_no_worse_than_transformers_bf16(case):
    """bf16 keeps 8 mantissa bits, so any bf16 forward is ~1e-2 away from fp32 in log-probs, and how far
    depends on where each implementation rounds (e.g. RMSNorm/softmax upcasts). A fixed tolerance is either
    loose or flaky, so the yardstick is transformers' own bf16 error on the same weights and tokens: ours must
    be within 2x of it, plus a floor of 1/32 (two bf16 ulps of an O(4) log-prob: 2 * 2^-6), so a model that
    rounds differently yet as well passes. A wrong weight or mask moves log-probs by O(1) and still fails."""
    ref = hf_reference(case)
    tokens = ref["tokens"]
    fp32 = log_probs(ref["logits"])
    ours = families.load(case, dtype="bfloat16")
    hf_bf16 = families.hf_model(case).to(torch.bfloat16)
    assert ours.W_E.dtype == torch.bfloat16
    with torch.no_grad():
        ours_error = max_abs(log_probs(ours(tokens)), fp32)
        hf_error = max_abs(log_probs(hf_bf16(tokens).logits), fp32)
    assert hf_error > 0  # transformers really ran in bf16
    assert ours_error <= 2 * hf_error + 1 / 32, (ours_error, hf_error)


# ----- 7. the sliding window really matters ----------------------------------------------------------------
def test_sliding_window_changes_the_output_and_we_follow_it():
    case = "mistral_window"
    ref = hf_reference(case)
    unwindowed = families.hf_model(case)
    unwindowed.config.sliding_window = None
    with torch.no_grad():
        full_logits = unwindowed(ref["tokens"]).logits
    # Only positions after the window (5) can differ; they must, or this test could not catch a missing window.
    assert max_abs(full_logits[:, :5], ref["logits"][:, :5]) <= 1e-5
    assert max_abs(log_probs(full_logits), log_probs(ref["logits"])) > 0.1
    _, logits, _ = interp_run(case)
    assert max_abs(log_probs(logits), log_probs(ref["logits"])) <= LOGPROB_ATOL


# ----- the cases really have the properties they are named for --------------------------------------------
def test_cases_have_their_properties():
    def inv_freq(case):
        return families.hf_model(case).model.rotary_emb.inv_freq

    default = 1.0 / 10000 ** (torch.arange(0, 8, 2, dtype=torch.float) / 8)  # d_head 8, as llama3/linear cases
    # llama3 with original context 16: wavelengths 2*pi/f above 16 are slowed 8x, the 6.3 of the fastest lies in
    # the smoothing band (4, 16), so it is slowed by less: every frequency changes, not all by the same factor.
    llama3 = inv_freq("llama3_rope")
    torch.testing.assert_close(llama3[1:], default[1:] / 8)
    assert default[0] / 8 < llama3[0] < default[0]
    torch.testing.assert_close(inv_freq("llama_linear_rope"), default / 2)
    qwen = families.hf_model("qwen2_bias")
    assert [layer.self_attn.sliding_window for layer in qwen.model.layers] == [None, 4]
    assert qwen.model.layers[0].self_attn.q_proj.bias is not None and qwen.config.num_key_value_heads * 3 == 6
    mistral = families.hf_model("mistral_window")
    assert mistral.config.sliding_window == 5 < POS and mistral.config.head_dim * 4 != mistral.config.hidden_size
    gqa = families.hf_model("llama_gqa")
    assert gqa.model.layers[1].self_attn.head_dim == 12 != 48 // 6 and gqa.model.layers[1].self_attn.num_key_value_groups == 3
    for case in ALL_CASES:
        model = families.hf_model(case)
        tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
        assert tied == bool(model.config.tie_word_embeddings), case
        assert model.get_input_embeddings().weight.dtype == torch.float32
    neox = families.hf_model("neox_parallel")
    assert neox.gpt_neox.layers[0].attention.rotary_ndims == 4 and neox.config.use_parallel_residual
    serial = families.hf_model("neox_serial")
    assert serial.gpt_neox.layers[0].attention.rotary_ndims == 8 and not serial.config.use_parallel_residual
    llama3 = families.hf_model("llama3_rope")
    assert llama3.model.layers[0].self_attn.q_proj.bias is not None and llama3.model.layers[0].mlp.up_proj.bias is not None
