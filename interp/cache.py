"""`ActivationCache`: the activations of one run, by hook name.

It holds references to the tensors the forward produced (no copies), so caching costs only
keeping them alive. Index with a full name or a `(short_name, layer)` pair: `cache["pattern", 3]`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from torch import Tensor

from interp.hooks import unknown_name_error
from interp.names import act_name

if TYPE_CHECKING:
    from interp.analysis.decompose import ComponentStack, PosSlice, Tokens
    from interp.model import HookedTransformer


class ActivationCache(Mapping[str, Tensor]):
    """Mapping from hook name to activation (and `name + "_grad"` to its gradient, with incl_bwd)."""

    def __init__(self, cache_dict: dict[str, Tensor], model: HookedTransformer, has_batch_dim: bool = True) -> None:
        self.cache_dict = cache_dict
        self.model = model
        self.has_batch_dim = has_batch_dim

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
        if name not in self.cache_dict:
            if name in self.model.hook_dict:
                raise KeyError(f"{name!r} is a hook name but was not cached; include it in run_with_cache(names_filter=...).")
            raise unknown_name_error(name, self.cache_dict)
        return self.cache_dict[name]

    def __contains__(self, key: object) -> bool:
        try:
            return self._full_name(key) in self.cache_dict  # type: ignore[arg-type]
        except (TypeError, KeyError, ValueError):
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self.cache_dict)

    def __len__(self) -> int:
        return len(self.cache_dict)

    def to(self, device: Any) -> ActivationCache:
        """A cache with every tensor moved to `device` (tensors already there are not copied)."""
        return ActivationCache({k: v.to(device) for k, v in self.cache_dict.items()}, self.model, self.has_batch_dim)

    def remove_batch_dim(self) -> ActivationCache:
        """A cache of a single-sequence run with the batch dimension dropped (views, no copies)."""
        if not self.has_batch_dim:
            return self
        sizes = {v.shape[0] for v in self.cache_dict.values()}
        if sizes - {1}:
            raise ValueError(f"remove_batch_dim() needs a batch of 1, got batch sizes {sorted(sizes)}; "
                             "index one sequence instead, e.g. run on tokens[:1].")
        return ActivationCache({k: v[0] for k, v in self.cache_dict.items()}, self.model, has_batch_dim=False)

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
        return f"ActivationCache({len(self)} activations, e.g. {list(self.cache_dict)[:3]})"
