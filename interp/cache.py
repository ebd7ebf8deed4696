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

    def __repr__(self) -> str:
        return f"ActivationCache({len(self)} activations, e.g. {list(self.cache_dict)[:3]})"
