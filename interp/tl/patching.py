"""TransformerLens's `transformer_lens.patching` on interp models: the same functions, arguments, result shapes,
orders and numbers, computed with partial reruns instead of one full forward per patch.

What every function computes (as TL 3.9): for each index (a row of `index_df`, or every combination of the
`index_axis_names` ranges, the first axis always the layer), the corrupted tokens are run with one activation
(`activation_name` in block `index[0]`) edited by `patch_setter(corrupted_activation, index, clean_activation)`,
where `clean_activation` is `clean_cache[name]`; `patching_metric(logits)` of that run (a scalar) is the entry.
Results are float32 tensors on the model's device: axes in `index_axis_names` order, or flat with `index_df`.

How it is faster, exactly: a patch reruns only the blocks and positions it can change, from the corrupted run's
residual stream, keys and values (`interp.tl.patch_runs`), several patches per forward (`sites_per_forward`); a
patch whose clean and corrupted slices are equal is not run (it gives the unpatched metric). A `patch_setter` of
your own is called as TL calls it, in one full forward per patch.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Literal

import einops
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from interp.analysis.patching import as_tokens
from interp.model import HookedTransformer
from interp.names import act_name
from interp.tl.patch_runs import SETTER_AXES, Metric, PatchSetter, Runs, indexes, padding_mask, setter_index

Logits = Tensor
AxisNames = Literal["layer", "pos", "head_index", "head", "src_pos", "dest_pos"]
CorruptedActivation = Tensor
PatchedActivation = Tensor
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


def _copy(setter: Callable, corrupted: Tensor, index: Sequence[int], clean: Tensor) -> Tensor:
    where = setter_index(setter, index, corrupted.ndim)
    corrupted[where] = clean[where].to(corrupted.device, corrupted.dtype)
    return corrupted


@indexes(1)
def layer_pos_patch_setter(corrupted_activation: Tensor, index: Sequence[int], clean_activation: Tensor) -> Tensor:
    """index [layer, pos]: the clean activation at position `pos` of axis 1 (the position of every activation
    but attention patterns and scores, whose axis 1 is the head)."""
    return _copy(layer_pos_patch_setter, corrupted_activation, index, clean_activation)


@indexes(1, 2)
def layer_pos_head_vector_patch_setter(corrupted_activation: Tensor, index: Sequence[int],
                                       clean_activation: Tensor) -> Tensor:
    """index [layer, pos, head]: one head's vector at one position of a `[batch, pos, head, d_head]` activation
    (q, k, v, z, result)."""
    return _copy(layer_pos_head_vector_patch_setter, corrupted_activation, index, clean_activation)


@indexes(2)
def layer_head_vector_patch_setter(corrupted_activation: Tensor, index: Sequence[int],
                                   clean_activation: Tensor) -> Tensor:
    """index [layer, head]: one head's vectors at every position of a `[batch, pos, head, d_head]` activation."""
    return _copy(layer_head_vector_patch_setter, corrupted_activation, index, clean_activation)


@indexes(1)
def layer_head_pattern_patch_setter(corrupted_activation: Tensor, index: Sequence[int],
                                    clean_activation: Tensor) -> Tensor:
    """index [layer, head]: one head's whole `[dest_pos, src_pos]` attention pattern (or scores)."""
    return _copy(layer_head_pattern_patch_setter, corrupted_activation, index, clean_activation)


@indexes(1, 2)
def layer_head_pos_pattern_patch_setter(corrupted_activation: Tensor, index: Sequence[int],
                                        clean_activation: Tensor) -> Tensor:
    """index [layer, head, dest_pos]: one head's attention from one destination (query) position."""
    return _copy(layer_head_pos_pattern_patch_setter, corrupted_activation, index, clean_activation)


@indexes(1, 2, 3)
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
        runs = Runs(model, tokens, padding_mask(model, tokens), names, clean_cache)
        bar = tqdm(total=len(rows), disable=not progress)
        if patch_setter in SETTER_AXES:
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
