"""Our activations against TransformerLens 3.9's, on the same weights, loaded offline from one directory.

    python benchmarks/tl_equivalence.py            # GPT-2 small shape, random weights: prints the table
    python benchmarks/tl_equivalence.py --quick    # tiny model

How TransformerLens is loaded offline. `HookedTransformer.from_pretrained(name)` first maps `name` to
an official hub name (`get_official_model_name`), so it refuses a local path, and
`from_pretrained("gpt2", hf_model=...)` still fetches the "gpt2" config from the hub. TransformerLens's
own loading functions do accept a path, so `load_tl` runs the body of `from_pretrained` with the
directory in place of the name, step for step:

    cfg = loading.get_pretrained_model_config(dir, fold_ln=processed)   # AutoConfig of dir -> TL config
    state = loading.get_pretrained_state_dict(dir, cfg)     # AutoModelForCausalLM.from_pretrained(dir),
                                                            #   then TL's convert_gpt2_weights
    model = HookedTransformer(cfg)                          # tokenizer: AutoTokenizer of dir
    model.load_and_process_state_dict(state, fold_ln=..., center_writing_weights=...,
                                      center_unembed=..., fold_value_biases=...)
    model.move_model_modules_to_device()

processed=True is `from_pretrained`'s default processing, processed=False `from_pretrained_no_processing`.
The directory needs config.json with `n_ctx` (as the hub's GPT-2 config has) and a tokenizer:
`save_gpt2_directory` writes both. Used by bench_compare.py (which puts the table into RESULTS.md)
and tests/test_tl_equivalence.py.
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is local; a hub look-up is a bug

import torch
from torch import Tensor

from interp import HookedTransformer
from interp.testing import hf_config, random_hf_gpt2
from interp.tokens import gpt2_tokenizer

# TransformerLens hook points we do not have: attention's input copies (behind TL's use_attn_in) and the
# unembedding's input and output (= our ln_final.hook_normalized after the affine map, and the logits).
TL_ONLY_SUFFIXES = ("hook_attn_in", "unembed.hook_in", "unembed.hook_out")


def save_gpt2_directory(config: Any, directory: str | Path, seed: int = 0) -> Path:
    """A random-weight GPT-2 (`interp.testing.random_hf_gpt2`) and the real GPT-2 tokenizer, saved
    with save_pretrained so that `transformers`, TransformerLens and interp all load it by path."""
    model = random_hf_gpt2(config, seed=seed)
    model.config.n_ctx = model.config.n_positions  # the hub's config.json has it; TL's GPT-2 config reads it
    model.save_pretrained(directory)
    gpt2_tokenizer().save_pretrained(directory)
    return Path(directory)


def load_tl(directory: str | Path, processed: bool) -> Any:
    """TransformerLens `HookedTransformer` from a local directory (see the module docstring)."""
    from transformer_lens import HookedTransformer as TLHookedTransformer
    from transformer_lens import loading_from_pretrained as loading

    with warnings.catch_warnings():  # TL 3.9 marks HookedTransformer deprecated in favour of TransformerBridge
        warnings.simplefilter("ignore")
        cfg = loading.get_pretrained_model_config(str(directory), fold_ln=processed, dtype=torch.float32)
        state = loading.get_pretrained_state_dict(str(directory), cfg, None, dtype=torch.float32)
        model = TLHookedTransformer(cfg, None, move_to_device=False)
        model.load_and_process_state_dict(state, fold_ln=processed, center_writing_weights=processed,
                                          center_unembed=processed, fold_value_biases=processed)
        model.move_model_modules_to_device()
    return model.eval()


def layer_pattern(name: str) -> str:
    """`blocks.3.attn.hook_q` -> `blocks.{l}.attn.hook_q` (to report one row per kind of hook)."""
    return re.sub(r"^blocks\.\d+\.", "blocks.{l}.", name)


def max_abs_difference(a: Tensor, b: Tensor) -> float:
    """max |a - b|, counting equal entries (also equal infinities, as masked scores are) as 0."""
    if a.shape != b.shape:
        return float("inf")
    a, b = a.double(), b.double()
    return float(torch.where(a == b, 0.0, (a - b).abs()).max()) if a.numel() else 0.0


def hook_name_differences(ours: HookedTransformer, tl: Any) -> dict[str, list[str]]:
    """Hook kinds only one side has (layer index replaced by {l})."""
    ours_kinds = {layer_pattern(name) for name in ours.hook_dict}
    tl_kinds = {layer_pattern(name) for name in tl.hook_dict}
    return {"ours_only": sorted(ours_kinds - tl_kinds), "tl_only": sorted(tl_kinds - ours_kinds)}


@torch.no_grad()
def compare_activations(ours: HookedTransformer, tl: Any, tokens: Tensor, opt_in: bool = False) -> dict[str, dict[str, Any]]:
    """Per hook kind: max |ours - TL| over layers, the largest |TL value| for scale, and the shapes.

    opt_in=False: every hook both cache by default. opt_in=True: the opt-in points (our hook_q/k/v_input,
    attn.hook_result and hook_mlp_in; TL's use_split_qkv_input, use_attn_result, use_hook_mlp_in) and the ln1
    hooks, whose shapes gain a head axis while the per-head inputs are on, on both sides.
    """
    if opt_in:
        names = [name for name in ours.hook_dict
                 if name in ours.opt_in_names or ".ln1." in name]
        switches = (tl.set_use_split_qkv_input, tl.set_use_attn_result, tl.set_use_hook_mlp_in)
        for switch in switches:
            switch(True)
        try:
            _, tl_cache = tl.run_with_cache(tokens, names_filter=names)
        finally:
            for switch in switches:
                switch(False)
        _, our_cache = ours.run_with_cache(tokens, names_filter=names)
    else:
        _, our_cache = ours.run_with_cache(tokens)
        _, tl_cache = tl.run_with_cache(tokens, names_filter=list(our_cache.keys()))
    rows: dict[str, dict[str, Any]] = {}
    for name in our_cache.keys():
        if name not in tl_cache.keys():
            rows.setdefault(layer_pattern(name), {"difference": float("inf"), "scale": 0.0, "missing_in_tl": True})
            continue
        ours_value, tl_value = our_cache[name], tl_cache[name]
        row = rows.setdefault(layer_pattern(name), {"difference": 0.0, "scale": 0.0,
                                                    "ours_shape": list(ours_value.shape), "tl_shape": list(tl_value.shape)})
        row["difference"] = max(row["difference"], max_abs_difference(ours_value, tl_value))
        finite = tl_value[tl_value.isfinite()]
        row["scale"] = max(row["scale"], float(finite.abs().max()) if finite.numel() else 0.0)
    return rows


@torch.no_grad()
def processed_logit_differences(ours_processed: HookedTransformer, tl_processed: Any, tokens: Tensor) -> dict[str, float]:
    """Ours with process=True vs TL's default processing: logits after mean-centering over the
    vocabulary (centering is what center_unembed may do differently), and log-probabilities."""
    ours_logits, tl_logits = ours_processed(tokens).double(), tl_processed(tokens).double()
    centered = lambda logits: logits - logits.mean(-1, keepdim=True)  # noqa: E731
    return {"centered_logits": max_abs_difference(centered(ours_logits), centered(tl_logits)),
            "log_softmax": max_abs_difference(ours_logits.log_softmax(-1), tl_logits.log_softmax(-1)),
            "logit_scale": float(tl_logits.abs().max())}


def equivalence_report(ours: HookedTransformer, tl: Any, ours_processed: HookedTransformer, tl_processed: Any,
                       tokens: Tensor) -> dict[str, Any]:
    return {"tokens_shape": list(tokens.shape), "default": compare_activations(ours, tl, tokens),
            "opt_in": compare_activations(ours, tl, tokens, opt_in=True),
            "processed": processed_logit_differences(ours_processed, tl_processed, tokens),
            "names": hook_name_differences(ours, tl)}


def equivalence_markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown section body: one row per kind of hook, max over layers."""
    batch, pos = report["tokens_shape"]
    rows = ["| hook (max over layers) | shape | max abs diff | max abs TL value |", "|---|---|---|---|"]
    for run, label in (("default", ""), ("opt_in", " (per-head inputs/results on)")):
        for kind, row in report[run].items():
            shape = "missing in TL" if row.get("missing_in_tl") else (
                "×".join(map(str, row["ours_shape"])) if row["ours_shape"] == row["tl_shape"]
                else f"ours {row['ours_shape']} vs TL {row['tl_shape']}")
            rows.append(f"| `{kind}`{label} | {shape} | {row['difference']:.1e} | {row['scale']:.3g} |")
    processed, names = report["processed"], report["names"]
    worst = max(row["difference"] for run in ("default", "opt_in") for row in report[run].values())
    return "\n".join([
        f"Random weights, {batch}×{pos} tokens, fp32. Raw weights on both sides (TL `from_pretrained_no_processing` path), "
        f"every hook either caches; largest difference {worst:.1e}.", "", *rows, "",
        f"Processed models (ours `process=True`, TL default `from_pretrained` processing: fold_ln, center_writing_weights, "
        f"center_unembed, fold_value_biases): logits after mean-centering differ by at most "
        f"{processed['centered_logits']:.1e} (logits up to {processed['logit_scale']:.3g}), log-probabilities by "
        f"{processed['log_softmax']:.1e}.", "",
        f"Hook names only we have: {names['ours_only'] or 'none'}. Only TransformerLens has: "
        f"{', '.join(f'`{n}`' for n in names['tl_only'])} (attention/MLP input copies behind TL flags, and the "
        "unembedding's input and output = our ln_final output and the logits).",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny model")
    args = parser.parse_args()
    torch.set_num_threads(2)
    config = hf_config(n_layer=2, n_head=4, n_embd=64, n_positions=128, vocab_size=500) if args.quick else hf_config()
    tokens = torch.randint(0, config.vocab_size, (2, 64 if args.quick else 128), generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as directory:
        save_gpt2_directory(config, directory)
        report = equivalence_report(HookedTransformer.from_pretrained(directory), load_tl(directory, processed=False),
                                    HookedTransformer.from_pretrained(directory, process=True),
                                    load_tl(directory, processed=True), tokens)
    print(equivalence_markdown(report))


if __name__ == "__main__":
    main()
