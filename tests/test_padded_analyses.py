"""Analyses on padded batches: each prompt gets the same numbers alone and inside a left- or right-padded
batch (head scores, attribution patching, path patching, residual-stream decompositions), padding never gets
a score of its own, and reading padding is a clear error. Every expected value comes from the prompts run alone.
"""

from __future__ import annotations

import functools

import pytest
import torch

import families
from interp.analysis import heads
from interp.analysis.attribution import attribution_patch
from interp.analysis.decompose import accumulated_resid, decompose_resid, logit_attrs, stack_head_results
from interp.analysis.path_patching import path_patch, path_patch_all_senders

CASES = ["gpt2", "neox_parallel", "llama_gqa", "mistral_window"]  # learned pos, parallel+partial rotary, GQA, window
LENGTHS = (9, 6)
EXTRA = 2  # padding in every row too: positions padded in the whole batch
TOL = 1e-5


@functools.cache
def model(case: str):
    return families.load(case)


def prompts(case: str, lengths=LENGTHS) -> list[torch.Tensor]:
    return [families.tokens(case, 1, n, seed=10 + i)[0] for i, n in enumerate(lengths)]


def padded(rows: list[torch.Tensor], side: str, extra: int = 0, pad_id: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """`[batch, max_len + extra]` tokens and their bool mask, each row padded on `side`."""
    n = max(len(row) for row in rows) + extra
    tokens = torch.full((len(rows), n), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), n, dtype=torch.bool)
    for i, row in enumerate(rows):
        where = slice(n - len(row), n) if side == "left" else slice(0, len(row))
        tokens[i, where], mask[i, where] = row, True
    return tokens, mask


def close(actual, expected, tol=TOL) -> None:
    actual, expected = torch.as_tensor(actual).double(), torch.as_tensor(expected).double()
    assert actual.shape == expected.shape
    assert torch.allclose(actual, expected, atol=tol, rtol=tol), float((actual - expected).abs().max())


# ----- head scores -------------------------------------------------------------------------------
def repeating(case: str) -> list[torch.Tensor]:
    """Sequences with repeated tokens, so induction and duplicate-token queries exist (lengths 11 and 7)."""
    a, b = prompts(case, (5, 3))
    return [torch.cat([a, a, a[:1]]), torch.cat([b, b, b[:1]])]


def alone_sums(m, sequences, **options) -> heads.ScoreSums:
    totals = [heads.text_score_sums(m, [seq], progress=False, **options) for seq in sequences]
    return functools.reduce(heads.ScoreSums.merge, totals)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("side", ["left", "right"])
def test_text_scores_of_a_padded_tensor_equal_the_sequences_alone(case, side):
    m, sequences = model(case), repeating(case)
    tokens, mask = padded(sequences, side, EXTRA)
    options = dict(exclude_bos=True, exclude_current_token=True)
    expected = alone_sums(m, sequences, **options).to_scores()
    got = heads.text_scores(m, tokens, attention_mask=mask.long(), progress=False, **options)
    assert got.n_queries == expected.n_queries and min(got.n_queries.values()) > 0
    for name in heads.SCORE_TYPES:
        close(got[name], expected[name])
    from_list = heads.text_scores(m, sequences, progress=False, **options)  # right-padded inside
    for name in heads.SCORE_TYPES:
        close(from_list[name], expected[name])


def test_text_scores_mask_padded_queries_and_rejects_a_mask_for_a_list():
    m, sequences = model("gpt2"), repeating("gpt2")
    rows = []

    def padded_queries(pattern, hook):  # the 7-token row is padded at 7..10: no query sees another padded key
        rows.append(pattern[1, :, 7:, 7:])

    with m.hooks([("blocks.0.attn.hook_pattern", padded_queries)]):
        heads.text_scores(m, sequences, progress=False)
    on_padding = rows[0] * (1 - torch.eye(4))  # a padded query may attend to itself (and to the real keys)
    assert bool((on_padding == 0).all()) and bool((rows[0].diagonal(dim1=-2, dim2=-1) > 0).all())
    with pytest.raises(ValueError, match="list of sequences"):
        heads.text_scores(m, sequences, attention_mask=torch.ones(2, 11), progress=False)
    with pytest.raises(ValueError, match="all padding"):
        heads.text_scores(m, torch.zeros(2, 4, dtype=torch.long), attention_mask=torch.tensor([[1, 1, 0, 0], [0] * 4]))


def random_targets(lengths, seed=0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.rand(n, n, generator=generator).tril() * (torch.rand(n, n, generator=generator) > 0.4)
            for n in lengths]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("exclude_bos", [False, True])
