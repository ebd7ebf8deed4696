"""interp.tl.patching, head_detector and evals: TransformerLens's functions on interp models, checked against
brute-force loops written here (one full `run_with_hooks` per patch, attention scores summed cell by cell,
losses from log_softmax position by position), never against the code under test."""

import itertools
import logging
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import families  # noqa: E402

from interp import HookedTransformer  # noqa: E402
from interp.tl import evals, head_detector, patching  # noqa: E402

# The patched runs start mid-model from cached keys and values and batch several patches per forward, while the
# brute force reruns everything one patch at a time: the same fp32 operations in a different grouping (hooking
# every layer's pattern also switches them to explicit attention), so differences are rounding, ~1e-6 here.
ATOL = 1e-5
N_POS = 7

# function name -> (hook name of block {}, index axes, the slice an index patches (batch axis first))
PATCHES = {
    "get_act_patch_resid_pre": ("blocks.{}.hook_resid_pre", ("layer", "pos"), lambda i: (slice(None), i[1])),
    "get_act_patch_resid_mid": ("blocks.{}.hook_resid_mid", ("layer", "pos"), lambda i: (slice(None), i[1])),
    "get_act_patch_attn_out": ("blocks.{}.hook_attn_out", ("layer", "pos"), lambda i: (slice(None), i[1])),
    "get_act_patch_mlp_out": ("blocks.{}.hook_mlp_out", ("layer", "pos"), lambda i: (slice(None), i[1])),
    "get_act_patch_attn_head_out_by_pos": ("blocks.{}.attn.hook_z", ("layer", "pos", "head"),
                                           lambda i: (slice(None), i[1], i[2])),
    "get_act_patch_attn_head_q_by_pos": ("blocks.{}.attn.hook_q", ("layer", "pos", "head"),
                                         lambda i: (slice(None), i[1], i[2])),
    "get_act_patch_attn_head_k_by_pos": ("blocks.{}.attn.hook_k", ("layer", "pos", "kv_head"),
                                         lambda i: (slice(None), i[1], i[2])),
    "get_act_patch_attn_head_v_by_pos": ("blocks.{}.attn.hook_v", ("layer", "pos", "kv_head"),
                                         lambda i: (slice(None), i[1], i[2])),
    "get_act_patch_attn_head_pattern_by_pos": ("blocks.{}.attn.hook_pattern", ("layer", "head", "pos"),
                                               lambda i: (slice(None), i[1], i[2])),
    "get_act_patch_attn_head_pattern_dest_src_pos": ("blocks.{}.attn.hook_pattern", ("layer", "head", "pos", "pos"),
                                                     lambda i: (slice(None), i[1], i[2], i[3])),
    "get_act_patch_attn_head_out_all_pos": ("blocks.{}.attn.hook_z", ("layer", "head"),
                                            lambda i: (slice(None), slice(None), i[1])),
    "get_act_patch_attn_head_q_all_pos": ("blocks.{}.attn.hook_q", ("layer", "head"),
                                          lambda i: (slice(None), slice(None), i[1])),
    "get_act_patch_attn_head_k_all_pos": ("blocks.{}.attn.hook_k", ("layer", "kv_head"),
                                          lambda i: (slice(None), slice(None), i[1])),
    "get_act_patch_attn_head_v_all_pos": ("blocks.{}.attn.hook_v", ("layer", "kv_head"),
                                          lambda i: (slice(None), slice(None), i[1])),
    "get_act_patch_attn_head_pattern_all_pos": ("blocks.{}.attn.hook_pattern", ("layer", "head"),
                                                lambda i: (slice(None), i[1])),
}
# GPT-2, and Llama with 6 query heads sharing 2 kv heads (rotary, RMSNorm, SwiGLU)
PATCH_CASES = ["gpt2", "llama_gqa"]


def logit_difference(logits):
    return (logits[:, -1, 3] - logits[:, -1, 5]).mean()


@pytest.fixture(scope="module", params=PATCH_CASES)
def setup(request):
    case = request.param
    model = families.load(case)
    clean = families.tokens(case, batch=2, pos=N_POS, seed=4)
    corrupted = clean.clone()
    corrupted[:, 2] = (clean[:, 2] + 7) % model.cfg.d_vocab  # the runs differ from position 2 on
    corrupted[0, 5] = (clean[0, 5] + 1) % model.cfg.d_vocab
    _, clean_cache = model.run_with_cache(clean)
    return {"case": case, "model": model, "clean": clean, "corrupted": corrupted, "cache": clean_cache, "brute": {}}


