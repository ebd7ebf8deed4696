"""Activation patching and path patching: which activations, and which paths between heads, carry
the information that makes a clean prompt behave differently from a corrupted one.

Three methods, three questions (path patching lives in `interp.analysis.path_patching`, attribution
patching in `interp.analysis.attribution`):

- **Activation patching** (causal tracing, Meng et al. 2022, "Locating and Editing Factual
  Associations in GPT"): if this one activation took its value from the other run, how much of the
  behaviour comes back? Cost: 2 forwards for the two references, then one forward per site, run
  `batch_size` sites at a time (the input is repeated along the batch axis, one copy per site).
- **Path patching** (Wang et al. 2022, "Interpretability in the Wild", IOI): how much does a sender
  head matter *through its direct path* into some receivers (heads' queries, keys or values, or the
  logits)? Cost: 2 forwards for the caches, then 2 forwards per sender (batched over senders).
- **Attribution patching** (Nanda 2023; Syed et al. 2023): a gradient estimate of activation
  patching for every site at once. Cost: 1 forward + 1 forward-and-backward.

Direction. `direction="denoise"` (default) runs the corrupted input and patches in activations from
the clean run: a site that restores the clean metric is *sufficient* to carry the behaviour.
`direction="noise"` runs the clean input and patches in corrupted activations: a site that destroys
the behaviour is *necessary*. (Swapping the two token arguments gives the same numbers with the
`clean_metric`/`corrupted_metric` names swapped.)

The metric contract. `metric(logits) -> scalar tensor`, where `logits` is `[batch, pos, d_vocab]`
for exactly the `batch` sequences you passed as tokens (a mean logit difference, say). Batched
patching calls it once per site on that site's rows, `logits[i*batch:(i+1)*batch]`, so a metric
written for your own input works unchanged. Anything with more than one element raises a
`ValueError`: reduce it (e.g. `.mean()`) first.

Exactness. Every run inside one patching call has the same hook points hooked, so every run takes
the same compute path (hooking `hook_pattern` switches a layer from SDPA to explicit attention,
which differs at about 1e-7). A site (or path) whose patched value equals the unpatched one bitwise
is not run, and gets the unpatched metric exactly: patching a run with its own activations changes
nothing. Other entries of a batched run may differ from one-site-per-forward runs by about 1e-7 in
fp32, because some attention kernels round differently at different batch sizes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Union

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from interp.analysis.patch_result import Direction, PatchResult
from interp.hooks import HookFn, HookPoint
from interp.components.context import KVCache
from interp.model import HookedTransformer
from interp.names import layer_of
from interp.tokens import check_tokens, is_text

Metric = Callable[[Float[Tensor, "batch pos d_vocab"]], Float[Tensor, ""]]
Tokens = Union[str, list, Int[Tensor, "batch pos"]]
HookList = Sequence[tuple[str, HookFn]]


@dataclass(frozen=True)
class Site:
    """One activation to patch: a hook name, optionally one position and/or one head of it.

    `pos` indexes the hook's `pos` (or `query_pos`) axis and `head` its `n_heads` (or, for a grouped-query
    model's hook_k/hook_v, `n_kv_heads`) axis, as `model.hook_shapes()` lists them; None patches the whole axis.
    """

    hook_name: str
    pos: int | None = None
    head: int | None = None

    @property
    def label(self) -> str:
        index = [f"{key}={value}" for key, value in (("pos", self.pos), ("head", self.head)) if value is not None]
        return self.hook_name + (f"[{', '.join(index)}]" if index else "")


# ----- shared checks ---------------------------------------------------------------------------
def as_tokens(model: HookedTransformer, tokens: Tokens) -> Int[Tensor, "batch pos"]:
    if is_text(tokens):
        return model.to_tokens(tokens)
    return check_tokens(tokens, model.cfg.d_vocab, model.cfg.n_ctx, model.W_E.device)


def checked_pair(model: HookedTransformer, clean: Tokens, corrupted: Tokens) -> tuple[Tensor, Tensor]:
    """Clean and corrupted tokens as `[batch, pos]`, checked to align position by position."""
    clean, corrupted = as_tokens(model, clean), as_tokens(model, corrupted)
    if clean.shape != corrupted.shape:
        raise ValueError(f"Clean tokens {tuple(clean.shape)} and corrupted tokens {tuple(corrupted.shape)} must have "
                         "the same [batch, pos] shape, because patching swaps activations position by position. "
                         "Pad or align them to the same number of tokens, e.g. build both from one template.")
    return clean, corrupted


def checked_inputs(model: HookedTransformer, clean: Tokens, corrupted: Tokens, attention_mask: Any = None
                   ) -> tuple[Tensor, Tensor, Tensor | None]:
    """Clean and corrupted tokens `[batch, pos]` and their shared padding mask (None: no padding).

    Text lists are padded and masked (right padding); token ids take `attention_mask`, one mask for both
    runs, since patching swaps activations position by position and so needs the same padding in both."""
    if not (is_text(clean) or is_text(corrupted)):
        checked_pair(model, clean, corrupted)  # same shape: before the mask is checked against either
    (clean, clean_mask), (corrupted, corrupted_mask) = (model.tokens_and_mask(x, attention_mask)
                                                        for x in (clean, corrupted))
    checked_pair(model, clean, corrupted)
    if (clean_mask is None) != (corrupted_mask is None) or \
            (clean_mask is not None and not torch.equal(clean_mask, corrupted_mask)):
        raise ValueError("The clean and corrupted texts pad differently (some rows tokenise to different lengths); "
                         "patching aligns them position by position, so make each pair the same number of tokens.")
    return clean, corrupted, clean_mask


def checked_layers(model: HookedTransformer, layers: Sequence[int] | None) -> list[int]:
    n_layers = model.cfg.n_layers
    layers = list(range(n_layers)) if layers is None else list(layers)
    for layer in layers:
        if not 0 <= layer < n_layers:
            raise ValueError(f"Layer {layer} is out of range: this model has layers 0..{n_layers - 1}.")
    return layers


def scalar_metric(metric: Metric, logits: Tensor) -> Tensor:
    """metric(logits), checked to be a one-element tensor."""
    value = metric(logits)
    if isinstance(value, (int, float)):
        value = torch.tensor(float(value))
    if not isinstance(value, Tensor) or value.numel() != 1:
        shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(f"metric must return a scalar (one-element tensor) for logits of shape "
                         f"{tuple(logits.shape)}, but returned {shape}; reduce it, e.g. with .mean() over the batch.")
    return value.reshape(())


@torch.no_grad()
def check_metric_ignores_padding(metric: Metric, logits: Tensor, mask: Tensor | None) -> None:
    """ValueError if `metric` reads the logits at padded positions (`mask` False), which mean nothing: the
    metric is called once more with NaN there, and must not change (e.g. a metric of `logits[:, -1]` on a
    right-padded batch reads padding)."""
    if mask is None:
        return
    value = scalar_metric(metric, logits)
    poisoned = scalar_metric(metric, logits.masked_fill(~mask[:, :, None].to(logits.device), float("nan")))
    if not torch.equal(poisoned, value) and not (value.isnan() and poisoned.isnan()):
        rows = sorted({int(row) for row in (~mask).nonzero()[:, 0]})
        raise ValueError(f"The metric reads logits at padded positions (rows {rows} have padding; "
                         f"attention_mask is 0 there), which hold no token and mean nothing. Read each row's "
                         f"real positions only: with left padding (model.tokenize(texts, padding_side='left')) "
                         f"position -1 is each prompt's last token; with right padding index each row's last "
                         f"real token, attention_mask.sum(-1) - 1.")


def _row_metrics(metric: Metric, logits: Tensor, n_rows: int) -> list[float]:
    """The metric of each block of `len(logits) // n_rows` sequences (one block per patched site)."""
    rows = logits.shape[0] // n_rows
    return [float(scalar_metric(metric, logits[i * rows:(i + 1) * rows])) for i in range(n_rows)]


def _axes(point: HookPoint) -> tuple[int | None, int | None]:
    """The hook's position axis and head axis (n_heads or n_kv_heads; None if it has none), from its declared shape."""
    shape = point.shape.split()
    pos_axis = next((shape.index(a) for a in ("pos", "query_pos") if a in shape), None)
    return pos_axis, next((shape.index(a) for a in ("n_heads", "n_kv_heads") if a in shape), None)


