"""The same TransformerLens-API code on `interp.tl` and on TransformerLens 3.9, at GPT-2 small's shape.

    python benchmarks/bench_tl.py            # GPT-2 small shape, random weights, processed as from_pretrained does
    python benchmarks/bench_tl.py --quick    # tiny model (CI smoke test; TransformerLens rows only if installed)

One function, `workload(lib, model, ...)`, is run twice: with `lib` = `interp.tl` and with `lib` =
`transformer_lens` (when installed: `pip install -e ".[bench]"`), on the same weights: a forward, `run_with_cache`
of every hook, direct logit attribution of every head (`stack_head_results` + `apply_ln_to_stack`), and
`patching.get_act_patch_resid_pre` / `get_act_patch_attn_head_out_all_pos` from a clean cache. Each step is timed
(median of `--reps` for the cheap ones) and its numbers compared between the two libraries. Wall clock, fp32.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import tempfile
import time
import warnings
from typing import Any, Callable

import torch

from bench_forward import machine, write_section
from interp.testing import hf_config

MARK = "bench_tl"


def timed(step: Callable[[], Any], reps: int) -> tuple[float, Any]:
    """(median seconds over reps, the last result)."""
    seconds, result = [], None
    for _ in range(reps):
        start = time.perf_counter()
        result = step()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), result


def workload(lib: Any, model: Any, clean: torch.Tensor, corrupted: torch.Tensor, answer: int, wrong: int,
             reps: int) -> dict[str, tuple[float, torch.Tensor]]:
    """TransformerLens-API code, written once: `lib` is `interp.tl` or `transformer_lens`."""
    def metric(logits: torch.Tensor) -> torch.Tensor:
        return logits[:, -1, answer].mean() - logits[:, -1, wrong].mean()

    steps: dict[str, tuple[float, torch.Tensor]] = {}
    with torch.no_grad():
        steps["forward (logits)"] = timed(lambda: model(clean), reps)
        steps["run_with_cache, every hook"] = timed(lambda: model.run_with_cache(clean)[0], reps)
        _, cache = model.run_with_cache(clean)

        def attribution() -> torch.Tensor:
            stack = cache.stack_head_results(layer=-1, pos_slice=-1)
            direction = model.tokens_to_residual_directions(torch.tensor([answer]))[0] - \
                model.tokens_to_residual_directions(torch.tensor([wrong]))[0]
            return (cache.apply_ln_to_stack(stack, layer=-1, pos_slice=-1) * direction).sum(-1)

        steps["stack_head_results + apply_ln_to_stack"] = timed(attribution, reps)
        steps["get_act_patch_resid_pre"] = timed(
            lambda: lib.patching.get_act_patch_resid_pre(model, corrupted, cache, metric), 1)
        steps["get_act_patch_attn_head_out_all_pos"] = timed(
            lambda: lib.patching.get_act_patch_attn_head_out_all_pos(model, corrupted, cache, metric), 1)
    return steps


def load(lib_name: str, directory: str) -> Any:
    if lib_name == "interp.tl":
        from interp.tl import HookedTransformer
        return HookedTransformer.from_pretrained(directory).eval()
    from tl_equivalence import load_tl
    return load_tl(directory, processed=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, 12 tokens (CI smoke test)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = hf_config(n_layer=2, n_head=4, n_embd=64, n_positions=64, vocab_size=500) if args.quick else hf_config()
    n_pos, reps = (12, 1) if args.quick else (32, args.reps)
    generator = torch.Generator().manual_seed(0)
    clean = torch.randint(0, config.vocab_size, (1, n_pos), generator=generator)
    corrupted = clean.clone()
    corrupted[0, [2, n_pos // 2]] = torch.randint(0, config.vocab_size, (2,), generator=generator)
    libraries = ["interp.tl"]
    try:
        importlib.import_module("transformer_lens")
        libraries.append("transformer_lens")
    except ImportError:
        pass
    results: dict[str, dict[str, tuple[float, torch.Tensor]]] = {}
    from tl_equivalence import save_gpt2_directory
    with tempfile.TemporaryDirectory() as directory, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        save_gpt2_directory(config, directory, seed=0)
        for name in libraries:
            model = load(name, directory)
            results[name] = workload(importlib.import_module(name), model, clean, corrupted, 11, 22, reps)
            del model
    ours = results["interp.tl"]
    header = "| step | interp.tl (s) |" + (" TransformerLens (s) | TL / interp.tl | max abs difference |"
                                            if len(results) > 1 else "")
    rows = [header, "|---|---:|" + ("---:|---:|---:|" if len(results) > 1 else "")]
    for step, (seconds, value) in ours.items():
        row = f"| {step} | {seconds:.3f} |"
        if "transformer_lens" in results:
            tl_seconds, tl_value = results["transformer_lens"][step]
            difference = float((value.double() - tl_value.double()).abs().max())
            row += f" {tl_seconds:.3f} | {tl_seconds / seconds:.2f} | {difference:.1e} |"
        rows.append(row)
    markdown = "\n".join([
        "## interp.tl vs TransformerLens (same code)", "",
        f"Command: `python benchmarks/bench_tl.py{' --quick' if args.quick else ''}`. Machine: {machine()}.",
        f"Model: {config.n_layer} layers x {config.n_head} heads, d_model {config.n_embd}, vocabulary "
        f"{config.vocab_size} ({'quick' if args.quick else 'GPT-2 small shape'}), random weights, processed as "
        f"`from_pretrained` does; 1 x {n_pos} tokens, 2 of them corrupted. One function runs the same "
        "TransformerLens-API calls on each library; cheap steps are medians of "
        f"{reps} reps, patching steps one run each.", "", *rows,
        "" if len(results) > 1 else "\nTransformerLens is not installed (pip install -e \".[bench]\"): no comparison.",
    ])
    print(markdown)
    if not (args.quick or args.no_write):
        write_section(markdown, MARK)


if __name__ == "__main__":
    main()
