"""TransformerLens 3.9's `ActivationCache` API over interp's cache: TL's indexing, methods, argument orders,
defaults, return types (plain tensors; `(tensor, labels)` with return_labels=True) and labels.

It subclasses `interp.cache.ActivationCache`, so interp's analyses accept it, and it keeps interp's lazily
derived entries (attention patterns and scores, LayerNorm scales) lazy: they are computed when first read.
`layer` means what TL means: in the residual-stream methods the stream *before* block `layer` (the components
of blocks 0..layer-1), with None, -1 and n_layers all meaning the stream after the last block.
Where this differs from TL (listed in the README's difference table): bad input raises a clear IndexError /
ValueError / KeyError where TL asserts or fails later; a pos_slice that selects padding of a padded batch raises
(see `interp.analysis.decompose`, Padding); an int neuron_slice keeps its neuron axis in stack_neuron_results;
`incl_remainder` at layer 0 is the stream before block 0 (TL takes the last block's resid_post).
"""

from __future__ import annotations

import logging
from typing import Any, Union

import einops
import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.analysis.decompose import check_no_padding, token_ids
from interp.analysis.stack import ComponentStack
from interp.cache import ActivationCache as InterpActivationCache
from interp.cache import derivation, unbatched
from interp.tl.utils import SliceInput, as_index, get_act_name, take

Stack = Float[Tensor, "component *batch_and_pos d_model"]
TokensInput = Union[str, int, list, Int[Tensor, "..."]]


def _is_everything(index: int | slice | Tensor) -> bool:
    return isinstance(index, slice) and index == slice(None)


def _projection(project: Tensor | None) -> tuple[Tensor | None, bool]:
    """A [d_model] projection as [d_model, 1] (squeezed again at the end), a [d_model, n] one unchanged."""
    return (project[:, None], True) if project is not None and project.ndim == 1 else (project, False)


