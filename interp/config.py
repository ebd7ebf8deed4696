"""`Config`: the shape and architecture of a model, as a frozen dataclass.

The variant fields (`normalization`, `positions`, `gated_mlp`, `parallel_blocks`, the rotary and window
settings) are read by one function only, `interp.components.factory`, which builds the modules once;
no `forward` looks at them. `interp.adapters` translates `transformers` configs to and from this one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

SUPPORTED_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh", "gelu", "relu", "silu")  # = interp.components.ACTIVATIONS
NORMALIZATIONS = ("LN", "RMS")
POSITIONS = ("learned", "rotary")
ROPE_TYPES = ("linear", "llama3")


@dataclass(frozen=True)
class RopeScaling:
    """How rotary frequencies are rescaled for long contexts (the `rope_scaling`/`rope_parameters` of
    `transformers`). "linear": every inverse frequency / factor (Chen et al. 2023, position interpolation).
    "llama3": wavelengths above original_max_position_embeddings / low_freq_factor are divided by factor,
    those below ... / high_freq_factor kept, the band between interpolated smoothly (Llama 3.1)."""

    rope_type: str
    factor: float
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    def __post_init__(self) -> None:
        if self.rope_type not in ROPE_TYPES:
            raise ValueError(f"rope_type={self.rope_type!r} is not supported; interp implements {ROPE_TYPES} "
                             "(and unscaled rotary: rope_scaling=None).")
        if not self.factor > 0:
            raise ValueError(f"rope scaling factor must be > 0, got {self.factor}.")
        if self.rope_type == "llama3" and not self.high_freq_factor > self.low_freq_factor:
            raise ValueError(f"llama3 rope scaling needs high_freq_factor > low_freq_factor, got "
                             f"{self.high_freq_factor} <= {self.low_freq_factor}.")


@dataclass(frozen=True)
class Config:
    """Shape and numerics of a decoder-only transformer (GPT-2, GPT-NeoX, Llama, Mistral, Qwen2, ...).

    Vary it with `dataclasses.replace(config, n_layers=2)`; it is never mutated. `d_head` defaults to
    d_model // n_heads and `n_kv_heads` to n_heads (multi-head attention); fewer kv heads is
    grouped-query attention, each kv head shared by n_heads // n_kv_heads consecutive query heads.
    """

    n_layers: int
    d_model: int
    n_heads: int
    d_mlp: int
    d_vocab: int
    n_ctx: int
    d_head: int = None  # type: ignore[assignment]  # resolved in __post_init__
    n_kv_heads: int = None  # type: ignore[assignment]  # resolved in __post_init__
    act_fn: str = "gelu_new"
    eps: float = 1e-5
    normalization: str = "LN"  # "LN" (LayerNorm: centre, scale, gain, bias) or "RMS" (scale and gain only)
    positions: str = "learned"  # "learned" (W_pos added to the embedding) or "rotary" (q and k rotated)
    rotary_dim: int | None = None  # rotated dims per head (rotary only; default d_head; NeoX uses a fraction)
    rotary_base: float = 10000.0
    rotary_interleaved: bool = False  # False: rotate the two halves (GPT-NeoX, Llama); True: pairs (GPT-J)
    rope_scaling: RopeScaling | None = None
    gated_mlp: bool = False  # SwiGLU-style: act(x W_gate) * (x W_in), then W_out
    parallel_blocks: bool = False  # GPT-NeoX/GPT-J: attention and MLP both read resid_pre
    sliding_window: int | None = None  # a query sees only the last `sliding_window` keys (itself included)
    sliding_window_layers: tuple[int, ...] | None = None  # which layers slide (None: all, when a window is set)
    attn_qkv_bias: bool = True  # whether the checkpoint has q/k/v biases (interp always holds them, zero if not)
    attn_out_bias: bool = True
    mlp_bias: bool = True
    tie_word_embeddings: bool = True
    bos_token_id: int | None = None
    eos_token_id: int | None = None  # where generate(stop_at_eos=True) stops; GPT-2's equals its BOS id
    extra_eos_token_ids: tuple[int, ...] = ()  # further ids that end a generation (Llama 3 lists three)
    pad_token_id: int | None = None  # what padding is filled with, if the checkpoint names one (the mask marks it)
    model_type: str = "gpt2"  # the `transformers` family this config came from (see interp.adapters)
    model_name: str = "custom"

    def __post_init__(self) -> None:
        if self.d_head is None:
            if self.n_heads and self.d_model % self.n_heads != 0:
                raise ValueError(
                    f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}: give d_head explicitly "
                    f"or choose n_heads from {[h for h in range(1, self.d_model + 1) if self.d_model % h == 0][:12]}.")
            object.__setattr__(self, "d_head", self.d_model // self.n_heads if self.n_heads else 0)
        if self.n_kv_heads is None:
            object.__setattr__(self, "n_kv_heads", self.n_heads)
        for name in ("n_layers", "d_model", "n_heads", "d_mlp", "d_vocab", "n_ctx", "d_head", "n_kv_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"Config.{name} must be a positive int, got {value!r}.")
        if self.n_heads % self.n_kv_heads != 0:
            raise ValueError(f"n_heads={self.n_heads} must be a multiple of n_kv_heads={self.n_kv_heads} "
                             "(each kv head serves the same number of query heads).")
        for name, choices in {"normalization": NORMALIZATIONS, "positions": POSITIONS}.items():
            if getattr(self, name) not in choices:
                raise ValueError(f"Config.{name}={getattr(self, name)!r}; use one of {choices}.")
        if self.act_fn not in SUPPORTED_ACTIVATIONS:
            raise ValueError(f"act_fn={self.act_fn!r} is not supported; use one of {SUPPORTED_ACTIVATIONS}.")
        if not self.eps > 0:
            raise ValueError(f"eps must be > 0, got {self.eps}.")
        if self.positions == "rotary":
            rotary_dim = self.d_head if self.rotary_dim is None else self.rotary_dim
            if not (isinstance(rotary_dim, int) and 0 < rotary_dim <= self.d_head and rotary_dim % 2 == 0):
                raise ValueError(f"rotary_dim={rotary_dim} must be an even int in (0, d_head={self.d_head}].")
            object.__setattr__(self, "rotary_dim", rotary_dim)
            if not self.rotary_base > 0:
                raise ValueError(f"rotary_base must be > 0, got {self.rotary_base}.")
        elif self.rotary_dim is not None or self.rope_scaling is not None:
            raise ValueError("rotary_dim and rope_scaling apply only to positions='rotary'.")
        if isinstance(self.rope_scaling, dict):
            object.__setattr__(self, "rope_scaling", RopeScaling(**self.rope_scaling))
        if self.sliding_window is not None and not (isinstance(self.sliding_window, int) and self.sliding_window > 0):
            raise ValueError(f"sliding_window must be a positive int or None, got {self.sliding_window!r}.")
        if self.sliding_window_layers is not None:
            layers = tuple(self.sliding_window_layers)
            if self.sliding_window is None or not all(0 <= layer < self.n_layers for layer in layers):
                raise ValueError(f"sliding_window_layers={layers} needs a sliding_window and layers in "
                                 f"[0, {self.n_layers}).")
            object.__setattr__(self, "sliding_window_layers", layers)
        object.__setattr__(self, "extra_eos_token_ids", tuple(self.extra_eos_token_ids))
        if self.extra_eos_token_ids and self.eos_token_id is None:
            raise ValueError("extra_eos_token_ids needs an eos_token_id (the first of them).")
        for name, value in [("bos_token_id", self.bos_token_id), ("eos_token_id", self.eos_token_id),
                            ("pad_token_id", self.pad_token_id)] + [
                ("extra_eos_token_ids", value) for value in self.extra_eos_token_ids]:
            if value is not None and not 0 <= value < self.d_vocab:
                raise ValueError(f"{name}={value} is outside the vocabulary [0, {self.d_vocab}); "
                                 "set it to a valid id or None.")

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """Every id that ends a generation: eos_token_id, then extra_eos_token_ids."""
        return (() if self.eos_token_id is None else (self.eos_token_id,)) + self.extra_eos_token_ids

    def window_of(self, layer: int) -> int | None:
        """The sliding window of `layer`'s attention, or None for full causal attention."""
        if self.sliding_window is None:
            return None
        slides = self.sliding_window_layers is None or layer in self.sliding_window_layers
        return self.sliding_window if slides else None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        """The inverse of `to_dict` (e.g. a report's provenance); unknown keys raise TypeError."""
        return cls(**data)
