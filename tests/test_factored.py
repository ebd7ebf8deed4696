"""FactoredMatrix against dense torch computations of the same product."""

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves, tree_map

from interp.factored import FactoredMatrix

# Random float64 factors with entries ~1: rounding errors are ~1e-13, so 1e-5 only tolerates summation
# order; any wrong formula, transpose or ordering is off by O(1).
TOL = dict(atol=1e-5, rtol=0)


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def factored(batch: tuple = (), ldim: int = 6, mdim: int = 3, rdim: int = 5, seed: int = 0) -> FactoredMatrix:
    return FactoredMatrix(randn(*batch, ldim, mdim, seed=seed), randn(*batch, mdim, rdim, seed=seed + 1))


def close(actual, expected):
    torch.testing.assert_close(actual, expected, **TOL)


def assert_same_multiset(actual: torch.Tensor, expected: torch.Tensor):
    """Equal complex values up to order: every value has a partner in the other set and counts agree."""
    assert actual.shape == expected.shape
    distances = (actual[:, None] - expected[None, :]).abs()
    assert distances.min(dim=0).values.max() < 1e-5 and distances.min(dim=1).values.max() < 1e-5


# ---- construction and dense views -----------------------------------------------------------------

def test_broadcast_leading_dims_are_views():
    A, B = randn(3, 5, 4, seed=0), randn(2, 1, 4, 6, seed=1)
    fm = FactoredMatrix(A, B)
    assert fm.shape == torch.Size((2, 3, 5, 6)) and fm.ndim == 4
    assert (fm.ldim, fm.mdim, fm.rdim) == (5, 4, 6)
    assert fm.A.shape == (2, 3, 5, 4) and fm.B.shape == (2, 3, 4, 6)
    assert fm.A.data_ptr() == A.data_ptr() and fm.A.stride(0) == 0  # expanded, not copied
    close(fm.AB, A @ B)
    assert fm.pair[0] is fm.A and fm.pair[1] is fm.B


def test_AB_BA_T():
    fm = factored((2,), ldim=5, mdim=3, rdim=5)
    close(fm.BA, fm.B @ fm.A)
    assert fm.BA.shape == (2, 3, 3)
    close(fm.T.AB, fm.AB.transpose(-1, -2))
    assert fm.T.shape == (2, 5, 5)


def test_repr():
    fm = FactoredMatrix(torch.zeros(()).expand(12, 12, 50257, 64), torch.zeros(()).expand(12, 12, 64, 50257))
    assert repr(fm) == "FactoredMatrix(shape=(12, 12, 50257, 50257), mdim=64, dtype=torch.float32)"


@pytest.mark.parametrize("A_shape, B_shape, message", [
    ((4, 3), (2, 5), r"A \(4, 3\) has 3 columns but B \(2, 5\) has 2 rows"),
    ((3, 4, 3), (2, 3, 5), r"Leading dims of A \(3, 4, 3\) and B \(2, 3, 5\) do not broadcast"),
    ((4,), (4, 5), r"A must be a tensor with at least 2 dims"),
], ids=["inner-mismatch", "batch-mismatch", "vector"])
def test_constructor_errors(A_shape, B_shape, message):
    with pytest.raises(ValueError, match=message):
        FactoredMatrix(torch.zeros(A_shape), torch.zeros(B_shape))


def test_dtype_mismatch_names_dtypes():
    with pytest.raises(ValueError, match="A has dtype torch.float32 but B has dtype torch.float64"):
        FactoredMatrix(torch.zeros(4, 3), torch.zeros(3, 5, dtype=torch.float64))


def test_BA_and_eigenvalues_need_square_product():
    fm = factored(ldim=6, rdim=5)
    with pytest.raises(ValueError, match="BA needs a square product, but ldim=6 != rdim=5"):
        fm.BA
    with pytest.raises(ValueError, match="eigenvalues needs a square product"):
        fm.eigenvalues


# ---- products --------------------------------------------------------------------------------------

