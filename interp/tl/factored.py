"""TransformerLens 3.9's `FactoredMatrix` semantics on top of `interp.factored.FactoredMatrix`.

The base class keeps A `[..., ldim, mdim]` and B `[..., mdim, rdim]` and never forms A @ B. This
subclass changes what TransformerLens scripts observe:

- indexing reaches the product's rows and columns: with one index more than the leading dims the
  last one picks rows of A, with two more the last two pick rows of A and columns of B, and an int
  there keeps its dim: on `[layer, head, l, r]`, `fm[0, 3]` is head 3 of layer 0 `[l, r]` and
  `fm[0, 3, 5]` its row 5 `[1, r]`; on `[l, r]`, `fm[:50]` is `[50, r]` and `full_OV[idx, idx]` keeps
  the rows and columns in idx;
- `svd()` is TL's algorithm (SVDs of A, B and their small middle), so singular vectors carry TL's
  signs; `V`/`Vh` are the right singular vectors (TL's `Vh` is a deprecated alias of `V`, not Vᵀ);
- `eigenvalues` is `torch.linalg.eig(BA)` in LAPACK's order (unsorted), `norm()` is ‖S‖₂;
- `@` re-factors the way TL does (the result's inner dim is TL's), `get_corner(k)` slices every
  dim, leading ones too, and `unsqueeze(k)` counts dims as `Tensor.unsqueeze` on A does;
- every operation returns this class, never the base.
"""

from __future__ import annotations

import numbers
import operator
import warnings
from typing import Any

import torch
from jaxtyping import Complex, Float
from torch import Tensor

from interp.factored import FactoredMatrix as BaseFactoredMatrix
from interp.factored import for_linalg


def _as_row_or_column_index(item: Any, size: int, what: str) -> Any:
    """An integer index becomes a length-1 slice (TL keeps the row/column dim); others pass through."""
    if isinstance(item, bool) or item is None or isinstance(item, (slice, list)):
        return item
    if isinstance(item, Tensor) and (item.ndim != 0 or item.is_floating_point() or item.dtype == torch.bool):
        return item
    try:
        index = operator.index(item)
    except TypeError:
        return item
    if not -size <= index < size:
        raise IndexError(f"{what} index {index} is out of range for size {size} (valid: 0..{size - 1} "
                         f"or -{size}..-1).")
    return slice(index, index + 1 if index != -1 else None)


