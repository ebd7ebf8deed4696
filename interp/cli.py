"""The `interp` command line: `interp --version`, `interp info MODEL`, `interp heads ...`, `interp circuit ...`."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import interp


def info(args: argparse.Namespace) -> int:
    from interp.components import factory
    from interp.model import HookedTransformer

    model = HookedTransformer.from_pretrained(args.model, dtype=args.dtype)
    cfg = model.cfg
    n_params = sum(p.numel() for name, p in model.named_parameters() if not (name == "W_U" and cfg.tie_word_embeddings))
    print(f"{'model':<20}{args.model}")
    for piece, description in factory.describe(cfg).items():
        print(f"{piece:<20}{description}")
    for key, value in cfg.to_dict().items():
        print(f"{key:<20}{value}")
    print(f"{'parameters':<20}{n_params:,}" + ("  (W_U tied to W_E, counted once)" if cfg.tie_word_embeddings else ""))
    print(f"{'hook points':<20}{len(model.hook_names())}")
    print(f"{'tokenizer':<20}{type(model.tokenizer).__name__ if model.tokenizer is not None else 'none'}")
    return 0


def heads(args: argparse.Namespace) -> int:
    from interp import batch

    shard = tuple(int(part) for part in args.shard.split("/")) if args.shard else (1, 1)
    job = batch.HeadsJob(
        models=tuple(args.model or [batch.DEFAULT_MODEL]), prompts_file=args.prompts, random_repeated=args.random_repeated,
        length=args.length, seed=args.seed, batch_size=args.batch_size, unit_size=args.unit_size, device=args.device,
        dtype=args.dtype, out_dir=args.out, top_k=args.top_k, resume=args.resume, overwrite=args.overwrite,
        shard=shard, formats=tuple(part.strip() for part in args.format.split(",")),  # type: ignore[arg-type]
        strict=args.strict, exclude_bos=args.exclude_bos, exclude_current_token=args.exclude_current_token,
        progress=not args.no_progress)
    try:
        outcomes = batch.run(job)
    except batch.Interrupted as interrupt:
        print(f"interp heads: interrupted: {interrupt.units_done} of {interrupt.units_total} units are saved in "
              f"{interrupt.folder}; run the same command with --resume to continue.", file=sys.stderr)
        return 130
    print(batch.terminal_summary(outcomes, args.top_k))
    return 0


def _shard(text: str) -> str:
    if not re.fullmatch(r"\d+/\d+", text):
        raise argparse.ArgumentTypeError(f"--shard takes k/N, e.g. 1/4, got {text!r}")
    return text


def add_heads_command(commands: Any) -> None:
    parser = commands.add_parser(
        "heads", help="score every head as induction / previous-token / duplicate-token and write reports",
        description="Head-score report (CSV, JSON, Markdown, HTML) for one or more models. With neither --prompts "
                    "nor --random-repeated, scores 100 repeated random-token sequences.")
    parser.add_argument("--model", action="append", help="bundled name (default interp-toy), hub id, directory "
                        "or .safetensors file; repeat for several models")
    parser.add_argument("--prompts", type=Path, help="text file, one prompt per line (UTF-8, or UTF-16/32 with a "
                        "byte-order mark; \\n, \\r\\n or \\r line ends), or JSON Lines if named .jsonl or .json in any "
                        "case (a string or {\"text\": ...} per line; a single JSON array is refused)")
    parser.add_argument("--random-repeated", type=int, metavar="N", help="score N sequences of BOS + L random tokens repeated twice")
    parser.add_argument("--length", type=int, default=50, metavar="L", help="random tokens per copy (default 50)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random tokens (default 0)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--unit-size", type=int, default=64, help="sequences per saved unit of work (resume granularity)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps (checked before any model loads)")
    parser.add_argument("--dtype", default="float32", help="float32 (fp32), bfloat16 (bf16) or float16 (fp16)")
    parser.add_argument("--out", type=Path, default=Path("reports"), help="output folder (default reports/); a run "
                        "locks OUT/MODEL/SOURCE, so a different run into it at the same time is refused")
    parser.add_argument("--top-k", type=int, default=5, help="heads listed per score type")
    parser.add_argument("--resume", action="store_true", help="skip units this same run already finished in --out "
                        "(units of another run are refused)")
    parser.add_argument("--overwrite", action="store_true", help="if --out holds a different (or damaged) run, "
                        "delete its units and reports and start this run there; without it such a run is refused")
    parser.add_argument("--shard", type=_shard, help="run shard k of N (e.g. 2/4); shards of one run may share --out, "
                        "at the same time too; the report appears when all shards are done")
    parser.add_argument("--format", default="csv,json,md,html", help="comma-separated: csv,json,md,html")
    parser.add_argument("--strict", action="store_true", help="fail on any bad prompt line instead of skipping it")
    parser.add_argument("--exclude-bos", action="store_true", help="score attention as a fraction of non-BOS attention")
    parser.add_argument("--exclude-current-token", action="store_true", help="...and/or of attention off the diagonal")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(run=heads)


def circuit(args: argparse.Namespace) -> int:
    from interp import batch, circuit_report

    methods = [part for value in (args.method or circuit_report.DEFAULT_METHODS) for part in value.split(",")]
    try:
        report = circuit_report.run_circuit_report(
            args.model, args.task, methods, args.out, steps=args.steps, n_pairs=args.n_pairs, n_train=args.n_train,
            seed=args.seed, top_fraction=args.top_fraction, device=args.device, dtype=args.dtype,
            batch_size=args.batch_size, resume=args.resume,
            overwrite=args.overwrite, progress=not args.no_progress)
    except batch.Interrupted as interrupt:
        print(f"interp circuit: interrupted: {interrupt.units_done} of {interrupt.units_total} methods are saved in "
              f"{interrupt.folder}/units; run the same command with --resume to continue.", file=sys.stderr)
        return 130
    print(circuit_report.terminal_summary(report))
    return 0


def add_circuit_command(commands: Any) -> None:
    parser = commands.add_parser(
        "circuit", help="score every edge (EAP, EAP-IG, exact patching), find circuits, measure their faithfulness",
        description="Edge-level circuit report: scores every edge of the model's graph on half of the task's "
                    "clean/corrupted pairs, chooses a circuit per method and measures its faithfulness (and MIB's "
                    "curve, CPR, CMD) on the other half. Writes graph_<method>.json (EAP-IG/MIB format), "
                    "circuit_<method>.svg, circuit.html, faithfulness.png/.json and summary.md into OUT/MODEL/TASK.")
    parser.add_argument("--model", default="interp-toy", help="bundled name (default interp-toy), hub id, directory "
                        "or .safetensors file")
    parser.add_argument("--task", type=Path, help="JSON Lines task file, one {\"clean\", \"corrupted\", \"answer\", "
                        "\"wrong\"} object per line (both prompts the same number of tokens; answer and wrong one "
                        "token each); default: the built-in induction task")
    parser.add_argument("--method", action="append", help="eap, eap-ig, exact or greedy; repeat it or give a comma "
                        "list (default eap,eap-ig,exact)")
    parser.add_argument("--steps", type=int, default=5, help="EAP-IG interpolation steps (default 5)")
    parser.add_argument("--n-pairs", type=int, help="pairs of the built-in task (default 64), or the first N of --task")
    parser.add_argument("--n-train", type=int, help="pairs scored (default half); the rest are held out")
    parser.add_argument("--seed", type=int, default=0, help="seed of the built-in task's random tokens (default 0)")
    parser.add_argument("--top-fraction", type=float, help="the circuit: the top-|score| edges at this fraction of "
                        "all edges (default: the smallest MIB fraction reaching faithfulness 0.8 on the scoring pairs)")
    parser.add_argument("--batch-size", type=int, help="pairs per forward when scoring (default: all at once; the "
                        "scores are the same up to rounding, with one batch's memory)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps (checked before the model loads)")
    parser.add_argument("--dtype", default="float32", help="float32 (fp32), bfloat16 (bf16) or float16 (fp16)")
    parser.add_argument("--out", type=Path, default=Path("reports"), help="output folder (default reports/); the run "
                        "writes to and locks OUT/MODEL/TASK")
    parser.add_argument("--resume", action="store_true", help="keep the methods this same run already finished")
    parser.add_argument("--overwrite", action="store_true", help="if OUT/MODEL/TASK holds a different run, delete its "
                        "files and start this run there; without it such a run is refused")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(run=circuit)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="interp", description="Mechanistic interpretability for GPT-2, GPT-NeoX, Llama, Mistral and Qwen2 models.")
    parser.add_argument("--version", action="version", version=f"interp {interp.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    info_parser = commands.add_parser("info", help="print a model's config and parameter count")
    info_parser.add_argument("model", help="bundled name (interp-toy), hub id, directory or .safetensors file")
    info_parser.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16")
    info_parser.set_defaults(run=info)
    add_heads_command(commands)
    add_circuit_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.run(args)
    except KeyboardInterrupt:
        print(f"interp {args.command}: interrupted; rerun the command (with --resume for heads and circuit) to "
              "continue.", file=sys.stderr)
        return 130
    except (KeyError, ValueError, OSError, TypeError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"interp {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
