"""Activation, path and attribution patching (interp.analysis.patching / .attribution).

References are the same experiment written differently here: plain `run_with_hooks` forwards with
a hook that overwrites one slice, per-head input hooks, and for attribution patching the derivative
of the metric along each patch, taken by autograd through one scalar per site. Identities
(identical activations are not rerun and give the unpatched metric exactly) are checked on runs
where other sites do change, so a patching that does nothing fails.
"""

import pytest
import torch
from conftest import random_tokens, tiny_hf_config

from interp import HookedTransformer
from interp.analysis import patching
from interp.analysis.attribution import SITES, _ranks, attribution_patch, compare_attribution
from interp.analysis.path_patching import path_patch, path_patch_all_senders
from interp.analysis.patching import PatchResult, Site
from interp.testing import random_hf_gpt2

CLEAN = random_tokens(101, batch=1, pos=12, seed=0)
CORRUPTED = CLEAN.clone()
CORRUPTED[0, 3], CORRUPTED[0, 7] = (CLEAN[0, 3] + 7) % 101, (CLEAN[0, 7] + 11) % 101


def logit_diff(logits):
    """Mean logit difference between two tokens at the last position (a scalar for any batch)."""
    return (logits[:, -1, 5] - logits[:, -1, 9]).mean()


@pytest.fixture(scope="module")
def model():
    return HookedTransformer.from_pretrained(random_hf_gpt2(tiny_hf_config("2L-4H-untied"), seed=1))


@pytest.fixture(scope="module")
def model64():
    """Float64, so rounding (1e-16) sits far below the smallest effects (1e-8) we compare."""
    return HookedTransformer.from_pretrained(random_hf_gpt2(tiny_hf_config("2L-4H-untied"), seed=1)).double()


def run_kind(model, kind, clean, corrupted, **options):
    """The activation-patching function for an attribution site kind."""
    if kind in ("q", "k", "v", "pattern"):
        return patching.patch_head_qkv_pattern(model, clean, corrupted, logit_diff, kind, progress=False, **options)
    return getattr(patching, f"patch_{kind}")(model, clean, corrupted, logit_diff, progress=False, **options)


@torch.no_grad()
def plain_metric(model, tokens, fwd_hooks=()):
    """The metric of a plain forward (with optional hooks), written without the patching module."""
    return float(logit_diff(model.run_with_hooks(tokens, fwd_hooks=fwd_hooks)))


def no_hooks_left(model):
    return not any(point.has_hooks for point in model.hook_dict.values())


# Two corrupted runs of CLEAN, in float64 (d_head = 8): other tokens at positions 3 and 7, or noise
# on layer 0 head 1's values from position 5 on. The second leaves every layer-0 query, key and
# pattern, the other layer-0 heads and all positions before 5 unchanged, so every site kind has both
# sites that differ and sites that are identical between the runs.
VALUE_NOISE = 0.1 * torch.randn(1, 12, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)


def noisy_values(v, hook):
    v = v.clone()
    v[:, 5:, 1] += VALUE_NOISE[:, 5:]  # broadcasts over the rows of a batched run
    return v


CORRUPTIONS = {"tokens": (CORRUPTED, []), "values": (CLEAN, [("blocks.0.attn.hook_v", noisy_values)])}


def sites_of(kind, n_layers=2, n_pos=12, n_heads=4):
    """(table index, hook name, activation index after the batch axis) of every site of a kind.

    Written from the hook shapes (resid/attn_out/mlp_out `[batch, pos, d_model]`, q/k/v/z
    `[batch, pos, n_heads, d_head]`, pattern `[batch, n_heads, query_pos, key_pos]`), not with the
    patching module's own index helpers.
    """
    layers, positions, heads = range(n_layers), range(n_pos), range(n_heads)
    if kind in ("resid_pre", "attn_out", "mlp_out"):
        return [((layer, pos), f"blocks.{layer}.hook_{kind}", (pos,)) for layer in layers for pos in positions]
    if kind == "head_out_by_pos":
        return [((layer, pos, head), f"blocks.{layer}.attn.hook_z", (pos, head))
                for layer in layers for pos in positions for head in heads]
    if kind == "pattern":
        return [((layer, head), f"blocks.{layer}.attn.hook_pattern", (head,)) for layer in layers for head in heads]
    suffix = "z" if kind == "head_out" else kind
    return [((layer, head), f"blocks.{layer}.attn.hook_{suffix}", (slice(None), head))
            for layer in layers for head in heads]


