"""Weight processing: rewrite a model's weights so they are easier to read, without changing what it computes.

Each step is a pure function `state dict -> new state dict` (interp parameter names, see
`HookedTransformer.state_dict()`); nothing is edited in place, so a tied `W_U` (a view of `W_E`) is
replaced rather than silently changed. `process_weights_(model, ...)` applies them to a model and
records what it carries in `model.processing`. Arithmetic is in float64, cast back to the model's dtype.

- `fold_ln`: each norm's gain w and bias b move into the weights that read its output
  (W_Q/W_K/W_V and their biases, W_in/b_in and W_gate/b_gate, W_U/b_U): `(n * w + b) @ W + c = n @ (diag(w) W) + (b @ W + c)`.
  The norm is left as a pure normalisation (its `folded()` form: divide by `hook_scale`, which is unchanged).
  LayerNorm's folded reading weights are also centred over d_model: its normalised output has zero mean, so
  the all-ones direction of a reading weight reads nothing. RMSNorm has no bias and does not centre: only
  its gain moves, nothing is centred.
- `center_writing_weights`: subtract the mean over d_model from everything that writes to the residual
  stream (W_E, W_pos, W_O, b_O, W_out, b_out). Legal because every reader is a LayerNorm, which
  removes the mean first. The residual stream changes by a multiple of the all-ones vector. Refused for
  RMSNorm models (Llama, Mistral, Qwen2), whose norms do not remove the mean.
- `center_unembed`: subtract the mean over the vocabulary from W_U and b_U. Logits change by a
  per-position constant; `log_softmax` (and every probability and loss) is unchanged.
- `fold_value_biases`: b_V moves through W_O into b_O (`b_O += Σ_h b_V[h] @ W_O[h]`, each query head with its
  kv head's b_V under grouped-query attention), exact because each attention pattern row sums to 1. `hook_v` and `hook_z` change by the bias; outputs don't.

All four are idempotent: applying a step twice gives the same weights as applying it once, and
`process_weights_` skips steps the model already carries.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import einops
import torch
from torch import Tensor

from interp.config import Config
from interp.factored import FactoredMatrix

Model = Any  # an interp.model.HookedTransformer; not imported, since the model imports this module

State = dict[str, Tensor]
STEPS = ("fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases")


def _in64(tensor: Tensor) -> Tensor:
    return tensor.detach().to(torch.float64)


def _fold_into(state: State, ln: str, readers: list[tuple[str, str]], centre: bool) -> None:
    """Fold norm `ln`'s gain w (and bias b, if it has one) into each reading `(weight [d_model, ...], bias [...])`.
    With `centre` (LayerNorm) the folded weights are also centred over d_model: the input they read has zero mean."""
    gain, ln_bias = state.pop(f"{ln}.w"), state.pop(f"{ln}.b", None)
    for weight, bias in readers:
        W, c = _in64(state[weight]), _in64(state[bias])
        new_W = _in64(gain).view(-1, *[1] * (W.ndim - 1)) * W
        if ln_bias is not None:
            c = c + einops.einsum(_in64(ln_bias), W, "d_model, d_model ... -> ...")
        if centre:
            new_W = new_W - new_W.mean(0, keepdim=True)
        state[weight], state[bias] = new_W.to(state[weight].dtype), c.to(state[bias].dtype)


def fold_ln(state: State, cfg: Config) -> State:
    """Fold every norm's gain (and LayerNorm's bias) into the weights that read from it (see module doc).
    RMSNorm has no bias and does not centre, so only its gain moves and nothing is centred."""
    state = dict(state)
    centre = cfg.normalization == "LN"
    mlp_readers = [("mlp.W_gate", "mlp.b_gate"), ("mlp.W_in", "mlp.b_in")] if cfg.gated_mlp else [("mlp.W_in", "mlp.b_in")]
    for layer in range(cfg.n_layers):
        block = f"blocks.{layer}"
        if f"{block}.ln1.w" in state:
            _fold_into(state, f"{block}.ln1", [(f"{block}.attn.W_QKV", f"{block}.attn.b_QKV")], centre)
        if f"{block}.ln2.w" in state:
            _fold_into(state, f"{block}.ln2", [(f"{block}.{w}", f"{block}.{b}") for w, b in mlp_readers], centre)
    if "ln_final.w" in state:
        _fold_into(state, "ln_final", [("W_U", "b_U")], centre)
    return state


def _centered(tensor: Tensor, dim: int) -> Tensor:
    wide = _in64(tensor)
    return (wide - wide.mean(dim, keepdim=True)).to(tensor.dtype)


def center_writing_weights(state: State, cfg: Config) -> State:
    """Subtract the mean over d_model from W_E, W_pos (if learned) and every W_O, b_O, W_out, b_out.
    Refused for RMSNorm models: RMSNorm does not remove the mean, so centring would change every output."""
    if cfg.normalization != "LN":
        raise ValueError("center_writing_weights needs LayerNorm, which removes the mean of the residual stream; "
                         f"this {cfg.model_type} model uses RMSNorm, which does not, so centring what writes to the "
                         "residual stream would change its outputs. Use center_writing_weights=False.")
    state = dict(state)
    writers = [name for name in ("W_E", "W_pos") if name in state]
    writers += [f"blocks.{layer}.{name}" for layer in range(cfg.n_layers)
                for name in ("attn.W_O", "attn.b_O", "mlp.W_out", "mlp.b_out")]
    for name in writers:
        state[name] = _centered(state[name], -1)  # d_model is the last dim of each
    return state


def center_unembed(state: State, cfg: Config) -> State:
    """Subtract the mean over the vocabulary from W_U `[d_model, d_vocab]` and b_U `[d_vocab]`."""
    state = dict(state)
    state["W_U"], state["b_U"] = _centered(state["W_U"], -1), _centered(state["b_U"], -1)
    return state


def fold_value_biases(state: State, cfg: Config) -> State:
    """Move b_V into b_O: `b_O += Σ_h b_V[kv(h)] @ W_O[h]` (kv(h) = h // group under grouped-query attention),
    then b_V = 0. Exact because every pattern row sums to 1 (sliding windows included)."""
    state = dict(state)
    group = cfg.n_heads // cfg.n_kv_heads
    for layer in range(cfg.n_layers):
        prefix = f"blocks.{layer}.attn"
        b_QKV, W_O = state[f"{prefix}.b_QKV"], state[f"{prefix}.W_O"]  # [n_heads + 2 n_kv, d_head], [n_heads, d_head, d_model]
        b_V = b_QKV[cfg.n_heads + cfg.n_kv_heads:].repeat_interleave(group, dim=0)  # [n_heads, d_head]
        moved = einops.einsum(_in64(b_V), _in64(W_O), "n_heads d_head, n_heads d_head d_model -> d_model")
        state[f"{prefix}.b_O"] = (_in64(state[f"{prefix}.b_O"]) + moved).to(W_O.dtype)
        kept = cfg.n_heads + cfg.n_kv_heads
        state[f"{prefix}.b_QKV"] = torch.cat([b_QKV[:kept], torch.zeros_like(b_QKV[kept:])])
    return state


STEP_FUNCTIONS: dict[str, Callable[[State, Config], State]] = {
    "fold_ln": fold_ln, "center_writing_weights": center_writing_weights,
    "center_unembed": center_unembed, "fold_value_biases": fold_value_biases,
}


def process_state_dict(state: State, cfg: Config, steps: list[str] | tuple[str, ...]) -> State:
    """Apply the named steps in the canonical order of `STEPS`."""
    unknown = [step for step in steps if step not in STEP_FUNCTIONS]
    if unknown:
        raise ValueError(f"Unknown processing step(s) {unknown}; the steps are {list(STEPS)}.")
    for step in STEPS:
        if step in steps:
            state = STEP_FUNCTIONS[step](state, cfg)
    return state


def applicable_steps(cfg: Config) -> tuple[str, ...]:
    """The steps valid for this architecture: all but center_writing_weights for RMSNorm models."""
    return tuple(step for step in STEPS if step != "center_writing_weights" or cfg.normalization == "LN")


@torch.no_grad()
def process_weights_(model: Model, fold_ln: bool | None = None, center_writing_weights: bool | None = None,
                     center_unembed: bool | None = None, fold_value_biases: bool | None = None) -> Model:
    """Apply the chosen steps to `model` (in place: its parameters are replaced) and record them.

    A flag left None means "yes, where valid for this architecture" (`applicable_steps`); True insists and raises,
    saying why, where the step is not valid (center_writing_weights on an RMSNorm model); False skips it.
    Steps the model already carries are kept; a carried step that comes after a new one in the
    canonical order (`STEPS`) is applied again after it, e.g. `fold_value_biases` after a new
    `fold_ln` (which moves ln1's bias into b_V). Returns the model.
    """
    flags = dict(fold_ln=fold_ln, center_writing_weights=center_writing_weights,
                 center_unembed=center_unembed, fold_value_biases=fold_value_biases)
    valid = applicable_steps(model.cfg)
    asked = {step: step in valid if flag is None else flag for step, flag in flags.items()}
    new = [step for step in STEPS if asked[step] and not model.processing[step]]
    if not new:
        return model
    first = STEPS.index(new[0])
    steps = [step for step in STEPS[first:] if asked[step] or model.processing[step]]
    # Computed on a copy before the model changes: a refused step (center_writing_weights on RMSNorm) leaves it intact.
    new_state = process_state_dict(dict(model.state_dict()), model.cfg, steps)
    if "fold_ln" in steps:  # each norm becomes its folded form (same eps, same hook points)
        for block in model.blocks:
            block.ln1, block.ln2 = block.ln1.folded(), block.ln2.folded()
        model.ln_final = model.ln_final.folded()
    model.load_state_dict(new_state, strict=True, assign=True)
    model.processing = {step: model.processing[step] or step in steps for step in STEPS}
    if model.cfg.tie_word_embeddings and model.W_U.untyped_storage().data_ptr() != model.W_E.untyped_storage().data_ptr():
        model._replace_config(tie_word_embeddings=False)  # processing gave W_U its own tensor
    return model


def require_processing(model: Model, *steps: str, purpose: str) -> None:
    """Raise a ValueError naming how to get `steps` if `model` does not carry them."""
    missing = [step for step in steps if not model.processing.get(step)]
    if missing:
        flags = ", ".join(f"{step}=True" for step in missing)
        raise ValueError(f"{purpose} needs a model processed with {missing}: load it with "
                         f"HookedTransformer.from_pretrained(..., {flags}) or call model.process_weights_({flags}).")


def rotate_residual_stream(state: State, cfg: Config, R: Tensor) -> State:
    """The weights of the same function in a rotated residual basis: x -> x @ R.

    Writers (W_E, W_pos, W_O, b_O, W_out, b_out) are multiplied by R on the right, readers (W_Q/W_K/W_V,
    W_in, W_U) by Rᵀ on the left, so every head, neuron and logit computes the same numbers: the
    residual stream has no privileged basis (Elhage et al. 2021). Two conditions, both checked:
    LayerNorm must be folded (an unfolded gain scales each basis direction separately, which is a
    privileged basis), and R `[d_model, d_model]` must be orthogonal and (LayerNorm only) fix the all-ones
    direction, because LayerNorm's centring subtracts the component along all-ones and its scale is a norm.
    RMSNorm's scale is a norm too, and it does not centre: any orthogonal R works.
    """
    if any(name.endswith((".w", ".b")) and "ln" in name for name in state):
        raise ValueError("Rotate only LayerNorm-folded weights: apply fold_ln first (an unfolded LN gain privileges the basis).")
    R64 = _in64(R)
    d_model = cfg.d_model
    ones = torch.ones(d_model, dtype=torch.float64, device=R.device)
    if R.shape != (d_model, d_model) or not torch.allclose(R64 @ R64.T, torch.eye(d_model, dtype=torch.float64, device=R.device), atol=1e-6):
        raise ValueError(f"R must be an orthogonal [{d_model}, {d_model}] matrix, got shape {tuple(R.shape)} (or not orthogonal).")
    if cfg.normalization == "LN" and not torch.allclose(ones @ R64, ones, atol=1e-6):
        raise ValueError("R must fix the all-ones direction (ones @ R == ones): LayerNorm's centring singles it out.")
    state = dict(state)

    def write(name: str) -> None:  # d_model is the last dim
        state[name] = (_in64(state[name]) @ R64).to(state[name].dtype)

    def read(name: str) -> None:  # d_model is the first dim
        W = state[name]
        state[name] = einops.einsum(R64.T, _in64(W), "new d_model, d_model ... -> new ...").to(W.dtype)

    for name in ("W_E", "W_pos"):
        if name in state:  # rotary models have no W_pos
            write(name)
    read("W_U")
    for layer in range(cfg.n_layers):
        block = f"blocks.{layer}"
        for name in ("attn.W_O", "attn.b_O", "mlp.W_out", "mlp.b_out"):
            write(f"{block}.{name}")
        for name in ("attn.W_QKV", "mlp.W_in", "mlp.W_gate"):
            if f"{block}.{name}" in state:
                read(f"{block}.{name}")
    return state


def refactor_factored_attn_matrices(state: State, cfg: Config, factored: Callable[..., Any] = FactoredMatrix) -> State:
    """Refactor each head's factors without changing W_QK or W_OV (Elhage et al. 2021: only the products matter).

    OV: b_V moves into b_O (as `fold_value_biases`), and with W_V W_O = U S Vᵀ (SVD, rank d_head) the new factors
    are W_V = U S and W_O = Vᵀ, so W_O has orthonormal rows and |z| = |head result| per unit of attention.
    QK: with the biases appended as a constant input coordinate, [W_Q; b_Q] [W_K; b_K]ᵀ = U S Vᵀ and the new
    factors are U √S and V √S, so query and key columns have equal norms. Logits are unchanged.
    Needs learned positions (a rotary score depends on the positions, not on W_QK alone) and one key/value
    head per query head (under grouped-query attention a key factor is shared by several queries). `factored(A, B)`:
    builds the FactoredMatrix whose `svd()` fixes the singular vectors' signs (interp.tl passes TransformerLens's).
    """
    if cfg.positions == "rotary":
        raise ValueError("refactor_factored_attn_matrices needs learned positions: with rotary positions the QK "
                         "score depends on the query and key positions, not on W_Q W_Kᵀ alone.")
    if cfg.n_kv_heads != cfg.n_heads:
        raise ValueError(f"refactor_factored_attn_matrices needs one key/value head per query head; this model shares "
                         f"{cfg.n_kv_heads} kv heads among {cfg.n_heads} query heads.")
    state = dict(state)
    heads = cfg.n_heads
    for layer in range(cfg.n_layers):
        attn = f"blocks.{layer}.attn"
        W_QKV, b_QKV = _in64(state[f"{attn}.W_QKV"]), _in64(state[f"{attn}.b_QKV"])
        W_O, b_O = _in64(state[f"{attn}.W_O"]), _in64(state[f"{attn}.b_O"])
        W_Q, W_K, W_V = (W_QKV[:, i * heads:(i + 1) * heads].transpose(0, 1) for i in range(3))  # [head, d_model, d_head]
        b_Q, b_K, b_V = (b_QKV[i * heads:(i + 1) * heads] for i in range(3))
        U, S, V = factored(torch.cat([W_Q, b_Q[:, None]], 1), torch.cat([W_K, b_K[:, None]], 1).transpose(-1, -2)).svd()
        query, key = U * S.sqrt()[:, None], V * S.sqrt()[:, None]  # [head, d_model + 1, d_head]
        b_O = b_O + einops.einsum(b_V, W_O, "head d_head, head d_head d_model -> d_model")
        U, S, V = factored(W_V, W_O).svd()
        new_W = torch.stack([query[:, :-1], key[:, :-1], U * S[:, None]]).flatten(0, 1)  # [3 head, d_model, d_head]
        new_b = torch.cat([query[:, -1], key[:, -1], torch.zeros_like(b_V)])
        dtype = state[f"{attn}.W_QKV"].dtype
        state[f"{attn}.W_QKV"] = new_W.transpose(0, 1).contiguous().to(dtype)
        state[f"{attn}.b_QKV"] = new_b.to(dtype)
        state[f"{attn}.W_O"] = V.transpose(-1, -2).contiguous().to(dtype)
        state[f"{attn}.b_O"] = b_O.to(dtype)
    return state
