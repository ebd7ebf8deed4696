"""GPT-NeoX (Pythia, `GPTNeoXForCausalLM`): LayerNorm, partial rotary, parallel (or serial) residual, biases
everywhere, untied `embed_out`. Its `query_key_value` Linear interleaves q, k, v per head:
output row `head * 3 d_head + {q: 0, k: 1, v: 2} * d_head + i`."""

from __future__ import annotations

from typing import Any

from interp.adapters.base import Entry, Getter, eos, hf_eos, rope, rope_parameters, same, token_id, transposed
from interp.config import Config

MODEL_TYPE = "gpt_neox"
PREFIXES = ("gpt_neox.",)
ALIASES = {"lm_head.weight": "embed_out.weight"}  # transformers 5's in-memory name; save_pretrained writes embed_out
IGNORED = (".attention.bias", ".attention.masked_bias", ".rotary_emb.inv_freq")  # buffers in old checkpoints


def config(get: Getter, model_name: str) -> Config:
    d_model, n_heads, vocab_size = get("hidden_size"), get("num_attention_heads"), get("vocab_size")
    bias = get("attention_bias", True)
    return Config(n_layers=get("num_hidden_layers"), d_model=d_model, n_heads=n_heads, d_mlp=get("intermediate_size"),
                  d_vocab=vocab_size, n_ctx=get("max_position_embeddings"), act_fn=get("hidden_act", "gelu"),
                  eps=get("layer_norm_eps", 1e-5), normalization="LN", parallel_blocks=get("use_parallel_residual", True),
                  attn_qkv_bias=bias, attn_out_bias=bias, mlp_bias=True,
                  tie_word_embeddings=get("tie_word_embeddings", False),
                  bos_token_id=token_id(get, "bos_token_id", vocab_size),
                  pad_token_id=token_id(get, "pad_token_id", vocab_size), **eos(get, vocab_size),
                  model_type=MODEL_TYPE, model_name=model_name, **rope(get, d_model // n_heads, default_fraction=0.25))


def hf_config(cfg: Config) -> Any:
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(num_hidden_layers=cfg.n_layers, hidden_size=cfg.d_model, num_attention_heads=cfg.n_heads,
                         intermediate_size=cfg.d_mlp, vocab_size=cfg.d_vocab, max_position_embeddings=cfg.n_ctx,
                         hidden_act=cfg.act_fn, layer_norm_eps=cfg.eps, use_parallel_residual=cfg.parallel_blocks,
                         attention_bias=cfg.attn_qkv_bias, tie_word_embeddings=cfg.tie_word_embeddings,
                         rope_parameters=rope_parameters(cfg), bos_token_id=cfg.bos_token_id, eos_token_id=hf_eos(cfg),
                         pad_token_id=cfg.pad_token_id, hidden_dropout=0.0, attention_dropout=0.0)


def entries(cfg: Config) -> list[Entry]:
    d, m, h, dh = cfg.d_model, cfg.d_mlp, cfg.n_heads, cfg.d_head

    def qkv_weight(t):  # [h * (q|k|v) * dh, d] -> [d, (q|k|v) * h, dh]
        return t.view(h, 3, dh, d).permute(3, 1, 0, 2).reshape(d, 3 * h, dh)

    def qkv_weight_back(t):
        return (t.reshape(d, 3, h, dh).permute(2, 1, 3, 0).reshape(3 * h * dh, d),)

    found = [same("W_E", "embed_in.weight", (cfg.d_vocab, d)),
             same("ln_final.w", "final_layer_norm.weight", (d,)), same("ln_final.b", "final_layer_norm.bias", (d,))]
    if not cfg.tie_word_embeddings:
        found.append(transposed("W_U", "embed_out.weight", (cfg.d_vocab, d)))
    for layer in range(cfg.n_layers):
        ours, theirs = f"blocks.{layer}.", f"layers.{layer}."
        found += [same(ours + "ln1.w", theirs + "input_layernorm.weight", (d,)),
                  same(ours + "ln1.b", theirs + "input_layernorm.bias", (d,)),
                  Entry(ours + "attn.W_QKV", (theirs + "attention.query_key_value.weight",), ((3 * h * dh, d),),
                        qkv_weight, qkv_weight_back),
                  Entry(ours + "attn.W_O", (theirs + "attention.dense.weight",), ((d, h * dh),),
                        lambda t: t.T.view(h, dh, d), lambda t: (t.reshape(h * dh, d).T,)),
                  same(ours + "ln2.w", theirs + "post_attention_layernorm.weight", (d,)),
                  same(ours + "ln2.b", theirs + "post_attention_layernorm.bias", (d,)),
                  transposed(ours + "mlp.W_in", theirs + "mlp.dense_h_to_4h.weight", (m, d)),
                  same(ours + "mlp.b_in", theirs + "mlp.dense_h_to_4h.bias", (m,)),
                  transposed(ours + "mlp.W_out", theirs + "mlp.dense_4h_to_h.weight", (d, m)),
                  same(ours + "mlp.b_out", theirs + "mlp.dense_4h_to_h.bias", (d,))]
        if cfg.attn_qkv_bias:
            found += [Entry(ours + "attn.b_QKV", (theirs + "attention.query_key_value.bias",), ((3 * h * dh,),),
                            lambda t: t.view(h, 3, dh).transpose(0, 1).reshape(3 * h, dh),
                            lambda t: (t.view(3, h, dh).transpose(0, 1).reshape(-1),)),
                      same(ours + "attn.b_O", theirs + "attention.dense.bias", (d,))]
    return found
