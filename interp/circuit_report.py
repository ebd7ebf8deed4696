"""Circuit reports: edge scores of a model on a task by several methods (eap, eap-ig, exact, greedy), the circuit
each finds, and how faithful it is on pairs it was not found on.

A run (`run_circuit_report`, `interp circuit`) scores the first `n_train` pairs (default half) and holds the
rest out. On the held-out pairs each method gets MIB's faithfulness curve (`circuit_search.faithfulness_curve`:
top-|score| circuits at 0.1 % .. 100 % of edges, CPR, CMD) and its chosen circuit's faithfulness. The chosen
circuit: the top-|score| edges at `top_fraction`, pruned to input -> logits paths; without one, the smallest
MIB fraction reaching faithfulness FAITHFUL on the scoring pairs (all edges if none does), so the choice never
sees the held-out pairs. "greedy" (ACDC-style exact search) chooses its own.

OUT/<model>/<task>/ holds one set written together (`files.write_file_set`, `report.complete.json` last):
graph_<method>.json (EAP-IG/MIB format for `Circuit.from_json`: every edge's score, in_graph = the chosen
circuit, plus a "report" entry), circuit_<method>.svg, faithfulness.json, faithfulness.png (with matplotlib),
circuit.html (self-contained), summary.md. Reliability as in `interp.batch`: options are checked before the
model loads; the run's identity (sha256 of `manifest.json`: model, weights, dtype, device, task tokens, split,
methods, steps, top_fraction) stamps every unit; each method is a unit, `units/<method>.json`, written
atomically when done, so an interrupted run keeps finished methods and `resume` skips them; the folder is
locked (`files.shared_folder`) and one holding another run is refused unless `overwrite`; non-finite scores
or metrics are an error and nothing is written for them.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from interp import batch, files, loading
from interp.analysis.circuit_search import FaithfulnessCurve, faithfulness, faithfulness_curve, greedy_circuit
from interp.analysis.circuit_task import CircuitTask, in_batches, induction_task
from interp.analysis.edge_attribution import eap, eap_ig
from interp.analysis.edge_patching import evaluate_circuits, exact_edge_scores, patch_inputs
from interp.analysis.graph import Circuit, Graph
from interp.display import format_number, plural
from interp.model import HookedTransformer
from interp.report import package_versions, weights_sha256
from interp.viz import png_img
from interp.viz_circuit import circuit_section, circuit_svg, faithfulness_png, faithfulness_table, html_page

METHODS = ("eap", "eap-ig", "exact", "greedy")
DEFAULT_METHODS = ("eap", "eap-ig", "exact")
FAITHFUL = 0.8  # the chosen circuit: the smallest MIB fraction reaching this faithfulness on the scoring pairs
DEFAULT_PAIRS = 64  # pairs of the built-in induction task
TOP_EDGES = 10  # edges listed per method in summary.md
COMPLETE_NAME = "report.complete.json"
REPORT_PATTERNS = ("graph_*.json", "circuit_*.svg", "circuit.html", "faithfulness.*", "summary.md")
REPLACE_FIX = "use a new --out, or --overwrite to delete it and start this run there"
UNIT_FIX = "delete it and rerun with --resume to recompute that method"
DESCRIPTION = {"eap": "EAP: gradient estimate of each edge's patching effect (Syed et al. 2023)",
               "eap-ig": "EAP-IG: the same with gradients integrated over input interpolations (Hanna et al. 2024)",
               "exact": "exact single-edge patching: one forward per edge",
               "greedy": "greedy exact search (ACDC, Conmy et al. 2023): score = metric change when removed"}
Scorer = Callable[[HookedTransformer, CircuitTask, int, bool, "int | None"], Circuit]
SCORERS: dict[str, Scorer] = {  # (model, scoring pairs, steps, progress, batch size) -> every edge scored
    # in_batches with one batch of every pair is the plain call (its weight is 1)
    "eap": lambda model, task, steps, progress, size: in_batches(eap, model, task, size or len(task)),
    "eap-ig": lambda model, task, steps, progress, size: in_batches(eap_ig, model, task, size or len(task),
                                                                     steps=steps, progress=progress),
    "exact": lambda model, task, steps, progress, size: in_batches(exact_edge_scores, model, task, size or len(task),
                                                                    progress=progress),
    "greedy": lambda model, task, steps, progress, size: greedy_circuit(model, **task.inputs(), progress=progress),
}


@dataclass(frozen=True)
class MethodResult:
    """One method's unit: every edge's score with the chosen circuit as `in_graph`, and how it was measured."""

    method: str
    circuit: Circuit
    fraction: float  # of all edges, before pruning (greedy: the fraction it kept)
    chosen_by: str
    faithfulness: float  # of the chosen circuit, on the held-out pairs
    curve: FaithfulnessCurve  # on the held-out pairs
    seconds: float  # scoring time

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "label": self.circuit.method, "scores": self.circuit.scores.tolist(),
                "in_graph": self.circuit.in_graph.nonzero()[:, 0].tolist(), "fraction": self.fraction,
                "chosen_by": self.chosen_by, "faithfulness": self.faithfulness, "curve": self.curve.to_dict(),
                "seconds": self.seconds}

    @classmethod
    def from_dict(cls, graph: Graph, data: dict[str, Any]) -> MethodResult:
        in_graph = torch.zeros(graph.n_edges, dtype=torch.bool)
        in_graph[torch.tensor(data["in_graph"], dtype=torch.long)] = True
        circuit = Circuit(graph, torch.tensor(data["scores"], dtype=torch.float64), in_graph, data["label"])
        return cls(data["method"], circuit, data["fraction"], data["chosen_by"], data["faithfulness"],
                   FaithfulnessCurve.from_dict(data["curve"]), data["seconds"])


@dataclass(frozen=True)
class CircuitReport:
    """What a run produced: the split, the metrics of both runs on both halves, one result per method."""

    model_id: str
    task: str
    n_pairs: int
    n_train: int
    metrics: dict[str, float]  # scoring_clean, scoring_corrupted, held_out_clean, held_out_corrupted
    results: tuple[MethodResult, ...]
    folder: Path  # where the files are
    run_id: str


# ----- checks and inputs -------------------------------------------------------------------------
def checked_methods(methods: Sequence[str]) -> tuple[str, ...]:
    """The methods, each once, in the given order; ValueError naming the known ones."""
    chosen = tuple(dict.fromkeys(m.strip() for m in methods if m.strip()))
    unknown = [m for m in chosen if m not in METHODS]
    if unknown or not chosen:
        raise ValueError(f"Unknown methods {unknown}; --method takes {', '.join(METHODS)} (repeat it or give a "
                         f"comma-separated list; default {','.join(DEFAULT_METHODS)}).")
    return chosen


def _check_options(task: str | Path | None, steps: int, n_pairs: int | None, n_train: int | None,
                   top_fraction: float | None, device: str, dtype: str) -> None:
    for option, value, least in (("--steps", steps, 1), ("--n-pairs", n_pairs, 2), ("--n-train", n_train, 1)):
        if value is not None and value < least:
            raise ValueError(f"{option} must be >= {least}, got {value}.")
    if top_fraction is not None and not 0 < top_fraction <= 1:
        raise ValueError(f"--top-fraction must be in (0, 1] (0.05 is 5 % of edges), got {top_fraction}.")
    if not is_builtin(task) and not Path(task).is_file():
        raise FileNotFoundError(f"No task file {task}: give a JSON Lines file, one {{\"clean\", \"corrupted\", "
                                "\"answer\", \"wrong\"} object per line, or leave --task out for the built-in "
                                "induction task.")
    if dtype not in loading.DTYPES:
        raise ValueError(f"--dtype {dtype!r} is not known; use one of {', '.join(loading.DTYPES)}.")
    batch.check_device(device)


def is_builtin(task: str | Path | None) -> bool:
    """Whether `task` names the built-in induction task (None, or "induction" given as a string or path)."""
    return task is None or str(task) == "induction"


def load_task(model: HookedTransformer, task: str | Path | None, n_pairs: int | None, seed: int) -> CircuitTask:
    """The built-in induction task (None or "induction"; `n_pairs`, default DEFAULT_PAIRS, from `seed`) or a
    task file (its first `n_pairs` pairs when given)."""
    if is_builtin(task):
        return induction_task(model, n_pairs or DEFAULT_PAIRS, seed=seed)
    try:
        full = CircuitTask.from_jsonl(model, task)
    except ValueError as error:  # "Pair N: ..." (N: its line) from the tokenising checks: say which file
        raise ValueError(str(error) if str(task) in str(error) else f"{task}: {error}") from None
    if n_pairs is not None and n_pairs > len(full):
        raise ValueError(f"--n-pairs {n_pairs}: {task} has only {plural(len(full), 'pair')}.")
    return full if n_pairs is None else full.subset(slice(0, n_pairs))


def task_sha256(task: CircuitTask) -> str:
    digest = hashlib.sha256()
    for tensor in (task.clean, task.corrupted, task.attention_mask, task.answer, task.wrong, task.position):
        digest.update(b"none|" if tensor is None else f"{tuple(tensor.shape)}|".encode()
                      + tensor.cpu().numpy().tobytes())
    return digest.hexdigest()


def _metrics(model: HookedTransformer, scoring: CircuitTask, held_out: CircuitTask) -> dict[str, float]:
    values = {}
    with torch.no_grad():
        for half, part in (("scoring", scoring), ("held_out", held_out)):
            for run, tokens in (("clean", part.clean), ("corrupted", part.corrupted)):
                values[f"{half}_{run}"] = float(part.metric(model(tokens, attention_mask=part.attention_mask)))
    if not all(math.isfinite(v) for v in values.values()):
        raise ValueError(f"Non-finite metric (NaN or inf): {values}. Check the model's weights and dtype (float16 "
                         "can overflow: try --dtype float32).")
    if values["held_out_clean"] == values["held_out_corrupted"]:
        raise ValueError("The clean and corrupted prompts give the same metric on the held-out pairs, so "
                         "faithfulness is undefined; the corruption must change the answer's logit difference.")
    return values


# ----- one method ----------------------------------------------------------------------------------
def score_method(model: HookedTransformer, method: str, scoring: CircuitTask, held_out: CircuitTask, steps: int,
                 top_fraction: float | None, progress: bool, batch_size: int | None = None) -> MethodResult:
    """Score every edge on the scoring pairs, choose the circuit (module docstring), measure on the held-out pairs."""
    start = time.perf_counter()
    scored = SCORERS[method](model, scoring, steps, progress, batch_size)
    seconds = time.perf_counter() - start
    bad = (~torch.isfinite(scored.scores)).nonzero()[:, 0].tolist()
    if bad:
        names = ", ".join(scored.graph.edges[i] for i in bad[:5]) + (f" and {len(bad) - 5} more" if bad[5:] else "")
        raise ValueError(f"Non-finite {method} scores (NaN or inf) at {names}. Nothing was written for {method}. Check "
                         "the model's weights for NaN/inf and its dtype (float16 can overflow: try --dtype float32).")
    curve = faithfulness_curve(model, scored, **held_out.inputs(), progress=progress)
    if method == "greedy":  # the search chose its circuit
        chosen, chosen_by = scored, "the greedy search on the scoring pairs"
        fraction = scored.n_edges / scored.graph.n_edges
    else:
        if top_fraction is not None:
            fraction, chosen_by = top_fraction, "--top-fraction"
        else:
            selection = faithfulness_curve(model, scored, **scoring.inputs(), progress=False)
            fraction = next((f for f, v in zip(selection.fractions, selection.faithfulness) if v >= FAITHFUL), 1.0)
            chosen_by = f"the smallest MIB fraction reaching faithfulness {FAITHFUL} on the scoring pairs"
        chosen = scored.top_fraction(fraction)
    if method != "greedy" and fraction in curve.fractions:  # the held-out curve has measured this circuit already
        held_out_faithfulness = curve.faithfulness[curve.fractions.index(fraction)]
    else:
        clean, mask, patch = patch_inputs(model, scored.graph, held_out.clean, held_out.corrupted, None,
                                          held_out.attention_mask, ())
        value = float(evaluate_circuits(model, chosen, clean, patch, held_out.metric, attention_mask=mask))
        held_out_faithfulness = faithfulness(value, curve.clean, curve.corrupted)
    result = MethodResult(method, Circuit(scored.graph, scored.scores.double(), chosen.in_graph, scored.method),
                          fraction, chosen_by, held_out_faithfulness, curve, seconds)
    if not all(math.isfinite(v) for v in (result.faithfulness, *curve.faithfulness)):
        raise ValueError(f"Non-finite faithfulness for {method}: {curve.faithfulness}; nothing was written for it.")
    return result


# ----- the run folder ------------------------------------------------------------------------------
def _unit_path(folder: Path, method: str) -> Path:
    return folder / "units" / f"{method}.json"


def read_unit(path: Path, identity: str, graph: Graph) -> MethodResult:
    data = batch.unit_of_run(path, identity, UNIT_FIX, REPLACE_FIX)
    try:
        return MethodResult.from_dict(graph, data)
    except (KeyError, TypeError, ValueError, IndexError):
        raise ValueError(f"The unit file {path} is damaged (missing or malformed fields); {UNIT_FIX}.") from None


def _other_run(folder: Path, manifest: dict[str, Any], identity: str) -> str | None:
    """Why `folder` holds files of another run (naming the file and the fix), or None."""
    path = folder / "manifest.json"
    if path.exists():
        try:
            old = files.read_json(path, "manifest", REPLACE_FIX)
        except ValueError as error:
            return str(error)
        if not isinstance(old, dict):
            return f"The manifest file {path} is damaged (not a JSON object); {REPLACE_FIX}."
        if batch.run_id(old) != identity:
            new = json.loads(json.dumps(manifest))  # as it reads back (tuples become lists)
            changed = sorted(k for k in set(old) | set(new) if k != "run_id" and old.get(k) != new.get(k))
            return f"{folder} holds a different run (differs in {changed}; see {path}); {REPLACE_FIX}."
        return None
    for unit in sorted((folder / "units").glob("*.json")):
        try:
            found = files.read_json(unit, "unit", UNIT_FIX).get("run_id")
        except (ValueError, AttributeError):
            found = None
        if found != identity:
            return f"{folder} holds a unit of another run or a damaged one ({unit}); {REPLACE_FIX}."
    return None


def _prepare(folder: Path, manifest: dict[str, Any], identity: str, overwrite: bool) -> None:
    """Make the folder this run's (only while no other process is in it)."""
    files.remove_temp_files(folder)
    files.remove_temp_files(folder / "units")
    reason = _other_run(folder, manifest, identity)
    if reason and not overwrite:
        raise ValueError(reason)
    if reason:
        (folder / COMPLETE_NAME).unlink(missing_ok=True)
        for path in [p for pattern in (*REPORT_PATTERNS, "units/*.json") for p in folder.glob(pattern)]:
            path.unlink()
        (folder / "manifest.json").unlink(missing_ok=True)
    if reason or not (folder / "manifest.json").exists():
        files.write_atomic(folder / "manifest.json",
                           json.dumps({**manifest, "run_id": identity}, indent=1, sort_keys=True, allow_nan=False))


