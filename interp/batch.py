"""Batch head-score runs: many prompts, many models, resumable and shardable, never mixed.

A run is split into units (a fixed number of sequences each). Each finished unit's score totals are
written atomically to `OUT/<model>/<source>/units/`, so a run that dies loses at most the unit in flight,
`--resume` skips finished units, and `--shard k/N` runs units k-1, k-1+N, ... so any scheduler can run
shards side by side. The report is written once every unit is on disk; totals merge exactly (float64
sums in unit order), so resumed, sharded and one-go runs give the same files.

Reliability (DESIGN.md): every option is checked before a model loads, and bad prompt lines under
`--strict` before anything is written. A run's identity is the sha256 of its manifest (model, weights,
config, dtype, device, protocol, prompts, unit and batch sizes); `manifest.json` and every unit file carry
it, and a unit of another run is refused, never merged. A run folder is locked with `flock` (it dies with
the process): a run takes `.lock` shared for its whole life, after checking the folder under the brief
exclusive `.lock-setup`. Only a process alone in the folder may change it (remove temp files of killed
runs, replace another run's files); shards of the same run share it; a different run is refused. A folder
holding a different (or unreadable) run is replaced only with `--overwrite`. The report files are one set
(`report.py`: `report.complete.json` is written last).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from interp import files, loading
from interp.analysis.heads import (
    SCORE_TYPES,
    ScoreSums,
    protocol_tokens,
    repeated_protocol,
    repeated_score_sums,
    text_protocol,
    text_score_sums,
)
from interp.display import plural
from interp.model import HookedTransformer
from interp.prompts import read_prompts, tokenize_prompts  # noqa: F401  (read_prompts: public here too)
from interp.report import (COMPLETE_NAME, FILE_NAMES, HeadScoreReport, check_finite, check_formats, complete_report,
                           example_patterns, listed_heads, none_listed, package_versions, weights_sha256,
                           write_report)

DEFAULT_MODEL = "interp-toy"
DEVICE_TYPES = ("cpu", "cuda", "mps")
REPLACE_FIX = "use a new --out, or --overwrite to delete it and start this run there"
MANIFEST_FIX = ("delete it and rerun with --resume to keep the finished units of this run (each carries its run's "
                "identity), or use a new --out, or --overwrite to start over")
UNIT_FIX = "delete it and rerun with --resume to recompute that unit (or rerun without --resume to recompute all)"


@dataclass(frozen=True)
class HeadsJob:
    """Everything a batch run needs; the CLI builds one from its arguments. Checked when built."""

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
    overwrite: bool = False  # replace a different run's files in the run folder
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
        for option, value, least in (("--length", self.length, 2), ("--batch-size", self.batch_size, 1),
                                     ("--unit-size", self.unit_size, 1), ("--top-k", self.top_k, 1),
                                     ("--random-repeated", self.random_repeated, 1)):
            if value is not None and value < least:
                raise ValueError(f"{option} must be >= {least}, got {value}.")
        if not self.models:
            raise ValueError(f"No model given; pass --model NAME (default {DEFAULT_MODEL}).")
        if self.dtype not in loading.DTYPES:
            raise ValueError(f"--dtype {self.dtype!r} is not known; use one of {', '.join(loading.DTYPES)}.")
        check_formats(self.formats)
        check_device(self.device)


def check_device(device: str) -> None:
    """ValueError unless `device` names a device this machine has (cpu, cuda, cuda:N, mps)."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"--device {device!r} is not a device name; use cpu, cuda, cuda:N or mps.") from None
    if parsed.type not in DEVICE_TYPES:
        raise ValueError(f"--device {device!r}: interp runs on cpu, cuda, cuda:N or mps.")
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: this PyTorch ({torch.__version__}) sees no CUDA GPU; use --device cpu, "
                         "or install a CUDA build of PyTorch on a machine with a GPU.")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                         f"cuda:0 to cuda:{torch.cuda.device_count() - 1}.")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("--device mps: MPS is not available here (it needs Apple silicon and a PyTorch build "
                         "with MPS); use --device cpu.")


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


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (or a crash hook) during a run: what is saved, and where."""

    def __init__(self, folder: Path, units_done: int, units_total: int) -> None:
        super().__init__(f"interrupted: {units_done} of {units_total} units are saved in {folder}")
        self.folder, self.units_done, self.units_total = folder, units_done, units_total


# ----- the run folder ----------------------------------------------------------------------------
def model_slug(name: str) -> str:
    """A folder name for a model id: 'gpt2' -> 'gpt2', 'org/name' -> 'org--name', a path -> its name + hash."""
    path = Path(name)
    if path.exists():
        digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]
        return f"{re.sub(r'[^A-Za-z0-9._-]', '_', path.stem or 'model')}-{digest}"
    return re.sub(r"[^A-Za-z0-9._-]", "_", name.replace("/", "--"))


def run_id(manifest: dict[str, Any]) -> str:
    """The identity of a run: sha256 of its manifest (canonical JSON, without a stored run_id)."""
    return files.json_sha256({key: value for key, value in manifest.items() if key != "run_id"})


def _unit_path(folder: Path, unit: int) -> Path:
    return folder / "units" / f"{unit:05d}.json"


def unit_of_run(path: Path, identity: str, damaged_fix: str, other_run_fix: str) -> dict[str, Any]:
    """A unit file's JSON object; ValueError naming the file if it is unreadable or stamped with another run id."""
    data = files.read_json(path, "unit", damaged_fix)
    found = data.get("run_id") if isinstance(data, dict) else None
    if found != identity:
        raise ValueError(f"The unit file {path} belongs to another run (run id {str(found)[:12]}…, this run is "
                         f"{identity[:12]}…), so it is never used; {other_run_fix}.")
    return data


