"""`Config`: the hyperparameters of a GPT-2-architecture model, as a frozen dataclass."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

SUPPORTED_ACTIVATIONS = ("gelu_new", "gelu", "relu")


@dataclass(frozen=True)
class Config:
    """Shape and numerics of a GPT-2-architecture model.

    Vary it with `dataclasses.replace(config, n_layers=2)`; it is never mutated.
    """

    n_layers: int
    d_model: int
    n_heads: int
    d_mlp: int
    d_vocab: int
    n_ctx: int
    act_fn: str = "gelu_new"
    eps: float = 1e-5
    tie_word_embeddings: bool = True
    bos_token_id: int | None = None
    eos_token_id: int | None = None  # where generate(stop_at_eos=True) stops; GPT-2's equals its BOS id
    model_name: str = "custom"

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    def __post_init__(self) -> None:
        for field in ("n_layers", "d_model", "n_heads", "d_mlp", "d_vocab", "n_ctx"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"Config.{field} must be a positive int, got {value!r}.")
        if self.d_model % self.n_heads != 0:
            raise ValueError(
                f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}; "
                f"choose n_heads from {[h for h in range(1, self.d_model + 1) if self.d_model % h == 0][:12]}."
            )
        if self.act_fn not in SUPPORTED_ACTIVATIONS:
            raise ValueError(f"act_fn={self.act_fn!r} is not supported; use one of {SUPPORTED_ACTIVATIONS}.")
        if not self.eps > 0:
            raise ValueError(f"eps must be > 0, got {self.eps}.")
        for field in ("bos_token_id", "eos_token_id"):
            value = getattr(self, field)
            if value is not None and not 0 <= value < self.d_vocab:
                raise ValueError(f"{field}={value} is outside the vocabulary [0, {self.d_vocab}); "
                                 "set it to a valid id or None.")

    @classmethod
    def from_hf(cls, hf_config: Any, model_name: str = "custom") -> Config:
        """Build a Config from a `transformers.GPT2Config` (or its dict); refuses other architectures."""
        get = hf_config.get if isinstance(hf_config, dict) else lambda key, default=None: getattr(hf_config, key, default)
        model_type = get("model_type")
        if model_type != "gpt2":
            raise ValueError(
                f"Unsupported architecture model_type={model_type!r}: interp implements GPT-2 "
                "(gpt2, gpt2-medium/large/xl, distilgpt2 and GPT2Config models). Convert the model or open an issue."
            )
        unsupported = {
            "scale_attn_by_inverse_layer_idx": False,
            "reorder_and_upcast_attn": False,
            "add_cross_attention": False,
            "scale_attn_weights": True,
        }
        for key, expected in unsupported.items():
            if get(key, expected) != expected:
                raise ValueError(f"Unsupported GPT-2 option {key}={get(key)!r}; interp supports only {key}={expected}.")
        n_embd = get("n_embd")
        vocab_size = get("vocab_size")

        def token_id(key: str) -> int | None:  # ids outside the vocabulary (or lists) mean "none" here
            value = get(key)
            return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < vocab_size else None
        return cls(
            n_layers=get("n_layer"),
            d_model=n_embd,
            n_heads=get("n_head"),
            d_mlp=get("n_inner") or 4 * n_embd,
            d_vocab=vocab_size,
            n_ctx=get("n_positions"),
            act_fn=get("activation_function", "gelu_new"),
            eps=get("layer_norm_epsilon", 1e-5),
            tie_word_embeddings=get("tie_word_embeddings", True),
            bos_token_id=token_id("bos_token_id"),
            eos_token_id=token_id("eos_token_id"),
            model_name=model_name,
        )

    def to_hf(self) -> Any:
        """The equivalent `transformers.GPT2Config` (dropout off)."""
        from transformers import GPT2Config

        return GPT2Config(
            n_layer=self.n_layers, n_embd=self.d_model, n_head=self.n_heads, n_inner=self.d_mlp,
            vocab_size=self.d_vocab, n_positions=self.n_ctx, activation_function=self.act_fn,
            layer_norm_epsilon=self.eps, tie_word_embeddings=self.tie_word_embeddings,
            bos_token_id=self.bos_token_id, eos_token_id=self.eos_token_id,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
