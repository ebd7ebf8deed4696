"""Per-head-per-position activation patching (fast, full reruns, TransformerLens), attribution patching, and path
attribution, at GPT-2 small's shape.

    python benchmarks/bench_patching.py            # GPT-2 small shape, random weights, 1 x 64 tokens
    python benchmarks/bench_patching.py --quick    # tiny model (CI smoke test)

Every head at every position (hook_z: 12 layers x 64 positions x 12 heads = 9,216 sites), three ways in one run:
`patch` (a site in block l at position p reruns blocks l.. at positions >= p from the unpatched run's residual
stream and cached keys/values), `patch_by_full_reruns` (one full forward per site, `--batch-size` sites per
forward: the implementation before the fast path), and TransformerLens 3.9's `patching.generic_activation_patch`
(one forward per site, as its get_act_patch_attn_head_out_by_pos does), when installed (`pip install -e
".[bench]"`). A site costs the same in every full rerun, so those two run on every `--sample`-th site only and
their time is scaled to all sites (`--sample 1` runs them on all); `patch` runs on all sites. Attribution
patching estimates the same table from two forwards and one backward. Wall clock, 2 threads, fp32.
The corruption swaps 3 tokens.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from bench_forward import machine, write_section
from interp import HookedTransformer
from interp.analysis.attribution import attribution_patch, compare_attribution
from interp.analysis.patching import Site, patch, patch_by_full_reruns, patch_head_out_by_pos
from interp.analysis.paths import path_attribution
from interp.testing import hf_config, random_hf_gpt2

MARK = "bench_patching"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, 12 tokens (CI smoke test)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--sample", type=int, default=8, help="full reruns and TransformerLens on every n-th site")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = hf_config(n_layer=2, n_head=4, n_embd=64, n_positions=64, vocab_size=500) if args.quick else hf_config()
    n_pos = 12 if args.quick else 64
    sample = 1 if args.quick else args.sample
    model = HookedTransformer.from_pretrained(random_hf_gpt2(config, seed=0))
    generator = torch.Generator().manual_seed(0)
    clean = torch.randint(0, config.vocab_size, (1, n_pos), generator=generator)
    corrupted = clean.clone()
    corrupted[0, [3, n_pos // 2, n_pos - 4]] = torch.randint(0, config.vocab_size, (3,), generator=generator)
    answer, wrong = 11, 22

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return logits[:, -1, answer].mean() - logits[:, -1, wrong].mean()

    sites = [Site(f"blocks.{layer}.attn.hook_z", pos=pos, head=head)
             for layer in range(config.n_layer) for pos in range(n_pos) for head in range(config.n_head)]
    sampled = sites[::sample]
    scale = len(sites) / len(sampled)
    timings, notes = {}, []
    start = time.perf_counter()
    fast = patch_head_out_by_pos(model, clean, corrupted, metric, batch_size=args.batch_size, progress=True)
    timings["interp `patch` (blocks l.., positions >= p)"] = time.perf_counter() - start
    start = time.perf_counter()
    full = patch_by_full_reruns(model, clean, corrupted, metric, sampled, batch_size=args.batch_size, progress=True)
    timings["interp `patch_by_full_reruns` (before this change)"] = (time.perf_counter() - start) * scale
    fast_sampled = fast.values.flatten()[::sample]
    notes.append(f"`patch` vs full reruns on the sampled sites: max |difference| {float((fast_sampled - full.values).abs().max()):.1e}")
    tl_seconds = transformer_lens_patching(config, clean, corrupted, metric, sampled, notes, fast_sampled)
    if tl_seconds is not None:
        timings["TransformerLens 3.9 `generic_activation_patch`"] = tl_seconds * scale
    start = time.perf_counter()
    attribution = attribution_patch(model, clean, corrupted, metric, site="head_out_by_pos")
    timings["attribution patching, every head x position"] = time.perf_counter() - start
    start = time.perf_counter()
    paths = path_attribution(model, clean, answer=answer, wrong=wrong)
    timings[f"path attribution ({len(paths.paths):,} paths)"] = time.perf_counter() - start
    agreement = compare_attribution(fast, attribution)
    fast_seconds = timings["interp `patch` (blocks l.., positions >= p)"]
    rows = [f"| {name} | {seconds:,.2f} | {seconds / fast_seconds:,.2f} |" for name, seconds in timings.items()]
    markdown = "\n".join([
        "## Patching and path attribution", "",
        f"Command: `python benchmarks/bench_patching.py{' --quick' if args.quick else ''}`. Machine: {machine()}.",
        f"Model: {config.n_layer} layers x {config.n_head} heads, d_model {config.n_embd} "
        f"({'quick' if args.quick else 'GPT-2 small shape'}), random weights, fp32; 1 x {n_pos} tokens, "
        f"{len(sites):,} head x position sites (hook_z), {args.batch_size} sites per forward. Full reruns and "
        f"TransformerLens ran on every {sample}-th site ({len(sampled):,}) and are scaled x{scale:g} to all sites "
        "(each site costs them one forward row); `patch` ran on all of them.", "",
        "| method | seconds (all sites) | x `patch` |", "|---|---:|---:|", *rows, "",
        "; ".join(notes) + ".",
        f"Attribution patching agrees with activation patching on this random-weight model: "
        + ", ".join(f"{k} {v:.3f}" for k, v in agreement.items()) + ".",
    ])
    print(markdown)
    if not (args.quick or args.no_write):
        write_section(markdown, MARK)


def transformer_lens_patching(config, clean, corrupted, metric, sites, notes, expected) -> float | None:
    """Seconds TransformerLens's generic_activation_patch takes on `sites` (None if it is not installed)."""
    try:
        import pandas as pd
        from transformer_lens import patching as tl_patching
    except ImportError:
        notes.append("TransformerLens not installed (pip install -e \".[bench]\"): its row is missing")
        return None
    from tl_equivalence import load_tl, save_gpt2_directory

    with tempfile.TemporaryDirectory() as directory:
        tl = load_tl(save_gpt2_directory(config, directory, seed=0), processed=False)
    _, clean_cache = tl.run_with_cache(clean)
    index = pd.DataFrame([(int(s.hook_name.split(".")[1]), s.pos, s.head) for s in sites],
                         columns=["layer", "pos", "head_index"])
    start = time.perf_counter()
    with torch.no_grad():
        values = tl_patching.generic_activation_patch(tl, corrupted, clean_cache, metric,
                                                      tl_patching.layer_pos_head_vector_patch_setter, "z",
                                                      index_df=index)
    seconds = time.perf_counter() - start
    notes.append(f"`patch` vs TransformerLens on the sampled sites: max |difference| "
                 f"{float((values.double() - expected).abs().max()):.1e}")
    return seconds


if __name__ == "__main__":
    main()
