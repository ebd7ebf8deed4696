"""Each family's hook names, shapes and opt-in marks equal a hand-written golden list (tests/golden/), written from
TransformerLens's naming, not from the code that generates the table."""

from pathlib import Path

import pytest

import families

GOLDEN = Path(__file__).parent / "golden"
EXPECTED = {"gpt2": "hooks_gpt2.txt", "gpt2_tied": "hooks_gpt2.txt", "neox_parallel": "hooks_gpt_neox_parallel.txt",
            "neox_serial": "hooks_gpt_neox_serial.txt", "llama_gqa": "hooks_llama.txt", "llama3_rope": "hooks_llama.txt",
            "llama_linear_rope": "hooks_llama.txt", "mistral_window": "hooks_llama.txt", "qwen2_bias": "hooks_llama.txt"}


def golden(file: str, n_layers: int) -> list[tuple[str, str, bool]]:
    """(name, shape, opt_in) in forward order, "{l}" lines expanded per layer (in order: all of layer 0, then 1...)."""
    lines = [line.split() for line in (GOLDEN / file).read_text().splitlines() if line and not line.startswith("#")]
    rows = [(parts[0], " ".join(p for p in parts[1:] if p != "opt-in"), parts[-1] == "opt-in") for parts in lines]
    head = [row for row in rows if not row[0].startswith("blocks.") and not row[0].startswith("ln_final")]
    per_layer = [row for row in rows if row[0].startswith("blocks.")]
    tail = [row for row in rows if row[0].startswith("ln_final")]
    return head + [(name.format(l=layer), shape, opt_in) for layer in range(n_layers)
                   for name, shape, opt_in in per_layer] + tail


def test_every_case_has_a_golden_list():
    assert set(EXPECTED) == set(families.CASES)


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_hook_names_shapes_and_opt_in_equal_the_golden_list(case):
    model = families.load(case)
    actual = [(name, point.shape, point.opt_in) for name, point in model.hook_dict.items()]
    assert actual == golden(EXPECTED[case], model.cfg.n_layers)
    assert model.opt_in_names == {name for name, _, opt_in in actual if opt_in}


@pytest.mark.parametrize("case", ["llama_gqa", "neox_parallel", "gpt2"])
def test_declared_shapes_match_what_each_hook_sees(case):
    model = families.load(case)
    cfg = model.cfg
    sizes = {"batch": 2, "pos": 7, "query_pos": 7, "key_pos": 7, "d_model": cfg.d_model, "n_heads": cfg.n_heads,
             "n_kv_heads": cfg.n_kv_heads, "d_head": cfg.d_head, "d_mlp": cfg.d_mlp, "1": 1}
    seen = {}

    def record(x, hook):
        seen[hook.name] = tuple(x.shape)

    ordinary = [name for name in model.hook_dict if name not in model.opt_in_names]
    with model.hooks([(name, record) for name in ordinary]):  # opt-in points change ln1's shapes: hooked apart
        model(families.tokens(case, batch=2, pos=7))
    with model.hooks([(name, record) for name in model.opt_in_names]):
        model(families.tokens(case, batch=2, pos=7))
    assert set(seen) == set(model.hook_dict)
    for name, shape in model.hook_shapes().items():
        assert seen[name] == tuple(sizes[axis] for axis in shape.split()), name