def head_axis(model: HookedTransformer, hook_name: str) -> tuple[str, int]:
    """(table axis name, size) of a hook's head axis, from its declared shape: ("head", n_heads) for query-head
    hooks (q, rot_q, scores, pattern, z, result) and for key/value hooks of multi-head attention; ("kv_head",
    n_kv_heads) for hook_k/hook_v/hook_rot_k (and k/v inputs) of a grouped-query model, whose kv head g is
    read by query heads g * group .. (g + 1) * group - 1. ValueError if the hook has no head axis."""
    shape = model.hook_point(hook_name).shape.split()
    if "n_kv_heads" in shape:
        grouped = model.cfg.n_kv_heads < model.cfg.n_heads
        return ("kv_head" if grouped else "head"), model.cfg.n_kv_heads
    if "n_heads" in shape:
        return "head", model.cfg.n_heads
    raise ValueError(f"{hook_name!r} (shape {' '.join(shape)!r}) has no head axis.")


def _index(point: HookPoint, site: Site, ndim: int) -> tuple:
    """Index of the site's slice of an activation seen by `point`, batch axis excluded."""
    index: list[Any] = [slice(None)] * (ndim - 1)
    pos_axis, head_axis = _axes(point)
    for axis, value in ((pos_axis, site.pos), (head_axis, site.head)):
        if value is not None:
            index[axis - 1] = value
    return tuple(index)


