"""Per-head-per-position activation patching vs attribution patching, and path attribution, at GPT-2 small's shape.

    python benchmarks/bench_patching.py            # GPT-2 small shape, random weights, 1 x 64 tokens
    python benchmarks/bench_patching.py --quick    # tiny model (CI smoke test)

Activation patching runs one forward per site (12 layers x 64 positions x 12 heads = 9,216 sites),
batched `--batch-size` sites per forward; attribution patching estimates the same table from one
forward on the clean input and one forward + backward on the corrupted one. Both are timed once
(wall clock, 2 threads, fp32) and their agreement is reported. The corruption swaps 3 tokens.
"""

from __future__ import annotations

import argparse
import time

import torch

from bench_forward import machine, write_section
from interp import HookedTransformer
from interp.analysis.attribution import attribution_patch, compare_attribution
from interp.analysis.patching import patch_head_out_by_pos
from interp.analysis.paths import path_attribution
from interp.testing import hf_config, random_hf_gpt2

MARK = "bench_patching"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, 12 tokens (CI smoke test)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = hf_config(n_layer=2, n_head=4, n_embd=64, n_positions=64, vocab_size=500) if args.quick else hf_config()
    n_pos = 12 if args.quick else 64
    model = HookedTransformer.from_pretrained(random_hf_gpt2(config, seed=0))
    generator = torch.Generator().manual_seed(0)
    clean = torch.randint(0, config.vocab_size, (1, n_pos), generator=generator)
    corrupted = clean.clone()
    corrupted[0, [3, n_pos // 2, n_pos - 4]] = torch.randint(0, config.vocab_size, (3,), generator=generator)
    answer, wrong = 11, 22

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return logits[:, -1, answer].mean() - logits[:, -1, wrong].mean()

    timings = {}
    start = time.perf_counter()
    with torch.no_grad():
        activation = patch_head_out_by_pos(model, clean, corrupted, metric, batch_size=args.batch_size, progress=True)
    timings["activation patching, every head x position"] = time.perf_counter() - start
    start = time.perf_counter()
    attribution = attribution_patch(model, clean, corrupted, metric, site="head_out_by_pos")
    timings["attribution patching, every head x position"] = time.perf_counter() - start
    start = time.perf_counter()
    paths = path_attribution(model, clean, answer=answer, wrong=wrong)
    timings[f"path attribution ({len(paths.paths):,} paths)"] = time.perf_counter() - start
    agreement = compare_attribution(activation, attribution)
    n_sites = activation.values.numel()
    rows = [f"| {name} | {seconds:,.2f} |" for name, seconds in timings.items()]
    ratio = timings["activation patching, every head x position"] / timings["attribution patching, every head x position"]
    markdown = "\n".join([
        "## Patching and path attribution", "",
        f"Command: `python benchmarks/bench_patching.py{' --quick' if args.quick else ''}`. Machine: {machine()}.",
        f"Model: {config.n_layer} layers x {config.n_head} heads, d_model {config.n_embd} "
        f"({'quick' if args.quick else 'GPT-2 small shape'}), random weights, fp32; 1 x {n_pos} tokens, "
        f"{n_sites:,} head x position sites, activation patching {args.batch_size} sites per forward.", "",
        "| method | seconds |", "|---|---:|", *rows, "",
        f"Attribution patching is {ratio:,.0f}x faster here. Agreement with activation patching on this random-weight "
        f"model: " + ", ".join(f"{k} {v:.3f}" for k, v in agreement.items()) + ".",
    ])
    print(markdown)
    if not (args.quick or args.no_write):
        write_section(markdown, MARK)


if __name__ == "__main__":
    main()
