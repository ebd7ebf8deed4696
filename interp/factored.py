"""FactoredMatrix: a product A @ B kept as its two factors, for QK and OV circuits.

In "A Mathematical Framework for Transformer Circuits" (Elhage et al. 2021) a head reads the
residual stream through W_QK = W_Q W_Kᵀ and writes W_OV = W_V W_O. Both are d_model x d_model
(or d_vocab x d_vocab once embedded and unembedded: 50257² floats = 10 GB for GPT-2) but have rank
at most d_head. Keeping the factors A `[..., ldim, mdim]` and B `[..., mdim, rdim]` makes that size
free: products, norms, singular values and eigenvalues are computed through the small inner
dimension mdim, at O((ldim + rdim) mdim²) cost, and `.AB` is the only thing that forms the dense
`[..., ldim, rdim]` product.

Row-vector convention, as in the model (`x @ W`): `x @ fm` is a row vector mapped by the product,
`fm @ y` a column vector. Leading dims (e.g. `[layer, head]`) broadcast between A and B like
`torch.matmul`, and are stored as broadcast views (no copies).
"""

from __future__ import annotations

import numbers
import operator

import torch
from jaxtyping import Complex, Float
from torch import Tensor

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def for_linalg(tensor: Tensor) -> Tensor:
    """The tensor in a dtype torch.linalg supports: float16 and bfloat16 become float32."""
    return tensor.float() if tensor.dtype in _LOW_PRECISION else tensor


