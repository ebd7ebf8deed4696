"""TransformerLens's state-dict names <-> interp's, for weights saved by one and loaded by the other.

TransformerLens stores `embed.W_E`, `pos_embed.W_pos`, `unembed.W_U`/`b_U` and per-head `attn.W_Q`/`W_K`/`W_V`
`[n_heads, d_model, d_head]` with biases `[n_heads, d_head]` (grouped-query models: `attn._W_K`/`_W_V`/`_b_K`/`_b_V`
per kv head); interp stores `W_E`, `W_pos`, `W_U`, `b_U` on the model and q, k, v fused as `attn.W_QKV`
`[d_model, n_heads + 2 n_kv_heads, d_head]` and `attn.b_QKV`. Norms, `W_O`, `b_O` and the MLP have the same names;
gated MLPs differ in their biases (TransformerLens: no b_gate, b_in added after the product; see `to_interp`).
TransformerLens's buffers (`attn.mask`, `attn.IGNORE`, `attn.rotary_sin/cos`) are derived, not weights: dropped.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import Tensor

TOP = {"embed.W_E": "W_E", "pos_embed.W_pos": "W_pos", "unembed.W_U": "W_U", "unembed.b_U": "b_U"}
BUFFERS = re.compile(r"\.attn\.(mask|IGNORE|rotary_sin|rotary_cos)$")


def is_transformer_lens(state: dict[str, Tensor]) -> bool:
    """Whether a state dict uses TransformerLens's names (it has `embed.W_E`)."""
    return "embed.W_E" in state


def _kv_names(grouped: bool) -> tuple[str, ...]:
    prefix = "_" if grouped else ""
    return ("W_Q", f"{prefix}W_K", f"{prefix}W_V"), ("b_Q", f"{prefix}b_K", f"{prefix}b_V")


def to_interp(state: dict[str, Tensor], model: Any) -> dict[str, Tensor]:
    """interp's names for a TransformerLens state dict of a model shaped like `model`; KeyError names a missing weight."""
    cfg = model.core_cfg if hasattr(model, "core_cfg") else model.cfg
    grouped = cfg.n_kv_heads != cfg.n_heads
    out = {TOP.get(name, name): value for name, value in state.items() if not BUFFERS.search(name)}
    weight_names, bias_names = _kv_names(grouped)
    for layer in range(cfg.n_layers):
        attn = f"blocks.{layer}.attn"
        try:
            weights = [out.pop(f"{attn}.{name}") for name in weight_names]  # [heads, d_model, d_head] each
            biases = [out.pop(f"{attn}.{name}") for name in bias_names]
        except KeyError as missing:
            raise KeyError(f"TransformerLens state dict lacks {missing.args[0]!r} (names for a "
                           f"{'grouped-query' if grouped else 'multi-head'} model).") from None
        out[f"{attn}.W_QKV"] = torch.cat(weights, dim=0).transpose(0, 1).contiguous()
        out[f"{attn}.b_QKV"] = torch.cat(biases, dim=0)
        mlp = f"blocks.{layer}.mlp"
        if cfg.gated_mlp and f"{mlp}.b_gate" not in out:
            # TransformerLens's gated MLP is (act(x W_gate) * (x W_in) + b_in) W_out + b_out: no gate bias, and b_in
            # added after the product, which is the constant b_in W_out in the output; interp adds b_in to x W_in.
            b_in = out[f"{mlp}.b_in"]
            out[f"{mlp}.b_out"] = out[f"{mlp}.b_out"] + b_in @ out[f"{mlp}.W_out"]
            out[f"{mlp}.b_in"], out[f"{mlp}.b_gate"] = torch.zeros_like(b_in), torch.zeros_like(b_in)
    if cfg.tie_word_embeddings and "W_U" in out and "W_E" in out and torch.equal(out["W_U"], out["W_E"].T):
        out["W_U"] = out["W_E"].T
    return out


def from_interp(state: dict[str, Tensor], model: Any) -> dict[str, Tensor]:
    """TransformerLens's names for an interp state dict (a model's `state_dict()`)."""
    cfg = model.core_cfg if hasattr(model, "core_cfg") else model.cfg
    grouped = cfg.n_kv_heads != cfg.n_heads
    reverse = {ours: theirs for theirs, ours in TOP.items()}
    out = {}
    weight_names, bias_names = _kv_names(grouped)
    sizes = [cfg.n_heads, cfg.n_kv_heads, cfg.n_kv_heads]
    for name, value in state.items():
        match = re.fullmatch(r"(blocks\.\d+\.attn)\.(W_QKV|b_QKV)", name)
        if match is None:
            if cfg.gated_mlp and name.endswith(("mlp.b_gate", "mlp.b_in")) and bool(value.any()):
                raise ValueError(f"{name} is not zero: TransformerLens's gated MLP has no gate bias and adds b_in "
                                 "after the product, so these MLP biases (Llama's mlp_bias) have no TransformerLens form.")
            if not name.endswith("mlp.b_gate"):
                out[reverse.get(name, name)] = value
            continue
        attn, which = match.groups()
        if which == "W_QKV":
            for part_name, part in zip(weight_names, value.transpose(0, 1).split(sizes, dim=0)):
                out[f"{attn}.{part_name}"] = part.contiguous()
        else:
            for part_name, part in zip(bias_names, value.split(sizes, dim=0)):
                out[f"{attn}.{part_name}"] = part.contiguous()
    return out
