"""Architecture adapters: one small module per `transformers` family, mapping its config and tensor names to ours.

Each module has `MODEL_TYPE`, `PREFIXES` (the base-model prefix of its tensor names), `IGNORED` (buffers
some checkpoints carry), optionally `ALIASES` (other names of a tensor), `config(get, model_name) -> Config`, `hf_config(cfg)` and `entries(cfg)` (the
tensor map, see `interp.adapters.base.Entry`). Adding a family is one such module plus a line in
`FAMILIES`; the components it needs are chosen by `interp.components.factory` from the Config.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import ModuleType
from typing import Any

from torch import Tensor

from interp.adapters import base, gpt2, gpt_neox, llama, mistral, qwen2
from interp.config import Config

FAMILIES: dict[str, ModuleType] = {module.MODEL_TYPE: module for module in (gpt2, gpt_neox, llama, mistral, qwen2)}
UNEMBEDDINGS = ("lm_head.weight", "embed_out.weight")  # dropped when tied (some checkpoints store the copy)


def adapter(model_type: Any) -> ModuleType:
    """The adapter of a `model_type`; ValueError listing the supported ones otherwise."""
    if model_type not in FAMILIES:
        raise ValueError(f"Unsupported architecture model_type={model_type!r}: interp implements {sorted(FAMILIES)} "
                         "(GPT-2, GPT-NeoX/Pythia, Llama 2/3, Mistral, Qwen2). Convert the model, or add an adapter "
                         "(see interp/adapters/__init__.py) and open an issue.")
    return FAMILIES[model_type]


def config_from_hf(hf_config: Any, model_name: str = "custom") -> Config:
    """A Config from a `transformers` config object, or its dict (as in config.json; normalised through the
    family's transformers config class first, so defaults and legacy keys mean what they mean there)."""
    get = base.getter(hf_config)
    family = adapter(get("model_type"))
    if isinstance(hf_config, Mapping):
        from transformers import AutoConfig

        fields = {key: value for key, value in hf_config.items() if key != "model_type"}
        try:
            hf_config = AutoConfig.for_model(get("model_type"), **fields)
        except Exception as error:  # transformers validates with several error types (e.g. a strict-dataclass error)
            raise ValueError(f"The {get('model_type')} config could not be read by transformers ({error}); "
                             "pass the config.json saved with these weights.") from None
    return family.config(base.getter(hf_config), model_name)


def hf_config(cfg: Config) -> Any:
    """The equivalent `transformers` config (dropout off)."""
    return adapter(cfg.model_type).hf_config(cfg)


def to_interp(hf_state: Mapping[str, Tensor], cfg: Config) -> dict[str, Tensor]:
    """Map a `transformers` state dict (with or without the base-model prefix) to interp names, checking every
    name and shape; raises ValueError naming every missing, unexpected or mis-shaped tensor."""
    family = adapter(cfg.model_type)
    state = {}
    for name, tensor in hf_state.items():
        for prefix in family.PREFIXES:
            name = name.removeprefix(prefix)
        state[getattr(family, "ALIASES", {}).get(name, name)] = tensor
    if cfg.tie_word_embeddings:
        for name in UNEMBEDDINGS:
            state.pop(name, None)  # tied: the unembedding is W_E transposed
    return base.to_interp(family.entries(cfg), state, cfg, family.IGNORED)


def to_hf(state: Mapping[str, Tensor], cfg: Config) -> dict[str, Tensor]:
    """The `transformers` state dict (with the usual prefixes, as `save_pretrained` writes it) of interp weights."""
    family = adapter(cfg.model_type)
    hf_state = base.to_hf(family.entries(cfg), state, cfg)
    prefix = family.PREFIXES[0]
    return {(name if name in UNEMBEDDINGS else prefix + name): tensor for name, tensor in hf_state.items()}