def test_matmul_tensor_right_and_left():
    fm = factored((2, 3), ldim=6, mdim=3, rdim=5)
    M_right, M_left = randn(3, 5, 4, seed=7), randn(2, 1, 7, 6, seed=8)
    right, left = fm @ M_right, M_left @ fm
    assert isinstance(right, FactoredMatrix) and isinstance(left, FactoredMatrix)
    assert right.shape == (2, 3, 6, 4) and left.shape == (2, 3, 7, 5)
    close(right.AB, fm.AB @ M_right)
    close(left.AB, M_left @ fm.AB)


def test_matmul_vector_is_dense():
    fm = factored((2,), ldim=6, mdim=3, rdim=5)
    v_right, v_left = randn(5, seed=7), randn(6, seed=8)
    close(fm @ v_right, fm.AB @ v_right)
    close(v_left @ fm, v_left @ fm.AB)
    assert (fm @ v_right).shape == (2, 6) and (v_left @ fm).shape == (2, 5)


@pytest.mark.parametrize("mdim_1, mdim_2", [(2, 4), (4, 2), (3, 3)], ids=["k1<k2", "k1>k2", "k1=k2"])
def test_matmul_factored(mdim_1, mdim_2):
    first = factored((2, 1), ldim=6, mdim=mdim_1, rdim=5, seed=0)
    second = factored((3,), ldim=5, mdim=mdim_2, rdim=7, seed=10)
    product = first @ second
    assert product.shape == (2, 3, 6, 7)
    assert product.mdim == min(mdim_1, mdim_2)
    if mdim_1 <= mdim_2:  # A1 (B1 A2 B2): A1 kept as is
        assert product.A.data_ptr() == first.A.data_ptr()
    else:  # (A1 B1 A2) B2: B2 kept as is
        assert product.B.data_ptr() == second.B.data_ptr()
    close(product.AB, first.AB @ second.AB)


@pytest.mark.parametrize("other, message", [
    (torch.zeros(4, 2, dtype=torch.float64), r"rdim \(5\) must equal the other's dim -2 \(4\)"),
    (torch.zeros(4, dtype=torch.float64), r"rdim \(5\) must equal the other's length \(4\)"),
    (FactoredMatrix(torch.zeros(4, 2, dtype=torch.float64), torch.zeros(2, 3, dtype=torch.float64)),
     r"FactoredMatrix \(6, 5\) by FactoredMatrix \(4, 3\): rdim \(5\) must equal the other's ldim \(4\)"),
], ids=["tensor", "vector", "factored"])
def test_matmul_dim_mismatch(other, message):
    with pytest.raises(ValueError, match=message):
        factored(ldim=6, rdim=5) @ other


def test_rmatmul_dim_mismatch():
    message = r"tensor \(2, 4\) by FactoredMatrix \(6, 5\).*last dim \(4\) must equal ldim \(6\)"
    with pytest.raises(ValueError, match=message):
        torch.zeros(2, 4, dtype=torch.float64) @ factored(ldim=6, rdim=5)


def test_scalar_mul_and_neg():
    fm = factored((2,))
    close((fm * 2.5).AB, 2.5 * fm.AB)
    close((-3 * fm).AB, -3 * fm.AB)
    close((torch.tensor(0.5, dtype=torch.float64) * fm).AB, 0.5 * fm.AB)
    close((-fm).AB, -fm.AB)
    with pytest.raises(ValueError, match="Only scalars"):
        fm * torch.ones(3)


# ---- svd, eigenvalues, norm -----------------------------------------------------------------------

