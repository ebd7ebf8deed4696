"""Attribution patching: a first-order (gradient) estimate of activation patching for every site at
once (Nanda 2023, "Attribution Patching: Activation Patching At Industrial Scale"; Syed et al. 2023,
"Attribution Patching Outperforms Automated Circuit Discovery").

For a site with activation a, patching the source value into the target run changes the metric by
about (a_source - a_target) · ∂metric/∂a, the gradient taken on the target run. Denoising (the
default) takes the target = corrupted run, source = clean, as `activation_patch`'s default does.
Cost: one forward on the source run and one forward-and-backward on the target run, for every
site of a kind and every layer together (activation patching needs one forward per site).

The estimate is exact when the metric is linear in the activation along the patch; it is poor
where a patch moves a saturated softmax or LayerNorm a long way (e.g. the residual stream at the
token that differs). Check it on a few sites with `compare_attribution` before trusting it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import einops
import torch
from jaxtyping import Float
from torch import Tensor

from interp.analysis.patching import (Direction, HookList, Metric, PatchResult, Tokens, check_metric_ignores_padding,
                                      checked_inputs, checked_layers, head_axis, scalar_metric)
from interp.hooks import HookPoint
from interp.model import HookedTransformer

# site -> (hook suffix, einops reduction of (source - target) * gradient, table axes). "heads" stands for the
# hook's head axis: n_heads, or n_kv_heads for the keys and values of a grouped-query model (table axis "kv_head").
SITES = {
    "resid_pre": ("hook_resid_pre", "batch pos d_model -> pos", ("layer", "pos")),
    "attn_out": ("hook_attn_out", "batch pos d_model -> pos", ("layer", "pos")),
    "mlp_out": ("hook_mlp_out", "batch pos d_model -> pos", ("layer", "pos")),
    "head_out": ("attn.hook_z", "batch pos heads d_head -> heads", ("layer", "head")),
    "head_out_by_pos": ("attn.hook_z", "batch pos heads d_head -> pos heads", ("layer", "pos", "head")),
    "q": ("attn.hook_q", "batch pos heads d_head -> heads", ("layer", "head")),
    "k": ("attn.hook_k", "batch pos heads d_head -> heads", ("layer", "head")),
    "v": ("attn.hook_v", "batch pos heads d_head -> heads", ("layer", "head")),
    "pattern": ("attn.hook_pattern", "batch heads query_pos key_pos -> heads", ("layer", "head")),
}
# Sites only some families have: q and k after the rotation, on rotary models (GPT-NeoX, Llama, Mistral, Qwen2).
ROTARY_SITES = {
    "rot_q": ("attn.hook_rot_q", "batch pos heads d_head -> heads", ("layer", "head")),
    "rot_k": ("attn.hook_rot_k", "batch pos heads d_head -> heads", ("layer", "head")),
}
ALL_SITES = {**SITES, **ROTARY_SITES}
SiteKind = Literal["resid_pre", "attn_out", "mlp_out", "head_out", "head_out_by_pos", "q", "k", "v", "rot_q", "rot_k",
                   "pattern"]


def attribution_patch(model: HookedTransformer, clean_tokens: Tokens, corrupted_tokens: Tokens, metric: Metric,
                      site: SiteKind, layers: Sequence[int] | None = None, direction: Direction = "denoise",
                      corrupted_hooks: HookList = (), *, attention_mask: Tensor | None = None) -> PatchResult:
    """Linear estimate of activation patching at every `site` of `layers`, shaped like the
    activation-patching counterpart (`patch_resid_pre` -> `[layer, pos]`, "head_out" -> `[layer, head]`, ...).

    `values` holds the estimated metric after patching (target metric + estimate, in float64), so
    `.effect` is the attribution (a_source - a_target) · ∂metric/∂a itself. The parameters' `.grad`
    is left untouched. Arguments as in `interp.analysis.patching.patch`.
    "rot_q"/"rot_k" (q and k after the rotation) exist on rotary models only. On a grouped-query model "k",
    "v" and "rot_k" are per kv head: dims ("layer", "kv_head"), n_kv_heads entries, as in `patch_head_qkv_pattern`.

    Padding: token ids take `attention_mask` `[batch, pos]` (1 = real token), one mask for both runs; text
    lists are padded and masked for you (see `checked_inputs`). Each row then gives what its pair gives
    alone; the metric must read real positions only (left padding puts each prompt's last token at -1), or
    ValueError. Padded positions are read by nothing real, so their attribution is exactly 0 (entries at a
    padded position of every row are 0; padded positions add nothing to per-head entries).
    """
    if site not in ALL_SITES:
        raise ValueError(f"site must be one of {sorted(SITES)} (or, on rotary models, {sorted(ROTARY_SITES)}), "
                         f"got {site!r}.")
    if f"blocks.0.{ALL_SITES[site][0]}" not in model.hook_dict:
        raise ValueError(f"site={site!r} reads {ALL_SITES[site][0]}, which this model does not have: the rotated q/k "
                         f"exist only on rotary models; this one adds learned positions to the stream (use "
                         f"site={site[-1]!r}).")
    if direction not in ("denoise", "noise"):
        raise ValueError(f"direction must be 'denoise' (clean into corrupted) or 'noise', got {direction!r}.")
    suffix, reduction, dims = ALL_SITES[site]
    head_dim, n_heads = head_axis(model, f"blocks.0.{suffix}") if "head" in dims else ("head", model.cfg.n_heads)
    dims = tuple(head_dim if dim == "head" else dim for dim in dims)
    clean, corrupted, mask = checked_inputs(model, clean_tokens, corrupted_tokens, attention_mask)
    layers = checked_layers(model, layers)
    hook_names = [f"blocks.{layer}.{suffix}" for layer in layers]
    clean_run, corrupted_run = (clean, []), (corrupted, list(corrupted_hooks))
    source, target = (clean_run, corrupted_run) if direction == "denoise" else (corrupted_run, clean_run)

    source_metric, source_acts, _ = _run(model, metric, *source, hook_names, with_grad=False, mask=mask)
    target_metric, target_acts, grads = _run(model, metric, *target, hook_names, with_grad=True, mask=mask)
    real = None if mask is None else _real_entries(mask, "pattern" if site == "pattern" else "positions")
    tables = [einops.reduce(_masked((source_acts[name] - target_acts[name]) * grads[name], real), reduction, "sum")
              for name in hook_names]
    values = float(target_metric) + torch.stack(tables).double().cpu()
    labels = {"layer": layers, "pos": list(range(clean.shape[1])), head_dim: list(range(n_heads))}
    clean_metric, corrupted_metric = (source_metric, target_metric) if direction == "denoise" else (target_metric,
                                                                                                     source_metric)
    return PatchResult(values, dims, {dim: labels[dim] for dim in dims}, float(clean_metric), float(corrupted_metric),
                       direction)


def _real_entries(mask: Tensor, kind: str) -> Tensor:
    """Where an activation belongs to real tokens: `[batch, pos, 1, ...]` for hooks with a position axis, `[batch,
    1, query_pos, key_pos]` (real query and real key) for attention patterns."""
    if kind == "pattern":
        return (mask[:, :, None] & mask[:, None, :])[:, None]
    return mask[:, :, None]


def _masked(products: Tensor, real: Tensor | None) -> Tensor:
    """The products with every padded entry set to 0 (a padded position is read by nothing real, so its
    gradient of a metric of real positions is 0 already; this makes it exact whatever the kernels do)."""
    if real is None:
        return products
    real = real.reshape(*real.shape, *[1] * (products.ndim - real.ndim))
    return products.masked_fill(~real, 0)


def _run(model: HookedTransformer, metric: Metric, tokens: Tensor, run_hooks: HookList, hook_names: list[str],
         with_grad: bool, mask: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
    """(metric, activations, gradients of the metric w.r.t. them if `with_grad`) of one run (padding: `mask`).

    Gradients start from detached copies of the embeddings (hook_embed, and hook_pos_embed where positions are
    learned), so they never reach the weights.
    """
    acts: dict[str, Tensor] = {}

    def save(activation: Tensor, hook: HookPoint) -> None:
        acts[hook.name] = activation

    def make_root(activation: Tensor, hook: HookPoint) -> Tensor:
        return activation.detach().requires_grad_(True)

    roots = [(name, make_root) for name in ("hook_embed", "hook_pos_embed") if name in model.hook_dict] if with_grad else []
    with torch.set_grad_enabled(with_grad), model.hooks(list(run_hooks) + roots + [(n, save) for n in hook_names]):
        logits = model(tokens, attention_mask=mask)
        if not with_grad:
            check_metric_ignores_padding(metric, logits, mask)
        value = scalar_metric(metric, logits)
        if not with_grad:
            return value.detach(), acts, {}
        if not value.requires_grad:
            raise ValueError("metric returned a value without a gradient; compute it from the logits with torch "
                             "operations (no .item(), no numpy) so attribution patching can differentiate it.")
        grads = torch.autograd.grad(value, [acts[name] for name in hook_names], allow_unused=True)
    grads_by_name = {name: torch.zeros_like(acts[name]) if grad is None else grad for name, grad in zip(hook_names, grads)}
    return value.detach(), {name: act.detach() for name, act in acts.items()}, grads_by_name


def compare_attribution(activation_result: PatchResult, attribution_result: PatchResult) -> dict[str, float]:
    """How well attribution patching predicts activation patching, over the effects of every entry.

    pearson / spearman: correlation of the effects and of their ranks (ties get average ranks);
    sign_agreement: fraction of entries whose effects have the same sign;
    relative_error: ‖attribution − activation‖ / ‖activation‖ (0 = a perfect prediction).
    """
    if activation_result.values.shape != attribution_result.values.shape:
        raise ValueError(f"Results have shapes {tuple(activation_result.values.shape)} and "
                         f"{tuple(attribution_result.values.shape)}; compare the same site kind and layers.")
    actual, estimate = activation_result.effect.flatten().double(), attribution_result.effect.flatten().double()
    return {"pearson": _pearson(actual, estimate),
            "spearman": _pearson(_ranks(actual), _ranks(estimate)),
            "sign_agreement": float((actual.sign() == estimate.sign()).double().mean()),
            "relative_error": float((estimate - actual).norm() / actual.norm())}


def _pearson(x: Float[Tensor, "n"], y: Float[Tensor, "n"]) -> float:
    x, y = x - x.mean(), y - y.mean()
    return float((x * y).sum() / (x.norm() * y.norm()))


def _ranks(x: Float[Tensor, "n"]) -> Float[Tensor, "n"]:
    """Ranks 0..n-1, tied values sharing their average rank (as scipy.stats.rankdata - 1)."""
    sorted_values, order = x.sort()
    _, inverse, counts = torch.unique_consecutive(sorted_values, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0)
    average = (ends - counts + ends - 1).double() / 2
    ranks = torch.empty_like(x, dtype=torch.float64)
    ranks[order] = average[inverse]
    return ranks
