"""The engine behind `interp.tl.patching`: the corrupted run, and patched partial reruns from it.

A patch in block l at position p changes nothing before block l and (attention being causal) nothing at positions
before p, so its run starts at block l from the corrupted run's residual stream at positions >= p
(`start_at_layer`), attends to the corrupted run's keys and values before p (a `KVCache`) and takes the corrupted
logits there; several patches share one forward along the batch axis. The known patch setters register here which
activation axes their index selects (`indexes`); any other setter is run as TransformerLens runs it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Union

import torch
from jaxtyping import Float
from torch import Tensor

from interp.analysis.patching import scalar_metric
from interp.components.context import KVCache
from interp.model import HookedTransformer
from interp.names import layer_of

PatchSetter = Callable[[Tensor, Sequence[int], Tensor], Union[Tensor, None]]
Metric = Callable[[Float[Tensor, "batch pos d_vocab"]], Float[Tensor, ""]]


# The known setters, each registered with the activation axes (batch = 0) its index[1:] selects.
SETTER_AXES: dict[Callable, tuple[int, ...]] = {}


def indexes(*axes: int) -> Callable[[PatchSetter], PatchSetter]:
    def register(setter: PatchSetter) -> PatchSetter:
        SETTER_AXES[setter] = axes
        return setter
    return register


def setter_index(setter: Callable, index: Sequence[int], ndim: int) -> tuple:
    """The full index (every axis, batch included) a known setter copies for `index` = [layer, ...]."""
    axes = SETTER_AXES[setter]
    if len(index) != len(axes) + 1:
        raise ValueError(f"{setter.__name__} takes an index of {len(axes) + 1} entries (layer first), got "
                         f"{list(index)}; check index_axis_names or the columns of index_df.")
    where: list[Any] = [slice(None)] * ndim
    for axis, value in zip(axes, index[1:]):
        where[axis] = int(value)
    return tuple(where)


@dataclass
class Site:
    """One patch of a known setter: where it writes, and the position its partial rerun can start at."""

    number: int  # its place in the result
    hook_name: str
    layer: int | None  # None: outside the blocks, run in full
    where: tuple  # full index, batch axis included
    pos_axis: int | None  # the hook's pos / query_pos axis, if `where` fixes it
    start: int


def tiled(x: Tensor, copies: int) -> Tensor:
    """`x.repeat(copies, 1, ...)` (copy-major rows), a broadcast view when the batch is 1."""
    return x.expand(copies, *x.shape[1:]) if x.shape[0] == 1 else x.repeat(copies, *([1] * (x.ndim - 1)))


def padding_mask(model: HookedTransformer, tokens: Tensor) -> Tensor | None:
    """The mask TL's forward gives these token ids (an interp.tl model masks left padding by its pad tokens when
    its tokenizer pads on the left); None: no padding, as for interp's own model given token ids."""
    mask = model.tokens_and_mask(tokens)[1]
    return None if mask is None or bool(mask.all()) else mask.to(tokens.device).bool()