# ----- the run -------------------------------------------------------------------------------------
def run_circuit_report(model_name: str = batch.DEFAULT_MODEL, task: str | Path | None = None,
                       methods: Sequence[str] = DEFAULT_METHODS, out_dir: str | Path = "reports", *, steps: int = 5,
                       n_pairs: int | None = None, n_train: int | None = None, seed: int = 0,
                       top_fraction: float | None = None, device: str = "cpu", dtype: str = "float32",
                       batch_size: int | None = None, resume: bool = False, overwrite: bool = False,
                       progress: bool = True) -> CircuitReport:
    """Score, choose and measure circuits by each method and write the report (see the module docstring).

    task: None or "induction" (built-in, `n_pairs` from `seed`) or a JSON Lines task file; n_train: pairs
    scored (default half; the rest are held out); batch_size: pairs per forward when scoring (default all; the
    scores are the same up to rounding, greedy always takes all). Raises `batch.Interrupted` on Ctrl-C (finished methods stay)."""
    methods = checked_methods(methods)
    _check_options(task, steps, n_pairs, n_train, top_fraction, device, dtype)
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}.")
    model = HookedTransformer.from_pretrained(model_name, device=device, dtype=dtype)
    pairs = load_task(model, task, n_pairs, seed)
    n_train = len(pairs) // 2 if n_train is None else n_train
    if not 0 < n_train < len(pairs):
        raise ValueError(f"The task has {plural(len(pairs), 'pair')}; scoring needs 1 to {len(pairs) - 1} of them "
                         f"(--n-train, got {n_train}) and the rest are held out: give at least 2 pairs.")
    scoring, held_out = pairs.split(n_train)
    metrics = _metrics(model, scoring, held_out)
    graph = Graph.from_model(model)
    builtin = is_builtin(task)
    manifest = {"model_id": model_name, "weights_sha256": weights_sha256(model), "config": model.cfg.to_dict(),
                "dtype": str(model.W_E.dtype).removeprefix("torch."), "device": str(model.W_E.device),
                "task": pairs.name, "task_sha256": task_sha256(pairs), "seed": seed if builtin else None,
                "n_pairs": len(pairs), "n_train": n_train, "methods": list(methods), "steps": steps,
                "top_fraction": top_fraction, "batch_size": batch_size, "interp": package_versions()["interp"]}
    identity = batch.run_id(manifest)
    folder = Path(out_dir) / batch.model_slug(model_name) / (re.sub(r"[^A-Za-z0-9._-]", "_", pairs.name) or "task")
    results: list[MethodResult] = []
    with files.shared_folder(folder, lambda: _prepare(folder, manifest, identity, overwrite),
                             lambda: _other_run(folder, manifest, identity) is None):
        try:
            for method in tqdm(methods, desc="circuit methods", unit="method", disable=not progress):
                path = _unit_path(folder, method)
                if resume and path.exists():
                    results.append(read_unit(path, identity, graph))
                    continue
                result = score_method(model, method, scoring, held_out, steps, top_fraction, progress, batch_size)
                files.write_atomic(path, json.dumps({"run_id": identity, **result.to_dict()}, allow_nan=False))
                results.append(result)
        except KeyboardInterrupt as interrupt:
            done = sum(_unit_path(folder, m).exists() for m in methods)
            raise batch.Interrupted(folder, done, len(methods)) from interrupt
        report = CircuitReport(model_name, pairs.name, len(pairs), n_train, metrics, tuple(results), folder, identity)
        contents = render(report)
        with files.setup_lock(folder):  # one writer of the set at a time
            files.write_file_set(folder, contents, COMPLETE_NAME, {"run_id": identity})
    return report