def _check_site(model: HookedTransformer, site: Site, n_pos: int) -> None:
    point = model.hook_point(site.hook_name)  # KeyError with suggestions if the name is unknown
    pos_axis, head_axis = _axes(point)
    kv = "n_kv_heads" in point.shape.split()
    n_heads = model.cfg.n_kv_heads if kv else model.cfg.n_heads
    for what, value, axis, size in (("pos", site.pos, pos_axis, n_pos), ("head", site.head, head_axis, n_heads)):
        if value is not None and axis is None:
            raise ValueError(f"{site.hook_name!r} has no {what} axis; leave {what}=None for this site.")
        if value is not None and not 0 <= value < size:
            which = (f" (its head axis has the model's n_kv_heads={size} kv heads, shared by "
                     f"{model.cfg.n_heads // size} query heads each)") if what == "head" and kv and \
                size < model.cfg.n_heads else ""
            raise ValueError(f"{site.label}: {what}={value} is out of range 0..{size - 1}{which}.")


# ----- activation patching ---------------------------------------------------------------------
def patch(model: HookedTransformer, clean_tokens: Tokens, corrupted_tokens: Tokens, metric: Metric,
          sites: Sequence[Site], direction: Direction = "denoise", batch_size: int = 16,
          corrupted_hooks: HookList = (), progress: bool = True, attention_mask: Any = None) -> PatchResult:
    """The metric after patching each site on its own: `values[i]` for `sites[i]`, dims ("site",).

    direction: "denoise" patches clean activations into the corrupted run, "noise" the reverse.
    batch_size: sites patched per forward. corrupted_hooks: forward hooks that define the corrupted
    run together with `corrupted_tokens`, e.g. Gaussian noise on `hook_embed` as in causal tracing
    (pass the clean tokens as `corrupted_tokens` then). They must not depend on the batch size, and
    noise must be drawn once (a fixed tensor added in the hook, broadcasting over the batch), not by
    `randn_like` inside the hook, or each patched run would see different noise.
    attention_mask: `[batch, pos]` padding of both token inputs (text lists are padded for you).
    A site whose two activations are identical (e.g. the residual stream before the first token
    that differs) is not run: patching it is the identity, so its value is the unpatched metric.

    Exact, without full reruns. A site in block l at position p changes nothing before block l, and (attention
    being causal) nothing at positions < p. So each patched run starts at block l from the unpatched run's
    residual stream at positions >= p (`start_at_layer`), attends to that run's cached keys and values for
    the positions < p, and takes its logits there; the metric sees full `[batch, pos, d_vocab]` logits.
    Equal to `patch_by_full_reruns` to float rounding (~1e-6). Sites outside the blocks (hook_embed,
    ln_final), and sites at or after a block that `corrupted_hooks` hook, run in full.
    """
    setup = _Setup(model, clean_tokens, corrupted_tokens, metric, sites, direction, batch_size, corrupted_hooks,
                   attention_mask, full_reruns=False)
    fallback, starts = [], {}
    for i in setup.changed:
        start = setup.start_of(sites[i])
        if start is None:
            fallback.append(i)
        else:
            starts[i] = start
    # Sites of one block, by position: each forward takes `batch_size` of them and starts at the first one's
    # position (the others' runs then recompute a few unchanged positions, which is exact too).
    ordered = sorted(starts, key=lambda i: starts[i])
    chunks: list[tuple[tuple[int, int] | None, list[int]]] = []
    for i in ordered:
        if chunks and starts[i][0] == chunks[-1][0][0] and len(chunks[-1][1]) < batch_size:
            chunks[-1][1].append(i)
        else:
            chunks.append((starts[i], [i]))
    chunks += [(None, fallback[at:at + batch_size]) for at in range(0, len(fallback), batch_size)]
    with torch.no_grad():
        for start, rows in tqdm(chunks, desc="activation patching", disable=not progress):
            logits = setup.run_full(rows) if start is None else setup.run_partial(rows, *start)
            for i, value in zip(rows, _row_metrics(metric, logits, len(rows))):
                setup.values[i] = value
    return setup.result()


