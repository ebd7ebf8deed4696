"""Path patching (Wang et al. 2022, "Interpretability in the Wild", IOI): how much a sender head
matters through its direct path into receivers (heads' queries, keys or values, or the logits).

Cost: 2 forwards for the caches, then 2 forwards per sender (batched over senders). Shares the
metric contract, `PatchResult` and the exactness rules of `interp.analysis.patching`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Union

import torch
from torch import Tensor
from tqdm.auto import tqdm

from interp.analysis.patching import (HookList, Metric, PatchResult, Tokens, _row_metrics, check_metric_ignores_padding,
                                      checked_inputs, checked_layers, scalar_metric)
from interp.hooks import HookPoint
from interp.model import HookedTransformer

Receivers = Union[Literal["logits"], Sequence[tuple[int, int, str]]]


def path_patch(model: HookedTransformer, clean_tokens: Tokens, corrupted_tokens: Tokens, metric: Metric,
               sender: tuple[int, int], receivers: Receivers, freeze_mlps: bool = False,
               corrupted_hooks: HookList = (), *, attention_mask: Tensor | None = None) -> float:
    """The metric on the clean run when `sender`'s output (its `hook_z`) takes its corrupted value and
    the change reaches only `receivers`, through the direct path (Wang et al. 2022, IOI).

    receivers: (layer, head, "q"|"k"|"v") triples, or "logits". `head` indexes the axis of the hook read:
    a query head for "q"; for "k"/"v" a query head of a multi-head model, but a kv head
    (0..n_kv_heads-1) of a grouped-query model, whose keys and values are shared: receiving at kv head g
    changes what all its query heads g * group .. (g + 1) * group - 1 read (group = n_heads // n_kv_heads).
    Senders are query heads (their own `hook_z`) on every family. The three runs:
    1. clean and corrupted runs, caching every head's `hook_z`;
    2. the clean run with the sender's z corrupted and every other head's z frozen to its clean
       value; MLPs recompute, as in the IOI paper, unless `freeze_mlps=True` freezes them to clean
       too. This records the receivers' queries/keys/values, which equals recording their per-head
       inputs `hook_q_input` etc. (the same residual goes through the same LayerNorm and W_Q);
    3. the clean run with only the receivers' q/k/v replaced by those values; everything downstream
       recomputes. For "logits", run 2's own logits are the answer: the sender's output is added to
       the final residual stream while every later head is frozen.
    A receiver in the sender's layer or before it cannot be reached: the result is the clean metric.

    Padding: token ids take `attention_mask` `[batch, pos]` (1 = real token), one mask for both runs; text
    lists are padded and masked for you (see `checked_inputs`). Every run is masked, and only real positions
    are patched (the sender's corrupted z, the receivers' q/k/v), so each row gives what its pair gives
    alone. The metric must read real positions only (left padding puts each prompt's last token at -1), or
    ValueError.
    """
    clean, corrupted, mask = checked_inputs(model, clean_tokens, corrupted_tokens, attention_mask)
    receivers = _checked_receivers(model, receivers)
    caches = _path_caches(model, clean, corrupted, metric, [sender], receivers, freeze_mlps, corrupted_hooks, mask)
    return _path_patch_senders(model, clean, metric, [sender], receivers, caches)[0]


def path_patch_all_senders(model: HookedTransformer, clean_tokens: Tokens, corrupted_tokens: Tokens, metric: Metric,
                           receivers: Receivers, freeze_mlps: bool = False, corrupted_hooks: HookList = (),
                           batch_size: int = 16, progress: bool = True, *,
                           attention_mask: Tensor | None = None) -> PatchResult:
    """`path_patch` for every head before the earliest receiver's layer: values `[layer, head]`.

    A noising experiment (the sender is corrupted in the clean run): important senders pull the
    metric towards `corrupted_metric`. Runs `batch_size` senders per pair of forwards.
    `attention_mask`: padding of both inputs, as in `path_patch`.
    """
    clean, corrupted, mask = checked_inputs(model, clean_tokens, corrupted_tokens, attention_mask)
    receivers = _checked_receivers(model, receivers)
    last = model.cfg.n_layers if receivers == "logits" else min(layer for layer, _, _ in receivers)
    if last == 0:
        raise ValueError("Every receiver is in layer 0, so no head can send to it; pick receivers in later layers.")
    layers, heads = list(range(last)), list(range(model.cfg.n_heads))
    senders = [(layer, head) for layer in layers for head in heads]
    caches = _path_caches(model, clean, corrupted, metric, senders, receivers, freeze_mlps, corrupted_hooks, mask)
    values: list[float] = []
    for start in tqdm(range(0, len(senders), batch_size), desc="path patching", disable=not progress):
        values += _path_patch_senders(model, clean, metric, senders[start:start + batch_size], receivers, caches)
    table = torch.tensor(values, dtype=torch.float64).reshape(len(layers), len(heads))
    return PatchResult(table, ("layer", "head"), {"layer": layers, "head": heads},
                       caches["clean_metric"], caches["corrupted_metric"], direction="noise")


def _checked_head(model: HookedTransformer, layer: int, head: int, which: str = "z") -> None:
    """Range check of a sender (which="z": a query head) or of a receiver's head on the hook it reads."""
    checked_layers(model, [layer])
    n_heads, kv = model.cfg.n_heads, ""
    if which in ("k", "v") and model.cfg.n_kv_heads < model.cfg.n_heads:
        n_heads = model.cfg.n_kv_heads
        kv = (f" (a {which!r} receiver names a kv head: this grouped-query model has {n_heads} kv heads, each shared "
              f"by {model.cfg.n_heads // n_heads} query heads)")
    if not 0 <= head < n_heads:
        raise ValueError(f"Head {head} of layer {layer} is out of range: heads are 0..{n_heads - 1}{kv}.")


def _checked_receivers(model: HookedTransformer, receivers: Receivers) -> Receivers:
    if receivers == "logits":
        return receivers
    triples = [] if isinstance(receivers, str) else [tuple(receiver) for receiver in receivers]
    if not triples or any(len(receiver) != 3 or receiver[2] not in ("q", "k", "v") for receiver in triples):
        raise ValueError(f"receivers must be 'logits' or a non-empty list of (layer, head, input) with input one of "
                         f"'q', 'k', 'v'; got {receivers!r}.")
    for layer, head, which in triples:
        _checked_head(model, layer, head, which)
    return triples


def _receiver_heads(receivers: Receivers) -> dict[str, list[int]]:
    """Receiver hook name (`blocks.{layer}.attn.hook_{q,k,v}`) -> the heads read there."""
    heads: dict[str, list[int]] = {}
    for layer, head, which in ([] if receivers == "logits" else receivers):
        heads.setdefault(f"blocks.{layer}.attn.hook_{which}", []).append(head)
    return heads


def _path_caches(model: HookedTransformer, clean: Tensor, corrupted: Tensor, metric: Metric,
                 senders: Sequence[tuple[int, int]], receivers: Receivers, freeze_mlps: bool,
                 corrupted_hooks: HookList, mask: Tensor | None = None) -> dict[str, Any]:
    """Run 1: every head's clean z (and MLP output, and receiver input), the senders' corrupted z, both metrics."""
    for layer, head in senders:
        _checked_head(model, layer, head)
    n_layers = model.cfg.n_layers
    clean_names = [f"blocks.{layer}.attn.hook_z" for layer in range(n_layers)] + list(_receiver_heads(receivers))
    clean_names += [f"blocks.{layer}.hook_mlp_out" for layer in range(n_layers)] if freeze_mlps else []
    corrupted_names = sorted({f"blocks.{layer}.attn.hook_z" for layer, _ in senders})
    clean_logits, clean_cache = model.run_with_cache(clean, names_filter=clean_names, attention_mask=mask)
    check_metric_ignores_padding(metric, clean_logits, mask)
    with model.hooks(corrupted_hooks):
        corrupted_logits, corrupted_cache = model.run_with_cache(corrupted, names_filter=corrupted_names,
                                                                 attention_mask=mask)
    return {"clean": clean_cache, "corrupted": corrupted_cache, "freeze_mlps": freeze_mlps, "mask": mask,
            "clean_metric": float(scalar_metric(metric, clean_logits)),
            "corrupted_metric": float(scalar_metric(metric, corrupted_logits))}


@torch.no_grad()
def _path_patch_senders(model: HookedTransformer, clean: Tensor, metric: Metric, senders: Sequence[tuple[int, int]],
                        receivers: Receivers, caches: dict[str, Any]) -> list[float]:
    """Runs 2 and 3 of path patching for several senders at once, one block of rows per sender."""
    n_senders, batch, clean_cache, mask = len(senders), clean.shape[0], caches["clean"], caches["mask"]

    def real_only(patched: Tensor, unpatched: Tensor) -> Tensor:
        """`patched` at real positions, `unpatched` at padding (`[batch, pos, ...]`): padding is never patched."""
        if mask is None:
            return patched
        return torch.where(mask.reshape(*mask.shape, *[1] * (patched.ndim - 2)), patched, unpatched)

    def freeze_heads(z: Tensor, hook: HookPoint) -> Tensor:
        frozen = clean_cache[hook.name].repeat(n_senders, 1, 1, 1)
        for row, (layer, head) in enumerate(senders):
            if hook.name == f"blocks.{layer}.attn.hook_z":
                frozen[row * batch:(row + 1) * batch, :, head] = real_only(caches["corrupted"][hook.name][:, :, head],
                                                                           clean_cache[hook.name][:, :, head])
        return frozen

    def freeze_mlp(mlp_out: Tensor, hook: HookPoint) -> Tensor:
        return clean_cache[hook.name].repeat(n_senders, 1, 1)

    freeze = [(f"blocks.{layer}.attn.hook_z", freeze_heads) for layer in range(model.cfg.n_layers)]
    if caches["freeze_mlps"]:
        freeze += [(f"blocks.{layer}.hook_mlp_out", freeze_mlp) for layer in range(model.cfg.n_layers)]
    receiver_heads, recorded = _receiver_heads(receivers), {}

    def record(activation: Tensor, hook: HookPoint) -> None:
        recorded[hook.name] = activation

    def repeated_mask(copies: int) -> Tensor | None:
        return None if mask is None else mask.repeat(copies, 1)

    with model.hooks(freeze + [(name, record) for name in receiver_heads]):
        logits = model(clean.repeat(n_senders, 1), attention_mask=repeated_mask(n_senders))
    if receivers == "logits":
        return _row_metrics(metric, logits, n_senders)

    def block(row: int) -> slice:
        return slice(row * batch, (row + 1) * batch)

    values = [caches["clean_metric"]] * n_senders  # for senders that reach no receiver (bitwise)
    reaching = [row for row in range(n_senders) if not all(
        torch.equal(real_only(recorded[name][block(row), :, heads], clean_cache[name][:, :, heads]),
                    clean_cache[name][:, :, heads])
        for name, heads in receiver_heads.items())]

    def patch_receivers(activation: Tensor, hook: HookPoint) -> Tensor:
        patched, heads = activation.clone(), receiver_heads[hook.name]
        for index, row in enumerate(reaching):
            patched[block(index), :, heads] = real_only(recorded[hook.name][block(row), :, heads],
                                                        activation[block(index), :, heads])
        return patched

    if reaching:
        with model.hooks([(name, patch_receivers) for name in receiver_heads]):
            logits = model(clean.repeat(len(reaching), 1), attention_mask=repeated_mask(len(reaching)))
        for row, value in zip(reaching, _row_metrics(metric, logits, len(reaching))):
            values[row] = value
    return values
