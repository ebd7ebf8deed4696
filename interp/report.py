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

What the pages show: a head is listed as a "top" head of a score type only when its score is at least
TOP_SCORE (the mean attention on the target key: 0.3 is above uniform attention on all but the shortest
sequences, e.g. 0.13 for previous-token on BOS + 2 x 10 random tokens); a score type with no scored
query is shown as "n/a (0 queries)" and ranks nothing. `report.html` embeds the example sequence's
attention patterns of every head when they fit the view's bound (`interp.viz_attention.MAX_VIEW_CELLS`),
else those of the listed heads, on at most MAX_EXAMPLE_TOKENS tokens: the page stays under about
7.5 MB whatever the model (9 heads at 1,024 tokens: about 6.5 MB; the 2-layer bundled model at 21
tokens: under 0.1 MB).
"""

from __future__ import annotations

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
from interp.display import format_number, plural
from interp.files import write_atomic  # noqa: F401  (re-exported: the package's one atomic writer)
from interp.model import HookedTransformer
from interp.viz_attention import MAX_VIEW_CELLS

SCHEMA_VERSION = 1
FORMATS = ("csv", "json", "md", "html")
FILE_NAMES = {"csv": "scores.csv", "json": "report.json", "md": "summary.md", "html": "report.html"}
COMPLETE_NAME = "report.complete.json"  # written last by write_report: the set is complete
READ_FIX = ("rerun the run that wrote it with --resume (or call write_report again) to rewrite the whole set, "
            "and copy report.complete.json along with the report files")
TOP_SCORE = 0.3  # a head is listed as a top head of a score type from this score up (see the module docstring)
MAX_EXAMPLE_TOKENS = 1024  # the example view shows at most this many tokens of its sequence


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
    # For the HTML view: {"str_tokens": [...], "patterns": {label: [query_pos, key_pos] tensor or nested lists},
    # "caption", "shown": which heads, "selected": the label it opens on}; see `example_patterns`.
    example: dict[str, Any] | None = None

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
    """SHA-256 over every parameter's name, dtype, shape and bytes; a tied weight (W_U = W_E.T, the same
    elements of the same storage in another order) is counted once. Other views of one buffer (a flat
    parameter checkpoint) are different elements and are all hashed."""
    digest = hashlib.sha256()
    seen: set[tuple] = set()
    for name, tensor in model.state_dict().items():
        elements = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(),
                    tuple(sorted(zip(tensor.shape, tensor.stride()))))
        if elements in seen:
            continue
        seen.add(elements)
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().contiguous().cpu().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def package_versions() -> dict[str, str]:
    import transformers

    import interp

    return {"interp": interp.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


# ----- which heads are shown ----------------------------------------------------------------------
def listed_heads(scores: HeadScores, score_type: str, k: int) -> list[tuple[int, int, float]]:
    """The top heads of `score_type` as (layer, head, score), best first: at most k, each scoring >= TOP_SCORE."""
    if not scores.measured(score_type):
        return []
    return [(layer, head, value) for layer, head, value in scores.top_heads(score_type, k) if value >= TOP_SCORE]


def strongest_head(scores: HeadScores) -> tuple[int, int] | None:
    """The head with the highest score of any measured score type (None when nothing was measured)."""
    best = [(value, -layer, -head) for name in scores.scores if scores.measured(name)
            for layer, head, value in scores.top_heads(name, 1)]
    if not best:
        return None
    _, layer, head = max(best)
    return -layer, -head


def example_patterns(model: HookedTransformer, tokens: Int[Tensor, "pos"], scores: HeadScores, top_k: int,
                     caption: str) -> dict[str, Any]:
    """`HeadScoreReport.example`: one sequence's attention patterns for the HTML view.

    Every head when all fit MAX_VIEW_CELLS, else the strongest head and the listed heads (`listed_heads`)
    that fit; on the first MAX_EXAMPLE_TOKENS tokens. Labels carry the listed scores ("L1H3 induction 0.96");
    the view opens on the strongest head.
    """
    tokens = tokens[:MAX_EXAMPLE_TOKENS]
    n_layers, n_heads, positions = model.cfg.n_layers, model.cfg.n_heads, len(tokens)
    labels: dict[tuple[int, int], list[str]] = {}
    for name in scores.scores:
        for layer, head, value in listed_heads(scores, name, top_k):
            labels.setdefault((layer, head), []).append(f"{name} {value:.2f}")
    strongest = strongest_head(scores)
    fits = MAX_VIEW_CELLS // (positions * (positions + 1) // 2)
    if n_layers * n_heads <= fits:
        heads = [(layer, head) for layer in range(n_layers) for head in range(n_heads)]
        shown = "every head"
    else:
        ranked = ([strongest] if strongest else []) + [h for h in labels if h != strongest]
        heads = sorted(ranked[:max(1, fits)] or [(0, 0)])
        shown = "the strongest and the listed heads" + ("" if len(ranked) <= fits else f" (the first {fits} that fit)")
    layers = sorted({layer for layer, _ in heads})
    _, cache = model.run_with_cache(tokens[None].to(model.W_E.device), return_type=None,
                                    names_filter=[f"blocks.{layer}.attn.hook_pattern" for layer in layers])
    names = {(layer, head): " ".join([f"L{layer}H{head}", *labels.get((layer, head), [])]) for layer, head in heads}
    patterns = {names[(layer, head)]: cache["pattern", layer][0, head].float().cpu() for layer, head in heads}
    str_tokens = model.to_str_tokens(tokens) if model.tokenizer is not None else [str(t) for t in tokens.tolist()]
    return {"str_tokens": str_tokens, "patterns": patterns, "caption": caption, "shown": shown,
            "selected": names.get(strongest) if strongest else None}


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
    """Tidy table: one row per layer x head x score type, columns layer, head, score_type, value.

    A score type no query could measure (0 queries) has an empty value, which CSV readers take as missing.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["layer", "head", "score_type", "value"])
    for name, table in report.scores.scores.items():
        measured = report.scores.measured(name)
        for layer, row in enumerate(table.tolist()):
            for head, value in enumerate(row):
                writer.writerow([layer, head, name, repr(float(value)) if measured else ""])
    return buffer.getvalue()