def sizes(model, axes):
    size = {"layer": model.cfg.n_layers, "pos": N_POS, "head": model.cfg.n_heads, "kv_head": model.cfg.n_kv_heads}
    return [size[axis] for axis in axes]


def brute_force(setup, function):
    """One full forward per index, the activation's slice replaced by the clean run's."""
    if function not in setup["brute"]:
        model, cache = setup["model"], setup["cache"]
        hook_name, axes, where = PATCHES[function]
        shape = sizes(model, axes)
        table = torch.empty(shape)
        for index in itertools.product(*(range(size) for size in shape)):
            name = hook_name.format(index[0])

            def replace(activation, hook, index=index, name=name):
                activation = activation.clone()
                activation[where(index)] = cache[name][where(index)]
                return activation

            with torch.no_grad():
                logits = model.run_with_hooks(setup["corrupted"], fwd_hooks=[(name, replace)])
            table[index] = logit_difference(logits).item()
        setup["brute"][function] = table
    return setup["brute"][function]


@pytest.mark.parametrize("function", list(PATCHES))
def test_each_patching_function_equals_a_brute_force_loop(setup, function):
    model = setup["model"]
    if function == "get_act_patch_resid_mid" and "blocks.0.hook_resid_mid" not in model.hook_dict:
        with pytest.raises(KeyError):  # parallel blocks have no resid_mid
            getattr(patching, function)(model, setup["corrupted"], setup["cache"], logit_difference, progress=False)
        return
    result = getattr(patching, function)(model, setup["corrupted"], setup["cache"], logit_difference, progress=False)
    expected = brute_force(setup, function)
    assert result.shape == expected.shape == torch.Size(sizes(model, PATCHES[function][1]))
    assert result.dtype == torch.float32 and result.device == model.W_E.device
    torch.testing.assert_close(result, expected, atol=ATOL, rtol=0)
    assert result.std() > 1e-3  # the patches really change the metric (not a table of one value)


def test_every_functions_stack_in_tl_order_with_kv_heads_padded(setup):
    model, arguments = setup["model"], (setup["model"], setup["corrupted"], setup["cache"], logit_difference)
    every = patching.get_act_patch_attn_head_all_pos_every(*arguments)
    assert every.shape == (5, model.cfg.n_layers, model.cfg.n_heads)
    for slot, kind in enumerate(["out", "q", "k", "v", "pattern"]):
        expected = brute_force(setup, f"get_act_patch_attn_head_{kind}_all_pos")
        torch.testing.assert_close(every[slot, :, :expected.shape[-1]], expected, atol=ATOL, rtol=0)
        assert not every[slot, :, expected.shape[-1]:].any()  # grouped-query k/v: zeros after the kv heads
    by_pos = patching.get_act_patch_attn_head_by_pos_every(*arguments)
    assert by_pos.shape == (5, model.cfg.n_layers, N_POS, model.cfg.n_heads)
    for slot, kind in enumerate(["out", "q", "k", "v"]):
        expected = brute_force(setup, f"get_act_patch_attn_head_{kind}_by_pos")
        torch.testing.assert_close(by_pos[slot, ..., :expected.shape[-1]], expected, atol=ATOL, rtol=0)
        assert not by_pos[slot, ..., expected.shape[-1]:].any()
    pattern = brute_force(setup, "get_act_patch_attn_head_pattern_by_pos")  # [layer, head, pos]
    torch.testing.assert_close(by_pos[4], pattern.permute(0, 2, 1), atol=ATOL, rtol=0)
    block = patching.get_act_patch_block_every(*arguments)
    assert block.shape == (3, model.cfg.n_layers, N_POS)
    for slot, function in enumerate(["get_act_patch_resid_pre", "get_act_patch_attn_out", "get_act_patch_mlp_out"]):
        torch.testing.assert_close(block[slot], brute_force(setup, function), atol=ATOL, rtol=0)


def test_identical_runs_give_the_unpatched_metric_everywhere(setup):
    model, clean = setup["model"], setup["clean"]
    result = patching.get_act_patch_attn_head_out_by_pos(model, clean, setup["cache"], logit_difference, progress=False)
    with torch.no_grad():
        unpatched = logit_difference(model(clean)).item()
    assert torch.equal(result, torch.full_like(result, unpatched))