@pytest.mark.parametrize("batch, ldim, mdim, rdim", [
    ((), 7, 3, 5),     # mdim < ldim, rdim: the usual low-rank case
    ((), 3, 5, 6),     # mdim > ldim
    ((), 6, 5, 3),     # mdim > rdim
    ((), 4, 4, 4),     # full rank
    ((2, 3), 6, 2, 4),  # batched
])
def test_svd_matches_dense(batch, ldim, mdim, rdim):
    fm = factored(batch, ldim, mdim, rdim)
    U, S, V = fm.svd()
    k = min(ldim, mdim, rdim)
    assert U.shape == (*batch, ldim, k) and S.shape == (*batch, k) and V.shape == (*batch, rdim, k)
    close(S, torch.linalg.svdvals(fm.AB)[..., :k])
    close(U @ torch.diag_embed(S) @ V.transpose(-1, -2), fm.AB)
    eye = torch.eye(k, dtype=torch.float64).expand(*batch, k, k)
    close(U.transpose(-1, -2) @ U, eye)
    close(V.transpose(-1, -2) @ V, eye)
    assert fm.U is U and fm.S is S and fm.V is V  # cached


def test_collapse_reconstructs():
    fm = factored((2,), ldim=6, mdim=3, rdim=5)
    close(fm.U @ fm.collapse_l(), fm.AB)
    close(fm.collapse_r() @ fm.V.transpose(-1, -2), fm.AB)
    assert fm.collapse_l().shape == (2, 3, 5) and fm.collapse_r().shape == (2, 6, 3)


def test_svd_low_precision_runs_in_float32():
    fm = factored(ldim=5, mdim=3, rdim=5)
    half = fm.to(torch.bfloat16)
    assert all(t.dtype == torch.float32 for t in half.svd())
    assert half.eigenvalues.dtype == torch.complex64 and half.norm().dtype == torch.float32
    # bfloat16 keeps ~3 significant digits, so 2% of the largest singular value covers its rounding.
    torch.testing.assert_close(half.S.double(), fm.S, atol=0.02 * fm.S[0].item(), rtol=0)


@pytest.mark.parametrize("ldim, mdim", [(6, 3), (3, 5)], ids=["mdim<ldim", "mdim>ldim"])
def test_eigenvalues_match_dense(ldim, mdim):
    fm = factored((2,), ldim=ldim, mdim=mdim, rdim=ldim)
    values = fm.eigenvalues
    assert values.shape == (2, mdim) and values.is_complex()
    magnitudes = values.abs()
    assert (magnitudes[..., :-1] >= magnitudes[..., 1:]).all()
    n_nonzero = min(ldim, mdim)
    assert magnitudes[..., n_nonzero - 1].min() > 1e-3 and (magnitudes[..., n_nonzero:] < 1e-8).all()
    for b in range(2):
        dense = torch.linalg.eigvals(fm.AB[b])
        dense = dense[dense.abs().argsort(descending=True)][:n_nonzero]
        assert_same_multiset(values[b, :n_nonzero], dense)
        assert_same_multiset(values[b], torch.linalg.eigvals(fm.BA[b]))


def test_norm_matches_dense():
    fm = factored((2, 3), ldim=6, mdim=3, rdim=5)
    assert fm.norm().shape == (2, 3)
    close(fm.norm(), torch.linalg.matrix_norm(fm.AB, ord="fro"))


# ---- indexing and conversion -----------------------------------------------------------------------

def test_get_corner():
    fm = factored((2,), ldim=6, mdim=3, rdim=5)
    close(fm.get_corner(), fm.AB[..., :3, :3])
    close(fm.get_corner(4), fm.AB[..., :4, :4])


@pytest.mark.parametrize("key", [1, -1, (1, 2), (slice(None), 0), slice(0, 1), (0, slice(1, 3))],
                         ids=["[1]", "[-1]", "[1, 2]", "[:, 0]", "[0:1]", "[0, 1:3]"])
def test_indexing_leading_dims(key):
    fm = factored((2, 3), ldim=6, mdim=3, rdim=5)
    close(fm[key].AB, fm.AB[key])


def test_indexing_errors():
    fm = factored((12,), ldim=6, mdim=3, rdim=5)
    with pytest.raises(IndexError, match=r"only the 1 leading \(batch\) dims can be indexed; use .AB"):
        fm[0, 1]
    with pytest.raises(IndexError, match=r"index 12 out of range for dim 0 of size 12 \(valid: 0..11 or -12..-1\)"):
        fm[12]
    with pytest.raises(IndexError, match="index -13 out of range"):
        fm[-13]


