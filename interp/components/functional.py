"""Pure tensor functions the components share: the fused affine map, activations, widening, softmax and masks."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float
from torch import Tensor


def affine(x: Float[Tensor, "... d_in"], weight: Float[Tensor, "d_in d_out"],
           bias: Float[Tensor, "d_out"]) -> Float[Tensor, "... d_out"]:
    """x @ weight + bias as one fused BLAS call (addmm), like `transformers`' Conv1D and nn.Linear."""
    out = torch.addmm(bias, x.reshape(-1, x.shape[-1]), weight)
    return out.view(*x.shape[:-1], weight.shape[-1])


ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),  # GPT-2's tanh approximation; equal to HF's to fp32 rounding
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu": F.gelu,
    "relu": F.relu,
    "silu": F.silu,  # Llama, Mistral, Qwen2 (SwiGLU's gate)
}


def activation_function(name: str) -> Callable[[Tensor], Tensor]:
    """The MLP activation called `name` (chosen once, at construction); ValueError for any other name."""
    if name not in ACTIVATIONS:
        raise ValueError(f"Unknown activation {name!r}; interp implements {sorted(ACTIVATIONS)}.")
    return ACTIVATIONS[name]


def activation(name: str, x: Tensor) -> Tensor:
    """`activation_function(name)(x)`: raises for an unknown name, never falls back to another function."""
    return activation_function(name)(x)


def wide(x: Tensor) -> Tensor:
    """x in at least float32: norm statistics of half-precision inputs overflow (fp16: x² > 65504 for |x| > 256)
    or round (bf16) otherwise; `transformers` computes them in float32 too."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def softmax(scores: Float[Tensor, "... key_pos"]) -> Float[Tensor, "... key_pos"]:
    """Softmax over keys, computed in at least float32 (half-precision scores are upcast as `transformers` does)
    and returned in the scores' dtype."""
    return scores.softmax(dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32)).to(scores.dtype)


def causal_mask(n_query: int, n_key: int, window: int | None, device: torch.device | str
                ) -> Bool[Tensor, "query_pos key_pos"]:
    """True where a query may attend: keys at or before it (queries are the last n_query positions of the
    n_key) and, with a sliding `window`, at most window - 1 positions back (the query itself included)."""
    query = torch.arange(n_key - n_query, n_key, device=device)[:, None]
    key = torch.arange(n_key, device=device)[None, :]
    allowed = key <= query
    return allowed if window is None else allowed & (key > query - window)


def attention_allowed(n_query: int, n_key: int, window: int | None, key_mask: Bool[Tensor, "batch key_pos"] | None,
                      device: torch.device | str) -> Bool[Tensor, "batch 1 query_pos key_pos"]:
    """`causal_mask` restricted to real keys (`key_mask` True; None: every key is real). A padded query
    would then see no key at all, so every query may also attend to itself: a padded position attends only
    to itself (a defined value, never NaN), and a real query never sees padding."""
    allowed = causal_mask(n_query, n_key, window, device)[None, None]
    if key_mask is None:
        return allowed
    own = torch.arange(n_key, device=device)[None, :] == torch.arange(n_key - n_query, n_key, device=device)[:, None]
    real_query = key_mask[:, n_key - n_query:]  # the queries are the last n_query keys
    return allowed & ((key_mask[:, None, None, :] & real_query[:, None, :, None]) | own)
