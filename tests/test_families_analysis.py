"""Every analysis on every family (tests/families.py): GPT-2, GPT-NeoX (parallel and serial), Llama (GQA,
llama3 and linear RoPE scaling), Mistral (sliding window) and Qwen2 (q/k/v biases, per-layer windows).

References are computed here, never by the function under test: residual streams and norm inputs cached by
the model; norms, unembeddings, per-path forwards and composition scores written out by hand from the
weights (shared kv heads read as `W_K_kv[h // group]`); head scores from `transformers`' own eager
attentions; patches as plain `run_with_hooks` forwards. Where a method does not apply (learned-position
circuits on rotary models, resid_mid on parallel blocks, centring on RMSNorm), the refusal is checked.
"""

from __future__ import annotations

import functools
import itertools

import pytest
import torch

import families
from families import CASES, GATED, PARALLEL, ROTARY
from interp.analysis import circuits, decompose, heads, neurons, patching
from interp.analysis.attribution import attribution_patch
from interp.analysis.path_patching import path_patch
from interp.analysis.paths import path_attribution
from interp.analysis.stack import ComponentStack

ALL = list(CASES)
RMS = {case for case in ALL if families.family(case) in ("llama", "mistral", "qwen2")}
GQA = {"llama_gqa", "mistral_window", "qwen2_bias"}
N_POS = 12


@functools.cache
def model_of(case: str, processed: bool = False):
    return families.load(case, process=processed)


@functools.cache
def run_of(case: str, processed: bool = False):
    model = model_of(case, processed)
    tokens = families.tokens(case, batch=2, pos=N_POS, seed=1)
    logits, cache = model.run_with_cache(tokens)
    return model, tokens, logits, cache


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.detach().double(), expected.detach().double()
    return float((actual - expected).abs().max() / expected.abs().max())


def resid_at(cache, layer: int) -> torch.Tensor:
    n_layers = cache.model.cfg.n_layers
    return cache[f"blocks.{n_layers - 1}.hook_resid_post"] if layer == n_layers else cache[f"blocks.{layer}.hook_resid_pre"]


def by_hand_normalized(model, x: torch.Tensor) -> torch.Tensor:
    """The model's norm without gain and bias, written from its definition (LayerNorm centres, RMSNorm does not)."""
    x = x.double()
    if model.cfg.normalization == "LN":
        x = x - x.mean(-1, keepdim=True)
    return x / (x.pow(2).mean(-1, keepdim=True) + model.cfg.eps).sqrt()


def kv_of(model, head: int) -> int:
    return head // (model.cfg.n_heads // model.cfg.n_kv_heads)


# ----- decomposition ---------------------------------------------------------------------------
@pytest.mark.parametrize("processed", [False, True], ids=["raw", "processed"])
@pytest.mark.parametrize("case", ALL)
def test_decompositions_sum_to_the_cached_residual(case, processed):
    model, _, _, cache = run_of(case, processed)
    n_layers, n_heads, d_mlp = model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_mlp
    embeds = ["embed"] if case in ROTARY else ["embed", "pos_embed"]
    worst = 0.0
    for layer in range(n_layers + 1):
        expected = resid_at(cache, layer)
        parts = decompose.decompose_resid(cache, layer)
        assert parts.labels == embeds + [f"{l}_{kind}_out" for l in range(layer) for kind in ("attn", "mlp")]
        full = decompose.get_full_resid_decomposition(cache, layer, expand_neurons=True)
        coarse = decompose.get_full_resid_decomposition(cache, layer, expand_neurons=False)
        assert full.labels[:len(embeds)] == embeds
        assert len(full) == len(embeds) + layer * (n_heads + 1 + d_mlp + 1)  # query heads, also under GQA
        for stack in (parts, full, coarse):
            worst = max(worst, relative_error(stack.sum(), expected))
    assert worst < 1e-5, worst


