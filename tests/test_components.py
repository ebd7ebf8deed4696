"""The composable core's pieces against independent references: rotary against complex multiplication and
transformers' frequency code, masks against a brute-force definition, both attention paths against each other,
the adapters' conversions both ways, and the factory as the only reader of the variant fields."""

import ast
import dataclasses
from pathlib import Path

import pytest
import torch

import families
from interp import adapters
from interp.components import InterleavedRotary, Rotary, causal_mask, inverse_frequencies, per_query_head
from interp.config import Config, RopeScaling

PACKAGE = Path(__file__).resolve().parents[1] / "interp"


def complex_rotation(x, positions, inv_freq, pairs):
    """RoPE as complex multiplication: pair (a, b) -> (a + ib) * exp(i * position * inv_freq)."""
    out = x.clone().double()
    angle = positions.double()[..., None] * inv_freq.double()  # [batch, pos, half]
    for i, (first, second) in enumerate(pairs):
        z = torch.complex(x[..., first].double(), x[..., second].double()) * torch.polar(
            torch.ones_like(angle[..., i]), angle[..., i])[..., None]
        out[..., first], out[..., second] = z.real, z.imag
    return out


@pytest.mark.parametrize("rotary_dim", [8, 4])
def test_half_split_and_interleaved_rotary_equal_complex_multiplication(rotary_dim):
    d_head, generator = 8, torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 3, d_head, generator=generator, dtype=torch.float64)
    positions = torch.arange(5).expand(2, -1)
    inv_freq = inverse_frequencies(rotary_dim, 10000.0, None)
    half = rotary_dim // 2
    half_split = complex_rotation(x, positions, inv_freq, [(i, i + half) for i in range(half)])
    interleaved = complex_rotation(x, positions, inv_freq, [(2 * i, 2 * i + 1) for i in range(half)])
    torch.testing.assert_close(Rotary(d_head, rotary_dim, 10000.0, None)(x, positions).double(), half_split)
    torch.testing.assert_close(InterleavedRotary(d_head, rotary_dim, 10000.0, None)(x, positions).double(), interleaved)
    assert torch.equal(half_split[..., rotary_dim:], x[..., rotary_dim:])  # partial rotary: the rest passes through


def test_rotated_scores_depend_only_on_the_relative_position():
    rotary = Rotary(16, 16, 10000.0, None)
    generator = torch.Generator().manual_seed(1)
    q, k = torch.randn(1, 1, 1, 16, generator=generator), torch.randn(1, 1, 1, 16, generator=generator)

    def score(query_position, key_position):
        rq = rotary(q, torch.tensor([[query_position]]))
        rk = rotary(k, torch.tensor([[key_position]]))
        return float((rq * rk).sum())
    assert score(7, 3) == pytest.approx(score(104, 100), abs=1e-4) and score(7, 3) != pytest.approx(score(7, 4), abs=1e-3)


@pytest.mark.parametrize("parameters", [
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
    {"rope_type": "linear", "factor": 2.0}])
def test_scaled_inverse_frequencies_equal_transformers(parameters):
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    hf = LlamaConfig(hidden_size=64, num_attention_heads=2, max_position_embeddings=64,
                     rope_parameters={"rope_theta": 500000.0, **parameters})
    expected, _ = ROPE_INIT_FUNCTIONS[parameters["rope_type"]](hf, "cpu")
    scaling = RopeScaling(**parameters)
    ours = inverse_frequencies(32, 500000.0, scaling)
    assert torch.equal(ours, expected.float())
    assert not torch.equal(ours, inverse_frequencies(32, 500000.0, None))  # the scaling really changes them


def test_causal_and_sliding_masks_equal_the_definition():
    for n_query, n_key, window in [(6, 6, None), (6, 6, 3), (2, 6, 4), (5, 5, 1)]:
        mask = causal_mask(n_query, n_key, window, "cpu")
        for qi in range(n_query):
            query_position = n_key - n_query + qi
            for key in range(n_key):
                visible = key <= query_position and (window is None or query_position - key < window)
                assert bool(mask[qi, key]) == visible, (n_query, n_key, window, qi, key)


@pytest.mark.parametrize("case", sorted(families.CASES))
def test_explicit_and_fused_attention_paths_agree(case):
    """With a (no-op) hook on every pattern the explicit softmax path runs; without, SDPA: same logits."""
    model, tokens = families.load(case), families.tokens(case, pos=20)
    with torch.no_grad():
        fused = model(tokens)
        with model.hooks([(lambda name: name.endswith("hook_pattern"), lambda x, hook: None)]):
            explicit = model(tokens)
    assert (fused - explicit).abs().max() < 1e-5