def patch_by_full_reruns(model: HookedTransformer, clean_tokens: Tokens, corrupted_tokens: Tokens, metric: Metric,
                         sites: Sequence[Site], direction: Direction = "denoise", batch_size: int = 16,
                         corrupted_hooks: HookList = (), progress: bool = True,
                         attention_mask: Any = None) -> PatchResult:
    """`patch`, computed the plain way: one full forward per site (`batch_size` sites per forward). The
    reference `patch` is tested against, and the baseline its speed is measured against."""
    setup = _Setup(model, clean_tokens, corrupted_tokens, metric, sites, direction, batch_size, corrupted_hooks,
                   attention_mask, full_reruns=True)
    changed = setup.changed
    with torch.no_grad():
        for at in tqdm(range(0, len(changed), batch_size), desc="activation patching", disable=not progress):
            rows = changed[at:at + batch_size]
            for i, value in zip(rows, _row_metrics(metric, setup.run_full(rows), len(rows))):
                setup.values[i] = value
    return setup.result()


class _Setup:
    """The two unpatched runs of one patching call, what they cached, and the patched runs built on them."""

    def __init__(self, model: HookedTransformer, clean_tokens: Tokens, corrupted_tokens: Tokens, metric: Metric,
                 sites: Sequence[Site], direction: Direction, batch_size: int, corrupted_hooks: HookList,
                 attention_mask: Any, full_reruns: bool) -> None:
        if direction not in ("denoise", "noise"):
            raise ValueError(f"direction must be 'denoise' (clean into corrupted) or 'noise', got {direction!r}.")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        clean, corrupted, self.mask = checked_inputs(model, clean_tokens, corrupted_tokens, attention_mask)
        for site in sites:
            _check_site(model, site, clean.shape[1])
        self.model, self.sites, self.direction = model, list(sites), direction
        self.hooked = list(dict.fromkeys(site.hook_name for site in sites))  # hooked in every run: same compute path
        n_layers = model.cfg.n_layers
        # What a partial rerun starts from: each block's input, its keys (as attention reads them) and values.
        rotary = "blocks.0.attn.hook_rot_k" in model.hook_dict
        self.k_names = [f"blocks.{l}.attn.hook_{'rot_k' if rotary else 'k'}" for l in range(n_layers)]
        self.v_names = [f"blocks.{l}.attn.hook_v" for l in range(n_layers)]
        self.resid_names = [f"blocks.{l}.hook_resid_pre" for l in range(n_layers)]
        extra = [] if full_reruns else self.k_names + self.v_names + self.resid_names
        denoise = direction == "denoise"
        store: dict[str, Tensor] = {}

        def save(activation: Tensor, hook: HookPoint) -> None:
            store[hook.name] = activation

        # Both runs save the sites' hooks; only the run the patches go into (the target) saves `extra`.
        source_saving = [(name, save) for name in self.hooked]
        target_saving = [(name, save) for name in dict.fromkeys(self.hooked + extra)]
        with torch.no_grad():
            with model.hooks(source_saving if denoise else target_saving):
                clean_logits = model(clean, attention_mask=self.mask)
            clean_cache, store = store, {}
            with model.hooks(list(corrupted_hooks) + (target_saving if denoise else source_saving)):
                corrupted_logits = model(corrupted, attention_mask=self.mask)
            check_metric_ignores_padding(metric, clean_logits, self.mask)
            self.clean_metric = float(scalar_metric(metric, clean_logits))
            self.corrupted_metric = float(scalar_metric(metric, corrupted_logits))
        self.source, self.target_cache = (clean_cache, store) if denoise else (store, clean_cache)
        self.target = corrupted if denoise else clean
        self.target_logits = corrupted_logits if denoise else clean_logits
        self.target_hooks = list(corrupted_hooks) if denoise else []
        # The last block a target hook acts in (a predicate could name any hook: then every block).
        self.last_hooked_layer = max((hook_names_layer(model, name) for name, _ in self.target_hooks), default=None)
        self.values = [self.corrupted_metric if denoise else self.clean_metric] * len(sites)
        self.changed = [i for i, site in enumerate(sites) if not _same_at(model, site, self.source, self.target_cache)]

    def start_of(self, site: Site) -> tuple[int, int] | None:
        """(block, position) a patched run of `site` can start at, or None if it must run in full."""
        layer = hook_names_layer(self.model, site.hook_name)
        if not 0 <= layer < self.model.cfg.n_layers:
            return None  # the embeddings or ln_final
        if self.last_hooked_layer is not None and self.last_hooked_layer >= layer:
            return None  # a target hook in a block the partial run covers: it sees every position
        return layer, site.pos if site.pos is not None else 0

    def run_full(self, rows: list[int]) -> Float[Tensor, "rows_batch pos d_vocab"]:
        chunk = [self.sites[i] for i in rows]
        batch = self.target.shape[0]
        patches = [(name, _patcher(chunk, name, self.source[name], batch)) for name in self.hooked]
        mask = None if self.mask is None else self.mask.repeat(len(chunk), 1)
        with self.model.hooks(self.target_hooks + patches):
            return self.model(self.target.repeat(len(chunk), 1), attention_mask=mask)

    def run_partial(self, rows: list[int], layer: int, start: int) -> Float[Tensor, "rows_batch pos d_vocab"]:
        """The patched runs of `rows` (sites in block `layer` at positions >= `start`), from the target run's caches."""
        chunk, copies = [self.sites[i] for i in rows], len(rows)
        batch = self.target.shape[0]
        cache = KVCache()
        if start > 0:
            for l in range(layer, self.model.cfg.n_layers):
                cache.keys[l] = _tiled(self.target_cache[self.k_names[l]][:, :start], copies)
                cache.values[l] = _tiled(self.target_cache[self.v_names[l]][:, :start], copies)
            past = torch.ones(batch, start, dtype=torch.bool, device=self.target.device) if self.mask is None \
                else self.mask[:, :start]
            cache.key_mask, cache.padded = past.repeat(copies, 1), not bool(past.all())
        residual = self.target_cache[self.resid_names[layer]][:, start:].repeat(copies, 1, 1)
        mask = None if self.mask is None else self.mask[:, start:].repeat(copies, 1)
        patches = [(name, _patcher(chunk, name, self.source[name], batch, offset=start)) for name in self.hooked]
        with self.model.hooks(self.target_hooks + patches):
            later = self.model(residual, start_at_layer=layer, attention_mask=mask, past_kv_cache=cache)
        if start == 0:
            return later
        return torch.cat([_tiled(self.target_logits[:, :start], copies), later], dim=1)

    def result(self) -> PatchResult:
        return PatchResult(torch.tensor(self.values, dtype=torch.float64), ("site",),
                           {"site": [s.label for s in self.sites]}, self.clean_metric, self.corrupted_metric,
                           self.direction)


