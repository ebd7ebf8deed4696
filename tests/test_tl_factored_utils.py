"""interp.tl.FactoredMatrix and interp.tl.utils against dense computations and TransformerLens 3.9's documented
conventions, written out here as literal expectations (no transformer_lens needed; the direct comparisons are in
test_tl_factored_utils_vs_transformer_lens.py)."""

import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from families import load

from interp.factored import FactoredMatrix as BaseFactoredMatrix
from interp.tl import utils
from interp.tl.factored import FactoredMatrix

# float64 factors: differences from the dense product are rounding (~1e-14); 1e-5 is the DESIGN.md contract
# for FactoredMatrix results, kept as the bound.
ATOL = 1e-5


def factors(*shape_a, rdim, seed=0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    A = torch.randn(*shape_a, generator=generator, dtype=dtype)
    B = torch.randn(*shape_a[:-2], shape_a[-1], rdim, generator=generator, dtype=dtype)
    return A, B


def close(actual, expected, atol=ATOL):
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0)


# ---- FactoredMatrix: indexing (TL's rules) ----------------------------------------------------------
def test_indexing_a_matrix_without_leading_dims_reaches_rows_and_columns():
    A, B = factors(8, 3, rdim=7)
    fm, dense = FactoredMatrix(A, B), A @ B
    index = torch.tensor([6, 1, 3])
    cases = [  # (key, expected shape, expected dense product)
        ((slice(None, 5),), (5, 7), dense[:5]),
        ((2,), (1, 7), dense[2:3]),  # an int keeps the row dim, as in TL
        ((-1,), (1, 7), dense[-1:]),
        ((2, 3), (1, 1), dense[2:3, 3:4]),
        ((index, index), (3, 3), dense[index][:, index]),  # full_OV[idx, idx]
        ((slice(None), -1), (8, 1), dense[:, -1:]),
        ((Ellipsis, 4), (8, 1), dense[:, 4:5]),  # ... counts over the product's dims
    ]
    for key, shape, expected in cases:
        result = fm[key if len(key) > 1 else key[0]]
        assert type(result) is FactoredMatrix and tuple(result.shape) == shape, (key, shape)
        close(result.AB, expected)
    assert fm[:5].mdim == 3 and fm[index, index].mdim == 3  # still factored


def test_indexing_leading_dims_then_rows_then_columns():
    A, B = factors(2, 3, 6, 4, rdim=5)
    fm, dense = FactoredMatrix(A, B), A @ B
    assert tuple(fm[0].shape) == (3, 6, 5) and tuple(fm[0, 1].shape) == (6, 5)  # [layer, head] -> one head
    close(fm[0, 1].AB, dense[0, 1])
    close(fm[1, 2, 3].AB, dense[1, 2, 3:4])  # one more index: rows of that head, dim kept
    close(fm[1, 2, 3, 4].AB, dense[1, 2, 3:4, 4:5])
    close(fm[:, :, :2].AB, dense[:, :, :2])
    close(fm[0, :, :, -1].AB, dense[0, :, :, -1:])
    assert tuple(fm[None].shape) == (1, 2, 3, 6, 5)
    with pytest.raises(ValueError, match="too long an index"):
        fm[0, 0, 0, 0, 0]
    with pytest.raises(IndexError, match="row index 6 is out of range"):
        fm[0, 0, 6]
    with pytest.raises(IndexError, match="column index -6 is out of range"):
        fm[0, 0, 1, -6]
    assert tuple(fm[0, 0, None].shape) == (1, 6, 5)  # None among leading-dim indices: a new leading dim
    with pytest.raises(IndexError, match="unsqueeze"):
        fm[0, 0, 1, None]


