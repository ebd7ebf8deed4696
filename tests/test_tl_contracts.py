"""The contract downstream tools rely on, re-enacted on `interp.tl.HookedTransformer` for every family in families.py.

Each test writes a tool's access pattern itself, in a few lines as the tool's own source does it:
- SAELens: `model.hook_dict`; an SAE module spliced in place of a hook point (`set_deep_attr` + `model.setup()`),
  its hook points cached and hooked, the error term ablated, the point restored; ActivationsStore's
  `run_with_cache(tokens, names_filter=[name], stop_at_layer=layer + 1, prepend_bos=False)`.
- circuit-tracer: stop-gradient hooks (`act.detach()`) on every `hook_pattern` and `hook_scale`; backward hooks.
- EAP-IG / ACDC / auto-circuit: `use_attn_result`, `use_split_qkv_input`, `use_hook_mlp_in`, ungrouped GQA keys and
  values, and right-padded batches with `attention_mask`.
and checks the numbers against an independent computation: the model before the splice, a reconstruction written
by hand, central finite differences, `torch.autograd.grad`, weights applied by hand, or each prompt run alone.

Tolerances: fp32 activations recomputed in another summation order (an SAE's error term added back, a fused kernel
against the explicit attention path) differ by rounding, ~1e-6 on these O(1) tiny models; 1e-5 absolute leaves room.
Finite differences run in float64 with eps 1e-6: truncation (eps^2 f'''/6, up to ~2e-8 on these sharp random
models) and rounding (~1e-16 |f| / eps) stay below 1e-7, so 1e-6 relative is a real check (frozen and unfrozen
Jacobians differ by O(1)). An edit is "seen" when it moves a value by more than 1e-3, "not seen" when
the value is bitwise (or, across different kernels, 1e-6) unchanged.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import families
from interp.tl import HookedTransformer
from interp.tl.hook_points import HookPoint

CASES = list(families.CASES)
ATOL = 1e-5


def tl_load(case: str) -> HookedTransformer:
    """A processed model (TransformerLens's default, as the tools load it) of the case's tiny checkpoint."""
    return HookedTransformer.from_pretrained(str(families.saved_dir(case)))


def close(actual, expected, atol=ATOL):
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0)


def layer_of(name: str, n_layers: int) -> int:
    """-1 for the embeddings, the block index inside a block, n_layers for ln_final."""
    return int(name.split(".")[1]) if name.startswith("blocks.") else -1 if name.startswith("hook_") else n_layers


# ----- SAELens ----------------------------------------------------------------------------------
def set_deep_attr(obj, path: str, value) -> None:
    """As SAELens's `set_deep_attr`: walk "blocks.0.attn" (ints index module lists) and set the last attribute."""
    *parents, last = path.split(".")
    for part in parents:
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    setattr(obj, last, value)


class ToySAE(nn.Module):
    """An SAE as SAELens builds one (use_error_term=True): ReLU encoder, linear decoder, and
    output = reconstruction + error with error = input - reconstruction. `hook_z` is read with its heads flattened."""

    SITES = ("input", "acts_post", "recons", "error", "output")

    def __init__(self, d_in: int, d_sae: int, flatten_heads: bool, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.W_enc = nn.Parameter(torch.randn(d_in, d_sae, generator=generator) / d_in ** 0.5)
        self.b_enc = nn.Parameter(0.1 * torch.randn(d_sae, generator=generator))
        self.W_dec = nn.Parameter(torch.randn(d_sae, d_in, generator=generator) / d_sae ** 0.5)
        self.b_dec = nn.Parameter(0.1 * torch.randn(d_in, generator=generator))
        self.flatten_heads = flatten_heads
        for site in self.SITES:
            setattr(self, f"hook_sae_{site}", HookPoint())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sae_in = self.hook_sae_input(x.flatten(-2) if self.flatten_heads else x)
        acts = self.hook_sae_acts_post(torch.relu(sae_in @ self.W_enc + self.b_enc))
        recons = self.hook_sae_recons(acts @ self.W_dec + self.b_dec)
        error = self.hook_sae_error(sae_in - recons)
        return self.hook_sae_output(recons + error).reshape(x.shape)


def encode_by_hand(sae: ToySAE, activation: torch.Tensor) -> torch.Tensor:
    flat = activation.reshape(*activation.shape[:2], -1)
    return F.relu(torch.einsum("bpi,is->bps", flat, sae.W_enc) + sae.b_enc)


def reconstruct_by_hand(sae: ToySAE, activation: torch.Tensor) -> torch.Tensor:
    decoded = torch.einsum("bps,si->bpi", encode_by_hand(sae, activation), sae.W_dec) + sae.b_dec
    return decoded.reshape(activation.shape)


# hook_resid_mid: interp derives ln2's scale from it after the run, so a splice there must not go unnoticed.
SAE_SITES = [(case, site) for case in CASES
             for site in ("attn.hook_z", "hook_resid_pre", "hook_resid_mid", "hook_mlp_out")
             if not (site == "hook_resid_mid" and case in families.PARALLEL)]


@pytest.mark.parametrize(("case", "site"), SAE_SITES)
def test_sae_splice(case, site):
    model, toks = tl_load(case), families.tokens(case, batch=2, pos=8)
    name = f"blocks.0.{site}"  # layer 0, so block 1 reads what the SAE outputs
    assert all(point.name == hook_name for hook_name, point in model.hook_dict.items())
    names_before, shapes_before = list(model.hook_dict), model.hook_shapes()
    *parent_path, attribute = name.split(".")
    parent = model.get_submodule(".".join(parent_path))
    original = getattr(parent, attribute)
    clean_logits, clean = model.run_with_cache(toks)
    activation = clean[name].detach()
    width = model.cfg.n_heads * model.cfg.d_head if site == "attn.hook_z" else model.cfg.d_model
    sae = ToySAE(width, 24, flatten_heads=site == "attn.hook_z")

    set_deep_attr(model, name, sae)
    model.setup()
    sae_names = [f"{name}.hook_sae_{part}" for part in ToySAE.SITES]
    assert [hook_name for hook_name in model.hook_dict if hook_name.startswith(name + ".")] == sae_names
    assert name not in model.hook_dict and all(model.hook_dict[n].name == n for n in sae_names)
    logits, cache = model.run_with_cache(toks, names_filter=sae_names)
    close(logits, clean_logits)  # reconstruction + error = the input, up to rounding
    flat = activation.flatten(-2) if sae.flatten_heads else activation
    close(cache[f"{name}.hook_sae_input"], flat)
    close(cache[f"{name}.hook_sae_acts_post"], encode_by_hand(sae, activation))
    recons = reconstruct_by_hand(sae, activation).reshape(flat.shape)
    close(cache[f"{name}.hook_sae_recons"], recons)
    close(cache[f"{name}.hook_sae_error"], flat - recons)
    # SAELens's run_with_cache_with_saes caches every point: all but the replaced one as in the unspliced run.
    _, everything = model.run_with_cache(toks)
    assert set(everything.keys()) == (set(clean.keys()) - {name}) | set(sae_names)
    for hook_name in set(clean.keys()) - {name}:
        close(everything[hook_name], clean[hook_name])
    seen = []
    model.run_with_hooks(toks, fwd_hooks=[(f"{name}.hook_sae_acts_post", lambda acts, hook: seen.append(acts))])
    close(seen[0], encode_by_hand(sae, activation))
    ablated = model.run_with_hooks(toks, fwd_hooks=[(f"{name}.hook_sae_error", lambda e, hook: torch.zeros_like(e))])

    set_deep_attr(model, name, HookPoint())  # SAELens's reset_saes: a bare HookPoint back in place, then setup()
    model.setup()
    assert list(model.hook_dict) == names_before and model.hook_shapes() == shapes_before
    torch.testing.assert_close(model(toks), clean_logits, atol=0, rtol=0)
    substituted = model.run_with_hooks(toks, fwd_hooks=[(name, lambda act, hook: reconstruct_by_hand(sae, act))])
    close(ablated, substituted)
    assert (ablated - clean_logits).abs().max() > 1e-2  # the error term carries real signal

    set_deep_attr(model, name, sae)
    model.setup()
    delattr(parent, attribute)  # interp's own points are not modules: nn.Module assigns one only where no module is
    setattr(parent, attribute, original)
    model.setup()
    assert model.hook_dict[name] is original and list(model.hook_dict) == names_before
    torch.testing.assert_close(model(toks), clean_logits, atol=0, rtol=0)


@pytest.mark.parametrize("name", ["blocks.0.hook_resid_pre", "blocks.0.attn.hook_z", "blocks.1.hook_mlp_out"])
@pytest.mark.parametrize("case", CASES)
def test_activations_store_stops_at_layer(case, name):
    model, toks = tl_load(case), families.tokens(case, batch=2, pos=8)
    layer, n_layers = layer_of(name, 2), model.cfg.n_layers
    _, full = model.run_with_cache(toks, names_filter=[name, f"blocks.{layer}.hook_resid_post"])
    output, cache = model.run_with_cache(toks, names_filter=[name], stop_at_layer=layer + 1, prepend_bos=False)
    assert list(cache.keys()) == [name]
    torch.testing.assert_close(cache[name], full[name], atol=0, rtol=0)
    close(output, full[f"blocks.{layer}.hook_resid_post"])  # the residual stream before block layer + 1
    fired = []
    with model.hooks([(lambda hook_name: True, lambda act, hook: fired.append(hook.name))]):
        model.run_with_cache(toks, names_filter=[name], stop_at_layer=layer + 1, prepend_bos=False)
    assert name in fired and max(layer_of(hook_name, n_layers) for hook_name in fired) == layer


# ----- circuit-tracer ---------------------------------------------------------------------------
def frozen_site(name: str) -> bool:
    return name.endswith(("hook_pattern", "hook_scale"))


@pytest.mark.parametrize("case", CASES)
def test_stop_gradient_jacobian_is_the_frozen_models(case):
    model = tl_load(case).to(torch.float64)
    toks, token = families.tokens(case, batch=1, pos=6, seed=2), 3
    _, clean = model.run_with_cache(toks, names_filter=frozen_site)
    frozen = {name: clean[name] for name in clean.keys()}
    assert len(frozen) == 3 * model.cfg.n_layers + 1  # every pattern, ln1/ln2 scale, ln_final scale

    def jacobian(stop_gradient: bool) -> torch.Tensor:
        leaf = []

        def grab(embed, hook):
            leaf.append(embed.detach().requires_grad_(True))
            return leaf[0]
        hooks = [("hook_embed", grab)] + ([(frozen_site, lambda act, hook: act.detach())] if stop_gradient else [])
        logit = model.run_with_hooks(toks, fwd_hooks=hooks)[0, -1, token]
        return torch.autograd.grad(logit, leaf[0])[0][0]  # [pos, d_model]

    def central_differences(directions: torch.Tensor, freeze: bool, eps: float = 1e-6) -> torch.Tensor:
        """d logit / d embed along each direction, from one batch of embed + eps d and embed - eps d."""
        shift = eps * torch.cat([directions, -directions])
        hooks = [("hook_embed", lambda embed, hook: embed + shift)]
        if freeze:  # patterns and scales replaced by the clean run's: a different model, linear in them
            hooks += [(name, lambda act, hook, value=value: value.expand_as(act).clone())
                      for name, value in frozen.items()]
        logits = model.run_with_hooks(toks.expand(len(shift), -1), fwd_hooks=hooks)[:, -1, token]
        return (logits[: len(directions)] - logits[len(directions):]) / (2 * eps)

    generator = torch.Generator().manual_seed(5)
    directions = torch.randn(3, toks.shape[1], model.cfg.d_model, generator=generator, dtype=torch.float64)
    stopped, full = jacobian(stop_gradient=True), jacobian(stop_gradient=False)
    for jac, freeze in ((stopped, True), (full, False)):
        torch.testing.assert_close((jac * directions).sum((1, 2)), central_differences(directions, freeze),
                                   rtol=1e-6, atol=1e-7)
    assert (stopped - full).abs().max() > 1e-2 * full.abs().max()


BACKWARD_SITES = ["blocks.0.hook_resid_post", "blocks.1.attn.hook_pattern", "blocks.0.attn.hook_z",
                  "blocks.1.mlp.hook_post", "ln_final.hook_scale"]


@pytest.mark.parametrize("case", CASES)
def test_backward_hooks_see_autograd_gradients(case):
    model, toks = tl_load(case), families.tokens(case, batch=2, pos=8)
    captured = {}
    reference_loss = model.run_with_hooks(toks, return_type="loss", fwd_hooks=[
        (name, lambda act, hook: captured.__setitem__(hook.name, act)) for name in BACKWARD_SITES])
    expected = dict(zip(BACKWARD_SITES, torch.autograd.grad(reference_loss, [captured[n] for n in BACKWARD_SITES])))

    seen = {}

    def record(grad, hook):
        seen.setdefault(hook.name, []).append(grad.detach().clone())
    loss = model.run_with_hooks(toks, return_type="loss", bwd_hooks=[(n, record) for n in BACKWARD_SITES],
                                reset_hooks_end=False)
    assert all(model.hook_dict[name].bwd_hooks for name in BACKWARD_SITES)  # kept until reset_hooks()
    loss.backward()
    model.reset_hooks()
    close(loss, reference_loss)
    assert not any(point.has_hooks for point in model.hook_dict.values())
    for name in BACKWARD_SITES:
        assert len(seen[name]) == 1
        close(seen[name][0], expected[name], atol=1e-6)

    seen.clear()
    model.zero_grad(set_to_none=True)
    model.add_hook(BACKWARD_SITES[1], record, dir="bwd")
    model(toks, return_type="loss").backward()
    model.reset_hooks()
    model(toks, return_type="loss").backward()  # after reset_hooks: nothing fires
    assert list(seen) == [BACKWARD_SITES[1]] and len(seen[BACKWARD_SITES[1]]) == 1
    close(seen[BACKWARD_SITES[1]][0], expected[BACKWARD_SITES[1]], atol=1e-6)


# ----- EAP-IG / ACDC / auto-circuit --------------------------------------------------------------
def n_kv(model) -> int:
    return model.cfg.n_key_value_heads or model.cfg.n_heads


@pytest.mark.parametrize("how", ["setter", "cfg"])
@pytest.mark.parametrize("case", CASES)
def test_use_attn_result(case, how):
    model, toks = tl_load(case), families.tokens(case, batch=2, pos=8)
    clean_logits, default = model.run_with_cache(toks)
    names = [f"blocks.{layer}.attn.hook_result" for layer in range(model.cfg.n_layers)]
    if how == "setter":
        model.set_use_attn_result(True)
    else:
        model.cfg.use_attn_result = True
    logits, cache = model.run_with_cache(toks)
    close(logits, clean_logits)
    assert set(cache.keys()) == set(default.keys()) | set(names)
    for layer, name in enumerate(names):
        attn = model.blocks[layer].attn
        by_hand = torch.einsum("bphd,hdm->bphm", cache[f"blocks.{layer}.attn.hook_z"], attn.W_O)
        close(cache[name], by_hand)
        close(cache[name].sum(2) + attn.b_O, cache[f"blocks.{layer}.hook_attn_out"])
    _, picked = model.run_with_cache(toks, names_filter=lambda name: name.endswith("hook_result"))
    assert list(picked.keys()) == names

    def zero_head(act, hook):
        act[:, :, 1] = 0
    via_result = model.run_with_hooks(toks, fwd_hooks=[(lambda name: name.endswith("hook_result"), zero_head)])
    via_z = model.run_with_hooks(toks, fwd_hooks=[(lambda name: name.endswith("hook_z"), zero_head)])
    close(via_result, via_z)
    assert (via_result - clean_logits).abs().max() > 1e-3


@pytest.mark.parametrize("case", CASES)
def test_split_qkv_input(case):
    model, toks = tl_load(case), families.tokens(case, batch=2, pos=8)
    clean_logits = model(toks)
    model.set_use_split_qkv_input(True)
    logits, cache = model.run_with_cache(toks)
    close(logits, clean_logits)
    heads = {"q": model.cfg.n_heads, "k": n_kv(model), "v": n_kv(model)}
    for layer in range(model.cfg.n_layers):
        for x, n_heads in heads.items():
            copies = cache[f"blocks.{layer}.hook_{x}_input"]
            assert copies.shape[2] == n_heads
            torch.testing.assert_close(copies, cache[f"blocks.{layer}.hook_resid_pre"][:, :, None].expand_as(copies),
                                       atol=0, rtol=0)
    _, picked = model.run_with_cache(toks, names_filter=lambda name: name.endswith("_input"))
    assert len(picked.keys()) == 3 * model.cfg.n_layers

    layer, position, group = 1, 5, model.cfg.n_heads // n_kv(model)
    watched = [f"blocks.{layer}.attn.hook_pattern", f"blocks.{layer}.attn.hook_z"]
    noise = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(3))

    def edited(x: str, head: int) -> dict:
        def edit(act, hook):
            act[:, position, head] += 2 * noise  # in place: the copy is the head's own
        with model.hooks([(f"blocks.{layer}.hook_{x}_input", edit)]):
            return model.run_with_cache(toks, names_filter=watched)[1]
    _, base = model.run_with_cache(toks, names_filter=watched + [f"blocks.{layer}.hook_{x}_input" for x in "qkv"])
    pattern, z = base[watched[0]], base[watched[1]]

    after = edited("q", head=1)  # query head 1 at one position: that head's pattern row there, nothing else
    moved = (after[watched[0]] - pattern).abs()
    assert moved[:, 1, position].max() > 1e-3
    moved[:, 1, position] = 0
    assert moved.max() <= 1e-6
    kv_head = n_kv(model) - 1  # a key (value) head: the query heads that share it, nothing else
    sharing = list(range(kv_head * group, (kv_head + 1) * group))
    others = [head for head in range(model.cfg.n_heads) if head not in sharing]
    after = edited("k", head=kv_head)
    moved = (after[watched[0]] - pattern).abs().amax((0, 2, 3))
    assert (moved[sharing] > 1e-3).all() and moved[others].max() <= 1e-6
    after = edited("v", head=kv_head)
    assert (after[watched[0]] - pattern).abs().max() <= 1e-6
    moved = (after[watched[1]] - z).abs().amax((0, 1, 3))
    assert (moved[sharing] > 1e-3).all() and moved[others].max() <= 1e-6


@pytest.mark.parametrize("case", CASES)
def test_hook_mlp_in(case):
    model, toks = tl_load(case), families.tokens(case, batch=2, pos=8)
    model.set_use_hook_mlp_in(True)
    parallel = "blocks.0.hook_resid_mid" not in model.hook_dict
    reads = "hook_resid_pre" if parallel else "hook_resid_mid"  # what the MLP reads
    _, cache = model.run_with_cache(toks)
    for layer in range(model.cfg.n_layers):
        torch.testing.assert_close(cache[f"blocks.{layer}.hook_mlp_in"], cache[f"blocks.{layer}.{reads}"],
                                   atol=0, rtol=0)
    names = [f"blocks.0.{n}" for n in ("hook_mlp_in", reads, "hook_attn_out", "hook_mlp_out", "hook_resid_post")]
    _, base = model.run_with_cache(toks, names_filter=names)
    delta = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(4))

    def edit(act, hook):
        act += delta  # in place, as ACDC's hooks may: the MLP's own copy changes, the residual stream does not
    with model.hooks([("blocks.0.hook_mlp_in", edit)]):
        _, after = model.run_with_cache(toks, names_filter=names[1:])
    block = model.blocks[0]
    for unchanged in names[1:3]:
        torch.testing.assert_close(after[unchanged], base[unchanged], atol=0, rtol=0)
    expected_mlp_out = block.mlp(block.ln2(base["blocks.0.hook_mlp_in"] + delta))
    close(after["blocks.0.hook_mlp_out"], expected_mlp_out)
    assert (after["blocks.0.hook_mlp_out"] - base["blocks.0.hook_mlp_out"]).abs().max() > 1e-3
    stream = base[names[1]] + (base["blocks.0.hook_attn_out"] if parallel else 0)
    close(after["blocks.0.hook_resid_post"], stream + expected_mlp_out)


