"""TransformerLens's `transformer_lens.patching` on interp models: the same functions, arguments, result shapes,
orders and numbers, computed with partial reruns instead of one full forward per patch.

What every function computes (as TL 3.9): for each index (a row of `index_df`, or every combination of the
`index_axis_names` ranges, the first axis always the layer), the corrupted tokens are run with one activation
(`activation_name` in block `index[0]`) edited by `patch_setter(corrupted_activation, index, clean_activation)`,
where `clean_activation` is `clean_cache[name]`; `patching_metric(logits)` of that run (a scalar) is the entry.
Results are float32 tensors on the model's device: axes in `index_axis_names` order, or flat with `index_df`.

How it is faster, exactly. A patch in block l at position p changes nothing before block l and (attention being
causal) nothing at positions before p. So a patched run starts at block l from the corrupted run's residual stream
at positions >= p (`start_at_layer`), attends to the corrupted run's keys and values before p (a `KVCache`), and
takes the corrupted logits there; several patches share one forward along the batch axis (`sites_per_forward`),
and the metric sees each patch's own `[batch, pos, d_vocab]` logits. A patch whose clean and corrupted slices are
equal is not run: it gives the unpatched metric. Only the setters defined here are known this way; a
`patch_setter` of your own is called as TL calls it, in one full forward per patch.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal, Union

import einops
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from interp.analysis.patching import as_tokens, scalar_metric
from interp.components.context import KVCache
from interp.model import HookedTransformer
from interp.names import act_name, layer_of

Logits = Tensor
AxisNames = Literal["layer", "pos", "head_index", "head", "src_pos", "dest_pos"]
CorruptedActivation = Tensor
PatchedActivation = Tensor
PatchSetter = Callable[[Tensor, Sequence[int], Tensor], Union[Tensor, None]]
Metric = Callable[[Float[Tensor, "batch pos d_vocab"]], Float[Tensor, ""]]
LOGITS_PER_FORWARD = 2**26  # default sites_per_forward keeps each batched forward's logits under 256 MB (fp32)


def _pandas(what: str) -> Any:
    try:
        import pandas
    except ImportError as error:
        raise ImportError(f"{what} needs pandas (TransformerLens's index tables are DataFrames): "
                          "pip install pandas") from error
    return pandas


def make_df_from_ranges(column_max_ranges: Sequence[int], column_names: Sequence[str]) -> Any:
    """A pandas DataFrame with one row per combination of `range(m)` for each column (the last column varies
    fastest), named `column_names`."""
    rows = list(itertools.product(*(range(size) for size in column_max_ranges)))
    return _pandas("make_df_from_ranges").DataFrame(rows, columns=list(column_names))


# ----- patch setters: TL's, each registered with the activation axes (batch = 0) its index[1:] selects -----
_SETTER_AXES: dict[Callable, tuple[int, ...]] = {}


def _indexes(*axes: int) -> Callable[[PatchSetter], PatchSetter]:
    def register(setter: PatchSetter) -> PatchSetter:
        _SETTER_AXES[setter] = axes
        return setter
    return register


def _where(setter: Callable, index: Sequence[int], ndim: int) -> tuple:
    """The full index (every axis, batch included) a known setter copies for `index` = [layer, ...]."""
    axes = _SETTER_AXES[setter]
    if len(index) != len(axes) + 1:
        raise ValueError(f"{setter.__name__} takes an index of {len(axes) + 1} entries (layer first), got "
                         f"{list(index)}; check index_axis_names or the columns of index_df.")
    where: list[Any] = [slice(None)] * ndim
    for axis, value in zip(axes, index[1:]):
        where[axis] = int(value)
    return tuple(where)


def _copy(setter: Callable, corrupted: Tensor, index: Sequence[int], clean: Tensor) -> Tensor:
    where = _where(setter, index, corrupted.ndim)
    corrupted[where] = clean[where].to(corrupted.device, corrupted.dtype)
    return corrupted


@_indexes(1)
def layer_pos_patch_setter(corrupted_activation: Tensor, index: Sequence[int], clean_activation: Tensor) -> Tensor:
    """index [layer, pos]: the clean activation at position `pos` of axis 1 (the position of every activation
    but attention patterns and scores, whose axis 1 is the head)."""
    return _copy(layer_pos_patch_setter, corrupted_activation, index, clean_activation)


@_indexes(1, 2)
def layer_pos_head_vector_patch_setter(corrupted_activation: Tensor, index: Sequence[int],
                                       clean_activation: Tensor) -> Tensor:
    """index [layer, pos, head]: one head's vector at one position of a `[batch, pos, head, d_head]` activation
    (q, k, v, z, result)."""
    return _copy(layer_pos_head_vector_patch_setter, corrupted_activation, index, clean_activation)


@_indexes(2)
def layer_head_vector_patch_setter(corrupted_activation: Tensor, index: Sequence[int],
                                   clean_activation: Tensor) -> Tensor:
    """index [layer, head]: one head's vectors at every position of a `[batch, pos, head, d_head]` activation."""
    return _copy(layer_head_vector_patch_setter, corrupted_activation, index, clean_activation)