def _tiled(x: Tensor, copies: int) -> Tensor:
    """`x.repeat(copies, 1, ...)` (copy-major rows), as a broadcast view without a copy when the batch is 1
    (torch.cat and the cache's concatenation copy it once anyway)."""
    if x.shape[0] == 1:
        return x.expand(copies, *x.shape[1:])
    return x.repeat(copies, *([1] * (x.ndim - 1)))


def hook_names_layer(model: HookedTransformer, name: Any) -> int:
    """The block a hook (by name) acts in: -1 for the embeddings, n_layers for ln_final (and for a predicate,
    which could select any hook)."""
    return layer_of(name, model.cfg.n_layers) if isinstance(name, str) else model.cfg.n_layers


def _same_at(model: HookedTransformer, site: Site, source: dict[str, Tensor], target: dict[str, Tensor]) -> bool:
    """Whether the site's slice is bitwise equal in both runs. Running such a site anyway would only
    add the rounding of attention kernels whose results depend on the batch size (~1e-7 in fp32)."""
    index = (slice(None),) + _index(model.hook_point(site.hook_name), site, source[site.hook_name].ndim)
    return torch.equal(source[site.hook_name][index], target[site.hook_name][index])


def _patcher(chunk: Sequence[Site], hook_name: str, source: Tensor, batch: int, offset: int = 0) -> HookFn:
    """A hook that writes `source`'s slice for site i of `chunk` into rows i*batch..(i+1)*batch-1. With
    `offset`, the run covers positions offset.. only: position p is index p - offset of what the hook sees."""
    rows = [(row, site) for row, site in enumerate(chunk) if site.hook_name == hook_name]

    def hook(activation: Tensor, hook_point: HookPoint) -> Tensor | None:
        if not rows:
            return None
        patched = activation.clone()
        pos_axis = _axes(hook_point)[0]
        for row, site in rows:
            index = _index(hook_point, site, activation.ndim)
            source_index = index
            if pos_axis is not None and offset:  # (a site without a position starts at 0: offset 0)
                here = list(index)
                here[pos_axis - 1] = site.pos - offset
                index = tuple(here)
            patched[(slice(row * batch, (row + 1) * batch),) + index] = source[(slice(None),) + source_index]
        return patched

    return hook


