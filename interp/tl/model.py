"""`interp.tl.HookedTransformer`: interp's model with TransformerLens 3's names, signatures, defaults and return types.

It is `interp.HookedTransformer` (same modules, same numbers, same hook names) with TransformerLens's surface:
processed weights by default in `from_pretrained`, a `cfg` with TransformerLens's field names, `model.embed` /
`model.pos_embed` / `model.unembed`, permanent hooks and `reset_hooks(including_permanent=)`,
`run_with_hooks(*args, fwd_hooks=, reset_hooks_end=)`, `run_with_cache` returning `interp.tl.ActivationCache`,
`to_tokens` / `to_str_tokens` / `to_string` as TransformerLens tokenises, `generate` with its sampling defaults.
Where interp deliberately differs, the README's "Coming from TransformerLens" table says so.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp import loading as loading_module
from interp import model as core
from interp import processing as processing_module
from interp.components.blocks import set_ungrouped
from interp.config import Config
from interp.hooks import HookPoint
import interp.tl.generation as generation
import interp.tl.state_dict as tl_state
from interp.tl.cache import ActivationCache
from interp.tl.config import HookedTransformerConfig
from interp.tl.factored import FactoredMatrix
from interp.tl.hook_points import HookedRootModule, hook_table
from interp.tl.parts import Embed, PosEmbed, Unembed
from interp.tl.model_tokens import TokenizationMixin

SWITCHED = {"use_attn_result": (".attn.hook_result",), "use_hook_mlp_in": (".hook_mlp_in",),
            "use_split_qkv_input": (".hook_q_input", ".hook_k_input", ".hook_v_input")}


class Output(NamedTuple):
    """`return_type="both"`: logits and loss, as TransformerLens's `Output`."""

    logits: Float[Tensor, "batch pos d_vocab"]
    loss: Tensor