@torch.no_grad()
def activations(model, tokens, fwd_hooks, hook_names):
    """Copies of the named activations of one plain forward with `fwd_hooks`."""
    saved = {}

    def save(activation, hook):
        saved[hook.name] = activation.clone()

    model.run_with_hooks(tokens, fwd_hooks=list(fwd_hooks) + [(name, save) for name in hook_names])
    return saved


def source_and_target(model, kind, direction, corruption):
    """(target tokens, target hooks, source activations, target activations) of one experiment."""
    corrupted_tokens, corrupted_hooks = CORRUPTIONS[corruption]
    clean_run, corrupted_run = (CLEAN, []), (corrupted_tokens, corrupted_hooks)
    source, target = (clean_run, corrupted_run) if direction == "denoise" else (corrupted_run, clean_run)
    hook_names = sorted({name for _, name, _ in sites_of(kind)})  # all hooked, as in the patching call
    return (*target, activations(model, *source, hook_names), activations(model, *target, hook_names))


# ----- activation patching ---------------------------------------------------------------------
@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
@pytest.mark.parametrize("direction", ["denoise", "noise"])
@pytest.mark.parametrize("kind", list(SITES))
def test_patching_each_site_equals_a_hand_written_patch(model64, kind, direction, corruption):
    """Sites that differ between the runs: the metric of a plain forward of the target run whose
    one activation slice is overwritten by a hook. Identical sites: exactly the target metric, not rerun."""
    model = model64
    corrupted_tokens, corrupted_hooks = CORRUPTIONS[corruption]
    target_tokens, target_hooks, source, target = source_and_target(model, kind, direction, corruption)
    rows = []  # batch size of every forward the patching call makes
    counter = model.register_forward_pre_hook(lambda module, args: rows.append(args[0].shape[0]))
    try:
        result = run_kind(model, kind, CLEAN, corrupted_tokens, direction=direction, corrupted_hooks=corrupted_hooks)
    finally:
        counter.remove()
    assert no_hooks_left(model)
    target_metric = result.corrupted_metric if direction == "denoise" else result.clean_metric
    # In float64 the hooked reference runs differ from plain forwards only by rounding (~1e-16).
    assert result.clean_metric == pytest.approx(plain_metric(model, CLEAN), abs=1e-12)
    assert result.corrupted_metric == pytest.approx(plain_metric(model, corrupted_tokens, corrupted_hooks), abs=1e-12)

    n_changed, largest_effect = 0, 0.0
    for table_index, hook_name, index in sites_of(kind):
        where = (slice(None),) + index
        if torch.equal(source[hook_name][where], target[hook_name][where]):
            assert result.values[table_index] == target_metric, (hook_name, index)
            continue

        def overwrite(activation, hook, where=where, hook_name=hook_name):
            activation = activation.clone()
            activation[where] = source[hook_name][where]
            return activation

        expected = plain_metric(model, target_tokens, list(target_hooks) + [(hook_name, overwrite)])
        # Batched rows and (for patterns) explicit attention in other layers change only float64 rounding.
        assert result.values[table_index] == pytest.approx(expected, abs=1e-12), (hook_name, index)
        n_changed += 1
        largest_effect = max(largest_effect, abs(expected - target_metric))
    assert n_changed > 0 and largest_effect > 1e-9  # a patch that wrote nothing (or the wrong slice) fails
    # Two reference runs, then one copy of the target per changed site; identical sites are never run.
    assert rows[:2] == [1, 1] and sum(rows[2:]) == n_changed


def test_shapes_and_labels(model):
    assert patching.patch_resid_pre(model, CLEAN, CORRUPTED, logit_diff, progress=False).values.shape == (2, 12)
    by_pos = patching.patch_head_out_by_pos(model, CLEAN, CORRUPTED, logit_diff, layers=[1], progress=False)
    assert by_pos.dims == ("layer", "pos", "head") and by_pos.values.shape == (1, 12, 4)
    assert by_pos.labels["layer"] == [1] and by_pos.labels["head"] == [0, 1, 2, 3]