def to_json(report: HeadScoreReport) -> str:
    return json.dumps(report.to_dict(), indent=1, sort_keys=True, allow_nan=False) + "\n"


def _describe(report: HeadScoreReport) -> str:
    p = report.protocol
    if p.get("kind") == "repeated_random_tokens":
        return (f"{plural(p['n_sequences'], 'sequence')} of {'BOS + ' if p['bos'] else ''}"
                f"{plural(p['length'], 'random token')} repeated twice (seed {p['seed']})")
    n_prompts, n_tokens = p.get("n_sequences") or 0, p.get("n_tokens") or 0
    skipped = p.get("n_skipped")
    return f"{plural(n_prompts, 'prompt')}, {plural(n_tokens, 'token')}" + \
        (f" ({plural(skipped, 'line')} skipped)" if skipped else "")


def _loss_line(report: HeadScoreReport) -> str | None:
    scores = report.scores
    if scores.loss_first_repeat is None or scores.loss_second_repeat is None:
        return None
    n = report.protocol.get("n_sequences")
    over = f" (mean over {plural(n, 'sequence')})" if n else ""
    return (f"Next-token loss on the first copy {format_number(scores.loss_first_repeat)}, on the second copy "
            f"{format_number(scores.loss_second_repeat)}{over}; gap "
            f"{format_number(scores.loss_first_repeat - scores.loss_second_repeat)}.")


def _unmeasured(name: str) -> str:
    return (f"No query position could be scored for {name.replace('_', '-')} (e.g. no prompt repeats a token), "
            "so it is not measured and no head is ranked.")


def none_listed(scores: HeadScores, name: str) -> str:
    best = scores.top_heads(name, 1)
    highest = f"; the highest is L{best[0][0]}H{best[0][1]} at {best[0][2]:.3f}" if best else ""
    return f"No head scores {TOP_SCORE} or more{highest}."


def to_markdown(report: HeadScoreReport, top_k: int = 5) -> str:
    lines = [f"# Head scores: {report.model_id}", "",
             f"{_describe(report)}; dtype {report.dtype}, device {report.device}.", ""]
    loss = _loss_line(report)
    if loss:
        lines += [loss, ""]
    scores = report.scores
    for name in scores.scores:
        lines += [f"## Top {name.replace('_', '-')} heads (score ≥ {TOP_SCORE})", ""]
        listed = listed_heads(scores, name, top_k)
        if not scores.measured(name):
            lines.append(f"n/a (0 queries). {_unmeasured(name)}")
        elif not listed:
            lines.append(none_listed(scores, name))
        else:
            lines += ["| rank | head | score |", "|---|---|---|"]
            lines += [f"| {rank} | L{layer}H{head} | {value:.3f} |" for rank, (layer, head, value) in enumerate(listed, 1)]
        lines.append("")
    lines += [f"Scores: mean attention on the target key per scored query (1 = always, ~1/pos = uniform); heads are "
              f"listed from {TOP_SCORE}. Weights sha256 `{report.weights_sha256[:16]}…`; interp "
              f"{report.versions.get('interp')}.", ""]
    return "\n".join(lines)