class HookedTransformer(TokenizationMixin, HookedRootModule, core.HookedTransformer):
    """interp's model (GPT-2, GPT-NeoX/Pythia, Llama, Mistral, Qwen2) behind TransformerLens's API.

    `HookedTransformer(cfg)` takes a `HookedTransformerConfig` (or dict) and initialises random weights as
    TransformerLens does (normal with std `cfg.initializer_range`, biases 0, norm gains 1);
    `from_pretrained(...)` loads and, by default, processes weights.
    """

    # TransformerLens runs run_with_cache with autograd on (the output keeps its graph); interp's own runs under no_grad.
    _cache_grad_mode = staticmethod(contextlib.nullcontext)

    def __init__(self, cfg: HookedTransformerConfig | dict | Config, tokenizer: Any = None,
                 move_to_device: bool = True, default_padding_side: Literal["left", "right"] | None = None) -> None:
        if isinstance(cfg, str):
            raise ValueError("HookedTransformer(cfg) takes a config (HookedTransformerConfig or dict); to load a "
                             "pretrained model use HookedTransformer.from_pretrained(name).")
        given = None if isinstance(cfg, Config) else HookedTransformerConfig.unwrap(cfg)
        if given is not None and given.__dict__.get("_on_switch") is not None:
            given = dataclasses.replace(given)  # bound to another model already: this one gets its own copy
        if given is not None and given.d_vocab == -1:
            if tokenizer is None:
                raise ValueError("HookedTransformerConfig(d_vocab=-1) takes the vocabulary size from a tokenizer: "
                                 "pass tokenizer= or set d_vocab.")
            given.d_vocab = max(tokenizer.get_vocab().values()) + 1
            given.d_vocab_out = given.d_vocab if given.d_vocab_out == -1 else given.d_vocab_out
        super().__init__(cfg if given is None else given.to_core(), tokenizer)
        if given is not None:
            self.cfg = given
            for switch in ("use_attn_in", "ungroup_grouped_query_attention"):
                if getattr(given, switch):
                    self._switch(switch, True)
        self.embed, self.unembed = Embed(self), Unembed(self)
        self.hook_dict = hook_table(self)  # with unembed.hook_in / hook_out
        if "W_pos" in self._parameters:
            self.pos_embed = PosEmbed(self)
        if given is not None and given.normalization_type in ("LNPre", "RMSPre"):
            self._fold_norms()
        self.is_caching = False
        self.mod_dict = self._module_table()
        if tokenizer is not None:
            self.set_tokenizer(tokenizer, default_padding_side)
        if given is not None and not self.W_E.is_meta:
            if given.init_weights:
                self.init_weights()
            if move_to_device:
                self.to(given.device, given.dtype)

    def _fold_norms(self) -> None:
        """Build the norms without gain or bias (TransformerLens's LNPre / RMSPre), as `fold_ln` leaves them."""
        for block in self.blocks:
            block.ln1, block.ln2 = block.ln1.folded(), block.ln2.folded()
        self.ln_final = self.ln_final.folded()
        self.processing = {**self.processing, "fold_ln": True}

    # ----- cfg: TransformerLens's fields over interp's Config ----------------------------------
    @property
    def cfg(self) -> HookedTransformerConfig:
        return self.__dict__["_tl_cfg"]

    @cfg.setter
    def cfg(self, value: HookedTransformerConfig | Config) -> None:
        current = self.__dict__.get("_tl_cfg")
        if isinstance(value, HookedTransformerConfig):
            core_cfg, tl_cfg = value.to_core(), value
        else:
            core_cfg, tl_cfg = value, current
        self.__dict__["core_cfg"] = core_cfg
        if tl_cfg is None:
            tl_cfg = HookedTransformerConfig.from_core(core_cfg)
        object.__setattr__(tl_cfg, "_core", core_cfg)
        object.__setattr__(tl_cfg, "_on_switch", None)
        tl_cfg.tie_word_embeddings = core_cfg.tie_word_embeddings
        if current is not None and tl_cfg is not current:
            for name in SWITCHED:
                setattr(tl_cfg, name, getattr(current, name))
        object.__setattr__(tl_cfg, "_on_switch", self._switch)
        self.__dict__["_tl_cfg"] = tl_cfg

    def _unembed(self, normalized: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_vocab"]:
        return self.unembed(normalized)  # through TransformerLens's unembed.hook_in / hook_out

    def _replace_config(self, **changes: Any) -> None:
        self.cfg = dataclasses.replace(self.core_cfg, **changes)

    def _switch(self, name: str, value: bool) -> None:
        """A run-time switch of `cfg` was set (TransformerLens reads them at every forward)."""
        if name == "use_attn_in" and value:
            raise NotImplementedError("use_attn_in (hook_attn_in) is not implemented in interp.tl; "
                                      "use_split_qkv_input gives separate per-head q/k/v inputs.")
        if name == "ungroup_grouped_query_attention":
            for block in self.blocks:
                set_ungrouped(block, bool(value))

    @property
    def opt_in_names(self) -> frozenset[str]:
        """Points only an explicit name selects: interp's opt-in points less those TransformerLens's switches turn on."""
        switched_on = tuple(suffix for flag, suffixes in SWITCHED.items() if getattr(self.cfg, flag)
                            for suffix in suffixes)
        base = self.__dict__["_opt_in_all"]
        return frozenset(name for name in base if not (switched_on and name.endswith(switched_on)))

    @opt_in_names.setter
    def opt_in_names(self, value: frozenset[str]) -> None:
        self.__dict__["_opt_in_all"] = frozenset(value)

    def set_use_attn_result(self, use_attn_result: bool) -> None:
        """Cache and hook each head's output (`attn.hook_result`, batch pos n_heads d_model) by default."""
        self.cfg.use_attn_result = use_attn_result

    def set_use_split_qkv_input(self, use_split_qkv_input: bool) -> None:
        """Give each head its own copy of its q/k/v input (`hook_q_input`, ...), hookable and cached by default."""
        self.cfg.use_split_qkv_input = use_split_qkv_input

    def set_use_hook_mlp_in(self, use_hook_mlp_in: bool) -> None:
        self.cfg.use_hook_mlp_in = use_hook_mlp_in

    def set_use_attn_in(self, use_attn_in: bool) -> None:
        self.cfg.use_attn_in = use_attn_in

    def set_ungroup_grouped_query_attention(self, ungroup_grouped_query_attention: bool) -> None:
        """GQA: give each query head its own copy of its key and value (hook_k/hook_v per query head)."""
        self.cfg.ungroup_grouped_query_attention = ungroup_grouped_query_attention

    # ----- hooks (TransformerLens's HookedRootModule) ------------------------------------------
    def _module_table(self) -> dict[str, Any]:
        table: dict[str, Any] = {name: module for name, module in self.named_modules() if name}
        table.update(self.hook_dict)
        return table

    def setup(self) -> None:
        """Rebuild `hook_dict` and `mod_dict` after modules or hook points were replaced (e.g. an SAE spliced in).
        A bare `HookPoint()` put back where one of the model's own points was takes that point's shape, opt-in flag
        and place in the forward order (as SAELens restores a point after removing its SAE)."""
        declared = self.__dict__.setdefault("_declared_points", dict(self.hook_dict))
        table = hook_table(self)  # interp.tl.hook_points's: it also finds the points that are modules
        for name, point in table.items():
            original = declared.get(name)
            if original is not None and original is not point and not point.shape:
                point.shape, point.opt_in, point.serial = original.shape, original.opt_in, original.serial
        self.hook_dict = dict(sorted(table.items(), key=lambda item: item[1].serial))
        self.opt_in_names = frozenset(name for name, point in self.hook_dict.items() if point.opt_in)
        self.mod_dict = self._module_table()

    def run_with_cache(self, *model_args: Any, names_filter: Any = None, device: Any = None,
                       remove_batch_dim: bool = False, incl_bwd: bool = False, reset_hooks_end: bool = True,
                       clear_contexts: bool = False, pos_slice: Any = None, return_cache_object: bool = True,
                       **model_kwargs: Any) -> tuple[Any, ActivationCache | dict[str, Tensor]]:
        """`(output, cache)` of one run, as TransformerLens: every hook point that fires unless `names_filter`
        (a name, list of names or predicate) says otherwise; `remove_batch_dim` for a batch of one; `pos_slice`
        keeps those positions of each activation; `incl_bwd` also caches `name + "_grad"` of the (scalar) output."""
        if len(model_args) > 1:
            raise TypeError("run_with_cache takes the input as its one positional argument; pass the rest by name.")
        output, cache = core.HookedTransformer.run_with_cache(  # interp's, not HookedRootModule's plain one
            self, model_args[0] if model_args else model_kwargs.pop("input"), names_filter=names_filter,
            device=device, incl_bwd=incl_bwd, **model_kwargs)
        if isinstance(output, tuple) and len(output) == 2:
            output = Output(*output)
        cache = ActivationCache.from_interp(cache)
        if pos_slice is not None:
            cache = ActivationCache(_pos_sliced(cache, pos_slice), self, has_batch_dim=True)
        if remove_batch_dim:
            cache.remove_batch_dim()
        if clear_contexts:
            self.clear_contexts()
        return output, (cache if return_cache_object else dict(cache.items()))

    # ----- forward ---------------------------------------------------------------------------
    def forward(self, input: Any, return_type: str | None = "logits", loss_per_token: bool = False,
                prepend_bos: bool | None = None, padding_side: Literal["left", "right"] | None = None,
                start_at_layer: int | None = None, tokens: Int[Tensor, "batch pos"] | None = None,
                shortformer_pos_embed: Tensor | None = None, attention_mask: Tensor | None = None,
                stop_at_layer: int | None = None, past_kv_cache: Any = None) -> Any:
        """TransformerLens's forward: text is tokenised as `to_tokens` does (BOS by `cfg.default_prepend_bos`,
        padding on `tokenizer.padding_side`) and masked; left-padded token ids are masked by their pad tokens
        (TransformerLens's `get_attention_mask`). Returns logits, the loss, `Output(logits, loss)` or None."""
        if shortformer_pos_embed is not None:
            raise NotImplementedError("shortformer positional embeddings are not implemented in interp.")
        if start_at_layer is None:  # resolved once, here (the loss below needs the mask text was given); passed on
            input, attention_mask = self.tokens_and_mask(input, attention_mask, padding_side, prepend_bos)
            if attention_mask is None:  # explicitly, so that interp's forward does not infer padding again
                attention_mask = torch.ones_like(input, dtype=torch.bool)
        output = super().forward(input, return_type=return_type, loss_per_token=loss_per_token,
                                 stop_at_layer=stop_at_layer, attention_mask=attention_mask,
                                 start_at_layer=start_at_layer, tokens=tokens, past_kv_cache=past_kv_cache)
        if loss_per_token and attention_mask is not None and return_type in ("loss", "both") and stop_at_layer is None:
            output = _zero_padded_pairs(output, attention_mask, return_type)
        return Output(*output) if return_type == "both" and stop_at_layer is None else output

    def loss_fn(self, logits: Float[Tensor, "batch pos d_vocab"], tokens: Int[Tensor, "batch pos"],
                attention_mask: Int[Tensor, "batch pos"] | None = None, per_token: bool = False) -> Tensor:
        """Next-token cross-entropy (TransformerLens's `utils.lm_cross_entropy_loss`)."""
        from interp.tl.utils import lm_cross_entropy_loss
        return lm_cross_entropy_loss(logits, tokens.to(logits.device), attention_mask, per_token)

    def generate(self, input: Any = "", max_new_tokens: int = 10, stop_at_eos: bool = True,
                 eos_token_id: int | list[int] | None = None, do_sample: bool = True, top_k: int | None = None,
                 top_p: float | None = None, temperature: float = 1.0, freq_penalty: float = 0.0,
                 use_past_kv_cache: bool = True, prepend_bos: bool | None = None,
                 padding_side: Literal["left", "right"] | None = None, return_type: str | None = "input",
                 verbose: bool = True) -> Any:
        """TransformerLens's generate (sampling by default: `do_sample=True`, temperature 1); see
        `interp.tl.generation.generate`."""
        return generation.generate(self, input, max_new_tokens, stop_at_eos, eos_token_id, do_sample, top_k, top_p,
                                   temperature, freq_penalty, use_past_kv_cache, prepend_bos, padding_side,
                                   return_type, verbose)

    # ----- weights -----------------------------------------------------------------------------
    def init_weights(self) -> None:
        """TransformerLens's "gpt2" initialisation: weights normal(0, initializer_range), biases 0, norm gains 1."""
        if self.cfg.init_mode != "gpt2":
            raise NotImplementedError(f"init_mode={self.cfg.init_mode!r}: interp.tl initialises as 'gpt2' only "
                                      "(normal with std initializer_range); use init_mode='gpt2'.")
        if self.cfg.seed is not None:  # as TransformerLens: the same seed gives the same weights
            torch.manual_seed(self.cfg.seed)
        std = self.cfg.initializer_range
        with torch.no_grad():
            for name, parameter in self.named_parameters():
                if name.endswith(".w"):
                    parameter.fill_(1.0)
                elif name.split(".")[-1].startswith("b"):
                    parameter.zero_()
                else:
                    parameter.normal_(0.0, std)

    def _apply(self, fn: Callable[[Tensor], Tensor], *args: Any, **kwargs: Any) -> HookedTransformer:
        super()._apply(fn, *args, **kwargs)
        if not self.W_E.is_meta:
            object.__setattr__(self.cfg, "device", str(self.W_E.device))
            object.__setattr__(self.cfg, "dtype", self.W_E.dtype)
        return self

    @property
    def n_params_total(self) -> int:
        """Every parameter, embeddings, biases and norms included (`cfg.n_params` counts attention and MLP weights)."""
        return sum(parameter.numel() for parameter in self.parameters())

    @property
    def W_E_pos(self) -> Float[Tensor, "d_vocab_plus_n_ctx d_model"]:
        """W_E and W_pos stacked: every vector the embedding adds to the residual stream."""
        return torch.cat([self.W_E, self.W_pos], dim=0)

    @property
    def QK(self) -> FactoredMatrix:
        return FactoredMatrix.from_interp(super().QK)

    @property
    def OV(self) -> FactoredMatrix:
        return FactoredMatrix.from_interp(super().OV)

    def accumulated_bias(self, layer: int, mlp_input: bool = False, include_mlp_biases: bool = True
                         ) -> Float[Tensor, "d_model"]:
        """The biases (b_O, and b_out unless excluded) the blocks before `layer` add to the residual stream;
        `mlp_input=True` adds `layer`'s own b_O (what that block's MLP reads)."""
        if not 0 <= layer <= self.cfg.n_layers or (mlp_input and layer == self.cfg.n_layers):
            raise ValueError(f"layer={layer} must be in [0, {self.cfg.n_layers}] ({self.cfg.n_layers - 1} with mlp_input).")
        total = torch.zeros(self.cfg.d_model, device=self.W_E.device, dtype=self.W_E.dtype)
        for block in self.blocks[:layer]:
            total = total + block.attn.b_O + (block.mlp.b_out if include_mlp_biases else 0)
        return total + self.blocks[layer].attn.b_O if mlp_input else total

    def all_composition_scores(self, mode: Literal["Q", "K", "V"]) -> Float[Tensor, "l1 h1 l2 h2"]:
        """Composition scores of every head pair (Elhage et al. 2021), zero unless the first head's layer is earlier."""
        from interp.tl.utils import composition_scores
        left = self.OV
        right = {"Q": self.QK, "K": self.QK.T, "V": self.OV}.get(mode)
        if right is None:
            raise ValueError(f"mode must be 'Q', 'K' or 'V', got {mode!r}.")
        scores = composition_scores(left, right, broadcast_dims=True)  # [layer, head, layer, head]
        layers = torch.arange(self.cfg.n_layers, device=scores.device)
        earlier = (layers[:, None, None, None] < layers[None, None, :, None])
        return torch.where(earlier, scores, torch.zeros_like(scores))

    def all_head_labels(self) -> list[str]:
        return [f"L{layer}H{head}" for layer in range(self.cfg.n_layers) for head in range(self.cfg.n_heads)]

    def process_weights_(self, fold_ln: bool = True, center_writing_weights: bool = True,
                         center_unembed: bool = True, refactor_factored_attn_matrices: bool = False,
                         fold_value_biases: bool = True) -> HookedTransformer:
        """TransformerLens's processing: each step where valid for the architecture (center_writing_weights is
        skipped on RMSNorm models, as TransformerLens does), then optionally the attention refactor."""
        super().process_weights_(fold_ln=None if fold_ln else False,
                                 center_writing_weights=None if center_writing_weights else False,
                                 center_unembed=None if center_unembed else False,
                                 fold_value_biases=None if fold_value_biases else False)
        object.__setattr__(self.cfg, "normalization_type",
                           self.core_cfg.normalization + ("Pre" if self.processing["fold_ln"] else ""))
        if refactor_factored_attn_matrices:
            dtype = self.W_E.dtype  # TransformerLens's SVDs run in the model's dtype, and their signs depend on it

            def in_model_dtype(A: Tensor, B: Tensor) -> FactoredMatrix:
                return FactoredMatrix(A.to(dtype), B.to(dtype))

            state = processing_module.refactor_factored_attn_matrices(dict(core.HookedTransformer.state_dict(self)),
                                                                       self.core_cfg, factored=in_model_dtype)
            core.HookedTransformer.load_state_dict(self, state, strict=True, assign=True)
            self.processing["fold_value_biases"] = True  # the refactor moved b_V into b_O
        return self

    def load_state_dict(self, state_dict: dict[str, Tensor], strict: bool = True, assign: bool = False) -> Any:
        """Load interp-named or TransformerLens-named weights (`embed.W_E`, `blocks.0.attn.W_Q`, ...)."""
        state = tl_state.to_interp(state_dict, self) if tl_state.is_transformer_lens(state_dict) else state_dict
        return super().load_state_dict(state, strict=strict, assign=assign)

    def load_and_process_state_dict(self, state_dict: dict[str, Tensor], fold_ln: bool = True,
                                    center_writing_weights: bool = True, center_unembed: bool = True,
                                    fold_value_biases: bool = True, refactor_factored_attn_matrices: bool = False
                                    ) -> None:
        self.load_state_dict(state_dict)
        self.process_weights_(fold_ln, center_writing_weights, center_unembed, refactor_factored_attn_matrices,
                              fold_value_biases)

    def tl_state_dict(self) -> dict[str, Tensor]:
        """The weights under TransformerLens's names (`state_dict()` keeps interp's, which interp's code reads)."""
        return tl_state.from_interp(dict(self.state_dict()), self)

    @classmethod
    def from_pretrained(cls, model_name: str, fold_ln: bool = True, center_writing_weights: bool = True,
                        center_unembed: bool = True, refactor_factored_attn_matrices: bool = False,
                        checkpoint_index: int | None = None, checkpoint_value: int | None = None,
                        hf_model: Any = None, device: Any = None, n_devices: int = 1, tokenizer: Any = None,
                        move_to_device: bool = True, fold_value_biases: bool = True,
                        default_prepend_bos: bool | None = None,
                        default_padding_side: Literal["left", "right"] | None = None, dtype: Any = "float32",
                        first_n_layers: int | None = None, n_ctx: int | None = None, **from_pretrained_kwargs: Any
                        ) -> HookedTransformer:
        """Load a model as TransformerLens does, processed by default (fold_ln, center_writing_weights,
        center_unembed, fold_value_biases, each where valid). `model_name`: a hub id, a local directory, a
        `.safetensors` file or a bundled model ("interp-toy"); `hf_model`: an already loaded `transformers` model."""
        unsupported = {"checkpoint_index": checkpoint_index, "checkpoint_value": checkpoint_value,
                       "first_n_layers": first_n_layers, "n_ctx": n_ctx,
                       "n_devices": None if n_devices == 1 else n_devices, **from_pretrained_kwargs}
        asked = [name for name, value in unsupported.items() if value is not None]
        if asked:
            raise NotImplementedError(f"interp.tl.HookedTransformer.from_pretrained does not support {asked}.")
        loaded = loading_module.load_weights(hf_model if hf_model is not None else model_name, tokenizer=tokenizer,
                                             device=device, dtype=dtype)
        model = cls.from_state_dict(loaded.cfg, loaded.state)
        if loaded.tokenizer is not None:
            model.set_tokenizer(loaded.tokenizer, default_padding_side)
        if default_prepend_bos is not None:
            model.cfg.default_prepend_bos = default_prepend_bos
        model.cfg.model_name = str(model_name).split("/")[-1]  # TransformerLens: the hub name's last part
        model.cfg.init_weights = False  # as TransformerLens's pretrained configs say
        model.process_weights_(fold_ln, center_writing_weights, center_unembed, refactor_factored_attn_matrices,
                               fold_value_biases)
        print(f"Loaded pretrained model {model_name} into HookedTransformer")
        return model

    @classmethod
    def from_pretrained_no_processing(cls, model_name: str, fold_ln: bool = False, center_writing_weights: bool = False,
                                      center_unembed: bool = False, refactor_factored_attn_matrices: bool = False,
                                      fold_value_biases: bool = False, dtype: Any = torch.float32,
                                      default_prepend_bos: bool | None = None,
                                      default_padding_side: Literal["left", "right"] | None = None,
                                      **from_pretrained_kwargs: Any) -> HookedTransformer:
        """`from_pretrained` with every processing step off: the raw weights, equal to `transformers`."""
        return cls.from_pretrained(model_name, fold_ln=fold_ln, center_writing_weights=center_writing_weights,
                                   center_unembed=center_unembed, fold_value_biases=fold_value_biases,
                                   refactor_factored_attn_matrices=refactor_factored_attn_matrices, dtype=dtype,
                                   default_prepend_bos=default_prepend_bos, default_padding_side=default_padding_side,
                                   **from_pretrained_kwargs)

    def __repr__(self) -> str:
        return "interp.tl." + super().__repr__()


def _zero_padded_pairs(output: Any, attention_mask: Tensor, return_type: str) -> Any:
    """A per-token loss with 0 (TransformerLens's value; interp's is NaN) where a token or its target is padding."""
    loss = output if return_type == "loss" else output[1]
    real = attention_mask.bool().reshape(-1, attention_mask.shape[-1]).to(loss.device)
    if tuple(real.shape) != (loss.shape[0], loss.shape[1] + 1):
        return output  # a mask over cached positions too (past_kv_cache): leave interp's loss as it is
    loss = loss.masked_fill(~(real[:, :-1] & real[:, 1:]), 0.0)
    return loss if return_type == "loss" else (output[0], loss)


def _pos_sliced(cache: ActivationCache, pos_slice: Any) -> dict[str, Tensor]:
    """Every entry with `pos_slice` applied along its position axis, as TransformerLens's run_with_cache does:
    -3 for per-head activations (q, k, v, z, result), -2 otherwise (the query axis of patterns)."""
    from interp.tl.utils import Slice
    chosen = Slice.unwrap(pos_slice)
    sliced = {}
    for name, tensor in cache.items():
        dim = -3 if name.removesuffix("_grad").endswith(("hook_q", "hook_k", "hook_v", "hook_z", "hook_result")) else -2
        sliced[name] = chosen.apply(tensor, dim) if tensor.ndim >= -dim else tensor
    return sliced


__all__ = ["HookedTransformer", "Output", "HookPoint"]