GQA = [case for case in CASES if getattr(families.CASES[case](), "num_key_value_heads", None)
       not in (None, families.CASES[case]().num_attention_heads)]


def test_gqa_cases_exist():
    assert set(GQA) == {"llama_gqa", "mistral_window", "qwen2_bias"}


@pytest.mark.parametrize("case", GQA)
def test_ungrouped_gqa(case):
    model, toks = tl_load(case), families.tokens(case, batch=2, pos=10)
    group, d_head = model.cfg.n_heads // model.cfg.n_key_value_heads, model.cfg.d_head
    clean_logits, grouped = model.run_with_cache(toks, names_filter=lambda name: name.endswith(("hook_k", "hook_v")))
    model.set_ungroup_grouped_query_attention(True)
    model.set_use_split_qkv_input(True)
    logits, cache = model.run_with_cache(toks)
    close(logits, clean_logits)
    for layer in range(model.cfg.n_layers):
        for x in "kv":
            name = f"blocks.{layer}.attn.hook_{x}"
            assert model.hook_shapes()[name] == "batch pos n_heads d_head"
            close(cache[name], grouped[name].repeat_interleave(group, dim=2))  # split inputs: another kernel
            assert cache[f"blocks.{layer}.hook_{x}_input"].shape[2] == model.cfg.n_heads

    layer, head = 1, 1  # head 1 shares its kv head with head 0 (and 2) when grouped
    names = [f"blocks.{layer}.attn.hook_{x}" for x in ("pattern", "rot_q", "rot_k")]
    _, base = model.run_with_cache(toks, names_filter=names[:1])
    noise = torch.randn(toks.shape[1], d_head, generator=torch.Generator().manual_seed(6))

    def edit(key, hook):
        key[:, :, head] += 2 * noise
    with model.hooks([(f"blocks.{layer}.attn.hook_k", edit)]):
        _, after = model.run_with_cache(toks, names_filter=names)
    moved = (after[names[0]] - base[names[0]]).abs().amax((0, 2, 3))
    assert moved[head] > 1e-3 and moved[[h for h in range(model.cfg.n_heads) if h != head]].max() <= 1e-6
    q, k = after[names[1]][:, :, head], after[names[2]][:, :, head]  # [batch, pos, d_head], rotated
    scores = torch.einsum("bqd,bkd->bqk", q, k) / d_head ** 0.5
    query, key = torch.arange(toks.shape[1])[:, None], torch.arange(toks.shape[1])[None, :]
    window = model.blocks[layer].attn.window
    allowed = (key <= query) & ((key > query - window) if window else True)
    close(after[names[0]][:, head], scores.masked_fill(~allowed, float("-inf")).softmax(-1))


