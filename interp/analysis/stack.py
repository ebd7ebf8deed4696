"""`ComponentStack`: residual-stream components stacked on a leading axis, one label each, with short
notebook displays (the largest components by mean norm; a `[layer, head]` table for per-head stacks).

The decompositions that build stacks are in `interp.analysis.decompose`.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass
from typing import Any, Union

from jaxtyping import Float
from torch import Tensor

from interp.display import MAX_HTML_CELLS, block_html, format_number, plural, table_html

PosSlice = Union[int, slice, None]


@dataclass(frozen=True, eq=False)
class ComponentStack:
    """Residual-stream components stacked on a leading axis, one label each."""

    components: Float[Tensor, "component *batch_and_pos d_model"]
    labels: list[str]
    pos_slice: PosSlice = None  # the positions the components cover (so LN scales can be sliced alike)

    def __post_init__(self) -> None:
        if len(self.labels) != self.components.shape[0]:
            raise ValueError(f"{len(self.labels)} labels for {self.components.shape[0]} components; give one label each.")

    def sum(self) -> Float[Tensor, "*batch_and_pos d_model"]:
        """The sum over components (the residual stream they decompose)."""
        return self.components.sum(0)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, label: str) -> Float[Tensor, "*batch_and_pos d_model"]:
        if label not in self.labels:
            close = difflib.get_close_matches(label, self.labels, n=3)
            raise KeyError(f"No component {label!r}. " + (f"Did you mean {close}?" if close else "See .labels."))
        return self.components[self.labels.index(label)]

    def to(self, *args: Any, **kwargs: Any) -> ComponentStack:
        """The stack with `components.to(*args, **kwargs)` (device and/or dtype)."""
        return dataclasses.replace(self, components=self.components.to(*args, **kwargs))

    # ----- display ----------------------------------------------------------------------------
    def mean_norms(self) -> Float[Tensor, "component"]:
        """Each component's L2 norm over d_model, averaged over batch and positions (float32, on CPU)."""
        vectors = self.components.detach().float()
        return vectors.norm(dim=-1).reshape(len(self.labels), -1).mean(-1).cpu()

    def _header(self) -> str:
        shape = tuple(self.components.shape)
        where = "" if self.pos_slice is None else f", pos_slice={self.pos_slice!r}"
        return (f"{plural(len(self.labels), 'component')} x batch/pos {list(shape[1:-1])} x d_model {shape[-1]}"
                f"{where}, {str(self.components.dtype).removeprefix('torch.')}")

    def _largest(self, k: int) -> list[tuple[str, float]]:
        norms = self.mean_norms()
        order = norms.argsort(descending=True, stable=True)[:k]
        return [(self.labels[int(i)], float(norms[i])) for i in order]

    def __repr__(self) -> str:
        labels = ", ".join(self.labels[:4]) + (f", ..., {self.labels[-1]}" if len(self.labels) > 4 else "")
        top = ", ".join(f"{label} {format_number(norm)}" for label, norm in self._largest(3))
        return f"ComponentStack({self._header()}\n  labels: {labels}\n  largest mean norm: {top})"

    def _repr_html_(self) -> str:
        """The components with the largest mean norm; for per-head stacks also a `[layer, head]` table."""
        top = self._largest(10)
        parts = [table_html([[norm] for _, norm in top], [label for label, _ in top], ["mean norm"],
                            "largest mean norm over d_model", signed=False)]
        norms = dict(zip(self.labels, self.mean_norms().tolist()))
        heads = [label for label in self.labels if re.fullmatch(r"L\d+H\d+", label)]
        if heads and len(heads) <= MAX_HTML_CELLS:
            layers = sorted({int(label[1:].split("H")[0]) for label in heads})
            n_heads = max(int(label.split("H")[1]) for label in heads) + 1
            table = [[norms.get(f"L{layer}H{head}", float("nan")) for head in range(n_heads)] for layer in layers]
            parts.append(table_html(table, [f"L{layer}" for layer in layers], [f"H{head}" for head in range(n_heads)],
                                    "heads: mean norm", signed=False))
        return block_html(f"ComponentStack: {self._header()}", *parts)
