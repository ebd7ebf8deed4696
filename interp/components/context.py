"""What every block of one forward shares besides the residual stream: each token's position, which keys are
real (not padding), and, during cached generation, the keys and values of the tokens seen before.

Padding. `key_mask[b, j]` is True where key j of row b is a real token. A real query attends to real keys
only; a padded query attends only to itself (so its row is defined, never NaN; its activations are
meaningless and nothing real reads them). Position ids follow the mask: the i-th real token of a row has
position i, wherever the padding is, so a prompt has the same positions alone and in a left-padded batch.

`Context` is one plain forward; `CachedContext` is a forward of new tokens after those a `KVCache` holds.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from interp.components.functional import attention_allowed


def positions_from_mask(mask: Bool[Tensor, "batch pos"] | None, n_pos: int, batch: int, device: Any,
                        start: Int[Tensor, "batch"] | None = None) -> Int[Tensor, "batch pos"]:
    """Position id of each token: the number of real tokens before it in its row (plus `start`, the real
    tokens already seen). Padded tokens get the position of the last real token before them (0 if none)."""
    if mask is None:
        positions = torch.arange(n_pos, device=device).expand(batch, -1)
        return positions if start is None else positions + start[:, None]
    counted = mask.long().cumsum(-1) if start is None else mask.long().cumsum(-1) + start[:, None]
    return (counted - 1).clamp(min=0)


class Context:
    """Positions and padding of one forward over every token of a sequence."""

    def __init__(self, positions: Int[Tensor, "batch pos"], key_mask: Bool[Tensor, "batch key_pos"] | None) -> None:
        self.position_ids = positions
        self.key_mask = key_mask  # None: no padding anywhere in the batch
        self._allowed: dict[tuple[int, int, int | None], Tensor] = {}

    @classmethod
    def unpadded(cls, residual: Float[Tensor, "batch pos d_model"]) -> Context:
        """Positions 0.. of every row and no padding, for a residual stream `[batch, pos, d_model]`."""
        batch, n_pos = residual.shape[:2]
        return cls(positions_from_mask(None, n_pos, batch, residual.device), None)

    def keys_values(self, layer: int, k: Float[Tensor, "batch pos n_kv_heads d_head"],
                    v: Float[Tensor, "batch pos n_kv_heads d_head"]) -> tuple[Tensor, Tensor]:
        """The keys and values the queries of this forward attend to (here: exactly this forward's)."""
        return k, v

    def allowed(self, n_query: int, n_key: int, window: int | None, device: Any
                ) -> Bool[Tensor, "batch 1 query_pos key_pos"]:
        """Where each query may attend (see `attention_allowed`), made once per forward and window."""
        key = (n_query, n_key, window)
        if key not in self._allowed:
            self._allowed[key] = attention_allowed(n_query, n_key, window, self.key_mask, device)
        return self._allowed[key]

    def sdpa_mask(self, n_query: int, n_key: int, window: int | None, device: Any) -> dict[str, Any]:
        """Keyword arguments of `scaled_dot_product_attention` that apply `allowed`: `is_causal` (no mask
        tensor) when that is the same, nothing for one last query that sees every key, else `attn_mask`."""
        window_binds = window is not None and n_key > window  # Mistral's 4096 rarely does
        if self.key_mask is None and not window_binds:
            if n_query == n_key:
                return {"is_causal": True}
            if n_query == 1:
                return {}
        return {"attn_mask": self.allowed(n_query, n_key, window, device)}

    def commit(self) -> None:
        """Called once the forward has run every block (nothing to keep here)."""


class KVCache:
    """Keys (rotated, on rotary models) and values of every layer for the tokens seen so far, and which of
    them are real. Pass it as `model(tokens, past_kv_cache=cache)`: the forward runs only the new tokens,
    attends to the cached ones too, and appends the new keys and values (only once every block has run, so
    a forward that raises leaves the cache as it was)."""

    def __init__(self) -> None:
        self.keys: dict[int, Tensor] = {}
        self.values: dict[int, Tensor] = {}
        self.key_mask: Bool[Tensor, "batch key_pos"] | None = None  # None until the first forward
        self.padded = False  # whether any cached key is padding

    def __len__(self) -> int:
        return 0 if self.key_mask is None else self.key_mask.shape[1]

    @property
    def batch_size(self) -> int | None:
        return None if self.key_mask is None else self.key_mask.shape[0]

    def next_positions(self) -> Int[Tensor, "batch"] | None:
        """Position id of each row's next real token (its number of real tokens so far)."""
        return None if self.key_mask is None else self.key_mask.long().sum(-1)

    def __repr__(self) -> str:
        return f"KVCache({len(self)} positions, batch {self.batch_size}, {len(self.keys)} layers)"


class CachedContext(Context):
    """A forward of new tokens after the `cache`'s: queries are the new tokens, keys the cached ones then the new."""

    def __init__(self, positions: Int[Tensor, "batch pos"], new_mask: Bool[Tensor, "batch pos"], cache: KVCache) -> None:
        full = new_mask if cache.key_mask is None else torch.cat([cache.key_mask, new_mask], dim=1)
        padded = cache.padded or not bool(new_mask.all())
        super().__init__(positions, full if padded else None)
        self.cache, self.full_mask, self.padded = cache, full, padded
        self._new: dict[int, tuple[Tensor, Tensor]] = {}

    def keys_values(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        if len(self.cache) and layer not in self.cache.keys:
            raise ValueError(f"This KVCache holds {len(self.cache)} positions but no keys of block {layer}: it was "
                             "filled by forwards that skipped that block (start_at_layer); use a fresh cache.")
        if layer in self.cache.keys:
            k = torch.cat([self.cache.keys[layer], k], dim=1)
            v = torch.cat([self.cache.values[layer], v], dim=1)
        self._new[layer] = (k, v)
        return k, v

    def commit(self) -> None:
        for layer, (k, v) in self._new.items():
            self.cache.keys[layer], self.cache.values[layer] = k, v
        self.cache.key_mask, self.cache.padded = self.full_mask, self.padded