def test_index_df_as_rows_gives_a_flat_result_in_row_order(setup):
    model = setup["model"]
    rows = [[1, 4], [0, 2], [1, 2], [0, -1]]  # negative positions index from the end, as in torch
    result = patching.generic_activation_patch(model, setup["corrupted"], setup["cache"], logit_difference,
                                               patching.layer_pos_patch_setter, "resid_pre", index_df=rows,
                                               progress=False)
    table = brute_force(setup, "get_act_patch_resid_pre")
    torch.testing.assert_close(result, torch.stack([table[layer, pos] for layer, pos in rows]), atol=ATOL, rtol=0)


def test_index_df_and_return_index_df_with_pandas(setup):
    pandas = pytest.importorskip("pandas", reason="index tables are pandas DataFrames, as in TransformerLens")
    model = setup["model"]
    frame = pandas.DataFrame([[0, 3, 1], [1, 6, 0]], columns=["layer", "pos", "head"])
    result, returned = patching.generic_activation_patch(
        model, setup["corrupted"], setup["cache"], logit_difference, patching.layer_pos_head_vector_patch_setter, "z",
        index_df=frame, return_index_df=True, progress=False)
    table = brute_force(setup, "get_act_patch_attn_head_out_by_pos")
    torch.testing.assert_close(result, torch.stack([table[0, 3, 1], table[1, 6, 0]]), atol=ATOL, rtol=0)
    assert returned is frame
    _, made = patching.get_act_patch_attn_out(model, setup["corrupted"], setup["cache"], logit_difference,
                                              return_index_df=True, progress=False)
    assert list(made.columns) == ["layer", "pos"]
    assert made.values.tolist() == [[layer, pos] for layer in range(model.cfg.n_layers) for pos in range(N_POS)]


def test_a_setter_of_your_own_is_called_as_tl_calls_it(setup):
    model, cache = setup["model"], setup["cache"]
    calls = []

    def halfway(corrupted_activation, index, clean_activation):  # not one of TL's setters: runs in full
        calls.append((list(index), tuple(corrupted_activation.shape), tuple(clean_activation.shape)))
        layer, pos = index
        corrupted_activation[:, pos] = (corrupted_activation[:, pos] + clean_activation[:, pos]) / 2
        return corrupted_activation

    result = patching.generic_activation_patch(model, setup["corrupted"], cache, logit_difference, halfway,
                                               "attn_out", index_axis_names=("layer", "pos"), progress=False)
    d_model = model.cfg.d_model
    assert calls == [([layer, pos], (2, N_POS, d_model), (2, N_POS, d_model))
                     for layer in range(model.cfg.n_layers) for pos in range(N_POS)]
    for layer, pos in [(0, 2), (1, 5)]:
        name = f"blocks.{layer}.hook_attn_out"

        def half(activation, hook, name=name, pos=pos):
            activation = activation.clone()
            activation[:, pos] = (activation[:, pos] + cache[name][:, pos]) / 2
            return activation

        with torch.no_grad():
            expected = logit_difference(model.run_with_hooks(setup["corrupted"], fwd_hooks=[(name, half)]))
        assert abs(result[layer, pos].item() - expected.item()) < ATOL


def test_progress_bar_counts_every_patch(setup, capsys):
    model = setup["model"]
    patching.get_act_patch_resid_pre(model, setup["corrupted"], setup["cache"], logit_difference)
    total = model.cfg.n_layers * N_POS
    assert f"{total}/{total}" in capsys.readouterr().err


def test_sites_per_forward_does_not_change_the_numbers(setup):
    arguments = (setup["model"], setup["corrupted"], setup["cache"], logit_difference)
    one = patching.get_act_patch_attn_head_q_by_pos(*arguments, sites_per_forward=1, progress=False)
    torch.testing.assert_close(one, brute_force(setup, "get_act_patch_attn_head_q_by_pos"), atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="sites_per_forward"):
        patching.get_act_patch_attn_head_q_by_pos(*arguments, sites_per_forward=0)