@pytest.mark.parametrize("case", ALL)
def test_frozen_norm_stacks_add_up_to_each_norm_input_normalised(case):
    """apply_ln_to_stack at ln1, ln2 (mlp_input: resid_mid, or resid_pre on parallel blocks) and ln_final."""
    model, _, _, cache = run_of(case)
    for layer in range(model.cfg.n_layers):
        stack = decompose.decompose_resid(cache, layer)
        ln1 = decompose.apply_ln_to_stack(cache, stack, layer)
        assert relative_error(ln1.sum().double(), by_hand_normalized(model, cache[f"blocks.{layer}.hook_resid_pre"])) < 1e-5
        if case in PARALLEL:  # ln2 reads resid_pre: the same stack
            ln2_input, mlp_stack = cache[f"blocks.{layer}.hook_resid_pre"], stack
        else:
            ln2_input = cache[f"blocks.{layer}.hook_resid_mid"]
            attn_out = cache[f"blocks.{layer}.hook_attn_out"][None]
            mlp_stack = ComponentStack(torch.cat([stack.components, attn_out]), stack.labels + [f"{layer}_attn_out"])
        ln2 = decompose.apply_ln_to_stack(cache, mlp_stack, layer, mlp_input=True)
        assert relative_error(ln2.sum().double(), by_hand_normalized(model, ln2_input)) < 1e-5, layer
    final = decompose.apply_ln_to_stack(cache, decompose.decompose_resid(cache), None)
    assert relative_error(final.sum().double(), by_hand_normalized(model, resid_at(cache, model.cfg.n_layers))) < 1e-5


@pytest.mark.parametrize("processed", [False, True], ids=["raw", "processed"])
@pytest.mark.parametrize("case", ALL)
def test_direct_logit_attribution_plus_the_bias_term_is_the_logit(case, processed):
    model, tokens, logits, cache = run_of(case, processed)
    answers = (tokens + 3) % model.cfg.d_vocab  # one answer per (sequence, position)
    full = decompose.get_full_resid_decomposition(cache, expand_neurons=True)
    attrs = decompose.logit_attrs(cache, full, tokens=answers)
    # The constant part: ln_final.b @ W_U + b_U (b_U alone for RMSNorm and after fold_ln).
    bias = model.b_U if model.ln_final.b is None else model.ln_final.b @ model.W_U + model.b_U
    if case in RMS or processed:
        assert model.ln_final.b is None
    expected = logits.gather(-1, answers[..., None])[..., 0]
    assert attrs.shape == (len(full), *tokens.shape)
    assert relative_error(attrs.sum(0) + bias.detach()[answers], expected) < 1e-5


@pytest.mark.parametrize("case", ALL)
def test_logit_lens_normalises_each_partial_residual_by_hand(case):
    model, _, logits, cache = run_of(case)
    lens = decompose.logit_lens(cache)
    assert relative_error(lens[-1], logits) < 1e-5  # "final_post" is the model's own output
    w = 1 if model.ln_final.w is None else model.ln_final.w.double()
    b = 0 if model.ln_final.b is None else model.ln_final.b.double()
    for index in range(model.cfg.n_layers):
        by_hand = (by_hand_normalized(model, cache[f"blocks.{index}.hook_resid_pre"]) * w + b) @ model.W_U.double() \
            + model.b_U.double()
        assert relative_error(lens[index].double(), by_hand) < 1e-5, index


@pytest.mark.parametrize("case", ALL)
def test_accumulated_resid_with_mid_exists_only_for_sequential_blocks(case):
    model, _, _, cache = run_of(case)
    if case in PARALLEL:
        assert "blocks.0.hook_resid_mid" not in model.hook_dict
        with pytest.raises(ValueError, match="parallel.*no resid_mid.*incl_mid=False"):
            decompose.accumulated_resid(cache, incl_mid=True)
        with pytest.raises(ValueError, match="no resid_mid"):
            decompose.logit_lens(cache, incl_mid=True)
        return
    stack = decompose.accumulated_resid(cache, incl_mid=True)
    assert stack.labels == ["0_pre", "0_mid", "1_pre", "1_mid", "final_post"]
    torch.testing.assert_close(stack["1_mid"], cache["blocks.1.hook_resid_mid"], rtol=0, atol=0)