@_indexes(1)
def layer_head_pattern_patch_setter(corrupted_activation: Tensor, index: Sequence[int],
                                    clean_activation: Tensor) -> Tensor:
    """index [layer, head]: one head's whole `[dest_pos, src_pos]` attention pattern (or scores)."""
    return _copy(layer_head_pattern_patch_setter, corrupted_activation, index, clean_activation)


@_indexes(1, 2)
def layer_head_pos_pattern_patch_setter(corrupted_activation: Tensor, index: Sequence[int],
                                        clean_activation: Tensor) -> Tensor:
    """index [layer, head, dest_pos]: one head's attention from one destination (query) position."""
    return _copy(layer_head_pos_pattern_patch_setter, corrupted_activation, index, clean_activation)


@_indexes(1, 2, 3)
def layer_head_dest_src_pos_pattern_patch_setter(corrupted_activation: Tensor, index: Sequence[int],
                                                 clean_activation: Tensor) -> Tensor:
    """index [layer, head, dest_pos, src_pos]: one entry of one head's attention pattern."""
    return _copy(layer_head_dest_src_pos_pattern_patch_setter, corrupted_activation, index, clean_activation)


# ----- the generic function -----------------------------------------------------------------------
def _n_kv_heads(model: HookedTransformer) -> int:
    cfg = model.cfg
    return getattr(cfg, "n_key_value_heads", None) or getattr(cfg, "n_kv_heads", None) or cfg.n_heads


def _axis_ranges(model: HookedTransformer, activation_name: str, n_pos: int) -> dict[str, int]:
    n_heads = model.cfg.n_heads
    point = model.hook_dict.get(act_name(activation_name, 0))
    if point is not None and "n_kv_heads" in point.shape.split():  # k, v (and rot_k) of grouped-query attention
        n_heads = _n_kv_heads(model)
    return {"layer": model.cfg.n_layers, "pos": n_pos, "src_pos": n_pos, "dest_pos": n_pos,
            "head_index": n_heads, "head": n_heads}


def _index_rows(model: HookedTransformer, activation_name: str, n_pos: int, index_axis_names: Any,
                index_df: Any) -> tuple[list[list[int]], list[int] | None]:
    """The indices to patch, in order, and the result's shape (None: flat, one entry per row of index_df)."""
    if index_df is None:
        if index_axis_names is None:
            raise ValueError("Pass index_axis_names (e.g. ('layer', 'pos')) or index_df (one row per patch).")
        ranges = _axis_ranges(model, activation_name, n_pos)
        unknown = [name for name in index_axis_names if name not in ranges]
        if unknown:
            raise KeyError(f"Unknown index axis names {unknown}; use some of {list(ranges)}.")
        shape = [ranges[name] for name in index_axis_names]
        return [list(row) for row in itertools.product(*(range(size) for size in shape))], shape
    if index_axis_names is not None:
        raise ValueError("Pass index_axis_names or index_df, not both (index_df already lists every index).")
    rows = index_df.to_numpy().tolist() if hasattr(index_df, "to_numpy") else [list(row) for row in index_df]
    return [[int(value) for value in row] for row in rows], None


