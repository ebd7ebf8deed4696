"""Display of result objects: short reprs that name the top entries, coloured HTML tables whose
colour scales mean what they say, and the number/plural formatting they share (interp.display)."""

import math
import re

import pytest
import torch
from conftest import random_tokens

from interp.analysis.decompose import ComponentStack
from interp.analysis.heads import HeadScores, text_scores
from interp.analysis.patching import PatchResult, patch_head_out
from interp.analysis.paths import PathAttribution, path_attribution
from interp.display import cell_colour, format_number, plural, table_html

CELL = re.compile(r'<td style="[^"]*background:#([0-9a-f]{6})[^"]*">([^<]*)</td>')


def cells(html_text):
    """(rgb, shown text) of every coloured cell, in document order."""
    return [(tuple(int(hexa[i:i + 2], 16) for i in (0, 2, 4)), text) for hexa, text in CELL.findall(html_text)]


def luminance(rgb):
    return 0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2]


def assert_self_contained(html_text):
    assert "<script" not in html_text and "http" not in html_text and "<link" not in html_text


# ----- numbers and words --------------------------------------------------------------------------
@pytest.mark.parametrize("value, expected", [
    (0.9393086433410645, "0.939"), (0.0322650671005249, "0.0323"), (6.6812, "6.68"), (20.87, "20.9"),
    (-21.64, "-21.6"), (1.0, "1.00"), (0.99961, "1.00"), (1234.5, "1230"), (1.234e-5, "1.23e-05"),
    (2.5e7, "2.50e+07"), (0.0, "0"), (-0.0, "0"), (float("nan"), "nan"), (float("-inf"), "-inf"),
])
def test_format_number(value, expected):
    assert format_number(value) == expected


def test_format_number_never_shows_negative_zero_and_keeps_three_significant_digits():
    generator = torch.Generator().manual_seed(0)
    values = (torch.randn(2000, generator=generator, dtype=torch.float64)
              * 10 ** torch.randint(-12, 9, (2000,), generator=generator)).tolist()
    values += [-1e-9, -4e-4, -0.0049, -0.005, -1e-300, -0.0, 5e-324, -5e-324]
    for value in values:
        text = format_number(value)
        assert not re.fullmatch(r"[-+]0(\.0*)?", text), (value, text)
        assert "-0.00" not in text or float(text) != 0
        if value != 0:
            # 3 significant digits: relative rounding error at most half a unit of the third digit
            assert abs(float(text) - value) <= 5e-3 * abs(value) * (1 + 1e-9), (value, text)
    assert format_number(0.5, sign=True) == "+0.500" and format_number(-0.5, sign=True) == "-0.500"
    assert format_number(0.0, sign=True) == "0"


def test_plural():
    assert plural(1, "prompt") == "1 prompt"
    assert plural(2, "prompt") == "2 prompts"
    assert plural(0, "line") == "0 lines"
    assert plural(1, "query") == "1 query" and plural(3, "query") == "3 queries"
    assert plural(2, "day") == "2 days"
    assert plural(3200, "query") == "3,200 queries"
    assert plural(2, "match") == "2 matches"
    assert plural(2, "child", "children") == "2 children" and plural(1, "child", "children") == "1 child"


# ----- colour scales ------------------------------------------------------------------------------
def test_signed_table_is_centred_at_zero_with_a_symmetric_range():
    # max |value| is 4 on the positive side only: -1 must still mirror +1, and -4 would mirror +4
    values = [[4.0, -1.0, 1.0, 0.0], [-4.0, 2.0, -2.0, 0.0]]
    html_text = table_html(values, ["a", "b"], ["w", "x", "y", "z"], "effect", signed=True)
    assert_self_contained(html_text)
    shown = cells(html_text)
    colour = {(row, col): shown[4 * row + col][0] for row in range(2) for col in range(4)}
    assert colour[0, 3] == colour[1, 3] == (255, 255, 255)  # 0 is white
    mirror = lambda rgb: rgb[::-1]  # red and blue swapped
    assert colour[0, 1] == mirror(colour[0, 2])  # -1 and +1
    assert colour[1, 2] == mirror(colour[1, 1])  # -2 and +2
    assert colour[1, 0] == mirror(colour[0, 0])  # -4 and +4
    assert colour[0, 0][0] > colour[0, 0][2]  # positive is red
    assert luminance(colour[0, 0]) < luminance(colour[1, 1]) < luminance(colour[0, 2]) < luminance(colour[0, 3])
    assert "-4.00" in html_text and "+4.00" in html_text  # the caption states the range


