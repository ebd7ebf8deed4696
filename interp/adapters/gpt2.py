"""GPT-2 (`GPT2LMHeadModel`): LayerNorm, learned positions, fused Conv1D q/k/v `[in, out]`, tied unembedding."""

from __future__ import annotations

from typing import Any

from interp.adapters.base import Entry, Getter, eos, hf_eos, same, token_id, transposed
from interp.config import Config

MODEL_TYPE = "gpt2"
PREFIXES = ("transformer.",)
IGNORED = (".attn.bias", ".attn.masked_bias")  # causal-mask buffers in old checkpoints
UNSUPPORTED = {"scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
               "add_cross_attention": False, "scale_attn_weights": True}


def config(get: Getter, model_name: str) -> Config:
    for key, expected in UNSUPPORTED.items():
        if get(key, expected) != expected:
            raise ValueError(f"Unsupported GPT-2 option {key}={get(key)!r}; interp supports only {key}={expected}.")
    d_model, vocab_size = get("n_embd"), get("vocab_size")
    return Config(n_layers=get("n_layer"), d_model=d_model, n_heads=get("n_head"), d_mlp=get("n_inner") or 4 * d_model,
                  d_vocab=vocab_size, n_ctx=get("n_positions"), act_fn=get("activation_function", "gelu_new"),
                  eps=get("layer_norm_epsilon", 1e-5), tie_word_embeddings=get("tie_word_embeddings", True),
                  bos_token_id=token_id(get, "bos_token_id", vocab_size),
                  pad_token_id=token_id(get, "pad_token_id", vocab_size),
                  **eos(get, vocab_size), model_type=MODEL_TYPE, model_name=model_name)


def hf_config(cfg: Config) -> Any:
    from transformers import GPT2Config

    return GPT2Config(n_layer=cfg.n_layers, n_embd=cfg.d_model, n_head=cfg.n_heads, n_inner=cfg.d_mlp,
                      vocab_size=cfg.d_vocab, n_positions=cfg.n_ctx, activation_function=cfg.act_fn,
                      layer_norm_epsilon=cfg.eps, tie_word_embeddings=cfg.tie_word_embeddings,
                      bos_token_id=cfg.bos_token_id, pad_token_id=cfg.pad_token_id, eos_token_id=hf_eos(cfg),
                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)


def entries(cfg: Config) -> list[Entry]:
    d, m, h, dh = cfg.d_model, cfg.d_mlp, cfg.n_heads, cfg.d_head
    found = [same("W_E", "wte.weight", (cfg.d_vocab, d)), same("W_pos", "wpe.weight", (cfg.n_ctx, d)),
             same("ln_final.w", "ln_f.weight", (d,)), same("ln_final.b", "ln_f.bias", (d,))]
    if not cfg.tie_word_embeddings:
        found.append(transposed("W_U", "lm_head.weight", (cfg.d_vocab, d)))
    for layer in range(cfg.n_layers):
        ours, theirs = f"blocks.{layer}.", f"h.{layer}."
        found += [
            same(ours + "ln1.w", theirs + "ln_1.weight", (d,)), same(ours + "ln1.b", theirs + "ln_1.bias", (d,)),
            Entry(ours + "attn.W_QKV", (theirs + "attn.c_attn.weight",), ((d, 3 * h * dh),),
                  lambda t: t.view(d, 3 * h, dh), lambda t: (t.reshape(d, 3 * h * dh),)),
            Entry(ours + "attn.b_QKV", (theirs + "attn.c_attn.bias",), ((3 * h * dh,),),
                  lambda t: t.view(3 * h, dh), lambda t: (t.reshape(-1),)),
            Entry(ours + "attn.W_O", (theirs + "attn.c_proj.weight",), ((h * dh, d),),
                  lambda t: t.view(h, dh, d), lambda t: (t.reshape(h * dh, d),)),
            same(ours + "attn.b_O", theirs + "attn.c_proj.bias", (d,)),
            same(ours + "ln2.w", theirs + "ln_2.weight", (d,)), same(ours + "ln2.b", theirs + "ln_2.bias", (d,)),
            same(ours + "mlp.W_in", theirs + "mlp.c_fc.weight", (d, m)), same(ours + "mlp.b_in", theirs + "mlp.c_fc.bias", (m,)),
            same(ours + "mlp.W_out", theirs + "mlp.c_proj.weight", (m, d)),
            same(ours + "mlp.b_out", theirs + "mlp.c_proj.bias", (d,)),
        ]
    return found
