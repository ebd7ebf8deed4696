"""Rotary position embeddings (RoPE, Su et al. 2021): q and k are rotated by a position-dependent angle
per pair of dimensions, so q·k depends on the relative position only.

Pair i of the first `rotary_dim` dims of a head turns by angle `position * inv_freq[i]`,
`inv_freq[i] = base^(-2i / rotary_dim)` (optionally rescaled, see `interp.config.RopeScaling`);
the remaining dims (GPT-NeoX's partial rotary) pass through unchanged. The pairs are (i, i + rotary_dim/2)
("half-split": GPT-NeoX, Llama, Mistral, Qwen2) or (2i, 2i + 1) ("interleaved": GPT-J). The angles are
computed in float32 and cast to q's dtype, as `transformers` does.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp.config import RopeScaling


def inverse_frequencies(rotary_dim: int, base: float, scaling: RopeScaling | None) -> Float[Tensor, "half"]:
    """`base^(-2i / rotary_dim)` for i < rotary_dim / 2 (float32, on the CPU), rescaled by `scaling`."""
    inv_freq = 1.0 / (base ** (torch.arange(0, rotary_dim, 2, dtype=torch.int64).float() / rotary_dim))
    if scaling is None:
        return inv_freq
    if scaling.rope_type == "linear":  # position interpolation: positions / factor
        return inv_freq / scaling.factor
    # llama3: long wavelengths slowed by `factor`, short ones kept, a smooth blend between.
    low_wavelength = scaling.original_max_position_embeddings / scaling.low_freq_factor
    high_wavelength = scaling.original_max_position_embeddings / scaling.high_freq_factor
    wavelength = 2 * math.pi / inv_freq
    scaled = torch.where(wavelength > low_wavelength, inv_freq / scaling.factor, inv_freq)
    smooth = (scaling.original_max_position_embeddings / wavelength - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor)
    blended = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    in_band = ~(wavelength < high_wavelength) & ~(wavelength > low_wavelength)
    return torch.where(in_band, blended, scaled)


class Rotary:
    """Applies RoPE to `[batch, pos, heads, d_head]` tensors. Not an nn.Module: it holds no weights, only the
    inverse frequencies (made on first use) and the last cos/sin table."""

    def __init__(self, d_head: int, rotary_dim: int, base: float, scaling: RopeScaling | None) -> None:
        self.d_head, self.rotary_dim = d_head, rotary_dim
        self.base, self.scaling = base, scaling
        self._inv_freq: Tensor | None = None  # made on first use (models are built on the meta device)
        self._table: tuple[Tensor, Tensor, Tensor] | None = None

    def angles(self, positions: Int[Tensor, "batch pos"], like: Tensor
               ) -> tuple[Float[Tensor, "batch pos 1 rotary_dim"], Float[Tensor, "batch pos 1 rotary_dim"]]:
        """(cos, sin) per position and rotated dim, float32 angles cast to `like`'s dtype."""
        # The model passes one positions tensor to every layer of a forward: the table is computed once per forward.
        if self._table is None or self._table[0] is not positions or self._table[1].dtype != like.dtype:
            if self._inv_freq is None:
                self._inv_freq = inverse_frequencies(self.rotary_dim, self.base, self.scaling)
            freqs = positions[..., None].float() * self._inv_freq.to(positions.device)  # [batch, pos, rotary_dim/2]
            angle = self._expand(freqs)[:, :, None]  # [batch, pos, 1, rotary_dim]
            self._table = (positions, angle.cos().to(like.dtype), angle.sin().to(like.dtype))
        return self._table[1], self._table[2]

    def _expand(self, freqs: Tensor) -> Tensor:
        return torch.cat((freqs, freqs), dim=-1)  # half-split: dim i and i + rotary_dim/2 share an angle

    def _turn(self, x: Tensor) -> Tensor:
        """The partner of each dim, with the sign of the rotation: (x1, x2) -> (-x2, x1) by halves."""
        half = x.shape[-1] // 2
        return torch.cat((-x[..., half:], x[..., :half]), dim=-1)

    def __call__(self, x: Float[Tensor, "batch pos heads d_head"], positions: Int[Tensor, "batch pos"]
                 ) -> Float[Tensor, "batch pos heads d_head"]:
        cos, sin = self.angles(positions, x)
        if self.rotary_dim == self.d_head:
            return x * cos + self._turn(x) * sin
        rotated, passed = x[..., : self.rotary_dim], x[..., self.rotary_dim:]
        return torch.cat((rotated * cos + self._turn(rotated) * sin, passed), dim=-1)


class InterleavedRotary(Rotary):
    """RoPE on adjacent pairs (2i, 2i + 1), as GPT-J and the original RoFormer."""

    def _expand(self, freqs: Tensor) -> Tensor:
        return freqs.repeat_interleave(2, dim=-1)

    def _turn(self, x: Tensor) -> Tensor:
        pairs = x.unflatten(-1, (-1, 2))
        return torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