@pytest.mark.parametrize("case", CASES)
def test_switches_off_restore_interp_defaults(case):
    model, fresh, toks = tl_load(case), tl_load(case), families.tokens(case, batch=2, pos=8)
    switches = ["use_attn_result", "use_split_qkv_input", "use_hook_mlp_in", "ungroup_grouped_query_attention"]
    for switch in switches:
        getattr(model, f"set_{switch}")(True)
    model(toks)
    for switch in switches:
        getattr(model, f"set_{switch}")(False)
    assert model.hook_shapes() == fresh.hook_shapes()
    logits, cache = model.run_with_cache(toks)
    fresh_logits, fresh_cache = fresh.run_with_cache(toks)
    assert list(cache.keys()) == list(fresh_cache.keys())
    assert not any(name.endswith(("hook_result", "_input", "hook_mlp_in")) for name in cache.keys())
    torch.testing.assert_close(logits, fresh_logits, atol=0, rtol=0)


LENGTHS = [8, 5, 3]


@pytest.mark.parametrize("case", CASES)
def test_right_padded_batch_with_attention_mask(case):
    model, toks = tl_load(case), families.tokens(case, batch=len(LENGTHS), pos=max(LENGTHS), seed=7)
    mask = (torch.arange(toks.shape[1])[None, :] < torch.tensor(LENGTHS)[:, None]).long()
    padded = toks.masked_fill(mask == 0, 1)  # whatever the pad id, the mask says which tokens are real
    logits = model(padded, attention_mask=mask)
    for row, length in enumerate(LENGTHS):
        close(logits[row, :length], model(toks[row:row + 1, :length])[0])
    # EAP-IG caches per-head results and the edge inputs of a padded batch: real positions as each prompt alone.
    model.set_use_attn_result(True)
    model.set_use_split_qkv_input(True)
    model.set_use_hook_mlp_in(True)
    edges = lambda name: name.endswith(("hook_result", "hook_q_input", "hook_v_input", "hook_mlp_in"))  # noqa: E731
    _, cache = model.run_with_cache(padded, attention_mask=mask, names_filter=edges)
    for row, length in enumerate(LENGTHS):
        _, alone = model.run_with_cache(toks[row:row + 1, :length], names_filter=edges)
        assert set(alone.keys()) == set(cache.keys()) and len(alone.keys()) == 4 * model.cfg.n_layers
        for name in alone.keys():
            close(cache[name][row, :length], alone[name][0])