# ----- path attribution ------------------------------------------------------------------------
def brute_force_paths(model, cache, answer: int, q: int) -> dict[str, float]:
    """Every source -> (head ->) (head ->) logits path run forwards at frozen patterns and norm scales."""
    cfg = model.cfg

    def frozen(x, scale, norm):  # the norm at its cached scale, without its bias (a constant, counted elsewhere)
        x = x.double()
        x = x - x.mean(-1, keepdim=True) if cfg.normalization == "LN" else x
        return x / scale.double() * (1 if norm.w is None else norm.w.double())

    def head_forward(layer, head, x):
        attn = model.blocks[layer].attn
        v = frozen(x, cache[f"blocks.{layer}.ln1.hook_scale"][0], model.blocks[layer].ln1) @ \
            attn.W_V_kv[kv_of(model, head)].double()
        return cache[f"blocks.{layer}.attn.hook_pattern"][0, head].double() @ v @ attn.W_O[head].double()

    def readout(x):
        return float(frozen(x[q], cache["ln_final.hook_scale"][0, q], model.ln_final) @ model.W_U[:, answer].double())

    sources = {"embed": (-1, cache["hook_embed"][0])}
    if "hook_pos_embed" in cache:
        sources["pos_embed"] = (-1, cache["hook_pos_embed"][0])
    for layer, block in enumerate(model.blocks):
        attn = block.attn
        ln_b = torch.zeros(cfg.d_model, dtype=torch.float64) if block.ln1.b is None else block.ln1.b.double()
        per_head = [(ln_b @ attn.W_V_kv[kv_of(model, h)].double() + attn.b_V_kv[kv_of(model, h)].double())
                    @ attn.W_O[h].double() for h in range(cfg.n_heads)]
        sources[f"attn_bias{layer}"] = (layer, (attn.b_O.double() + sum(per_head)).expand(cache["hook_embed"].shape[1], -1))
        sources[f"mlp{layer}"] = (layer, cache[f"blocks.{layer}.hook_mlp_out"][0])
    heads_ = [(layer, head) for layer in range(cfg.n_layers) for head in range(cfg.n_heads)]
    paths = {}
    for name, (after, vector) in sources.items():
        paths[f"{name} -> logits"] = readout(vector)
        for layer, head in heads_:
            if after < layer:
                paths[f"{name} -> L{layer}H{head} -> logits"] = readout(head_forward(layer, head, vector))
        for (layer_a, head_a), (layer_b, head_b) in itertools.product(heads_, heads_):
            if after < layer_a < layer_b:
                through = head_forward(layer_b, head_b, head_forward(layer_a, head_a, vector))
                paths[f"{name} -> L{layer_a}H{head_a} -> L{layer_b}H{head_b} -> logits"] = readout(through)
    return paths


@torch.no_grad()
@pytest.mark.parametrize("case", ALL)
def test_path_attribution_is_exact_and_each_path_is_its_forward(case):
    model = model_of(case)
    tokens = families.tokens(case, batch=1, pos=10, seed=4)
    answer = 7
    result = path_attribution(model, tokens, answer=answer)
    logit = float(model(tokens)[0, -1, answer])
    # Two layers: no path has three heads, so the terms sum to the model's own logit.
    assert result.target == pytest.approx(logit, abs=1e-6)
    assert abs(result.residual) < 1e-5 * max(1.0, abs(logit)), result.residual
    assert result.total() == pytest.approx(logit, abs=1e-5)
    if case in RMS:
        assert result.unembed_bias == pytest.approx(float(model.b_U[answer]))
    _, cache = model.run_with_cache(tokens)
    expected = brute_force_paths(model, cache, answer, q=9)
    got = dict(zip(result.paths, result.values.tolist()))
    assert got.keys() == expected.keys()
    assert ("pos_embed -> logits" in got) == (case not in ROTARY)
    scale = max(abs(value) for value in expected.values())
    assert max(abs(got[name] - expected[name]) for name in got) < 1e-5 * scale


@torch.no_grad()
@pytest.mark.parametrize("case", ["gpt2", "neox_parallel", "llama_gqa", "mistral_window"])
def test_path_attribution_of_a_processed_model_is_exact(case):
    model = model_of(case, processed=True)
    tokens = families.tokens(case, batch=1, pos=10, seed=5)
    result = path_attribution(model, tokens, answer=4, wrong=11, position=6)
    logits = model(tokens)[0, 6]
    assert result.target == pytest.approx(float(logits[4] - logits[11]), abs=1e-5)
    assert abs(result.residual) < 1e-5 * max(1.0, abs(result.target))


# ----- patching --------------------------------------------------------------------------------
def clean_and_corrupted(case: str) -> tuple[torch.Tensor, torch.Tensor]:
    clean = families.tokens(case, batch=1, pos=N_POS, seed=0)
    corrupted = clean.clone()
    vocab = CASES[case]().vocab_size
    corrupted[0, 3], corrupted[0, 7] = (clean[0, 3] + 7) % vocab, (clean[0, 7] + 11) % vocab
    return clean, corrupted


