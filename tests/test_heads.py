"""Head scores against a direct computation from transformers' attentions, and their invariants."""

import gc
import weakref

import pytest
import torch

from conftest import tiny_hf_config
from interp import HookedTransformer
from interp.analysis.heads import (
    DiagonalTarget,
    MaskTarget,
    pattern_score,
    repeated_random_scores,
    repeated_random_tokens,
    repeated_targets,
    scores_from_patterns,
    text_scores,
    text_targets,
)
from interp.testing import random_hf_gpt2


def direct_repeated_scores(attentions, length, exclude_bos=False):
    """Plain loops over transformers' attentions: the definition, written the slow obvious way."""
    n_layers, (batch, n_heads, pos, _) = len(attentions), attentions[0].shape
    result = {name: torch.zeros(n_layers, n_heads, dtype=torch.float64) for name in
              ("induction", "duplicate_token", "previous_token")}
    queries = {"induction": [(i, i - length + 1) for i in range(length + 1, 2 * length + 1)],
               "duplicate_token": [(i, i - length) for i in range(length + 1, 2 * length + 1)],
               "previous_token": [(i, i - 1) for i in range(1, 2 * length + 1)]}
    for name, pairs in queries.items():
        if exclude_bos:
            pairs = [(q, k) for q, k in pairs if k != 0]
        for layer, pattern in enumerate(attentions):
            pattern = pattern.double()
            for q, k in pairs:
                mass = pattern[:, :, q, k]
                if exclude_bos:
                    mass = mass / (1 - pattern[:, :, q, 0])
                result[name][layer] += mass.sum(0)
            result[name][layer] /= batch * len(pairs)
    return result


@pytest.fixture(scope="module")
def trained_like_pair():
    """A tiny random model; its attention is far from uniform thanks to large random weights."""
    config = tiny_hf_config("2L-4H-untied", initializer_range=0.3)
    hf_model = random_hf_gpt2(config, seed=5)
    return hf_model, HookedTransformer.from_pretrained(hf_model)


@pytest.mark.parametrize("exclude_bos", [False, True])
def test_repeated_scores_equal_direct_computation_from_transformers(trained_like_pair, exclude_bos):
    hf_model, model = trained_like_pair
    length, n = 10, 6
    scores = repeated_random_scores(model, n_sequences=n, length=length, seed=3, batch_size=4,
                                    exclude_bos=exclude_bos, progress=False)
    tokens = repeated_random_tokens(101, n, length, seed=3, bos_token_id=model.cfg.bos_token_id)
    with torch.no_grad():
        attentions = hf_model(tokens, output_attentions=True).attentions
    reference = direct_repeated_scores(attentions, length, exclude_bos)
    for name, table in reference.items():
        # float64 accumulation on both sides; fp32 patterns agree to ~1e-7, the contract is 1e-6
        torch.testing.assert_close(scores[name].double(), table, rtol=0, atol=1e-6)
    assert scores.n_queries == {"induction": n * length, "duplicate_token": n * length,
                                "previous_token": n * (2 * length - exclude_bos)}


def test_gpt2_small_shape_scores_equal_transformers(gpt2_small_pair):
    hf_model, model = gpt2_small_pair
    scores = repeated_random_scores(model, n_sequences=2, length=8, seed=1, with_loss=False, progress=False)
    tokens = repeated_random_tokens(50257, 2, 8, seed=1, bos_token_id=50256)
    with torch.no_grad():
        reference = direct_repeated_scores(hf_model(tokens, output_attentions=True).attentions, 8)
    assert scores["induction"].shape == (12, 12)
    for name, table in reference.items():
        torch.testing.assert_close(scores[name].double(), table, rtol=0, atol=1e-6)


def test_streaming_equals_scoring_cached_patterns(trained_like_pair):
    _, model = trained_like_pair
    tokens = repeated_random_tokens(101, 5, 12, seed=0, bos_token_id=model.cfg.bos_token_id)
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    patterns = [cache["pattern", layer] for layer in range(model.cfg.n_layers)]
    for exclude_current in (False, True):
        cached = scores_from_patterns(patterns, repeated_targets(5, 12, True), exclude_current_token=exclude_current)
        streamed = repeated_random_scores(model, n_sequences=5, length=12, seed=0, exclude_current_token=exclude_current,
                                          progress=False)
        for name in cached:
            torch.testing.assert_close(streamed[name], cached[name], rtol=0, atol=1e-6)