def _heatmap(table: torch.Tensor, name: str, outline: list[tuple[int, int]]) -> str:
    from interp import viz

    title = name.replace("_", "-")
    try:
        png = viz.score_heatmap_png(table, title, label=f"{title} score", signed=False, vmax=1.0, outline=outline)
    except ImportError:
        return viz.score_heatmap_html(table, title, signed=False, vmax=1.0)
    return viz.png_img(png, f"{title} scores, layers by heads")


def to_html(report: HeadScoreReport, top_k: int = 5) -> str:
    """A self-contained page: heatmaps (inline PNG), top-head tables, an interactive attention view."""
    from interp import viz

    escape = html.escape
    scores = report.scores
    parts = [f"<h1>Head scores: {escape(report.model_id)}</h1>",
             f"<p>{escape(_describe(report))}; dtype {escape(report.dtype)}, device {escape(report.device)}.</p>"]
    loss = _loss_line(report)
    if loss:
        parts.append(f"<p><b>Induction loss gap.</b> {escape(loss)}</p>")
    parts.append(f"<p>Each map: mean attention on the target key per scored query (0 to 1). Outlined, and listed "
                 f"below each map: the top heads, those scoring {TOP_SCORE} or more.</p>")
    parts.append('<div class="maps">')
    for name, table in scores.scores.items():
        heading = f"<h2>{escape(name.replace('_', '-'))}</h2>"
        if not scores.measured(name):
            parts.append(f'<div class="map">{heading}<div class="na">n/a (0 queries)</div>'
                         f"<p>{escape(_unmeasured(name))}</p></div>")
            continue
        listed = listed_heads(scores, name, top_k)
        top = ("<table><tr><th>head</th><th>score</th></tr>" + "".join(
            f"<tr><td>L{layer}H{head}</td><td>{value:.3f}</td></tr>" for layer, head, value in listed) + "</table>"
            if listed else f"<p>{escape(none_listed(scores, name))}</p>")
        outline = [(layer, head) for layer, head, _ in listed]
        parts.append(f'<div class="map">{heading}{_heatmap(table, name, outline)}{top}</div>')
    parts.append("</div>")
    if report.example:
        example = report.example
        patterns = {label: torch.as_tensor(values) for label, values in example["patterns"].items()}
        view = viz.AttentionView(example["str_tokens"], patterns, title=f"Attention patterns of {example.get('shown', 'the top heads')}",
                                 selected=example.get("selected"))
        parts.append(f"<h2>Attention patterns</h2><p>{escape(example.get('caption', ''))} The view opens on the "
                     f"strongest head; the small pictures show every embedded head (hover to preview, click to "
                     f"select).</p>{view.html()}")
    metadata = json.dumps({k: v for k, v in report.to_dict().items() if k not in ("scores",)}, indent=1, sort_keys=True,
                          allow_nan=False)
    parts.append(f"<details><summary>Provenance (report.json without scores)</summary><pre>{escape(metadata)}</pre></details>")
    style = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222;"
             "overflow-wrap:anywhere}"
             ".maps{display:flex;flex-wrap:wrap;gap:1em 2em}.map{max-width:100%;overflow-x:auto}"
             ".na{display:flex;align-items:center;justify-content:center;width:260px;height:120px;background:#f2f2f2;"
             "color:#555;border:1px dashed #aaa;font-size:1.2em}.map p{max-width:420px}"
             "table{border-collapse:collapse;margin-top:.5em}td,th{border:1px solid #ccc;padding:2px 8px}"
             "pre{background:#f6f6f6;padding:1em;overflow:auto;white-space:pre-wrap}")
    return viz.html_page(f"Head scores: {report.model_id}", "".join(parts), style)


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
    paths = files.write_file_set(out_dir, contents, COMPLETE_NAME, {"run_id": run_id, "top_k": top_k})
    return {fmt: paths[FILE_NAMES[fmt]] for fmt in formats}


def complete_report(folder: str | Path, formats: tuple[str, ...], run_id: str, top_k: int) -> bool:
    """Whether `folder` holds a complete report set of exactly `formats`, written by the run `run_id`
    listing `top_k` heads per score type."""
    try:
        record = files.verify_file_set(folder, COMPLETE_NAME, READ_FIX)
    except files.IncompleteFileSet:
        return False
    return (record.get("run_id") == run_id and record.get("top_k") == top_k
            and set(record["files"]) == {FILE_NAMES[fmt] for fmt in formats})