class Runs:
    """The corrupted run (what partial reruns start from) and the patched reruns of one call."""

    def __init__(self, model: HookedTransformer, tokens: Tensor, mask: Tensor | None, names: list[str],
                 clean_cache: Any) -> None:
        self.model, self.tokens, self.mask, self.names, self.batch = model, tokens, mask, names, tokens.shape[0]
        n_layers = model.cfg.n_layers
        rotary = "blocks.0.attn.hook_rot_k" in model.hook_dict
        self.k_names = [f"blocks.{layer}.attn.hook_{'rot_k' if rotary else 'k'}" for layer in range(n_layers)]
        self.v_names = [f"blocks.{layer}.attn.hook_v" for layer in range(n_layers)]
        self.resid_names = [f"blocks.{layer}.hook_resid_pre" for layer in range(n_layers)]
        self.saved: dict[str, Tensor] = {}

        def save(activation: Tensor, hook: Any) -> None:
            self.saved[hook.name] = activation

        saving = dict.fromkeys(names + self.k_names + self.v_names + self.resid_names)
        # Every run hooks the same names (`names`), so every run takes the same compute path (a hooked
        # pattern switches a layer from fused to explicit attention, which rounds differently).
        with HookedTransformer.hooks(model, [(name, save) for name in saving]):
            self.logits = HookedTransformer.forward(model, tokens, attention_mask=mask)
        self.clean: dict[str, Tensor] = {}
        for name in names:
            clean = clean_cache[name]
            if tuple(clean.shape) != tuple(self.saved[name].shape):
                raise ValueError(f"clean_cache[{name!r}] has shape {tuple(clean.shape)}, but the corrupted run's "
                                 f"activation has {tuple(self.saved[name].shape)}: run the clean tokens with the same "
                                 "[batch, pos] as corrupted_tokens (and keep the batch dimension in the cache).")
            self.clean[name] = clean.to(self.saved[name].device)

    def site(self, number: int, hook_name: str, setter: Callable, index: Sequence[int]) -> Site:
        corrupted = self.saved[hook_name]
        where = list(setter_index(setter, index, corrupted.ndim))
        for axis, value in enumerate(where):
            if isinstance(value, int):
                size = corrupted.shape[axis]
                if not -size <= value < size:
                    raise IndexError(f"Index {list(index)} is out of range for {hook_name}, of shape "
                                     f"{tuple(corrupted.shape)} ({self.model.hook_point(hook_name).shape}).")
                where[axis] = value % size
        shape = self.model.hook_point(hook_name).shape.split()
        pos_axis = next((shape.index(a) for a in ("pos", "query_pos") if a in shape), None)
        if pos_axis is not None and not isinstance(where[pos_axis], int):
            pos_axis = None
        layer = layer_of(hook_name, self.model.cfg.n_layers)
        in_blocks = 0 <= layer < self.model.cfg.n_layers
        start = where[pos_axis] if pos_axis is not None and in_blocks else 0
        return Site(number, hook_name, layer if in_blocks else None, tuple(where), pos_axis, start)

    def patch_all(self, sites: list[Site], metric: Metric, per_forward: int, bar: Any) -> list[tuple[int, float]]:
        """(site number, metric) of every site: equal slices get the corrupted metric, the rest run in chunks
        of one block, ordered by start position (a chunk starts at its first site's position)."""
        unchanged = float(scalar_metric(metric, self.logits))
        results, to_run = [], []
        for site in sites:
            if torch.equal(self.clean[site.hook_name][site.where], self.saved[site.hook_name][site.where]):
                results.append((site.number, unchanged))
                bar.update(1)
            else:
                to_run.append(site)
        to_run.sort(key=lambda site: (-1 if site.layer is None else site.layer, site.start))
        chunks: list[list[Site]] = []
        for site in to_run:
            if chunks and chunks[-1][0].layer == site.layer and len(chunks[-1]) < per_forward:
                chunks[-1].append(site)
            else:
                chunks.append([site])
        for chunk in chunks:
            logits = self.run_chunk(chunk)
            for row, site in enumerate(chunk):
                value = scalar_metric(metric, logits[row * self.batch:(row + 1) * self.batch])
                results.append((site.number, float(value)))
            bar.update(len(chunk))
        return results

    def run_chunk(self, chunk: list[Site]) -> Float[Tensor, "copies_batch pos d_vocab"]:
        """Logits of the patched runs of `chunk` (sites of one block, or outside the blocks), copy-major rows."""
        model, copies, layer = self.model, len(chunk), chunk[0].layer
        start = 0 if layer is None else chunk[0].start
        hooks = [(name, self._writer(chunk, name, start)) for name in self.names]
        with HookedTransformer.hooks(model, hooks):
            mask = None if self.mask is None else self.mask.repeat(copies, 1)
            if layer is None:
                return HookedTransformer.forward(model, self.tokens.repeat(copies, 1), attention_mask=mask)
            cache = None
            if start > 0:
                cache = KVCache()
                for later in range(layer, model.cfg.n_layers):
                    cache.keys[later] = tiled(self.saved[self.k_names[later]][:, :start], copies)
                    cache.values[later] = tiled(self.saved[self.v_names[later]][:, :start], copies)
                past = torch.ones(copies * self.batch, start, dtype=torch.bool, device=self.tokens.device) \
                    if mask is None else mask[:, :start]
                cache.key_mask, cache.padded = past, not bool(past.all())
            residual = self.saved[self.resid_names[layer]][:, start:].repeat(copies, 1, 1)
            logits = HookedTransformer.forward(model, residual, start_at_layer=layer, past_kv_cache=cache,
                                               attention_mask=None if mask is None else mask[:, start:])
        return logits if start == 0 else torch.cat([tiled(self.logits[:, :start], copies), logits], dim=1)

    def _writer(self, chunk: list[Site], hook_name: str, offset: int) -> Callable:
        """A hook writing each site's clean slice into its rows; the run covers positions `offset`.. only."""
        rows = [(row, site) for row, site in enumerate(chunk) if site.hook_name == hook_name]
        clean, batch = self.clean[hook_name], self.batch

        def hook(activation: Tensor, hook_point: Any) -> Tensor | None:
            if not rows:
                return None
            patched = activation.clone()
            for row, site in rows:
                target = list(site.where)
                target[0] = slice(row * batch, (row + 1) * batch)
                if site.pos_axis is not None:
                    target[site.pos_axis] -= offset
                patched[tuple(target)] = clean[site.where]
            return patched

        return hook

    def run_setter(self, hook_name: str, setter: PatchSetter, index: list[int], metric: Metric) -> float:
        """The metric of one full rerun with `setter` editing `hook_name`, called as TL calls it."""
        clean = self.clean[hook_name]

        def hook(activation: Tensor, hook_point: Any) -> Tensor | None:
            if activation.requires_grad:
                activation = activation.clone()
            return setter(activation, index, clean)

        with HookedTransformer.hooks(self.model, [(hook_name, hook)]):
            logits = HookedTransformer.forward(self.model, self.tokens, attention_mask=self.mask)
        return float(scalar_metric(metric, logits))