def read_unit(path: Path, identity: str, unit: int) -> ScoreSums:
    """A unit's totals; ValueError naming the file if it is damaged or belongs to another run or unit."""
    data = unit_of_run(path, identity, UNIT_FIX, "use a new --out, or run without --resume (with --overwrite if the "
                                                 "folder holds that other run) to start over")
    if data.get("unit") != unit:
        raise ValueError(f"The unit file {path} holds unit {data.get('unit')}, not {unit}; {UNIT_FIX}.")
    try:
        return ScoreSums.from_dict(data)
    except (KeyError, TypeError, ValueError, AttributeError):
        raise ValueError(f"The unit file {path} is damaged (missing or malformed totals); {UNIT_FIX}.") from None


def _other_run(folder: Path, manifest: dict[str, Any]) -> str | None:
    """Why `folder` holds files of a run other than `manifest`'s (naming the file and the fix), or None."""
    path = folder / "manifest.json"
    identity = run_id(manifest)
    if path.exists():
        try:
            old = files.read_json(path, "manifest", MANIFEST_FIX)
        except ValueError as error:
            return str(error)
        if not isinstance(old, dict):
            return f"The manifest file {path} is damaged (not a JSON object); {MANIFEST_FIX}."
        if run_id(old) == identity:
            return None
        changed = sorted(k for k in set(old) | set(manifest) if k != "run_id" and old.get(k) != manifest.get(k))
        return f"{folder} holds a different run (differs in {changed}; see {path}); {REPLACE_FIX}."
    for path in sorted((folder / "units").glob("*.json")):
        try:
            read_unit(path, identity, int(path.stem) if path.stem.isdigit() else -1)
        except ValueError as error:
            return str(error)
    return None


def _clear(folder: Path) -> None:
    """Delete a run's files (completion marker first, manifest last); other files in the folder stay."""
    for name in (COMPLETE_NAME, *FILE_NAMES.values()):
        (folder / name).unlink(missing_ok=True)
    for path in (folder / "units").glob("*.json"):
        path.unlink()
    (folder / "manifest.json").unlink(missing_ok=True)


def _prepare(folder: Path, manifest: dict[str, Any], identity: str, job: HeadsJob) -> None:
    """Make the folder this run's (only while no other process is in it)."""
    files.remove_temp_files(folder)
    files.remove_temp_files(folder / "units")
    reason = _other_run(folder, manifest)
    if reason and not job.overwrite:
        raise ValueError(reason)
    if reason:
        _clear(folder)
    if reason or not (folder / "manifest.json").exists():
        files.write_atomic(folder / "manifest.json",
                           json.dumps({**manifest, "run_id": identity}, indent=1, sort_keys=True, allow_nan=False))


def _same_run(folder: Path, manifest: dict[str, Any]) -> bool:
    return (folder / "manifest.json").exists() and _other_run(folder, manifest) is None


# ----- the run -----------------------------------------------------------------------------------
def _units_on_disk(folder: Path, n_units: int) -> int:
    return sum(_unit_path(folder, unit).exists() for unit in range(n_units))