def _table(model: HookedTransformer, clean_tokens: Tokens, corrupted_tokens: Tokens, metric: Metric,
           sites: list[Site], dims: dict[str, list], options: dict[str, Any]) -> PatchResult:
    flat = patch(model, clean_tokens, corrupted_tokens, metric, sites, **options)
    values = flat.values.reshape([len(labels) for labels in dims.values()])
    return PatchResult(values, tuple(dims), dims, flat.clean_metric, flat.corrupted_metric, flat.direction)


def _by_layer_pos(model: HookedTransformer, clean_tokens: Tokens, corrupted_tokens: Tokens, metric: Metric,
                  suffix: str, layers: Sequence[int] | None, options: dict[str, Any]) -> PatchResult:
    layers = checked_layers(model, layers)
    positions = list(range(as_tokens(model, clean_tokens).shape[1]))
    sites = [Site(f"blocks.{layer}.{suffix}", pos=pos) for layer in layers for pos in positions]
    return _table(model, clean_tokens, corrupted_tokens, metric, sites, {"layer": layers, "pos": positions}, options)


def patch_resid_pre(model: HookedTransformer, clean_tokens: Tokens, corrupted_tokens: Tokens, metric: Metric,
                    layers: Sequence[int] | None = None, **options: Any) -> PatchResult:
    """Patch the residual stream before each block at each position: values `[layer, pos]`.

    options: `direction`, `batch_size`, `corrupted_hooks`, `progress`, `attention_mask`, as in `patch`.
    """
    return _by_layer_pos(model, clean_tokens, corrupted_tokens, metric, "hook_resid_pre", layers, options)


