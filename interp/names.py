"""The hook-name contract: every hook point's name and shape, in forward order, in one place.

Names match TransformerLens, so code written against it finds the same activations here.
Renaming one is a breaking change.
"""

from __future__ import annotations

import re

# name -> shape, in the order the forward pass reaches them.
EMBED_HOOKS = {
    "hook_embed": "batch pos d_model",
    "hook_pos_embed": "batch pos d_model",
}
BLOCK_HOOKS = {  # each prefixed with "blocks.{layer}."
    "hook_resid_pre": "batch pos d_model",
    # opt-in: per-head copies of resid_pre; while one is hooked, ln1 runs per copy and
    # ln1.hook_scale / ln1.hook_normalized gain an n_heads axis before their last one.
    "hook_q_input": "batch pos n_heads d_model",
    "hook_k_input": "batch pos n_heads d_model",  # opt-in
    "hook_v_input": "batch pos n_heads d_model",  # opt-in
    "ln1.hook_scale": "batch pos 1",
    "ln1.hook_normalized": "batch pos d_model",
    "attn.hook_q": "batch pos n_heads d_head",
    "attn.hook_k": "batch pos n_heads d_head",
    "attn.hook_v": "batch pos n_heads d_head",
    "attn.hook_attn_scores": "batch n_heads query_pos key_pos",
    "attn.hook_pattern": "batch n_heads query_pos key_pos",
    "attn.hook_z": "batch pos n_heads d_head",
    "attn.hook_result": "batch pos n_heads d_model",  # opt-in: per-head outputs
    "hook_attn_out": "batch pos d_model",
    "hook_resid_mid": "batch pos d_model",
    "ln2.hook_scale": "batch pos 1",
    "ln2.hook_normalized": "batch pos d_model",
    "mlp.hook_pre": "batch pos d_mlp",
    "mlp.hook_post": "batch pos d_mlp",
    "hook_mlp_out": "batch pos d_model",
    "hook_resid_post": "batch pos d_model",
}
FINAL_HOOKS = {
    "ln_final.hook_scale": "batch pos 1",
    "ln_final.hook_normalized": "batch pos d_model",
}
# Computed only when hooked or named explicitly (they cost n_heads x the memory of what they split);
# `run_with_cache()` with no filter leaves them out. Per-head results are derivable from hook_z.
OPT_IN_BLOCK_HOOKS = ("hook_q_input", "hook_k_input", "hook_v_input", "attn.hook_result")

# Short names for `act_name` and `cache[short, layer]`.
SHORT_NAMES = {suffix.split(".")[-1].removeprefix("hook_"): suffix for suffix in BLOCK_HOOKS
               if not suffix.startswith(("ln1.", "ln2."))}
SHORT_NAMES.update({"attn": "attn.hook_pattern", "result": "attn.hook_result",
                    "pre": "mlp.hook_pre", "post": "mlp.hook_post", "mlp_pre": "mlp.hook_pre",
                    "mlp_post": "mlp.hook_post", "scores": "attn.hook_attn_scores"})

_LAYER = re.compile(r"^blocks\.(\d+)\.")


def all_hook_names(n_layers: int) -> list[str]:
    """Every hook name of an n-layer model, in forward order."""
    names = list(EMBED_HOOKS)
    for layer in range(n_layers):
        names += [f"blocks.{layer}.{suffix}" for suffix in BLOCK_HOOKS]
    return names + list(FINAL_HOOKS)


def is_opt_in(name: str) -> bool:
    return any(name.endswith("." + suffix) for suffix in OPT_IN_BLOCK_HOOKS)


def layer_of(name: str, n_layers: int) -> int:
    """The block a hook name belongs to: -1 for the embeddings, n_layers for ln_final."""
    match = _LAYER.match(name)
    if match:
        return int(match.group(1))
    return -1 if name in EMBED_HOOKS else n_layers


def act_name(name: str, layer: int | None = None, layer_type: str | None = None) -> str:
    """Full hook name from a short one: `act_name("pattern", 3)` -> "blocks.3.attn.hook_pattern".

    `act_name("scale", 2, "ln1")` -> "blocks.2.ln1.hook_scale"; `act_name("scale")` -> ln_final's.
    Full names pass through unchanged.
    """
    if "." in name or name in EMBED_HOOKS:
        return name
    if name in ("embed", "pos_embed"):
        return f"hook_{name}"
    if name in ("scale", "normalized"):
        if layer is None:
            return f"ln_final.hook_{name}"
        if layer_type not in ("ln1", "ln2"):
            raise ValueError(f"act_name({name!r}, {layer}) needs layer_type='ln1' or 'ln2'.")
        return f"blocks.{layer}.{layer_type}.hook_{name}"
    if name not in SHORT_NAMES:
        raise KeyError(f"Unknown short hook name {name!r}; use one of {sorted(SHORT_NAMES)} or a full name.")
    if layer is None:
        raise ValueError(f"act_name({name!r}) needs a layer, e.g. act_name({name!r}, 0).")
    return f"blocks.{layer}.{SHORT_NAMES[name]}"