def logit_diff(logits):
    return (logits[:, -1, 5] - logits[:, -1, 9]).mean()


def every_site_kind(model) -> list[patching.Site]:
    """One site of every hook kind this family has, with the largest head index of each head axis."""
    cfg, last_kv, last_q = model.cfg, model.cfg.n_kv_heads - 1, model.cfg.n_heads - 1
    sites = [patching.Site("hook_embed", pos=3)]
    for layer in range(cfg.n_layers):
        block = f"blocks.{layer}"
        sites += [patching.Site(f"{block}.hook_resid_pre", pos=7), patching.Site(f"{block}.hook_attn_out", pos=9),
                  patching.Site(f"{block}.hook_mlp_out"), patching.Site(f"{block}.mlp.hook_post", pos=11),
                  patching.Site(f"{block}.attn.hook_q", pos=11, head=last_q),
                  patching.Site(f"{block}.attn.hook_k", pos=3, head=last_kv),
                  patching.Site(f"{block}.attn.hook_v", head=last_kv),
                  patching.Site(f"{block}.attn.hook_pattern", pos=11, head=last_q),
                  patching.Site(f"{block}.attn.hook_z", head=0)]
        if f"{block}.hook_resid_mid" in model.hook_dict:
            sites.append(patching.Site(f"{block}.hook_resid_mid", pos=7))
        if f"{block}.attn.hook_rot_q" in model.hook_dict:
            sites += [patching.Site(f"{block}.attn.hook_rot_q", pos=11, head=last_q),
                      patching.Site(f"{block}.attn.hook_rot_k", pos=7, head=last_kv)]
        if cfg.gated_mlp:
            sites.append(patching.Site(f"{block}.mlp.hook_pre_linear", pos=11))
    return sites


@torch.no_grad()
def hand_patched_metric(model, target, source_tokens, site: patching.Site) -> float:
    """Patch one site by hand: copy the source run's slice (index written from the declared shape)."""
    saved = {}

    def save(activation, hook):
        saved["value"] = activation.clone()

    model.run_with_hooks(source_tokens, fwd_hooks=[(site.hook_name, save)])
    shape = model.hook_shapes()[site.hook_name].split()
    index = [slice(None)] * len(shape)
    if site.pos is not None:
        index[shape.index("query_pos" if "query_pos" in shape else "pos")] = site.pos
    if site.head is not None:
        index[shape.index("n_kv_heads" if "n_kv_heads" in shape else "n_heads")] = site.head

    def overwrite(activation, hook):
        activation = activation.clone()
        activation[tuple(index)] = saved["value"][tuple(index)]
        return activation

    return float(logit_diff(model.run_with_hooks(target, fwd_hooks=[(site.hook_name, overwrite)])))


@pytest.mark.parametrize("case", ALL)
def test_patching_identities_and_hand_written_patches(case):
    model = model_of(case)
    clean, corrupted = clean_and_corrupted(case)
    sites = every_site_kind(model)
    with torch.no_grad():
        clean_metric, corrupted_metric = float(logit_diff(model(clean))), float(logit_diff(model(corrupted)))
    assert abs(clean_metric - corrupted_metric) > 1e-3  # the corruption does something
    # patch() measures the clean metric itself (hooked: explicit attention, ~1e-6 from the fused kernel in fp32).
    # (Patching a run with its own activations is skipped site by site, so it is not a test of anything.)
    same = patching.patch(model, clean, corrupted, logit_diff, sites[:1], progress=False)
    assert same.clean_metric == pytest.approx(clean_metric, abs=1e-5)
    assert same.corrupted_metric == pytest.approx(corrupted_metric, abs=1e-5)
    # Everything from the corrupted run (the whole residual stream before block 0, or after the last) is its metric.
    whole = [patching.Site("blocks.0.hook_resid_pre"), patching.Site(f"blocks.{model.cfg.n_layers - 1}.hook_resid_post")]
    noised = patching.patch(model, clean, corrupted, logit_diff, whole, direction="noise", progress=False)
    torch.testing.assert_close(noised.values, torch.full((2,), corrupted_metric, dtype=torch.float64),
                               rtol=0, atol=1e-5 * max(1.0, abs(corrupted_metric)))
    # Each site against a hand-written patch (denoising: clean values into the corrupted run).
    result = patching.patch(model, clean, corrupted, logit_diff, sites, progress=False, batch_size=8)
    expected = torch.tensor([hand_patched_metric(model, corrupted, clean, site) for site in sites], dtype=torch.float64)
    torch.testing.assert_close(result.values, expected, rtol=0, atol=1e-5 * max(1.0, expected.abs().max().item()))
    assert (result.values != corrupted_metric).sum() > len(sites) // 2  # most sites do change the metric