def test_unsqueeze_and_conversion():
    fm = factored((2,), ldim=6, mdim=3, rdim=5)
    assert fm.unsqueeze(0).shape == (1, 2, 6, 5) and fm.unsqueeze(-1).shape == (2, 1, 6, 5)
    close(fm.unsqueeze(0).AB[0], fm.AB)
    assert fm.float().dtype == torch.float32 and fm.float().double().dtype == torch.float64
    assert fm.to(torch.float32).A.dtype == fm.to(torch.float32).B.dtype == torch.float32


# ---- vocabulary-sized product -----------------------------------------------------------------------

class NoTensorLargerThan(TorchFunctionMode):
    """Fails any torch call (function or tensor method) whose result would hold more than `limit`
    elements, before it runs: the call is first made on "meta" copies of its tensors, which have
    shapes but no data. `largest` is the size of the largest result seen."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit, self.largest = limit, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        on_meta = lambda x: x.to("meta") if isinstance(x, torch.Tensor) else x  # noqa: E731
        try:
            self._check(func, func(*tree_map(on_meta, args), **tree_map(on_meta, kwargs)))
        except (NotImplementedError, RuntimeError):
            pass  # no meta kernel (or one needing data): the real result is still checked below
        result = func(*args, **kwargs)
        self._check(func, result)
        return result

    def _check(self, func, result):
        for tensor in (x for x in tree_leaves(result) if isinstance(x, torch.Tensor)):
            self.largest = max(self.largest, tensor.numel())
            if tensor.numel() > self.limit:
                raise AssertionError(f"{func} makes a tensor of shape {tuple(tensor.shape)}: more than {self.limit:,} "
                                     "elements, so the dense product was (about to be) formed.")


def test_large_tensor_guard_catches_a_dense_product():
    A, B = torch.ones(1000, 4), torch.ones(4, 1000)
    with pytest.raises(AssertionError, match=r"\(1000, 1000\)"), NoTensorLargerThan(10_000):
        A @ B
    with NoTensorLargerThan(10_000) as guard:
        FactoredMatrix(A, B).norm()
    assert 0 < guard.largest <= 4000


def test_svd_and_norm_of_vocab_sized_product():
    # Dense, this product would be 50257² float32 = 10 GB and ~160 GFLOP; svd and norm work through
    # mdim instead. Their time and memory are measured in benchmarks/bench_circuits.py.
    generator = torch.Generator().manual_seed(0)
    A, B = torch.randn(50257, 64, generator=generator), torch.randn(64, 50257, generator=generator)
    fm = FactoredMatrix(A, B)
    # Nothing bigger than a factor is ever made (QR factors, U and V are 50257 x 64).
    with NoTensorLargerThan(A.numel()):
        U, S, V = fm.svd()
        norm = fm.norm()
    assert U.shape == (50257, 64) and S.shape == (64,) and V.shape == (50257, 64)
    # Reference through a different route, in float64: with AᵀA = L Lᵀ, the squared singular values
    # of AB are the eigenvalues of Lᵀ (B Bᵀ) L.
    A64, B64 = A.double(), B.double()
    L = torch.linalg.cholesky(A64.T @ A64)
    reference = torch.linalg.eigvalsh(L.T @ (B64 @ B64.T) @ L).flip(0).sqrt()
    # float32 QR of 50257-long columns: relative error ~1e-6; 1e-4 leaves room, a wrong value is O(1).
    torch.testing.assert_close(S.double(), reference, rtol=1e-4, atol=0)
    torch.testing.assert_close(U[:5] @ torch.diag(S) @ V[:5].T, fm.get_corner(5), rtol=1e-4, atol=1e-2)
    # ‖AB‖_F = ‖R_A R_Bᵀ‖_F since Q_A, Q_B have orthonormal columns.
    R_A, R_B = torch.linalg.qr(A64, mode="r")[1], torch.linalg.qr(B64.T, mode="r")[1]
    torch.testing.assert_close(norm.double(), torch.linalg.matrix_norm(R_A @ R_B.T), rtol=1e-4, atol=0)
