"""`HookedTransformer`: a decoder-only transformer in readable PyTorch, with a named hook point at every activation.

Numerically it equals the `transformers` model of each supported family (GPT-2, GPT-NeoX, Llama, Mistral,
Qwen2) on the same weights (tested to 1e-5 in log-probabilities); hook names and weight names follow
TransformerLens.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Literal, Union

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from interp import names as hook_names_table
from interp import generation
from interp import loading as loading_module
from interp import processing as processing_module
from interp import tokens as tokens_module
from interp.cache import ActivationCache, derivation
from interp.components import Block, affine, factory
from interp.components.context import CachedContext, Context, KVCache, positions_from_mask
from interp.config import Config
from interp.factored import FactoredMatrix
from interp.hooks import HookFn, HookPoint, NamesFilter, attached, hook_table, resolve_names, unknown_name_error

ModelInput = Union[str, list[str], Tensor, list[int], list[list[int]]]
ReturnType = Literal["logits", "loss", "both", None]
HookList = Iterable[tuple[Union[str, Callable[[str], bool]], HookFn]]


class HookedTransformer(nn.Module):
    """A decoder-only language model (GPT-2, GPT-NeoX/Pythia, Llama, Mistral, Qwen2) whose every activation is a
    named `HookPoint`. The pieces are chosen once, from the Config, by `interp.components.factory`.

    Load weights with `HookedTransformer.from_pretrained(...)`; see `interp.loading`.
    """

    _cache_grad_mode = staticmethod(torch.no_grad)  # how run_with_cache runs its forward (without incl_bwd)

    def __init__(self, cfg: Config, tokenizer: Any = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.W_E = nn.Parameter(torch.empty(cfg.d_vocab, cfg.d_model))
        self.hook_embed = HookPoint("batch pos d_model")
        if factory.learned_positions(cfg):
            self.W_pos = nn.Parameter(torch.empty(cfg.n_ctx, cfg.d_model))
            self.hook_pos_embed = HookPoint("batch pos d_model")
            self._embed = _token_and_position_embedding
        else:  # rotary: positions act inside attention, nothing is added to the residual stream
            self._embed = _token_embedding
        self.blocks = nn.ModuleList(factory.blocks(cfg))
        self.ln_final = factory.norm(cfg)()
        self.W_U = nn.Parameter(torch.empty(cfg.d_model, cfg.d_vocab))
        self.b_U = nn.Parameter(torch.zeros(cfg.d_vocab))
        self.processing: dict[str, bool] = {step: False for step in processing_module.STEPS}
        self.hook_dict: dict[str, HookPoint] = hook_table(self)
        # Hooking these changes how a block computes: only an explicit name turns them on, never a predicate.
        self.opt_in_names = frozenset(name for name, point in self.hook_dict.items() if point.opt_in)
        self._windowed = any(block.attn.window is not None for block in self.blocks)  # masks must then be contiguous

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ("W_pos", "hook_pos_embed"):
                raise AttributeError(f"This {self.cfg.model_type} model has rotary positions (applied to q and k in each "
                                     f"layer, see attn.hook_rot_q/hook_rot_k), so it has no {name}.") from None
            raise

    # ----- hooks -----------------------------------------------------------------------------
    def hook_names(self) -> list[str]:
        """Every hook name, in forward order (see `interp.names` for shapes)."""
        return list(self.hook_dict)

    def hook_points(self) -> dict[str, HookPoint]:
        return dict(self.hook_dict)

    def hook_shapes(self) -> dict[str, str]:
        """Every hook name and the shape of what it sees, as declared by its module (e.g. "batch pos n_kv_heads d_head")."""
        return {name: point.shape for name, point in self.hook_dict.items()}

    def hook_point(self, name: str) -> HookPoint:
        if name not in self.hook_dict:
            raise unknown_name_error(name, self.hook_dict)
        return self.hook_dict[name]

    def add_hook(self, name: str | Callable[[str], bool], fn: HookFn, direction: str = "fwd") -> None:
        """Attach a hook that stays until `reset_hooks()`. Prefer the `hooks()` context manager."""
        for hook_name in resolve_names(self.hook_dict, name, named_only=self.opt_in_names):
            self.hook_dict[hook_name].add_hook(fn, direction)

    def reset_hooks(self) -> None:
        """Remove every hook from every hook point."""
        for point in self.hook_dict.values():
            point.remove_hooks("both", including_permanent=True)

    @contextmanager
    def hooks(self, fwd_hooks: HookList = (), bwd_hooks: HookList = ()) -> Iterator[HookedTransformer]:
        """Attach `(name_or_filter, fn)` hooks inside a `with` block; removed on exit, even after an error.

        `fn(activation, hook)` returns a replacement tensor of the same shape, or None to only read.
        """
        with attached(self.hook_dict, fwd_hooks, bwd_hooks, named_only=self.opt_in_names):
            yield self

    def run_with_hooks(self, input: ModelInput, fwd_hooks: HookList = (), bwd_hooks: HookList = (),
                       **forward_kwargs: Any) -> Any:
        """`model(input, **forward_kwargs)` with temporary hooks (removed afterwards, even on error)."""
        with self.hooks(fwd_hooks, bwd_hooks):
            return self(input, **forward_kwargs)

    # ----- forward ---------------------------------------------------------------------------
    def forward(self, input: ModelInput | Float[Tensor, "batch pos d_model"], return_type: ReturnType = "logits",
                loss_per_token: bool = False, prepend_bos: bool | None = None, stop_at_layer: int | None = None, *,
                attention_mask: Int[Tensor, "batch pos"] | Bool[Tensor, "batch pos"] | None = None,
                padding_side: Literal["right", "left"] | None = None, start_at_layer: int | None = None,
                tokens: Int[Tensor, "batch pos"] | None = None, past_kv_cache: KVCache | None = None) -> Any:
        """Run the model on text or token ids `[batch, pos]`.

        return_type: "logits" `[batch, pos, d_vocab]`, "loss" (mean next-token cross-entropy over real
        targets), "both" `(logits, loss)`, or None (skips ln_final and the unembedding). `loss_per_token=True`
        gives `[batch, pos-1]` instead, NaN where the target or the token predicting it is padding.

        Padding. A list of strings is padded on `padding_side` ("right" by default) and masked for you.
        Token ids take `attention_mask` `[batch, pos]` (1 = real token, 0 = padding, as `transformers`), or
        `padding_side` alone to mask the run of `model.pad_token_id` at that end of each row. Real tokens never
        attend to padding and take the positions they have alone, so each row equals its prompt run alone;
        a padded position attends only to itself (defined, never NaN, and read by nothing real).

        Partial forwards. `stop_at_layer=k` returns the residual stream before block k `[batch, pos, d_model]`
        (a negative k counts from the end, as a slice). `start_at_layer=k` takes that residual stream as `input`
        and runs blocks k.. (pass `tokens=` for a loss, `attention_mask=` for padding), as in TransformerLens.

        `past_kv_cache`: a `KVCache` of the tokens before these; the forward runs only the new tokens, attends
        to the cached ones as well, and appends its keys and values (`attention_mask` covers the new tokens).
        `prepend_bos` applies to text input only.
        """
        if return_type not in ("logits", "loss", "both", None):
            raise ValueError(f"return_type must be 'logits', 'loss', 'both' or None, got {return_type!r}.")
        start, stop = self._layer_range(start_at_layer, stop_at_layer)
        if past_kv_cache is not None and stop is not None:
            raise ValueError("stop_at_layer with past_kv_cache would leave the cache without the later layers' "
                             "keys and values; run the full forward, or drop past_kv_cache.")
        if start_at_layer is None:
            if tokens is not None:
                raise ValueError("tokens= goes with start_at_layer (the input is then a residual stream); "
                                 "pass the token ids as the input instead.")
            if prepend_bos is None and past_kv_cache is not None and len(past_kv_cache) and tokens_module.is_text(input):
                prepend_bos = False  # text after cached tokens continues them
            tokens, mask = self.tokens_and_mask(input, attention_mask, padding_side, prepend_bos)
            residual, (batch, n_pos) = None, tokens.shape
        else:
            mask = self._residual_mask(attention_mask, padding_side, input)
            residual = self._checked_residual(input, start)
            batch, n_pos = residual.shape[:2]
            if tokens is not None:
                tokens = self._checked_tokens(tokens)
                if tuple(tokens.shape) != (batch, n_pos):
                    raise ValueError(f"tokens {tuple(tokens.shape)} must match the residual stream's [batch, pos] "
                                     f"{(batch, n_pos)}.")
        if return_type in ("loss", "both"):
            if tokens is None:
                raise ValueError("The loss needs the token ids: with start_at_layer, pass tokens=[batch, pos] ids.")
            if n_pos < 2:
                raise ValueError("The loss needs at least 2 tokens per sequence (it predicts token i+1 from i).")
        context = self._context(mask, batch, n_pos, past_kv_cache, start)
        if residual is None:
            residual = self._embed(self, tokens, context.position_ids)
        for block in self.blocks[start:stop]:
            residual = block(residual, context)
        output = self._output(residual, stop, return_type, tokens, loss_per_token, mask)
        context.commit()  # only now: a forward that raised anywhere leaves a KVCache as it was
        return output

    def _output(self, residual: Float[Tensor, "batch pos d_model"], stop: int | None, return_type: ReturnType,
                tokens: Tensor | None, loss_per_token: bool, mask: Tensor | None) -> Any:
        """What `forward` returns from the last residual stream it computed."""
        if stop is not None:
            return residual
        if return_type is None:  # ln_final runs only if its hooks want to see it; no unembedding
            if self.ln_final.hook_scale.has_hooks or self.ln_final.hook_normalized.has_hooks:
                self.ln_final(residual)
            return None
        logits = self._unembed(self.ln_final(residual))
        if return_type == "logits":
            return logits
        loss = next_token_loss(logits, tokens, per_token=loss_per_token, attention_mask=mask)
        return loss if return_type == "loss" else (logits, loss)

    def _unembed(self, normalized: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_vocab"]:
        return affine(normalized, self.W_U, self.b_U)

    def _layer_range(self, start_at_layer: int | None, stop_at_layer: int | None) -> tuple[int, int | None]:
        """[start, stop) of the blocks to run, as non-negative indices (stop None: to the end)."""
        n_layers = self.cfg.n_layers
        for name, value in (("start_at_layer", start_at_layer), ("stop_at_layer", stop_at_layer)):
            if value is not None and not -n_layers <= value <= n_layers:
                raise ValueError(f"{name}={value} is outside [{-n_layers}, {n_layers}]: blocks [start, stop) run, "
                                 "and a negative value counts from the end as in a slice.")
        start = 0 if start_at_layer is None else start_at_layer if start_at_layer >= 0 else n_layers + start_at_layer
        stop = None if stop_at_layer is None else stop_at_layer if stop_at_layer >= 0 else n_layers + stop_at_layer
        if stop is not None and stop < start:
            raise ValueError(f"stop_at_layer={stop_at_layer} comes before start_at_layer={start_at_layer}.")
        return start, stop

    def _check_mask(self, key_mask: Bool[Tensor, "batch key_pos"]) -> None:
        tokens_module.check_rows_have_tokens(key_mask)
        if self._windowed:
            tokens_module.check_contiguous(key_mask)

    def _checked_residual(self, residual: Any, start: int) -> Float[Tensor, "batch pos d_model"]:
        if not isinstance(residual, Tensor) or not residual.is_floating_point() or residual.ndim != 3 \
                or residual.shape[-1] != self.cfg.d_model:
            what = tuple(residual.shape) if isinstance(residual, Tensor) else type(residual).__name__
            raise ValueError(f"With start_at_layer={start} the input is the residual stream before block {start}, "
                             f"a float [batch, pos, d_model={self.cfg.d_model}] tensor (e.g. "
                             f"cache['resid_pre', {start}]), got {what}; pass the token ids as tokens=.")
        if residual.shape[1] > self.cfg.n_ctx:
            raise ValueError(f"The residual stream has {residual.shape[1]} positions, more than n_ctx={self.cfg.n_ctx}.")
        return residual

    def _context(self, mask: Bool[Tensor, "batch pos"] | None, batch: int, n_pos: int,
                 cache: KVCache | None, start: int = 0) -> Context:
        device = self.W_E.device
        if cache is None:
            if mask is not None:
                self._check_mask(mask)
            return Context(positions_from_mask(mask, n_pos, batch, device), mask)
        if any(layer < start for layer in cache.keys):
            raise ValueError(f"This KVCache holds keys of blocks before start_at_layer={start}, which this forward "
                             f"would not extend; use a cache of blocks {start}.. only, or run the full forward.")
        if cache.batch_size not in (None, batch):
            raise ValueError(f"The KVCache holds a batch of {cache.batch_size}, but this input has {batch} rows; "
                             "use one cache per batch.")
        if len(cache) + n_pos > self.cfg.n_ctx:
            raise ValueError(f"{len(cache)} cached + {n_pos} new positions exceed n_ctx={self.cfg.n_ctx}.")
        new_mask = torch.ones(batch, n_pos, dtype=torch.bool, device=device) if mask is None else mask
        positions = positions_from_mask(new_mask, n_pos, batch, device, cache.next_positions())
        context = CachedContext(positions, new_mask, cache)
        if context.padded:
            self._check_mask(context.full_mask)
        return context

    def run_with_cache(self, input: ModelInput, names_filter: NamesFilter = None, device: Any = None,
                       dtype: torch.dtype | None = None, incl_bwd: bool = False,
                       stop_at_layer: int | None = None, return_type: ReturnType = "logits",
                       **forward_kwargs: Any) -> tuple[Any, ActivationCache]:
        """Run the model and return `(output, cache)` of the activations named by `names_filter`.

        names_filter: None (every hook except the opt-in per-head ones, see `interp.names`), a name,
        a list of names, or a predicate on names. Opt-in points are cached only when named explicitly:
        a predicate never selects them (it would change ln1's shapes). The cache holds references, not copies, unless
        `device`/`dtype` ask for a conversion. With `return_type=None` and only names from early
        layers, the forward stops after the last layer needed. `incl_bwd=True` also caches
        gradients (`name + "_grad"`) of the scalar output (use return_type="loss"), without
        touching the parameters' `.grad`; otherwise the run is under `torch.no_grad()`.
        """
        default = [name for name in self.hook_dict if name not in self.opt_in_names]
        selected = resolve_names(self.hook_dict, names_filter, default=default, named_only=self.opt_in_names)
        input, mask, forward_kwargs = self._resolved_input(input, forward_kwargs)
        # Patterns and LayerNorm parts nobody hooks are computed from q/k or the LN input when first read
        # (not with a KVCache: the scores would need the cached keys too).
        plan = {} if incl_bwd or forward_kwargs.get("past_kv_cache") is not None else \
            {name: how for name in selected if (how := derivation(self, name, selected, mask))}
        sources = {source for source_names, _ in plan.values() for source in source_names}
        captured = [name for name in selected if name not in plan]
        store: dict[str, Tensor] = {}
        raw: dict[str, Tensor] = {}

        def save(activation: Tensor, hook: HookPoint) -> None:
            if hook.name in sources:  # inputs of derived entries: moved to `device`, kept at full precision
                raw[hook.name] = activation.detach() if device is None else activation.detach().to(device)
            if hook.name in wanted:
                store[hook.name] = _converted(activation.detach(), device, dtype)

        def save_grad(grad: Tensor, hook: HookPoint) -> None:
            store[hook.name + "_grad"] = _converted(grad.detach(), device, dtype)

        wanted = set(captured)
        to_run = captured + sorted(sources - wanted)
        start = forward_kwargs.get("start_at_layer")
        if start is not None and explicit_filter(names_filter):
            first = self._layer_range(start, None)[0]
            skipped = [name for name in to_run if hook_names_table.layer_of(name, self.cfg.n_layers) < first]
            if skipped:
                raise ValueError(f"start_at_layer={start} runs blocks {first}.. only, so {skipped[:3]} would never be "
                                 "cached; ask for names of those blocks, or run the full forward.")
        stops_early = stop_at_layer is None and return_type is None and not incl_bwd and bool(selected) and \
            forward_kwargs.get("past_kv_cache") is None
        if stops_early:
            last = max(hook_names_table.layer_of(name, self.cfg.n_layers) for name in to_run)
            first = 0 if start is None else self._layer_range(start, None)[0]
            stop_at_layer = max(last + 1, first) if last < self.cfg.n_layers else None
        fwd_hooks = [(name, save) for name in to_run]
        if not incl_bwd:
            with self._cache_grad_mode(), self.hooks(fwd_hooks):
                output = self(input, return_type=return_type, stop_at_layer=stop_at_layer, **forward_kwargs)
            if stops_early:
                output = None  # the residual stream of the layer we stopped at is not the asked-for output
            # Only what this run reached: stop_at_layer may have ended it before some names.
            derived = {name: how for name, how in plan.items() if all(source in raw for source in how[0])}
            order = [name for name in selected if name in store or name in derived]
            return output, ActivationCache(store, self, derived=derived, inputs=raw, order=order, dtype=dtype,
                                           from_run=True, attention_mask=self._cache_mask(mask, input))
        roots: list[Tensor] = []

        def make_root(activation: Tensor, hook: HookPoint) -> Tensor:
            roots.append(activation.detach().requires_grad_(True))  # gradients flow from here, not into weights
            return roots[-1]

        root_hooks = [(name, make_root) for name in ("hook_embed", "hook_pos_embed") if name in self.hook_dict]
        with torch.enable_grad(), self.hooks(root_hooks + fwd_hooks, [(name, save_grad) for name in selected]):
            output = self(input, return_type=return_type, stop_at_layer=stop_at_layer, **forward_kwargs)
            scalar = output[1] if return_type == "both" else output
            if not isinstance(scalar, Tensor) or scalar.numel() != 1:
                raise ValueError("incl_bwd=True differentiates a scalar output: use return_type='loss' or 'both'.")
            torch.autograd.grad(scalar, roots)
        order = [name for name in selected if name in store] + [name + "_grad" for name in selected if name + "_grad" in store]
        return output, ActivationCache(store, self, order=order, from_run=True,
                                       attention_mask=self._cache_mask(mask, input))

    def _resolved_input(self, input: Any, forward_kwargs: dict[str, Any]
                        ) -> tuple[Any, Bool[Tensor, "batch pos"] | None, dict[str, Any]]:
        """(input, padding mask, forward kwargs) with text tokenised and the mask checked, so a run and the
        cache it fills agree on the padding."""
        kwargs = dict(forward_kwargs)
        attention_mask, padding_side = kwargs.pop("attention_mask", None), kwargs.pop("padding_side", None)
        if kwargs.get("start_at_layer") is not None:
            mask = self._residual_mask(attention_mask, padding_side, input)
            if mask is not None:
                kwargs["attention_mask"] = mask
        else:
            input, mask = self.tokens_and_mask(input, attention_mask, padding_side, kwargs.pop("prepend_bos", None))
            # Resolved once, here: an explicit mask (all ones: no padding), so the forward does not resolve it again.
            kwargs["attention_mask"] = torch.ones_like(input, dtype=torch.bool) if mask is None else mask
        return input, mask, kwargs

    def _residual_mask(self, attention_mask: Any, padding_side: str | None, residual: Any
                       ) -> Bool[Tensor, "batch pos"] | None:
        """The padding mask (None: no padding) of a residual-stream input (start_at_layer), which has no ids to
        find padding in."""
        if padding_side is not None:
            raise ValueError("padding_side finds padding in token ids; with start_at_layer pass attention_mask=.")
        if attention_mask is None:
            return None
        shape = tuple(residual.shape[:2]) if isinstance(residual, Tensor) else (0, 0)
        mask = tokens_module.check_attention_mask(attention_mask, shape, self.W_E.device)
        return None if bool(mask.all()) else mask

    def _cache_mask(self, mask: Bool[Tensor, "batch pos"] | None, input: Tensor) -> Bool[Tensor, "batch pos"]:
        return torch.ones(input.shape[:2], dtype=torch.bool, device=input.device) if mask is None else mask

    # ----- tokens ----------------------------------------------------------------------------
    def to_tokens(self, input: str | list[str], prepend_bos: bool | None = None,
                  padding_side: Literal["right", "left"] = "right") -> Int[Tensor, "batch pos"]:
        """Tokenise text (one string or a list, padded on `padding_side`) to `[batch, pos]` on the model's
        device. A padded batch needs its mask too: use `tokenize`, or pass the text itself to the model."""
        return self.tokenize(input, prepend_bos, padding_side)[0]

    def tokenize(self, input: str | list[str], prepend_bos: bool | None = None,
                 padding_side: Literal["right", "left"] = "right"
                 ) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, "batch pos"]]:
        """`(tokens, attention_mask)` of text, shorter rows padded on `padding_side` with `pad_token_id`
        (1 = real token, 0 = padding); pass both on: `model(tokens, attention_mask=attention_mask)`."""
        tokens, mask = tokens_module.to_tokens(self.tokenizer, input, self._prepend_bos(prepend_bos),
                                               self.cfg.bos_token_id, self.pad_token_id, padding_side)
        return self._checked_tokens(tokens), mask.to(self.W_E.device)

    @property
    def pad_token_id(self) -> int | None:
        """The id padding is filled with: the tokenizer's pad id, else the config's, else None (text is then
        padded with the EOS id; the attention mask, not the id, marks padding)."""
        pad = getattr(self.tokenizer, "pad_token_id", None)
        return pad if isinstance(pad, int) else self.cfg.pad_token_id

    def tokens_and_mask(self, input: ModelInput, attention_mask: Any = None, padding_side: str | None = None,
                        prepend_bos: bool | None = None) -> tuple[Int[Tensor, "batch pos"], Bool[Tensor, "batch pos"] | None]:
        """Token ids and their padding mask (None: no padding) for any model input (see `forward`)."""
        if tokens_module.is_text(input):
            if attention_mask is not None:
                raise ValueError("Text is padded and masked for you, so attention_mask goes with token ids only; "
                                 "pass the texts alone, or model.tokenize(texts) and its mask.")
            tokens, mask = self.tokenize(input, prepend_bos, padding_side or "right")
            mask = mask.bool()
        else:
            tokens = self._checked_tokens(input)
            if attention_mask is not None:
                mask = tokens_module.check_attention_mask(attention_mask, tuple(tokens.shape), tokens.device)
            elif padding_side is not None:
                mask = tokens_module.mask_from_padding(tokens, self.pad_token_id, padding_side, self.cfg.bos_token_id,
                                                       self.cfg.eos_token_ids)
            else:
                return tokens, None
        return tokens, None if bool(mask.all()) else mask

    def to_string(self, tokens: Int[Tensor, "... pos"] | list[int]) -> str | list[str]:
        return tokens_module.to_string(self.tokenizer, tokens)

    def to_str_tokens(self, input: str | Int[Tensor, "pos"] | Int[Tensor, "1 pos"] | list[int],
                      prepend_bos: bool | None = None) -> list[str]:
        """Each token of one sequence as its own string (for labels on attention patterns).

        One sequence only: a `[batch, pos]` tensor with batch > 1 or a list of strings raises ValueError
        (use `[model.to_str_tokens(row) for row in tokens]`); `prepend_bos` applies to text only.
        """
        if isinstance(input, list) and input and all(isinstance(x, str) for x in input):
            raise ValueError(f"to_str_tokens takes one sequence, got a list of {len(input)} strings; "
                             "use [model.to_str_tokens(text) for text in texts].")
        tokens = self.to_tokens(input, prepend_bos) if isinstance(input, str) else self._checked_tokens(input)
        if tokens.shape[0] != 1:
            raise ValueError(f"to_str_tokens takes one sequence, got a batch of {tokens.shape[0]} "
                             f"(shape {tuple(tokens.shape)}); use [model.to_str_tokens(row) for row in tokens].")
        return tokens_module.to_str_tokens(self.tokenizer, tokens[0])

    def _prepend_bos(self, prepend_bos: bool | None) -> bool:
        return self.cfg.bos_token_id is not None if prepend_bos is None else prepend_bos

    def _checked_tokens(self, tokens: Any) -> Int[Tensor, "batch pos"]:
        return tokens_module.check_tokens(tokens, self.cfg.d_vocab, self.cfg.n_ctx, self.W_E.device)

    # ----- generation ------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, input: str | list[str] | Tensor | list[int], max_new_tokens: int = 20, temperature: float = 0.0,
                 top_k: int | None = None, seed: int | None = None, stop_at_eos: bool = False,
                 prepend_bos: bool | None = None, *, attention_mask: Int[Tensor, "batch pos"] | None = None,
                 use_past_kv_cache: bool = True) -> str | list[str] | Int[Tensor, "batch pos"]:
        """Continue text or tokens; greedy at temperature 0, else seeded sampling (optionally top-k).

        Text returns text: the prompt and its continuation, without the BOS tokenising added (`out[len(prompt):]`
        is the new text); a list of strings is left-padded and masked, and each row continues exactly as its
        prompt alone would (greedy), returned as a list without padding. Token ids `[batch, pos]` return
        `[batch, pos + new]` ids, the prompt included; a padded batch takes `attention_mask` and must be
        left-padded (every row ends in a real token). `stop_at_eos`: a row that emits any of the config's EOS
        ids keeps emitting `eos_token_id`, and generation ends when every row has.

        Hooks attached with `model.hooks(...)` act at every step. With `use_past_kv_cache=True` (the default)
        the first step runs the whole prompt and each later step only the new token, so a hook sees
        `[batch, 1, ...]` activations then (keys and values of earlier tokens come from the cache: an edit of
        hook_k/hook_v acts on the token where it was made), and attention patterns `[batch, heads, 1, pos]`.
        `use_past_kv_cache=False` reruns the whole sequence at each step, so hooks see full activations.
        """
        return generation.generate(self, input, max_new_tokens, temperature, top_k, seed, stop_at_eos, prepend_bos,
                                   attention_mask, use_past_kv_cache)

    # ----- weights, stacked over layers (circuits names) -------------------------------------
    def _stack(self, get: Callable[[Block], Tensor]) -> Tensor:
        """A new `[layer, ...]` tensor: a COPY, so writing into `model.W_K[...]` changes nothing; edit a block's
        own weight (`model.blocks[l].attn.W_K`) or the state dict instead."""
        return torch.stack([get(block) for block in self.blocks])

    def _apply(self, fn: Callable[[Tensor], Tensor], *args: Any, **kwargs: Any) -> HookedTransformer:
        """`.to()`, `.double()`, `.cuda()`, ... convert each parameter on its own, which would give a tied W_U its
        own storage while `cfg.tie_word_embeddings` says tied; re-tie it as a view of the converted W_E."""
        tied = self._tied()
        super()._apply(fn, *args, **kwargs)
        if tied:
            self._tie()
        return self

    def __deepcopy__(self, memo: dict) -> HookedTransformer:
        """A deep copy whose tied W_U is again a view of its W_E (Parameter.__deepcopy__ clones each one apart)."""
        tied = self._tied()
        self.__dict__["__deepcopy__"] = None  # the default deepcopy for this one call
        try:
            copied = copy.deepcopy(self, memo)
        finally:
            del self.__dict__["__deepcopy__"]
        del copied.__dict__["__deepcopy__"]
        if tied:
            copied._tie()
        return copied

    def _tied(self) -> bool:
        return self.cfg.tie_word_embeddings and not self.W_E.is_meta and \
            self.W_U.untyped_storage().data_ptr() == self.W_E.untyped_storage().data_ptr()

    def _tie(self) -> None:
        self.W_U = nn.Parameter(self.W_E.T, requires_grad=self.W_U.requires_grad)

    W_Q = property(lambda self: self._stack(lambda b: b.attn.W_Q), doc="[layer, n_heads, d_model, d_head]")
    W_K = property(lambda self: self._stack(lambda b: b.attn.W_K),
                   doc="[layer, n_heads, d_model, d_head]: per query head (GQA: each kv head repeated; see W_K_kv)")
    W_V = property(lambda self: self._stack(lambda b: b.attn.W_V),
                   doc="[layer, n_heads, d_model, d_head]: per query head (GQA: each kv head repeated; see W_V_kv)")
    W_K_kv = property(lambda self: self._stack(lambda b: b.attn.W_K_kv), doc="[layer, n_kv_heads, d_model, d_head]")
    W_V_kv = property(lambda self: self._stack(lambda b: b.attn.W_V_kv), doc="[layer, n_kv_heads, d_model, d_head]")
    W_O = property(lambda self: self._stack(lambda b: b.attn.W_O), doc="[layer, n_heads, d_head, d_model]")
    b_Q = property(lambda self: self._stack(lambda b: b.attn.b_Q), doc="[layer, n_heads, d_head]")
    b_K = property(lambda self: self._stack(lambda b: b.attn.b_K), doc="[layer, n_heads, d_head] (per query head)")
    b_V = property(lambda self: self._stack(lambda b: b.attn.b_V), doc="[layer, n_heads, d_head] (per query head)")
    b_O = property(lambda self: self._stack(lambda b: b.attn.b_O), doc="[layer, d_model]")
    W_in = property(lambda self: self._stack(lambda b: b.mlp.W_in), doc="[layer, d_model, d_mlp] (gated: the linear branch)")
    b_in = property(lambda self: self._stack(lambda b: b.mlp.b_in), doc="[layer, d_mlp]")
    W_gate = property(lambda self: self._stack(lambda b: _gated(b).W_gate), doc="[layer, d_model, d_mlp] (gated MLPs only)")
    b_gate = property(lambda self: self._stack(lambda b: _gated(b).b_gate), doc="[layer, d_mlp] (gated MLPs only)")
    W_out = property(lambda self: self._stack(lambda b: b.mlp.W_out), doc="[layer, d_mlp, d_model]")
    b_out = property(lambda self: self._stack(lambda b: b.mlp.b_out), doc="[layer, d_model]")

    @property
    @torch.no_grad()
    def QK(self) -> FactoredMatrix:
        """Every head's W_QK = W_Q W_Kᵀ as a `FactoredMatrix` `[layer, head, d_model, d_model]` (rank <= d_head):
        the bilinear form `x_query @ W_QK @ x_keyᵀ` that gives the attention score (before 1/sqrt(d_head)
        and biases). Per query head (GQA: the shared key factor repeated). On rotary models it leaves out the
        rotation, which makes the score depend on the relative position too. `interp.analysis.circuits.qk_circuit`
        selects layers and heads of it."""
        return FactoredMatrix(self.W_Q, self.W_K.transpose(-1, -2))

    @property
    @torch.no_grad()
    def OV(self) -> FactoredMatrix:
        """Every head's W_OV = W_V W_O as a `FactoredMatrix` `[layer, head, d_model, d_model]` (rank <= d_head):
        what a head writes to the residual stream per unit of attention to a source vector `x` (`x @ W_OV`)."""
        return FactoredMatrix(self.W_V, self.W_O)

    def _replace_config(self, **changes: Any) -> None:
        """Swap in `dataclasses.replace(cfg, **changes)` (processing does, when it unties W_U)."""
        self.cfg = dataclasses.replace(self.cfg, **changes)

    def process_weights_(self, fold_ln: bool | None = None, center_writing_weights: bool | None = None,
                         center_unembed: bool | None = None, fold_value_biases: bool | None = None) -> HookedTransformer:
        """Fold norms, centre writing weights and the unembedding, fold value biases (outputs unchanged, see
        `interp.processing`). None: each step where valid for this architecture (RMSNorm models skip
        center_writing_weights); True insists (and raises where invalid); False skips. Recorded in `self.processing`."""
        return processing_module.process_weights_(self, fold_ln, center_writing_weights, center_unembed,
                                                  fold_value_biases)

    @classmethod
    def from_pretrained(cls, name_or_model: Any, *, tokenizer: Any = None, config: Any = None, device: Any = None,
                        dtype: torch.dtype | str | None = None, process: bool = False, fold_ln: bool | None = None,
                        center_writing_weights: bool | None = None, center_unembed: bool | None = None,
                        fold_value_biases: bool | None = None) -> HookedTransformer:
        """Load a supported family's weights (GPT-2, GPT-NeoX/Pythia, Llama, Mistral, Qwen2): a hub id, a local
        directory, a `.safetensors` file, a `transformers` model, or a bundled model such as "interp-toy" (see
        `interp.loading.load_weights` for sources, `config=`, `dtype=`). Raw weights (equal to `transformers`)
        unless `process=True` (every step of `interp.processing` valid for the architecture) or one of `fold_ln=`, `center_writing_weights=`, `center_unembed=`,
        `fold_value_biases=` (each overrides `process`). Builds an instance of `cls`."""
        loaded = loading_module.load_weights(name_or_model, tokenizer=tokenizer, config=config, device=device,
                                             dtype=dtype)
        model = cls.from_state_dict(loaded.cfg, loaded.state, loaded.tokenizer)
        steps = loading_module.processing_steps(process, fold_ln=fold_ln, center_writing_weights=center_writing_weights,
                                                center_unembed=center_unembed, fold_value_biases=fold_value_biases)
        return model.process_weights_(**steps) if any(flag is not False for flag in steps.values()) else model

    @classmethod
    def from_state_dict(cls, cfg: Config, state: dict[str, Tensor], tokenizer: Any = None) -> HookedTransformer:
        """A model (in eval mode) whose parameters are the given interp-named tensors: assigned, not copied."""
        with torch.device("meta"):
            model = cls(cfg, tokenizer)
        model.load_state_dict(state, strict=True, assign=True)
        return model.eval()

    def __repr__(self) -> str:
        heads = f"n_heads={self.cfg.n_heads}" + (f", n_kv_heads={self.cfg.n_kv_heads}"
                                                 if self.cfg.n_kv_heads != self.cfg.n_heads else "")
        return f"HookedTransformer({self.cfg.model_name!r}, {self.cfg.model_type}, n_layers={self.cfg.n_layers}, " \
               f"{heads}, d_model={self.cfg.d_model}, d_vocab={self.cfg.d_vocab})"


def _token_embedding(model: HookedTransformer, tokens: Int[Tensor, "batch pos"], positions: Int[Tensor, "batch pos"]
                     ) -> Float[Tensor, "batch pos d_model"]:
    return model.hook_embed(F.embedding(tokens, model.W_E))


def _token_and_position_embedding(model: HookedTransformer, tokens: Int[Tensor, "batch pos"],
                                  positions: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_model"]:
    # A gather, not a slice of W_pos: a hook may edit its input in place, and must never reach the weights.
    return model.hook_embed(F.embedding(tokens, model.W_E)) + model.hook_pos_embed(F.embedding(positions, model.W_pos))


def _gated(block: Block) -> Any:
    if not hasattr(block.mlp, "W_gate"):
        raise AttributeError("W_gate exists only on gated MLPs (Llama, Mistral, Qwen2); this model's MLP is not gated.")
    return block.mlp


def next_token_loss(logits: Float[Tensor, "batch pos d_vocab"], tokens: Int[Tensor, "batch pos"],
                    per_token: bool = False, attention_mask: Bool[Tensor, "batch pos"] | None = None
                    ) -> Float[Tensor, ""] | Float[Tensor, "batch pos_minus_1"]:
    """Cross-entropy of predicting token i+1 from position i (as `transformers` shifts labels).

    With an attention mask, only targets that are real and predicted from a real token count: the mean is
    over those, and `per_token=True` puts NaN at the others (so `.nanmean()` is the masked mean)."""
    losses = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), tokens[:, 1:].flatten(), reduction="none")
    losses = losses.view(tokens.shape[0], -1)
    if attention_mask is None:
        return losses if per_token else losses.mean()
    real = attention_mask[:, :-1] & attention_mask[:, 1:]
    if per_token:
        return losses.masked_fill(~real, float("nan"))
    if not bool(real.any()):
        raise ValueError("No row has two real tokens in a row, so there is no next-token target to score; "
                         "the loss needs sequences of at least 2 real tokens.")
    return losses[real].mean()


def explicit_filter(names_filter: NamesFilter) -> bool:
    """Whether a names_filter names hooks (a name or a list), rather than selecting by default or predicate."""
    return isinstance(names_filter, str) or (names_filter is not None and not callable(names_filter))


def _converted(tensor: Tensor, device: Any, dtype: torch.dtype | None) -> Tensor:
    if dtype is not None and tensor.is_floating_point():
        tensor = tensor.to(dtype)
    return tensor if device is None else tensor.to(device)
