"""A linear model: attention patterns, norm scales and MLP gains frozen at their values on some tokens.

With these frozen, the model is affine in every activation a hook can edit (the residual stream, each receiver's
input, each head's value), so a linear metric's patching effects are exactly its first-order estimates: the
identity behind testing EAP against exact edge patching (`interp.analysis.edge_attribution`). Queries and keys
then have no effect at all (the patterns no longer read them).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from interp.analysis.patching import HookList, Tokens
from interp.hooks import HookPoint
from interp.model import HookedTransformer


def frozen_hooks(model: HookedTransformer, tokens: Tokens, attention_mask: Tensor | None = None) -> HookList:
    """Hooks that freeze, at their values on `tokens`, every attention pattern, every norm scale and every MLP
    neuron's gain (act(pre)/pre; a gated MLP's act(gate)), so that the model is affine in every receiver's
    input and a linear metric's edge effects are exactly EAP's. The hooks accept any multiple of the batch
    (circuit or edge rows), and the heads axis of split q/k/v inputs."""
    tokens, mask = model.tokens_and_mask(tokens, attention_mask)
    points = [name for name in model.hook_dict if name.endswith(("attn.hook_pattern", "hook_scale", "mlp.hook_pre",
                                                                 "mlp.hook_post", "mlp.hook_pre_linear"))]
    _, cache = model.run_with_cache(tokens, attention_mask=mask, names_filter=points)
    gated = any(name.endswith("hook_pre_linear") for name in points)
    saved: dict[str, Tensor] = {name: cache[name].detach() for name in points if not name.endswith("hook_pre_linear")}
    current: dict[str, Tensor] = {}

    def tiled(value: Tensor, like: Tensor) -> Tensor:
        if like.ndim == value.ndim + 1:  # a split input's heads axis, before the last
            value = value.unsqueeze(-2)
        copies = like.shape[0] // value.shape[0]
        return value.repeat(copies, *([1] * (value.ndim - 1))).expand_as(like)

    def freeze(name: str) -> Callable:
        return lambda x, hook: tiled(saved[name], x)

    def remember(name: str) -> Callable:
        def fn(x: Tensor, hook: HookPoint) -> None:
            current[name] = x
        return fn

    def linear_post(layer: int) -> Callable:
        prefix = f"blocks.{layer}.mlp."
        if gated:  # act(gate) * linear: the gate's activation frozen
            gate = model.blocks[layer].mlp.activation(saved[prefix + "hook_pre"])
            return lambda x, hook: current[prefix + "hook_pre_linear"] * tiled(gate, x)
        pre, post = saved[prefix + "hook_pre"], saved[prefix + "hook_post"]
        gain = torch.where(pre == 0, torch.zeros_like(pre), post / torch.where(pre == 0, torch.ones_like(pre), pre))
        return lambda x, hook: current[prefix + "hook_pre"] * tiled(gain, x)

    hooks: list[tuple[str, Callable]] = []
    for name in points:
        if name.endswith(("attn.hook_pattern", "hook_scale")):
            hooks.append((name, freeze(name)))
    for layer in range(model.cfg.n_layers):
        prefix = f"blocks.{layer}.mlp."
        hooks.append((prefix + ("hook_pre_linear" if gated else "hook_pre"), remember(prefix + ("hook_pre_linear" if gated else "hook_pre"))))
        hooks.append((prefix + "hook_post", linear_post(layer)))
    return hooks