# ---- FactoredMatrix: products and re-factoring -------------------------------------------------------
def test_matmul_with_tensors_refactors_as_transformer_lens():
    torch.manual_seed(0)
    wide_A, wide_B = factors(8, 3, rdim=7, seed=1)  # rdim 7 > mdim 3
    narrow_A, narrow_B = factors(8, 6, rdim=4, seed=2)  # rdim 4 <= mdim 6
    M = torch.randn(7, 5, dtype=torch.float64)
    N = torch.randn(4, 5, dtype=torch.float64)
    wide, narrow = FactoredMatrix(wide_A, wide_B), FactoredMatrix(narrow_A, narrow_B)
    # TL: rdim > mdim keeps A and multiplies B (mdim stays 3); otherwise the factors become (AB, M) (mdim = rdim).
    assert (wide @ M).mdim == 3 and (narrow @ N).mdim == 4
    close((wide @ M).AB, wide_A @ wide_B @ M)
    close((narrow @ N).AB, narrow_A @ narrow_B @ N)
    # Left products: ldim > mdim keeps B (mdim stays), else (M, AB) (mdim = ldim).
    L = torch.randn(5, 8, dtype=torch.float64)
    small_A, small_B = factors(3, 5, rdim=7, seed=3)  # ldim 3 <= mdim 5
    assert (L @ wide).mdim == 3 and (torch.ones(2, 3, dtype=torch.float64) @ FactoredMatrix(small_A, small_B)).mdim == 3
    close((L @ wide).AB, L @ wide_A @ wide_B)
    for result in (wide @ M, L @ wide, wide @ wide.T, wide.T @ wide):
        assert type(result) is FactoredMatrix
    close((wide @ wide.T).AB, wide_A @ wide_B @ wide_B.T @ wide_A.T)
    v, w = torch.randn(7, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    close(wide @ v, wide_A @ wide_B @ v)  # vectors give dense vectors
    close(w @ wide, w @ wide_A @ wide_B)
    with pytest.raises(ValueError, match="rdim"):
        wide @ torch.randn(6, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="ldim"):
        torch.randn(2, 7, dtype=torch.float64) @ wide


def test_products_with_the_base_class_return_the_tl_class():
    A, B = factors(2, 6, 3, rdim=6)
    ours, base = FactoredMatrix(A, B), BaseFactoredMatrix(A, B)
    dense = A @ B
    for result, expected in ((ours @ base, dense @ dense), (base @ ours, dense @ dense)):
        assert type(result) is FactoredMatrix
        close(result.AB, expected)
    for result in (ours * 2, 2 * ours, -ours, ours.T, ours.to(torch.float32), ours.float(), ours[0],
                   ours.unsqueeze(0), ours.make_even()):
        assert type(result) is FactoredMatrix


def test_scalar_products():
    A, B = factors(5, 2, rdim=4)
    fm, dense = FactoredMatrix(A, B), A @ B
    for scalar in (3, 2.5, torch.tensor(-2.0, dtype=torch.float64), torch.tensor([0.5], dtype=torch.float64)):
        close((fm * scalar).AB, dense * float(scalar))
        close((scalar * fm).AB, dense * float(scalar))
    with pytest.raises(ValueError, match="one-element"):
        fm * torch.tensor([1.0, 2.0], dtype=torch.float64)


# ---- FactoredMatrix: spectra, norms, views -----------------------------------------------------------
@pytest.mark.parametrize("shape_a, rdim", [((7, 3), 5), ((2, 4, 3), 6), ((2, 5, 8), 5)],
                         ids=["2d", "leading", "wide-mdim"])
def test_svd_and_views_against_the_dense_product(shape_a, rdim):
    A, B = factors(*shape_a, rdim=rdim)
    fm, dense = FactoredMatrix(A, B), A @ B
    U, S, V = fm.svd()
    k = min(shape_a[-2], shape_a[-1], rdim)
    assert U.shape[-2:] == (shape_a[-2], k) and S.shape[-1] == k and V.shape[-2:] == (rdim, k)
    close(U @ torch.diag_embed(S) @ V.transpose(-2, -1), dense)  # TL: M = U diag(S) Vᵀ, V not Vᵀ
    close(S, torch.linalg.svdvals(dense)[..., :k])
    eye = torch.eye(k, dtype=A.dtype).expand(*A.shape[:-2], k, k)
    close(U.transpose(-2, -1) @ U, eye)
    close(V.transpose(-2, -1) @ V, eye)
    with pytest.warns(DeprecationWarning, match="V"):
        assert fm.Vh is V  # TL's Vh is a deprecated alias of V
    assert fm.U is U and fm.S is S and fm.V is V  # cached
    close(fm.norm(), torch.linalg.matrix_norm(dense))
    close(U @ fm.collapse_l(), dense)
    close(fm.collapse_r() @ V.transpose(-2, -1), dense)
    even = fm.make_even()
    close(even.AB, dense)
    close(even.A.transpose(-2, -1) @ even.A, torch.diag_embed(S))  # each half carries sqrt(S)
    close(even.B @ even.B.transpose(-2, -1), torch.diag_embed(S))
    close(fm.T.AB, dense.transpose(-2, -1))
    assert fm.pair[0] is fm.A and fm.pair[1] is fm.B and fm.ndim == len(shape_a)
    assert fm.shape == torch.Size((*shape_a[:-1], rdim)) and fm.has_leading_dims == (len(shape_a) > 2)


def test_eigenvalues_are_those_of_the_dense_product():
    A, B = factors(2, 6, 3, rdim=6, seed=4)
    fm, dense = FactoredMatrix(A, B), A @ B
    values = fm.eigenvalues
    assert values.shape == (2, 3) and values.is_complex()
    for batch in range(2):
        dense_values = torch.linalg.eigvals(dense[batch])
        nonzero = dense_values[dense_values.abs().argsort(descending=True)][:3]  # AB has 3 more zeros
        ours = values[batch]
        key = lambda z: (round(z.real.item(), 6), round(z.imag.item(), 6))  # noqa: E731
        assert sorted(map(key, ours)) == sorted(map(key, nonzero))
    close(fm.BA.diagonal(dim1=-2, dim2=-1).sum(-1), dense.diagonal(dim1=-2, dim2=-1).sum(-1))  # tr BA = tr AB
    with pytest.raises(ValueError, match="square"):
        FactoredMatrix(*factors(4, 2, rdim=5)).eigenvalues


def test_get_corner_slices_every_dim_and_unsqueeze_counts_like_tensor_unsqueeze():
    A, B = factors(4, 3, 6, 2, rdim=5)
    fm, dense = FactoredMatrix(A, B), A @ B
    assert fm.get_corner(2).shape == (2, 2, 2, 2)  # TL slices the leading dims too
    close(fm.get_corner(2), dense[:2, :2, :2, :2])
    close(utils.get_corner(fm, 2).AB, dense[:2, :2, :2, :2])
    close(utils.get_matrix_corner(fm, 2), dense[:2, :2, :2, :2])
    assert tuple(fm.unsqueeze(0).shape) == (1, 4, 3, 6, 5) and tuple(fm.unsqueeze(2).shape) == (4, 3, 1, 6, 5)
    assert tuple(fm.unsqueeze(-3).shape) == (4, 3, 1, 6, 5)  # -3 = just before the matrix dims, as A.unsqueeze(-3)
    with pytest.raises(IndexError, match="leading dim"):
        fm.unsqueeze(-1)
    assert repr(FactoredMatrix(*factors(4, 2, rdim=5))) == "FactoredMatrix: Shape(torch.Size([4, 5])), Hidden Dim(2)"


@pytest.mark.parametrize("case", ["gpt2", "llama_gqa"])
def test_from_interp_shares_the_weights_and_maps_value_vectors_to_head_outputs(case):
    model = load(case, fold_ln=True)  # folded: ln1.hook_normalized is exactly what W_V reads
    base = model.OV
    fm = FactoredMatrix.from_interp(base)
    assert type(fm) is FactoredMatrix and fm.A.data_ptr() == base.A.data_ptr() and fm.B.data_ptr() == base.B.data_ptr()
    assert FactoredMatrix.from_interp(fm) is fm
    with pytest.raises(TypeError, match="FactoredMatrix"):
        FactoredMatrix.from_interp(torch.zeros(2, 2))
    tokens = torch.randint(0, model.cfg.d_vocab, (1, 6), generator=torch.Generator().manual_seed(0))
    _, cache = model.run_with_cache(tokens)
    n_kv = cache["blocks.0.attn.hook_v"].shape[2]
    group = model.cfg.n_heads // n_kv
    for layer in range(model.cfg.n_layers):
        x = cache[f"blocks.{layer}.ln1.hook_normalized"][0]
        v = cache[f"blocks.{layer}.attn.hook_v"][0]  # [pos, n_kv_heads, d_head]
        for head in range(model.cfg.n_heads):
            # Differences of positions cancel the value bias: (x_i - x_0) W_V W_O = (v_i - v_0) W_O.
            through_circuit = ((x[1:] - x[:1]) @ fm[layer, head]).AB
            from_values = (v[1:, head // group] - v[:1, head // group]) @ model.blocks[layer].attn.W_O[head]
            close(through_circuit, from_values, atol=1e-4)  # fp32 model activations


# ---- utils: hook names ------------------------------------------------------------------------------
GET_ACT_NAME = {  # written from TL 3.9's get_act_name rules
    ("embed",): "hook_embed", ("pos_embed",): "hook_pos_embed", ("hook_embed",): "hook_embed",
    ("blocks.3.attn.hook_pattern",): "blocks.3.attn.hook_pattern", ("k6",): "blocks.6.attn.hook_k",
    ("attn12",): "blocks.12.attn.hook_pattern", ("pre5",): "blocks.5.mlp.hook_pre",
    ("scale4ln1",): "blocks.4.ln1.hook_scale", ("normalized2ln2",): "blocks.2.ln2.hook_normalized",
    ("scale",): "ln_final.hook_scale", ("normalized",): "ln_final.hook_normalized",
    ("scale", 3): "blocks.3.hook_scale", ("scale", 3, "ln1"): "blocks.3.ln1.hook_scale",
    ("normalized", 27, "ln2"): "blocks.27.ln2.hook_normalized", ("k", 6, "a"): "blocks.6.attn.hook_k",
    ("k", 1, "mlp"): "blocks.1.attn.hook_k",  # attention names force "attn"
    ("q", 0): "blocks.0.attn.hook_q", ("v", 2): "blocks.2.attn.hook_v", ("z", 1): "blocks.1.attn.hook_z",
    ("result", 1): "blocks.1.attn.hook_result", ("rot_q", 1): "blocks.1.attn.hook_rot_q",
    ("rot_k", 0): "blocks.0.attn.hook_rot_k", ("pattern", 3): "blocks.3.attn.hook_pattern",
    ("attn", 3): "blocks.3.attn.hook_pattern", ("attn_scores", 3): "blocks.3.attn.hook_attn_scores",
    ("attn_logits", 3): "blocks.3.attn.hook_attn_scores", ("key", 4): "blocks.4.attn.hook_k",
    ("query", 4): "blocks.4.attn.hook_q", ("value", 4): "blocks.4.attn.hook_v", ("pre", 2): "blocks.2.mlp.hook_pre",
    ("post", 2): "blocks.2.mlp.hook_post", ("mlp_pre", 2): "blocks.2.mlp.hook_pre",
    ("mlp_post", 2): "blocks.2.mlp.hook_post", ("mlp_mid", 2): "blocks.2.mlp.hook_mid",
    ("pre_linear", 1): "blocks.1.mlp.hook_pre_linear", ("resid_pre", 0): "blocks.0.hook_resid_pre",
    ("resid_mid", 1): "blocks.1.hook_resid_mid", ("resid_post", 11): "blocks.11.hook_resid_post",
    ("attn_out", 1): "blocks.1.hook_attn_out", ("mlp_out", 1): "blocks.1.hook_mlp_out",
    ("resid_pre", 0, "b"): "blocks.0.hook_resid_pre", ("resid_pre", 0, "block"): "blocks.0.hook_resid_pre",
    ("attn_out", 1, "attention"): "blocks.1.attn.hook_attn_out", ("mlp_out", 1, "m"): "blocks.1.mlp.hook_mlp_out",
    ("resid_pre", "7"): "blocks.7.hook_resid_pre",
    ("k6", 2): "blocks.6.attn.hook_k",  # the digits in the name win over the layer argument
    ("resid_pre",): "hook_resid_pre",
}


@pytest.mark.parametrize("args, expected", list(GET_ACT_NAME.items()),
                         ids=["-".join(map(str, args)) for args in GET_ACT_NAME])
def test_get_act_name(args, expected):
    assert utils.get_act_name(*args) == expected


def test_get_act_name_refuses_a_non_string():
    with pytest.raises(TypeError, match="string"):
        utils.get_act_name(("scale", 3))


# ---- utils: tensors ------------------------------------------------------------------------------------
def test_tensor_helpers():
    bf16 = torch.tensor([1.5, -2.0], dtype=torch.bfloat16, requires_grad=True)
    array = utils.to_numpy(bf16)
    assert array.dtype == np.float32 and array.tolist() == [1.5, -2.0]
    assert utils.to_numpy([1, 2]).tolist() == [1, 2] and utils.to_numpy(3).item() == 3
    with pytest.raises(ValueError, match="to_numpy"):
        utils.to_numpy({"a": 1})
    x = torch.arange(60).reshape(3, 4, 5)
    assert utils.get_corner(x, 2).tolist() == [[[0, 1], [5, 6]], [[20, 21], [25, 26]]]
    assert utils.remove_batch_dim(torch.zeros(1, 3, 2)).shape == (3, 2)
    assert utils.remove_batch_dim(torch.zeros(2, 3)).shape == (2, 3)
    assert utils.transpose(x).shape == (3, 5, 4) and utils.transpose(x)[1, 2, 3] == x[1, 3, 2]
    assert utils.is_square(torch.zeros(3, 3)) and not utils.is_square(torch.zeros(3, 4))
    assert not utils.is_square(torch.zeros(2, 3, 3))
    assert utils.is_lower_triangular(torch.tensor([[1.0, 0.0], [2.0, 3.0]]))
    assert not utils.is_lower_triangular(torch.tensor([[1.0, 4.0], [2.0, 3.0]]))
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert utils.get_offset_position_ids(0, mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]
    assert utils.get_offset_position_ids(3, mask).tolist() == [[1, 2], [3, 4]]
    assert utils.get_cumsum_along_dim(torch.tensor([1, 2, 3]), 0, reverse=True).tolist() == [6, 5, 3]
    repeated = utils.repeat_along_head_dimension(torch.arange(6.0).reshape(1, 2, 3), n_heads=4)
    assert repeated.shape == (1, 2, 4, 3) and (repeated[:, :, 2] == torch.arange(6.0).reshape(1, 2, 3)).all()
    assert utils.filter_dict_by_prefix({"a.b": 1, "a.c": 2, "ab.d": 3}, "a") == {"b": 1, "c": 2}


def test_check_structure_prints_the_mismatches(capsys):
    t1 = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    utils.check_structure(t1, t1 * 2)
    utils.check_structure(t1, torch.tensor([[5.0, 2.0], [3.0, 4.0]]))
    assert capsys.readouterr().out == "PASSED\nrow mismatch: [0]\n"


def test_slice():
    x = torch.arange(10) * 10
    for slice_input, expected in [(3, 30), ((2, 5), [20, 30, 40]), ((1, 8, 3), [10, 40, 70]), ([1, 4], [10, 40]),
                                  (torch.tensor([9, 0]), [90, 0]), (None, x.tolist())]:
        assert utils.Slice(slice_input).apply(x).tolist() == expected, slice_input
    assert utils.Slice(4).indices().tolist() == [4] and utils.Slice((2, 8, 2)).indices(10).tolist() == [2, 4, 6]
    assert utils.Slice.unwrap(3).apply(x[None], dim=1).shape == (1, 1)  # unwrap keeps the dim
    assert utils.Slice(-1).apply(torch.zeros(2, 3, 4), dim=-1).shape == (2, 3)
    assert repr(utils.Slice(3)) == "Slice: 3 Mode: int "
    with pytest.raises(ValueError, match="Invalid input_slice"):
        utils.Slice(2.5)
    with pytest.raises(ValueError, match="max_ctx"):
        utils.Slice((1, 3)).indices()


def test_activation_functions():
    x = torch.linspace(-6, 6, 101, dtype=torch.float64)
    # Both are the tanh approximation of GELU (gelu_fast with the constant rounded to 1e-10).
    close(utils.gelu_new(x), F.gelu(x, approximate="tanh"), atol=1e-12)
    close(utils.gelu_fast(x), F.gelu(x, approximate="tanh"), atol=1e-9)
    logits = torch.randn(2, 3, 5, dtype=torch.float64)
    close(utils.solu(logits), logits * logits.exp() / logits.exp().sum(-1, keepdim=True), atol=1e-12)


def test_composition_scores_against_dense_products():
    generator = torch.Generator().manual_seed(5)
    left = FactoredMatrix(torch.randn(2, 3, 8, 2, generator=generator, dtype=torch.float64),
                          torch.randn(2, 3, 2, 8, generator=generator, dtype=torch.float64))
    right = FactoredMatrix(torch.randn(4, 8, 2, generator=generator, dtype=torch.float64),
                           torch.randn(4, 2, 8, generator=generator, dtype=torch.float64))
    scores = utils.composition_scores(left, right)
    assert scores.shape == (2, 3, 4)
    L, R = left.AB, right.AB
    for i in range(2):
        for j in range(3):
            for k in range(4):
                norm = torch.linalg.matrix_norm
                expected = norm(L[i, j] @ R[k]) / norm(L[i, j]) / norm(R[k])
                close(scores[i, j, k], expected, atol=1e-10)
    same = utils.composition_scores(left, FactoredMatrix(left.A, left.B), broadcast_dims=False)
    assert same.shape == (2, 3)
    close(same, torch.linalg.matrix_norm(L @ L) / torch.linalg.matrix_norm(L) ** 2, atol=1e-10)


# ---- utils: language-model metrics ------------------------------------------------------------------------
def test_lm_cross_entropy_loss_and_accuracy_against_torch():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 6, 11, generator=generator)
    tokens = torch.randint(0, 11, (3, 6), generator=generator)
    per_token = F.cross_entropy(logits[:, :-1].reshape(-1, 11), tokens[:, 1:].reshape(-1), reduction="none").view(3, 5)
    close(utils.lm_cross_entropy_loss(logits, tokens), per_token.mean())
    close(utils.lm_cross_entropy_loss(logits, tokens, per_token=True), per_token)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    pair_is_real = (mask[:, :-1] * mask[:, 1:]).bool()
    close(utils.lm_cross_entropy_loss(logits, tokens, attention_mask=mask), per_token[pair_is_real].mean())
    masked = utils.lm_cross_entropy_loss(logits, tokens, attention_mask=mask.bool(), per_token=True)
    close(masked, torch.where(pair_is_real, per_token, 0.0))  # masked pairs are 0, as TL
    with pytest.raises(ValueError, match="attention_mask"):
        utils.lm_cross_entropy_loss(logits, tokens, attention_mask=mask[:, :5])
    correct = [[logits[b, p].argmax().item() == tokens[b, p + 1].item() for p in range(5)] for b in range(3)]
    assert utils.lm_accuracy(logits, tokens, per_token=True).tolist() == correct
    close(utils.lm_accuracy(logits, tokens), torch.tensor(sum(map(sum, correct)) / 15))


# ---- utils: tokenizer helpers ---------------------------------------------------------------------------
def fake_tokenizer(pad, bos, side="right", eos=None):
    return types.SimpleNamespace(pad_token_id=pad, bos_token_id=bos, eos_token_id=eos, padding_side=side)


def test_get_attention_mask_left_and_right_padding():
    right = torch.tensor([[5, 6, 7, 0, 0], [0, 6, 0, 7, 8]])  # pad = 0: only the trailing run is padding
    assert utils.get_attention_mask(fake_tokenizer(0, 9), right, True).tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    left = torch.tensor([[0, 0, 5, 0, 6], [5, 6, 7, 8, 0]])
    assert utils.get_attention_mask(fake_tokenizer(0, 9, "left"), left, True).tolist() == [[0, 0, 1, 1, 1],
                                                                                            [1, 1, 1, 1, 1]]
    # padding_side overrides the tokenizer's; with BOS == pad the last leading pad is the BOS, kept.
    bos_is_pad = fake_tokenizer(0, 0, "right")
    assert utils.get_attention_mask(bos_is_pad, left, True, padding_side="left").tolist() == [[0, 1, 1, 1, 1],
                                                                                                [1, 1, 1, 1, 1]]
    assert utils.get_attention_mask(bos_is_pad, left, False, padding_side="left").tolist()[0] == [0, 0, 1, 1, 1]
    assert utils.get_attention_mask(None, left, True).tolist() == [[1] * 5] * 2
    assert utils.get_attention_mask(fake_tokenizer(0, 9), right, True).dtype == right.dtype
    with pytest.raises(ValueError, match="pad_token"):
        utils.get_attention_mask(fake_tokenizer(None, 9), right, True)


def test_bos_helpers():
    assert utils.get_input_with_manually_prepended_bos("<s>", "hi") == "<s>hi"
    assert utils.get_input_with_manually_prepended_bos("<s>", ["a", "b"]) == ["<s>a", "<s>b"]
    assert utils.get_input_with_manually_prepended_bos(None, "hi") == "hi"
    right = torch.tensor([[9, 5, 6], [9, 5, 0]])
    assert utils.get_tokens_with_bos_removed(fake_tokenizer(0, 9), right).tolist() == [[5, 6], [5, 0]]
    left = torch.tensor([[0, 9, 5], [9, 5, 6]])
    assert utils.get_tokens_with_bos_removed(fake_tokenizer(0, 9, "left"), left).tolist() == [[0, 5], [5, 6]]
    bos_is_pad = torch.tensor([[0, 0, 5], [0, 5, 6]])  # the BOS is the last of the leading 0s
    assert utils.get_tokens_with_bos_removed(fake_tokenizer(0, 0, "left"), bos_is_pad).tolist() == [[0, 5], [5, 6]]
    assert utils.get_tokens_with_bos_removed(fake_tokenizer(0, None), right) is right


class WordTokenizer:
    """Each word is its id (its length), EOS 0, BOS 1; enough for tokenize_and_concatenate."""
    eos_token_id, bos_token_id, pad_token_id = 0, 1, None

    def __call__(self, texts, add_special_tokens=True):
        return {"input_ids": [[len(word) + 10 for word in text.split()] for text in texts]}


def test_tokenize_and_concatenate_a_list_of_strings():
    texts = ["a bb ccc", "dddd", "ee f"]  # ids 11 12 13 | 14 | 12 11, joined by EOS 0
    rows = utils.tokenize_and_concatenate(texts, WordTokenizer(), max_length=4)["tokens"]
    # 8 ids [11 12 13 0 14 0 12 11] make 2 rows of 3 (+ BOS); the incomplete rest [12 11] is dropped, as TL.
    assert rows.dtype == torch.int64 and rows.tolist() == [[1, 11, 12, 13], [1, 0, 14, 0]]
    short = utils.tokenize_and_concatenate(["a"], WordTokenizer(), max_length=4, add_bos_token=False)["tokens"]
    assert short.tolist() == [[11, 0, 0, 0]]  # shorter than a row: padded with EOS (no pad token)
    with pytest.raises((ImportError, TypeError), match="list of strings"):
        utils.tokenize_and_concatenate(42, WordTokenizer())


def test_downloads_raise_clearly():
    with pytest.raises(NotImplementedError, match="hf_hub_download"):
        utils.download_file_from_hf("gpt2", "config.json")
    with pytest.raises(NotImplementedError, match="load_dataset"):
        utils.get_dataset("pile")
    assert utils.USE_DEFAULT_VALUE is None and utils.override_or_use_default_value(True, None) is True
    assert utils.override_or_use_default_value(True, False) is False
    assert utils.is_library_available("torch") and not utils.is_library_available("surely_not_a_package_xyz")


# ---- utils: sampling -------------------------------------------------------------------------------------
def test_sample_logits_greedy_and_penalties():
    logits = torch.tensor([[5.0, 4.0, 0.0, -1.0]])
    assert utils.sample_logits(logits, temperature=0.0).tolist() == [0]
    once, twice = torch.tensor([[0, 2]]), torch.tensor([[0, 0, 3]])
    # top_k=1 makes the draw the argmax, so the thresholds show the penalty: token 0's logit 5 is lowered by
    # freq_penalty x count (after dividing by the temperature) and loses to token 1 (4) once below it.
    for penalty, tokens, temperature, expected in [(0.9, once, 1.0, 0), (1.1, once, 1.0, 1), (0.4, twice, 1.0, 0),
                                                   (0.6, twice, 1.0, 1), (0.4, once, 2.0, 0), (0.6, once, 2.0, 1)]:
        sampled = utils.sample_logits(logits, top_k=1, temperature=temperature, freq_penalty=penalty, tokens=tokens)
        assert sampled.tolist() == [expected], (penalty, tokens, temperature)
    # Repetition penalty (HF style): a present positive logit is divided, so 5 / 1.3 = 3.85 < 4.
    assert utils.sample_logits(logits, top_k=1, repetition_penalty=1.3, tokens=once).tolist() == [1]
    assert utils.sample_logits(logits, temperature=0.0, repetition_penalty=1.3, tokens=once).tolist() == [1]
    assert utils.sample_logits(logits, top_k=1, repetition_penalty=1.2, tokens=once).tolist() == [0]  # 4.17
    assert torch.equal(logits, torch.tensor([[5.0, 4.0, 0.0, -1.0]]))  # the input is not modified
    with pytest.raises(ValueError, match="tokens="):
        utils.sample_logits(logits, freq_penalty=1.0)
    with pytest.raises(ValueError, match="top_k"):
        utils.sample_logits(logits, top_k=0)
    with pytest.raises(ValueError, match="top_p"):
        utils.sample_logits(logits, top_p=0.0)
    with pytest.raises(ValueError, match="token ids"):
        utils.sample_logits(logits, freq_penalty=1.0, tokens=torch.tensor([[7]]))


def test_sample_logits_distribution_top_k_and_top_p():
    torch.manual_seed(0)
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().expand(20000, 4)

    def frequencies(**kwargs):
        return torch.bincount(utils.sample_logits(logits, **kwargs), minlength=4).float() / 20000

    # 20000 draws: the standard error of a frequency is below 0.004, so 0.02 is > 5 sigma.
    close(frequencies(), probs, atol=0.02)
    close(frequencies(temperature=2.0), torch.softmax(probs.log() / 2, -1), atol=0.02)
    # top_k=2 and top_p=0.7 (cumulative 0.5, 0.8: the nucleus is the first two) renormalise over {0, 1}.
    nucleus = torch.tensor([0.5, 0.3, 0.0, 0.0]) / 0.8
    close(frequencies(top_k=2), nucleus, atol=0.02)
    close(frequencies(top_p=0.7), nucleus, atol=0.02)
    assert frequencies(top_p=0.4)[0] == 1.0  # the top token is always kept
    assert frequencies(top_k=100).min() > 0  # top_k above d_vocab keeps everything (clamped, as TL)


# ---- utils: test_prompt ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def toy_model():
    from interp import HookedTransformer
    return HookedTransformer.from_pretrained("interp-toy")


def expected_report(model, prompt, answer_tokens, answer_strings, top_k):
    """What TL's test_prompt prints for one answer, from a dense forward in this test."""
    prompt_tokens = model.to_tokens(prompt)
    tokens = torch.cat([prompt_tokens, torch.tensor([answer_tokens])], dim=1)
    logits = model(tokens)[0]
    lines = [f"Tokenized prompt: {model.to_str_tokens(prompt)}", f"Tokenized answer: {answer_strings}"]
    ranks = []
    for offset, (token, string) in enumerate(zip(answer_tokens, answer_strings)):
        position_logits = logits[prompt_tokens.shape[1] + offset - 1]
        probs = position_logits.softmax(-1)
        rank = int((probs > probs[token]).sum())
        ranks.append((string, rank))
        lines.append("Performance on answer token:")
        lines.append(f"Rank: {rank: <8} Logit: {position_logits[token].item():5.2f} "
                     f"Prob: {probs[token].item():6.2%} Token: |{string}|")
        for i, top in enumerate(probs.argsort(descending=True)[:top_k].tolist()):
            lines.append(f"Top {i}th token. Logit: {position_logits[top].item():5.2f} Prob: {probs[top].item():6.2%} "
                         f"Token: |{model.to_string([top])}|")
    lines.append(f"Ranks of the answer tokens: {ranks}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("with_rich", [True, False], ids=["rich", "plain-print"])
def test_test_prompt_prints_ranks_logits_and_top_tokens(toy_model, capsys, monkeypatch, with_rich):
    if not with_rich:
        monkeypatch.setitem(__import__("sys").modules, "rich", None)  # import rich -> ImportError
    prompt, answer = "To be, or not to", "be"
    answer_tokens = toy_model.to_tokens(" be", prepend_bos=False)[0].tolist()
    answer_strings = toy_model.to_str_tokens(" be", prepend_bos=False)
    utils.test_prompt(prompt, answer, toy_model, top_k=3)
    assert capsys.readouterr().out == expected_report(toy_model, prompt, answer_tokens, answer_strings, top_k=3)
    utils.test_prompt(prompt, answer, toy_model, print_details=False)
    assert capsys.readouterr().out.startswith("Ranks of the answer tokens: [(' be', ")


def test_test_prompt_with_several_answers(toy_model, capsys):
    utils.test_prompt("To be, or not to", ["be", " see"], toy_model, top_k=0)
    out = capsys.readouterr().out.splitlines()
    assert out[1].startswith("Tokenized answers: [[") and out[2] == "Performance on answer tokens:"
    assert out[3].startswith("Rank: ") and out[4].startswith("Rank: ")
    assert out[5].startswith("Ranks of the answer tokens: [[(")
    with pytest.raises(ValueError, match="answer"):
        utils.test_prompt("To be", [], toy_model)