def _run_units(folder: Path, n_units: int, job: HeadsJob, identity: str, compute: Callable[[int], ScoreSums],
               stop_after: int | None) -> int:
    index, count = job.shard
    done_here = 0
    for unit in range(index - 1, n_units, count):
        path = _unit_path(folder, unit)
        if job.resume and path.exists():
            read_unit(path, identity, unit)  # a unit of another run or a damaged one is refused now
            continue
        if stop_after is not None and done_here >= stop_after:
            raise KeyboardInterrupt(f"stopped after {stop_after} units (test hook)")
        sums = compute(unit)
        check_finite(sums.sums, dict(sums.loss_sums), f"unit {unit} of {folder}")
        record = {"run_id": identity, "unit": unit, **sums.to_dict()}
        files.write_atomic(path, json.dumps(record, allow_nan=False))
        done_here += 1
    return _units_on_disk(folder, n_units)


def _merged(folder: Path, n_units: int, identity: str) -> ScoreSums:
    totals = None
    for unit in range(n_units):
        part = read_unit(_unit_path(folder, unit), identity, unit)
        totals = part if totals is None else totals.merge(part)
    assert totals is not None
    return totals


def _protocol(model: HookedTransformer, source: str, job: HeadsJob, sequences: list[torch.Tensor] | torch.Tensor,
              skipped: list[tuple[int, str]]) -> tuple[dict[str, Any], Callable[[int], ScoreSums]]:
    """The protocol record of a source and the function that scores one unit of it."""
    common = dict(score_types=SCORE_TYPES, exclude_bos=job.exclude_bos, exclude_current_token=job.exclude_current_token,
                  progress=False)
    if source == "repeated":
        protocol = repeated_protocol(job.length, len(sequences), job.seed, model.cfg.bos_token_id is not None,
                                     job.exclude_bos, job.exclude_current_token)

        def compute(unit: int) -> ScoreSums:
            rows = sequences[unit * job.unit_size: (unit + 1) * job.unit_size]
            return repeated_score_sums(model, rows, job.length, job.batch_size, **common)
        return protocol, compute
    protocol = text_protocol(len(sequences), int(sum(len(s) for s in sequences)), job.exclude_bos,
                             job.exclude_current_token)
    protocol["n_skipped"] = len(skipped)

    def compute_text(unit: int) -> ScoreSums:
        return text_score_sums(model, sequences[unit * job.unit_size: (unit + 1) * job.unit_size],
                               job.batch_size, **common)
    return protocol, compute_text


def _write_report(model: HookedTransformer, folder: Path, outcome: Outcome, job: HeadsJob, identity: str,
                  provenance: dict[str, Any], first_sequence: torch.Tensor) -> None:
    """The report set from the units on disk, unless `--resume` finds it complete for this run."""
    with files.setup_lock(folder):  # one writer of the set at a time (shards may finish together)
        if job.resume and "json" in job.formats and complete_report(folder, job.formats, identity, job.top_k):
            outcome.report = HeadScoreReport.from_json(folder / FILE_NAMES["json"])
            outcome.files = {fmt: folder / FILE_NAMES[fmt] for fmt in job.formats}
            return
        scores = _merged(folder, outcome.units_total, identity).to_scores(provenance["protocol"])
        caption = ("The first sequence of the protocol." if outcome.source == "repeated" else "The first prompt.") + \
            " Choose a head; hover a cell or a token to read the attention."
        example = example_patterns(model, first_sequence, scores, job.top_k, caption)
        outcome.report = HeadScoreReport(scores=scores, example=example, **provenance)
        outcome.files = write_report(outcome.report, folder, job.formats, job.top_k, run_id=identity)


