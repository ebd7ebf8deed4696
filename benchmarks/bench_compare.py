"""interp against `transformers`, TransformerLens and nnsight: speed, peak memory, load time, equivalence.

    python benchmarks/bench_compare.py                           # GPT-2 small shape, 1x128 8x256 4x1024, 5 reps (~25 min)
    python benchmarks/bench_compare.py --reps 1 --shapes 1x128   # a short run of the full mode
    python benchmarks/bench_compare.py --quick                   # tiny model and shapes, 1 rep, prints only (CI)

The model: random weights with GPT-2 small's exact architecture (`interp.testing.random_hf_gpt2`, LayerNorms
randomised) and the real GPT-2 tokenizer, saved with save_pretrained into a temporary directory; every
library loads it from that path, offline. All timings are in one process, fp32, 2 threads, under
torch.no_grad: one warm-up call each, then `--reps` rounds that call every runner once in turn; medians.

- forward (logits): transformers GPT2LMHeadModel with sdpa and with eager attention; TransformerLens 3.9
  raw (its from_pretrained_no_processing) and with its default from_pretrained processing (fold_ln,
  center_writing_weights, center_unembed, fold_value_biases); interp raw (our default load).
- run_with_cache with every hook, and patterns only (names ending hook_pattern): TL (default processing,
  as in every other TL row) vs interp; a no-op hook on every hook_resid_pre via run_with_hooks: TL vs interp.
- every block's output saved: nnsight 0.8 wrapped around a second transformers sdpa model,
  `with model.trace(tokens): outs = nnsight.save([model.transformer.h[i].output for i in ...])` (nnsight 0.8
  saves a container with nnsight.save; a GPT-2 block returns a tensor in transformers 5), vs interp
  run_with_cache(names_filter=...hook_resid_post), the same tensors.
- induction, previous-token and duplicate-token scores of all heads on the repeated-random-token protocol
  (`interp.analysis.heads.protocol_tokens`, the same tokens for both): the TransformerLens recipe (a hook on
  every hook_pattern reduces the pattern's diagonals to per-head sums; run_with_hooks(return_type=None),
  in batches) vs `interp.analysis.heads.repeated_score_sums(..., with_loss=False, progress=False)`.
- peak extra RSS of one call at the largest shape (VmHWM after /proc/self/clear_refs, minus VmRSS before).
- load time and peak RSS, each loader in a fresh process with its imports done before the clock starts.
- equivalence of every shared hook against TransformerLens (benchmarks/tl_equivalence.py, which also says
  exactly how TransformerLens is loaded from a path: the steps of its from_pretrained, since that function
  itself accepts only official hub names).

Writes a section of benchmarks/RESULTS.md and benchmarks/results_compare.json (not with --quick or
--no-write). Without transformer_lens or nnsight installed (`pip install -e ".[bench]"`) their rows are skipped.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is loaded from a local directory

import torch
from transformers import GPT2LMHeadModel

from bench_forward import machine, peak_rss_of, time_interleaved, write_section
from interp import HookedTransformer
from interp.analysis.heads import SCORE_TYPES, protocol_tokens, repeated_score_sums
from interp.testing import hf_config
from tl_equivalence import equivalence_markdown, equivalence_report, load_tl, save_gpt2_directory

HERE = Path(__file__).parent
MARK = "bench_compare"
Runner = Callable[[torch.Tensor], Any]

# (row label, numerator, denominator, target text, check(shape, ratio) -> True/False, or None where no target)
RATIOS: list[tuple[str, str, str, str, Callable[[str, float], bool | None]]] = [
    ("forward: interp ÷ HF sdpa", "interp_forward", "hf_sdpa", "≤ 1.00", lambda shape, r: r <= 1.0),
    ("forward: HF eager ÷ interp", "hf_eager", "interp_forward", "", lambda shape, r: None),
    ("forward: TL (processed) ÷ interp", "tl_forward", "interp_forward", "", lambda shape, r: None),
    ("forward: TL (raw) ÷ interp", "tl_raw_forward", "interp_forward", "", lambda shape, r: None),
    ("cache all: interp ÷ interp forward", "interp_cache_all", "interp_forward", "≤ 1.3", lambda shape, r: r <= 1.3),
    ("cache all: TL ÷ interp", "tl_cache_all", "interp_cache_all", "≥ 2 at 8x256, ≥ 3 at 4x1024",
     lambda shape, r: {"8x256": r >= 2, "4x1024": r >= 3}.get(shape)),
    ("patterns only: TL ÷ interp", "tl_cache_patterns", "interp_cache_patterns", "", lambda shape, r: None),
    ("patterns only: interp ÷ interp forward", "interp_cache_patterns", "interp_forward", "", lambda shape, r: None),
    ("no-op hooks: TL ÷ interp", "tl_noop_hooks", "interp_noop_hooks", "", lambda shape, r: None),
    ("no-op hooks: interp ÷ interp forward", "interp_noop_hooks", "interp_forward", "", lambda shape, r: None),
    ("block outputs: nnsight ÷ interp", "nnsight_block_outputs", "interp_block_outputs", "", lambda shape, r: None),
]


def optional(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


def versions(importable: dict[str, bool]) -> dict[str, str]:
    found = {}
    for package in ("torch", "transformers", "transformer-lens", "nnsight"):
        try:
            found[package] = importlib.metadata.version(package) if importable.get(package, True) else "not installed"
        except importlib.metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def make_runners(directory: Path, ours: HookedTransformer, tl: Any, tl_raw: Any,
                 nnsight: Any) -> dict[str, tuple[str, Runner]]:
    """Every timed call, by key: (label, call on tokens). TL and nnsight rows only where installed."""
    n_layers = ours.cfg.n_layers
    hf_sdpa = GPT2LMHeadModel.from_pretrained(directory, attn_implementation="sdpa").eval()
    hf_eager = GPT2LMHeadModel.from_pretrained(directory, attn_implementation="eager").eval()
    patterns = lambda name: name.endswith("hook_pattern")  # noqa: E731
    resid_post = lambda name: name.endswith("hook_resid_post")  # noqa: E731
    noop_hooks = [(f"blocks.{layer}.hook_resid_pre", lambda activation, hook: None) for layer in range(n_layers)]
    runners: dict[str, tuple[str, Runner]] = {
        "hf_sdpa": ("HF sdpa forward", lambda t: hf_sdpa(t).logits),
        "hf_eager": ("HF eager forward", lambda t: hf_eager(t).logits),
    }
    if tl is not None:
        runners["tl_raw_forward"] = ("TL forward (raw)", lambda t: tl_raw(t))
        runners["tl_forward"] = ("TL forward (processed)", lambda t: tl(t))
    runners["interp_forward"] = ("interp forward", lambda t: ours(t))
    if tl is not None:
        runners["tl_cache_all"] = ("TL run_with_cache, every hook", lambda t: tl.run_with_cache(t))
    runners["interp_cache_all"] = ("interp run_with_cache, every hook", lambda t: ours.run_with_cache(t))
    if tl is not None:
        runners["tl_cache_patterns"] = ("TL run_with_cache, patterns",
                                        lambda t: tl.run_with_cache(t, names_filter=patterns))
    runners["interp_cache_patterns"] = ("interp run_with_cache, patterns",
                                        lambda t: ours.run_with_cache(t, names_filter=patterns))
    if tl is not None:
        runners["tl_noop_hooks"] = (f"TL run_with_hooks, {n_layers} no-op hooks",
                                    lambda t: tl.run_with_hooks(t, fwd_hooks=noop_hooks))
    runners["interp_noop_hooks"] = (f"interp run_with_hooks, {n_layers} no-op hooks",
                                    lambda t: ours.run_with_hooks(t, fwd_hooks=noop_hooks))
    if nnsight is not None:
        # nnsight replaces the wrapped modules' forward, so it gets its own transformers model.
        traced = nnsight.NNsight(GPT2LMHeadModel.from_pretrained(directory, attn_implementation="sdpa").eval())

        def nnsight_block_outputs(tokens: torch.Tensor) -> list[torch.Tensor]:
            with traced.trace(tokens):
                outputs = nnsight.save([traced.transformer.h[layer].output for layer in range(n_layers)])
            return outputs

        runners["nnsight_block_outputs"] = (f"nnsight trace, save {n_layers} block outputs", nnsight_block_outputs)
    runners["interp_block_outputs"] = (f"interp run_with_cache, {n_layers} resid_post",
                                       lambda t: ours.run_with_cache(t, names_filter=resid_post))
    return runners


def tl_recipe_head_scores(tl: Any, tokens: torch.Tensor, length: int, batch_size: int) -> dict[str, torch.Tensor]:
    """The TransformerLens recipe: a hook on every hook_pattern sums each head's attention along the
    diagonal of the score's target (induction i -> i-L+1 and duplicate-token i -> i-L over the second
    copy, previous-token i -> i-1 over every query), then divides by the number of queries."""
    first = tokens.shape[1] - 2 * length  # 1 with a BOS token in front, else 0
    # score -> (diagonal offset, first scored entry along that diagonal)
    stripes = {"induction": (1 - length, first + 1), "previous_token": (-1, 0), "duplicate_token": (-length, first)}
    sums = {name: torch.zeros(tl.cfg.n_layers, tl.cfg.n_heads, dtype=torch.float64) for name in stripes}
    counts = dict.fromkeys(stripes, 0)

    def reduce(pattern: torch.Tensor, hook: Any) -> None:  # pattern: [batch, n_heads, query_pos, key_pos]
        for name, (offset, start) in stripes.items():
            stripe = pattern.diagonal(offset=offset, dim1=-2, dim2=-1)[..., start:]  # [batch, n_heads, query]
            sums[name][hook.layer()] += stripe.sum((0, 2)).double()

    for batch in tokens.split(batch_size):
        tl.run_with_hooks(batch, return_type=None, fwd_hooks=[(lambda name: name.endswith("hook_pattern"), reduce)])
        for name, (offset, start) in stripes.items():
            counts[name] += batch.shape[0] * (tokens.shape[1] + offset - start)
    return {name: (sums[name] / counts[name]).float() for name in stripes}


def head_scores(ours: HookedTransformer, tl: Any, n_sequences: int, length: int, batch_size: int,
                reps: int) -> dict[str, Any]:
    tokens = protocol_tokens(ours, n_sequences, length, seed=0)
    calls: dict[str, Runner] = {
        "interp": lambda t: repeated_score_sums(ours, t, length, batch_size, with_loss=False, progress=False).to_scores().scores}
    if tl is not None:
        calls["tl_recipe"] = lambda t: tl_recipe_head_scores(tl, t, length, batch_size)
    result: dict[str, Any] = {"tokens_shape": list(tokens.shape), "batch_size": batch_size,
                              "ms": time_interleaved(calls, tokens, reps),
                              "peak_rss_mib": {key: peak_rss_of(lambda: call(tokens)) / 2**20 for key, call in calls.items()}}
    if tl is not None:
        ours_scores, tl_scores = calls["interp"](tokens), calls["tl_recipe"](tokens)
        result["max_score_difference"] = max(float((ours_scores[k] - tl_scores[k]).abs().max()) for k in SCORE_TYPES)
    return result


CHILD = r"""
import json, sys, time, warnings
from pathlib import Path
warnings.simplefilter("ignore")
import torch
torch.set_num_threads(2)
from transformers import AutoTokenizer, GPT2LMHeadModel
from interp import HookedTransformer
directory, benchmarks, *which_list = sys.argv[1:]
if any(which.startswith("tl") for which in which_list):
    sys.path.insert(0, benchmarks)
    import transformer_lens, transformer_lens.loading_from_pretrained
    from tl_equivalence import load_tl
