"""What every family adapter shares: the tensor-map entry and the checked conversion in both directions.

An adapter lists `Entry`s: one interp tensor and the `transformers` tensor(s) it is made of, with the
shapes the checkpoint must have and the two conversions. `to_interp` checks every name and shape
(naming each missing, unexpected or mis-shaped tensor); interp biases a family does not have are
zeros, which `to_hf` refuses to drop unless they are still zero.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from interp.components import factory
from interp.config import Config, RopeScaling

Getter = Callable[..., Any]  # get(key, default=None) on a transformers config or its dict


@dataclass(frozen=True)
class Entry:
    """interp tensor `ours` <-> transformers tensors `theirs` (shapes `shapes`). `to_ours` takes them in order and
    returns views where it can (a fused or re-ordered layout copies); `to_theirs` inverts it."""

    ours: str
    theirs: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    to_ours: Callable[..., Tensor]
    to_theirs: Callable[[Tensor], tuple[Tensor, ...]]


def same(ours: str, theirs: str, shape: tuple[int, ...]) -> Entry:
    """A tensor stored the same way by both."""
    return Entry(ours, (theirs,), (shape,), lambda t: t, lambda t: (t,))


def transposed(ours: str, theirs: str, shape: tuple[int, ...]) -> Entry:
    """An nn.Linear weight `[out, in]` stored as interp's `[in, out]` (a view)."""
    return Entry(ours, (theirs,), (shape,), lambda t: t.T, lambda t: (t.T,))


def getter(hf_config: Any) -> Getter:
    if isinstance(hf_config, Mapping):
        return hf_config.get
    return lambda key, default=None: getattr(hf_config, key, default)


def token_id(get: Getter, key: str, vocab_size: int) -> int | None:
    """A special-token id, or None when it is missing, a list, or outside the vocabulary."""
    value = get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < vocab_size else None


def eos(get: Getter, vocab_size: int) -> dict[str, Any]:
    """eos_token_id and extra_eos_token_ids of a config whose eos_token_id is an id or a list of ids (Llama 3)."""
    value = get("eos_token_id")
    ids = [i for i in (value if isinstance(value, (list, tuple)) else [value])
           if isinstance(i, int) and not isinstance(i, bool) and 0 <= i < vocab_size]
    return {"eos_token_id": ids[0] if ids else None, "extra_eos_token_ids": tuple(ids[1:])}


def hf_eos(cfg: Config) -> int | list[int] | None:
    """The transformers eos_token_id of a Config: one id, or a list when there are several."""
    return list(cfg.eos_token_ids) if len(cfg.eos_token_ids) > 1 else cfg.eos_token_id


def interp_shapes(cfg: Config) -> dict[str, tuple[int, ...]]:
    """The shape of every parameter an interp model of this config holds (built on the meta device)."""
    with torch.device("meta"):
        shapes = {f"blocks.{layer}.{name}": tuple(p.shape) for layer, block in enumerate(factory.blocks(cfg))
                  for name, p in block.named_parameters()}
        shapes.update({f"ln_final.{name}": tuple(p.shape) for name, p in factory.norm(cfg)().named_parameters()})
    shapes.update({"W_E": (cfg.d_vocab, cfg.d_model), "W_U": (cfg.d_model, cfg.d_vocab), "b_U": (cfg.d_vocab,)})
    if factory.learned_positions(cfg):
        shapes["W_pos"] = (cfg.n_ctx, cfg.d_model)
    return shapes