def run_source(model: HookedTransformer, model_id: str, source: str, job: HeadsJob, weights_hash: str,
               sequences: list[torch.Tensor] | torch.Tensor, prompts_hash: str | None,
               skipped: list[tuple[int, str]], stop_after: int | None = None) -> Outcome:
    """Score one source for one model, unit by unit, and write the report once all units exist."""
    folder = job.out_dir / model_slug(model_id) / source
    n_units = -(-len(sequences) // job.unit_size)
    protocol, compute = _protocol(model, source, job, sequences, skipped)
    provenance = dict(model_id=model_id, weights_sha256=weights_hash, config=model.cfg.to_dict(),
                      processing=dict(getattr(model, "processing", {}) or {}), dtype=str(model.W_E.dtype).removeprefix("torch."),
                      device=str(model.W_E.device), source=source, protocol=protocol, prompts_sha256=prompts_hash,
                      versions=package_versions())
    manifest = {**{k: v for k, v in provenance.items() if k != "versions"}, "unit_size": job.unit_size,
                "batch_size": job.batch_size, "interp": provenance["versions"]["interp"]}
    from tqdm.auto import tqdm

    outcome = Outcome(model_id, source, 0, n_units, skipped_lines=skipped)
    identity = run_id(manifest)
    with files.shared_folder(folder, lambda: _prepare(folder, manifest, identity, job), lambda: _same_run(folder, manifest)):
        try:
            with tqdm(total=n_units, desc=f"{model_slug(model_id)} {source}", unit="unit", disable=not job.progress) as bar:
                def tracked(unit: int) -> ScoreSums:
                    result = compute(unit)
                    bar.update(1)
                    return result
                outcome.units_done = _run_units(folder, n_units, job, identity, tracked, stop_after)
            if outcome.units_done == n_units:
                _write_report(model, folder, outcome, job, identity, provenance, sequences[0])
        except KeyboardInterrupt as interrupt:
            raise Interrupted(folder, _units_on_disk(folder, n_units), n_units) from interrupt
    return outcome


def _checked_prompts(job: HeadsJob, log: Callable[[str], None]) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """The prompt file's lines; with --strict a bad line fails here, before any model loads."""
    if job.prompts_file is None:
        return [], []
    prompts, problems = read_prompts(job.prompts_file)
    if job.strict:
        _report_problems(job, problems, log)
    return prompts, problems


def _report_problems(job: HeadsJob, problems: list[tuple[int, str]], log: Callable[[str], None]) -> None:
    """Log each bad prompt line; with --strict they are an error."""
    for number, why in problems:
        log(f"{job.prompts_file}:{number}: {why}" + ("" if job.strict else " (skipped)"))
    if problems and job.strict:
        raise ValueError(f"{plural(len(problems), 'bad prompt line')} in {job.prompts_file} (--strict); "
                         "fix or drop them.")


def _sources(model: HookedTransformer, model_id: str, job: HeadsJob, prompts: list[tuple[int, str]],
             line_problems: list[tuple[int, str]], log: Callable[[str], None]) -> list[tuple[str, Any, str, list]]:
    """(source, sequences, their sha256, skipped lines) for each source of one model, all checked before any is run."""
    sources = []
    if job.random_repeated is not None:
        tokens = protocol_tokens(model, job.random_repeated, job.length, job.seed)
        sources.append(("repeated", tokens, hashlib.sha256(tokens.numpy().tobytes()).hexdigest(), []))
    if prompts:
        sequences, token_problems = tokenize_prompts(model, prompts)
        problems = sorted(line_problems + token_problems)
        _report_problems(job, problems, log)
        if not sequences:
            raise ValueError(f"No prompt in {job.prompts_file} fits {model_id}'s context n_ctx={model.cfg.n_ctx}.")
        digest = hashlib.sha256(b"".join(s.numpy().tobytes() + b"|" for s in sequences)).hexdigest()
        sources.append(("prompts", sequences, digest, problems))
    return sources


def run(job: HeadsJob, log: Callable[[str], None] = lambda message: print(message, file=sys.stderr),
        stop_after: int | None = None) -> list[Outcome]:
    """Run every (model, source) of the job; returns what each produced. `stop_after` is a test hook
    that interrupts the run after that many units, as a crash would."""
    if job.prompts_file is None and job.random_repeated is None:
        job = dataclasses.replace(job, random_repeated=100)
    prompts, line_problems = _checked_prompts(job, log)
    if len(job.models) > 1:  # every model loads and every source checks (with --strict too) before anything is written
        for model_id in job.models:
            _sources(HookedTransformer.from_pretrained(model_id, device=job.device, dtype=job.dtype), model_id, job,
                     prompts, line_problems, log if job.strict else (lambda message: None))
    outcomes = []
    for model_id in job.models:
        model = HookedTransformer.from_pretrained(model_id, device=job.device, dtype=job.dtype)
        weights_hash = weights_sha256(model)
        for source, sequences, digest, skipped in _sources(model, model_id, job, prompts, line_problems, log):
            outcomes.append(run_source(model, model_id, source, job, weights_hash, sequences, digest, skipped, stop_after))
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
            listed = listed_heads(scores, name, top_k)
            top = ("n/a (0 queries)" if not scores.measured(name) else
                   "  ".join(f"L{layer}H{head} {value:.2f}" for layer, head, value in listed) or none_listed(scores, name))
            lines.append(f"  {name:<16} {top}")
        if "html" in outcome.files:
            lines.append(f"  report: {outcome.files['html']}")
        elif outcome.files:
            lines.append(f"  files: {', '.join(str(p) for p in outcome.files.values())}")
    return "\n".join(lines)
