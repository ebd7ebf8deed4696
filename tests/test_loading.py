"""Loading through every path a user takes, on models built offline."""

import dataclasses

import pytest
import torch
from safetensors.torch import save_file

from conftest import random_tokens, tiny_hf_config
from interp import Config, HookedTransformer
from interp import adapters
from interp.loading import convert_hf_state_dict
from interp.testing import hf_config, random_hf_gpt2
from interp.tokens import gpt2_tokenizer


@pytest.fixture(scope="module")
def saved_dir(tmp_path_factory):
    hf_model = random_hf_gpt2(tiny_hf_config("2L-4H-untied"), seed=11)
    directory = tmp_path_factory.mktemp("saved")
    hf_model.save_pretrained(directory)
    return hf_model, directory


def test_directory_round_trip_gives_identical_logits(saved_dir):
    hf_model, directory = saved_dir
    tokens = random_tokens(101)
    from_memory = HookedTransformer.from_pretrained(hf_model)
    from_dir = HookedTransformer.from_pretrained(str(directory))
    with torch.no_grad():
        torch.testing.assert_close(from_dir(tokens), from_memory(tokens), rtol=0, atol=0)
        reference = hf_model(tokens).logits
    assert (from_dir(tokens).detach().log_softmax(-1) - reference.log_softmax(-1)).abs().max() < 1e-5


def test_safetensors_file_with_config(saved_dir, tmp_path):
    hf_model, directory = saved_dir
    weights = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in hf_model.state_dict().items()}, str(weights))
    model = HookedTransformer.from_pretrained(weights, config=hf_model.config)
    beside = HookedTransformer.from_pretrained(directory / "model.safetensors")  # config.json beside it
    tokens = random_tokens(101)
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), beside(tokens), rtol=0, atol=0)
    with pytest.raises(ValueError, match="config"):
        HookedTransformer.from_pretrained(weights)


def test_bin_checkpoint_loads_with_weights_only(saved_dir, tmp_path):
    hf_model, _ = saved_dir
    path = tmp_path / "pytorch_model.bin"
    torch.save(hf_model.state_dict(), path)
    hf_model.config.save_pretrained(tmp_path)
    model = HookedTransformer.from_pretrained(tmp_path)
    tokens = random_tokens(101)
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), HookedTransformer.from_pretrained(hf_model)(tokens), rtol=0, atol=0)


# Pickled code: see tests/test_no_silent_corruption.py (it checks that the code did not run).


def test_in_memory_load_copies_weights(saved_dir):
    hf_model, _ = saved_dir
    model = HookedTransformer.from_pretrained(hf_model)
    with torch.no_grad():
        model.W_E.zero_()
    assert hf_model.transformer.wte.weight.abs().sum() > 0


def test_tied_weights_stay_one_tensor(tmp_path):
    hf_model = random_hf_gpt2(tiny_hf_config("1L-1H-tied"), seed=2)
    hf_model.save_pretrained(tmp_path)
    model = HookedTransformer.from_pretrained(tmp_path)
    assert model.W_U.data_ptr() == model.W_E.data_ptr() and model.W_U.shape == (16, 101)


def test_loaded_views_share_storage_with_fused_weights(saved_dir):
    _, directory = saved_dir
    model = HookedTransformer.from_pretrained(directory)
    attn = model.blocks[0].attn
    with torch.no_grad():
        attn.W_K[1, 3, 2] = 123.0
    assert attn.W_QKV[3, model.cfg.n_heads + 1, 2] == 123.0  # [d_model, q heads + k heads + v heads, d_head]


def test_real_gpt2_tokenizer_offline():
    tokenizer = gpt2_tokenizer()
    assert tokenizer.encode("Hello world") == [15496, 995]
    assert len(tokenizer) == 50257


def test_directory_with_the_real_gpt2_tokenizer(tmp_path):
    # GPT-2's vocabulary with a tiny body: the directory path and its tokenizer are what is tested.
    hf_model = random_hf_gpt2(hf_config(n_layer=1, n_head=2, n_embd=16, n_positions=32), seed=0)
    model = HookedTransformer.from_pretrained(hf_model)
    hf_model.save_pretrained(tmp_path)
    gpt2_tokenizer().save_pretrained(tmp_path)
    loaded = HookedTransformer.from_pretrained(tmp_path)
    assert loaded.tokenizer is not None and loaded.cfg == adapters.config_from_hf(hf_model.config, model_name=str(tmp_path))
    tokens = loaded.to_tokens("Hello world")
    assert tokens.tolist() == [[50256, 15496, 995]]
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens), model(tokens), rtol=0, atol=0)


def test_dtype_and_device_options(saved_dir):
    _, directory = saved_dir
    model = HookedTransformer.from_pretrained(directory, dtype="float16", device="cpu")
    assert {p.dtype for p in model.parameters()} == {torch.float16}
    with pytest.raises(ValueError, match="Unknown dtype"):
        HookedTransformer.from_pretrained(directory, dtype="float8")