loaders = {
    "hf": lambda: GPT2LMHeadModel.from_pretrained(directory),
    "hf_tokenizer": lambda: (GPT2LMHeadModel.from_pretrained(directory), AutoTokenizer.from_pretrained(directory)),
    "tl": lambda: load_tl(directory, processed=True),
    "tl_no_processing": lambda: load_tl(directory, processed=False),
    "interp": lambda: HookedTransformer.from_pretrained(directory),
    "interp_processed": lambda: HookedTransformer.from_pretrained(directory, process=True),
}
def field(name):
    return next(int(l.split()[1]) * 1024 for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(name + ":"))
for which in which_list:  # one loader per process, except in --quick mode
    Path("/proc/self/clear_refs").write_text("5")
    before = field("VmRSS")
    start = time.perf_counter()
    model = loaders[which]()
    seconds = time.perf_counter() - start
    print(json.dumps({"which": which, "seconds": seconds, "peak_bytes": field("VmHWM") - before}))
    del model
"""
LOADERS = {"hf": "transformers model", "hf_tokenizer": "transformers model + tokenizer",
           "tl": "TL, default processing", "tl_no_processing": "TL, no processing",
           "interp": "interp (raw, + tokenizer)", "interp_processed": "interp process=True (+ tokenizer)"}


def load_times(directory: Path, reps: int, with_tl: bool, fresh: bool = True) -> dict[str, dict[str, float]]:
    """Median seconds and peak extra RSS of each loader, each in a fresh process (reps rounds, interleaved).
    fresh=False runs them all in one process (a smoke test: later loaders find modules warm)."""
    which_list = [w for w in LOADERS if with_tl or not w.startswith("tl")]
    runs: dict[str, list[dict[str, float]]] = {which: [] for which in which_list}
    for _ in range(reps):
        for group in ([[which] for which in which_list] if fresh else [which_list]):
            result = subprocess.run([sys.executable, "-c", CHILD, str(directory), str(HERE), *group],
                                    capture_output=True, text=True, check=True)
            for line in result.stdout.strip().splitlines():
                if line.startswith('{"which"'):
                    run = json.loads(line)
                    runs[run["which"]].append(run)
    return {which: {"seconds": statistics.median(r["seconds"] for r in values),
                    "peak_mib": statistics.median(r["peak_bytes"] for r in values) / 2**20} for which, values in runs.items()}


def mark(ok: bool | None) -> str:
    return "" if ok is None else (" ✓" if ok else " ✗")


def markdown(results: dict[str, Any], labels: dict[str, str], command: str, quick: bool) -> str:
    shapes = list(results["times_ms"])
    rule = "|---" * (len(shapes) + 1) + "|"
    times = ["| ms | " + " | ".join(shapes) + " |", rule] + [
        f"| {label} | " + " | ".join(f"{results['times_ms'][s][key]:.1f}" for s in shapes) + " |"
        for key, label in labels.items()]
    ratios = ["| ratio | target | " + " | ".join(shapes) + " |", "|---|---" + "|---" * len(shapes) + "|"]
    for label, numerator, denominator, target, check in RATIOS:
        if numerator not in labels or denominator not in labels:
            continue
        cells = []
        for s in shapes:
            ratio = results["times_ms"][s][numerator] / results["times_ms"][s][denominator]
            cells.append(f"{ratio:.2f}{mark(check(s, ratio))}")
        ratios.append(f"| {label} | {target} | " + " | ".join(cells) + " |")
    memory, peak = results["memory_shape"], results["peak_rss_mib"]
    memory_rows = ["| call | peak extra RSS (MiB) |", "|---|---|"] + [f"| {labels[k]} | {v:.0f} |" for k, v in peak.items()]
    if "tl_cache_all" in peak:
        ratio = peak["interp_cache_all"] / max(peak["tl_cache_all"], 1)
        check = mark(ratio <= 0.5) if memory == "4x1024" else " (target applies at 4x1024)"
        memory_rows += ["", f"Cache every hook: interp ÷ TL peak = {ratio:.2f} (target ≤ 0.5){check}."]
    scores = results["head_scores"]
    score_rows = ["| | ms | peak extra RSS (MiB) |", "|---|---|---|"] + [
        f"| {'TL recipe' if k == 'tl_recipe' else 'interp repeated_score_sums'} | {v:.1f} | {scores['peak_rss_mib'][k]:.0f} |"
        for k, v in scores["ms"].items()]
    if "tl_recipe" in scores["ms"]:
        ratio = scores["ms"]["tl_recipe"] / scores["ms"]["interp"]
        score_rows += ["", f"TL recipe ÷ interp = {ratio:.2f} (target ≥ 2){mark(ratio >= 2)}; the two agree to "
                       f"{scores['max_score_difference']:.1e}."]
    load = results["load"]
    load_rows = ["| loader | seconds | peak extra RSS (MiB) |", "|---|---|---|"] + [
        f"| {LOADERS[k]} | {v['seconds']:.2f} | {v['peak_mib']:.0f} |" for k, v in load.items()]
    extra = load["interp"]["seconds"] - load["hf_tokenizer"]["seconds"]
    load_rows += ["", f"interp − transformers (both loading model and tokenizer from the directory): {extra:+.2f} s "
                  f"(target ≤ +0.5 s){mark(extra <= 0.5)}; with process=True "
                  f"{load['interp_processed']['seconds'] - load['hf_tokenizer']['seconds']:+.2f} s."]
    skipped = [name for name in ("transformer-lens", "nnsight") if results["versions"][name] == "not installed"]
    (batch, pos), protocol = scores["tokens_shape"], results["protocol"]
    kind = "quick smoke run, tiny model" if quick else "GPT-2 small shape"
    return "\n".join([
        f"## Comparison with transformers, TransformerLens and nnsight ({kind})",
        "", f"Machine: {machine()}.  ", "Versions: " + ", ".join(f"{k} {v}" for k, v in results["versions"].items()) + ".  ",
        f"Command: `{command}` ({results['reps']} interleaved reps, medians, fp32, no_grad, one process). "
        "Random weights, exact architecture, saved once and loaded by path by every library (offline). "
        "TL rows use TransformerLens's default `from_pretrained` processing except where marked raw; interp rows "
        "use our default (raw) load. How each call is made: see the docstring of benchmarks/bench_compare.py."
        + (f" Skipped (not installed): {', '.join(skipped)}." if skipped else ""), "",
        *times, "", "Ratios (✓/✗ where DESIGN.md sets a target for that shape):", "", *ratios, "",
        f"### Peak memory of one call at {memory}", "", *memory_rows, "",
        f"### Head scores (induction, previous-token, duplicate-token; all {results['n_heads_total']} heads)", "",
        f"Repeated random tokens: {protocol['n_sequences']} sequences of BOS + 2×{protocol['length']} tokens ({batch}×{pos}), "
        f"in batches of {scores['batch_size']}; the same tokens for both.", "", *score_rows, "",
        "### Load (" + ("all in one process: a smoke test" if quick else "each in a fresh process")
        + ", imports done before timing)", "", *load_rows, "",
        "### Equivalence with TransformerLens", "",
        results["equivalence_markdown"] if "equivalence_markdown" in results else "Skipped: transformer_lens is not installed.",
    ])


def parse_shape(text: str) -> tuple[int, int]:
    batch, _, pos = text.partition("x")
    if not (batch.isdigit() and pos.isdigit()):
        raise argparse.ArgumentTypeError(f"shape {text!r} should be BATCHxPOS, e.g. 8x256")
    return int(batch), int(pos)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny model and shapes, 1 rep, print only (CI smoke test)")
    parser.add_argument("--reps", type=int, default=5, help="timed rounds per shape (load: min(reps, 3) processes each)")
    parser.add_argument("--shapes", type=parse_shape, nargs="+", default=[(1, 128), (8, 256), (4, 1024)], metavar="BxP")
    parser.add_argument("--memory-shape", type=parse_shape, default=None, metavar="BxP", help="default: the largest shape")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md and the JSON alone")
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # TL 3.9 deprecation notices and transformers notices; results are checked
    torch.set_num_threads(args.threads)
    if args.quick:
        config = hf_config(n_layer=2, n_head=4, n_embd=64, n_positions=128, vocab_size=500)
        shapes, reps, load_reps, memory_shape = [(1, 16), (2, 64)], 1, 1, (2, 64)
        n_sequences, length, batch_size = 4, 20, 2
    else:
        config, shapes, reps, load_reps = hf_config(), args.shapes, args.reps, min(args.reps, 3)
        memory_shape = args.memory_shape or max(shapes, key=lambda shape: shape[0] * shape[1])
        n_sequences, length, batch_size = 64, 50, 16
    with_tl, nnsight = optional("transformer_lens") is not None, optional("nnsight")
    importable = {"transformer-lens": with_tl, "nnsight": nnsight is not None}
    results: dict[str, Any] = {"machine": machine(), "versions": versions(importable), "reps": reps, "times_ms": {},
                               "protocol": {"n_sequences": n_sequences, "length": length},
                               "n_heads_total": config.n_layer * config.n_head}
    with tempfile.TemporaryDirectory() as temporary, torch.no_grad():
        directory = save_gpt2_directory(config, temporary)
        ours = HookedTransformer.from_pretrained(directory)
        tl = load_tl(directory, processed=True) if with_tl else None
        tl_raw = load_tl(directory, processed=False) if with_tl else None
        runners = make_runners(directory, ours, tl, tl_raw, nnsight)
        calls = {key: call for key, (_, call) in runners.items()}
        labels = {key: label for key, (label, _) in runners.items()}
        for batch, pos in shapes:
            tokens = torch.randint(0, config.vocab_size, (batch, pos), generator=torch.Generator().manual_seed(0))
            results["times_ms"][f"{batch}x{pos}"] = time_interleaved(calls, tokens, reps)
            print(f"{batch}x{pos}: " + ", ".join(f"{k} {v:.0f} ms" for k, v in results["times_ms"][f"{batch}x{pos}"].items()),
                  file=sys.stderr)
        tokens = torch.randint(0, config.vocab_size, memory_shape, generator=torch.Generator().manual_seed(0))
        results["memory_shape"] = f"{memory_shape[0]}x{memory_shape[1]}"
        results["peak_rss_mib"] = {key: peak_rss_of(lambda: call(tokens)) / 2**20 for key, call in calls.items()}
        results["head_scores"] = head_scores(ours, tl, n_sequences, length, batch_size, reps)
        if with_tl:
            equivalence_tokens = torch.randint(0, config.vocab_size, (2, min(128, config.n_positions)),
                                               generator=torch.Generator().manual_seed(1))
            report = equivalence_report(ours, tl_raw, HookedTransformer.from_pretrained(directory, process=True), tl,
                                        equivalence_tokens)
            results["equivalence"], results["equivalence_markdown"] = report, equivalence_markdown(report)
        del runners, calls, tl, tl_raw
        results["load"] = load_times(directory, load_reps, with_tl, fresh=not args.quick)
    command = "python benchmarks/bench_compare.py" + (" --quick" if args.quick else "".join(
        f" {arg}" for arg in sys.argv[1:] if arg != "--no-write"))
    results["command"] = command
    text = markdown(results, labels, command, args.quick)
    print(text)
    if not args.no_write and not args.quick:
        write_section(text, mark=MARK)
        results.pop("equivalence_markdown", None)
        (HERE / "results_compare.json").write_text(json.dumps(results, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