def test_pattern_score_of_a_padded_batch_equals_the_prompts_alone(case, side, exclude_bos):
    m, rows = model(case), prompts(case)
    targets = random_targets(LENGTHS)
    options = dict(exclude_bos=exclude_bos, exclude_current_token=True)
    scores, counts = [], []
    for row, target in zip(rows, targets):
        scores.append(heads.pattern_score(m, row[None], target, **options).double())
        queries = heads.scored_queries(heads.MaskTarget(target[None]), exclude_bos, True)
        counts.append(int(queries.sum()))
    expected = sum(score * count for score, count in zip(scores, counts)) / sum(counts)
    tokens, mask = padded(rows, side, EXTRA)
    n = tokens.shape[1]
    batch_target = torch.ones(2, n, n).tril()  # weight at padded queries and keys too: it must not count
    for i, target in enumerate(targets):
        real = mask[i].nonzero().flatten()
        batch_target[i][real[:, None], real[None, :]] = target
    close(heads.pattern_score(m, tokens, batch_target, attention_mask=mask, **options), expected)


# ----- attribution and path patching -------------------------------------------------------------
def pairs(case: str, side: str = "left", extra: int = EXTRA):
    """Clean and corrupted `[2, pos]` batches (one token changed per row), their mask, and the rows alone."""
    m, clean_rows = model(case), prompts(case)
    corrupted_rows = [row.clone() for row in clean_rows]
    for row in corrupted_rows:
        row[-3] = (row[-3] + 7) % m.cfg.d_vocab
    clean, mask = padded(clean_rows, side, extra)
    corrupted, _ = padded(corrupted_rows, side, extra)
    return clean, corrupted, mask, clean_rows, corrupted_rows


def last_logit_diff(correct: list[int], wrong: list[int]):
    """Sum over rows of logit[correct] - logit[wrong] at position -1 (each row's last token when left-padded)."""
    def metric(logits):
        rows = torch.arange(logits.shape[0])
        good, bad = torch.tensor(correct[:len(rows)]), torch.tensor(wrong[:len(rows)])
        return (logits[rows, -1, good] - logits[rows, -1, bad]).sum()
    return metric


ANSWERS = ([3, 5], [4, 8])


def row_metric(i: int):
    return last_logit_diff([ANSWERS[0][i]], [ANSWERS[1][i]])


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("site", ["resid_pre", "head_out_by_pos", "k", "pattern"])
def test_attribution_patch_on_a_left_padded_batch_equals_each_pair_alone(case, site):
    m = model(case)
    clean, corrupted, mask, clean_rows, corrupted_rows = pairs(case)
    got = attribution_patch(m, clean, corrupted, last_logit_diff(*ANSWERS), site, attention_mask=mask)
    alone = [attribution_patch(m, c[None], x[None], row_metric(i), site)
             for i, (c, x) in enumerate(zip(clean_rows, corrupted_rows))]
    close(got.clean_metric, sum(result.clean_metric for result in alone))
    close(got.corrupted_metric, sum(result.corrupted_metric for result in alone))
    expected = torch.zeros_like(got.effect)
    if "pos" in got.dims:  # row i's position p alone is position p + pad_i of the batch
        axis = got.dims.index("pos")
        for i, result in enumerate(alone):
            start = int((~mask[i]).sum())
            expected.narrow(axis, start, result.effect.shape[axis]).add_(result.effect)
        padding_everywhere = got.effect.narrow(axis, 0, EXTRA)
        assert bool((padding_everywhere == 0).all())  # exactly 0, not just small
    else:
        expected = sum(result.effect for result in alone)
    close(got.effect, expected)


def test_attribution_patch_noise_direction_and_exact_zero_at_padding():
    m = model("llama_gqa")
    clean, corrupted, mask, clean_rows, corrupted_rows = pairs("llama_gqa")
    got = attribution_patch(m, clean, corrupted, last_logit_diff(*ANSWERS), "mlp_out", direction="noise",
                            attention_mask=mask)
    alone = [attribution_patch(m, c[None], x[None], row_metric(i), "mlp_out", direction="noise")
             for i, (c, x) in enumerate(zip(clean_rows, corrupted_rows))]
    short_pad = int((~mask[1]).sum())
    close(got.effect[:, short_pad:], alone[0].effect[:, short_pad - EXTRA:] + alone[1].effect)
    assert bool((got.effect[:, :EXTRA] == 0).all())
    assert float(got.effect[:, EXTRA:].abs().sum()) > 0