@pytest.mark.parametrize("case", ALL)
def test_head_tables_use_the_declared_head_axis(case):
    model = model_of(case)
    clean, corrupted = clean_and_corrupted(case)
    cfg = model.cfg
    keys = patching.patch_head_qkv_pattern(model, clean, corrupted, logit_diff, "k", progress=False)
    queries = patching.patch_head_qkv_pattern(model, clean, corrupted, logit_diff, "q", progress=False)
    kv_dim = "kv_head" if case in GQA else "head"
    assert keys.dims == ("layer", kv_dim) and keys.values.shape == (cfg.n_layers, cfg.n_kv_heads)
    assert queries.dims == ("layer", "head") and queries.values.shape == (cfg.n_layers, cfg.n_heads)
    site = patching.Site("blocks.1.attn.hook_k", head=cfg.n_kv_heads - 1)
    assert keys.values[1, -1] == pytest.approx(hand_patched_metric(model, corrupted, clean, site), abs=1e-5)
    match = r"head=\d+ is out of range 0\.\.%d" % (cfg.n_kv_heads - 1) + (r".*kv heads" if case in GQA else "")
    with pytest.raises(ValueError, match=match):
        patching.patch(model, clean, corrupted, logit_diff, [patching.Site("blocks.0.attn.hook_v", head=cfg.n_kv_heads)])
    if case in ROTARY:
        rot_k = patching.patch_head_qkv_pattern(model, clean, corrupted, logit_diff, "rot_k", progress=False)
        assert rot_k.values.shape == keys.values.shape
    else:
        with pytest.raises(ValueError, match="learned positions"):
            patching.patch_head_qkv_pattern(model, clean, corrupted, logit_diff, "rot_k", progress=False)


@pytest.mark.parametrize("case", ALL)
def test_attribution_patching_is_the_gradient_dot_the_difference(case):
    """attribution_patch's k (and rot_q) tables against autograd through leaf copies of the activations."""
    model = model_of(case)
    clean, corrupted = clean_and_corrupted(case)
    kinds = ["k", "rot_q"] if case in ROTARY else ["k"]
    if case not in ROTARY:
        with pytest.raises(ValueError, match="rotary"):
            attribution_patch(model, clean, corrupted, logit_diff, "rot_q")
    for kind in kinds:
        names = [f"blocks.{layer}.attn.hook_{kind}" for layer in range(model.cfg.n_layers)]
        with torch.no_grad():
            _, clean_cache = model.run_with_cache(clean, names_filter=names)
        rows = []
        for name in names:  # one leaf per run: a leaf in layer 1 would cut layer 0's path through it
            leaf = {}

            def make_leaf(activation, hook):
                leaf["value"] = activation.detach().clone().requires_grad_(True)
                return leaf["value"]

            with torch.enable_grad():
                metric = logit_diff(model.run_with_hooks(corrupted, fwd_hooks=[(name, make_leaf)]))
                (grad,) = torch.autograd.grad(metric, [leaf["value"]])
            rows.append(((clean_cache[name] - leaf["value"].detach()) * grad).sum((0, 1, 3)))
        expected = torch.stack(rows).double()
        estimate = attribution_patch(model, clean, corrupted, logit_diff, kind)
        n_heads = model.cfg.n_kv_heads if kind == "k" else model.cfg.n_heads
        assert estimate.values.shape == (model.cfg.n_layers, n_heads)
        assert estimate.dims[1] == ("kv_head" if kind == "k" and case in GQA else "head")
        torch.testing.assert_close(estimate.effect, expected, rtol=1e-4, atol=1e-6 * float(expected.abs().max()))
    resid = attribution_patch(model, clean, corrupted, logit_diff, "resid_pre")  # roots: hook_embed only on rotary
    assert resid.values.shape == (model.cfg.n_layers, N_POS)


