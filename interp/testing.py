"""Offline stand-ins for real checkpoints: random-weight `transformers` GPT-2 models of any shape.

Used by the tests and benchmarks (no test may download). LayerNorm gains and biases are randomised,
because the default init (gain 1, bias 0) makes LayerNorm folding trivially correct and hides bugs.
"""

from __future__ import annotations

from typing import Any

import torch

GPT2_SMALL = dict(n_layer=12, n_head=12, n_embd=768, n_positions=1024, vocab_size=50257)


def hf_config(**overrides: Any) -> Any:
    """A `transformers.GPT2Config` with dropout off; GPT-2 small's shape unless overridden."""
    from transformers import GPT2Config

    settings = dict(GPT2_SMALL, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    settings.update(overrides)
    vocab = settings["vocab_size"]
    settings.setdefault("bos_token_id", vocab - 1)
    settings.setdefault("eos_token_id", vocab - 1)
    return GPT2Config(**settings)


@torch.no_grad()
def random_hf_gpt2(config: Any = None, seed: int = 0, randomize_ln: bool = True,
                   attn_implementation: str = "eager") -> Any:
    """A randomly initialised `transformers.GPT2LMHeadModel` in eval mode (GPT-2 small shape by default)."""
    from transformers import GPT2LMHeadModel

    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config or hf_config())
    model.config._attn_implementation = attn_implementation
    if randomize_ln:
        generator = torch.Generator().manual_seed(seed + 1)
        for name, parameter in model.named_parameters():
            if ".ln_" in name or "ln_f" in name:
                if name.endswith("weight"):
                    parameter.copy_(1 + 0.3 * torch.randn(parameter.shape, generator=generator))
                else:
                    parameter.copy_(0.2 * torch.randn(parameter.shape, generator=generator))
            elif name.endswith("bias"):  # default init leaves biases at zero; make them count
                parameter.copy_(0.05 * torch.randn(parameter.shape, generator=generator))
    return model.eval()