# ----- rendering -----------------------------------------------------------------------------------
def _split_line(report: CircuitReport) -> str:
    m = report.metrics
    return (f"{plural(report.n_pairs, 'pair')}: edges scored on the first {report.n_train}; faithfulness measured on "
            f"the other {report.n_pairs - report.n_train} (held out). Metric: mean logit difference answer − wrong; "
            f"clean {format_number(m['scoring_clean'])}, corrupted {format_number(m['scoring_corrupted'])} on the "
            f"scoring pairs; clean {format_number(m['held_out_clean'])}, corrupted "
            f"{format_number(m['held_out_corrupted'])} on the held-out pairs.")


SCORE_NOTE = ("An edge's score estimates (exact: is) the change in the metric when that edge alone reads the "
              "corrupted run's sender output; negative: the edge carries the clean behaviour. Faithfulness: "
              "(m(circuit) − m(corrupted)) / (m(clean) − m(corrupted)), 1 = the full model. CPR: area under the "
              "faithfulness curve over the fraction of edges (higher is better); CMD: area between it and 1 "
              "(lower is better); MIB, Mueller et al. 2025.")


def _circuit_line(r: MethodResult) -> str:
    return (f"{r.circuit.n_edges} of {r.circuit.graph.n_edges} edges ({format_number(100 * r.fraction)} % chosen by "
            f"{r.chosen_by}, pruned to input → logits paths); held-out faithfulness {r.faithfulness:.3f}.")


