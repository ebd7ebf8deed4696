"""Hook-name helpers: short names (`act_name("pattern", 3)`) and the layer a name belongs to.

Names match TransformerLens, so code written against it finds the same activations here; renaming one
is a breaking change. Which points a model has, with their shapes, comes from its modules
(`model.hook_names()`, `model.hook_shapes()`), checked against hand-written golden lists in tests/golden/.
"""

from __future__ import annotations

import re

# Short names for `act_name` and `cache[short, layer]` (a family has the points it has: rot_q/rot_k on rotary
# models, pre_linear on gated MLPs, no resid_mid on parallel blocks). The hook table itself is generated from
# the modules: each HookPoint declares its shape (`model.hook_shapes()`).
SHORT_NAMES = {
    "resid_pre": "hook_resid_pre", "resid_mid": "hook_resid_mid", "resid_post": "hook_resid_post",
    "q_input": "hook_q_input", "k_input": "hook_k_input", "v_input": "hook_v_input",
    "q": "attn.hook_q", "k": "attn.hook_k", "v": "attn.hook_v", "rot_q": "attn.hook_rot_q", "rot_k": "attn.hook_rot_k",
    "attn_scores": "attn.hook_attn_scores", "scores": "attn.hook_attn_scores", "pattern": "attn.hook_pattern",
    "attn": "attn.hook_pattern", "z": "attn.hook_z", "result": "attn.hook_result",
    "attn_out": "hook_attn_out", "mlp_out": "hook_mlp_out",
    "pre": "mlp.hook_pre", "mlp_pre": "mlp.hook_pre", "pre_linear": "mlp.hook_pre_linear",
    "mlp_pre_linear": "mlp.hook_pre_linear", "post": "mlp.hook_post", "mlp_post": "mlp.hook_post",
}
EMBED_NAMES = ("hook_embed", "hook_pos_embed")

_LAYER = re.compile(r"^blocks\.(\d+)\.")


def layer_of(name: str, n_layers: int) -> int:
    """The block a hook name belongs to: -1 for the embeddings, n_layers for ln_final (and interp.tl's unembed)."""
    match = _LAYER.match(name)
    if match:
        return int(match.group(1))
    return n_layers if name.startswith(("ln_final.", "unembed.")) else -1


def act_name(name: str, layer: int | None = None, layer_type: str | None = None) -> str:
    """Full hook name from a short one: `act_name("pattern", 3)` -> "blocks.3.attn.hook_pattern".

    `act_name("scale", 2, "ln1")` -> "blocks.2.ln1.hook_scale"; `act_name("scale")` -> ln_final's.
    Full names pass through unchanged.
    """
    if "." in name or name in EMBED_NAMES:
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
