"""Head-score reports: one `HeadScoreReport` -> CSV, JSON, Markdown and a self-contained HTML page.

Every file is written atomically (temp file in the same folder, then rename), so a reader never
sees half a report. The JSON holds everything needed to compare a rerun bit for bit: schema
version, model id and weights hash, config, processing, dtype, device, prompts hash, protocol and
seed, package versions. It holds no timestamps, so identical runs give identical files.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import html
import io
import json
import os
import platform
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from interp.analysis.heads import HeadScores

SCHEMA_VERSION = 1
FORMATS = ("csv", "json", "md", "html")
FILE_NAMES = {"csv": "scores.csv", "json": "report.json", "md": "summary.md", "html": "report.html"}


@dataclass(frozen=True)
class HeadScoreReport:
    """Scores of one model on one prompt source, with the provenance a rerun needs."""

    model_id: str
    weights_sha256: str
    config: dict[str, Any]
    processing: dict[str, Any]
    dtype: str
    device: str
    source: str  # "repeated" (random repeated tokens) or "prompts"
    protocol: dict[str, Any]
    prompts_sha256: str | None
    scores: HeadScores
    versions: dict[str, str]
    example: dict[str, Any] | None = None  # {"str_tokens": [...], "patterns": {label: [[...]]}} for the HTML view

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION, "model_id": self.model_id, "weights_sha256": self.weights_sha256,
            "config": self.config, "processing": self.processing, "dtype": self.dtype, "device": self.device,
            "source": self.source, "protocol": self.protocol, "prompts_sha256": self.prompts_sha256,
            "versions": self.versions,
            "scores": {name: table.tolist() for name, table in self.scores.scores.items()},
            "n_queries": self.scores.n_queries,
            "loss_first_repeat": self.scores.loss_first_repeat, "loss_second_repeat": self.scores.loss_second_repeat,
        }

    @classmethod
    def from_json(cls, path: str | Path) -> HeadScoreReport:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if data.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"{path} has schema_version {data.get('schema_version')}, this interp reads {SCHEMA_VERSION}.")
        scores = HeadScores({k: torch.tensor(v) for k, v in data["scores"].items()}, data["n_queries"],
                            data["protocol"], data["loss_first_repeat"], data["loss_second_repeat"])
        fields = {k: data[k] for k in ("model_id", "weights_sha256", "config", "processing", "dtype", "device",
                                       "source", "protocol", "prompts_sha256", "versions")}
        return cls(scores=scores, **fields)


# ----- provenance --------------------------------------------------------------------------------
def weights_sha256(model: torch.nn.Module) -> str:
    """SHA-256 over every parameter's name, dtype, shape and bytes (tied views counted once)."""
    digest = hashlib.sha256()
    seen_storage: set[int] = set()
    for name, tensor in model.state_dict().items():
        storage = tensor.untyped_storage().data_ptr()
        if storage in seen_storage:
            continue  # a tied weight (W_U viewing W_E) is the same bytes
        seen_storage.add(storage)
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().contiguous().cpu().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def package_versions() -> dict[str, str]:
    import transformers

    import interp

    return {"interp": interp.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


# ----- writing -----------------------------------------------------------------------------------
def write_atomic(path: str | Path, content: str | bytes) -> Path:
    """Write to a temp file beside `path`, then rename over it: readers see the old or the new file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = content.encode("utf-8") if isinstance(content, str) else content
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


def to_csv(report: HeadScoreReport) -> str:
    """Tidy table: one row per layer x head x score type, columns layer, head, score_type, value."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["layer", "head", "score_type", "value"])
    for name, table in report.scores.scores.items():
        for layer, row in enumerate(table.tolist()):
            for head, value in enumerate(row):
                writer.writerow([layer, head, name, repr(float(value))])
    return buffer.getvalue()


def to_json(report: HeadScoreReport) -> str:
    return json.dumps(report.to_dict(), indent=1, sort_keys=True) + "\n"


def _describe(report: HeadScoreReport) -> str:
    p = report.protocol
    if p.get("kind") == "repeated_random_tokens":
        return (f"{p['n_sequences']} sequences of {'BOS + ' if p['bos'] else ''}{p['length']} random tokens repeated "
                f"twice (seed {p['seed']})")
    return f"{p.get('n_sequences')} prompts, {p.get('n_tokens')} tokens" + \
        (f" ({p['n_skipped']} lines skipped)" if p.get("n_skipped") else "")


def _loss_line(scores: HeadScores) -> str | None:
    if scores.loss_first_repeat is None:
        return None
    return (f"Next-token loss on the first copy {scores.loss_first_repeat:.3f}, on the second copy "
            f"{scores.loss_second_repeat:.3f} (gap {scores.loss_first_repeat - scores.loss_second_repeat:.3f}).")


def to_markdown(report: HeadScoreReport, top_k: int = 5) -> str:
    lines = [f"# Head scores: {report.model_id}", "",
             f"{_describe(report)}; dtype {report.dtype}, device {report.device}.", ""]
    loss = _loss_line(report.scores)
    if loss:
        lines += [loss, ""]
    for name in report.scores.scores:
        lines += [f"## Top {name.replace('_', '-')} heads", "", "| rank | head | score |", "|---|---|---|"]
        lines += [f"| {rank} | L{layer}H{head} | {value:.3f} |"
                  for rank, (layer, head, value) in enumerate(report.scores.top_heads(name, top_k), 1)]
        lines.append("")
    lines += [f"Scores: mean attention on the target key per scored query (1 = always, ~1/pos = uniform). "
              f"Weights sha256 `{report.weights_sha256[:16]}…`; interp {report.versions.get('interp')}.", ""]
    return "\n".join(lines)


def _heatmap(table: torch.Tensor, title: str) -> str:
    from interp import viz

    try:
        png = viz.score_heatmap_png(table, title)
    except ImportError:
        return viz.score_heatmap_html(table, title)
    encoded = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(title)}" src="data:image/png;base64,{encoded}">'