def test_left_padding_masked_as_the_models_forward_masks_it(setup, monkeypatch):
    # An interp.tl model masks left padding in its forward (TL's get_attention_mask); patching asks the model for
    # that mask through `tokens_and_mask`, here given to interp's model by hand: row 0 has 2 padded positions.
    model, corrupted, cache = setup["model"], setup["corrupted"], setup["cache"]
    mask = torch.ones(2, N_POS, dtype=torch.bool)
    mask[0, :2] = False
    monkeypatch.setattr(model, "tokens_and_mask", lambda tokens, *rest: (tokens, mask))
    result = patching.get_act_patch_attn_head_v_by_pos(model, corrupted, cache, logit_difference, progress=False)
    expected = torch.empty(result.shape)
    for layer, pos, head in itertools.product(*(range(size) for size in result.shape)):
        name = f"blocks.{layer}.attn.hook_v"

        def replace(activation, hook, name=name, pos=pos, head=head):
            activation = activation.clone()
            activation[:, pos, head] = cache[name][:, pos, head]
            return activation

        with torch.no_grad():
            logits = model.run_with_hooks(corrupted, fwd_hooks=[(name, replace)], attention_mask=mask)
        expected[layer, pos, head] = logit_difference(logits).item()
    torch.testing.assert_close(result, expected, atol=ATOL, rtol=0)
    unmasked = brute_force(setup, "get_act_patch_attn_head_v_by_pos")
    assert (result - unmasked).abs().max() > 1e-3  # the mask mattered


@pytest.mark.parametrize("case", PATCH_CASES)
def test_on_the_transformer_lens_model_class(case):
    from interp.tl import HookedTransformer as TLHookedTransformer
    model = TLHookedTransformer.from_pretrained_no_processing(str(families.saved_dir(case)))
    clean = families.tokens(case, batch=2, pos=5, seed=8)
    corrupted = clean.clone()
    corrupted[:, 1] = (clean[:, 1] + 3) % model.cfg.d_vocab
    _, cache = model.run_with_cache(clean)
    for function, (hook_name, axes, where) in [(f, PATCHES[f]) for f in ("get_act_patch_attn_head_k_by_pos",
                                                                         "get_act_patch_attn_head_pattern_by_pos")]:
        result = getattr(patching, function)(model, corrupted, cache, logit_difference, progress=False)
        expected = torch.empty(result.shape)
        for index in itertools.product(*(range(size) for size in result.shape)):
            name = hook_name.format(index[0])

            def replace(activation, hook, index=index, name=name):  # in place, as TL's setters do
                activation[where(index)] = cache[name][where(index)]
                return activation

            with torch.no_grad():
                expected[index] = logit_difference(model.run_with_hooks(corrupted, fwd_hooks=[(name, replace)]))
        n_layers, n_heads, kv = model.cfg.n_layers, model.cfg.n_heads, model.cfg.n_key_value_heads or model.cfg.n_heads
        assert result.shape == ((n_layers, 5, kv) if "_k_" in function else (n_layers, n_heads, 5))
        torch.testing.assert_close(result, expected, atol=ATOL, rtol=0)


# ----- patching: errors ----------------------------------------------------------------------------
def test_a_metric_that_is_not_scalar_is_refused(setup):
    per_row = lambda logits: logits[:, -1, 3]  # noqa: E731  [batch]: not reduced
    with pytest.raises(ValueError, match="scalar.*mean"):
        patching.get_act_patch_resid_pre(setup["model"], setup["corrupted"], setup["cache"], per_row, progress=False)


def test_bad_index_arguments_are_refused(setup):
    model, corrupted, cache = setup["model"], setup["corrupted"], setup["cache"]
    generic = patching.generic_activation_patch
    with pytest.raises(ValueError, match="index_axis_names.*index_df"):
        generic(model, corrupted, cache, logit_difference, patching.layer_pos_patch_setter, "resid_pre")
    with pytest.raises(ValueError, match="not both"):
        generic(model, corrupted, cache, logit_difference, patching.layer_pos_patch_setter, "resid_pre",
                index_axis_names=("layer", "pos"), index_df=[[0, 1]])
    with pytest.raises(KeyError, match="position"):
        generic(model, corrupted, cache, logit_difference, patching.layer_pos_patch_setter, "resid_pre",
                index_axis_names=("layer", "position"))
    with pytest.raises(IndexError, match="out of range"):
        generic(model, corrupted, cache, logit_difference, patching.layer_pos_patch_setter, "resid_pre",
                index_df=[[0, N_POS]], progress=False)
    with pytest.raises(ValueError, match="index of 3 entries"):
        generic(model, corrupted, cache, logit_difference, patching.layer_pos_head_vector_patch_setter, "z",
                index_df=[[0, 1]], progress=False)