def test_text_scores_find_repeats_from_tokens(trained_like_pair):
    _, model = trained_like_pair
    tokens = repeated_random_tokens(101, 3, 10, seed=2, bos_token_id=model.cfg.bos_token_id)
    targets = text_targets(tokens)
    # a hand-made case: token 7 at positions 1 and 4 -> query 4 targets key 1 (dup) and key 2 (induction)
    small = text_targets(torch.tensor([[0, 7, 8, 9, 7]]))
    assert small["duplicate_token"].key_mask[0, 4].nonzero().flatten().tolist() == [1]
    assert small["induction"].key_mask[0, 4].nonzero().flatten().tolist() == [2]
    assert small["induction"].query_mask[0].tolist() == [False, False, False, False, True]
    # Every positional target of the repeated protocol is among the token-derived ones.
    protocol = repeated_targets(3, 10, True)
    for name in ("induction", "duplicate_token"):
        rows = torch.arange(21)[protocol[name].query_mask[0]]
        assert bool(targets[name].key_mask[:, rows, rows - protocol[name].lag].all())
    scores = text_scores(model, tokens, batch_size=2, progress=False)
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    direct = scores_from_patterns([cache["pattern", layer] for layer in range(2)], targets)
    for name in direct:
        torch.testing.assert_close(scores[name], direct[name], rtol=0, atol=1e-6)


def test_text_scores_ignore_padding(trained_like_pair):
    _, model = trained_like_pair
    long = repeated_random_tokens(101, 1, 12, seed=4, bos_token_id=model.cfg.bos_token_id)[0]
    short = repeated_random_tokens(101, 1, 5, seed=5, bos_token_id=model.cfg.bos_token_id)[0]
    together = text_scores(model, [long, short], batch_size=2, progress=False)
    separate = [text_scores(model, [seq], progress=False) for seq in (long, short)]
    for name in together.scores:
        counts = [s.n_queries[name] for s in separate]
        weighted = sum(s[name] * c for s, c in zip(separate, counts)) / sum(counts)
        torch.testing.assert_close(together[name], weighted, rtol=0, atol=1e-6)


def test_pattern_score_with_custom_target(trained_like_pair):
    _, model = trained_like_pair
    tokens = torch.randint(0, 100, (2, 15), generator=torch.Generator().manual_seed(0))
    bos_target = torch.zeros(15, 15)
    bos_target[:, 0] = 1
    attend_to_bos = pattern_score(model, tokens, bos_target)
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_pattern"))
    for layer in range(2):
        torch.testing.assert_close(attend_to_bos[layer], cache["pattern", layer][..., 0].mean((0, 2)), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="future keys"):
        pattern_score(model, tokens, torch.ones(15, 15))
    with pytest.raises(ValueError, match="target_pattern must be"):
        pattern_score(model, tokens, torch.zeros(4, 4))


def test_scoring_keeps_at_most_one_layers_pattern_alive():
    model = HookedTransformer.from_pretrained(random_hf_gpt2(tiny_hf_config("4L-8H-untied-ninner"), seed=0))
    live = []

    def count_live(pattern, hook):
        gc.collect()
        alive = sum(ref() is not None for ref in live)
        live.append(weakref.ref(pattern))
        counts.append(alive)

    counts = []
    model.add_hook(lambda name: name.endswith("hook_pattern"), count_live)
    try:
        repeated_random_scores(model, n_sequences=2, length=20, batch_size=2, with_loss=False, progress=False)
    finally:
        model.reset_hooks()
    assert counts == [0, 0, 0, 0]  # when layer l's pattern exists, no earlier layer's pattern does
    # ...while caching patterns would keep them all: the check can fail.
    _, cache = model.run_with_cache(repeated_random_tokens(101, 1, 5, bos_token_id=100),
                                    names_filter=lambda n: n.endswith("hook_pattern"))
    assert len(cache) == 4


def test_top_heads_and_errors(trained_like_pair):
    _, model = trained_like_pair
    scores = repeated_random_scores(model, n_sequences=2, length=6, progress=False)
    top = scores.top_heads("previous_token", k=3)
    assert len(top) == 3 and top[0][2] == float(scores["previous_token"].max())
    assert top[0][2] >= top[1][2] >= top[2][2]
    with pytest.raises(ValueError, match="Unknown score types"):
        repeated_random_scores(model, score_types=["inductoin"], progress=False)
    with pytest.raises(ValueError, match="fit n_ctx"):
        repeated_random_scores(model, length=100, progress=False)
    with pytest.raises(KeyError, match="computed"):
        scores["copying"]


def test_repeated_tokens_are_seeded_and_avoid_bos():
    first = repeated_random_tokens(50, 4, 30, seed=1, bos_token_id=49, exclude_ids=[0])
    assert torch.equal(first, repeated_random_tokens(50, 4, 30, seed=1, bos_token_id=49, exclude_ids=[0]))
    assert not torch.equal(first, repeated_random_tokens(50, 4, 30, seed=2, bos_token_id=49, exclude_ids=[0]))
    assert (first[:, 0] == 49).all() and not (first[:, 1:] == 49).any() and not (first == 0).any()
    assert torch.equal(first[:, 1:31], first[:, 31:])