def test_per_query_head_view_is_the_repeat_without_a_copy():
    kv = torch.randn(2, 5, 2, 4)
    view = per_query_head(kv, n_heads=6)
    assert view.untyped_storage().data_ptr() == kv.untyped_storage().data_ptr()
    torch.testing.assert_close(view.flatten(2, 3), kv.repeat_interleave(3, dim=2))


@pytest.mark.parametrize("case", sorted(families.CASES))
def test_adapters_round_trip_tensors_and_configs_exactly(case):
    hf = families.hf_model(case)
    aliases = getattr(adapters.FAMILIES[families.family(case)], "ALIASES", {})
    hf_state = {aliases.get(name, name): tensor for name, tensor in hf.state_dict().items()}  # as save_pretrained names them
    cfg = adapters.config_from_hf(hf.config.to_dict())
    back = adapters.to_hf(adapters.to_interp(hf_state, cfg), cfg)
    kept = {name: tensor for name, tensor in hf_state.items() if name in back}
    assert set(back) == set(kept) and all(torch.equal(back[name], kept[name]) for name in back)
    dropped = set(hf_state) - set(back)  # only a tied unembedding, which is W_E
    assert dropped <= {"lm_head.weight", "embed_out.weight"} and (not dropped or cfg.tie_word_embeddings)
    assert adapters.config_from_hf(adapters.hf_config(cfg)) == cfg


def test_export_refuses_a_bias_the_family_lacks():
    model = families.load("llama_gqa")
    state = dict(model.state_dict())
    state["blocks.0.attn.b_O"] = torch.ones_like(state["blocks.0.attn.b_O"])
    with pytest.raises(ValueError, match="blocks.0.attn.b_O is nonzero but a llama checkpoint has no such tensor"):
        adapters.to_hf(state, model.cfg)


def test_config_checks_the_new_fields():
    base = dict(n_layers=2, d_model=16, n_heads=4, d_mlp=8, d_vocab=10, n_ctx=8)
    with pytest.raises(ValueError, match="rotary_dim=3 must be an even int"):
        Config(**base, positions="rotary", rotary_dim=3)
    with pytest.raises(ValueError, match="apply only to positions='rotary'"):
        Config(**base, rotary_dim=4)
    with pytest.raises(ValueError, match="normalization='layer'"):
        Config(**base, normalization="layer")
    with pytest.raises(ValueError, match="rope_type='yarn' is not supported"):
        RopeScaling("yarn", 2.0)
    with pytest.raises(ValueError, match="sliding_window_layers=\\(5,\\) needs a sliding_window"):
        Config(**base, sliding_window=4, sliding_window_layers=(5,))
    cfg = Config(**base, positions="rotary", sliding_window=4, sliding_window_layers=(1,))
    assert cfg.rotary_dim == cfg.d_head == 4 and [cfg.window_of(layer) for layer in range(2)] == [None, 4]
    assert dataclasses.replace(cfg, n_layers=3).n_layers == 3


def test_unsupported_rope_scaling_is_refused_by_name():
    from transformers import LlamaConfig

    hf = LlamaConfig(hidden_size=32, num_attention_heads=2, rope_parameters={"rope_type": "yarn", "factor": 2.0,
                                                                              "rope_theta": 10000.0})
    with pytest.raises(ValueError, match="Unsupported rope_type 'yarn'"):
        adapters.config_from_hf(hf)


VARIANT_FIELDS = {"normalization", "positions", "rotary_interleaved", "rope_scaling", "gated_mlp", "parallel_blocks",
                  "sliding_window", "sliding_window_layers", "rotary_dim", "rotary_base"}


def test_no_forward_reads_a_variant_field_of_the_config():
    """Only the factory (and config, adapters, processing's refusals) may read the variant fields; no module's
    forward branches on them."""
    readers = {}
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for function in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "forward"):
            for node in ast.walk(function):
                if isinstance(node, ast.Attribute) and node.attr in VARIANT_FIELDS:
                    readers.setdefault(str(path.relative_to(PACKAGE)), set()).add(node.attr)
    assert readers == {}
    in_components = {str(p.relative_to(PACKAGE)) for p in (PACKAGE / "components").glob("*.py")
                     if any(isinstance(n, ast.Attribute) and n.attr in VARIANT_FIELDS - {"rotary_dim", "rotary_base"}
                            for n in ast.walk(ast.parse(p.read_text())))}
    assert in_components == {"components/factory.py"}
