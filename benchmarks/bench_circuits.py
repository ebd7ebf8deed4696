"""Weight processing and circuit analyses at GPT-2 small's shape: time and peak memory.

    python benchmarks/bench_circuits.py            # GPT-2 small shape, random weights, 3 reps
    python benchmarks/bench_circuits.py --quick    # tiny model, 1 rep (CI smoke test)

Each line is the median wall time of `reps` calls and the extra resident memory at the peak of one
call (VmHWM after clear_refs, minus VmRSS before). The dense alternatives are given for scale:
a d_vocab x d_vocab float32 matrix is 10.1 GB at GPT-2's vocabulary.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench_forward import machine, peak_rss_of, write_section
from interp import HookedTransformer
from interp.analysis.circuits import (composition_baseline, composition_scores, copying_scores, full_ov_circuit,
                                      full_qk_circuit)
from interp.factored import FactoredMatrix
from interp.testing import hf_config, random_hf_gpt2

MARK = "bench_circuits"


def measure(fn, reps: int) -> tuple[float, int]:
    fn()  # warm-up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), peak_rss_of(fn)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, 1 rep (CI smoke test)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    config = hf_config(n_layer=2, n_head=4, n_embd=64, n_positions=64, vocab_size=500) if args.quick else hf_config()
    reps = 1 if args.quick else args.reps
    hf_model = random_hf_gpt2(config, seed=0)
    layer, head = config.n_layer - 1, 1
    processed = HookedTransformer.from_pretrained(hf_model, process=True)
    # A random d_vocab x d_head @ d_head x d_vocab product, built afresh each call (svd() caches).
    d_vocab, d_head = config.vocab_size, config.n_embd // config.n_head
    generator = torch.Generator().manual_seed(0)
    left, right = torch.randn(d_vocab, d_head, generator=generator), torch.randn(d_head, d_vocab, generator=generator)
    cases = {
        f"FactoredMatrix({d_vocab}x{d_head} @ {d_head}x{d_vocab}).svd(), random factors":
            lambda: FactoredMatrix(left, right).svd(),
        f"FactoredMatrix({d_vocab}x{d_head} @ {d_head}x{d_vocab}).norm(), random factors":
            lambda: FactoredMatrix(left, right).norm(),
        "from_pretrained(transformers model), raw": lambda: HookedTransformer.from_pretrained(hf_model),
        "from_pretrained(transformers model, process=True)": lambda: HookedTransformer.from_pretrained(hf_model, process=True),
        f"full_ov_circuit(L{layer}H{head}).svd()  [d_vocab² product]": lambda: full_ov_circuit(processed, layer, head).svd(),
        f"full_qk_circuit(L{layer}H{head}).svd()": lambda: full_qk_circuit(processed, layer, head).svd(),
        f"full_ov_circuit(L{layer}H{head}).norm()": lambda: full_ov_circuit(processed, layer, head).norm(),
        "copying_scores (every head)": lambda: copying_scores(processed),
        "composition_scores Q (every pair)": lambda: composition_scores(processed, "Q"),
        "composition_scores K (every pair)": lambda: composition_scores(processed, "K"),
        "composition_scores V (every pair)": lambda: composition_scores(processed, "V"),
        "composition_baseline (256 random pairs)": lambda: composition_baseline(processed),
    }
    rows = []
    for name, fn in cases.items():
        seconds, peak = measure(fn, reps)
        rows.append(f"| {name} | {seconds * 1000:,.0f} | {peak / 2**20:,.0f} |")
        print(rows[-1], flush=True)
    shape = (f"{config.n_layer} layers x {config.n_head} heads, d_model {config.n_embd}, d_vocab {config.vocab_size}"
             f"{' (quick)' if args.quick else ' (GPT-2 small)'}")
    markdown = "\n".join([
        "## Circuits and weight processing", "",
        f"Command: `python benchmarks/bench_circuits.py{' --quick' if args.quick else ''}`. Machine: {machine()}.",
        f"Model: {shape}, random weights with randomised LayerNorms, fp32; median of {reps} after a warm-up.", "",
        "| operation | ms | peak extra RSS (MiB) |", "|---|---:|---:|", *rows, "",
        "Dense alternatives for scale: one d_vocab x d_vocab product is "
        f"{config.vocab_size ** 2 * 4 / 1e9:.1f} GB and its SVD is out of reach on this machine. "
        "Budget for the FactoredMatrix rows (\"seconds, small memory\"): under 10 s and 2 GiB extra RSS; "
        "tests/test_factored.py checks that no tensor larger than a factor is made.",
    ])
    print(markdown)
    if not (args.quick or args.no_write):
        write_section(markdown, MARK)


if __name__ == "__main__":
    main()
