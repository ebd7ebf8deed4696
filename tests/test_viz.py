import base64
import io
import json
import re
import shutil
import subprocess
import sys

import pytest
import torch

from interp import HookedTransformer
from interp.testing import hf_config, random_hf_gpt2
from interp.display import format_number
from interp.viz import (MIN_FONT_PT, AttentionView, attention_view, colour_scale, plot_score_heatmap,
                        plot_score_heatmaps, png_css_size, score_heatmap_html, score_heatmap_png, visible_token)
from interp.viz_attention import MAX_VIEW_CELLS, viridis

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def model():
    config = hf_config(n_layer=2, n_head=4, n_embd=32, n_positions=48, vocab_size=101)
    return HookedTransformer.from_pretrained(random_hf_gpt2(config, seed=0))


def random_scores(layers: int, heads: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(layers, heads, generator=torch.Generator().manual_seed(seed))


def random_pattern(positions: int, seed: int = 0) -> torch.Tensor:
    scores = torch.randn(positions, positions, generator=torch.Generator().manual_seed(seed))
    causal = torch.ones(positions, positions, dtype=torch.bool).tril()
    return scores.masked_fill(~causal, float("-inf")).softmax(-1)


def embedded_data(page: str) -> dict:
    match = re.search(r"data = (\{.*?\});\n", page)
    assert match, "no embedded data in the view's script"
    return json.loads(match.group(1))


def decoded(data: dict) -> list[torch.Tensor]:
    """The embedded patterns back as [query_pos, key_pos] tensors (masked future keys as 0)."""
    n = len(data["tokens"])
    patterns = []
    for text in data["patterns"]:
        values = torch.tensor(list(base64.urlsafe_b64decode(text)), dtype=torch.float64) / 255
        pattern = torch.zeros(n, n, dtype=torch.float64)
        if data["causal"]:
            rows, cols = torch.tril_indices(n, n)
            pattern[rows, cols] = values
        else:
            pattern = values.reshape(n, n)
        patterns.append(pattern)
    return patterns


# The view stores round(255 v): within half a step of the value.
STORED = dict(atol=0.5 / 255 + 1e-9, rtol=0)


# ----- colour scales ----------------------------------------------------------------------------
def image_of(ax):
    (image,) = ax.images
    return image


@pytest.fixture
def close_figures():
    import matplotlib.pyplot as plt

    yield
    plt.close("all")


SIGNED_TABLES = {
    "composition z-scores": torch.tensor([[-13.8, -0.9, 2.5], [0.3, 1.0, -4.0]]),
    "direct logit attribution": torch.tensor([[-0.13, 0.04], [0.01, 0.02]]),
    "patching effect": torch.tensor([[-0.2, 0.9, 1.1, 0.0]]),
}


@pytest.mark.parametrize("name", list(SIGNED_TABLES))
def test_signed_values_get_a_diverging_scale_centred_at_zero(name, close_figures):
    table = SIGNED_TABLES[name]
    ax = plot_score_heatmap(table, name, label=name)
    image = image_of(ax)
    assert image.cmap.name == "RdBu_r"
    assert image.norm.vmin == -image.norm.vmax == -float(table.abs().max())
    colour_bar = image.colorbar
    assert colour_bar.ax.get_ylabel() == name  # the colour bar says what the colours measure


def test_non_negative_scores_stay_sequential_from_zero(close_figures):
    fractions = plot_score_heatmap(torch.tensor([[0.0, 0.2], [0.5, 0.9]]), "induction", label="induction score")
    assert (image_of(fractions).cmap.name, image_of(fractions).norm.vmin, image_of(fractions).norm.vmax) == ("viridis", 0, 1)
    larger = plot_score_heatmap(torch.tensor([[0.0, 3.0]]), "positive z")
    assert (image_of(larger).norm.vmin, image_of(larger).norm.vmax) == (0, 3)


def test_the_scale_can_be_chosen_explicitly(close_figures):
    explicit = image_of(plot_score_heatmap(torch.tensor([[0.1, 0.4]]), "effect", signed=True, vmax=1.0))
    assert explicit.cmap.name == "RdBu_r" and (explicit.norm.vmin, explicit.norm.vmax) == (-1, 1)
    assert colour_scale(torch.tensor([[0.0, 0.0]]), label="x", signed=True).vmax == 1.0  # all zeros: still a range
    with pytest.raises(ValueError, match="signed=True"):  # a sequential scale would hide -13.8 as 0
        plot_score_heatmap(SIGNED_TABLES["composition z-scores"], "z", signed=False)


def test_compared_panels_share_one_scale_and_one_colour_bar(close_figures):
    tables = {"Q": torch.tensor([[-1.0, 0.5]]), "K": torch.tensor([[3.0, 0.1]]), "V": torch.tensor([[0.2, -0.4]])}
    figure = plot_score_heatmaps(tables, "composition z-score")
    panels = [ax for ax in figure.axes if ax.images]
    assert [ax.get_title() for ax in panels] == ["Q", "K", "V"]
    norms = {(image_of(ax).norm.vmin, image_of(ax).norm.vmax) for ax in panels}
    assert norms == {(-3.0, 3.0)}
    assert {image_of(ax).cmap.name for ax in panels} == {"RdBu_r"}
    colour_bars = [ax for ax in figure.axes if not ax.images]
    assert len(colour_bars) == 1 and colour_bars[0].get_ylabel() == "composition z-score"
    unsigned = plot_score_heatmaps({"a": torch.tensor([[0.2]]), "b": torch.tensor([[0.7]])}, "score")
    assert {(image_of(ax).norm.vmin, image_of(ax).norm.vmax) for ax in unsigned.axes if ax.images} == {(0, 1)}


# ----- [layer, head] heatmaps -------------------------------------------------------------------
def test_png_decodes_is_sharp_and_grows_with_the_table():
    from matplotlib.image import imread

    small = score_heatmap_png(random_scores(2, 4), "small")
    large = score_heatmap_png(random_scores(12, 12), "gpt2-small shape")
    assert small.startswith(PNG_SIGNATURE) and large.startswith(PNG_SIGNATURE)
    small_height, small_width = imread(io.BytesIO(small)).shape[:2]
    large_height, large_width = imread(io.BytesIO(large)).shape[:2]
    assert large_height > small_height and large_width > small_width
    assert png_css_size(small) == (round(small_width / 2), round(small_height / 2))  # shown at 2x
    css_width, css_height = png_css_size(small)
    assert css_width < 600 and css_height < 400  # a 2x4 table stays small
    assert png_css_size(large)[0] < 760  # GPT-2 small fits an 800 px window
    assert score_heatmap_png(random_scores(2, 4), "small") == small  # deterministic


def test_axes_print_each_value_with_readable_colour(close_figures):
    scores = torch.tensor([[0.0, 1.0, 0.5], [0.25, 0.75, 0.123]])
    ax = plot_score_heatmap(scores, "scores")
    texts = {(text.get_position(), text.get_text()): text.get_color() for text in ax.texts}
    assert len(texts) == 6
    assert texts[((0, 0), "0.00")] == "white"  # dark end of viridis
    assert texts[((1, 0), "1.00")] == "black"  # bright yellow end
    assert ((2, 1), "0.12") in texts
    assert ax.get_xlabel() == "head" and ax.get_ylabel() == "layer" and ax.get_title() == "scores"
    assert list(ax.get_xticks()) == [0, 1, 2] and list(ax.get_yticks()) == [0, 1]


def test_cells_never_print_minus_zero_and_skip_nan(close_figures):
    ax = plot_score_heatmap(torch.tensor([[-0.001, 0.5], [float("nan"), -0.5]]), "t")
    assert sorted(text.get_text() for text in ax.texts) == ["-0.50", "0.00", "0.50"]


@pytest.mark.parametrize("shape", [(12, 12), (24, 16), (48, 25), (32, 64)], ids=["gpt2-small", "gpt2-medium",
                                                                                 "gpt2-xl", "too-many-heads"])
@pytest.mark.parametrize("signed", [False, True])
def test_numbers_are_legible_or_absent(shape, signed, close_figures):
    """Numbers are printed at MIN_FONT_PT (7 pt) or more, inside their cell, or not at all.

    Sizes are those of the figure as laid out; a page shows the PNG at 100 CSS px per inch (png_css_size),
    so 7 pt there is 9.7 CSS px.
    """
    table = random_scores(*shape) * (2 if signed else 1) - (1 if signed else 0)
    ax = plot_score_heatmap(table, "t")
    renderer = ax.figure.canvas.get_renderer()
    box = ax.get_window_extent(renderer)
    cell = min(box.width / shape[1], box.height / shape[0])
    if shape in ((12, 12), (24, 16)):
        assert len(ax.texts) == shape[0] * shape[1]  # GPT-2 small and medium show their numbers
    if shape == (32, 64):
        assert len(ax.texts) == 0  # 64 heads a row: cells too small for a legible number
    for text in ax.texts:
        assert text.get_fontsize() >= MIN_FONT_PT
        extent = text.get_window_extent(renderer)
        assert extent.width < cell and extent.height < cell


def test_top_cells_are_outlined(close_figures):
    ax = plot_score_heatmap(random_scores(3, 4), "t", outline=[(0, 1), (2, 3)])
    frames = sorted({(patch.get_x(), patch.get_y()) for patch in ax.patches})
    assert frames == [(0.5, -0.5), (2.5, 1.5)]  # (head - 0.5, layer - 0.5) of each outlined cell


def test_missing_matplotlib_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    with pytest.raises(ImportError, match=r'pip install "interp\[viz\]"'):
        score_heatmap_png(random_scores(2, 2), "x")


@pytest.mark.parametrize("shape", [(1, 1), (2, 4), (12, 12)])
def test_html_table_has_one_cell_per_head(shape):
    scores = random_scores(*shape)
    page = score_heatmap_html(scores, "a <title>")
    assert page.count("<td") == shape[0] * shape[1]
    for value in scores.flatten().tolist():
        assert f">{format_number(value)}</td>" in page
    assert "a &lt;title&gt;" in page and "<title>" not in page


def test_html_table_is_diverging_for_signed_values():
    signed = score_heatmap_html(torch.tensor([[-2.0, 1.0]]), "dla")
    assert re.search(r"-2(\.0*)? blue, 0 white, \+2(\.0*)? red", signed)  # centred at 0, symmetric
    assert re.search(r"0 white to 1(\.0*)? dark blue", score_heatmap_html(torch.tensor([[0.0, 1.0]]), "scores"))


@pytest.mark.parametrize("bad", [torch.rand(3), torch.rand(2, 3, 4)])
def test_tables_must_be_two_dimensional(bad):
    with pytest.raises(ValueError, match=r"\[layer, head\]"):
        score_heatmap_html(bad, "x")


# ----- AttentionView ----------------------------------------------------------------------------
TOKENS = ["<|endoftext|>", "The", " cat", "\n", " sat"]


def test_view_is_self_contained_and_escaped():
    view = AttentionView(TOKENS, {"L0H1 <prev>": random_pattern(5)}, title="a & b")
    page = view.html()
    assert page.count("src=") == page.count('src="data:image/png;base64,') == 1  # the static fallback, inline
    for forbidden in ("http://", "https://", "//cdn", "href="):
        assert forbidden not in page
    assert "<|endoftext|>" not in page and "<prev>" not in page
    assert "\\u003c|endoftext|\\u003e" in page  # inside the JSON
    assert "L0H1 &lt;prev&gt;" in page and "a &amp; b" in page  # in the <select> and the title
    assert page.startswith("<div") and page.endswith("</div>")
    assert "<select" in page and "<canvas" in page and "<script>" in page
    without_ids = re.compile(r"interp-attention-[0-9a-f]{12}")
    assert without_ids.sub("ID", view._repr_html_()) == without_ids.sub("ID", page)


def test_whitespace_is_made_visible():
    assert visible_token(" cat") == "·cat"
    assert visible_token("\n") == "↵"
    assert visible_token("\t x") == "⇥·x"
    data = embedded_data(AttentionView(TOKENS, {"h": random_pattern(5)}).html())
    assert data["tokens"] == ["<|endoftext|>", "The", "·cat", "↵", "·sat"]


def test_embedded_data_round_trips():
    patterns = {"L0H0": random_pattern(5, seed=1), "L1H3 induction 0.93": random_pattern(5, seed=2)}
    data = embedded_data(AttentionView(TOKENS, patterns).html())
    assert data["names"] == list(patterns) and data["causal"] is True and data["selected"] == 0
    for back, pattern in zip(decoded(data), patterns.values()):
        torch.testing.assert_close(back, pattern.double(), **STORED)
    assert len(base64.urlsafe_b64decode(data["patterns"][0])) == 5 * 6 // 2  # causal: only key <= query is stored


def test_non_causal_patterns_are_stored_whole():
    full = torch.rand(5, 5, generator=torch.Generator().manual_seed(0)).softmax(-1)
    data = embedded_data(AttentionView(TOKENS, {"bidirectional": full}).html())
    assert data["causal"] is False
    torch.testing.assert_close(decoded(data)[0], full.double(), **STORED)


def test_view_opens_on_the_selected_head():
    patterns = {"L0H0": random_pattern(5, 1), "L1H3 induction 0.93": random_pattern(5, 2)}
    page = AttentionView(TOKENS, patterns, selected="L1H3 induction 0.93").html()
    assert embedded_data(page)["selected"] == 1
    assert '<option value="1" selected>L1H3 induction 0.93</option>' in page
    with pytest.raises(KeyError, match="L1H3 induction 0.93"):
        AttentionView(TOKENS, patterns, selected="L1H3")


def test_static_fallback_is_a_picture_of_the_selected_head():
    from matplotlib.image import imread

    pattern = random_pattern(5, 2)
    page = AttentionView(TOKENS, {"L0H0": random_pattern(5, 1), "L1H3": pattern}, selected="L1H3").html()
    assert "<noscript>" in page and "static picture of L1H3" in page
    images = re.findall(r'<img alt="attention pattern of L1H3" width="(\d+)" height="(\d+)" '
                        r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 1
    width, height, encoded = images[0]
    picture = imread(io.BytesIO(base64.b64decode(encoded)))[..., :3]
    assert picture.shape[:2] == (int(height), int(width)) and int(width) % 5 == 0
    block = int(width) // 5
    for query in range(5):
        for key in range(5):
            pixel = picture[query * block + block // 2, key * block + block // 2 + 1] * 255
            if key > query:
                assert tuple(pixel.round()) in {(238, 238, 238), (176, 176, 176)}  # hatched: masked, not zero
            else:
                assert abs(pixel - torch.tensor(viridis(float(pattern[query, key]))).numpy()).max() <= 3


def test_patterns_must_be_probabilities():
    with pytest.raises(ValueError, match=r"outside \[0, 1\].*not the pre-softmax scores"):
        AttentionView(TOKENS, {"scores": torch.randn(5, 5)})
    with pytest.raises(ValueError, match="NaN"):
        AttentionView(TOKENS, {"nan": torch.full((5, 5), float("nan"))})


def test_view_size_is_bounded_at_1024_tokens():
    """9 heads x 1,024 tokens (the issue's case: 28 MB before): about 4/3 byte per causal cell, under 7 MB."""
    n, heads = 1024, 9
    tokens = [f" t{i}" for i in range(n)]
    patterns = {f"L{i // 3}H{i % 3}": random_pattern(n, seed=i) for i in range(heads)}
    size = len(AttentionView(tokens, patterns).html().encode("utf-8"))
    assert size < 4 / 3 * heads * n * (n + 1) / 2 + 300_000
    assert size < 7_000_000
    too_many = {**patterns, "L9H0": random_pattern(n, seed=9)}
    assert len(too_many) * n * (n + 1) // 2 > MAX_VIEW_CELLS
    with pytest.raises(ValueError, match="at most 9 heads"):
        AttentionView(tokens, too_many)


def test_ids_come_from_the_content():
    """Identical views render to identical bytes (reproducible reports); different views get different ids."""
    views = [AttentionView(TOKENS, {"h": random_pattern(5)}), AttentionView(TOKENS, {"h": random_pattern(5)}),
             AttentionView(TOKENS, {"h": random_pattern(5, seed=1)}), AttentionView(TOKENS, {"g": random_pattern(5)}),
             AttentionView(TOKENS, {"h": random_pattern(5)}, title="t"), AttentionView(TOKENS[::-1], {"h": random_pattern(5)})]
    pages = [view.html() for view in views]
    ids = [re.search(r'<div id="([\w-]+)"', page).group(1) for page in pages]
    assert pages[0] == pages[1] == views[0]._repr_html_()
    assert len(set(ids)) == 5
    for element_id, page in zip(ids, pages):
        assert f'id="{element_id}-select"' in page and f'"{element_id}"' in page


@pytest.mark.parametrize("shape", [(5, 4), (4, 4), (5,), (1, 5, 5)])
def test_pattern_shape_must_match_tokens(shape):
    patterns = {"good": random_pattern(5), "L1H2 bad": torch.rand(shape)}
    with pytest.raises(ValueError, match=r"'L1H2 bad'.*" + re.escape(str(shape)) + r".*\(5, 5\)"):
        AttentionView(TOKENS, patterns)


def test_empty_patterns_are_rejected():
    with pytest.raises(ValueError, match="at least one"):
        AttentionView(TOKENS, {})


def test_save_writes_a_full_page_atomically(tmp_path):
    view = AttentionView(TOKENS, {"h": random_pattern(5)}, title="saved <view>")
    path = view.save(tmp_path / "view.html")
    page = path.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert '<meta charset="utf-8">' in page and "<title>saved &lt;view&gt;</title>" in page
    torch.testing.assert_close(decoded(embedded_data(page))[0], view.patterns["h"], **STORED)
    view.save(tmp_path / "view.html")  # overwriting works too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["view.html"]
    assert path.stat().st_mode & 0o777 == 0o644  # readable like any page, not mkstemp's 0o600


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_script_runs_against_a_minimal_dom(tmp_path):
    """The embedded script parses and runs its set-up and event handlers without throwing (tests/test_browser.py
    runs it in a real browser)."""
    page = AttentionView(TOKENS, {"L0H0 a": random_pattern(5, 1), "L1H2 b": random_pattern(5, 2)}).html()
    script = re.search(r"<script>(.*)</script>", page, re.S).group(1)
    stub = r"""
    function El(tag) { this.tag = tag; this.style = {}; this.children = []; this.handlers = {};
      this.width = 0; this.height = 0; this.selectedIndex = 0; this.textContent = ""; this.className = ""; }
    El.prototype.addEventListener = function (type, fn) { this.handlers[type] = fn; };
    El.prototype.appendChild = function (child) { this.children.push(child); };
    El.prototype.querySelector = function () { return new El("query"); };
    El.prototype.getBoundingClientRect = function () { return {left: 0, top: 0}; };
    El.prototype.getContext = function () {
      var noop = function () {};
      return {measureText: function (t) { return {width: 6 * t.length}; }, setTransform: noop, clearRect: noop,
        drawImage: noop, fillText: noop, save: noop, restore: noop, translate: noop, rotate: noop,
        strokeRect: noop, fillRect: noop, putImageData: noop, beginPath: noop, moveTo: noop, lineTo: noop,
        stroke: noop, createPattern: function () { return "pattern"; },
        createImageData: function (w, h) { return {data: new Uint8ClampedArray(4 * w * h)}; }};
    };
    var elements = {};
    var document = {getElementById: function (id) { return elements[id] || (elements[id] = new El(id)); },
                    createElement: function (tag) { return new El(tag); }};
    var window = {devicePixelRatio: 2};
    """
    driver = r"""
    function element(suffix) { return elements[Object.keys(elements).filter(function (k) { return k.endsWith(suffix); })[0]]; }
    var grid = element("-grid"), select = element("-select"), tokens = element("-tokens"), info = element("-info");
    var thumbs = element("-overview").children.map(function (row) { return row.children; })
      .reduce(function (a, b) { return a.concat(b); }, []);
    select.selectedIndex = 1; select.handlers.change();
    grid.handlers.mousemove({clientX: 1e4, clientY: 1e4});
    var side = parseFloat(grid.style.width);  // (side - 3) css px is inside the last cell
    grid.handlers.mousemove({clientX: side - 3, clientY: side - 3});
    var hovered = info.textContent;
    grid.handlers.click({clientX: side - 3, clientY: side - 3});
    tokens.children[2].handlers.click(); tokens.children[1].handlers.mouseenter();
    grid.handlers.mouseleave();
    var left = info.textContent;
    thumbs[0].handlers.mouseenter(); var previewing = info.textContent; thumbs[0].handlers.mouseleave();
    thumbs[0].handlers.click();
    console.log(JSON.stringify({hovered: hovered, left: left, previewing: previewing, selected: select.selectedIndex,
      chosen: thumbs.map(function (t) { return t.className; }), background: tokens.children[0].style.background,
      cls: tokens.children.map(function (s) { return s.className; })}));
    """
    program = tmp_path / "view.js"
    program.write_text(stub + script + driver, encoding="utf-8")
    result = subprocess.run(["node", str(program)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    state = json.loads(result.stdout)
    assert state["hovered"].startswith("query ·sat [4] -> key ·sat [4]: ")
    assert state["left"] == "Hover a cell: query -> key: attention."  # the info line clears when the mouse leaves
    assert state["previewing"] == "preview: L0H0 a (click to select)"
    assert state["selected"] == 0 and state["chosen"] == ["iav-thumb iav-chosen", "iav-thumb"]
    # Clicking token 2 locked it as the query, hovering 1 did not move it; keys after it are masked.
    assert state["cls"] == ["", "", "iav-query", "iav-future", "iav-future"]
    assert state["background"].startswith("rgba(33, 102, 172, ")


# ----- attention_view on a model ----------------------------------------------------------------
def test_attention_view_matches_the_cache(model):
    tokens = torch.tensor([5, 17, 3, 99, 5, 17, 3])
    heads = [(1, 3), (0, 0), (1, 0)]
    view = attention_view(model, tokens, heads, labels={(1, 3): "induction 0.93"}, title="tiny")
    _, cache = model.run_with_cache(tokens, return_type=None)
    assert list(view.patterns) == ["L1H3 induction 0.93", "L0H0", "L1H0"]
    assert view.str_tokens == ["5", "17", "3", "99", "5", "17", "3"]  # no tokenizer: ids as labels
    data = embedded_data(view.html())
    for (layer, head), embedded in zip(heads, decoded(data)):
        torch.testing.assert_close(embedded, cache["pattern", layer][0, head].double(), **STORED)


def test_attention_view_accepts_a_batch_of_one(model):
    tokens = torch.tensor([[1, 2, 3, 4]])
    view = attention_view(model, tokens, [(0, 2)])
    _, cache = model.run_with_cache(tokens, return_type=None)
    torch.testing.assert_close(view.patterns["L0H2"], cache["pattern", 0][0, 2].double())


class CharacterTokenizer:
    """One token per character (ids 0..99); id 100 is "<|endoftext|>", the tiny config's BOS."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [ord(character) % 100 for character in text]

    def decode(self, ids: list[int]) -> str:
        return "".join("<|endoftext|>" if i == 100 else chr(i) for i in ids)


def test_attention_view_tokenises_text_and_escapes_labels(model):
    model.tokenizer = CharacterTokenizer()
    try:
        view = attention_view(model, "a b\n", [(0, 1)])
        _, cache = model.run_with_cache(model.to_tokens("a b\n"), return_type=None)
    finally:
        model.tokenizer = None
    assert view.str_tokens == ["<|endoftext|>", "a", " ", "b", "\n"]
    page = view.html()
    assert "<|endoftext|>" not in page
    assert embedded_data(page)["tokens"] == ["<|endoftext|>", "a", "·", "b", "↵"]
    torch.testing.assert_close(view.patterns["L0H1"], cache["pattern", 0][0, 1].double())


@pytest.mark.parametrize("head", [(2, 0), (0, 4), (-1, 0)])
def test_attention_view_rejects_missing_heads(model, head):
    with pytest.raises(ValueError, match=r"layer must be in \[0, 2\) and head in \[0, 4\)"):
        attention_view(model, torch.tensor([1, 2, 3]), [head])


def test_attention_view_shows_one_sequence(model):
    with pytest.raises(ValueError, match="one sequence"):
        attention_view(model, torch.tensor([[1, 2], [3, 4]]), [(0, 0)])
    with pytest.raises(ValueError, match="heads is empty"):
        attention_view(model, torch.tensor([1, 2]), [])