def test_a_clean_cache_of_other_tokens_shape_is_refused(setup):
    model = setup["model"]
    _, short_cache = model.run_with_cache(setup["clean"][:, :4])
    with pytest.raises(ValueError, match="same \\[batch, pos\\]"):
        patching.get_act_patch_resid_pre(model, setup["corrupted"], short_cache, logit_difference, progress=False)


def test_resid_mid_of_parallel_blocks_is_an_unknown_hook():
    model = families.load("neox_parallel")  # attention and MLP read the same stream: no resid_mid
    tokens = families.tokens("neox_parallel", batch=1, pos=4)
    _, cache = model.run_with_cache(tokens)
    with pytest.raises(KeyError, match="hook_resid_mid"):
        patching.get_act_patch_resid_mid(model, tokens, cache, logit_difference, progress=False)


def test_tl_setters_edit_the_documented_slice():
    corrupted, clean = torch.zeros(2, 3, 4, 5), torch.ones(2, 3, 4, 5)
    cases = [(patching.layer_pos_patch_setter, [0, 1], (slice(None), 1)),
             (patching.layer_pos_head_vector_patch_setter, [0, 2, 3], (slice(None), 2, 3)),
             (patching.layer_head_vector_patch_setter, [0, 3], (slice(None), slice(None), 3)),
             (patching.layer_head_pattern_patch_setter, [0, 1], (slice(None), 1)),
             (patching.layer_head_pos_pattern_patch_setter, [0, 1, 2], (slice(None), 1, 2)),
             (patching.layer_head_dest_src_pos_pattern_patch_setter, [0, 1, 2, 4], (slice(None), 1, 2, 4))]
    for setter, index, where in cases:
        expected = torch.zeros(2, 3, 4, 5)
        expected[where] = 1
        assert torch.equal(setter(corrupted.clone(), index, clean), expected), setter.__name__


# ----- head detector -------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=["interp-toy", "interp-toy-llama"])
def toy(request):
    return HookedTransformer.from_pretrained(request.param)  # GPT-2, and Llama with GQA; both with a tokenizer


