"""Mistral (`MistralForCausalLM`): Llama's layout and numerics plus a sliding attention window on every layer."""

from __future__ import annotations

from typing import Any

import interp.adapters.llama as llama
from interp.adapters.base import Entry, Getter
from interp.config import Config

MODEL_TYPE = "mistral"
PREFIXES = llama.PREFIXES
IGNORED = llama.IGNORED


def config(get: Getter, model_name: str) -> Config:
    if get("layer_types") and len(set(get("layer_types"))) > 1:
        raise ValueError("This Mistral config alternates attention types per layer (layer_types), which "
                         "transformers' Mistral ignores; interp follows MistralForCausalLM and refuses the ambiguity.")
    return llama.config(get, model_name, model_type=MODEL_TYPE, sliding_window=get("sliding_window"),
                        attn_qkv_bias=False, attn_out_bias=False, mlp_bias=False)


def hf_config(cfg: Config) -> Any:
    from transformers import MistralConfig

    return MistralConfig(sliding_window=cfg.sliding_window, **llama.hf_config_kwargs(cfg))


def entries(cfg: Config) -> list[Entry]:
    return llama.entries(cfg)
