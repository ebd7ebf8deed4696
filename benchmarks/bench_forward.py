"""Forward and caching cost: `transformers` GPT-2 (sdpa) vs interp, in one process, interleaved.

    python benchmarks/bench_forward.py            # GPT-2 small shape, 1x128, 8x256, 4x1024, 5 reps (~10 min)
    python benchmarks/bench_forward.py --quick    # tiny shapes, 1 rep: a smoke test for CI

Random weights with the exact GPT-2 small config (LayerNorm gains/biases randomised), fp32, 2 threads,
medians of interleaved reps after a warm-up. Peak RSS of one call is VmHWM after resetting it
(/proc/self/clear_refs), minus the RSS before the call. Writes a section of benchmarks/RESULTS.md
and benchmarks/results_forward.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from interp import HookedTransformer
from interp.testing import hf_config, random_hf_gpt2

HERE = Path(__file__).parent
MARK = "bench_forward"


def rss_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def peak_rss_of(fn) -> int:
    """Extra resident memory at the peak of one call of fn (Linux; 0 where unsupported)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        return 0
    before = rss_bytes("VmRSS")
    result = fn()
    peak = rss_bytes("VmHWM")
    del result
    return peak - before


def time_interleaved(calls: dict, tokens: Any, reps: int) -> dict[str, float]:
    """Median milliseconds per call: one warm-up call each, then `reps` rounds calling each in turn."""
    for call in calls.values():
        call(tokens)
    times: dict[str, list[float]] = {key: [] for key in calls}
    for _ in range(reps):
        for key, call in calls.items():
            start = time.perf_counter()
            result = call(tokens)
            times[key].append(time.perf_counter() - start)
            del result
    return {key: statistics.median(values) * 1000 for key, values in times.items()}


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return f"{cpu}; {torch.get_num_threads()} threads; torch {torch.__version__}; Python {platform.python_version()}"


def write_section(markdown: str, mark: str = MARK) -> None:
    """Replace one benchmark's section of RESULTS.md (each benchmark owns its own section)."""
    path = HERE / "RESULTS.md"
    text = path.read_text() if path.exists() else "# Benchmark results\n\nEach section is written by the script it names.\n"
    start, end = f"<!-- {mark}:start -->", f"<!-- {mark}:end -->"
    block = f"{start}\n{markdown}\n{end}"
    if start in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny model and shapes, 1 rep (CI smoke test)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        config = hf_config(n_layer=2, n_head=4, n_embd=64, n_positions=128, vocab_size=500)
        shapes, reps, memory_shape = [(1, 16), (2, 64)], 1, (2, 64)
    else:
        config, shapes, reps, memory_shape = hf_config(), [(1, 128), (8, 256), (4, 1024)], args.reps, (4, 1024)
    hf_model = random_hf_gpt2(config, seed=0, attn_implementation="sdpa")
    model = HookedTransformer.from_pretrained(hf_model)
    patterns_only = lambda name: name.endswith("hook_pattern")  # noqa: E731
    runners = {
        "hf_sdpa": lambda t: hf_model(t).logits,
        "interp_forward": lambda t: model(t),
        "interp_cache_all": lambda t: model.run_with_cache(t),
        "interp_cache_patterns": lambda t: model.run_with_cache(t, names_filter=patterns_only),
    }
    results: dict[str, dict[str, float]] = {}
    with torch.no_grad():
        for batch, pos in shapes:
            tokens = torch.randint(0, config.vocab_size, (batch, pos), generator=torch.Generator().manual_seed(0))
            results[f"{batch}x{pos}"] = time_interleaved(runners, tokens, reps)
            print(f"{batch}x{pos}: " + ", ".join(f"{k} {v:.0f} ms" for k, v in results[f'{batch}x{pos}'].items()),
                  file=sys.stderr)
        tokens = torch.randint(0, config.vocab_size, memory_shape, generator=torch.Generator().manual_seed(0))
        memory = {name: peak_rss_of(lambda: run(tokens)) / 2**20 for name, run in runners.items()}
        _, cache = model.run_with_cache(tokens)

        def held_mib() -> float:  # distinct buffers the cache keeps alive (computed entries + inputs of derived ones)
            tensors = [*cache.cache_dict.values(), *cache.inputs.values()]
            storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
            return sum(storages.values()) / 2**20

        cached_mib = held_mib()
        start = time.perf_counter()
        for name in cache:  # read every entry: the derived ones (patterns, LN parts) are computed now
            cache[name]
        read_all_seconds, read_all_mib = time.perf_counter() - start, held_mib()
        del cache
    label = f"{memory_shape[0]}x{memory_shape[1]}"
    rows = ["| shape | HF sdpa ms | interp forward ms | ratio (≤1.00) | cache-all ms | cache-all / our forward (≤1.3) | "
            "patterns-only ms | patterns / our forward |", "|---|---|---|---|---|---|---|---|"]
    for shape, r in results.items():
        rows.append(f"| {shape} | {r['hf_sdpa']:.1f} | {r['interp_forward']:.1f} | {r['interp_forward'] / r['hf_sdpa']:.3f} | "
                    f"{r['interp_cache_all']:.1f} | {r['interp_cache_all'] / r['interp_forward']:.3f} | "
                    f"{r['interp_cache_patterns']:.1f} | {r['interp_cache_patterns'] / r['interp_forward']:.3f} |")
    memory_rows = ["| call | peak extra RSS (MiB) |", "|---|---|"] + [f"| {k} | {v:.0f} |" for k, v in memory.items()]
    memory_rows += ["", f"After the run the cache-all cache holds {cached_mib:.0f} MiB of distinct tensor storage (references "
                    f"to what the forward computed, and the inputs of derived entries; views such as q/k/v of one fused "
                    f"buffer count once). Reading every entry afterwards computes the derived ones (attention scores and "
                    f"patterns, LayerNorm parts): {read_all_seconds:.1f} s more, {read_all_mib:.0f} MiB held in all."]
    command = "python benchmarks/bench_forward.py" + (" --quick" if args.quick else "")
    markdown = "\n".join([
        f"## Forward and caching ({'quick smoke run, tiny model' if args.quick else 'GPT-2 small shape'})", "",
        f"Machine: {machine()}.  ", f"Command: `{command}` ({reps} interleaved reps, medians, fp32, no_grad).", "",
        *rows, "", f"Peak extra RSS of one call at {label}:", "", *memory_rows,
    ])
    print(markdown)
    if not args.no_write and not args.quick:
        write_section(markdown)
        (HERE / "results_forward.json").write_text(json.dumps({"machine": machine(), "times_ms": results,
                                                                "peak_rss_mib": memory}, indent=1) + "\n")


if __name__ == "__main__":
    main()
