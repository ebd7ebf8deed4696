"""QK/OV circuits and composition scores (Elhage et al. 2021, "A Mathematical Framework for
Transformer Circuits").

With the row-vector convention (`x @ W`), head h reads the residual stream through
W_QK = W_Q W_Kᵀ (query side left, key side right) and writes W_OV = W_V W_O. All products are
computed from the low-rank factors (d_head x d_head Gram matrices), never as d_model² per pair.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from interp.model import HookedTransformer

COMPOSITION_KINDS = ("Q", "K", "V")


def _gram(matrix: Float[Tensor, "... d_model d_head"]) -> Float[Tensor, "... d_head d_head"]:
    return matrix.transpose(-1, -2) @ matrix


@torch.no_grad()
def composition_scores(model: HookedTransformer, kind: str) -> Float[Tensor, "layer head layer head"]:
    """‖W_OV^A W^B‖_F / (‖W_OV^A‖_F ‖W^B‖_F) for every earlier head A and later head B.

    W^B is W_QK^B (Q-composition: A's output feeds B's queries), W_QK^Bᵀ (K-composition: B's keys;
    an induction head K-composes with a previous-token head) or W_OV^B (V-composition).
    Entries with layer(A) >= layer(B) are 0. About 1/sqrt(d_model)-sized for unrelated random heads.
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
