"""Head-score reports: one `HeadScoreReport` -> CSV, JSON, Markdown and a self-contained HTML page.

The report files of a folder are one set, with a completion marker (chosen over a temporary folder moved
into place, because the files sit beside a run's `units/` and `manifest.json`, and several files cannot be
renamed into an existing folder in one step). `write_report` renders every format in memory first (a failed
render leaves the old set untouched), then removes `report.complete.json`, writes each file atomically
(`interp.files.write_atomic`: temp file, fsync, rename) and writes `report.complete.json` last, listing each
file and its sha256. Readers check it: `HeadScoreReport.from_json` refuses a set that is incomplete or was
changed, and `interp heads --resume` rewrites it. Scores with NaN or inf are refused before anything is
written, and JSON is written with `allow_nan=False`.

The JSON holds everything needed to compare a rerun bit for bit: schema version, model id and weights
hash, config, processing, dtype, device, prompts hash, protocol and seed, package versions. It holds no
timestamps, so identical runs give identical files.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import html
import io
import json
import math
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp import files
from interp.analysis.heads import HeadScores
from interp.files import write_atomic  # noqa: F401  (re-exported: the package's one atomic writer)
from interp.model import HookedTransformer

SCHEMA_VERSION = 1
FORMATS = ("csv", "json", "md", "html")
FILE_NAMES = {"csv": "scores.csv", "json": "report.json", "md": "summary.md", "html": "report.html"}
COMPLETE_NAME = "report.complete.json"  # written last by write_report: the set is complete
READ_FIX = ("rerun the run that wrote it with --resume (or call write_report again) to rewrite the whole set, "
            "and copy report.complete.json along with the report files")


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
        """Read a `report.json` back; raises ValueError unless its folder holds the complete set it belongs to."""
        path = Path(path)
        record = files.verify_file_set(path.parent, COMPLETE_NAME, READ_FIX)
        if path.name not in record["files"]:
            raise files.IncompleteFileSet(f"{path} is not one of the report files listed in "
                                          f"{path.parent / COMPLETE_NAME}; {READ_FIX}.")
        data = files.read_json(path, "report", READ_FIX)
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


# ----- the example view --------------------------------------------------------------------------
def example_patterns(model: HookedTransformer, tokens: Int[Tensor, "pos"], scores: HeadScores, top_k: int,
                     caption: str) -> dict[str, Any]:
    """`HeadScoreReport.example`: patterns of the top heads of every score type on one sequence, for the HTML view."""
    heads: dict[tuple[int, int], list[str]] = {}
    for name in scores.scores:
        for layer, head, value in scores.top_heads(name, min(top_k, 3)):
            heads.setdefault((layer, head), []).append(f"{name} {value:.2f}")
    layers = sorted({layer for layer, _ in heads})
    _, cache = model.run_with_cache(tokens[None].to(model.W_E.device), return_type=None,
                                    names_filter=[f"blocks.{layer}.attn.hook_pattern" for layer in layers])
    patterns = {f"L{layer}H{head} " + ", ".join(labels): cache["pattern", layer][0, head].float().cpu().tolist()
                for (layer, head), labels in sorted(heads.items())}
    str_tokens = model.to_str_tokens(tokens) if model.tokenizer is not None else [str(t) for t in tokens.tolist()]
    return {"str_tokens": str_tokens, "patterns": patterns, "caption": caption}


# ----- checks ------------------------------------------------------------------------------------
def check_finite(tables: dict[str, Float[Tensor, "layer head"]], losses: dict[str, float | None], what: str) -> None:
    """Raise ValueError naming each score type and head (and loss) that is NaN or inf.

    what: where the numbers come from, e.g. "the report of gpt2" (said in the message).
    """
    problems = []
    for name, table in tables.items():
        bad = (~torch.isfinite(torch.as_tensor(table))).nonzero().tolist()
        if bad:
            heads = ", ".join(f"L{layer}H{head}" for layer, head in bad[:8])
            problems.append(f"{name} at heads {heads}" + (f" and {len(bad) - 8} more" if len(bad) > 8 else ""))
    problems += [f"loss {name} = {value}" for name, value in losses.items()
                 if value is not None and not math.isfinite(value)]
    if problems:
        raise ValueError(f"Non-finite scores (NaN or inf) in {what}: {'; '.join(problems)}. Nothing was written. "
                         "Check the model's weights for NaN/inf and its dtype (float16 can overflow: try "
                         "--dtype float32).")


def check_report_finite(report: HeadScoreReport) -> None:
    scores = report.scores
    check_finite(scores.scores, {"first_repeat": scores.loss_first_repeat, "second_repeat": scores.loss_second_repeat},
                 f"the report of {report.model_id} on {report.source}")


# ----- writing -----------------------------------------------------------------------------------
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
    return json.dumps(report.to_dict(), indent=1, sort_keys=True, allow_nan=False) + "\n"


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
    metadata = json.dumps({k: v for k, v in report.to_dict().items() if k not in ("scores",)}, indent=1, sort_keys=True,
                          allow_nan=False)
    parts.append(f"<details><summary>Provenance (report.json without scores)</summary><pre>{escape(metadata)}</pre></details>")
    style = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
             ".maps{display:flex;flex-wrap:wrap;gap:2em}.map img{max-width:420px}"
             "table{border-collapse:collapse;margin-top:.5em}td,th{border:1px solid #ccc;padding:2px 8px}"
             "pre{background:#f6f6f6;padding:1em;overflow:auto}")
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Head scores: {escape(report.model_id)}</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n")


def check_formats(formats: tuple[str, ...]) -> None:
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ValueError(f"Unknown report formats {unknown}; --format takes a comma-separated list of "
                         f"{','.join(FORMATS)}.")


def write_report(report: HeadScoreReport, out_dir: str | Path, formats: tuple[str, ...] = FORMATS,
                 top_k: int = 5, run_id: str | None = None) -> dict[str, Path]:
    """Write the chosen formats into `out_dir` as one set (see the module docstring); returns format -> path.

    run_id: the identity of the batch run that made the report, recorded in `report.complete.json`.
    """
    check_formats(formats)
    check_report_finite(report)
    render = {"csv": to_csv, "json": to_json, "md": lambda r: to_markdown(r, top_k), "html": lambda r: to_html(r, top_k)}
    contents = {FILE_NAMES[fmt]: render[fmt](report) for fmt in dict.fromkeys(formats)}
    paths = files.write_file_set(out_dir, contents, COMPLETE_NAME, {"run_id": run_id})
    return {fmt: paths[FILE_NAMES[fmt]] for fmt in formats}


def complete_report(folder: str | Path, formats: tuple[str, ...], run_id: str) -> bool:
    """Whether `folder` holds a complete report set of exactly `formats`, written by the run `run_id`."""
    try:
        record = files.verify_file_set(folder, COMPLETE_NAME, READ_FIX)
    except files.IncompleteFileSet:
        return False
    return record.get("run_id") == run_id and set(record["files"]) == {FILE_NAMES[fmt] for fmt in formats}