class FactoredMatrix(BaseFactoredMatrix):
    """The product A @ B of A `[*batch, ldim, mdim]` and B `[*batch, mdim, rdim]`, with TL 3.9's API."""

    @classmethod
    def from_interp(cls, matrix: BaseFactoredMatrix) -> FactoredMatrix:
        """The same factors (views, no copies) as this class, e.g. `FactoredMatrix.from_interp(model.OV)`."""
        if isinstance(matrix, cls):
            return matrix
        if not isinstance(matrix, BaseFactoredMatrix):
            raise TypeError(f"from_interp takes an interp FactoredMatrix, got {type(matrix).__name__}; "
                            "build one from factors with FactoredMatrix(A, B).")
        return cls(matrix.A, matrix.B)

    def __repr__(self) -> str:
        return f"FactoredMatrix: Shape({self.shape}), Hidden Dim({self.mdim})"

    @property
    def has_leading_dims(self) -> bool:
        return self.ndim > 2

    # ---- dense views ---------------------------------------------------------------------------
    @property
    def T(self) -> FactoredMatrix:
        """The transpose (AB)ᵀ = Bᵀ Aᵀ."""
        return FactoredMatrix(self.B.transpose(-2, -1), self.A.transpose(-2, -1))

    def get_corner(self, k: int = 3) -> Float[Tensor, "..."]:
        """Dense AB sliced to `:k` in every dim, leading dims included (TL's `utils.get_corner`)."""
        corner = self.A[..., :k, :] @ self.B[..., :, :k]
        return corner[tuple(slice(k) for _ in range(corner.ndim))]

    # ---- algebra -------------------------------------------------------------------------------
    def __matmul__(self, other: Tensor | BaseFactoredMatrix) -> FactoredMatrix | Tensor:
        """fm @ M: a FactoredMatrix (re-factored as TL: `(A, B @ M)` if rdim > mdim, else `(AB, M)`);
        fm @ v for a vector v `[rdim]`: the dense `[..., ldim]`."""
        if isinstance(other, BaseFactoredMatrix):
            return (self @ other.A) @ other.B
        if not isinstance(other, Tensor):
            return NotImplemented
        if other.ndim < 2:
            if other.ndim == 0 or other.shape[0] != self.rdim:
                raise ValueError(f"Cannot multiply FactoredMatrix {tuple(self.shape)} by a vector of shape "
                                 f"{tuple(other.shape)}: it must have length rdim={self.rdim}.")
            return (self.A @ (self.B @ other.unsqueeze(-1))).squeeze(-1)
        if other.shape[-2] != self.rdim:
            raise ValueError(f"Cannot multiply FactoredMatrix {tuple(self.shape)} by tensor {tuple(other.shape)}: "
                             f"the tensor's dim -2 ({other.shape[-2]}) must equal rdim ({self.rdim}).")
        if self.rdim > self.mdim:
            return FactoredMatrix(self.A, self.B @ other)
        return FactoredMatrix(self.AB, other)

    def __rmatmul__(self, other: Tensor | BaseFactoredMatrix) -> FactoredMatrix | Tensor:
        """M @ fm: a FactoredMatrix (`(M @ A, B)` if ldim > mdim, else `(M, AB)`, as TL);
        v @ fm for a vector v `[ldim]`: the dense `[..., rdim]`."""
        if isinstance(other, BaseFactoredMatrix):
            return other.A @ (other.B @ self)
        if not isinstance(other, Tensor):
            return NotImplemented
        if other.ndim == 0 or other.shape[-1] != self.ldim:
            raise ValueError(f"Cannot multiply tensor {tuple(other.shape)} by FactoredMatrix {tuple(self.shape)}: "
                             f"the tensor's last dim must equal ldim ({self.ldim}).")
        if other.ndim == 1:
            return ((other.unsqueeze(-2) @ self.A) @ self.B).squeeze(-2)
        if self.ldim > self.mdim:
            return FactoredMatrix(other @ self.A, self.B)
        return FactoredMatrix(other, self.AB)

    def __mul__(self, scalar: float | Tensor) -> FactoredMatrix:
        """Scale the product by a number or a one-element tensor (applied to A)."""
        if isinstance(scalar, Tensor):
            if scalar.numel() != 1:
                raise ValueError(f"Only scalars (numbers or one-element tensors) can multiply a FactoredMatrix, "
                                 f"got shape {tuple(scalar.shape)}; use @ for matrix products.")
        elif not isinstance(scalar, numbers.Number):
            return NotImplemented
        return FactoredMatrix(self.A * scalar, self.B)

    __rmul__ = __mul__

    def __neg__(self) -> FactoredMatrix:
        return FactoredMatrix(-self.A, self.B)

    # ---- spectra and norms ---------------------------------------------------------------------
    def svd(self) -> tuple[Float[Tensor, "*batch ldim k"], Float[Tensor, "*batch k"], Float[Tensor, "*batch rdim k"]]:
        """(U, S, V) with AB = U diag(S) Vᵀ, k = min(ldim, mdim, rdim), S descending (TL's algorithm).

        A = U_A S_A V_Aᵀ and B = U_B S_B V_Bᵀ; the middle S_A V_Aᵀ U_B S_B is small, and its SVD
        U_M S V_Mᵀ gives U = U_A U_M and V = V_B V_M. float16/bfloat16 are computed in float32.
        Cached after the first call.
        """
        if self._svd is None:
            U_A, S_A, Vh_A = torch.linalg.svd(for_linalg(self.A), full_matrices=False)
            U_B, S_B, Vh_B = torch.linalg.svd(for_linalg(self.B), full_matrices=False)
            middle = (S_A[..., :, None] * Vh_A) @ (U_B * S_B[..., None, :])  # [..., min(l, m), min(m, r)]
            U_M, S, Vh_M = torch.linalg.svd(middle, full_matrices=False)
            self._svd = (U_A @ U_M, S, Vh_B.transpose(-2, -1) @ Vh_M.transpose(-2, -1))
        return self._svd

    @property
    def Vh(self) -> Float[Tensor, "*batch rdim k"]:
        """Deprecated in TL: the right singular vectors V (not Vᵀ), the same as `.V`."""
        warnings.warn("FactoredMatrix.Vh returns V (the right singular vectors), not Vᵀ; use .V instead "
                      "(and .V.transpose(-2, -1) for Vᵀ).", DeprecationWarning, stacklevel=2)
        return self.svd()[2]

    def make_even(self) -> FactoredMatrix:
        """The same product refactored as (U √S, √S Vᵀ): both factors carry half of each singular value."""
        U, S, V = self.svd()
        root = S.sqrt()
        return FactoredMatrix(U * root[..., None, :], root[..., :, None] * V.transpose(-2, -1))

    @property
    def eigenvalues(self) -> Complex[Tensor, "*batch mdim"]:
        """Eigenvalues of BA (the nonzero ones of AB), in `torch.linalg.eig`'s order; needs ldim == rdim."""
        self._require_square("eigenvalues")
        return torch.linalg.eig(for_linalg(self.B @ self.A)).eigenvalues

    def norm(self) -> Float[Tensor, "*batch"]:
        """Frobenius norm of AB: sqrt of the sum of squared singular values."""
        return self.S.pow(2).sum(-1).sqrt()

    # ---- indexing and leading dims ---------------------------------------------------------------
    def __getitem__(self, key: Any) -> FactoredMatrix:
        """TL's indexing: up to ndim - 2 indices act on the leading dims; one more also selects rows
        (of A), two more also columns (of B). An int on a row or column dim keeps that dim (size 1)."""
        key = self._expanded_key(key if isinstance(key, tuple) else (key,))
        n_leading = self.ndim - 2
        length = sum(item is not None for item in key)
        if length <= n_leading:
            return FactoredMatrix(self.A[key], self.B[key])
        if length > self.ndim:
            raise ValueError(f"{key} is too long an index for a FactoredMatrix of shape {tuple(self.shape)}: "
                             f"at most {self.ndim} indices ({n_leading} leading dims, rows, columns).")
        n_matrix = length - n_leading  # 1: rows; 2: rows and columns
        if any(item is None for item in key[-n_matrix:]):
            raise IndexError("None (a new axis) can only index the leading dims of a FactoredMatrix; "
                             "use .unsqueeze(dim) to add a leading dim.")
        if n_matrix == 1:
            rows = _as_row_or_column_index(key[-1], self.ldim, "row")
            return FactoredMatrix(self.A[key[:-1] + (rows,)], self.B[key[:-1]])
        rows = _as_row_or_column_index(key[-2], self.ldim, "row")
        columns = _as_row_or_column_index(key[-1], self.rdim, "column")
        return FactoredMatrix(self.A[key[:-2] + (rows,)], self.B[key[:-2] + (slice(None), columns)])

    def _expanded_key(self, key: tuple) -> tuple:
        """Replace `...` by the slices it stands for, counted over every dim of the product."""
        ellipses = [position for position, item in enumerate(key) if item is Ellipsis]
        if not ellipses:
            return key
        if len(ellipses) > 1:
            raise IndexError("A FactoredMatrix index can hold at most one ellipsis (...).")
        n_real = sum(item is not None and item is not Ellipsis for item in key)
        position = ellipses[0]
        return key[:position] + (slice(None),) * max(self.ndim - n_real, 0) + key[position + 1:]

    def unsqueeze(self, dim: int) -> FactoredMatrix:
        """Insert a leading dim of size 1; dim counts as in `A.unsqueeze(dim)`, e.g. 0 or -3 on a 2-d one."""
        position = dim + self.ndim + 1 if dim < 0 else dim
        if not 0 <= position <= self.ndim - 2:
            raise IndexError(f"unsqueeze({dim}) on a FactoredMatrix of shape {tuple(self.shape)} would not insert "
                             f"a leading dim; use 0..{self.ndim - 2} (or {-self.ndim - 1}..-3).")
        return FactoredMatrix(self.A.unsqueeze(position), self.B.unsqueeze(position))

    # ---- conversion ----------------------------------------------------------------------------
    def to(self, *args: Any, **kwargs: Any) -> FactoredMatrix:
        """Both factors through Tensor.to (dtype, device)."""
        return FactoredMatrix(self.A.to(*args, **kwargs), self.B.to(*args, **kwargs))