def test_detection_patterns_written_out_for_four_tokens():
    tokens = torch.tensor([[5, 7, 5, 7]])
    assert head_detector.get_previous_token_head_detection_pattern(tokens).tolist() == \
        [[0, 0, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]
    assert head_detector.get_duplicate_token_head_detection_pattern(tokens).tolist() == \
        [[0, 0, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0]]
    assert head_detector.get_induction_head_detection_pattern(tokens).tolist() == \
        [[0, 0, 0, 0], [0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]
    # A token repeated in a row: its induction target can be itself (token j - 1 == token i with j == i).
    repeated = torch.tensor([3, 3, 3, 4])
    assert head_detector.get_duplicate_token_head_detection_pattern(repeated).tolist() == \
        [[0, 0, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]]
    assert head_detector.get_induction_head_detection_pattern(repeated).tolist() == \
        [[0, 0, 0, 0], [0, 1, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]]
    assert head_detector.get_induction_head_detection_pattern(tokens).dtype == torch.float32
    with pytest.raises(ValueError, match="one sequence"):
        head_detector.get_duplicate_token_head_detection_pattern(torch.tensor([[1, 2], [3, 4]]))


def hand_score(pattern, detection, exclude_bos, exclude_current_token, error_measure):
    """The score of one head, entry by entry."""
    n = len(pattern)
    keep = [[not ((exclude_bos and j == 0) or (exclude_current_token and i == j)) for j in range(n)] for i in range(n)]
    if error_measure == "mul":
        hit = sum(float(pattern[i][j]) * float(detection[i][j]) for i in range(n) for j in range(n) if keep[i][j])
        kept = sum(float(pattern[i][j]) for i in range(n) for j in range(n) if keep[i][j])
        return hit / kept
    error = sum(abs(float(pattern[i][j]) - float(detection[i][j])) for i in range(n) for j in range(n) if keep[i][j])
    return 1 - round(error / n, 3)


TEXT = "the cat sat on the mat. the cat sat on the mat."


@pytest.mark.parametrize("error_measure", ["mul", "abs"])
@pytest.mark.parametrize("exclude_bos,exclude_current_token", [(False, False), (True, False), (False, True), (True, True)])
def test_detect_head_equals_hand_computed_scores(toy, error_measure, exclude_bos, exclude_current_token):
    tokens = toy.to_tokens(TEXT)
    _, cache = toy.run_with_cache(tokens)
    for name in head_detector.HEAD_NAMES:
        detection = getattr(head_detector, f"get_{name}_detection_pattern")(tokens)
        scores = head_detector.detect_head(toy, TEXT, name, exclude_bos=exclude_bos,
                                           exclude_current_token=exclude_current_token, error_measure=error_measure)
        assert scores.shape == (toy.cfg.n_layers, toy.cfg.n_heads)
        for layer, head in itertools.product(range(toy.cfg.n_layers), range(toy.cfg.n_heads)):
            pattern = cache["pattern", layer][0, head].tolist()
            expected = hand_score(pattern, detection.tolist(), exclude_bos, exclude_current_token, error_measure)
            assert math.isclose(scores[layer, head].item(), expected, abs_tol=1e-5), (name, layer, head)


def test_detect_head_finds_the_toy_models_induction_heads(toy):
    # 40 random tokens repeated: the bundled models' layer-1 induction heads attend to the token after the
    # earlier copy (DESIGN.md: induction scores 0.8-0.94).
    torch.manual_seed(0)
    half = torch.randint(100, toy.cfg.d_vocab, (40,))
    text = toy.to_string(torch.cat([half, half]))
    scores = head_detector.detect_head(toy, text, "induction_head", exclude_bos=True)
    assert scores[1].max() > 0.5 and scores[0].max() < scores[1].max()


def test_a_list_of_prompts_is_the_mean_and_keyword_arguments_pass_through(toy):
    prompts = [TEXT, "one two three one two three", "a b a b a b"]
    options = dict(heads=[(0, 1), (1, 0)], exclude_bos=True, exclude_current_token=True, error_measure="abs")
    mean = head_detector.detect_head(toy, prompts, "duplicate_token_head", **options)
    singles = [head_detector.detect_head(toy, prompt, "duplicate_token_head", **options) for prompt in prompts]
    torch.testing.assert_close(mean, torch.stack(singles).mean(0))
    plain = torch.stack([head_detector.detect_head(toy, p, "duplicate_token_head") for p in prompts]).mean(0)
    assert not torch.allclose(mean[0, 1], plain[0, 1])  # the options reached each prompt's score (TL PR #1745)


def test_heads_as_list_or_dict_score_minus_one_elsewhere(toy):
    full = head_detector.detect_head(toy, TEXT, "previous_token_head")
    for heads in ([(0, 2), (1, 1), (1, 3)], {0: [2], 1: [1, 3]}):
        chosen = head_detector.detect_head(toy, TEXT, "previous_token_head", heads=heads)
        for layer, head in itertools.product(range(toy.cfg.n_layers), range(toy.cfg.n_heads)):
            picked = (layer, head) in [(0, 2), (1, 1), (1, 3)]
            assert chosen[layer, head].item() == (full[layer, head].item() if picked else -1.0)
    with pytest.raises(IndexError, match="does not exist"):
        head_detector.detect_head(toy, TEXT, "previous_token_head", heads=[(0, toy.cfg.n_heads)])


def test_a_given_cache_is_read_and_not_modified(toy):
    _, cache = toy.run_with_cache(TEXT)
    before = cache["pattern", 0].clone()
    with_cache = head_detector.detect_head(toy, TEXT, "induction_head", cache=cache, exclude_bos=True,
                                           exclude_current_token=True)
    assert torch.equal(cache["pattern", 0], before)
    assert torch.equal(with_cache, head_detector.detect_head(toy, TEXT, "induction_head", exclude_bos=True,
                                                             exclude_current_token=True))
    unbatched = head_detector.detect_head(toy, TEXT, "induction_head", cache=cache.remove_batch_dim(),
                                          exclude_bos=True, exclude_current_token=True)
    assert torch.equal(unbatched, with_cache)


def test_a_detection_tensor_of_your_own_and_the_mul_warning(toy, caplog):
    n = toy.to_tokens(TEXT).shape[-1]
    half_on_bos = torch.zeros(n, n)
    half_on_bos[:, 0] = 0.5
    with caplog.at_level(logging.WARNING):
        scores = head_detector.detect_head(toy, TEXT, half_on_bos)
    assert "other than 0 or 1" in caplog.text
    _, cache = toy.run_with_cache(TEXT)
    expected = 0.5 * cache["pattern", 1][0, 2, :, 0].sum() / cache["pattern", 1][0, 2].sum()
    assert math.isclose(scores[1, 2].item(), expected.item(), abs_tol=1e-6)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        head_detector.detect_head(toy, TEXT, half_on_bos, error_measure="abs")
    assert caplog.text == ""


def test_detect_head_errors_name_the_fix(toy):
    n = toy.to_tokens(TEXT).shape[-1]
    detect = head_detector.detect_head
    with pytest.raises(ValueError, match="error_measure"):
        detect(toy, TEXT, "induction_head", error_measure="squared")
    with pytest.raises(AssertionError, match="head names"):  # also an AssertionError, as TL asserts
        detect(toy, TEXT, "copying_head")
    with pytest.raises(ValueError, match="cache"):
        detect(toy, [TEXT, TEXT], "induction_head", cache=toy.run_with_cache(TEXT)[1])
    with pytest.raises(ValueError, match="once per prompt"):
        detect(toy, [TEXT, TEXT], torch.zeros(n, n))
    with pytest.raises(ValueError, match="at least 2"):
        detect(toy, "", "previous_token_head")  # BOS alone
    with pytest.raises(ValueError, match="lower-triangular"):
        detect(toy, TEXT, torch.ones(n, n))
    with pytest.raises(ValueError, match=f"\\[{n}, {n}\\]"):
        detect(toy, TEXT, torch.zeros(n + 1, n + 1))


def test_detect_head_on_the_transformer_lens_model_class():
    from interp.tl import HookedTransformer as TLHookedTransformer
    model = TLHookedTransformer.from_pretrained("interp-toy-llama")
    _, cache = model.run_with_cache(TEXT, remove_batch_dim=True)  # as TL's detect_head makes it
    tokens = model.to_tokens(TEXT)
    detection = head_detector.get_induction_head_detection_pattern(tokens).tolist()
    for scores in (head_detector.detect_head(model, TEXT, "induction_head", exclude_bos=True),
                   head_detector.detect_head(model, TEXT, "induction_head", cache=cache, exclude_bos=True)):
        for layer, head in itertools.product(range(model.cfg.n_layers), range(model.cfg.n_heads)):
            expected = hand_score(cache["pattern", layer][head].tolist(), detection, True, False, "mul")
            assert math.isclose(scores[layer, head].item(), expected, abs_tol=1e-5)


def test_supported_heads_are_printed(capsys):
    assert head_detector.get_supported_heads() is None
    assert capsys.readouterr().out.strip() == \
        "Supported heads: ('previous_token_head', 'duplicate_token_head', 'induction_head')"  # a tuple, as TL


# ----- evals ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def toy_gpt2():
    return HookedTransformer.from_pretrained("interp-toy")


def loss_by_hand(model, tokens):
    """Mean next-token loss of each row, position by position."""
    with torch.no_grad():
        log_probs = model(tokens).log_softmax(-1)
    return [[-log_probs[row, pos, tokens[row, pos + 1]].item() for pos in range(tokens.shape[1] - 1)]
            for row in range(tokens.shape[0])]


def test_sanity_check_is_the_loss_on_the_zoom_in_paragraph(toy_gpt2):
    losses = loss_by_hand(toy_gpt2, toy_gpt2.to_tokens(evals.SANITY_CHECK_TEXT))[0]
    assert math.isclose(evals.sanity_check(toy_gpt2).item(), sum(losses) / len(losses), abs_tol=1e-5)
    assert evals.SANITY_CHECK_TEXT.startswith("Many important transition points")


@pytest.mark.parametrize("prepend_bos", [None, False])
def test_induction_loss_is_the_second_copy_loss(toy_gpt2, prepend_bos):
    torch.manual_seed(3)
    value = evals.induction_loss(toy_gpt2, batch_size=2, subseq_len=30, prepend_bos=prepend_bos)
    torch.manual_seed(3)
    half = torch.randint(100, toy_gpt2.cfg.d_vocab, (2, 30))  # d_vocab 2048 < 20000 bounds the draws
    tokens = torch.cat([half, half], dim=1)
    if prepend_bos is None:  # default: the first token becomes BOS
        tokens[:, 0] = toy_gpt2.tokenizer.bos_token_id
    losses = loss_by_hand(toy_gpt2, tokens)
    second_copy = [loss for row in losses for loss in row[31:]]  # predictions of tokens 32..59
    assert math.isclose(value.item(), sum(second_copy) / len(second_copy), abs_tol=1e-5)
    first_copy = [loss for row in losses for loss in row[:29]]
    assert value.item() < 0.5 * sum(first_copy) / len(first_copy)  # the toy model has induction heads


def test_evaluate_on_dataset_averages_truncate_plus_one_batches(toy_gpt2):
    batches = [{"tokens": families.tokens("gpt2", batch=2, pos=6, seed=seed) % toy_gpt2.cfg.d_vocab}
               for seed in range(4)]
    value = evals.evaluate_on_dataset(toy_gpt2, batches, truncate=1)
    means = [sum(sum(row) for row in loss_by_hand(toy_gpt2, b["tokens"])) / 10 for b in batches[:2]]
    assert math.isclose(value, sum(means) / 2, abs_tol=1e-5)
    assert math.isclose(evals.evaluate_on_dataset(toy_gpt2, batches), sum(
        sum(sum(row) for row in loss_by_hand(toy_gpt2, b["tokens"])) / 10 for b in batches) / 4, abs_tol=1e-5)
    with pytest.raises(ValueError, match="no batches"):
        evals.evaluate_on_dataset(toy_gpt2, [])


def test_ioi_dataset_draws_are_seeded_and_symmetric(toy_gpt2):
    tokenizer = toy_gpt2.tokenizer
    first = evals.IOIDataset(tokenizer, num_samples=12, seed=7)
    again = evals.IOIDataset(tokenizer, num_samples=12, seed=7)
    assert first.samples == again.samples and len(first) == 12
    for sample in first.samples:
        assert {sample["IO"], sample["S"]} == {" John", " Mary"}
        assert sample["text"].endswith(sample["IO"].strip()) and "[" not in sample["text"]
    symmetric = evals.IOIDataset(tokenizer, num_samples=10, symmetric=True, seed=7)
    assert len(symmetric) == 10
    for a, b in zip(symmetric.samples[::2], symmetric.samples[1::2]):
        assert (a["IO"], a["S"]) == (b["S"], b["IO"])
    item = first[0]
    assert item["prompt"][0].item() == tokenizer.bos_token_id
    assert item["prompt"][1:].tolist() == tokenizer.encode(first.samples[0]["text"])
    assert item["IO"].tolist() == tokenizer.encode(first.samples[0]["IO"])


def test_ioi_eval_equals_prompt_by_prompt_logit_differences(toy_gpt2):
    # Mary, Maria and Mark share their first token here: the logit is read where the second one differs.
    dataset = evals.IOIDataset(toy_gpt2.tokenizer, num_samples=9, names=["Mary", "Maria", "Mark", "John"], seed=2)
    result = evals.ioi_eval(toy_gpt2, dataset=dataset, batch_size=4)
    differences = []
    for index in range(len(dataset)):
        item = dataset[index]
        prompt, io, s = item["prompt"], item["IO"].tolist(), item["S"].tolist()
        first = next(k for k in range(min(len(io), len(s))) if io[k] != s[k])
        with torch.no_grad():
            logits = toy_gpt2(prompt[None])[0]
        position = len(prompt) - len(io) + first - 1
        differences.append((logits[position, io[first]] - logits[position, s[first]]).item())
    assert math.isclose(result["Logit Difference"], sum(differences) / len(differences), abs_tol=1e-5)
    assert result["Accuracy"] == sum(d > 0 for d in differences) / len(differences)


def test_ioi_eval_refuses_names_no_token_tells_apart(toy_gpt2):
    dataset = evals.IOIDataset(toy_gpt2.tokenizer, num_samples=2, templates=["[B] saw [A]"],
                               names=["John", "Johnny"], nouns={}, seed=0)
    # the premise: GPT-2's tokenizer gives " John" and " Johnny" the same first tokens
    assert dataset[0]["IO"].tolist()[:2] == dataset[0]["S"].tolist()[:2]
    with pytest.raises(ValueError, match="tells them apart|names whose tokens differ"):
        evals.ioi_eval(toy_gpt2, dataset=dataset)


@pytest.mark.parametrize("loader", ["make_wiki_data_loader", "make_owt_data_loader", "make_pile_data_loader",
                                    "make_code_data_loader"])
def test_loaders_that_need_downloads_say_so(toy_gpt2, loader):
    with pytest.raises(evals.DownloadNeeded, match="offline.*datasets|datasets.*offline"):
        getattr(evals, loader)(toy_gpt2.tokenizer)
    with pytest.raises(evals.DownloadNeeded, match="evaluate_on_dataset"):
        evals.evaluate(toy_gpt2)
    with pytest.raises(evals.DownloadNeeded, match="MMLU"):
        evals.make_mmlu_data_loader("anatomy")
