"""Normalisations, each with hooks on its scale and normalized output, and one API the analyses use.

| module        | centres | gain `w` | bias `b` | used by |
|---------------|---------|----------|----------|---------|
| LayerNorm     | yes     | yes      | yes      | GPT-2, GPT-NeoX (Ba et al. 2016) |
| LayerNormPre  | yes     | None     | None     | LayerNorm after `fold_ln` |
| RMSNorm       | no      | yes      | None     | Llama, Mistral, Qwen2 (Zhang & Sennrich 2019) |
| RMSNormPre    | no      | None     | None     | RMSNorm after `fold_ln` |

Every norm computes `normalized = (x - mean if centres else x) / scale` and returns
`normalized * w + b` (the terms it has). `scale_and_normalized(x)` gives those two without hooks, so a
cache can derive `hook_scale` / `hook_normalized` after the run; `folded()` is the same norm without
its gain and bias (which `interp.processing.fold_ln` moves into the weights that read from it), and
keeps the same hook points.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from interp.components.functional import wide
from interp.hooks import HookPoint


class Norm(nn.Module):
    """Shared parts: eps, the hook points, and the optional gain `w` and bias `b` (None when absent)."""

    centres: bool = True

    def __init__(self, eps: float, hooks: tuple[HookPoint, HookPoint] | None = None) -> None:
        super().__init__()
        self.eps = eps
        self.w: nn.Parameter | None = None
        self.b: nn.Parameter | None = None
        self.hook_scale, self.hook_normalized = hooks or (HookPoint("batch pos 1"), HookPoint("batch pos d_model"))

    def scale_and_normalized(self, x: Float[Tensor, "... d_model"]
                             ) -> tuple[Float[Tensor, "... 1"], Float[Tensor, "... d_model"]]:
        """(scale, normalized) without hooks, computed in at least float32 and returned in x's dtype."""
        scale = self._wide_scale(x)
        return scale.to(x.dtype), self._normalize(wide(x), scale).to(x.dtype)

    def forward(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        if not (self.hook_scale.has_hooks or self.hook_normalized.has_hooks):
            return self._fused(x)
        full_scale = self._wide_scale(x)
        scale = full_scale.to(x.dtype)
        hooked = self.hook_scale(scale)
        # Divide by the full-precision scale unless a hook replaced it: a read-only hook must not change the output.
        full = self._normalize(wide(x), full_scale if hooked is scale else wide(hooked))
        normalized = full.to(x.dtype)
        seen = self.hook_normalized(normalized)
        return self._output(full if seen is normalized else wide(seen), seen)

    def _output(self, full: Tensor, normalized: Tensor) -> Tensor:
        """The norm's output from its normalized input, at full precision (`full`) or as the hook left it; rounds as
        the fused path does (RMSNorm: gain times the rounded value, as transformers; LayerNorm: affine in float32)."""
        return self._affine(normalized)

    def _wide_scale(self, x: Tensor) -> Tensor:
        """The scale in at least float32 (see `interp.components.functional.wide`)."""
        raise NotImplementedError

    def _normalize(self, x: Tensor, scale: Tensor) -> Tensor:  # from a possibly edited scale, in x's (wide) dtype
        raise NotImplementedError

    def _affine(self, normalized: Tensor) -> Tensor:
        return normalized

    def _fused(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def folded(self) -> Norm:
        """This norm without gain and bias, keeping eps and the same hook points (see `fold_ln`)."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"eps={self.eps}"


class LayerNormPre(Norm):
    """LayerNorm without gain or bias: centre, then divide by `hook_scale`."""

    def _wide_scale(self, x: Tensor) -> Tensor:
        centered = wide(x) - wide(x).mean(-1, keepdim=True)
        return (centered.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()

    def _normalize(self, x: Tensor, scale: Tensor) -> Tensor:
        return (x - x.mean(-1, keepdim=True)) / scale

    def _fused(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, x.shape[-1:], None, None, self.eps)

    def folded(self) -> Norm:
        return self


class LayerNorm(LayerNormPre):
    """LayerNorm (Ba et al. 2016): `(x - mean) / sqrt(var + eps) * w + b`; fused `F.layer_norm` when unhooked."""

    def __init__(self, d_model: int, eps: float, hooks: tuple[HookPoint, HookPoint] | None = None) -> None:
        super().__init__(eps, hooks)
        self.w = nn.Parameter(torch.ones(d_model))
        self.b = nn.Parameter(torch.zeros(d_model))

    def _affine(self, normalized: Tensor) -> Tensor:
        return normalized * self.w + self.b

    def _output(self, full: Tensor, normalized: Tensor) -> Tensor:
        return self._affine(full).to(normalized.dtype)  # F.layer_norm applies w and b before rounding

    def _fused(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, x.shape[-1:], self.w, self.b, self.eps)

    def folded(self) -> Norm:
        return LayerNormPre(self.eps, (self.hook_scale, self.hook_normalized))


class RMSNormPre(Norm):
    """RMSNorm without gain: divide by `hook_scale` = sqrt(mean(x²) + eps); no centring."""

    centres = False

    def _wide_scale(self, x: Tensor) -> Tensor:
        return (wide(x).pow(2).mean(-1, keepdim=True) + self.eps).sqrt()

    def _normalize(self, x: Tensor, scale: Tensor) -> Tensor:
        return x / scale

    def _fused(self, x: Tensor) -> Tensor:
        full = wide(x)  # as transformers' LlamaRMSNorm: float32 statistics, cast back before the gain
        return (full * torch.rsqrt(full.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)

    def folded(self) -> Norm:
        return self


class RMSNorm(RMSNormPre):
    """RMSNorm (Zhang & Sennrich 2019): `x / sqrt(mean(x²) + eps) * w`, statistics in float32."""

    def __init__(self, d_model: int, eps: float, hooks: tuple[HookPoint, HookPoint] | None = None) -> None:
        super().__init__(eps, hooks)
        self.w = nn.Parameter(torch.ones(d_model))

    def _affine(self, normalized: Tensor) -> Tensor:
        return self.w * normalized

    def _fused(self, x: Tensor) -> Tensor:
        return self.w * super()._fused(x)

    def folded(self) -> Norm:
        return RMSNormPre(self.eps, (self.hook_scale, self.hook_normalized))
