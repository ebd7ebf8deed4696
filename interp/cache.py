"""`ActivationCache`: the activations of one run, by hook name.

It holds references to the tensors the forward produced (no copies), so caching costs only
keeping them alive. Index with a full name or a `(short_name, layer)` pair: `cache["pattern", 3]`.

Derived entries. Attention scores and patterns, and LayerNorm scales and normalized outputs, are
pure functions of other activations (q and k; the LayerNorm's input). When nothing hooks them,
`run_with_cache` keeps those inputs and computes these entries the first time they are read, with the
same arithmetic as the forward's explicit path (`interp.components`), then keeps them. So the forward
runs the fused kernels, and a cache of every hook holds q and k (2 x d_model per token) instead of
two [n_heads, pos, pos] tensors per layer until a pattern is actually read. `cache.cache_dict` holds
only what has been computed; read entries through the mapping (`cache[name]`, `dict(cache)`).
In fp32 a derived entry equals the explicit path's to rounding (~1e-7; the fused kernels the run
used differ in the last bits); in bf16/fp16 expect ~1 ulp.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from interp.components.functional import softmax
from interp.hooks import unknown_name_error
from interp.names import act_name

if TYPE_CHECKING:
    from interp.analysis.decompose import ComponentStack, PosSlice, Tokens

Model = Any  # an interp.model.HookedTransformer; not imported, since the model imports this module

Derivation = tuple[list[str], Callable[..., Tensor]]  # input hook names, and the function of their activations


class ActivationCache(Mapping[str, Tensor]):
    """Mapping from hook name to activation (and `name + "_grad"` to its gradient, with incl_bwd)."""

    holds_gradients = False  # see GradientCache

    def __init__(self, cache_dict: dict[str, Tensor], model: Model, has_batch_dim: bool = True,
                 derived: dict[str, Derivation] | None = None, inputs: dict[str, Tensor] | None = None,
                 order: Iterable[str] | None = None, dtype: torch.dtype | None = None, from_run: bool = False,
                 attention_mask: Tensor | None = None) -> None:
        self.cache_dict = cache_dict  # what has been computed
        # [batch, pos] bool, True at real tokens, of the run (None for a hand-built cache: every position real)
        self.attention_mask = attention_mask
        # True when model.run_with_cache built it: its entries are activations of one forward (a hand-built
        # cache may hold gradients, which per-component stacks check for; see decompose._check_adds_up).
        self.from_run = from_run
        self.derived = dict(derived or {})  # name -> (input names, function): computed on first read
        self.inputs = dict(inputs or {})  # the activations derived entries are computed from (not listed)
        self.model = model
        self.has_batch_dim = has_batch_dim
        self.dtype = dtype  # derived entries are computed from full-precision inputs, then converted
        self._order = list(order) if order is not None else \
            list(cache_dict) + [k for k in self.derived if k not in cache_dict]

    def _full_name(self, key: str | tuple) -> str:
        if isinstance(key, tuple):
            return act_name(*key)
        if not isinstance(key, str):
            raise TypeError(f"Index the cache with a hook name or (name, layer), got {type(key).__name__}.")
        if key in self.cache_dict or "." in key:
            return key
        try:
            return act_name(key)  # "embed", "scale" (ln_final); "pattern" alone asks for a layer
        except KeyError:
            return key

    def __getitem__(self, key: str | tuple) -> Tensor:
        name = self._full_name(key)
        if name in self.derived:
            input_names, derive = self.derived[name]
            value = derive(*(self.inputs[input_name] for input_name in input_names))
            self.cache_dict[name] = value if self.dtype is None else value.to(self.dtype)
            del self.derived[name]
        if name not in self.cache_dict:
            if name in self.model.hook_dict:
                raise KeyError(f"{name!r} is a hook name but was not cached; include it in run_with_cache(names_filter=...).")
            raise unknown_name_error(name, self.cache_dict)
        return self.cache_dict[name]

    def __contains__(self, key: object) -> bool:
        try:
            name = self._full_name(key)  # type: ignore[arg-type]
            return name in self.cache_dict or name in self.derived
        except (TypeError, KeyError, ValueError):
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self._order)

    def __len__(self) -> int:
        return len(self._order)

    def gradients(self) -> GradientCache:
        """The gradients of a `run_with_cache(..., incl_bwd=True)` as a `GradientCache`, under the hook names."""
        grads = {name.removesuffix("_grad"): self.cache_dict[name] for name in self._order if name.endswith("_grad")}
        if not grads:
            raise ValueError("This cache holds no gradients; run run_with_cache(..., incl_bwd=True, return_type='loss').")
        return GradientCache(grads, self.model, self.has_batch_dim, attention_mask=self.attention_mask)

    def to(self, device: Any) -> ActivationCache:
        """A cache with every tensor moved to `device` (tensors already there are not copied)."""
        return type(self)({k: v.to(device) for k, v in self.cache_dict.items()}, self.model, self.has_batch_dim,
                          self.derived, {k: v.to(device) for k, v in self.inputs.items()}, self._order, self.dtype,
                          self.from_run, None if self.attention_mask is None else self.attention_mask.to(device))

    def remove_batch_dim(self) -> ActivationCache:
        """A cache of a single-sequence run with the batch dimension dropped (views, no copies)."""
        if not self.has_batch_dim:
            return self
        sizes = {v.shape[0] for v in [*self.cache_dict.values(), *self.inputs.values()]}
        if sizes - {1}:
            raise ValueError(f"remove_batch_dim() needs a batch of 1, got batch sizes {sorted(sizes)}; "
                             "index one sequence instead, e.g. run on tokens[:1].")
        derived = {k: (names, unbatched(fn)) for k, (names, fn) in self.derived.items()}
        return type(self)({k: v[0] for k, v in self.cache_dict.items()}, self.model, False, derived,
                          {k: v[0] for k, v in self.inputs.items()}, self._order, self.dtype, self.from_run,
                          None if self.attention_mask is None else self.attention_mask[0])

    # ----- residual-stream decompositions: thin wrappers of `interp.analysis.decompose` ------------
    def accumulated_resid(self, layer: int | None = None, incl_mid: bool = False, apply_ln: bool = False,
                          pos_slice: PosSlice = None) -> ComponentStack:
        """The residual stream before each block (see `interp.analysis.decompose.accumulated_resid`)."""
        from interp.analysis import decompose
        return decompose.accumulated_resid(self, layer, incl_mid, apply_ln, pos_slice)

    def logit_lens(self, layer: int | None = None, incl_mid: bool = False, pos_slice: PosSlice = None) -> Tensor:
        """Logits read off each partial residual stream (see `interp.analysis.decompose.logit_lens`)."""
        from interp.analysis import decompose
        return decompose.logit_lens(self, layer, incl_mid, pos_slice)

    def decompose_resid(self, layer: int | None = None, mode: str = "all", incl_embeds: bool = True,
                        pos_slice: PosSlice = None) -> ComponentStack:
        """Embeddings and block outputs (see `interp.analysis.decompose.decompose_resid`)."""
        from interp.analysis import decompose
        return decompose.decompose_resid(self, layer, mode, incl_embeds, pos_slice)

    def stack_head_results(self, layer: int | None = None, pos_slice: PosSlice = None,
                           incl_bias: bool = True) -> ComponentStack:
        """Per-head outputs from hook_z (see `interp.analysis.decompose.stack_head_results`)."""
        from interp.analysis import decompose
        return decompose.stack_head_results(self, layer, pos_slice, incl_bias)

    def stack_neuron_results(self, layer: int, neurons: Any = None, pos_slice: PosSlice = None,
                             incl_bias: bool = True) -> ComponentStack:
        """Per-neuron outputs (see `interp.analysis.decompose.stack_neuron_results`)."""
        from interp.analysis import decompose
        return decompose.stack_neuron_results(self, layer, neurons, pos_slice, incl_bias)

    def get_full_resid_decomposition(self, layer: int | None = None, expand_neurons: bool = True,
                                     pos_slice: PosSlice = None) -> ComponentStack:
        """Embeddings, heads, neurons, biases (see `interp.analysis.decompose.get_full_resid_decomposition`)."""
        from interp.analysis import decompose
        return decompose.get_full_resid_decomposition(self, layer, expand_neurons, pos_slice)

    def apply_ln_to_stack(self, stack: ComponentStack, layer: int | None = None, mlp_input: bool = False,
                          pos_slice: PosSlice = None) -> ComponentStack:
        """Frozen-LN normalisation of a stack (see `interp.analysis.decompose.apply_ln_to_stack`)."""
        from interp.analysis import decompose
        return decompose.apply_ln_to_stack(self, stack, layer, mlp_input, pos_slice)

    def logit_attrs(self, stack: ComponentStack, tokens: Tokens | None = None, directions: Tensor | None = None,
                    incorrect_tokens: Tokens | None = None, pos_slice: PosSlice = None) -> Tensor:
        """Direct logit attribution (see `interp.analysis.decompose.logit_attrs`)."""
        from interp.analysis import decompose
        return decompose.logit_attrs(self, stack, tokens, directions, incorrect_tokens, pos_slice)

    def __repr__(self) -> str:
        return f"ActivationCache({len(self)} activations, e.g. {self._order[:3]})"


class GradientCache(ActivationCache):
    """Gradients of one scalar, by hook name: `cache["blocks.0.hook_attn_out"]` is ∂metric/∂attn_out.

    Build it with `cache.gradients()` or from gradients you captured: `GradientCache(grads, model)`.
    `stack_head_results` / `stack_neuron_results` give the gradient of each head's / neuron's output
    (see `interp.analysis.gradients`), not gradients multiplied by weights; the methods that apply
    weights or LayerNorm to activations (logit_lens, apply_ln_to_stack, logit_attrs, ...) refuse.
    """

    holds_gradients = True

    def stack_head_results(self, layer: int | None = None, pos_slice: PosSlice = None,
                           incl_bias: bool = True) -> ComponentStack:
        """∂metric/∂(each head's output) (see `interp.analysis.gradients.stack_head_gradients`)."""
        from interp.analysis import gradients
        return gradients.stack_head_gradients(self, layer, pos_slice, incl_bias)

    def stack_neuron_results(self, layer: int, neurons: Any = None, pos_slice: PosSlice = None,
                             incl_bias: bool = True) -> ComponentStack:
        """∂metric/∂(each neuron's output) (see `interp.analysis.gradients.stack_neuron_gradients`)."""
        from interp.analysis import gradients
        return gradients.stack_neuron_gradients(self, layer, neurons, pos_slice, incl_bias)

    def __repr__(self) -> str:
        return f"GradientCache({len(self)} gradients, e.g. {self._order[:3]})"


def _like(key_mask: Tensor | None, q: Tensor) -> Tensor | None:
    """The run's key mask on q's device (the cache may have been moved)."""
    return None if key_mask is None else key_mask.to(q.device)


def unbatched(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    return lambda *inputs: fn(*(x[None] for x in inputs))[0]


_ATTENTION = re.compile(r"blocks\.(\d+)\.attn\.hook_(attn_scores|pattern)$")
_LAYER_NORM = re.compile(r"(?:blocks\.(\d+)\.(ln1|ln2)|ln_final)\.hook_(scale|normalized)$")


def derivation(model: Model, name: str, selected: Iterable[str], key_mask: Tensor | None = None) -> Derivation | None:
    """(source hook names, function of their activations) that computes `name` after the run, or None
    when it must be captured (a hook on it or on what it depends on could change it). `key_mask`: the run's
    padding (True = real token), which the scores mask as the forward did."""
    match = _ATTENTION.match(name)
    if match:
        layer, which = int(match.group(1)), match.group(2)
        attn = model.blocks[layer].attn
        if attn.hook_attn_scores.has_hooks or (which == "pattern" and attn.hook_pattern.has_hooks):
            return None
        rotated = hasattr(attn, "rotary")  # rotary: scores read the rotated q/k
        sources = [f"blocks.{layer}.attn.hook_{'rot_' if rotated else ''}{x}" for x in "qk"]
        if any(source not in model.hook_dict for source in sources):
            return None
        if which == "attn_scores":
            return sources, lambda q, k: attn.scores(q, k, _like(key_mask, q))
        return sources, lambda q, k: softmax(attn.scores(q, k, _like(key_mask, q)))
    match = _LAYER_NORM.match(name)
    if not match:
        return None
    layer_text, which_ln, part = match.groups()
    if layer_text is None:
        module, source = model.ln_final, f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    else:
        layer, block = int(layer_text), model.blocks[int(layer_text)]
        module = block.ln1 if which_ln == "ln1" else block.ln2
        parallel = not hasattr(block, "hook_resid_mid")  # parallel blocks: ln2 reads resid_pre
        source = f"blocks.{layer}.hook_resid_pre" if which_ln == "ln1" or parallel else f"blocks.{layer}.hook_resid_mid"
        split = [f"hook_{x}_input" for x in "qkv"]  # per-head copies: ln1 then runs once per head
        if which_ln == "ln1" and (any(getattr(block, n).has_hooks for n in split)
                                  or {f"blocks.{layer}.{n}" for n in split} & set(selected)):
            return None
        if which_ln == "ln2" and (block.hook_mlp_in.has_hooks or f"blocks.{layer}.hook_mlp_in" in selected):
            return None  # ln2 reads hook_mlp_in's copy, which a hook may edit
    if module.hook_scale.has_hooks or module.hook_normalized.has_hooks or source not in model.hook_dict:
        return None  # (a source missing from hook_dict was replaced by a module, e.g. a spliced SAE: capture instead)
    index = 0 if part == "scale" else 1
    return [source], lambda x: module.scale_and_normalized(x)[index]
