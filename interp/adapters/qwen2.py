"""Qwen2 (`Qwen2ForCausalLM`): Llama's layout with q/k/v biases (no o or MLP bias), and optionally a sliding
window on the layers from `max_window_layers` on (its `layer_types`)."""

from __future__ import annotations

from typing import Any

import interp.adapters.llama as llama
from interp.adapters.base import Entry, Getter
from interp.config import Config

MODEL_TYPE = "qwen2"
PREFIXES = llama.PREFIXES
IGNORED = llama.IGNORED


def config(get: Getter, model_name: str) -> Config:
    window = get("sliding_window") if get("use_sliding_window", False) else None
    layer_types = get("layer_types")
    if window is not None and layer_types is None:
        layer_types = ["sliding_attention" if layer >= get("max_window_layers", 28) else "full_attention"
                       for layer in range(get("num_hidden_layers"))]
    sliding = tuple(layer for layer, kind in enumerate(layer_types or []) if kind == "sliding_attention")
    if window is None or not sliding:
        window, sliding = None, None
    return llama.config(get, model_name, model_type=MODEL_TYPE, sliding_window=window, sliding_window_layers=sliding,
                        attn_qkv_bias=True, attn_out_bias=False, mlp_bias=False)


def hf_config(cfg: Config) -> Any:
    from transformers import Qwen2Config

    layers = range(cfg.n_layers)
    layer_types = ["sliding_attention" if cfg.window_of(layer) else "full_attention" for layer in layers]
    return Qwen2Config(use_sliding_window=cfg.sliding_window is not None, sliding_window=cfg.sliding_window,
                       layer_types=layer_types, **llama.hf_config_kwargs(cfg))


def entries(cfg: Config) -> list[Entry]:
    return llama.entries(cfg)
