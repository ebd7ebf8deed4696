"""The `interp` command line: `interp --version`, `interp info MODEL`, `interp heads ...`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import interp


def info(args: argparse.Namespace) -> int:
    from interp.loading import load

    model = load(args.model, dtype=args.dtype)
    cfg = model.cfg
    n_params = sum(p.numel() for name, p in model.named_parameters() if not (name == "W_U" and cfg.tie_word_embeddings))
    print(f"model       {args.model}")
    for key, value in cfg.to_dict().items():
        print(f"{key:<20}{value}")
    print(f"{'d_head':<20}{cfg.d_head}")
    print(f"{'parameters':<20}{n_params:,}" + ("  (W_U tied to W_E, counted once)" if cfg.tie_word_embeddings else ""))
    print(f"{'hook points':<20}{len(model.hook_names())}")
    print(f"{'tokenizer':<20}{type(model.tokenizer).__name__ if model.tokenizer is not None else 'none'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="interp", description="Mechanistic interpretability for GPT-2-family models.")
    parser.add_argument("--version", action="version", version=f"interp {interp.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    info_parser = commands.add_parser("info", help="print a model's config and parameter count")
    info_parser.add_argument("model", help="bundled name (interp-toy), hub id, directory or .safetensors file")
    info_parser.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16")
    info_parser.set_defaults(run=info)
    try:
        from interp.report_cli import add_heads_command
    except ImportError:
        pass
    else:
        add_heads_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.run(args)
    except (KeyError, ValueError, OSError, TypeError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"interp {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