def test_patching_the_whole_residual_stream_recovers_the_clean_metric(model):
    sites = [Site("blocks.0.hook_resid_pre"), Site("blocks.1.hook_resid_pre"), Site("blocks.1.hook_resid_post")]
    denoised = patching.patch(model, CLEAN, CORRUPTED, logit_diff, sites, progress=False)
    noised = patching.patch(model, CLEAN, CORRUPTED, logit_diff, sites, direction="noise", progress=False)
    assert abs(denoised.clean_metric - denoised.corrupted_metric) > 1e-4  # the corruption matters
    # The rest of the forward is the clean (corrupted) run's own computation; 1e-5 is fp32 rounding room.
    torch.testing.assert_close(denoised.values, torch.full((3,), denoised.clean_metric, dtype=torch.float64),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(noised.values, torch.full((3,), noised.corrupted_metric, dtype=torch.float64),
                               atol=1e-5, rtol=0)


def test_one_site_per_forward_takes_the_clean_runs_compute_path_exactly(model):
    # Hooking layer 1's pattern switches it to explicit attention, which rounds differently from SDPA
    # here; every run of the call must switch too, or the whole-residual patches would miss by ~3e-8.
    sites = [Site("blocks.1.attn.hook_pattern", head=0), Site("blocks.0.hook_resid_pre"), Site("blocks.1.hook_resid_pre")]
    result = patching.patch(model, CLEAN, CORRUPTED, logit_diff, sites, batch_size=1, progress=False)
    assert result.clean_metric != plain_metric(model, CLEAN)  # the path switch is visible in this model
    assert (result.values[1:] == result.clean_metric).all()  # same shapes, same kernels: exact


def test_sites_before_the_first_changed_token_are_exactly_unchanged(model):
    result = patching.patch_resid_pre(model, CLEAN, CORRUPTED, logit_diff, progress=False)  # token 3 changed
    assert (result.values[:, :3] == result.corrupted_metric).all()  # causal: identical activations, not run
    assert (result.values[:, 3] != result.corrupted_metric).all()


@pytest.mark.parametrize("n_prompts", [1, 2])
def test_batched_patching_equals_one_site_per_forward(model, n_prompts):
    clean = random_tokens(101, batch=n_prompts, pos=10, seed=3)
    corrupted = random_tokens(101, batch=n_prompts, pos=10, seed=4)
    one = patching.patch_head_out_by_pos(model, clean, corrupted, logit_diff, batch_size=1, progress=False)
    for batch_size in (7, 64):  # uneven last chunk; everything in one forward
        batched = patching.patch_head_out_by_pos(model, clean, corrupted, logit_diff, batch_size=batch_size,
                                                 progress=False)
        # Rows of one forward are independent; 1e-6 allows batch-size-dependent BLAS blocking.
        torch.testing.assert_close(batched.values, one.values, atol=1e-6, rtol=0)


def test_head_out_by_pos_matches_a_direct_loop(model):
    result = patching.patch_head_out_by_pos(model, CLEAN, CORRUPTED, logit_diff, progress=False)
    _, clean_cache = model.run_with_cache(CLEAN)
    expected = torch.zeros(2, 12, 4, dtype=torch.float64)
    for layer in range(2):
        for pos in range(12):
            for head in range(4):
                def put_clean(z, hook, pos=pos, head=head):
                    z = z.clone()
                    z[:, pos, head] = clean_cache[hook.name][:, pos, head]
                    return z

                expected[layer, pos, head] = plain_metric(model, CORRUPTED, [(f"blocks.{layer}.attn.hook_z", put_clean)])
    torch.testing.assert_close(result.values, expected, atol=1e-6, rtol=0)  # same sums, batch 16 vs 1
    assert result.effect.abs().max() > 1e-5  # and the table is not trivially flat


def test_noising_equals_denoising_with_swapped_arguments(model):
    noised = patching.patch_attn_out(model, CLEAN, CORRUPTED, logit_diff, direction="noise", progress=False)
    swapped = patching.patch_attn_out(model, CORRUPTED, CLEAN, logit_diff, progress=False)
    assert torch.equal(noised.values, swapped.values)
    assert (noised.clean_metric, noised.corrupted_metric) == (swapped.corrupted_metric, swapped.clean_metric)


def test_patch_result_helpers():
    values = torch.tensor([[0.0, 0.5], [1.0, 0.25]], dtype=torch.float64)
    result = PatchResult(values, ("layer", "head"), {"layer": [2, 3], "head": [0, 1]},
                         clean_metric=1.0, corrupted_metric=0.0)
    assert result.argmax() == (3, 0)
    assert result.top(2) == [((3, 0), 1.0), ((2, 1), 0.5)]
    assert result.top(1, largest=False) == [((2, 0), 0.0)]
    assert torch.equal(result.normalized, values) and torch.equal(result.effect, values)


def test_errors_say_the_fix(model):
    with pytest.raises(ValueError, match="same number of tokens"):
        patching.patch_resid_pre(model, CLEAN, CLEAN[:, :10], logit_diff, progress=False)
    with pytest.raises(ValueError, match=r"returned \(1, 12\).*reduce it"):
        patching.patch_resid_pre(model, CLEAN, CORRUPTED, lambda logits: logits[:, :, 5], progress=False)
    assert no_hooks_left(model)
    with pytest.raises(ValueError, match=r"Layer 2 is out of range.*0\.\.1"):
        patching.patch_head_out(model, CLEAN, CORRUPTED, logit_diff, layers=[2], progress=False)
    with pytest.raises(KeyError, match="Did you mean"):
        patching.patch(model, CLEAN, CORRUPTED, logit_diff, [Site("blocks.0.hook_resid_pr")], progress=False)
    with pytest.raises(ValueError, match="no head axis"):
        patching.patch(model, CLEAN, CORRUPTED, logit_diff, [Site("blocks.0.hook_resid_pre", head=0)])
    with pytest.raises(ValueError, match=r"pos=12 is out of range 0\.\.11"):
        patching.patch(model, CLEAN, CORRUPTED, logit_diff, [Site("blocks.0.attn.hook_z", pos=12)])
    with pytest.raises(ValueError, match="direction"):
        patching.patch_resid_pre(model, CLEAN, CORRUPTED, logit_diff, direction="forward", progress=False)


# ----- path patching ---------------------------------------------------------------------------
def test_path_patching_to_unreachable_receivers_changes_nothing(model):
    clean_metric = plain_metric(model, CLEAN)
    for sender in [(1, 2), (0, 1)]:  # receivers in an earlier layer, or in the sender's own layer
        receivers = [(0, 0, "q"), (0, 3, "k"), (sender[0], 1, "v")]
        assert path_patch(model, CLEAN, CORRUPTED, logit_diff, sender, receivers) == clean_metric
    assert no_hooks_left(model)


def test_direct_path_to_logits_of_last_layer_equals_activation_patching(model):
    direct = path_patch_all_senders(model, CLEAN, CORRUPTED, logit_diff, "logits", progress=False)
    total = patching.patch_head_out(model, CLEAN, CORRUPTED, logit_diff, direction="noise", progress=False)
    # Nothing but the last MLP follows a last-layer head, and it recomputes in both: the same run.
    torch.testing.assert_close(direct.values[1], total.values[1], atol=1e-6, rtol=0)
    # A first-layer head also acts through layer-1 heads, which path patching freezes.
    assert ((direct.values[0] - total.values[0]).abs() > 1e-6).all()


def test_direct_path_to_logits_with_frozen_mlps_adds_the_sender_output(model):
    layer, head = 0, 2
    _, clean_cache = model.run_with_cache(CLEAN)
    _, corrupted_cache = model.run_with_cache(CORRUPTED)
    z_change = corrupted_cache["z", layer][:, :, head] - clean_cache["z", layer][:, :, head]
    output_change = z_change @ model.blocks[layer].attn.W_O[head]  # [batch, pos, d_model]
    expected = plain_metric(model, CLEAN, [("blocks.1.hook_resid_post", lambda resid, hook: resid + output_change)])
    value = path_patch(model, CLEAN, CORRUPTED, logit_diff, (layer, head), "logits", freeze_mlps=True)
    assert value == pytest.approx(expected, abs=1e-6)  # fp32 summation order only
    assert value != path_patch(model, CLEAN, CORRUPTED, logit_diff, (layer, head), "logits")  # MLPs recompute


@pytest.mark.parametrize("which", ["q", "k", "v"])
def test_path_patching_a_receiver_equals_patching_its_per_head_input(model64, which):
    """The IOI definition: the receiver head alone reads the residual stream plus the sender's output.

    In float64: at this random init a query/key change moves the metric by about 1e-9, below fp32 rounding.
    """
    model = model64
    sender, receiver_head = (0, 1), 3
    _, clean_cache = model.run_with_cache(CLEAN)
    _, corrupted_cache = model.run_with_cache(CORRUPTED)
    z_change = corrupted_cache["z", 0][:, :, 1] - clean_cache["z", 0][:, :, 1]
    output_change = z_change @ model.blocks[0].attn.W_O[1]

    def add_to_receiver_copy(per_head, hook):
        per_head = per_head.clone()
        per_head[:, :, receiver_head] += output_change
        return per_head

    expected = plain_metric(model, CLEAN, [(f"blocks.1.hook_{which}_input", add_to_receiver_copy)])
    value = path_patch(model, CLEAN, CORRUPTED, logit_diff, sender, [(1, receiver_head, which)], freeze_mlps=True)
    assert abs(value - plain_metric(model, CLEAN)) > 1e-12  # the path carries something
    assert value == pytest.approx(expected, abs=1e-13)  # per-head path: same maths, float64 rounding


def test_path_patching_all_senders_equals_one_at_a_time(model):
    receivers = [(1, 0, "q"), (1, 0, "k"), (1, 2, "v")]
    table = path_patch_all_senders(model, CLEAN, CORRUPTED, logit_diff, receivers, batch_size=3, progress=False)
    assert table.dims == ("layer", "head") and table.values.shape == (1, 4) and table.direction == "noise"
    one_by_one = [path_patch(model, CLEAN, CORRUPTED, logit_diff, (0, head), receivers) for head in range(4)]
    torch.testing.assert_close(table.values[0], torch.tensor(one_by_one, dtype=torch.float64), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="no head can send"):
        path_patch_all_senders(model, CLEAN, CORRUPTED, logit_diff, [(0, 0, "q")], progress=False)
    with pytest.raises(ValueError, match="'q', 'k', 'v'"):
        path_patch(model, CLEAN, CORRUPTED, logit_diff, (0, 0), [(1, 0, "z")])
    with pytest.raises(ValueError, match=r"0\.\.1"):
        path_patch(model, CLEAN, CORRUPTED, logit_diff, (5, 0), "logits")


# ----- attribution patching --------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(SITES))
def test_attribution_agrees_with_activation_patching_for_a_small_corruption(model64, kind):
    # Corrupted run = the clean tokens with noise of 1e-3 per embedding coordinate (the embeddings
    # themselves are about 0.02), as in causal tracing: small enough for first order to dominate.
    noise = 1e-3 * torch.randn(1, 12, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    corrupt = [("hook_embed", lambda embed, hook: embed + noise)]
    actual = run_kind(model64, kind, CLEAN, CLEAN, corrupted_hooks=corrupt)
    estimate = attribution_patch(model64, CLEAN, CLEAN, logit_diff, kind, corrupted_hooks=corrupt)
    assert estimate.values.shape == actual.values.shape and estimate.dims == actual.dims
    assert estimate.corrupted_metric == actual.corrupted_metric
    agreement = compare_attribution(actual, estimate)
    # Measured: spearman >= 0.999, sign agreement 1.0, relative error <= 1.2% (resid_pre, the largest
    # patch); the thresholds leave room but still fail if the gradient or the sign convention is wrong.
    assert agreement["spearman"] > 0.99 and agreement["pearson"] > 0.99
    assert agreement["sign_agreement"] >= 0.95
    assert agreement["relative_error"] < 0.05


def test_attribution_in_the_noising_direction(model64):
    actual = patching.patch_head_out(model64, CLEAN, CORRUPTED, logit_diff, direction="noise", progress=False)
    estimate = attribution_patch(model64, CLEAN, CORRUPTED, logit_diff, "head_out", direction="noise")
    assert estimate.clean_metric == pytest.approx(actual.clean_metric, abs=1e-12)
    # Two changed tokens are not a small corruption: the estimate only needs to rank heads sensibly.
    assert compare_attribution(actual, estimate)["pearson"] > 0.5


def derivatives_along(model, tokens, fwd_hooks, directions):
    """d metric / d eps_i at eps = 0, where hook `name` adds sum_i eps_i * directions[name][i] to its activation.

    directions: {hook name: [n_sites, *activation shape]}. One forward and backward for every site:
    each eps_i is a scalar, so its gradient is the derivative of the metric along direction i.
    """
    eps = {name: torch.zeros(len(stack), dtype=stack.dtype, requires_grad=True) for name, stack in directions.items()}

    def move(activation, hook):
        return activation + torch.tensordot(eps[hook.name], directions[hook.name], dims=1)

    with torch.enable_grad():
        value = logit_diff(model.run_with_hooks(tokens, fwd_hooks=list(fwd_hooks) + [(n, move) for n in directions]))
        grads = torch.autograd.grad(value, list(eps.values()))
    return dict(zip(eps, grads))


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
@pytest.mark.parametrize("direction", ["denoise", "noise"])
@pytest.mark.parametrize("kind", list(SITES))
def test_attribution_is_the_derivative_of_the_metric_along_each_patch(model64, kind, direction, corruption):
    """The attribution of a site is (a_source - a_target) · ∂metric/∂a on the target run, i.e. the
    derivative of the metric at eps = 0 of the target run with that site moved by eps (a_source - a_target).
    Here that derivative comes from autograd through a scalar eps per site (heads: the head's slice
    of hook_z, q, k, v or pattern only), not from the gradient of the whole activation."""
    model = model64
    corrupted_tokens, corrupted_hooks = CORRUPTIONS[corruption]
    requires_grad = [p.requires_grad for p in model.parameters()]
    estimate = attribution_patch(model, CLEAN, corrupted_tokens, logit_diff, kind, direction=direction,
                                 corrupted_hooks=corrupted_hooks)
    assert all(p.grad is None for p in model.parameters())
    assert [p.requires_grad for p in model.parameters()] == requires_grad
    assert no_hooks_left(model)
    assert estimate.clean_metric == pytest.approx(plain_metric(model, CLEAN), abs=1e-12)
    assert estimate.corrupted_metric == pytest.approx(plain_metric(model, corrupted_tokens, corrupted_hooks), abs=1e-12)

    target_tokens, target_hooks, source, target = source_and_target(model, kind, direction, corruption)
    sites = sites_of(kind)
    directions = {name: [] for _, name, _ in sites}
    for _, hook_name, index in sites:
        where = (slice(None),) + index
        step = torch.zeros_like(target[hook_name])
        step[where] = source[hook_name][where] - target[hook_name][where]
        directions[hook_name].append(step)
    derivatives = derivatives_along(model, target_tokens, target_hooks,
                                    {name: torch.stack(steps) for name, steps in directions.items()})
    expected = torch.zeros_like(estimate.values)
    position = {name: 0 for name in directions}
    for table_index, hook_name, _ in sites:
        expected[table_index] = derivatives[hook_name][position[hook_name]]
        position[hook_name] += 1
    assert expected.abs().max() > 1e-9  # the corruption moves every kind's sites (q, k: ~1e-8 at this init)
    # Both are the same first-order quantity in float64, summed in a different order: ~1e-16 apart.
    torch.testing.assert_close(estimate.effect, expected, atol=1e-12, rtol=1e-9)


def test_attribution_errors(model):
    with pytest.raises(ValueError, match="site must be one of"):
        attribution_patch(model, CLEAN, CORRUPTED, logit_diff, "resid_post")
    with pytest.raises(ValueError, match="without a gradient"):
        attribution_patch(model, CLEAN, CORRUPTED, lambda logits: logit_diff(logits).item(), "head_out")
    assert no_hooks_left(model)


def test_compare_attribution_statistics():
    values = torch.tensor([[0.1, -0.2], [0.3, 0.0]], dtype=torch.float64)
    result = PatchResult(values, ("layer", "head"), {"layer": [0, 1], "head": [0, 1]}, 1.0, 0.0)
    assert compare_attribution(result, result) == {"pearson": pytest.approx(1.0), "spearman": pytest.approx(1.0),
                                                   "sign_agreement": 1.0, "relative_error": 0.0}
    assert _ranks(torch.tensor([3.0, 1.0, 1.0, 2.0])).tolist() == [3.0, 0.5, 0.5, 2.0]
