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
from interp.viz import (AttentionView, attention_view, plot_score_heatmap, score_heatmap_html,
                        score_heatmap_png, visible_token)

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
    match = re.search(r"var data = (\{.*?\});\n", page)
    assert match, "no embedded data in the view's script"
    return json.loads(match.group(1))


def rounded(pattern: torch.Tensor) -> list[list[float]]:
    return [[round(value, 4) for value in row] for row in pattern.double().tolist()]


# ----- [layer, head] heatmaps -------------------------------------------------------------------
def test_png_decodes_and_grows_with_the_table():
    from matplotlib.image import imread

    small = score_heatmap_png(random_scores(2, 4), "small")
    large = score_heatmap_png(random_scores(12, 12), "gpt2-small shape")
    assert small.startswith(PNG_SIGNATURE) and large.startswith(PNG_SIGNATURE)
    small_height, small_width = imread(io.BytesIO(small)).shape[:2]
    large_height, large_width = imread(io.BytesIO(large)).shape[:2]
    assert large_height > small_height and large_width > small_width
    assert small_width < 600 and small_height < 400  # a 2x4 table stays small
    assert score_heatmap_png(random_scores(2, 4), "small") == small  # deterministic


def test_axes_print_each_value_with_readable_colour():
    import matplotlib.pyplot as plt

    scores = torch.tensor([[0.0, 1.0, 0.5], [0.25, 0.75, 0.123]])
    ax = plot_score_heatmap(scores, "scores")
    try:
        texts = {(text.get_position(), text.get_text()): text.get_color() for text in ax.texts}
        assert len(texts) == 6
        assert texts[((0, 0), "0.00")] == "white"  # dark end of viridis
        assert texts[((1, 0), "1.00")] == "black"  # bright yellow end
        assert ((2, 1), "0.12") in texts
        assert ax.get_xlabel() == "head" and ax.get_ylabel() == "layer" and ax.get_title() == "scores"
        assert list(ax.get_xticks()) == [0, 1, 2] and list(ax.get_yticks()) == [0, 1]
    finally:
        plt.close(ax.figure)


def test_large_tables_are_not_annotated():
    import matplotlib.pyplot as plt

    ax = plot_score_heatmap(random_scores(21, 20), "too many cells")
    try:
        assert len(ax.texts) == 0
    finally:
        plt.close(ax.figure)


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
        assert f">{value:.2f}</td>" in page
    assert "a &lt;title&gt;" in page and "<title>" not in page


def test_html_table_colours_follow_the_scale():
    page = score_heatmap_html(torch.tensor([[0.0, 1.0, 2.0]]), "scale")
    assert page.count("background:#440154") == 1  # viridis(0)
    assert page.count("background:#fde725") == 2  # viridis(1), and 2.0 clamped to it


@pytest.mark.parametrize("bad", [torch.rand(3), torch.rand(2, 3, 4)])
def test_tables_must_be_two_dimensional(bad):
    with pytest.raises(ValueError, match=r"\[layer, head\]"):
        score_heatmap_html(bad, "x")


# ----- AttentionView ----------------------------------------------------------------------------
TOKENS = ["<|endoftext|>", "The", " cat", "\n", " sat"]


def test_view_is_self_contained_and_escaped():
    view = AttentionView(TOKENS, {"L0H1 <prev>": random_pattern(5)}, title="a & b")
    page = view.html()
    for forbidden in ("http://", "https://", "//cdn", "src=", "href="):
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
    assert data["names"] == list(patterns)
    assert data["patterns"] == [rounded(pattern) for pattern in patterns.values()]


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
    assert embedded_data(page)["patterns"] == [rounded(view.patterns["h"])]
    view.save(tmp_path / "view.html")  # overwriting works too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["view.html"]
    assert path.stat().st_mode & 0o777 == 0o644  # readable like any page, not mkstemp's 0o600


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_script_runs_against_a_minimal_dom(tmp_path):
    """The embedded script parses and runs its set-up and event handlers without throwing."""
    page = AttentionView(TOKENS, {"a": random_pattern(5, 1), "b": random_pattern(5, 2)}).html()
    script = re.search(r"<script>(.*)</script>", page, re.S).group(1)
    stub = r"""
    function El(tag) { this.tag = tag; this.style = {}; this.children = []; this.handlers = {};
      this.width = 0; this.height = 0; this.selectedIndex = 1; }
    El.prototype.addEventListener = function (type, fn) { this.handlers[type] = fn; };
    El.prototype.appendChild = function (child) { this.children.push(child); };
    El.prototype.getBoundingClientRect = function () { return {left: 0, top: 0}; };
    El.prototype.getContext = function () {
      var noop = function () {};
      return {measureText: function (t) { return {width: 6 * t.length}; }, setTransform: noop, clearRect: noop,
        drawImage: noop, fillText: noop, save: noop, restore: noop, translate: noop, rotate: noop,
        strokeRect: noop, putImageData: noop,
        createImageData: function (w, h) { return {data: new Uint8ClampedArray(4 * w * h)}; }};
    };
    var elements = {};
    var document = {getElementById: function (id) { return elements[id] || (elements[id] = new El(id)); },
                    createElement: function (tag) { return new El(tag); }};
    var window = {devicePixelRatio: 2};
    """
    driver = r"""
    var ids = Object.keys(elements), grid = elements[ids.filter(function (k) { return /-grid$/.test(k); })[0]];
    var select = elements[ids.filter(function (k) { return /-select$/.test(k); })[0]];
    var tokens = elements[ids.filter(function (k) { return /-tokens$/.test(k); })[0]];
    var info = elements[ids.filter(function (k) { return /-info$/.test(k); })[0]];
    select.handlers.change();
    grid.handlers.mousemove({clientX: 1e4, clientY: 1e4});
    // (grid.width / 2 - 3) css px is inside the last cell: side = margin + 5 * cell + 2.
    grid.handlers.mousemove({clientX: grid.width / 2 - 3, clientY: grid.width / 2 - 3});
    grid.handlers.click({clientX: grid.width / 2 - 3, clientY: grid.width / 2 - 3});
    tokens.children[2].handlers.click(); tokens.children[1].handlers.mouseenter();
    grid.handlers.mouseleave();
    console.log(JSON.stringify({info: info.textContent, background: tokens.children[0].style.background,
                                cls: tokens.children.map(function (s) { return s.className; })}));
    """
    program = tmp_path / "view.js"
    program.write_text(stub + script + driver, encoding="utf-8")
    result = subprocess.run(["node", str(program)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    state = json.loads(result.stdout)
    assert state["info"].startswith("query ·sat [4] -> key ·sat [4]: ")
    assert state["cls"] == ["", "", "iav-query", "", ""]  # clicking token 2 locked it; hovering 1 did not move it
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
    for (layer, head), embedded in zip(heads, data["patterns"]):
        # The view stores 4-decimal values, so they differ from the cache by at most half of 1e-4.
        torch.testing.assert_close(torch.tensor(embedded, dtype=torch.float64),
                                   cache["pattern", layer][0, head].double(), atol=0.5e-4 + 1e-9, rtol=0)


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