class FactoredMatrix:
    """The product A @ B of A `[*batch, ldim, mdim]` and B `[*batch, mdim, rdim]`, never formed."""

    def __init__(self, A: Float[Tensor, "*batch_a ldim mdim"], B: Float[Tensor, "*batch_b mdim rdim"]):
        for name, factor in (("A", A), ("B", B)):
            if not isinstance(factor, Tensor) or factor.ndim < 2:
                got = f"shape {tuple(factor.shape)}" if isinstance(factor, Tensor) else type(factor).__name__
                raise ValueError(f"{name} must be a tensor with at least 2 dims [..., rows, cols], got {got}; "
                                 "use x[None, :] or x[:, None] for a vector.")
        if A.shape[-1] != B.shape[-2]:
            raise ValueError(f"Inner dims differ: A {tuple(A.shape)} has {A.shape[-1]} columns but B "
                             f"{tuple(B.shape)} has {B.shape[-2]} rows; they must be equal.")
        if A.dtype != B.dtype:
            raise ValueError(f"A has dtype {A.dtype} but B has dtype {B.dtype}; convert one, "
                             "e.g. B.to(A.dtype).")
        if A.device != B.device:
            raise ValueError(f"A is on {A.device} but B is on {B.device}; move one, e.g. B.to(A.device).")
        try:
            batch = torch.broadcast_shapes(A.shape[:-2], B.shape[:-2])
        except RuntimeError:
            raise ValueError(f"Leading dims of A {tuple(A.shape)} and B {tuple(B.shape)} do not broadcast; "
                             "they must be equal or 1 (align them with unsqueeze).") from None
        self._A = A.expand(*batch, *A.shape[-2:])
        self._B = B.expand(*batch, *B.shape[-2:])
        self._svd: tuple[Tensor, Tensor, Tensor] | None = None

    # ---- shape and factors -------------------------------------------------------------------
    @property
    def A(self) -> Float[Tensor, "*batch ldim mdim"]:
        return self._A

    @property
    def B(self) -> Float[Tensor, "*batch mdim rdim"]:
        return self._B

    @property
    def pair(self) -> tuple[Tensor, Tensor]:
        return self._A, self._B

    @property
    def ldim(self) -> int:
        return self._A.shape[-2]

    @property
    def mdim(self) -> int:
        return self._A.shape[-1]

    @property
    def rdim(self) -> int:
        return self._B.shape[-1]

    @property
    def shape(self) -> torch.Size:
        """Shape of the product: leading dims + (ldim, rdim)."""
        return torch.Size((*self._A.shape[:-2], self.ldim, self.rdim))

    @property
    def ndim(self) -> int:
        return self._A.ndim

    @property
    def dtype(self) -> torch.dtype:
        return self._A.dtype

    @property
    def device(self) -> torch.device:
        return self._A.device

    def __repr__(self) -> str:
        return f"FactoredMatrix(shape={tuple(self.shape)}, mdim={self.mdim}, dtype={self.dtype})"

    # ---- dense views ---------------------------------------------------------------------------
    @property
    def AB(self) -> Float[Tensor, "*batch ldim rdim"]:
        """The dense product; ldim x rdim per batch element, so beware of large ones."""
        return self._A @ self._B

    @property
    def BA(self) -> Float[Tensor, "*batch mdim mdim"]:
        """B @ A, the small matrix sharing the nonzero eigenvalues of AB; needs ldim == rdim."""
        self._require_square("BA")
        return self._B @ self._A

    @property
    def T(self) -> FactoredMatrix:
        """The transpose (AB)ᵀ = Bᵀ Aᵀ."""
        return FactoredMatrix(self._B.transpose(-1, -2), self._A.transpose(-1, -2))

    def get_corner(self, k: int = 3) -> Float[Tensor, "*batch k k"]:
        """Dense AB[..., :k, :k], computed from the first k rows of A and columns of B."""
        return self._A[..., :k, :] @ self._B[..., :, :k]

    # ---- algebra -------------------------------------------------------------------------------
    def __matmul__(self, other: Tensor | FactoredMatrix) -> FactoredMatrix | Tensor:
        """fm @ M for M `[..., rdim, x]` (a FactoredMatrix), or fm @ v for v `[rdim]` (dense `[..., ldim]`)."""
        if isinstance(other, FactoredMatrix):
            self._check_inner(other.ldim, f"FactoredMatrix {tuple(other.shape)}", "ldim")
            middle = self._B @ other.A  # [..., k1, k2], k1 = self.mdim, k2 = other.mdim; keep the smaller
            if self.mdim <= other.mdim:
                return FactoredMatrix(self._A, middle @ other.B)
            return FactoredMatrix(self._A @ middle, other.B)
        if not isinstance(other, Tensor):
            return NotImplemented
        if other.ndim == 1:
            self._check_inner(other.shape[0], f"vector {tuple(other.shape)}", "length")
            return (self._A @ (self._B @ other)[..., None])[..., 0]  # [..., mdim, 1] keeps batches aligned
        self._check_inner(other.shape[-2], f"tensor {tuple(other.shape)}", "dim -2")
        return FactoredMatrix(self._A, self._B @ other)

    def __rmatmul__(self, other: Tensor) -> FactoredMatrix | Tensor:
        """M @ fm for M `[..., x, ldim]` (a FactoredMatrix), or v @ fm for v `[ldim]` (dense `[..., rdim]`)."""
        if not isinstance(other, Tensor):
            return NotImplemented
        size = other.shape[-1]
        if size != self.ldim:
            raise ValueError(f"Cannot multiply tensor {tuple(other.shape)} by FactoredMatrix "
                             f"{tuple(self.shape)}: the tensor's last dim ({size}) must equal ldim ({self.ldim}).")
        if other.ndim == 1:
            return ((other @ self._A)[..., None, :] @ self._B)[..., 0, :]  # [..., 1, mdim] keeps batches aligned
        return FactoredMatrix(other @ self._A, self._B)

    def _check_inner(self, size: int, what: str, which: str) -> None:
        if size != self.rdim:
            raise ValueError(f"Cannot multiply FactoredMatrix {tuple(self.shape)} by {what}: "
                             f"rdim ({self.rdim}) must equal the other's {which} ({size}).")

    def __mul__(self, scalar: float | Tensor) -> FactoredMatrix:
        """Scale the product by a Python number or a 0-d tensor (applied to A)."""
        if isinstance(scalar, Tensor) and scalar.ndim != 0:
            raise ValueError(f"Only scalars (numbers or 0-d tensors) can multiply a FactoredMatrix, got "
                             f"a tensor of shape {tuple(scalar.shape)}; use .AB for elementwise products.")
        if not isinstance(scalar, (numbers.Number, Tensor)):
            return NotImplemented
        return FactoredMatrix(self._A * scalar, self._B)

    __rmul__ = __mul__

    def __neg__(self) -> FactoredMatrix:
        return FactoredMatrix(-self._A, self._B)

    # ---- spectra and norms ---------------------------------------------------------------------
    def svd(self) -> tuple[Float[Tensor, "*batch ldim k"], Float[Tensor, "*batch k"], Float[Tensor, "*batch rdim k"]]:
        """(U, S, V) with AB = U diag(S) Vᵀ, S descending, k = min(ldim, mdim, rdim) (AB's maximal rank).

        U and V have orthonormal columns. Computed from reduced QRs A = Q_A R_A and Bᵀ = Q_B R_B and
        the SVD of the small core R_A R_Bᵀ; the ldim x rdim product is never formed. float16 and
        bfloat16 factors are computed and returned in float32. Cached after the first call.
        """
        if self._svd is None:
            Q_A, R_A = torch.linalg.qr(for_linalg(self._A))  # [..., ldim, p], [..., p, mdim]; p = min(ldim, mdim)
            Q_B, R_B = torch.linalg.qr(for_linalg(self._B).transpose(-1, -2))  # [..., rdim, q], [..., q, mdim]
            U_core, S, Vh_core = torch.linalg.svd(R_A @ R_B.transpose(-1, -2), full_matrices=False)
            self._svd = (Q_A @ U_core, S, Q_B @ Vh_core.transpose(-1, -2))
        return self._svd

    @property
    def U(self) -> Float[Tensor, "*batch ldim k"]:
        return self.svd()[0]

    @property
    def S(self) -> Float[Tensor, "*batch k"]:
        return self.svd()[1]

    @property
    def V(self) -> Float[Tensor, "*batch rdim k"]:
        return self.svd()[2]

    def collapse_l(self) -> Float[Tensor, "*batch k rdim"]:
        """diag(S) Vᵀ, so that AB = U @ collapse_l()."""
        U, S, V = self.svd()
        return S[..., :, None] * V.transpose(-1, -2)

    def collapse_r(self) -> Float[Tensor, "*batch ldim k"]:
        """U diag(S), so that AB = collapse_r() @ Vᵀ."""
        U, S, V = self.svd()
        return U * S[..., None, :]

    @property
    def eigenvalues(self) -> Complex[Tensor, "*batch mdim"]:
        """Eigenvalues of BA, by decreasing magnitude; needs ldim == rdim.

        They are the nonzero eigenvalues of AB (AB has ldim - mdim more zeros); if mdim > ldim, the
        last mdim - ldim are zero up to rounding. float16 and bfloat16 are computed in float32.
        """
        self._require_square("eigenvalues")
        values = torch.linalg.eigvals(for_linalg(self._B) @ for_linalg(self._A))
        order = values.abs().argsort(dim=-1, descending=True, stable=True)
        return values.gather(-1, order)

    def norm(self) -> Float[Tensor, "*batch"]:
        """Frobenius norm of AB, from ‖AB‖_F² = sum((AᵀA) * (B Bᵀ)); float16/bfloat16 in float32."""
        A, B = for_linalg(self._A), for_linalg(self._B)
        squared = ((A.transpose(-1, -2) @ A) * (B @ B.transpose(-1, -2))).sum(dim=(-1, -2))
        return squared.clamp_min(0).sqrt()

    def _require_square(self, what: str) -> None:
        if self.ldim != self.rdim:
            raise ValueError(f"{what} needs a square product, but ldim={self.ldim} != rdim={self.rdim} "
                             f"(shape {tuple(self.shape)}); use svd() for a non-square one.")

    # ---- leading (batch) dims --------------------------------------------------------------------
    def __getitem__(self, key: int | slice | tuple[int | slice, ...]) -> FactoredMatrix:
        """Index the leading dims only, e.g. fm[layer, head]; entries of the product need .AB."""
        key = key if isinstance(key, tuple) else (key,)
        batch = self._A.shape[:-2]
        if len(key) > len(batch):
            raise IndexError(f"Too many indices ({len(key)}) for FactoredMatrix {tuple(self.shape)}: only the "
                             f"{len(batch)} leading (batch) dims can be indexed; use .AB[...] for entries.")
        for dim, (item, size) in enumerate(zip(key, batch)):
            if isinstance(item, slice):
                continue
            try:
                index = operator.index(item)
            except TypeError:
                raise TypeError(f"FactoredMatrix indices must be ints or slices, got {type(item).__name__}.") from None
            if not -size <= index < size:
                raise IndexError(f"index {index} out of range for dim {dim} of size {size} "
                                 f"(valid: 0..{size - 1} or -{size}..-1).")
        return FactoredMatrix(self._A[key], self._B[key])

    def unsqueeze(self, dim: int) -> FactoredMatrix:
        """Insert a leading dim of size 1 at position dim (counted among the leading dims)."""
        n_leading = self.ndim - 2
        if not -(n_leading + 1) <= dim <= n_leading:
            raise IndexError(f"dim {dim} out of range for {n_leading} leading dims "
                             f"(valid: {-(n_leading + 1)}..{n_leading}).")
        dim = dim if dim >= 0 else dim + n_leading + 1
        return FactoredMatrix(self._A.unsqueeze(dim), self._B.unsqueeze(dim))

    # ---- conversion ----------------------------------------------------------------------------
    def to(self, *args, **kwargs) -> FactoredMatrix:
        """Both factors through Tensor.to (dtype, device)."""
        return FactoredMatrix(self._A.to(*args, **kwargs), self._B.to(*args, **kwargs))

    def float(self) -> FactoredMatrix:
        return self.to(torch.float32)

    def double(self) -> FactoredMatrix:
        return self.to(torch.float64)