def test_mismatched_state_dict_names_every_tensor_and_both_shapes(saved_dir):
    hf_model, _ = saved_dir
    state = dict(hf_model.state_dict())
    state["transformer.h.1.mlp.c_fc.weight"] = torch.zeros(32, 99)
    del state["transformer.h.0.ln_1.bias"]
    state["transformer.h.7.attn.extra"] = torch.zeros(3)
    cfg = adapters.config_from_hf(hf_model.config)
    with pytest.raises(ValueError) as error:
        convert_hf_state_dict(state, cfg)
    message = str(error.value)
    assert "h.1.mlp.c_fc.weight: checkpoint has shape (32, 99), config expects (32, 128)" in message
    assert "missing h.0.ln_1.bias" in message and "unexpected h.7.attn.extra" in message


def test_config_mismatch_on_load(saved_dir, tmp_path):
    hf_model, directory = saved_dir
    with pytest.raises(ValueError, match="do not match the gpt2 config"):
        HookedTransformer.from_pretrained(directory / "model.safetensors", config=hf_config(**dict(
            n_layer=2, n_head=4, n_embd=48, n_positions=48, vocab_size=101)))


def test_unreachable_hub_id_fails_with_local_directory_advice(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # offline mode answers at once, without trying the network
    with pytest.raises(OSError, match="local directory"):
        HookedTransformer.from_pretrained("gpt2-medium")


def test_unknown_model_name_suggests(tmp_path):
    with pytest.raises(KeyError, match="gpt2"):
        HookedTransformer.from_pretrained("gtp2")


def test_unsupported_architecture_is_refused(tmp_path):
    import json
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    with pytest.raises(ValueError, match=r"Unsupported architecture model_type='bert'.*\['gpt2', 'gpt_neox', 'llama', 'mistral', 'qwen2'\]"):
        HookedTransformer.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="scale_attn_by_inverse_layer_idx"):
        adapters.config_from_hf(hf_config(scale_attn_by_inverse_layer_idx=True))


def test_config_validation_messages():
    with pytest.raises(ValueError, match="divisible by n_heads"):
        Config(n_layers=1, d_model=10, n_heads=3, d_mlp=4, d_vocab=5, n_ctx=6)
    with pytest.raises(ValueError, match="positive int"):
        Config(n_layers=0, d_model=8, n_heads=2, d_mlp=4, d_vocab=5, n_ctx=6)
    with pytest.raises(ValueError, match="act_fn"):
        Config(n_layers=1, d_model=8, n_heads=2, d_mlp=4, d_vocab=5, n_ctx=6, act_fn="swish")
    cfg = Config(n_layers=1, d_model=8, n_heads=2, d_mlp=4, d_vocab=5, n_ctx=6)
    assert cfg.d_head == 4
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.n_layers = 3  # frozen: vary a config with dataclasses.replace
    assert adapters.config_from_hf(adapters.hf_config(cfg)) == cfg
    with pytest.raises(ValueError, match="n_heads=6 must be a multiple of n_kv_heads=4"):
        Config(n_layers=1, d_model=12, n_heads=6, n_kv_heads=4, d_mlp=4, d_vocab=5, n_ctx=6)
    assert Config(n_layers=1, d_model=10, n_heads=3, d_head=7, d_mlp=4, d_vocab=5, n_ctx=6).d_head == 7  # explicit d_head


# ----- sharded safetensors ---------------------------------------------------------------------------
@pytest.fixture()
def sharded_dir(tmp_path):
    hf_model = random_hf_gpt2(tiny_hf_config(), seed=5)
    hf_model.save_pretrained(tmp_path, max_shard_size="40KB")
    return hf_model, tmp_path


def test_a_sharded_checkpoint_loads_equal_to_transformers(sharded_dir):
    import json
    hf_model, directory = sharded_dir
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1 and not (directory / "model.safetensors").exists()
    tokens = random_tokens(101)
    for source in (directory, directory / "model.safetensors.index.json"):
        model = HookedTransformer.from_pretrained(source)
        with torch.no_grad():
            expected = hf_model(tokens).logits.log_softmax(-1)
            torch.testing.assert_close(model(tokens).log_softmax(-1), expected, rtol=0, atol=1e-5)


def test_a_sharded_checkpoint_with_a_missing_shard_or_damaged_index(sharded_dir):
    import json
    _, directory = sharded_dir
    index_path = directory / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    shard = sorted(set(index["weight_map"].values()))[-1]
    (directory / shard).rename(directory / "moved.safetensors")
    with pytest.raises(FileNotFoundError, match=f"shard .*{shard} listed in .*index.json is missing"):
        HookedTransformer.from_pretrained(directory)
    (directory / "moved.safetensors").rename(directory / shard)
    index_path.write_text('{"weight_map": ')
    with pytest.raises(ValueError, match="shard index .* is damaged"):
        HookedTransformer.from_pretrained(directory)
    index_path.write_text(json.dumps({"weight_map": {**index["weight_map"], "transformer.h.0.extra": shard}}))
    with pytest.raises(ValueError, match=r"lacks \['transformer.h.0.extra'\]"):
        HookedTransformer.from_pretrained(directory)