def _comparison(report: CircuitReport) -> list[tuple[str, ...]]:
    return [(r.method, f"{r.seconds:.2f} s", str(r.circuit.n_edges), f"{r.faithfulness:.3f}", f"{r.curve.cpr:.3f}",
             f"{r.curve.cmd:.3f}") for r in report.results]


COMPARISON_HEADER = ("method", "scoring time", "circuit edges", "faithfulness (held out)", "CPR ↑", "CMD ↓")


def to_markdown(report: CircuitReport, file_names: Sequence[str]) -> str:
    lines = [f"# Circuits: {report.model_id} on {report.task}", "", _split_line(report), "",
             "| " + " | ".join(COMPARISON_HEADER) + " |", "|" + "---|" * len(COMPARISON_HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in _comparison(report)]
    lines += ["", SCORE_NOTE, ""]
    for r in report.results:
        lines += [f"## {r.method}", "", f"{DESCRIPTION[r.method]}; scored in {r.seconds:.2f} s.", "",
                  f"Circuit: {_circuit_line(r)} Faithfulness curve (held out): CPR {r.curve.cpr:.3f}, CMD "
                  f"{r.curve.cmd:.3f}.", "", "| rank | edge | score | in circuit |", "|---|---|---|---|"]
        top = Circuit.full(r.circuit.graph, r.circuit.scores).edges[:TOP_EDGES]
        lines += [f"| {rank} | `{e}` | {format_number(r.circuit.score(e))} | {'yes' if e in r.circuit else 'no'} |"
                  for rank, e in enumerate(top, 1)]
        lines.append("")
    lines += ["Files: " + ", ".join(f"`{name}`" for name in file_names) + f"; run id `{report.run_id[:16]}…`.", ""]
    return "\n".join(lines)


def to_html(report: CircuitReport, png: bytes | None) -> str:
    escape = html.escape
    header = "".join(f"<th>{escape(h)}</th>" for h in COMPARISON_HEADER)
    rows = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in _comparison(report))
    curves = (png_img(png, "faithfulness against the fraction of edges, one line per method") if png is not None
              else faithfulness_table([r.curve for r in report.results]))  # no matplotlib: a table
    body = [f"<h1>Circuits: {escape(report.model_id)} on {escape(report.task)}</h1>",
            f"<p>{escape(_split_line(report))}</p>", f"<table><tr>{header}</tr>{rows}</table>",
            f"<p>{escape(SCORE_NOTE)}</p>", "<h2>Faithfulness on the held-out pairs</h2>", curves]
    body += [circuit_section(r.circuit, f"{r.method}: {DESCRIPTION[r.method]}",
                             extra_html=f"<p>Scored in {r.seconds:.2f} s. Circuit: {escape(_circuit_line(r))}</p>")
             for r in report.results]
    return html_page(f"Circuits: {report.model_id} on {report.task}", "".join(body))