def to_interp(entries: list[Entry], hf_state: dict[str, Tensor], cfg: Config, ignored: tuple[str, ...] = ()) -> dict[str, Tensor]:
    """interp state dict from a `transformers` one (prefix already removed), checking every name and shape."""
    state = {name: tensor for name, tensor in hf_state.items() if not name.endswith(ignored)}
    expected = {name: shape for entry in entries for name, shape in zip(entry.theirs, entry.shapes)}
    problems = [f"missing {name} (expected shape {shape})" for name, shape in expected.items() if name not in state]
    problems += [f"unexpected {name} {tuple(state[name].shape)}" for name in state if name not in expected]
    problems += [f"{name}: checkpoint has shape {tuple(state[name].shape)}, config expects {shape}"
                 for name, shape in expected.items() if name in state and tuple(state[name].shape) != shape]
    if problems:
        listed = "\n  ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise ValueError(f"The weights do not match the {cfg.model_type} config (n_layers={cfg.n_layers}, "
                         f"d_model={cfg.d_model}, n_heads={cfg.n_heads}, n_kv_heads={cfg.n_kv_heads}, d_head={cfg.d_head}, "
                         f"d_mlp={cfg.d_mlp}, d_vocab={cfg.d_vocab}, n_ctx={cfg.n_ctx}):\n  {listed}\n"
                         "Pass the config.json saved with these weights.")
    converted = {entry.ours: entry.to_ours(*(state[name] for name in entry.theirs)) for entry in entries}
    reference = converted["W_E"]
    if cfg.tie_word_embeddings:
        converted["W_U"] = reference.T  # a view: tied weights stay one tensor
    for name, shape in interp_shapes(cfg).items():  # biases the family does not have: zeros
        if name not in converted:
            assert name.rpartition(".")[2].startswith("b_") or name == "b_U", name
            converted[name] = torch.zeros(shape, dtype=reference.dtype, device=reference.device)
    return converted


def to_hf(entries: list[Entry], state: Mapping[str, Tensor], cfg: Config) -> dict[str, Tensor]:
    """The `transformers` tensors (prefix not added) of an interp state dict; refuses nonzero biases the family
    lacks (processing can create them: export the raw model, or keep the bias where the format has one)."""
    covered = {entry.ours for entry in entries} | ({"W_U"} if cfg.tie_word_embeddings else set())
    for name, tensor in state.items():
        if name not in covered and bool(tensor.ne(0).any()):
            raise ValueError(f"{name} is nonzero but a {cfg.model_type} checkpoint has no such tensor (processing "
                             f"such as fold_ln or fold_value_biases can create it): export the unprocessed model.")
    if cfg.tie_word_embeddings and not torch.equal(state["W_U"], state["W_E"].T):
        raise ValueError("W_U differs from W_E.T but the config ties them; set tie_word_embeddings=False to export.")
    hf_state: dict[str, Tensor] = {}
    for entry in entries:
        hf_state.update(zip(entry.theirs, (t.contiguous() for t in entry.to_theirs(state[entry.ours]))))
    return hf_state


def rope(get: Getter, d_head: int, default_fraction: float = 1.0) -> dict[str, Any]:
    """Config fields of a rotary family from `rope_parameters` (transformers 5) or the older `rope_theta`,
    `rope_scaling`, `rotary_pct`, `rotary_emb_base`, `partial_rotary_factor` keys of a config.json."""
    parameters = dict(get("rope_parameters") or {})
    legacy_scaling = get("rope_scaling") or {}
    merged = {**legacy_scaling, **parameters}
    rope_type = merged.get("rope_type", merged.get("type", "default"))
    theta = merged.get("rope_theta", get("rope_theta", get("rotary_emb_base", 10000.0)))
    fraction = merged.get("partial_rotary_factor", get("partial_rotary_factor", get("rotary_pct", default_fraction)))
    rotary_dim = int(d_head * fraction)
    fields: dict[str, Any] = {"positions": "rotary", "rotary_dim": rotary_dim, "rotary_base": float(theta)}
    if rope_type == "default":
        return fields
    if rope_type not in ("linear", "llama3"):
        raise ValueError(f"Unsupported rope_type {rope_type!r}: interp implements unscaled, 'linear' and 'llama3' "
                         "rotary embeddings (dynamic, yarn and longrope scaling are not implemented).")
    keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    fields["rope_scaling"] = RopeScaling(rope_type, **{key: merged[key] for key in keys if key in merged})
    return fields


def rope_parameters(cfg: Config) -> dict[str, Any]:
    """The transformers-5 `rope_parameters` of a rotary Config (the inverse of `rope`)."""
    parameters: dict[str, Any] = {"rope_type": "default", "rope_theta": cfg.rotary_base}
    if cfg.rotary_dim != cfg.d_head:
        parameters["partial_rotary_factor"] = cfg.rotary_dim / cfg.d_head
    if cfg.rope_scaling is not None:
        parameters.update(dataclasses.asdict(cfg.rope_scaling))
        if cfg.rope_scaling.rope_type == "linear":
            for key in ("low_freq_factor", "high_freq_factor", "original_max_position_embeddings"):
                parameters.pop(key)
    return parameters