@dataclass
class _Site:
    """One patch of a known setter: where it writes, and the position its partial rerun can start at."""

    number: int  # its place in the result
    hook_name: str
    layer: int | None  # None: outside the blocks, run in full
    where: tuple  # full index, batch axis included
    pos_axis: int | None  # the hook's pos / query_pos axis, if `where` fixes it
    start: int


def generic_activation_patch(
    model: HookedTransformer,
    corrupted_tokens: Int[Tensor, "batch pos"],
    clean_cache: Any,
    patching_metric: Metric,
    patch_setter: PatchSetter,
    activation_name: str,
    index_axis_names: Sequence[AxisNames] | None = None,
    index_df: Any = None,
    return_index_df: bool = False,
    *,
    sites_per_forward: int | None = None,
    progress: bool = True,
) -> Float[Tensor, "..."] | tuple[Float[Tensor, "..."], Any]:
    """The metric after patching `activation_name` from `clean_cache` into the corrupted run, once per index.

    index_axis_names: axes to iterate over fully ("layer" first; "pos"/"src_pos"/"dest_pos" range over the
    tokens, "head"/"head_index" over the heads, over the kv heads for hook_k/hook_v of grouped-query models);
    the result has these axes. index_df: a DataFrame (or list) of index rows instead; the result is then flat,
    one entry per row. return_index_df: also return the index table (a DataFrame; needs pandas).
    sites_per_forward (interp only): patches batched into one forward (None: up to 16, logits under 256 MB);
    progress (interp only): the tqdm bar TL always shows.
    """
    tokens = as_tokens(model, corrupted_tokens)
    rows, shape = _index_rows(model, activation_name, tokens.shape[-1], index_axis_names, index_df)
    if sites_per_forward is not None and sites_per_forward < 1:
        raise ValueError(f"sites_per_forward must be >= 1, got {sites_per_forward}.")
    device = model.W_E.device
    output = torch.zeros(len(rows) if shape is None else shape, device=device)
    flat = output.view(-1) if shape is not None else output
    names = list(dict.fromkeys(act_name(activation_name, row[0]) for row in rows))
    with torch.no_grad():
        runs = _Runs(model, tokens, _padding_mask(model, tokens), names, clean_cache)
        bar = tqdm(total=len(rows), disable=not progress)
        if patch_setter in _SETTER_AXES:
            sites = [runs.site(number, act_name(activation_name, row[0]), patch_setter, row)
                     for number, row in enumerate(rows)]
            default = max(1, min(16, LOGITS_PER_FORWARD // max(1, tokens.numel() * model.cfg.d_vocab)))
            for number, value in runs.patch_all(sites, patching_metric, sites_per_forward or default, bar):
                flat[number] = value
        else:
            for number, row in enumerate(rows):
                flat[number] = runs.run_setter(act_name(activation_name, row[0]), patch_setter, row, patching_metric)
                bar.update(1)
        bar.close()
    if not return_index_df:
        return output
    if index_df is None:
        index_df = make_df_from_ranges(shape, index_axis_names)
    return output, index_df


def _tiled(x: Tensor, copies: int) -> Tensor:
    """`x.repeat(copies, 1, ...)` (copy-major rows), a broadcast view when the batch is 1."""
    return x.expand(copies, *x.shape[1:]) if x.shape[0] == 1 else x.repeat(copies, *([1] * (x.ndim - 1)))


def _padding_mask(model: HookedTransformer, tokens: Tensor) -> Tensor | None:
    """The mask TL's forward gives these token ids (an interp.tl model masks left padding by its pad tokens when
    its tokenizer pads on the left); None: no padding, as for interp's own model given token ids."""
    mask = model.tokens_and_mask(tokens)[1]
    return None if mask is None or bool(mask.all()) else mask.to(tokens.device).bool()


class _Runs:
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

    def site(self, number: int, hook_name: str, setter: Callable, index: Sequence[int]) -> _Site:
        corrupted = self.saved[hook_name]
        where = list(_where(setter, index, corrupted.ndim))
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
        return _Site(number, hook_name, layer if in_blocks else None, tuple(where), pos_axis, start)

    def patch_all(self, sites: list[_Site], metric: Metric, per_forward: int, bar: Any) -> list[tuple[int, float]]:
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
        chunks: list[list[_Site]] = []
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

    def run_chunk(self, chunk: list[_Site]) -> Float[Tensor, "copies_batch pos d_vocab"]:
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
                    cache.keys[later] = _tiled(self.saved[self.k_names[later]][:, :start], copies)
                    cache.values[later] = _tiled(self.saved[self.v_names[later]][:, :start], copies)
                past = torch.ones(copies * self.batch, start, dtype=torch.bool, device=self.tokens.device) \
                    if mask is None else mask[:, :start]
                cache.key_mask, cache.padded = past, not bool(past.all())
            residual = self.saved[self.resid_names[layer]][:, start:].repeat(copies, 1, 1)
            logits = HookedTransformer.forward(model, residual, start_at_layer=layer, past_kv_cache=cache,
                                               attention_mask=None if mask is None else mask[:, start:])
        return logits if start == 0 else torch.cat([_tiled(self.logits[:, :start], copies), logits], dim=1)

    def _writer(self, chunk: list[_Site], hook_name: str, offset: int) -> Callable:
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


# ----- TL's specialised functions (functools.partial, as in TL: their keywords can be overridden) -----
def _specialise(setter: PatchSetter, activation_name: str, axes: tuple[str, ...], doc: str) -> partial:
    function = partial(generic_activation_patch, patch_setter=setter, activation_name=activation_name,
                       index_axis_names=axes)
    function.__doc__ = doc + ("\n\n    Arguments: (model, corrupted_tokens [batch, pos], clean_cache, patching_metric); "
                              "see generic_activation_patch.")
    return function


_KV = " (n_key_value_heads instead of n_heads for grouped-query models)"
get_act_patch_resid_pre = _specialise(layer_pos_patch_setter, "resid_pre", ("layer", "pos"),
                                      "Patch the residual stream before each block, per position: [n_layers, pos].")
get_act_patch_resid_mid = _specialise(layer_pos_patch_setter, "resid_mid", ("layer", "pos"),
                                      "Patch the residual stream between attention and MLP, per position: "
                                      "[n_layers, pos].")
get_act_patch_attn_out = _specialise(layer_pos_patch_setter, "attn_out", ("layer", "pos"),
                                     "Patch each attention layer's output, per position: [n_layers, pos].")
get_act_patch_mlp_out = _specialise(layer_pos_patch_setter, "mlp_out", ("layer", "pos"),
                                    "Patch each MLP layer's output, per position: [n_layers, pos].")
get_act_patch_attn_head_out_by_pos = _specialise(layer_pos_head_vector_patch_setter, "z", ("layer", "pos", "head"),
                                                 "Patch each head's output (hook_z) at each position: "
                                                 "[n_layers, pos, n_heads].")
get_act_patch_attn_head_q_by_pos = _specialise(layer_pos_head_vector_patch_setter, "q", ("layer", "pos", "head"),
                                               "Patch each head's query at each position: [n_layers, pos, n_heads].")
get_act_patch_attn_head_k_by_pos = _specialise(layer_pos_head_vector_patch_setter, "k", ("layer", "pos", "head"),
                                               f"Patch each head's key at each position: [n_layers, pos, n_heads]{_KV}.")
get_act_patch_attn_head_v_by_pos = _specialise(layer_pos_head_vector_patch_setter, "v", ("layer", "pos", "head"),
                                               f"Patch each head's value at each position: [n_layers, pos, n_heads]{_KV}.")
get_act_patch_attn_head_pattern_by_pos = _specialise(
    layer_head_pos_pattern_patch_setter, "pattern", ("layer", "head_index", "dest_pos"),
    "Patch each head's attention pattern row of each destination position: [n_layers, n_heads, dest_pos].")
get_act_patch_attn_head_pattern_dest_src_pos = _specialise(
    layer_head_dest_src_pos_pattern_patch_setter, "pattern", ("layer", "head_index", "dest_pos", "src_pos"),
    "Patch each single entry of each head's attention pattern: [n_layers, n_heads, dest_pos, src_pos].")
get_act_patch_attn_head_out_all_pos = _specialise(layer_head_vector_patch_setter, "z", ("layer", "head"),
                                                  "Patch each head's output (hook_z) at every position at once: "
                                                  "[n_layers, n_heads].")
get_act_patch_attn_head_q_all_pos = _specialise(layer_head_vector_patch_setter, "q", ("layer", "head"),
                                                "Patch each head's queries at every position: [n_layers, n_heads].")
get_act_patch_attn_head_k_all_pos = _specialise(layer_head_vector_patch_setter, "k", ("layer", "head"),
                                                f"Patch each head's keys at every position: [n_layers, n_heads]{_KV}.")
get_act_patch_attn_head_v_all_pos = _specialise(layer_head_vector_patch_setter, "v", ("layer", "head"),
                                                f"Patch each head's values at every position: [n_layers, n_heads]{_KV}.")
get_act_patch_attn_head_pattern_all_pos = _specialise(layer_head_pattern_patch_setter, "pattern",
                                                      ("layer", "head_index"),
                                                      "Patch each head's whole attention pattern: [n_layers, n_heads].")


def _padded_to(result: Tensor, n_heads: int) -> Tensor:
    """Zeros appended along the last (head) axis: kv-head results of grouped-query models next to query heads'."""
    return torch.nn.functional.pad(result, (0, n_heads - result.shape[-1]))


def get_act_patch_attn_head_all_pos_every(model: HookedTransformer, corrupted_tokens: Int[Tensor, "batch pos"],
                                          clean_cache: Any, metric: Metric) -> Float[Tensor, "5 layer head"]:
    """Every head patched at all positions, for output (z), q, k, v and pattern, stacked in that order:
    [5, n_layers, n_heads]; grouped-query k/v results fill their n_key_value_heads columns, zeros after."""
    arguments = (model, corrupted_tokens, clean_cache, metric)
    n_heads = model.cfg.n_heads
    return torch.stack([get_act_patch_attn_head_out_all_pos(*arguments), get_act_patch_attn_head_q_all_pos(*arguments),
                        _padded_to(get_act_patch_attn_head_k_all_pos(*arguments), n_heads),
                        _padded_to(get_act_patch_attn_head_v_all_pos(*arguments), n_heads),
                        get_act_patch_attn_head_pattern_all_pos(*arguments)])


def get_act_patch_attn_head_by_pos_every(model: HookedTransformer, corrupted_tokens: Int[Tensor, "batch pos"],
                                         clean_cache: Any, metric: Metric) -> Float[Tensor, "5 layer pos head"]:
    """Every head patched at each position, for output (z), q, k, v and pattern (by destination position),
    stacked in that order: [5, n_layers, pos, n_heads]; grouped-query k/v padded with zeros as above."""
    arguments = (model, corrupted_tokens, clean_cache, metric)
    n_heads = model.cfg.n_heads
    pattern = get_act_patch_attn_head_pattern_by_pos(*arguments)
    return torch.stack([get_act_patch_attn_head_out_by_pos(*arguments), get_act_patch_attn_head_q_by_pos(*arguments),
                        _padded_to(get_act_patch_attn_head_k_by_pos(*arguments), n_heads),
                        _padded_to(get_act_patch_attn_head_v_by_pos(*arguments), n_heads),
                        einops.rearrange(pattern, "layer head pos -> layer pos head")])


def get_act_patch_block_every(model: HookedTransformer, corrupted_tokens: Int[Tensor, "batch pos"],
                              clean_cache: Any, metric: Metric) -> Float[Tensor, "3 layer pos"]:
    """The residual stream before each block, each attention output and each MLP output, patched per position
    and stacked in that order: [3, n_layers, pos]."""
    arguments = (model, corrupted_tokens, clean_cache, metric)
    return torch.stack([get_act_patch_resid_pre(*arguments), get_act_patch_attn_out(*arguments),
                        get_act_patch_mlp_out(*arguments)])
