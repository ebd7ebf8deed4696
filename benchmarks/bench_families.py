"""Forward and cache-all cost on a Pythia-shaped and a Llama-shaped model: `transformers` sdpa vs interp, one process.

    python benchmarks/bench_families.py            # Pythia-160M shape and a ~100M Llama shape, 1x128 and 4x512 (~5 min)
    python benchmarks/bench_families.py --quick    # tiny shapes, 1 rep: a smoke test for CI

Random weights (norm gains randomised), fp32, 2 threads, medians of interleaved reps after a warm-up; the model is
saved with `save_pretrained` and loaded by path, as a user would. Writes a section of benchmarks/RESULTS.md and
benchmarks/results_families.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile

import torch
from bench_forward import HERE, time_interleaved, machine, write_section

from interp import HookedTransformer

MARK = "bench_families"


def configs(quick: bool) -> dict[str, object]:
    from transformers import GPTNeoXConfig, LlamaConfig

    if quick:
        return {"Pythia-shaped (tiny)": GPTNeoXConfig(hidden_size=64, num_attention_heads=4, num_hidden_layers=2,
                                                      intermediate_size=256, vocab_size=500, max_position_embeddings=128),
                "Llama-shaped (tiny)": LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                                                   num_hidden_layers=2, intermediate_size=172, vocab_size=500,
                                                   max_position_embeddings=128)}
    return {
        # EleutherAI/pythia-160m's config: 12 layers, d 768, 12 heads, rotary_pct 0.25, parallel residual, untied.
        "Pythia-160M shape": GPTNeoXConfig(hidden_size=768, num_attention_heads=12, num_hidden_layers=12,
                                           intermediate_size=3072, vocab_size=50304, max_position_embeddings=2048,
                                           rotary_pct=0.25, use_parallel_residual=True, tie_word_embeddings=False),
        # A ~100M Llama: GQA 12/4 heads of 64, SwiGLU 2048, 8 layers, 32k vocabulary, untied.
        "Llama ~100M shape": LlamaConfig(hidden_size=768, num_attention_heads=12, num_key_value_heads=4,
                                         num_hidden_layers=8, intermediate_size=2048, vocab_size=32000,
                                         max_position_embeddings=2048, tie_word_embeddings=False),
    }


def random_hf_model(config: object) -> torch.nn.Module:
    """The `transformers` model of `config` (sdpa, eval), seeded, with norm gains randomised around 1."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()
    with torch.no_grad():
        for name, parameter in hf.named_parameters():
            if "norm" in name and name.endswith("weight"):
                parameter.mul_(1 + 0.2 * torch.randn_like(parameter))
    return hf


def build(config: object) -> tuple[torch.nn.Module, HookedTransformer, int]:
    hf = random_hf_model(config)
    with tempfile.TemporaryDirectory() as directory:
        hf.save_pretrained(directory)
        model = HookedTransformer.from_pretrained(directory)
    n_parameters = sum(p.numel() for p in hf.parameters())
    return hf, model, n_parameters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny models and shapes, 1 rep (CI smoke test)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shapes, reps = ([(1, 16), (2, 64)], 1) if args.quick else ([(1, 128), (4, 512)], args.reps)
    rows = ["| model | parameters | shape | HF sdpa ms | interp forward ms | forward ratio (≤ 1.00) | cache-all ms | "
            "cache-all / our forward (≤ 1.1) | max log-prob diff |", "|---|---|---|---|---|---|---|---|---|"]
    results: dict[str, dict[str, dict[str, float]]] = {}
    for label, config in configs(args.quick).items():
        hf, model, n_parameters = build(config)
        runners = {"hf_sdpa": lambda t: hf(t).logits, "interp_forward": lambda t: model(t),
                   "interp_cache_all": lambda t: model.run_with_cache(t)}
        results[label] = {}
        with torch.no_grad():
            for batch, pos in shapes:
                tokens = torch.randint(0, config.vocab_size, (batch, pos), generator=torch.Generator().manual_seed(0))
                difference = float((hf(tokens).logits.log_softmax(-1) - model(tokens).log_softmax(-1)).abs().max())
                r = time_interleaved(runners, tokens, reps)
                results[label][f"{batch}x{pos}"] = {**r, "max_logprob_diff": difference}
                print(f"{label} {batch}x{pos}: " + ", ".join(f"{k} {v:.0f} ms" for k, v in r.items()), file=sys.stderr)
                rows.append(f"| {label} | {n_parameters / 1e6:.0f}M | {batch}x{pos} | {r['hf_sdpa']:.1f} | "
                            f"{r['interp_forward']:.1f} | {r['interp_forward'] / r['hf_sdpa']:.3f} | "
                            f"{r['interp_cache_all']:.1f} | {r['interp_cache_all'] / r['interp_forward']:.3f} | "
                            f"{difference:.1e} |")
        del hf, model
    command = "python benchmarks/bench_families.py" + (" --quick" if args.quick else "")
    markdown = "\n".join([
        f"## Other families ({'quick smoke run, tiny models' if args.quick else 'Pythia-160M and ~100M Llama shapes'})", "",
        f"Machine: {machine()}.  ", f"Command: `{command}` ({reps} interleaved reps after a warm-up, medians, fp32, "
        "no_grad; random weights saved with save_pretrained and loaded by path).", "", *rows])
    print(markdown)
    if not args.no_write and not args.quick:
        write_section(markdown, MARK)
        (HERE / "results_families.json").write_text(json.dumps({"machine": machine(), "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