def test_non_negative_table_starts_white_at_zero_and_darkens():
    values = [[0.0, 0.25, 0.5, 1.0]]
    shown = cells(table_html(values, ["L0"], ["H0", "H1", "H2", "H3"], "score", signed=False, vmax=1.0))
    assert shown[0][0] == (255, 255, 255)
    assert [text for _, text in shown] == ["0", "0.250", "0.500", "1.00"]
    lightness = [luminance(rgb) for rgb, _ in shown]
    assert lightness == sorted(lightness, reverse=True) and len(set(lightness)) == 4
    assert cell_colour(float("nan"), 1.0, signed=True) != (255, 255, 255)  # missing values are not "zero"


def test_table_html_checks_labels():
    with pytest.raises(ValueError, match="row labels"):
        table_html([[1.0, 2.0]], ["a", "b"], ["x", "y"], signed=False)


# ----- HeadScores ---------------------------------------------------------------------------------
def gpt2_sized_scores(n_queries_induction=3200):
    generator = torch.Generator().manual_seed(1)
    tables = {name: torch.rand(12, 12, generator=generator) for name in ("induction", "previous_token", "duplicate_token")}
    counts = {"induction": n_queries_induction, "previous_token": 6400, "duplicate_token": 3200}
    protocol = {"kind": "repeated_random_tokens", "n_sequences": 64, "length": 50}
    return HeadScores(tables, counts, protocol, 7.81234, 0.2012)


def test_head_scores_repr_is_short_and_names_the_top_heads():
    scores = gpt2_sized_scores()
    text = repr(scores)
    assert text.startswith("HeadScores(12 layers x 12 heads") and 100 < len(text) < 600, text
    assert len(text.splitlines()) <= 6 and "tensor(" not in text
    for name, table in scores.scores.items():
        values, flat = table.flatten().topk(3)
        expected = ", ".join(f"L{int(i) // 12}H{int(i) % 12} {format_number(float(v))}" for v, i in zip(values, flat))
        assert f"{name}: {expected}" in text
    assert "3,200 queries" in text and "64 sequences" in text and "second copy 0.201" in text


def test_head_scores_with_no_scored_queries_rank_no_heads():
    scores = gpt2_sized_scores(n_queries_induction=0)
    assert scores.top_heads("induction") == []
    assert scores.top_heads("previous_token", 2)  # the other types still rank
    assert "induction: n/a (0 queries)" in repr(scores)
    html_text = scores._repr_html_()
    assert "n/a (0 queries)" in html_text and "induction (colour" not in html_text  # no heatmap of zeros


def test_head_scores_from_text_without_repeats(tiny_pair):
    _, model = tiny_pair
    scores = text_scores(model, torch.arange(1, 21)[None], progress=False)  # no token occurs twice
    assert scores.n_queries["induction"] == scores.n_queries["duplicate_token"] == 0
    assert scores.top_heads("induction") == [] and scores.top_heads("duplicate_token") == []
    assert len(scores.top_heads("previous_token", 3)) == 3
    assert "1 text sequence" in repr(scores) and "n/a (0 queries)" in repr(scores)


def test_head_scores_html_heatmap_runs_from_white_at_zero_to_one():
    scores = HeadScores({"induction": torch.tensor([[0.0, 0.5], [1.0, 0.25]])}, {"induction": 10})
    html_text = scores._repr_html_()
    assert_self_contained(html_text)
    colours = {text: rgb for rgb, text in cells(html_text)}
    assert colours["0"] == (255, 255, 255)
    assert luminance(colours["1.00"]) < luminance(colours["0.500"]) < luminance(colours["0.250"])


# ----- PatchResult --------------------------------------------------------------------------------
def head_patch_result(direction="denoise"):
    generator = torch.Generator().manual_seed(2)
    values = torch.randn(3, 4, generator=generator, dtype=torch.float64) * 5
    values[0, 1] = -1.5  # exactly the corrupted metric: normalized 0
    values[2, 0], values[2, 1] = 1.5, -4.5  # normalized +0.5 and -0.5 (clean 1.5 + 3, corrupted -1.5)
    return PatchResult(values, ("layer", "head"), {"layer": [0, 1, 2], "head": [0, 1, 2, 3]}, 4.5, -1.5, direction)


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_patch_result_repr_names_the_largest_effects(direction):
    result = head_patch_result(direction)
    text = repr(result)
    assert text.startswith("PatchResult([layer 3 x head 4]") and len(text) < 600 and "tensor(" not in text
    baseline = -1.5 if direction == "denoise" else 4.5
    _, flat = (result.values - baseline).abs().flatten().topk(3)
    names = [f"L{int(i) // 4}H{int(i) % 4} {format_number(float(result.values.flatten()[i] - baseline), sign=True)}"
             for i in flat]
    positions = [text.index(name) for name in names]
    assert positions == sorted(positions)  # largest first
    assert "clean 4.50" in text and "corrupted -1.50" in text and direction in text