def render(report: CircuitReport) -> dict[str, str | bytes]:
    """Every report file's content (file name -> text or bytes), rendered before anything is written."""
    contents: dict[str, str | bytes] = {}
    for r in report.results:
        extra = {"method": r.method, "fraction": r.fraction, "chosen_by": r.chosen_by,
                 "faithfulness_held_out": r.faithfulness, "n_train": report.n_train, "run_id": report.run_id}
        contents[f"graph_{r.method}.json"] = json.dumps({**r.circuit.to_dict(), "report": extra}, allow_nan=False)
        contents[f"circuit_{r.method}.svg"] = circuit_svg(r.circuit)
    curves = [r.curve for r in report.results]
    contents["faithfulness.json"] = json.dumps({"held_out_pairs": report.n_pairs - report.n_train,
                                                "curves": [c.to_dict() for c in curves]}, indent=1, allow_nan=False)
    try:
        png = faithfulness_png(curves, f"Faithfulness on {plural(report.n_pairs - report.n_train, 'held-out pair')}")
        contents["faithfulness.png"] = png
    except ImportError:
        png = None
    contents["circuit.html"] = to_html(report, png)
    contents["summary.md"] = to_markdown(report, sorted([*contents, "summary.md"]))
    return contents


def terminal_summary(report: CircuitReport, top: int = 5) -> str:
    """Where the files are, and each method's circuit and top edges."""
    lines = [f"{report.model_id} on {report.task}: {plural(report.n_train, 'pair')} scored, "
             f"{report.n_pairs - report.n_train} held out"]
    for r in report.results:
        edges = Circuit.full(r.circuit.graph, r.circuit.scores).edges[:top]
        lines.append(f"  {r.method:<7} {r.circuit.n_edges} edges, faithfulness {r.faithfulness:.3f}, CPR "
                     f"{r.curve.cpr:.3f}; top: " + "  ".join(f"{e} {format_number(r.circuit.score(e))}" for e in edges))
    lines.append(f"  report: {report.folder / 'circuit.html'}  (summary.md, graph_<method>.json, faithfulness.png "
                 "in the same folder)")
    return "\n".join(lines)