@torch.no_grad()
@pytest.mark.parametrize("case", ALL)
def test_path_patching_into_keys_equals_the_three_runs_by_hand(case):
    """Sender L0H(last) into the keys of layer 1's last kv head: IOI's runs written out with hooks."""
    model = model_of(case)
    clean, corrupted = clean_and_corrupted(case)
    cfg = model.cfg
    sender, receiver = (0, cfg.n_heads - 1), (1, cfg.n_kv_heads - 1, "k")
    z_names = [f"blocks.{layer}.attn.hook_z" for layer in range(cfg.n_layers)]
    _, clean_cache = model.run_with_cache(clean, names_filter=z_names)
    _, corrupted_cache = model.run_with_cache(corrupted, names_filter=z_names)

    def freeze(z, hook):
        frozen = clean_cache[hook.name].clone()
        if hook.name == f"blocks.{sender[0]}.attn.hook_z":
            frozen[:, :, sender[1]] = corrupted_cache[hook.name][:, :, sender[1]]
        return frozen

    recorded = {}

    def record(k, hook):
        recorded["k"] = k.clone()

    model.run_with_hooks(clean, fwd_hooks=[(name, freeze) for name in z_names] + [("blocks.1.attn.hook_k", record)])

    def receive(k, hook):
        k = k.clone()
        k[:, :, receiver[1]] = recorded["k"][:, :, receiver[1]]
        return k

    expected = float(logit_diff(model.run_with_hooks(clean, fwd_hooks=[("blocks.1.attn.hook_k", receive)])))
    got = path_patch(model, clean, corrupted, logit_diff, sender, [receiver])
    assert got == pytest.approx(expected, abs=1e-5)
    assert got != pytest.approx(float(logit_diff(model(clean))), abs=1e-7)  # the path carries something
    if case in GQA:
        with pytest.raises(ValueError, match="kv head"):
            path_patch(model, clean, corrupted, logit_diff, sender, [(1, cfg.n_kv_heads, "k")])
        path_patch(model, clean, corrupted, logit_diff, sender, [(1, cfg.n_heads - 1, "q")])  # q: query heads


# ----- head scores -----------------------------------------------------------------------------
def direct_repeated_scores(attentions, length: int, has_bos: bool, exclude_bos: bool = False):
    """Plain loops over transformers' attentions (as tests/test_heads.py), for [BOS] + r + r tokens."""
    start = 1 if has_bos else 0
    n_layers, (batch, n_heads, _, _) = len(attentions), attentions[0].shape
    second = range(start + length, start + 2 * length)
    queries = {"induction": [(i, i - length + 1) for i in second], "duplicate_token": [(i, i - length) for i in second],
               "previous_token": [(i, i - 1) for i in range(1, start + 2 * length)]}
    result = {}
    for name, pairs in queries.items():
        if exclude_bos:
            pairs = [(q, k) for q, k in pairs if k != 0]
        table = torch.zeros(n_layers, n_heads, dtype=torch.float64)
        for layer, pattern in enumerate(attentions):
            pattern = pattern.double()
            for q, k in pairs:
                mass = pattern[:, :, q, k]
                table[layer] += (mass / (1 - pattern[:, :, q, 0]) if exclude_bos else mass).sum(0)
        result[name] = table / (batch * len(pairs))
    return result


@pytest.mark.parametrize("case", ALL)
def test_head_scores_equal_a_direct_computation_from_transformers(case):
    model = model_of(case)
    hf = families.hf_model(case, attn_implementation="eager")
    length, n = 6, 3
    tokens = heads.protocol_tokens(model, n_sequences=n, length=length, seed=2)
    has_bos = model.cfg.bos_token_id is not None
    with torch.no_grad():
        attentions = hf(tokens, output_attentions=True).attentions
    for exclude_bos in (False, True):
        scores = heads.repeated_random_scores(model, n_sequences=n, length=length, seed=2, exclude_bos=exclude_bos,
                                              with_loss=False, progress=False)
        reference = direct_repeated_scores(attentions, length, has_bos, exclude_bos)
        for name, table in reference.items():
            assert scores[name].shape == (model.cfg.n_layers, model.cfg.n_heads)
            torch.testing.assert_close(scores[name].double(), table, rtol=0, atol=1e-6)
    # text scores (repeats found from the tokens) against the same attentions, per definition
    text = heads.text_scores(model, tokens, progress=False)
    targets = heads.text_targets(tokens)
    expected = heads.scores_from_patterns(attentions, targets)
    for name in ("induction", "duplicate_token", "previous_token"):
        torch.testing.assert_close(text[name].double(), expected[name].double(), rtol=0, atol=1e-6)


