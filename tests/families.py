"""Tiny random checkpoints of every architecture family interp loads, shared by the tests.

`CASES` maps a case name to a function returning a tiny `transformers` config (2 layers, d_model 32-64,
dropout off) that exercises one family option: tied/untied unembedding, partial rotary, parallel
residual, GQA, head_dim != d_model / n_heads, llama3 / linear RoPE scaling, sliding windows, biases.

    hf_model(case)   a fresh `transformers` model of that config: seeded, norm gains and biases and every
                     linear bias randomised (the default init, gain 1 and bias 0, hides folding bugs), eval, fp32
    saved_dir(case)  that model written by `save_pretrained` into a per-process temp dir (built once per session)
    load(case)       `HookedTransformer.from_pretrained(str(saved_dir(case)))`
    tokens(case)     random token ids `[batch, pos]`

No function here downloads anything.
"""

from __future__ import annotations

import atexit
import functools
import pathlib
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

import torch

SEED = 0
N_POSITIONS = 64  # context of every case (tests use <= 32 positions)
# Weights are drawn with std 0.15 instead of the default 0.02 so attention patterns are far from uniform
# and logits are O(1): with 0.02 the rotary, mask and GQA wiring barely change the output.
INIT_STD = 0.15
_COMMON = dict(num_hidden_layers=2, max_position_embeddings=N_POSITIONS, initializer_range=INIT_STD,
               attention_dropout=0.0, bos_token_id=0, eos_token_id=1, pad_token_id=None)


def _gpt2(tied: bool) -> Any:
    from transformers import GPT2Config
    return GPT2Config(n_layer=2, n_head=4, n_embd=32, n_positions=N_POSITIONS, vocab_size=101,
                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, initializer_range=INIT_STD,
                      tie_word_embeddings=tied, bos_token_id=100, eos_token_id=100)


def _neox(rotary_pct: float, parallel: bool, tied: bool) -> Any:
    from transformers import GPTNeoXConfig
    return GPTNeoXConfig(vocab_size=120, hidden_size=64, num_attention_heads=4, intermediate_size=128,
                         rotary_pct=rotary_pct, rotary_emb_base=10000, use_parallel_residual=parallel,
                         tie_word_embeddings=tied, hidden_dropout=0.0, hidden_act="gelu", **_COMMON)


def _llama(**overrides: Any) -> Any:
    from transformers import LlamaConfig
    settings = dict(vocab_size=128, hidden_size=48, intermediate_size=80, num_attention_heads=6,
                    num_key_value_heads=6, **_COMMON)
    settings.update(overrides)
    return LlamaConfig(**settings)


def _mistral() -> Any:
    from transformers import MistralConfig
    return MistralConfig(vocab_size=140, hidden_size=32, intermediate_size=72, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=16, sliding_window=5, tie_word_embeddings=False,
                         **_COMMON)


def _qwen2() -> Any:
    from transformers import Qwen2Config
    return Qwen2Config(vocab_size=160, hidden_size=48, intermediate_size=96, num_attention_heads=6,
                       num_key_value_heads=2, use_sliding_window=True, sliding_window=4, max_window_layers=1,
                       tie_word_embeddings=True, **_COMMON)


CASES: dict[str, Callable[[], Any]] = {
    "gpt2": lambda: _gpt2(tied=False),
    "gpt2_tied": lambda: _gpt2(tied=True),
    # Pythia-style: 1/4 of each head's 16 dims rotated, attention and MLP both read resid_pre.
    "neox_parallel": lambda: _neox(rotary_pct=0.25, parallel=True, tied=False),
    "neox_serial": lambda: _neox(rotary_pct=0.5, parallel=False, tied=True),
    # 6 query heads share 2 kv heads (3 each); head_dim 12 while d_model / n_heads = 8.
    "llama_gqa": lambda: _llama(num_key_value_heads=2, head_dim=12, tie_word_embeddings=True),
    # original_max_position_embeddings=16 puts the llama3 smoothing band inside these heads' wavelengths,
    # so the scaling really changes the frequencies (asserted in test_parity).
    "llama3_rope": lambda: _llama(rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
                                                   "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                   "original_max_position_embeddings": 16},
                                  tie_word_embeddings=False, attention_bias=True, mlp_bias=True),
    "llama_linear_rope": lambda: _llama(rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0},
                                        tie_word_embeddings=False),
    # Every layer attends to the last 5 keys only (key > query - 5), shorter than the test prompts.
    "mistral_window": _mistral,
    # q/k/v biases are built into Qwen2; layer 0 attends fully, layer 1 through a window of 4.
    "qwen2_bias": _qwen2,
}

ROTARY = {"neox_parallel", "neox_serial", "llama_gqa", "llama3_rope", "llama_linear_rope", "mistral_window", "qwen2_bias"}
GATED = {"llama_gqa", "llama3_rope", "llama_linear_rope", "mistral_window", "qwen2_bias"}  # SwiGLU MLPs
PARALLEL = {"neox_parallel"}  # attention and MLP in parallel: no resid_mid


def family(case: str) -> str:
    """"gpt2", "gpt_neox", "llama", "mistral" or "qwen2" (the config's model_type)."""
    return CASES[case]().model_type


@torch.no_grad()
def hf_model(case: str, attn_implementation: str = "eager") -> Any:
    """A fresh `transformers` causal LM of `CASES[case]`, identical weights on every call (fixed seed)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(SEED)
    model = AutoModelForCausalLM.from_config(CASES[case](), attn_implementation=attn_implementation,
                                             dtype=torch.float32)
    generator = torch.Generator().manual_seed(SEED + 1)
    for module in model.modules():
        is_norm = isinstance(module, torch.nn.LayerNorm) or type(module).__name__.endswith("RMSNorm")
        for name, parameter in module.named_parameters(recurse=False):
            if is_norm and name == "weight":
                parameter.copy_(1 + 0.3 * torch.randn(parameter.shape, generator=generator))
            elif name == "bias":  # norm biases and every linear (and GPT-2 Conv1D) bias
                parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator))
    return model.eval()


_TEMP_ROOT: pathlib.Path | None = None


def _temp_root() -> pathlib.Path:
    global _TEMP_ROOT
    if _TEMP_ROOT is None:
        _TEMP_ROOT = pathlib.Path(tempfile.mkdtemp(prefix="interp-families-"))
        atexit.register(shutil.rmtree, _TEMP_ROOT, ignore_errors=True)
    return _TEMP_ROOT


@functools.cache
def saved_dir(case: str) -> pathlib.Path:
    """`hf_model(case)` saved with `save_pretrained` (config.json + model.safetensors); once per process."""
    directory = _temp_root() / case
    hf_model(case).save_pretrained(directory)
    return directory


def load(case: str, **kwargs: Any) -> Any:
    """interp's `HookedTransformer` of the saved case; keyword arguments go to `from_pretrained`."""
    from interp import HookedTransformer
    return HookedTransformer.from_pretrained(str(saved_dir(case)), **kwargs)


def tokens(case: str, batch: int = 2, pos: int = 16, seed: int = 0) -> torch.Tensor:
    """Random token ids `[batch, pos]` below the case's vocabulary size."""
    return torch.randint(0, CASES[case]().vocab_size, (batch, pos), generator=torch.Generator().manual_seed(seed))
