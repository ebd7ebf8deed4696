"""The factory: the only code that reads the variant fields of `Config` and turns them into modules.

A family is data (`interp.adapters` fills a Config); this module picks, once, which norm, position
scheme, attention, MLP and block each layer is. No forward ever looks at the config's variant fields.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from torch import nn

from interp.components.attention import Attention, RotaryAttention
from interp.components.blocks import Block, ParallelBlock
from interp.components.mlp import MLP, GatedMLP
from interp.components.norms import LayerNorm, Norm, RMSNorm
from interp.components.positions import InterleavedRotary, Rotary
from interp.config import Config


def norm(cfg: Config) -> Callable[[], Norm]:
    """A constructor of the model's norm (every norm of a model is the same kind)."""
    kind = {"LN": LayerNorm, "RMS": RMSNorm}[cfg.normalization]
    return partial(kind, cfg.d_model, cfg.eps)


def learned_positions(cfg: Config) -> bool:
    """Whether the model adds learned position embeddings `W_pos` (and has `hook_pos_embed`)."""
    return cfg.positions == "learned"


def rotary(cfg: Config) -> Rotary | None:
    """The model's rotary embedding (shared by every layer, so the cos/sin table is made once per forward)."""
    if cfg.positions != "rotary":
        return None
    kind = InterleavedRotary if cfg.rotary_interleaved else Rotary
    return kind(cfg.d_head, cfg.rotary_dim, cfg.rotary_base, cfg.rope_scaling)


def attention(cfg: Config, layer: int, shared_rotary: Rotary | None) -> Callable[[], Attention]:
    shape = (cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.d_head)
    if shared_rotary is None:
        return partial(Attention, *shape, window=cfg.window_of(layer), layer=layer)
    return partial(RotaryAttention, *shape, rotary=shared_rotary, window=cfg.window_of(layer), layer=layer)


def mlp(cfg: Config) -> Callable[[], nn.Module]:
    return partial(GatedMLP if cfg.gated_mlp else MLP, cfg.d_model, cfg.d_mlp, cfg.act_fn)


def blocks(cfg: Config) -> list[Block]:
    """The model's blocks, in order."""
    kind = ParallelBlock if cfg.parallel_blocks else Block
    shared_rotary = rotary(cfg)
    return [kind(norm(cfg), attention(cfg, layer, shared_rotary), mlp(cfg)) for layer in range(cfg.n_layers)]


def describe(cfg: Config) -> dict[str, str]:
    """What the factory builds, in words (for `interp info` and reprs)."""
    return {
        "norm": {"LN": "LayerNorm", "RMS": "RMSNorm"}[cfg.normalization],
        "positions": "learned absolute" if cfg.positions == "learned" else
        f"rotary ({cfg.rotary_dim} of {cfg.d_head} dims, base {cfg.rotary_base:g}, "
        f"{'interleaved' if cfg.rotary_interleaved else 'half-split'}"
        f"{', ' + cfg.rope_scaling.rope_type + ' scaling x' + format(cfg.rope_scaling.factor, 'g') if cfg.rope_scaling else ''})",
        "attention": (f"grouped-query ({cfg.n_heads} query / {cfg.n_kv_heads} kv heads)" if cfg.n_kv_heads < cfg.n_heads
                      else f"multi-head ({cfg.n_heads} heads)") + f", d_head {cfg.d_head}"
                     + (f", sliding window {cfg.sliding_window}" if cfg.sliding_window else ""),
        "mlp": f"{'gated ' if cfg.gated_mlp else ''}{cfg.act_fn}, d_mlp {cfg.d_mlp}",
        "block": "parallel attention + MLP" if cfg.parallel_blocks else "sequential pre-norm",
    }