# ----- circuits and neurons --------------------------------------------------------------------
@pytest.mark.parametrize("case", ALL)
def test_circuits_are_per_query_head_and_positional_qk_needs_learned_positions(case):
    model = model_of(case, processed=True)
    cfg = model.cfg
    for layer, head in [(0, 0), (1, cfg.n_heads - 1)]:
        attn = model.blocks[layer].attn
        W_K = attn.W_K_kv[kv_of(model, head)]
        torch.testing.assert_close(circuits.qk_circuit(model, layer, head).AB, attn.W_Q[head] @ W_K.T)
        torch.testing.assert_close(circuits.ov_circuit(model, layer, head).AB,
                                   attn.W_V_kv[kv_of(model, head)] @ attn.W_O[head])
    if case in ROTARY:
        with pytest.raises(ValueError, match="rotary positions.*no W_pos"):
            circuits.positional_qk_circuit(model, 1, 0)
    else:
        assert circuits.positional_qk_circuit(model, 1, 0, n_positions=8).AB.shape == (8, 8)


@torch.no_grad()
@pytest.mark.parametrize("case", ["gpt2", "neox_parallel", "llama_gqa", "mistral_window", "qwen2_bias"])
def test_composition_scores_equal_dense_products(case):
    model = model_of(case)
    cfg = model.cfg
    scores = {kind: circuits.composition_scores(model, kind) for kind in ("Q", "K", "V")}

    def dense(layer, head):
        attn = model.blocks[layer].attn
        kv = kv_of(model, head)
        qk = attn.W_Q[head].double() @ attn.W_K_kv[kv].double().T
        return qk, attn.W_V_kv[kv].double() @ attn.W_O[head].double()

    for head_a, head_b in itertools.product(range(cfg.n_heads), repeat=2):
        _, ov_a = dense(0, head_a)
        qk_b, ov_b = dense(1, head_b)
        for kind, matrix in (("Q", qk_b), ("K", qk_b.T), ("V", ov_b)):
            expected = (ov_a @ matrix).norm() / (ov_a.norm() * matrix.norm())
            assert float(scores[kind][0, head_a, 1, head_b]) == pytest.approx(float(expected), rel=1e-4), (kind, head_a, head_b)
    assert float(scores["K"][1].abs().max()) == 0.0  # no later layer to compose with


@pytest.mark.parametrize("case", ["gpt2", "neox_serial", "llama_gqa", "qwen2_bias"])
def test_neuron_cosines_name_their_input_weight(case):
    model = model_of(case)
    block = model.blocks[1]
    by_hand = torch.nn.functional.cosine_similarity(block.mlp.W_in.T, block.mlp.W_out, dim=-1)
    torch.testing.assert_close(neurons.neuron_in_out_cosine(model)[1], by_hand)
    if case in GATED:
        gate = torch.nn.functional.cosine_similarity(block.mlp.W_gate.T, block.mlp.W_out, dim=-1)
        torch.testing.assert_close(neurons.neuron_in_out_cosine(model, reading="gate")[1], gate)
        assert neurons.most_negative_neurons(model, k=2, reading="gate")[1][0].index == int(gate.argmin())
    else:
        with pytest.raises(ValueError, match="not gated"):
            neurons.neuron_in_out_cosine(model, reading="gate")


# ----- processing ------------------------------------------------------------------------------
@torch.no_grad()
@pytest.mark.parametrize("case", ALL)
def test_processing_keeps_log_probs_and_refuses_centring_under_rmsnorm(case):
    raw, processed = model_of(case), model_of(case, processed=True)
    tokens = families.tokens(case, batch=2, pos=N_POS, seed=3)
    expected = raw(tokens).log_softmax(-1)
    error = float((processed(tokens).log_softmax(-1) - expected).abs().max())
    assert error < 1e-5, error
    assert processed.processing["center_writing_weights"] == (case not in RMS)
    if case in RMS:
        fresh = families.load(case)
        with pytest.raises(ValueError, match="RMSNorm.*does not"):
            fresh.process_weights_(center_writing_weights=True)
