"""Greedy generation: `transformers` `generate` (sdpa, KV cache) vs interp's `generate`, one process, interleaved.

    python benchmarks/bench_generate.py            # GPT-2 small and ~100M Llama shapes, 32 prompt + 64 new tokens
    python benchmarks/bench_generate.py --quick    # tiny models, 4 new tokens, 1 rep: a smoke test for CI

Random weights (norm gains randomised), fp32, 2 threads, medians of interleaved reps after a warm-up (one
warm-up call of each, then `--reps` rounds calling each in turn). The interp model is
`HookedTransformer.from_pretrained(hf_model)`: the same weights. Cases per model: batch 1 and 8 of 32 random
prompt tokens, and 8 left-padded prompts of 20..32 real tokens (HF gets the attention mask and the padding).
Every call generates exactly `--new` tokens: HF gets `min_new_tokens` and `eos_token_id=None` (no stopping,
and no EOS suppression that interp would not do either), interp `stop_at_eos=False` (its default).

Rows: HF `generate(do_sample=False, use_cache=True)`; interp `generate` with its KV cache (the default);
interp with `use_past_kv_cache=False` (reruns the whole sequence each step; timed with `--no-cache-reps`
rounds, after the others, against the HF median of the same case). "Rows equal" is the fraction of rows whose
generated tokens equal HF's token for token: random weights can have near-ties in the logits, where 1e-6
float differences pick another argmax, so it is reported, not asserted. Writes a section of
benchmarks/RESULTS.md and benchmarks/results_generate.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from typing import Any, Callable

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402
from bench_families import configs as family_configs, random_hf_model  # noqa: E402
from bench_forward import HERE, machine, time_interleaved, write_section  # noqa: E402

from interp import HookedTransformer  # noqa: E402
from interp.testing import hf_config, random_hf_gpt2  # noqa: E402

MARK = "bench_generate"
PAD_ID = 0  # fills left padding; HF generate needs an id, the attention mask marks padding for both


def quiet_transformers() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", module="transformers")


def models(quick: bool) -> dict[str, Callable[[], torch.nn.Module]]:
    """Builders of the `transformers` models (sdpa, eval, random weights), one at a time to bound memory."""
    from transformers import LlamaConfig

    gpt2 = hf_config(n_layer=2, n_head=4, n_embd=64, n_positions=128, vocab_size=500) if quick else hf_config()
    llama = next(c for c in family_configs(quick).values() if isinstance(c, LlamaConfig))  # bench_families' Llama

    return {("GPT-2 (tiny)" if quick else "GPT-2 small shape"): lambda: random_hf_gpt2(gpt2, seed=0,
                                                                                         attn_implementation="sdpa"),
            ("Llama-shaped (tiny)" if quick else "Llama ~100M shape (GQA 12/4)"): lambda: random_hf_model(llama)}


def prompts(vocab: int, batch: int, pos: int, pad_id: int, padded_from: int | None, seed: int = 0
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Random token ids `[batch, pos]` and the attention mask; with `padded_from`, row i has
    padded_from..pos real tokens (evenly spread, the last row full), left-padded with `pad_id`."""
    tokens = torch.randint(0, vocab, (batch, pos), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones(batch, pos, dtype=torch.long)
    if padded_from is not None:
        for row in range(batch):
            n_real = padded_from + ((pos - padded_from) * row) // max(batch - 1, 1)
            mask[row, : pos - n_real] = 0
        tokens = tokens.masked_fill(mask == 0, pad_id)
    return tokens, mask


def rows_equal(ours: torch.Tensor, theirs: torch.Tensor, n_prompt: int) -> float:
    """Fraction of rows whose generated tokens (after the prompt) are equal, token for token."""
    if ours.shape != theirs.shape:
        return 0.0
    return float((ours[:, n_prompt:] == theirs[:, n_prompt:]).all(-1).float().mean())


def time_case(hf_model: Any, model: HookedTransformer, tokens: torch.Tensor, mask: torch.Tensor, n_new: int,
              reps: int, no_cache_reps: int, padded: bool) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """Median ms of each generate call on one batch of prompts, and each call's output tokens (greedy, so
    every call of one runner returns the same). The no-cache row (unpadded cases only) is timed after the others."""
    outputs: dict[str, torch.Tensor] = {}

    def recorded(key: str, fn: Callable[[Any], torch.Tensor]) -> Callable[[Any], torch.Tensor]:
        def call(t: Any) -> torch.Tensor:
            outputs[key] = fn(t)
            return outputs[key]
        return call

    hf_call = recorded("hf_sdpa", lambda t: hf_model.generate(
        t, attention_mask=mask, max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False, use_cache=True,
        pad_token_id=PAD_ID, eos_token_id=None))
    interp_kwargs: dict[str, Any] = {"attention_mask": mask} if padded else {}
    ours = recorded("interp_kv_cache", lambda t: model.generate(t, max_new_tokens=n_new, **interp_kwargs))
    with torch.no_grad():
        times = time_interleaved({"hf_sdpa": hf_call, "interp_kv_cache": ours}, tokens, reps)
        if not padded:
            no_cache = recorded("interp_no_cache", lambda t: model.generate(t, max_new_tokens=n_new,
                                                                            use_past_kv_cache=False))
            times.update(time_interleaved({"interp_no_cache": no_cache}, tokens, no_cache_reps))
    return times, outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny models, 4 new tokens, 1 rep (CI smoke test)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--no-cache-reps", type=int, default=1, help="rounds of the use_past_kv_cache=False row")
    parser.add_argument("--new", type=int, default=64, help="new tokens per call")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    quiet_transformers()
    if args.quick:
        n_prompt, n_new, reps, no_cache_reps, batches, padded_from = 8, 4, 1, 1, (1, 2), 5
    else:
        n_prompt, n_new, reps, no_cache_reps, batches, padded_from = 32, args.new, args.reps, args.no_cache_reps, (1, 8), 20
    cases = [(f"{b}x{n_prompt}+{n_new}", b, None) for b in batches] + \
        [(f"{batches[-1]}x{padded_from}..{n_prompt}+{n_new}, left-padded", batches[-1], padded_from)]
    results: dict[str, dict[str, dict[str, float]]] = {}
    rows = ["| model | case | HF sdpa ms | interp ms (KV cache) | interp / HF (≤ 1.1) | rows equal | "
            "interp no-cache ms | no-cache / HF | rows equal (no cache) |", "|---|---|---|---|---|---|---|---|---|"]
    started = time.perf_counter()
    for label, build in models(args.quick).items():
        hf_model = build()
        model = HookedTransformer.from_pretrained(hf_model)
        n_parameters = sum(p.numel() for p in hf_model.parameters())
        vocab = hf_model.config.vocab_size
        results[label] = {}
        for case, batch, padded in cases:
            tokens, mask = prompts(vocab, batch, n_prompt, PAD_ID, padded)
            r, outputs = time_case(hf_model, model, tokens, mask, n_new, reps, no_cache_reps, padded is not None)
            for key, out in outputs.items():
                if out.shape != (batch, n_prompt + n_new):
                    raise RuntimeError(f"{label} {case}: {key} returned {tuple(out.shape)}, expected "
                                       f"{(batch, n_prompt + n_new)} (stopped early?)")
            agreement = {f"rows_equal_{key}": rows_equal(outputs[key], outputs["hf_sdpa"], n_prompt)
                         for key in outputs if key != "hf_sdpa"}
            results[label][case] = {**r, **agreement}
            print(f"{label} {case}: " + ", ".join(f"{k} {v:.0f} ms" for k, v in r.items()) + "; " +
                  ", ".join(f"{k} {v:.2f}" for k, v in agreement.items()), file=sys.stderr)
            no_cache_cells = ("—", "—", "—") if "interp_no_cache" not in r else (
                f"{r['interp_no_cache']:.0f}", f"{r['interp_no_cache'] / r['hf_sdpa']:.2f}",
                f"{agreement['rows_equal_interp_no_cache']:.2f}")
            size = f"{n_parameters / 1e6:.0f}M" if n_parameters >= 1e7 else f"{n_parameters / 1e6:.2f}M"
            rows.append(f"| {label} ({size}) | {case} | {r['hf_sdpa']:.0f} | "
                        f"{r['interp_kv_cache']:.0f} | {r['interp_kv_cache'] / r['hf_sdpa']:.3f} | "
                        f"{agreement['rows_equal_interp_kv_cache']:.2f} | " + " | ".join(no_cache_cells) + " |")
        hf_model = model = None  # free both before building the next pair
    wall = time.perf_counter() - started
    command = "python benchmarks/bench_generate.py" + (" --quick" if args.quick else "")
    markdown = "\n".join([
        f"## Generation ({'quick smoke run, tiny models' if args.quick else 'GPT-2 small and ~100M Llama shapes'})", "",
        f"Machine: {machine()}.  ",
        f"Command: `{command}` (greedy, exactly {n_new} new tokens per row; {reps} interleaved rep{'s' * (reps != 1)} "
        f"after a warm-up, medians, fp32; the no-cache row: {no_cache_reps} rep{'s' * (no_cache_reps != 1)} after its "
        f"own warm-up, against the same case's HF median; wall time {wall:.0f} s). "
        "HF: `generate(do_sample=False, use_cache=True, min_new_tokens, eos_token_id=None)`, sdpa. "
        "Rows equal: fraction of rows whose new tokens equal HF's token for token (random weights: near-ties "
        "can flip an argmax).", "", *rows])
    print(markdown)
    if not args.no_write and not args.quick:
        write_section(markdown, MARK)
        (HERE / "results_generate.json").write_text(json.dumps({
            "machine": machine(), "prompt_tokens": n_prompt, "new_tokens": n_new, "reps": reps,
            "no_cache_reps": no_cache_reps, "wall_s": wall, "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
