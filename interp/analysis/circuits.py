"""QK/OV circuits, full and positional circuits, copying and composition scores (Elhage et al. 2021,
"A Mathematical Framework for Transformer Circuits").

Row-vector convention (`x @ W`): head h reads the residual stream through W_QK = W_Q W_Kᵀ
`[d_model, d_model]` (query side on the left, key side on the right) and writes through
W_OV = W_V W_O. Both have rank <= d_head and are returned as `FactoredMatrix` `[layer, head, ...]`.

Norm handling. The circuits that start at the embedding (full QK/OV, positional QK, copying
scores) need `fold_ln`: the norm gains (and LayerNorm biases) then sit in W_Q/W_K/W_V/W_U. For LayerNorm
the folded reading weights are centred over d_model, so its centring is exact; RMSNorm (Llama, Mistral,
Qwen2) does not centre and has no bias, so only its gain is folded. What is left out is the norm's scale
(one positive number per token and position) and the biases b_Q, b_K, b_V, b_O, b_U. They are the
"direct path" circuits of the paper: token (or position) straight into a head, nothing between.

Families.
- Heads are query heads everywhere. Under grouped-query attention (Llama, Mistral, Qwen2 with
  n_kv_heads < n_heads) `model.W_K`/`W_V` repeat each kv head's weights for the query heads that share it,
  so W_QK[l, h] = W_Q[h] W_K[kv(h)]ᵀ and W_OV[l, h] = W_V[kv(h)] W_O[h], kv(h) = h // (n_heads // n_kv_heads):
  every circuit, copying score and composition score is per query head (query heads of one group share
  their key and value factor, so e.g. their OV circuits have the same row space).
- Rotary positions (GPT-NeoX, Llama, Mistral, Qwen2): W_QK leaves out the rotation. The real score of a
  query at position i and a key at j is `q R(θ (j - i)) kᵀ` per rotated pair of dims, so W_QK is exactly the
  score at relative distance 0 (a token attending to itself), and exactly the part of the score carried by
  the unrotated dims (GPT-NeoX's partial rotary: d_head - rotary_dim of them) at every distance; for rotated
  dims at other distances it is not the score. OV circuits and copying scores do not involve positions and
  are exact. Rotary models add nothing positional to the residual stream, so they have no W_pos and no
  positional QK circuit (`positional_qk_circuit` raises).
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from interp.factored import FactoredMatrix
from interp.model import HookedTransformer
from interp.processing import require_processing

COMPOSITION_KINDS = ("Q", "K", "V")


def check_head(model: HookedTransformer, layer: int | None = None, head: int | None = None) -> None:
    """Raise an IndexError naming the valid range if `layer` or `head` is out of range (None is fine)."""
    for what, index, size in (("layer", layer, model.cfg.n_layers), ("head", head, model.cfg.n_heads)):
        if index is not None and (not isinstance(index, int) or not -size <= index < size):
            raise IndexError(f"{what} {index!r} is out of range: the model has {size} {what}s (valid: 0..{size - 1}).")


def _heads_of(circuit: FactoredMatrix, layer: int | None, head: int | None) -> FactoredMatrix:
    """Select from a `[layer, head, ...]` stack: both None -> all; layer -> `[head, ...]`; both -> `[...]`."""
    if layer is None:
        return circuit if head is None else circuit[:, head]
    return circuit[layer] if head is None else circuit[layer, head]


@torch.no_grad()
def qk_circuit(model: HookedTransformer, layer: int | None = None, head: int | None = None) -> FactoredMatrix:
    """W_QK = W_Q W_Kᵀ `[layer, head, d_model, d_model]` (rank <= d_head): the bilinear form
    `x_query @ W_QK @ x_keyᵀ` that gives the attention score (before the 1/sqrt(d_head) and biases).

    Per query head (grouped-query: the shared kv head's W_K repeated). On rotary models it ignores the
    rotation: exact for a key at the query's own position and for unrotated dims, not the score at other
    relative positions (module doc)."""
    check_head(model, layer, head)
    if layer is None:
        return _heads_of(model.QK, layer, head)
    attn = model.blocks[layer].attn  # one layer's weights only (model.QK would stack every layer's)
    if head is None:
        return FactoredMatrix(attn.W_Q, attn.W_K.transpose(-1, -2))
    return FactoredMatrix(attn.W_Q[head], attn.W_K_kv[head % attn.n_heads // attn.group].T)


@torch.no_grad()
def ov_circuit(model: HookedTransformer, layer: int | None = None, head: int | None = None) -> FactoredMatrix:
    """W_OV = W_V W_O `[layer, head, d_model, d_model]` (rank <= d_head): what a head writes to the
    residual stream for each unit of attention to a source vector `x` (`x @ W_OV`). Per query head
    (grouped-query: the shared kv head's W_V with the query head's own W_O); positions play no part."""
    check_head(model, layer, head)
    if layer is None:
        return _heads_of(model.OV, layer, head)
    attn = model.blocks[layer].attn  # one layer's weights only
    if head is None:
        return FactoredMatrix(attn.W_V, attn.W_O)
    return FactoredMatrix(attn.W_V_kv[head % attn.n_heads // attn.group], attn.W_O[head])


@torch.no_grad()
def full_qk_circuit(model: HookedTransformer, layer: int | None = None, head: int | None = None) -> FactoredMatrix:
    """W_E W_QK W_Eᵀ `[layer, head, d_vocab, d_vocab]`: entry [i, j] is how much query token i attends to
    key token j through the direct path. Needs `fold_ln` (see module doc). Never dense: `.AB` makes it so.
    On rotary models it leaves out the rotation, as `qk_circuit` does: the token-token score at relative
    distance 0 (and the unrotated dims' part of it at any distance)."""
    require_processing(model, "fold_ln", purpose="full_qk_circuit")
    qk = qk_circuit(model, layer, head)
    return FactoredMatrix(model.W_E @ qk.A, qk.B @ model.W_E.T)


@torch.no_grad()
def full_ov_circuit(model: HookedTransformer, layer: int | None = None, head: int | None = None) -> FactoredMatrix:
    """W_E W_OV W_U `[layer, head, d_vocab, d_vocab]`: entry [i, j] is how much attending to token i raises
    the logit of token j through the direct path. Needs `fold_ln` (see module doc)."""
    require_processing(model, "fold_ln", purpose="full_ov_circuit")
    ov = ov_circuit(model, layer, head)
    return FactoredMatrix(model.W_E @ ov.A, ov.B @ model.W_U)


@torch.no_grad()
def positional_qk_circuit(model: HookedTransformer, layer: int | None = None, head: int | None = None,
                          n_positions: int | None = None) -> FactoredMatrix:
    """W_pos W_QK W_posᵀ `[layer, head, pos, pos]` over the first `n_positions` (default n_ctx) positions.

    Row q is the score query position q gives each key position from positions alone; a previous-token
    head peaks at key q-1 (compare within a row: only j <= q is ever used). Needs `fold_ln`.
    Learned absolute positions only (GPT-2): rotary models have no W_pos; raises ValueError there.
    """
    if not hasattr(model, "W_pos"):
        raise ValueError(
            f"positional_qk_circuit reads W_pos, the learned position embeddings added to the residual stream; this "
            f"{model.cfg.model_type} model uses rotary positions (q and k are rotated inside attention, nothing "
            "positional is added to the stream), so it has no W_pos and no positional QK circuit. Its positional "
            "behaviour is in the rotated q/k (attn.hook_rot_q / hook_rot_k) and the patterns they give.")
    require_processing(model, "fold_ln", purpose="positional_qk_circuit")
    W_pos = model.W_pos[: n_positions or model.cfg.n_ctx]
    qk = qk_circuit(model, layer, head)
    return FactoredMatrix(W_pos @ qk.A, qk.B @ W_pos.T)


def copying_score(circuit: FactoredMatrix) -> Float[Tensor, "..."]:
    """Σλ / Σ|λ| over the eigenvalues λ of a square circuit (Elhage et al. 2021): +1 when every
    eigenvalue is positive (the head copies: attending to a token raises that token's logit), -1 when
    all are negative (it suppresses it), near 0 for an unstructured map."""
    eigenvalues = circuit.eigenvalues
    return eigenvalues.sum(-1).real / eigenvalues.abs().sum(-1).clamp_min(torch.finfo(eigenvalues.real.dtype).tiny)


@torch.no_grad()
def copying_scores(model: HookedTransformer) -> Float[Tensor, "layer head"]:
    """The copying score of every head's full OV circuit W_E W_OV W_U. Needs `fold_ln`.

    Its nonzero eigenvalues are those of the d_head x d_head matrix W_O W_U W_E W_V, so W_U W_E
    `[d_model, d_model]` is formed once and no d_vocab-sized matrix per head is ever built.
    """
    require_processing(model, "fold_ln", purpose="copying_scores")
    unembed_embed = model.W_U.double() @ model.W_E.double()  # [d_model, d_model], in float64 for any model dtype
    W_V, W_O = model.W_V.double(), model.W_O.double()
    return copying_score(FactoredMatrix(W_V, W_O @ unembed_embed)).float()


def _gram(matrix: Float[Tensor, "... d_model d_head"]) -> Float[Tensor, "... d_head d_head"]:
    return matrix.transpose(-1, -2) @ matrix


@torch.no_grad()
def composition_scores(model: HookedTransformer, kind: str) -> Float[Tensor, "layer head layer head"]:
    """‖W_OV^A W^B‖_F / (‖W_OV^A‖_F ‖W^B‖_F) for every earlier head A and later head B.

    W^B is W_QK^B (Q-composition: A's output feeds B's queries), W_QK^Bᵀ (K-composition: B's keys;
    an induction head K-composes with a previous-token head) or W_OV^B (V-composition).
    Entries with layer(A) >= layer(B) are 0. About 1/sqrt(d_model)-sized for unrelated random heads.
    Per query head on grouped-query models (the shared W_K/W_V repeated per query head). On rotary models
    Q- and K-composition scores use W_QK without the rotation (see `qk_circuit`).
    """
    if kind not in COMPOSITION_KINDS:
        raise ValueError(f"kind must be one of {COMPOSITION_KINDS}, got {kind!r}.")
    W_V, W_O = model.W_V.double(), model.W_O.double()  # [layer, head, d_model, d_head], [layer, head, d_head, d_model]
    W_Q, W_K = model.W_Q.double(), model.W_K.double()
    # A's W_OV = V_A O_A; B's matrix = L_B R_Bᵀ with (L, R) = (Q, K), (K, Q) or (V, O_)ᵀ.
    left, right = {"Q": (W_Q, W_K), "K": (W_K, W_Q), "V": (W_V, W_O.transpose(-1, -2))}[kind]
    gram_v = _gram(W_V)  # [layer, head, d_head, d_head]
    ov_norm_sq = torch.einsum("lhij,lhji->lh", gram_v, W_O @ W_O.transpose(-1, -2))
    b_norm_sq = torch.einsum("lhij,lhji->lh", _gram(left), _gram(right))
    gram_right = _gram(right)
    n_layers, n_heads = W_V.shape[:2]
    scores = torch.zeros(n_layers, n_heads, n_layers, n_heads, dtype=torch.float64)
    for layer_b in range(1, n_layers):
        # middle[A, B] = O_A L_B : [layer_a, head_a, head_b, d_head, d_head]
        middle = torch.einsum("ahdm,bme->ahbde", W_O[:layer_b], left[layer_b])
        # ‖V_A middle R_Bᵀ‖² = tr(G_V(A) middle G_R(B) middleᵀ)
        product_sq = torch.einsum("ahij,ahbjk,bkl,ahbil->ahb", gram_v[:layer_b], middle, gram_right[layer_b], middle)
        denominator = (ov_norm_sq[:layer_b, :, None] * b_norm_sq[layer_b][None, None, :]).sqrt()
        scores[:layer_b, :, layer_b, :] = product_sq.clamp_min(0).sqrt() / denominator
    return scores.float()


def composition_score(first: FactoredMatrix, second: FactoredMatrix) -> Float[Tensor, "..."]:
    """‖W_A W_B‖_F / (‖W_A‖_F ‖W_B‖_F) for circuits W_A (written first) and W_B (reading it), batched."""
    return (first @ second).norm() / (first.norm() * second.norm())


@torch.no_grad()
def composition_baseline(model: HookedTransformer, n_samples: int = 256, seed: int = 0) -> tuple[float, float]:
    """(mean, std) of the composition score between random Gaussian circuits of this model's shapes.

    W_A = V O and W_B = L Rᵀ with V, L, R `[d_model, d_head]`, O `[d_head, d_model]` i.i.d. normal: the
    paper's baseline for reading significance (scores well above mean + 3 std are composition, not
    chance). The same for Q, K and V composition, since all three compare rank-d_head products.
    """
    d_model, d_head = model.cfg.d_model, model.cfg.d_head
    generator = torch.Generator().manual_seed(seed)

    def sample(rows: int, cols: int) -> Tensor:
        return torch.randn(n_samples, rows, cols, generator=generator, dtype=torch.float64)

    first = FactoredMatrix(sample(d_model, d_head), sample(d_head, d_model))
    second = FactoredMatrix(sample(d_model, d_head), sample(d_head, d_model))
    scores = composition_score(first, second)
    return float(scores.mean()), float(scores.std())


def composition_z_scores(model: HookedTransformer, kind: str, n_samples: int = 256) -> Float[Tensor, "layer head layer head"]:
    """(composition score - random baseline mean) / baseline std; entries with layer(A) >= layer(B) are 0."""
    mean, std = composition_baseline(model, n_samples)
    scores = composition_scores(model, kind)
    later = torch.arange(model.cfg.n_layers)[:, None] < torch.arange(model.cfg.n_layers)[None, :]  # [layer_a, layer_b]
    return torch.where(later[:, None, :, None], (scores - mean) / std, torch.zeros(()))
