"""`HookedTransformerConfig`: TransformerLens's config, field names and defaults, over interp's `Config`.

TransformerLens code reads `model.cfg.normalization_type`, `model.cfg.device` or `model.cfg.n_key_value_heads` and
sets `model.cfg.use_attn_result`; interp's own `Config` is frozen and says `normalization`, `positions`,
`n_kv_heads`. This mutable dataclass holds TransformerLens's fields; bound to a model (`interp.tl.HookedTransformer`)
it also answers interp's own field names from the model's `Config` (so interp's code keeps reading `model.cfg`),
and its run-time switches (`use_attn_result`, `use_split_qkv_input`, `use_hook_mlp_in`,
`ungroup_grouped_query_attention`) act on the model when set, as TransformerLens's do.

`to_core()` gives the interp `Config` of a hand-written TransformerLens config, refusing, with the reason, the
architectures interp does not build (attention-only models, no normalisation, shortformer positions, ...).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from interp.config import Config, RopeScaling

# TransformerLens's `original_architecture` for each family interp loads.
ARCHITECTURES = {"gpt2": "GPT2LMHeadModel", "gpt_neox": "GPTNeoXForCausalLM", "llama": "LlamaForCausalLM",
                 "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}
MODEL_TYPES = {architecture: model_type for model_type, architecture in ARCHITECTURES.items()}
# Families whose TransformerLens configs say default_prepend_bos=False (Pythia and Qwen2 were trained without a BOS).
NO_DEFAULT_BOS = ("gpt_neox", "qwen2")
# Switches TransformerLens reads at every forward; here setting one tells the bound model (see `bind`).
RUNTIME_SWITCHES = ("use_attn_result", "use_split_qkv_input", "use_hook_mlp_in", "use_attn_in",
                    "ungroup_grouped_query_attention")


@dataclass
class HookedTransformerConfig:
    """TransformerLens 3's `HookedTransformerConfig` fields that describe models interp runs, with its defaults."""

    d_model: int
    d_head: int
    n_layers: int
    n_ctx: int
    n_heads: int = -1
    d_mlp: int | None = None
    d_vocab: int = -1
    act_fn: str | None = "relu"
    eps: float = 1e-5
    model_name: str = "custom"
    normalization_type: str | None = "LN"
    positional_embedding_type: str = "standard"
    n_key_value_heads: int | None = None
    device: str | None = None
    dtype: torch.dtype = torch.float32
    use_attn_result: bool = False
    use_split_qkv_input: bool = False
    use_hook_mlp_in: bool = False
    use_attn_in: bool = False
    ungroup_grouped_query_attention: bool = False
    use_attn_scale: bool = True
    attn_scale: float = -1.0
    use_local_attn: bool = False
    window_size: int | None = None
    attn_types: list | None = None
    original_architecture: str | None = None
    tokenizer_name: str | None = None
    default_prepend_bos: bool = True
    tokenizer_prepends_bos: bool | None = None
    attn_only: bool = False
    parallel_attn_mlp: bool = False
    gated_mlp: bool = False
    final_rms: bool = False
    rotary_dim: int | None = None
    rotary_base: float = 10000
    rotary_adjacent_pairs: bool = False
    use_NTK_by_parts_rope: bool = False
    NTK_by_parts_low_freq_factor: float = 1.0
    NTK_by_parts_high_freq_factor: float = 4.0
    NTK_by_parts_factor: float = 8.0
    NTK_original_ctx_len: int = 8192
    tie_word_embeddings: bool = False
    d_vocab_out: int = -1
    n_params: int | None = None
    seed: int | None = None
    init_mode: str = "gpt2"
    initializer_range: float = -1.0
    init_weights: bool = True
    use_hook_tokens: bool = False
    n_devices: int = 1
    attention_dir: str = "causal"
    scale_attn_by_inverse_layer_idx: bool = False
    post_embedding_ln: bool = False
    trust_remote_code: bool = False
    from_checkpoint: bool = False
    checkpoint_index: int | None = None
    checkpoint_value: int | None = None
    _core: Config | None = field(default=None, repr=False, compare=False)
    _on_switch: Callable[[str, bool], None] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.n_heads == -1:
            self.n_heads = self.d_model // self.d_head
        if self.d_mlp is None and not self.attn_only:
            self.d_mlp = 4 * self.d_model
        if self.d_vocab_out == -1:
            self.d_vocab_out = self.d_vocab
        if self.positional_embedding_type == "rotary" and self.rotary_dim is None:
            self.rotary_dim = self.d_head
        if self.initializer_range < 0:
            self.initializer_range = 0.8 / math.sqrt(self.d_model) if self.init_mode == "gpt2" else 1.0
        if self.use_attn_scale and self.attn_scale == -1.0:
            self.attn_scale = math.sqrt(self.d_head)
        mlp = 0 if self.attn_only else self.d_model * (self.d_mlp or 0) * (2 + self.gated_mlp)
        self.n_params = self.n_layers * (4 * self.d_model * self.d_head * self.n_heads + mlp)
        if self.device is None:
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.default_prepend_bos not in (True, False):
            raise ValueError(f"default_prepend_bos must be True or False, got {self.default_prepend_bos!r}.")
        if self.seed is not None:
            torch.manual_seed(self.seed)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in RUNTIME_SWITCHES and self.__dict__.get("_on_switch") is not None:
            self._on_switch(name, value)  # first: a refused switch leaves the config as it was
        super().__setattr__(name, value)

    def __getattr__(self, name: str) -> Any:
        """interp's own field names (positions, n_kv_heads, bos_token_id, ...) from the bound model's Config."""
        core = self.__dict__.get("_core")
        if core is not None and not name.startswith("__"):
            return getattr(core, name)
        raise AttributeError(f"HookedTransformerConfig has no field {name!r}.")

    # ----- conversions -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, config_dict: dict[str, Any]) -> HookedTransformerConfig:
        return cls(**config_dict)

    @classmethod
    def unwrap(cls, config: dict[str, Any] | HookedTransformerConfig) -> HookedTransformerConfig:
        return cls.from_dict(config) if isinstance(config, dict) else config

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if not f.name.startswith("_")}

    @classmethod
    def from_core(cls, core: Config, folded: bool = False, **fields: Any) -> HookedTransformerConfig:
        """TransformerLens's view of an interp Config (`folded`: its norms carry no gain, TL's "LNPre"/"RMSPre")."""
        rotary = core.positions == "rotary"
        llama3 = core.rope_scaling is not None and core.rope_scaling.rope_type == "llama3"
        window = core.sliding_window
        values = dict(
            d_model=core.d_model, d_head=core.d_head, n_layers=core.n_layers, n_ctx=core.n_ctx, n_heads=core.n_heads,
            d_mlp=core.d_mlp, d_vocab=core.d_vocab, act_fn=core.act_fn, eps=core.eps, model_name=core.model_name,
            normalization_type=core.normalization + ("Pre" if folded else ""),
            positional_embedding_type="rotary" if rotary else "standard",
            n_key_value_heads=None if core.n_kv_heads == core.n_heads else core.n_kv_heads,
            original_architecture=ARCHITECTURES.get(core.model_type, core.model_type),
            parallel_attn_mlp=core.parallel_blocks, gated_mlp=core.gated_mlp, final_rms=core.normalization == "RMS",
            rotary_dim=core.rotary_dim if rotary else None, rotary_base=core.rotary_base,
            rotary_adjacent_pairs=core.rotary_interleaved, tie_word_embeddings=core.tie_word_embeddings,
            use_local_attn=window is not None, window_size=window,
            attn_types=None if window is None else ["local" if core.window_of(layer) else "global"
                                                    for layer in range(core.n_layers)],
            use_NTK_by_parts_rope=llama3, default_prepend_bos=core.model_type not in NO_DEFAULT_BOS)
        if llama3:
            scaling = core.rope_scaling
            values.update(NTK_by_parts_low_freq_factor=scaling.low_freq_factor, NTK_by_parts_factor=scaling.factor,
                          NTK_by_parts_high_freq_factor=scaling.high_freq_factor,
                          NTK_original_ctx_len=scaling.original_max_position_embeddings)
        values.update(fields)
        config = cls(**values)
        object.__setattr__(config, "_core", core)
        return config

    def to_core(self) -> Config:
        """The interp Config this describes (the bound one, if bound); NotImplementedError for what interp lacks."""
        if self._core is not None:
            return self._core
        unsupported = {
            "attn_only=True (attention-only models)": self.attn_only,
            f"normalization_type={self.normalization_type!r} (interp builds LN and RMS)":
                self.normalization_type not in ("LN", "LNPre", "RMS", "RMSPre"),
            f"positional_embedding_type={self.positional_embedding_type!r} (interp builds 'standard' and 'rotary')":
                self.positional_embedding_type not in ("standard", "rotary"),
            "use_attn_scale=False or a custom attn_scale": not self.use_attn_scale
                or not math.isclose(self.attn_scale, math.sqrt(self.d_head)),
            "scale_attn_by_inverse_layer_idx=True": self.scale_attn_by_inverse_layer_idx,
            "post_embedding_ln=True": self.post_embedding_ln,
            f"attention_dir={self.attention_dir!r} (interp is causal)": self.attention_dir != "causal",
            "d_vocab_out != d_vocab": self.d_vocab_out != self.d_vocab,
        }
        refused = [what for what, bad in unsupported.items() if bad]
        if refused:
            raise NotImplementedError(f"interp.tl cannot build this model: {'; '.join(refused)}. interp runs GPT-2, "
                                      "GPT-NeoX, Llama, Mistral and Qwen2 architectures (see the README's "
                                      "'Coming from TransformerLens' table).")
        window = self.window_size if self.use_local_attn else None
        layers = None if window is None or self.attn_types is None else \
            tuple(layer for layer, kind in enumerate(self.attn_types) if kind == "local")
        rope = RopeScaling("llama3", self.NTK_by_parts_factor, self.NTK_by_parts_low_freq_factor,
                           self.NTK_by_parts_high_freq_factor, self.NTK_original_ctx_len) \
            if self.use_NTK_by_parts_rope else None
        rotary = self.positional_embedding_type == "rotary"
        model_type = MODEL_TYPES.get(self.original_architecture or "", "llama" if rotary else "gpt2")
        return Config(n_layers=self.n_layers, d_model=self.d_model, n_heads=self.n_heads, d_mlp=self.d_mlp,
                      d_vocab=self.d_vocab, n_ctx=self.n_ctx, d_head=self.d_head, n_kv_heads=self.n_key_value_heads,
                      act_fn=self.act_fn, eps=self.eps, normalization=self.normalization_type.removesuffix("Pre"),
                      positions="rotary" if rotary else "learned", rotary_dim=self.rotary_dim if rotary else None,
                      rotary_base=self.rotary_base, rotary_interleaved=self.rotary_adjacent_pairs, rope_scaling=rope,
                      gated_mlp=self.gated_mlp, parallel_blocks=self.parallel_attn_mlp, sliding_window=window,
                      sliding_window_layers=layers, tie_word_embeddings=self.tie_word_embeddings,
                      model_type=model_type, model_name=self.model_name)