def test_patch_result_html_uses_a_diverging_scale_centred_at_zero():
    html_text = head_patch_result()._repr_html_()
    assert_self_contained(html_text)
    shown = cells(html_text)
    assert len(shown) == 12  # the [layer, head] table of normalized effects
    colour = {(row, col): shown[4 * row + col][0] for row in range(3) for col in range(4)}
    assert colour[0, 1] == (255, 255, 255) and shown[1][1] == "0"
    assert colour[2, 0] == colour[2, 1][::-1]  # +0.5 and -0.5 mirror each other
    assert "layer \\ head" in html_text


def test_patch_result_per_site_and_degenerate_metric():
    values = torch.tensor([0.0, 2.0, -3.0], dtype=torch.float64)
    result = PatchResult(values, ("site",), {"site": ["a", "b", "c"]}, 1.0, 1.0)  # clean == corrupted
    text = repr(result)
    assert "c -4.00" in text and "no normalized" in text and "nan" not in text
    assert len(cells(result._repr_html_())) == 3


def test_real_patching_result_repr(tiny_pair):
    _, model = tiny_pair
    clean = random_tokens(101, batch=1, pos=10, seed=0)
    corrupted = clean.clone()
    corrupted[0, 3] = (clean[0, 3] + 7) % 101
    result = patch_head_out(model, clean, corrupted, lambda logits: (logits[:, -1, 5] - logits[:, -1, 9]).mean(),
                            progress=False)
    assert len(repr(result)) < 600 and len(result._repr_html_()) < 20_000


# ----- PathAttribution ----------------------------------------------------------------------------
def test_path_attribution_repr_names_the_largest_paths():
    paths = ["embed -> logits", "embed -> L0H1 -> logits", "mlp0 -> L1H0 -> logits",
             "embed -> L0H1 -> L1H0 -> logits", "pos_embed -> L0H1 -> logits"]
    values = torch.tensor([0.5, -3.0, 2.0, 0.25, 1.0], dtype=torch.float64)
    attribution = PathAttribution(paths, values, target=0.9, unembed_bias=0.1, residual=0.05)
    text = repr(attribution)
    assert text.startswith("PathAttribution(target 0.900") and len(text) < 600
    _, order = values.abs().topk(3)
    expected = ", ".join(f"{paths[int(i)]} {format_number(float(values[i]), sign=True)}" for i in order)
    assert expected in text
    assert "5 paths" in text and "by heads on the path: direct 0.500, 1 head 0, 2 heads 0.250" in text
    torch.testing.assert_close(attribution.through_one_head(), torch.tensor([[0.0, -2.0], [2.0, 0.0]]))
    html_text = attribution._repr_html_()
    assert_self_contained(html_text)
    assert "embed -&gt; L0H1 -&gt; logits" in html_text


def test_real_path_attribution_repr(tiny_pair):
    _, model = tiny_pair
    attribution = path_attribution(model, random_tokens(101, batch=1, pos=8, seed=1), answer=5, wrong=9)
    text = repr(attribution)
    assert len(text) < 600 and text.count("\n") <= 3
    assert attribution.top(1)[0][0] in text


# ----- ComponentStack -----------------------------------------------------------------------------
def test_component_stack_repr_names_the_largest_components():
    generator = torch.Generator().manual_seed(3)
    labels = ["embed", "pos_embed"] + [f"L{layer}H{head}" for layer in range(12) for head in range(12)]
    labels += [f"L0N{n}" for n in range(1000)]
    components = torch.randn(len(labels), 2, 5, 16, generator=generator) * torch.rand(len(labels), 1, 1, 1, generator=generator)
    stack = ComponentStack(components, labels)
    text = repr(stack)
    assert text.startswith("ComponentStack(1,146 components") and len(text) < 600 and "tensor(" not in text
    _, order = components.norm(dim=-1).mean((1, 2)).topk(3)
    positions = [text.index(f"{labels[int(i)]} ") for i in order]
    assert positions == sorted(positions)
    html_text = stack._repr_html_()
    assert_self_contained(html_text)
    assert "heads: mean norm" in html_text and len(html_text) < 60_000


def test_dataclass_reprs_are_ours():
    # @dataclass writes __repr__ only when the class body defines none
    for cls in (HeadScores, PatchResult, PathAttribution, ComponentStack):
        assert cls.__repr__.__qualname__ == f"{cls.__name__}.__repr__"
        assert "_repr_html_" in vars(cls)


def test_nan_cells_render():
    text = table_html([[math.nan, 1.0]], ["r"], ["a", "b"], signed=True)
    assert cells(text)[0][1] == "nan"
