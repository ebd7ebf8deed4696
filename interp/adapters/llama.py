"""Llama 2/3 (`LlamaForCausalLM`): RMSNorm, rotary (optionally llama3- or linearly scaled), grouped-query
attention, SwiGLU MLP, separate q/k/v/o Linears (optional biases), tied or untied unembedding.
Mistral and Qwen2 checkpoints use the same tensor names (see `interp.adapters.mistral`, `.qwen2`)."""

from __future__ import annotations

from typing import Any

import torch

from interp.adapters.base import Entry, Getter, eos, hf_eos, rope, rope_parameters, same, token_id, transposed
from interp.config import Config

MODEL_TYPE = "llama"
PREFIXES = ("model.",)
IGNORED = (".rotary_emb.inv_freq",)


def config(get: Getter, model_name: str, **family: Any) -> Config:
    """Config of a Llama-layout checkpoint; `family` overrides fields (Mistral's window, Qwen2's biases)."""
    if (get("pretraining_tp") or 1) != 1:
        raise ValueError(f"Unsupported Llama option pretraining_tp={get('pretraining_tp')}; interp supports 1.")
    d_model, n_heads, vocab_size = get("hidden_size"), get("num_attention_heads"), get("vocab_size")
    d_head = get("head_dim") or d_model // n_heads
    fields = dict(
        n_layers=get("num_hidden_layers"), d_model=d_model, n_heads=n_heads, d_mlp=get("intermediate_size"),
        d_vocab=vocab_size, n_ctx=get("max_position_embeddings"), d_head=d_head,
        n_kv_heads=get("num_key_value_heads") or n_heads, act_fn=get("hidden_act", "silu"), eps=get("rms_norm_eps", 1e-6),
        normalization="RMS", gated_mlp=True, attn_qkv_bias=bool(get("attention_bias", False)),
        attn_out_bias=bool(get("attention_bias", False)), mlp_bias=bool(get("mlp_bias", False)),
        tie_word_embeddings=get("tie_word_embeddings", False), bos_token_id=token_id(get, "bos_token_id", vocab_size),
        pad_token_id=token_id(get, "pad_token_id", vocab_size),
        **eos(get, vocab_size), model_type=MODEL_TYPE, model_name=model_name,
        **rope(get, d_head))
    fields.update(family)
    return Config(**fields)


def hf_config_kwargs(cfg: Config) -> dict[str, Any]:
    return dict(num_hidden_layers=cfg.n_layers, hidden_size=cfg.d_model, num_attention_heads=cfg.n_heads,
                num_key_value_heads=cfg.n_kv_heads, head_dim=cfg.d_head, intermediate_size=cfg.d_mlp,
                vocab_size=cfg.d_vocab, max_position_embeddings=cfg.n_ctx, hidden_act=cfg.act_fn, rms_norm_eps=cfg.eps,
                tie_word_embeddings=cfg.tie_word_embeddings, rope_parameters=rope_parameters(cfg),
                bos_token_id=cfg.bos_token_id, pad_token_id=cfg.pad_token_id, eos_token_id=hf_eos(cfg),
                attention_dropout=0.0)


def hf_config(cfg: Config) -> Any:
    from transformers import LlamaConfig

    if cfg.attn_qkv_bias != cfg.attn_out_bias:
        raise ValueError("A Llama config has one attention_bias for q, k, v and o; this Config differs (use qwen2).")
    return LlamaConfig(attention_bias=cfg.attn_qkv_bias, mlp_bias=cfg.mlp_bias, **hf_config_kwargs(cfg))


def entries(cfg: Config) -> list[Entry]:
    d, m, h, kv, dh = cfg.d_model, cfg.d_mlp, cfg.n_heads, cfg.n_kv_heads, cfg.d_head
    split = [h * dh, kv * dh, kv * dh]
    names = ("q_proj", "k_proj", "v_proj")
    found = [same("W_E", "embed_tokens.weight", (cfg.d_vocab, d)), same("ln_final.w", "norm.weight", (d,))]
    if not cfg.tie_word_embeddings:
        found.append(transposed("W_U", "lm_head.weight", (cfg.d_vocab, d)))
    for layer in range(cfg.n_layers):
        ours, theirs = f"blocks.{layer}.", f"layers.{layer}."
        attn = theirs + "self_attn."
        found += [
            same(ours + "ln1.w", theirs + "input_layernorm.weight", (d,)),
            Entry(ours + "attn.W_QKV", tuple(f"{attn}{name}.weight" for name in names), tuple((n, d) for n in split),
                  lambda q, k, v: torch.cat((q, k, v)).T.view(d, h + 2 * kv, dh),  # one copy: the fused layout
                  lambda t: tuple(part.T for part in t.reshape(d, -1).split(split, dim=1))),
            Entry(ours + "attn.W_O", (attn + "o_proj.weight",), ((d, h * dh),),
                  lambda t: t.T.view(h, dh, d), lambda t: (t.reshape(h * dh, d).T,)),
            same(ours + "ln2.w", theirs + "post_attention_layernorm.weight", (d,)),
            transposed(ours + "mlp.W_gate", theirs + "mlp.gate_proj.weight", (m, d)),
            transposed(ours + "mlp.W_in", theirs + "mlp.up_proj.weight", (m, d)),
            transposed(ours + "mlp.W_out", theirs + "mlp.down_proj.weight", (d, m)),
        ]
        if cfg.attn_qkv_bias:
            found.append(Entry(ours + "attn.b_QKV", tuple(f"{attn}{name}.bias" for name in names),
                               tuple((n,) for n in split), lambda q, k, v: torch.cat((q, k, v)).view(h + 2 * kv, dh),
                               lambda t: tuple(t.reshape(-1).split(split))))
        if cfg.attn_out_bias:
            found.append(same(ours + "attn.b_O", attn + "o_proj.bias", (d,)))
        if cfg.mlp_bias:
            found += [same(ours + f"mlp.{b}", theirs + f"mlp.{proj}.bias", (n,))
                      for b, proj, n in (("b_gate", "gate_proj", m), ("b_in", "up_proj", m), ("b_out", "down_proj", d))]
    return found