class ActivationCache(InterpActivationCache):
    """TransformerLens's ActivationCache: `cache["pattern", 3]`, `cache["resid_post", -1]`, `cache["k6"]`, and TL's
    residual-stream decompositions, logit attribution and LayerNorm application.

    Build it as TL does, `ActivationCache(cache_dict, model, has_batch_dim=True)`, or from an interp cache with
    `ActivationCache.from_interp(cache)`, which keeps the lazily derived entries. The keyword-only arguments
    are interp's (see `interp.cache.ActivationCache`).
    """

    @classmethod
    def from_interp(cls, cache: InterpActivationCache) -> ActivationCache:
        """The same activations (tensors shared, derived entries still lazy) with TransformerLens's API."""
        if not isinstance(cache, InterpActivationCache) or cache.holds_gradients:
            raise TypeError(f"from_interp takes an interp.ActivationCache of activations, got {type(cache).__name__}.")
        return cls(dict(cache.cache_dict), cache.model, cache.has_batch_dim, derived=cache.derived,
                   inputs=cache.inputs, order=list(cache), dtype=cache.dtype, from_run=cache.from_run,
                   attention_mask=cache.attention_mask)

    # ----- mapping ------------------------------------------------------------------------------------
    def _full_name(self, key: str | tuple) -> str:
        if isinstance(key, str):
            return key if key in self.cache_dict or key in self.derived else get_act_name(key)
        if isinstance(key, tuple) and key:
            if len(key) > 1 and isinstance(key[1], int) and key[1] < 0:  # negative layers count from the end
                key = (key[0], self.model.cfg.n_layers + key[1], *key[2:])
            return get_act_name(*key)
        raise TypeError(f"Index the cache with a hook name or a tuple (name, layer[, layer_type]), got {key!r}.")

    has_embed = property(lambda self: "hook_embed" in self)
    has_pos_embed = property(lambda self: "hook_pos_embed" in self)  # learned positions; rotary models have none

    def __repr__(self) -> str:
        return f"ActivationCache with keys {list(self)}"

    def to(self, device: str | torch.device, move_model: bool = False) -> ActivationCache:
        """Move every activation (and the model, with move_model=True) to `device`, in place; returns the cache."""
        self.cache_dict = {name: value.to(device) for name, value in self.cache_dict.items()}
        self.inputs = {name: value.to(device) for name, value in self.inputs.items()}
        if self.attention_mask is not None:
            self.attention_mask = self.attention_mask.to(device)
        if move_model:
            self.model.to(device)
        return self

    def toggle_autodiff(self, mode: bool = False) -> None:
        """`torch.set_grad_enabled(mode)`: changes torch's global state (TL's method; prefer torch.no_grad())."""
        logging.warning("Changed the global state, set autodiff to %s", mode)
        torch.set_grad_enabled(mode)

    def remove_batch_dim(self) -> ActivationCache:
        """Drop the batch axis of a batch-of-1 cache, in place (as TL); returns the cache itself."""
        if not self.has_batch_dim:
            logging.warning("Tried removing batch dimension after already having removed it.")
            return self
        sizes = {v.shape[0] for v in [*self.cache_dict.values(), *self.inputs.values()] if v.ndim > 0}
        if sizes - {1}:
            raise ValueError(f"remove_batch_dim() needs a batch of 1, got batch sizes {sorted(sizes)}; use "
                             "cache.apply_slice_to_batch_dim(i) to select one sequence instead.")
        for store in (self.cache_dict, self.inputs):
            for name, value in store.items():
                store[name] = value[0] if value.ndim > 0 else value
        self.derived = {name: (sources, unbatched(fn)) for name, (sources, fn) in self.derived.items()}
        self.attention_mask = None if self.attention_mask is None else self.attention_mask[0]
        self.has_batch_dim = False
        return self

    def apply_slice_to_batch_dim(self, batch_slice: SliceInput) -> ActivationCache:
        """A new cache of the selected sequences; an int selection drops the batch axis."""
        if not self.has_batch_dim:
            raise ValueError("This cache has no batch dimension (remove_batch_dim() was applied); nothing to slice.")
        index = as_index(batch_slice, "batch_slice")
        keeps_batch = not isinstance(index, int)
        batched = index if keeps_batch else [index]  # derived entries are computed batched, then unbatched
        mask = self.attention_mask
        # The padding mask is built into each derivation, so derive again for the selected rows.
        key_mask = take(mask, as_index(batched), 0) if mask is not None and not bool(mask.all()) else None
        derived = {}
        for name in [name for name in self if name in self.derived]:
            rebuilt = derivation(self.model, name, list(self), key_mask)
            if rebuilt is None:  # a hook now on the model would change it: compute it from the full batch now
                self[name]
                continue
            sources, fn = rebuilt
            derived[name] = (sources, fn if keeps_batch else unbatched(fn))
        return ActivationCache(
            {name: take(value, index, 0) for name, value in self.cache_dict.items()}, self.model, keeps_batch,
            derived=derived, inputs={name: take(value, index, 0) for name, value in self.inputs.items()},
            order=list(self), dtype=self.dtype, from_run=self.from_run,
            attention_mask=None if mask is None else take(mask, index, 0))

    # ----- helpers --------------------------------------------------------------------------------------
    def _stream_layer(self, layer: int | None) -> int:
        """A residual stream 0..n_layers (None and -1: n_layers, after the last block), or IndexError."""
        n_layers = self.model.cfg.n_layers
        if layer is None or layer == -1:
            return n_layers
        if not isinstance(layer, int) or not 0 <= layer <= n_layers:
            raise IndexError(f"layer={layer!r} names no residual stream: give 0..{n_layers} (the stream before that "
                             f"block; {n_layers}, -1 or None: after the last block).")
        return layer

    def _pos(self, tensor: Tensor, index: int | slice | Tensor, dim: int = -2) -> Tensor:
        """`tensor` at the selected positions; ValueError if they include padding of a padded batch."""
        if _is_everything(index):
            return tensor
        check_no_padding(self, index, 1 if self.has_batch_dim else 0)
        return take(tensor, index, dim)

    def _needs(self, name: str, why: str) -> Tensor:
        if name not in self:
            parallel = "hook_resid_mid" in name and name not in self.model.hook_dict
            hint = ("this model's blocks are parallel (attention and MLP both read resid_pre): there is no resid_mid"
                    if parallel else "include it in run_with_cache(names_filter=...)")
            raise KeyError(f"{why} needs {name!r}, which is not in the cache: {hint}.")
        return self[name]

    def _scale(self, layer: int, mlp_input: bool, pos: int | slice | Tensor,
               batch: int | slice | Tensor) -> Float[Tensor, "*batch_and_pos 1"]:
        n_layers = self.model.cfg.n_layers
        name = "ln_final.hook_scale" if layer == n_layers else f"blocks.{layer}.ln{2 if mlp_input else 1}.hook_scale"
        scale = self._pos(self._needs(name, "Applying LayerNorm with the cached scale"), pos)
        return take(scale, batch, 0) if self.has_batch_dim and not _is_everything(batch) else scale

    def _norm(self, layer: int, mlp_input: bool) -> Any:
        return self.model.ln_final if layer == self.model.cfg.n_layers else \
            getattr(self.model.blocks[layer], "ln2" if mlp_input else "ln1")

    def _final_ln(self, stack: Stack) -> Stack:
        """ln_final applied to each component with its own statistics (the logit lens), gain and bias included."""
        ln_final = self.model.ln_final
        normalized = ln_final.scale_and_normalized(stack)[1]
        if ln_final.w is not None:
            normalized = normalized * ln_final.w.to(normalized)
        return normalized if ln_final.b is None else normalized + ln_final.b.to(normalized)

    def _empty(self, pos: int | slice | Tensor, width: int | None = None) -> Tensor:
        like = self._pos(self["hook_embed"], pos)
        return like.new_zeros(0, *like.shape[:-1], like.shape[-1] if width is None else width)

    def _labelled(self, components: Tensor, labels: list[str], return_labels: bool) -> Any:
        return (components, labels) if return_labels else components

    # ----- residual stream -------------------------------------------------------------------------------
    def accumulated_resid(self, layer: int | None = None, incl_mid: bool = False, apply_ln: bool = False,
                          pos_slice: SliceInput = None, mlp_input: bool = False, return_labels: bool = False) -> Any:
        """The residual stream before each block up to `layer`: "0_pre", ("0_mid",) "1_pre", ..., "final_post".

        incl_mid adds resid_mid of the blocks before `layer`; mlp_input adds `layer`'s own resid_mid (the MLP input).
        Parallel blocks (GPT-NeoX) have no resid_mid: both raise KeyError there.
        apply_ln=True as TL 3.9: at the final stream each partial residual goes through ln_final with its own
        recomputed statistics (the logit lens; gain and bias included, as `interp.analysis.decompose.logit_lens`
        uses); at an earlier `layer` every partial residual is divided by that block's one cached ln1 (ln2 with
        mlp_input) scale, which mis-scales the early residuals: use `interp.analysis.decompose.logit_lens` there.
        """
        layer, n_layers, pos = self._stream_layer(layer), self.model.cfg.n_layers, as_index(pos_slice)
        names, labels = [], []
        for index in range(layer + 1):
            if index == n_layers:
                names.append(f"blocks.{n_layers - 1}.hook_resid_post")
                labels.append("final_post")
                continue
            names.append(f"blocks.{index}.hook_resid_pre")
            labels.append(f"{index}_pre")
            if (incl_mid and index < layer) or (mlp_input and index == layer):
                names.append(f"blocks.{index}.hook_resid_mid")
                labels.append(f"{index}_mid")
        components = torch.stack([self._pos(self._needs(name, "accumulated_resid"), pos) for name in names])
        if apply_ln:
            components = self._final_ln(components) if layer == n_layers else \
                self.apply_ln_to_stack(components, layer, mlp_input, pos_slice, has_batch_dim=self.has_batch_dim)
        return self._labelled(components, labels, return_labels)

    def decompose_resid(self, layer: int | None = None, mlp_input: bool = False, mode: str = "all",
                        apply_ln: bool = False, pos_slice: SliceInput = None, incl_embeds: bool = True,
                        return_labels: bool = False) -> Any:
        """The residual stream before block `layer` as "embed", "pos_embed" (learned positions only), then
        "{l}_attn_out", "{l}_mlp_out" for l < layer; mlp_input adds "{layer}_attn_out" (the MLP's input in
        sequential blocks). mode "attn" / "mlp" keeps one kind; with mode="all" and incl_embeds the stack sums to
        the stream. apply_ln: `apply_ln_to_stack(stack, layer, mlp_input)` (one cached scale)."""
        if mode not in ("all", "attn", "mlp"):
            raise ValueError(f"mode must be 'all', 'attn' or 'mlp', got {mode!r}.")
        layer, pos = self._stream_layer(layer), as_index(pos_slice)
        if mlp_input and layer == self.model.cfg.n_layers:
            raise ValueError("mlp_input=True adds block `layer`'s attn_out: give a layer in "
                             f"0..{self.model.cfg.n_layers - 1}, or mlp_input=False.")
        incl_attn, incl_mlp = mode != "mlp", mode != "attn" and not getattr(self.model.cfg, "attn_only", False)
        names = {"embed": "hook_embed", "pos_embed": "hook_pos_embed"} if incl_embeds else {}
        names = {label: name for label, name in names.items() if name in self}
        for index in range(layer):
            names.update({f"{index}_attn_out": f"blocks.{index}.hook_attn_out"} if incl_attn else {})
            names.update({f"{index}_mlp_out": f"blocks.{index}.hook_mlp_out"} if incl_mlp else {})
        if mlp_input and incl_attn:
            names[f"{layer}_attn_out"] = f"blocks.{layer}.hook_attn_out"
        if not names:
            raise ValueError(f"No components: layer={layer} with incl_embeds={incl_embeds}, mode={mode!r} selects "
                             "nothing; use a later layer or incl_embeds=True.")
        components = torch.stack([self._pos(self._needs(name, "decompose_resid"), pos) for name in names.values()])
        if apply_ln:
            components = self.apply_ln_to_stack(components, layer, mlp_input, pos_slice)
        return self._labelled(components, list(names), return_labels)

    def compute_head_results(self) -> None:
        """Add each block's per-head outputs `z @ W_O` as `blocks.{l}.attn.hook_result` [..., n_heads, d_model]
        to the cache (as a run with use_attn_result would have cached them); a block's heads plus b_O sum to
        its attn_out."""
        missing = [layer for layer in range(self.model.cfg.n_layers) if f"blocks.{layer}.attn.hook_result" not in self]
        if not missing:
            logging.warning("Tried to compute head results when they were already cached")
        for layer in missing:
            z = self._needs(f"blocks.{layer}.attn.hook_z", "compute_head_results")
            W_O = self.model.blocks[layer].attn.W_O.to(z)
            name = f"blocks.{layer}.attn.hook_result"
            self.cache_dict[name] = einops.einsum(z, W_O, "... n_heads d_head, n_heads d_head d_model"
                                                  " -> ... n_heads d_model")
            self._order.append(name)

    def stack_head_results(self, layer: int = -1, return_labels: bool = False, incl_remainder: bool = False,
                           pos_slice: SliceInput = None, apply_ln: bool = False) -> Any:
        """Every head's output of the blocks before `layer` ("L{l}H{h}"; -1 / None / n_layers: all blocks), from
        `compute_head_results` (which it calls, as TL). incl_remainder adds "remainder": the stream before block
        `layer` minus the heads (embeddings and biases, and the MLPs). apply_ln: with `layer`'s cached scale."""
        layer, pos = self._stream_layer(layer), as_index(pos_slice)
        if layer > 0 and any(f"blocks.{index}.attn.hook_result" not in self for index in range(layer)):
            self.compute_head_results()
        heads = [self._pos(self[f"blocks.{index}.attn.hook_result"], pos, dim=-3) for index in range(layer)]
        labels = [f"L{index}H{head}" for index in range(layer) for head in range(self.model.cfg.n_heads)]
        components = einops.rearrange(torch.cat(heads, dim=-2), "... component d_model -> component ... d_model") \
            if heads else self._empty(pos)
        if incl_remainder:
            components = torch.cat([components, (self._stream(layer, pos) - components.sum(0))[None]])
            labels.append("remainder")
        if apply_ln:
            components = self.apply_ln_to_stack(components, layer, pos_slice=pos_slice)
        return self._labelled(components, labels, return_labels)

    def _stream(self, layer: int, pos: int | slice | Tensor) -> Float[Tensor, "*batch_and_pos d_model"]:
        """The residual stream before block `layer` (after the last block when layer = n_layers)."""
        name = f"blocks.{layer - 1}.hook_resid_post" if layer > 0 else "blocks.0.hook_resid_pre"
        return self._pos(self._needs(name, "incl_remainder"), pos)

    def stack_activation(self, activation_name: str, layer: int = -1,
                         sublayer_type: str | None = None) -> Float[Tensor, "layers_covered ..."]:
        """`cache[activation_name, l, sublayer_type]` stacked over the blocks l before `layer` (-1 / None: all)."""
        layer = self._stream_layer(layer)
        if layer == 0:
            raise ValueError("stack_activation(layer=0) covers no block: give a layer in 1..n_layers (or -1).")
        return torch.stack([self[(activation_name, index, sublayer_type)] for index in range(layer)])

    # ----- neurons --------------------------------------------------------------------------------------
    def get_neuron_results(self, layer: int, neuron_slice: SliceInput = None, pos_slice: SliceInput = None,
                           project_output_onto: Float[Tensor, "d_model *n_outputs"] | None = None) -> Tensor:
        """What each neuron of block `layer` writes, `post[..., n] * W_out[n]`: [*batch_and_pos, neuron, d_model]
        (an int neuron_slice drops the neuron axis). project_output_onto ([d_model] or [d_model, n]) is applied to
        W_out first, giving [..., neuron] or [..., neuron, n] without the d_model-wide intermediate."""
        n_layers = self.model.cfg.n_layers
        if not isinstance(layer, int) or not -n_layers <= layer < n_layers:
            raise IndexError(f"layer={layer!r} names no block: give 0..{n_layers - 1} (or a negative index).")
        layer, neurons = layer % n_layers, as_index(neuron_slice, "neuron_slice")
        post = take(self._pos(self._needs(f"blocks.{layer}.mlp.hook_post", "get_neuron_results"), as_index(pos_slice)),
                    neurons, -1)
        W_out = take(self.model.blocks[layer].mlp.W_out, neurons, 0).to(post)
        if project_output_onto is None:
            return post[..., None] * W_out
        projected = W_out @ project_output_onto.to(post)
        return post * projected if projected.ndim == 1 else post[..., None] * projected

    def _neuron_stack(self, layer: int, pos: int | slice | Tensor, neurons: slice | Tensor,
                      project: Tensor | None, ln: tuple[int, bool] | None) -> Tensor:
        """Neurons of blocks before `layer`, [neuron, *batch_and_pos, d_model or n]; `ln` (layer, mlp_input) applies
        that cached scale. LayerNorm of one neuron's output post * W_out[n] centres W_out[n] and divides by the
        scale, so both go into the weights before any projection."""
        pieces = []
        for index in range(layer):
            post = self._pos(self._needs(f"blocks.{index}.mlp.hook_post", "stack_neuron_results"), pos)
            post = take(post, neurons, -1)
            W_out = take(self.model.blocks[index].mlp.W_out, neurons, 0).to(post)
            if ln is not None and self._norm(*ln).centres:
                W_out = W_out - W_out.mean(-1, keepdim=True)
            if project is not None:
                W_out = W_out @ project.to(post)
            if ln is not None:
                post = post / self._scale(*ln, pos, slice(None)).to(post)
            pieces.append(einops.einsum(post, W_out, "... neuron, neuron d_out -> neuron ... d_out"))
        width = None if project is None else project.shape[-1]
        return torch.cat(pieces) if pieces else self._empty(pos, width)

    def stack_neuron_results(self, layer: int, pos_slice: SliceInput = None, neuron_slice: SliceInput = None,
                             return_labels: bool = False, incl_remainder: bool = False, apply_ln: bool = False,
                             project_output_onto: Float[Tensor, "d_model *n_outputs"] | None = None) -> Any:
        """Every neuron's output of the blocks before `layer` ("L{l}N{n}"; -1 / None: all blocks), optionally only
        the neurons `neuron_slice` selects. incl_remainder adds "remainder" (the stream before `layer` minus these
        neurons); apply_ln uses `layer`'s cached ln1 scale (ln_final's for the last stream); project_output_onto
        ([d_model] or [d_model, n]) projects each component, without the d_model-wide neuron intermediate."""
        layer, pos = self._stream_layer(layer), as_index(pos_slice)
        neurons = as_index(neuron_slice, "neuron_slice")
        neurons = torch.tensor([neurons]) if isinstance(neurons, int) else neurons  # keep the neuron axis
        labels = [f"L{index}N{n}" for index in range(layer)
                  for n in torch.arange(self.model.cfg.d_mlp)[neurons].reshape(-1).tolist()]
        project, squeeze = _projection(project_output_onto)
        ln = (layer, False) if apply_ln else None
        components = self._neuron_stack(layer, pos, neurons, project, ln)
        if incl_remainder:
            stream = self._stream(layer, pos)
            if apply_ln:
                stream = self.apply_ln_to_stack(stream[None], layer, pos_slice=pos_slice)[0]
            stream = stream if project is None else stream @ project.to(stream)
            components = torch.cat([components, (stream - components.sum(0))[None]])
            labels.append("remainder")
        return self._labelled(components.squeeze(-1) if squeeze else components, labels, return_labels)

    def get_full_resid_decomposition(self, layer: int | None = None, mlp_input: bool = False,
                                     expand_neurons: bool = True, apply_ln: bool = False, pos_slice: SliceInput = None,
                                     return_labels: bool = False,
                                     project_output_onto: Float[Tensor, "d_model *n_outputs"] | None = None) -> Any:
        """The stream before block `layer` (mlp_input: before its MLP) in TL's order: every head "L{l}H{h}", every
        neuron "L{l}N{n}" (or "{l}_mlp_out" without expand_neurons), "embed", "pos_embed" (learned positions), and
        "bias" (the b_O and, with expand_neurons, b_out it has accumulated). The components sum to that stream."""
        layer, pos, n_layers = self._stream_layer(layer), as_index(pos_slice), self.model.cfg.n_layers
        if mlp_input and layer == n_layers:
            raise ValueError(f"mlp_input=True decomposes block `layer`'s MLP input: give a layer in 0..{n_layers - 1}.")
        project, squeeze = _projection(project_output_onto)

        def finish(stack: Stack) -> Tensor:  # LayerNorm with the one cached scale, then the projection
            stack = self.apply_ln_to_stack(stack, layer, mlp_input, pos_slice) if apply_ln else stack
            return stack if project is None else stack @ project.to(stack)

        heads, labels = self.stack_head_results(layer + int(mlp_input), True, pos_slice=pos_slice)
        components = [finish(heads)]
        if not getattr(self.model.cfg, "attn_only", False) and layer > 0:
            if expand_neurons:
                components.append(self._neuron_stack(layer, pos, slice(None), project,
                                                     (layer, mlp_input) if apply_ln else None))
                labels += [f"L{index}N{n}" for index in range(layer) for n in range(self.model.cfg.d_mlp)]
            else:
                mlp, mlp_labels = self.decompose_resid(layer, pos_slice=pos_slice, incl_embeds=False, mode="mlp",
                                                       return_labels=True)
                components.append(finish(mlp))
                labels += mlp_labels
        for label in ("embed", "pos_embed"):
            if f"hook_{label}" in self:
                components.append(finish(self._pos(self[f"hook_{label}"], pos)[None]))
                labels.append(label)
        blocks = self.model.blocks
        bias = sum((blocks[index].attn.b_O + (blocks[index].mlp.b_out if expand_neurons else 0)
                    for index in range(layer)), torch.zeros_like(blocks[0].attn.b_O))
        bias = bias + blocks[layer].attn.b_O if mlp_input else bias
        components.append(finish(bias.to(heads).expand(1, *heads.shape[1:])))
        labels.append("bias")
        stack = torch.cat(components)
        return self._labelled(stack.squeeze(-1) if squeeze else stack, labels, return_labels)

    # ----- LayerNorm and logits ----------------------------------------------------------------------------
    def apply_ln_to_stack(self, residual_stack: Stack | ComponentStack, layer: int | None = None,
                          mlp_input: bool = False, pos_slice: SliceInput = None, batch_slice: SliceInput = None,
                          has_batch_dim: bool = True, recompute_ln: bool = False) -> Stack:
        """Components of the stream into block `layer` (None / -1 / n_layers: ln_final) normalised with that norm's
        cached scale: centred (LayerNorm only) and divided by `blocks.{layer}.ln1.hook_scale` (ln2 with mlp_input).
        One frozen scale keeps the norm linear, so the results still sum to `hook_normalized` (no gain or bias).
        pos_slice / batch_slice say which positions / sequences the stack covers (batch_slice is applied to the
        stack too, when has_batch_dim). recompute_ln with the final layer: ln_final with each component's own
        statistics instead (the logit lens)."""
        stack = residual_stack.components if isinstance(residual_stack, ComponentStack) else residual_stack
        layer, batch = self._stream_layer(layer), as_index(batch_slice, "batch_slice")
        if has_batch_dim and not _is_everything(batch):
            stack = take(stack, batch, 1)
        if recompute_ln and layer == self.model.cfg.n_layers:
            return self._final_ln(stack)
        if self._norm(layer, mlp_input).centres:
            stack = stack - stack.mean(-1, keepdim=True)
        scale = self._scale(layer, mlp_input, as_index(pos_slice), batch)
        try:
            torch.broadcast_shapes(stack.shape, scale.shape)
        except RuntimeError:
            raise ValueError(f"The stack's shape {tuple(stack.shape)} does not fit the cached scale's "
                             f"{tuple(scale.shape)}: pass the pos_slice / batch_slice the stack was built "
                             "with.") from None
        return stack / scale.to(stack)

    def _directions(self, tokens: TokensInput) -> Float[Tensor, "*batch d_model"]:
        """W_U's columns for the tokens, as TL's tokens_to_residual_directions: one token (a single-token string,
        an int, a one-element tensor) gives [d_model], a longer tensor or list [..., d_model]."""
        ids = token_ids(self.model, tokens)
        if not (isinstance(tokens, (Tensor, list)) and ids.numel() > 1):
            ids = ids.reshape(())
        return self.model.W_U.T[ids]

    def logit_attrs(self, residual_stack: Stack | ComponentStack, tokens: TokensInput,
                    incorrect_tokens: TokensInput | None = None, pos_slice: SliceInput = None,
                    batch_slice: SliceInput = None, has_batch_dim: bool = True) -> Float[Tensor, "component ..."]:
        """Direct logit attribution: each component, normalised with ln_final's cached scale, dotted with
        W_U[:, tokens] (minus W_U[:, incorrect_tokens]); tokens broadcast against the stack from the right, as in
        TL. As in TL, ln_final's gain is not applied (there is none after fold_ln)."""
        directions = self._directions(tokens)
        if incorrect_tokens is not None:
            incorrect = self._directions(incorrect_tokens)
            if incorrect.shape != directions.shape:
                raise ValueError("tokens and incorrect_tokens must have the same shape, got "
                                 f"{tuple(directions.shape[:-1])} and {tuple(incorrect.shape[:-1])}.")
            directions = directions - incorrect
        scaled = self.apply_ln_to_stack(residual_stack, -1, pos_slice=pos_slice, batch_slice=batch_slice,
                                        has_batch_dim=has_batch_dim)
        try:
            torch.broadcast_shapes(scaled.shape, directions.shape)
        except RuntimeError:
            raise ValueError(f"tokens of shape {tuple(directions.shape[:-1])} do not broadcast against the stack "
                             f"{tuple(scaled.shape)} (aligned from the right, as in TransformerLens).") from None
        return (scaled * directions.to(scaled)).sum(-1)
