"""`PatchResult`: the metric after patching each site (or path), as a table with named, labelled axes, shown as
text and, in notebooks, as a table on a diverging scale. Built by `interp.analysis.patching`,
`path_patching` and `attribution`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from interp.display import MAX_HTML_CELLS, block_html, format_number, table_html, text_table_html

Direction = Literal["denoise", "noise"]


@dataclass(frozen=True)
class PatchResult:
    """Metric values after patching, as a table with named, labelled axes.

    values: the metric after patching each site (float64, so `effect` is exact); for attribution
    patching, the linear estimate of it. dims: axis names, e.g. ("layer", "pos"); labels: each
    axis's entries. `clean_metric` / `corrupted_metric`: the unpatched runs' metrics.
    """

    values: Float[Tensor, "..."]
    dims: tuple[str, ...]
    labels: dict[str, list]
    clean_metric: float
    corrupted_metric: float
    direction: Direction = "denoise"

    @property
    def effect(self) -> Float[Tensor, "..."]:
        """Change of the metric caused by the patch (0 = the patch did nothing)."""
        baseline = self.corrupted_metric if self.direction == "denoise" else self.clean_metric
        return self.values - baseline

    @property
    def normalized(self) -> Float[Tensor, "..."]:
        """(values - corrupted) / (clean - corrupted): 0 = corrupted behaviour, 1 = clean behaviour."""
        return (self.values - self.corrupted_metric) / (self.clean_metric - self.corrupted_metric)

    def top(self, k: int = 5, largest: bool = True) -> list[tuple[tuple, float]]:
        """The k highest (or lowest) entries as (labels, value), best first; labels follow `dims`."""
        values, flat = self.values.flatten().topk(min(k, self.values.numel()), largest=largest)
        return [(self._labels_at(int(i)), float(v)) for v, i in zip(values, flat)]

    def argmax(self) -> tuple:
        """Labels of the highest entry, in the order of `dims` (e.g. (layer, head))."""
        return self._labels_at(int(self.values.flatten().argmax()))

    def _labels_at(self, flat_index: int) -> tuple:
        index = torch.unravel_index(torch.tensor(flat_index), self.values.shape)
        return tuple(self.labels[dim][int(i)] for dim, i in zip(self.dims, index))

    # ----- display ----------------------------------------------------------------------------
    def _name(self, dim: str, label: Any) -> str:
        return {"layer": f"L{label}", "head": f"H{label}", "kv_head": f"KV{label}",
                "site": str(label)}.get(dim, f"{dim} {label}")

    def _entry_name(self, labels: tuple) -> str:
        names = [self._name(dim, label) for dim, label in zip(self.dims, labels)]
        return ("" if set(self.dims) <= {"layer", "head", "kv_head"} else " ").join(names)  # "L1H3", "L0 pos 11"

    def _largest(self, k: int) -> list[tuple[str, float, float]]:
        """The k entries with the largest |effect|, as (name, effect, normalized)."""
        effect, normalized = self.effect.flatten(), self.normalized.flatten()
        order = effect.abs().argsort(descending=True, stable=True)[:k]
        return [(self._entry_name(self._labels_at(int(i))), float(effect[i]), float(normalized[i])) for i in order]

    def _header(self) -> str:
        shape = " x ".join(f"{dim} {size}" for dim, size in zip(self.dims, self.values.shape))
        how = "clean activations patched into the corrupted run" if self.direction == "denoise" \
            else "corrupted activations patched into the clean run"
        return (f"[{shape}], {self.direction}: {how}; metric clean {format_number(self.clean_metric)}, "
                f"corrupted {format_number(self.corrupted_metric)}")

    def __repr__(self) -> str:
        if self.clean_metric == self.corrupted_metric:
            entries = ", ".join(f"{name} {format_number(effect, sign=True)}" for name, effect, _ in self._largest(3))
            return f"PatchResult({self._header()}\n  largest |effect| (clean == corrupted: no normalized): {entries})"
        entries = ", ".join(f"{name} {format_number(effect, sign=True)} ({format_number(normalized)})"
                            for name, effect, normalized in self._largest(3))
        return f"PatchResult({self._header()}\n  largest |effect| (normalized: 0 corrupted, 1 clean): {entries})"

    def _repr_html_(self) -> str:
        """The largest effects, and (for 1-D or 2-D results) the normalized table on a diverging scale."""
        defined = self.clean_metric != self.corrupted_metric
        rows = [(name, format_number(effect, sign=True), format_number(normalized) if defined else "n/a")
                for name, effect, normalized in self._largest(5)]
        parts = [text_table_html(["entry", "effect", "normalized"], rows, "largest |effect|")]
        table = self.normalized if defined else self.effect
        what = "normalized (0 = corrupted, 1 = clean)" if defined else "effect (clean == corrupted: no normalized)"
        if len(self.dims) <= 2 and table.numel() <= MAX_HTML_CELLS:
            vmax = max(1.0, float(table.abs().nan_to_num(0, 0, 0).max())) if defined else None  # 1 = clean, at least
            row_labels = [self._name(self.dims[0], label) for label in self.labels[self.dims[0]]]
            columns = self.labels[self.dims[1]] if len(self.dims) == 2 else [what.split(" ")[0]]
            if len(self.dims) == 2 and self.dims[1] != "pos":
                columns = [self._name(self.dims[1], label) for label in columns]
            corner = f"{self.dims[0]} \\ {self.dims[1]}" if len(self.dims) == 2 else self.dims[0]
            parts.append(table_html(table.reshape(len(row_labels), -1), row_labels, columns, what, True, vmax, corner))
        return block_html(f"PatchResult {self._header()}", *parts)