@pytest.mark.parametrize("case", CASES)
def test_path_patch_on_a_left_padded_batch_equals_each_pair_alone(case):
    m = model(case)
    clean, corrupted, mask, clean_rows, corrupted_rows = pairs(case)
    metric = last_logit_diff(*ANSWERS)
    for receivers, freeze in (([(1, 0, "q"), (1, 1, "v")], False), ("logits", True)):
        got = path_patch(m, clean, corrupted, metric, (0, 1), receivers, freeze_mlps=freeze, attention_mask=mask)
        alone = [path_patch(m, c[None], x[None], row_metric(i), (0, 1), receivers, freeze_mlps=freeze)
                 for i, (c, x) in enumerate(zip(clean_rows, corrupted_rows))]
        close(got, sum(alone))
    table = path_patch_all_senders(m, clean, corrupted, metric, "logits", progress=False, attention_mask=mask)
    alone_tables = [path_patch_all_senders(m, c[None], x[None], row_metric(i), "logits", progress=False)
                    for i, (c, x) in enumerate(zip(clean_rows, corrupted_rows))]
    close(table.values, sum(result.values for result in alone_tables))
    close(table.clean_metric, sum(result.clean_metric for result in alone_tables))
    assert float((table.values - table.clean_metric).abs().max()) > 1e-3  # the senders do something


def test_a_metric_that_reads_padding_is_refused():
    m = model("gpt2")
    clean, corrupted, mask, _, _ = pairs("gpt2", side="right")  # position -1 is padding in both rows
    metric = last_logit_diff(*ANSWERS)
    with pytest.raises(ValueError, match="padded positions.*rows \\[0, 1\\].*left padding"):
        attribution_patch(m, clean, corrupted, metric, "resid_pre", attention_mask=mask)
    with pytest.raises(ValueError, match="padded positions"):
        path_patch(m, clean, corrupted, metric, (0, 1), "logits", attention_mask=mask)
    with pytest.raises(ValueError, match="padded positions"):
        path_patch_all_senders(m, clean, corrupted, metric, "logits", progress=False, attention_mask=mask)
    last_real = mask.sum(-1) - 1  # the same metric at each row's last real token is fine

    def at_last_real(logits):
        rows = torch.arange(2)
        good, bad = torch.tensor(ANSWERS[0]), torch.tensor(ANSWERS[1])
        return (logits[rows, last_real, good] - logits[rows, last_real, bad]).sum()

    left_clean, left_corrupted, left_mask, _, _ = pairs("gpt2", side="left")
    right = attribution_patch(m, clean, corrupted, at_last_real, "head_out", attention_mask=mask)
    left = attribution_patch(m, left_clean, left_corrupted, metric, "head_out", attention_mask=left_mask)
    close(right.effect, left.effect)


# ----- residual-stream decompositions --------------------------------------------------------------
@pytest.mark.parametrize("case", CASES)
def test_decompositions_at_minus_one_of_a_left_padded_batch_equal_the_prompts_alone(case):
    m, rows = model(case), prompts(case)
    tokens, mask = padded(rows, "left", EXTRA)
    _, cache = m.run_with_cache(tokens, attention_mask=mask)
    alone = [m.run_with_cache(row[None])[1] for row in rows]
    answers = torch.tensor([3, 5])

    def by_row(fn):
        return torch.cat([fn(c, answers[i:i + 1]) for i, c in enumerate(alone)], dim=1)

    for fn in (lambda c, a: decompose_resid(c, pos_slice=-1).components,
               lambda c, a: accumulated_resid(c, apply_ln=True, pos_slice=-1).components,
               lambda c, a: stack_head_results(c, pos_slice=-1).components,
               lambda c, a: logit_attrs(c, stack_head_results(c, pos_slice=-1), tokens=a)):
        close(fn(cache, answers), by_row(fn))
    everything = decompose_resid(cache)  # no pos_slice: every position, padding included
    assert everything.components.shape[1:3] == tokens.shape


@pytest.mark.parametrize("side, pos_slice, bad_rows", [("right", -1, "rows 0, 1"), ("left", slice(0, 4), "rows 0, 1"),
                                                       ("left", 2, "row 1")])
def test_a_pos_slice_that_selects_padding_is_refused(side, pos_slice, bad_rows):
    m = model("gpt2")
    tokens, mask = padded(prompts("gpt2"), side, EXTRA)
    _, cache = m.run_with_cache(tokens, attention_mask=mask)
    for call in (lambda: decompose_resid(cache, pos_slice=pos_slice),
                 lambda: accumulated_resid(cache, pos_slice=pos_slice),
                 lambda: cache.stack_head_results(pos_slice=pos_slice)):
        with pytest.raises(ValueError, match=f"selects padding in {bad_rows} .*left padding.*-1"):
            call()
    real = int((~mask).sum(-1).max()) if side == "left" else 0  # first position real in every row
    assert decompose_resid(cache, pos_slice=real).components.shape[1] == 2