def patch_attn_out(model: HookedTransformer, clean_tokens: Tokens, corrupted_tokens: Tokens, metric: Metric,
                   layers: Sequence[int] | None = None, **options: Any) -> PatchResult:
    """Patch each attention layer's output at each position: values `[layer, pos]`."""
    return _by_layer_pos(model, clean_tokens, corrupted_tokens, metric, "hook_attn_out", layers, options)


def patch_mlp_out(model: HookedTransformer, clean_tokens: Tokens, corrupted_tokens: Tokens, metric: Metric,
                  layers: Sequence[int] | None = None, **options: Any) -> PatchResult:
    """Patch each MLP's output at each position: values `[layer, pos]`."""
    return _by_layer_pos(model, clean_tokens, corrupted_tokens, metric, "hook_mlp_out", layers, options)


def patch_head_out(model: HookedTransformer, clean_tokens: Tokens, corrupted_tokens: Tokens, metric: Metric,
                   layers: Sequence[int] | None = None, **options: Any) -> PatchResult:
    """Patch each head's output (its `hook_z`, all positions): values `[layer, head]`."""
    return patch_head_qkv_pattern(model, clean_tokens, corrupted_tokens, metric, "z", layers, **options)


def patch_head_out_by_pos(model: HookedTransformer, clean_tokens: Tokens, corrupted_tokens: Tokens, metric: Metric,
                          layers: Sequence[int] | None = None, **options: Any) -> PatchResult:
    """Patch each head's output (`hook_z`) at one position at a time: values `[layer, pos, head]`."""
    layers, heads = checked_layers(model, layers), list(range(model.cfg.n_heads))
    positions = list(range(as_tokens(model, clean_tokens).shape[1]))
    sites = [Site(f"blocks.{layer}.attn.hook_z", pos=pos, head=head)
             for layer in layers for pos in positions for head in heads]
    dims = {"layer": layers, "pos": positions, "head": heads}
    return _table(model, clean_tokens, corrupted_tokens, metric, sites, dims, options)


def patch_head_qkv_pattern(model: HookedTransformer, clean_tokens: Tokens, corrupted_tokens: Tokens, metric: Metric,
                           which: Literal["q", "k", "v", "rot_q", "rot_k", "pattern", "z"],
                           layers: Sequence[int] | None = None, **options: Any) -> PatchResult:
    """Patch each head's queries, keys, values or attention pattern (all positions): values `[layer, head]`.

    "q"/"k"/"v" patch `attn.hook_q/k/v` (the head's vectors, after W_Q/W_K/W_V); "rot_q"/"rot_k" the rotated
    ones (rotary models only; at equal positions the same as patching q/k); "pattern" patches `attn.hook_pattern`
    (which runs every layer through explicit attention, in every run).
    Grouped-query models: keys and values belong to kv heads, so "k", "v" and "rot_k" give `[layer, kv_head]`
    (dims ("layer", "kv_head"), n_kv_heads entries); patching kv head g changes what all of its query heads
    g * group .. (g + 1) * group - 1 read. The other kinds are per query head, `[layer, head]`.
    """
    kinds = ("q", "k", "v", "rot_q", "rot_k", "pattern", "z")
    if which not in kinds:
        raise ValueError(f"which must be one of {kinds} ('z' is the head's output), got {which!r}.")
    if which.startswith("rot_") and "blocks.0.attn.hook_rot_q" not in model.hook_dict:
        raise ValueError(f"which={which!r} patches the rotated {which[-1]} of a rotary model; this model adds learned "
                         f"positions to the residual stream and has no hook_{which}: use which={which[-1]!r}.")
    layers = checked_layers(model, layers)
    dim, n_heads = head_axis(model, f"blocks.0.attn.hook_{which}")
    heads = list(range(n_heads))
    sites = [Site(f"blocks.{layer}.attn.hook_{which}", head=head) for layer in layers for head in heads]
    return _table(model, clean_tokens, corrupted_tokens, metric, sites, {"layer": layers, dim: heads}, options)