def to_html(report: HeadScoreReport, top_k: int = 5) -> str:
    """A self-contained page: heatmaps (inline PNG), top-head tables, an interactive attention view."""
    from interp import viz

    escape = html.escape
    parts = [f"<h1>Head scores: {escape(report.model_id)}</h1>",
             f"<p>{escape(_describe(report))}; dtype {escape(report.dtype)}, device {escape(report.device)}.</p>"]
    loss = _loss_line(report.scores)
    if loss:
        parts.append(f"<p><b>Induction loss gap.</b> {escape(loss)}</p>")
    parts.append('<div class="maps">')
    for name, table in report.scores.scores.items():
        top = "".join(f"<tr><td>L{layer}H{head}</td><td>{value:.3f}</td></tr>"
                      for layer, head, value in report.scores.top_heads(name, top_k))
        parts.append(f'<div class="map"><h2>{escape(name.replace("_", "-"))}</h2>{_heatmap(table, name)}'
                     f"<table><tr><th>head</th><th>score</th></tr>{top}</table></div>")
    parts.append("</div>")
    if report.example:
        patterns = {label: torch.tensor(values) for label, values in report.example["patterns"].items()}
        view = viz.AttentionView(report.example["str_tokens"], patterns, title="Attention patterns of the top heads")
        parts.append(f"<h2>Attention patterns</h2><p>{escape(report.example.get('caption', ''))}</p>{view.html()}")
    metadata = json.dumps({k: v for k, v in report.to_dict().items() if k not in ("scores",)}, indent=1, sort_keys=True)
    parts.append(f"<details><summary>Provenance (report.json without scores)</summary><pre>{escape(metadata)}</pre></details>")
    style = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
             ".maps{display:flex;flex-wrap:wrap;gap:2em}.map img{max-width:420px}"
             "table{border-collapse:collapse;margin-top:.5em}td,th{border:1px solid #ccc;padding:2px 8px}"
             "pre{background:#f6f6f6;padding:1em;overflow:auto}")
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Head scores: {escape(report.model_id)}</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n")


def write_report(report: HeadScoreReport, out_dir: str | Path, formats: tuple[str, ...] = FORMATS,
                 top_k: int = 5) -> dict[str, Path]:
    """Write the chosen formats into `out_dir` (atomically); returns format -> path."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"Unknown report formats {unknown}; choose from {','.join(FORMATS)}.")
    render = {"csv": to_csv, "json": to_json, "md": lambda r: to_markdown(r, top_k), "html": lambda r: to_html(r, top_k)}
    return {fmt: write_atomic(Path(out_dir) / FILE_NAMES[fmt], render[fmt](report)) for fmt in formats}
