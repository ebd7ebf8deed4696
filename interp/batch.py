"""Batch head-score runs: many prompts, many models, resumable and shardable.

A run is split into units (a fixed number of sequences each). Each finished unit's score totals
are written atomically to `OUT/<model>/<source>/units/`, so a run that dies loses at most the unit
in flight, `--resume` skips finished units, and `--shard k/N` runs units k-1, k-1+N, ... so any
scheduler can run shards side by side. The report is written once every unit is on disk; totals
merge exactly (float64 sums in unit order), so resumed, sharded and one-go runs give the same files.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from interp.analysis.heads import (
    SCORE_TYPES,
    HeadScores,
    ScoreSums,
    protocol_tokens,
    repeated_protocol,
    repeated_score_sums,
    text_protocol,
    text_score_sums,
)
from interp.model import HookedTransformer
from interp.report import HeadScoreReport, package_versions, weights_sha256, write_atomic, write_report

DEFAULT_MODEL = "interp-toy"


@dataclass(frozen=True)
class HeadsJob:
    """Everything a batch run needs; the CLI builds one from its arguments."""

    models: tuple[str, ...] = (DEFAULT_MODEL,)
    prompts_file: Path | None = None
    random_repeated: int | None = None  # number of repeated random-token sequences
    length: int = 50
    seed: int = 0
    batch_size: int = 16
    unit_size: int = 64
    device: str = "cpu"
    dtype: str = "float32"
    out_dir: Path = Path("reports")
    top_k: int = 5
    resume: bool = False
    shard: tuple[int, int] = (1, 1)
    formats: tuple[str, ...] = ("csv", "json", "md", "html")
    strict: bool = False
    exclude_bos: bool = False
    exclude_current_token: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        index, count = self.shard
        if not 1 <= index <= count:
            raise ValueError(f"--shard {index}/{count} is invalid: use k/N with 1 <= k <= N, e.g. 1/4.")
        if self.batch_size < 1 or self.unit_size < 1:
            raise ValueError("--batch-size and --unit-size must be >= 1.")


@dataclass
class Outcome:
    """What one (model, source) run produced."""

    model: str
    source: str
    units_done: int
    units_total: int
    report: HeadScoreReport | None = None
    files: dict[str, Path] = field(default_factory=dict)
    skipped_lines: list[tuple[int, str]] = field(default_factory=list)


# ----- prompts -----------------------------------------------------------------------------------
def read_prompts(path: Path) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """Prompts from a text file (one per line) or JSONL (a string or {"text"|"prompt": ...} per line).

    Returns (prompts as (line number, text), problems as (line number, reason)); nothing is dropped
    silently. Each line is decoded on its own, so one bad byte costs one line.
    """
    if not path.exists():
        raise FileNotFoundError(f"Prompt file {path} does not exist.")
    raw_lines = path.read_bytes().split(b"\n")
    if raw_lines and raw_lines[-1] == b"":
        raw_lines.pop()  # the file's final newline ends a line, it does not start one
    is_jsonl = path.suffix == ".jsonl"
    prompts, problems = [], []
    for number, raw in enumerate(raw_lines, start=1):
        try:
            line = raw.rstrip(b"\r").decode("utf-8")
        except UnicodeDecodeError as error:
            problems.append((number, f"not valid UTF-8 (byte {raw[error.start]:#04x} at column {error.start + 1})"))
            continue
        if is_jsonl and line.strip():
            try:
                value = json.loads(line)
            except json.JSONDecodeError as error:
                problems.append((number, f"not valid JSON ({error.msg})"))
                continue
            text = value if isinstance(value, str) else value.get("text", value.get("prompt")) if isinstance(value, dict) else None
            if not isinstance(text, str):
                problems.append((number, 'JSONL lines must be a string or an object with a "text" or "prompt" string'))
                continue
            line = text
        if not line.strip():
            problems.append((number, "empty line"))
            continue
        prompts.append((number, line))
    return prompts, problems


def tokenize_prompts(model: HookedTransformer, prompts: list[tuple[int, str]]) -> tuple[list[torch.Tensor], list[tuple[int, str]]]:
    """Token ids (with BOS) of each prompt that fits the context; the rest as (line, reason). Never truncates."""
    from interp import tokens as tokens_module

    sequences, problems = [], []
    for number, text in prompts:
        tokens = tokens_module.to_tokens(model.tokenizer, text, model._prepend_bos(None), model.cfg.bos_token_id)
        if tokens.shape[1] > model.cfg.n_ctx:
            problems.append((number, f"{tokens.shape[1]} tokens, longer than the model's context "
                                     f"n_ctx={model.cfg.n_ctx} (split it into shorter lines)"))
            continue
        sequences.append(tokens[0])
    return sequences, problems


# ----- the run -----------------------------------------------------------------------------------
def model_slug(name: str) -> str:
    """A folder name for a model id: 'gpt2' -> 'gpt2', 'org/name' -> 'org--name', a path -> its name + hash."""
    path = Path(name)
    if path.exists():
        digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]
        return f"{re.sub(r'[^A-Za-z0-9._-]', '_', path.stem or 'model')}-{digest}"
    return re.sub(r"[^A-Za-z0-9._-]", "_", name.replace("/", "--"))


def _manifest_check(folder: Path, manifest: dict[str, Any], resume: bool) -> None:
    """Refuse to mix units of different runs; without --resume, stale units of another run are removed."""
    path = folder / "manifest.json"
    if path.exists():
        old = json.loads(path.read_text(encoding="utf-8"))
        if old != manifest:
            changed = sorted(k for k in set(old) | set(manifest) if old.get(k) != manifest.get(k))
            if resume:
                raise ValueError(f"{folder} holds a different run (differs in {changed}); "
                                 "use a new --out, or rerun without --resume to start over.")
            for unit in (folder / "units").glob("*.json"):
                unit.unlink()
    write_atomic(path, json.dumps(manifest, indent=1, sort_keys=True))


def _run_units(folder: Path, n_units: int, job: HeadsJob, compute: Callable[[int], ScoreSums],
               stop_after: int | None) -> int:
    index, count = job.shard
    done_here = 0
    for unit in range(index - 1, n_units, count):
        path = folder / "units" / f"{unit:05d}.json"
        if job.resume and path.exists():
            continue
        if stop_after is not None and done_here >= stop_after:
            raise KeyboardInterrupt(f"stopped after {stop_after} units (test hook)")
        write_atomic(path, json.dumps(compute(unit).to_dict()))
        done_here += 1
    return sum((folder / "units" / f"{unit:05d}.json").exists() for unit in range(n_units))


def _merged(folder: Path, n_units: int) -> ScoreSums:
    totals = None
    for unit in range(n_units):
        part = ScoreSums.from_dict(json.loads((folder / "units" / f"{unit:05d}.json").read_text(encoding="utf-8")))
        totals = part if totals is None else totals.merge(part)
    assert totals is not None
    return totals


def _example(model: HookedTransformer, tokens: torch.Tensor, scores: HeadScores, top_k: int, caption: str) -> dict[str, Any]:
    """Patterns of the top heads of every score type on one sequence, for the HTML view."""
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


def run_source(model: HookedTransformer, model_id: str, source: str, job: HeadsJob, weights_hash: str,
               sequences: list[torch.Tensor] | torch.Tensor, prompts_hash: str | None,
               skipped: list[tuple[int, str]], stop_after: int | None = None) -> Outcome:
    """Score one source for one model, unit by unit, and write the report once all units exist."""
    folder = job.out_dir / model_slug(model_id) / source
    n_units = -(-len(sequences) // job.unit_size)
    common = dict(score_types=SCORE_TYPES, exclude_bos=job.exclude_bos, exclude_current_token=job.exclude_current_token,
                  progress=False)
    if source == "repeated":
        protocol = repeated_protocol(job.length, len(sequences), job.seed, model.cfg.bos_token_id is not None,
                                     job.exclude_bos, job.exclude_current_token)

        def compute(unit: int) -> ScoreSums:
            rows = sequences[unit * job.unit_size: (unit + 1) * job.unit_size]
            return repeated_score_sums(model, rows, job.length, job.batch_size, **common)
    else:
        protocol = text_protocol(len(sequences), int(sum(len(s) for s in sequences)), job.exclude_bos,
                                 job.exclude_current_token)
        protocol["n_skipped"] = len(skipped)

        def compute(unit: int) -> ScoreSums:
            return text_score_sums(model, sequences[unit * job.unit_size: (unit + 1) * job.unit_size],
                                   job.batch_size, **common)
    provenance = dict(model_id=model_id, weights_sha256=weights_hash, config=model.cfg.to_dict(),
                      processing=dict(getattr(model, "processing", {}) or {}), dtype=str(model.W_E.dtype).removeprefix("torch."),
                      device=str(model.W_E.device), source=source, protocol=protocol, prompts_sha256=prompts_hash,
                      versions=package_versions())
    manifest = {**{k: v for k, v in provenance.items() if k != "versions"}, "unit_size": job.unit_size,
                "batch_size": job.batch_size, "interp": provenance["versions"]["interp"]}
    _manifest_check(folder, manifest, job.resume)
    from tqdm.auto import tqdm

    with tqdm(total=n_units, desc=f"{model_slug(model_id)} {source}", unit="unit", disable=not job.progress) as bar:
        def tracked(unit: int) -> ScoreSums:
            result = compute(unit)
            bar.update(1)
            return result
        done = _run_units(folder, n_units, job, tracked, stop_after)
    outcome = Outcome(model_id, source, done, n_units, skipped_lines=skipped)
    if done < n_units:
        return outcome
    scores = _merged(folder, n_units).to_scores(protocol)
    example_tokens = sequences[0]
    caption = ("The first sequence of the protocol." if source == "repeated" else "The first prompt.") + \
        " Choose a head; hover a cell or a token to read the attention."
    outcome.report = HeadScoreReport(scores=scores, example=_example(model, example_tokens, scores, job.top_k, caption),
                                     **provenance)
    outcome.files = write_report(outcome.report, folder, job.formats, job.top_k)
    return outcome


def run(job: HeadsJob, log: Callable[[str], None] = lambda message: print(message, file=sys.stderr),
        stop_after: int | None = None) -> list[Outcome]:
    """Run every (model, source) of the job; returns what each produced. `stop_after` is a test hook
    that interrupts the run after that many units, as a crash would."""
    from interp.loading import load

    if job.prompts_file is None and job.random_repeated is None:
        job = HeadsJob(**{**asdict(job), "random_repeated": 100})
    prompts, line_problems = read_prompts(job.prompts_file) if job.prompts_file else ([], [])
    if job.prompts_file and not prompts:
        detail = "; ".join(f"line {n}: {why}" for n, why in line_problems[:5]) or "the file is empty"
        raise ValueError(f"No usable prompts in {job.prompts_file} ({detail}).")
    outcomes = []
    for model_id in job.models:
        model = load(model_id, device=job.device, dtype=job.dtype)
        weights_hash = weights_sha256(model)
        if job.random_repeated is not None:
            tokens = protocol_tokens(model, job.random_repeated, job.length, job.seed)
            digest = hashlib.sha256(tokens.numpy().tobytes()).hexdigest()
            outcomes.append(run_source(model, model_id, "repeated", job, weights_hash, tokens, digest, [], stop_after))
        if prompts:
            if model.tokenizer is None:
                raise ValueError(f"{model_id} has no tokenizer, so it cannot score text prompts; "
                                 "use --random-repeated, or a model directory with tokenizer files.")
            sequences, token_problems = tokenize_prompts(model, prompts)
            problems = sorted(line_problems + token_problems)
            for number, why in problems:
                log(f"{job.prompts_file}:{number}: {why}" + ("" if job.strict else " (skipped)"))
            if problems and job.strict:
                raise ValueError(f"{len(problems)} bad prompt lines in {job.prompts_file} (--strict); fix or drop them.")
            if not sequences:
                raise ValueError(f"No prompt in {job.prompts_file} fits {model_id}'s context n_ctx={model.cfg.n_ctx}.")
            digest = hashlib.sha256(b"".join(s.numpy().tobytes() + b"|" for s in sequences)).hexdigest()
            outcomes.append(run_source(model, model_id, "prompts", job, weights_hash, sequences, digest, problems, stop_after))
    return outcomes


def terminal_summary(outcomes: list[Outcome], top_k: int) -> str:
    """A short table of the top heads per score type, and where the reports are."""
    lines = []
    for outcome in outcomes:
        if outcome.report is None:
            lines.append(f"{outcome.model} [{outcome.source}]: {outcome.units_done}/{outcome.units_total} units on disk; "
                         "the report is written when all shards have run (or rerun with --resume).")
            continue
        scores = outcome.report.scores
        lines.append(f"{outcome.model} [{outcome.source}]")
        if scores.loss_first_repeat is not None:
            lines.append(f"  loss first copy {scores.loss_first_repeat:.3f} -> second copy {scores.loss_second_repeat:.3f}")
        for name in scores.scores:
            top = "  ".join(f"L{layer}H{head} {value:.2f}" for layer, head, value in scores.top_heads(name, top_k))
            lines.append(f"  {name:<16} {top}")
        if "html" in outcome.files:
            lines.append(f"  report: {outcome.files['html']}")
        elif outcome.files:
            lines.append(f"  files: {', '.join(str(p) for p in outcome.files.values())}")
    return "\n".join(lines)
