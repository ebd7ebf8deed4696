"""Edge attribution (`interp.analysis.edge_attribution`): EAP, EAP-IG and edge IG against exact edge patching,
against gradients and finite differences computed here, and the frozen (affine) model in which EAP is exact."""

from __future__ import annotations

import functools

import pytest
import torch

import families
from interp import HookedTransformer
from interp.analysis.circuit_task import CircuitTask, induction_task
from interp.analysis.edge_attribution import eap, eap_ig, edge_ig
from interp.analysis.edge_patching import evaluate_circuits, exact_edge_scores, sender_outputs
from interp.analysis.frozen import frozen_hooks
from interp.analysis.graph import Circuit, Graph


@functools.cache
def model_of(case: str) -> HookedTransformer:
    if case.startswith("interp-toy"):
        return HookedTransformer.from_pretrained(case)
    return families.load(case)


def family_inputs(case: str, batch: int = 2, pos: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    return families.tokens(case, batch, pos, seed=0), families.tokens(case, batch, pos, seed=1)


def logit_difference(logits: torch.Tensor) -> torch.Tensor:
    return (logits[:, -1, 3] - logits[:, -1, 5]).mean()


def small_induction_task(model: HookedTransformer, seed: int = 0) -> CircuitTask:
    return induction_task(model, n_pairs=2, n_random=5, n_repeat=3, seed=seed)


# ----- references --------------------------------------------------------------------------------------------
def receiver_input_gradients(model: HookedTransformer, tokens: torch.Tensor, metric,
                             embedding: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """∂metric/∂(each receiver's input), keyed by receiver name, each `[batch, pos, d_model]`; `embedding`
    replaces the input embeddings. Hooks capture the per-head q/k/v copies, the MLP inputs and the final stream."""
    cfg = model.cfg
    captured: dict[str, torch.Tensor] = {}

    def capture(key: str):
        def fn(x, hook):
            captured[key] = x
        return fn

    def replace_embedding(x, hook):
        return embedding.clone().requires_grad_(True)

    hooks = [] if embedding is None else [("blocks.0.hook_resid_pre", replace_embedding)]
    for layer in range(cfg.n_layers):
        for kind in "qkv":
            hooks.append((f"blocks.{layer}.hook_{kind}_input", capture(f"{layer}{kind}")))
        hooks.append((f"blocks.{layer}.hook_mlp_in", capture(f"m{layer}")))
    hooks.append((f"blocks.{cfg.n_layers - 1}.hook_resid_post", capture("logits")))
    with torch.enable_grad(), model.hooks(hooks):
        value = metric(model(tokens))
        keys = list(captured)
        grads = dict(zip(keys, torch.autograd.grad(value, [captured[k] for k in keys], allow_unused=True)))
    result = {}
    grouped = cfg.n_kv_heads != cfg.n_heads
    for layer in range(cfg.n_layers):
        for kind in "qkv":
            grad = grads[f"{layer}{kind}"]
            unit = "kv" if kind != "q" and grouped else "h"
            for i in range(grad.shape[2]):
                result[f"a{layer}.{unit}{i}<{kind}>"] = grad[:, :, i]
        result[f"m{layer}"] = grads[f"m{layer}"]
    result["logits"] = grads["logits"]
    return {k: torch.zeros_like(captured["logits"]) if v is None else v for k, v in result.items()}


def scores_from(graph: Graph, grads: dict[str, torch.Tensor], shift: dict[str, torch.Tensor]) -> torch.Tensor:
    """Σ_{batch, pos} shift_sender · grad_receiver for every edge, edge by edge."""
    return torch.tensor([float((shift[name.split("->")[0]].double() * grads[name.split("->")[1]].double()).sum())
                         for name in graph.edges], dtype=torch.float64)


def outputs_by_name(model: HookedTransformer, graph: Graph, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    return dict(zip(graph.senders, sender_outputs(model, graph, tokens)))


# ----- frozen model: EAP is exact ------------------------------------------------------------------------------
@pytest.mark.parametrize("case", list(families.CASES))
def test_frozen_model_eap_equals_exact_edge_patching(case):
    model = model_of(case)
    clean, corrupted = family_inputs(case)
    hooks = frozen_hooks(model, clean)
    with torch.no_grad(), model.hooks(hooks):
        frozen_logits = model(clean)
    torch.testing.assert_close(frozen_logits, model(clean).detach(), atol=1e-5, rtol=0)  # same clean run
    exact = exact_edge_scores(model, clean, corrupted, logit_difference, hooks=hooks, progress=False)
    scores = eap(model, clean, corrupted, logit_difference, hooks=hooks)
    # An affine model and a linear metric: EAP's first-order term is the whole effect; fp32 rounding remains.
    torch.testing.assert_close(scores.scores, exact.scores, atol=1e-5, rtol=1e-5)
    assert float(exact.scores.abs().max()) > 0.05
    # and the live model is not affine: without the hooks the two differ
    live = exact_edge_scores(model, clean, corrupted, logit_difference, progress=False)
    assert float((live.scores - exact.scores).abs().max()) > 1e-3


@pytest.mark.parametrize("case, estimate", [
    # Constant gradients in an affine model: every interpolation point gives EAP's gradient.
    ("llama_gqa", "eap_ig"), ("neox_parallel", "eap_ig"), ("gpt2", "eap_ig"),
    # With frozen patterns a query or key input has no effect at all (its gradient is zero, not absent): edge IG
    # must give those edges 0 and every other edge its exact score, as EAP does.
    ("llama_gqa", "edge_ig"), ("gpt2", "edge_ig")])
def test_frozen_model_integrated_gradients_equal_exact(case, estimate):
    model = model_of(case)
    clean, corrupted = family_inputs(case)
    hooks = frozen_hooks(model, clean)
    exact = exact_edge_scores(model, clean, corrupted, logit_difference, hooks=hooks, progress=False)
    method, steps = {"eap_ig": (eap_ig, 3), "edge_ig": (edge_ig, 2)}[estimate]
    integrated = method(model, clean, corrupted, logit_difference, steps=steps, hooks=hooks, progress=False)
    torch.testing.assert_close(integrated.scores, exact.scores, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", ["llama_gqa", "neox_parallel"])
def test_frozen_model_edge_effects_add_up_when_no_removal_reaches_another(case):
    # Removing edges whose senders are the input (which no removal changes) shifts each receiver's input by a
    # fixed amount; in the frozen (affine) model with a linear metric the effects then add exactly.
    model = model_of(case)
    clean, corrupted = family_inputs(case)
    hooks = frozen_hooks(model, clean)
    graph = Graph.from_model(model)
    exact = exact_edge_scores(model, clean, corrupted, logit_difference, hooks=hooks, progress=False).scores
    from_input = (graph.edge_sender == 0).nonzero()[:, 0]
    generator = torch.Generator().manual_seed(0)
    into_values = torch.tensor([int(e) for e in from_input if not graph.receivers[graph.edge_receiver[e]].endswith(
        ("<q>", "<k>"))])  # frozen patterns: a q or k input alone changes nothing
    removed_sets = [from_input, from_input[torch.rand(len(from_input), generator=generator) < 0.5], into_values[:4]]
    circuits = [Circuit(graph, None, ~torch.isin(torch.arange(graph.n_edges), removed)) for removed in removed_sets]
    patch = sender_outputs(model, graph, corrupted, hooks=hooks)
    values = evaluate_circuits(model, [Circuit.full(graph), *circuits], clean, patch, logit_difference, hooks=hooks,
                               chunk_size=2)
    expected = torch.stack([exact[removed].sum() for removed in removed_sets])
    torch.testing.assert_close(values[1:] - values[0], expected, atol=2e-5, rtol=1e-5)
    assert float(expected.abs().min()) > 1e-2


# ----- gradients against a reference ---------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["llama_gqa", "neox_parallel", "gpt2"])
def test_eap_is_the_patch_difference_dot_the_clean_gradient(case):
    model = model_of(case)
    clean, corrupted = family_inputs(case)
    graph = Graph.from_model(model)
    clean_out, corrupted_out = outputs_by_name(model, graph, clean), outputs_by_name(model, graph, corrupted)
    shift = {s: corrupted_out[s] - clean_out[s] for s in graph.senders}
    expected = scores_from(graph, receiver_input_gradients(model, clean, logit_difference), shift)
    scores = eap(model, clean, corrupted, logit_difference)
    assert scores.method == "eap" and scores.scores.dtype == torch.float64
    torch.testing.assert_close(scores.scores, expected, atol=1e-6, rtol=1e-5)
    # with a mean patch instead of the corrupted run
    mean_patch = sender_outputs(model, graph, corrupted).mean(1, keepdim=True)
    mean_shift = {s: mean_patch[i] - clean_out[s] for i, s in enumerate(graph.senders)}
    expected = scores_from(graph, receiver_input_gradients(model, clean, logit_difference), mean_shift)
    torch.testing.assert_close(eap(model, clean, None, logit_difference, patch=mean_patch).scores, expected,
                               atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("case", ["llama_gqa", "gpt2"])
def test_eap_ig_with_one_step_takes_the_gradient_on_the_corrupted_run(case):
    # MIB's points are α = k / steps, k = 0 .. steps − 1, so one step is α = 0: the corrupted embeddings,
    # which (the mask and positions being shared) is the corrupted run itself.
    model = model_of(case)
    clean, corrupted = family_inputs(case)
    graph = Graph.from_model(model)
    clean_out, corrupted_out = outputs_by_name(model, graph, clean), outputs_by_name(model, graph, corrupted)
    shift = {s: corrupted_out[s] - clean_out[s] for s in graph.senders}
    expected = scores_from(graph, receiver_input_gradients(model, corrupted, logit_difference), shift)
    scores = eap_ig(model, clean, corrupted, logit_difference, steps=1, progress=False)
    torch.testing.assert_close(scores.scores, expected, atol=1e-6, rtol=1e-5)
    assert float((scores.scores - eap(model, clean, corrupted, logit_difference).scores).abs().max()) > 1e-3


def test_eap_ig_averages_gradients_at_interpolated_embeddings():
    case, steps = "llama_gqa", 3
    model = model_of(case)
    clean, corrupted = family_inputs(case)
    graph = Graph.from_model(model)
    clean_out, corrupted_out = outputs_by_name(model, graph, clean), outputs_by_name(model, graph, corrupted)
    shift = {s: corrupted_out[s] - clean_out[s] for s in graph.senders}
    gradients = [receiver_input_gradients(model, clean, logit_difference,
                                          embedding=corrupted_out["input"] + k / steps * (clean_out["input"] - corrupted_out["input"]))
                 for k in range(steps)]
    mean = {name: sum(g[name] for g in gradients) / steps for name in gradients[0]}
    scores = eap_ig(model, clean, corrupted, logit_difference, steps=steps, progress=False)
    assert scores.method == "eap-ig (3 steps)"
    torch.testing.assert_close(scores.scores, scores_from(graph, mean, shift), atol=1e-6, rtol=1e-5)


def test_eap_equals_a_finite_difference_along_each_edges_patch():
    # In float64 a central difference with ε = 1e-4 has error O(ε²) ≈ 1e-8 relative: EAP is the derivative of
    # the metric along +(patch − out) of the sender, added to that receiver's input only.
    model = families.load("llama_gqa").double()
    clean, corrupted = family_inputs("llama_gqa")
    graph = Graph.from_model(model)
    clean_out, corrupted_out = outputs_by_name(model, graph, clean), outputs_by_name(model, graph, corrupted)
    scores = eap(model, clean, corrupted, logit_difference)
    edges = ["input->a0.h1<q>", "input->a0.kv1<k>", "a0.h4->a1.kv0<v>", "a0.h2->m0", "m0->a1.h5<q>",
             "input->m1", "a1.h3->logits", "m1->logits"]

    def metric_with(edge: str, epsilon: float) -> float:
        sender, receiver = edge.split("->")
        shift = epsilon * (corrupted_out[sender] - clean_out[sender])
        if receiver == "logits":
            point, index = f"blocks.{graph.n_layers - 1}.hook_resid_post", None
        elif receiver.startswith("m"):
            point, index = f"blocks.{receiver[1:]}.hook_mlp_in", None
        else:
            node, kind = receiver[:-1].split("<")
            layer, head = node[1:].split(".kv" if ".kv" in node else ".h")
            point, index = f"blocks.{layer}.hook_{kind}_input", int(head)

        def add(x, hook):
            x = x.clone()
            if index is None:
                x += shift
            else:
                x[:, :, index] += shift
            return x
        with torch.no_grad(), model.hooks([(point, add)]):
            return float(logit_difference(model(clean)))

    epsilon = 1e-4
    for edge in edges:
        difference = (metric_with(edge, epsilon) - metric_with(edge, -epsilon)) / (2 * epsilon)
        score = scores.score(edge)
        assert abs(score - difference) <= 1e-6 * max(1.0, abs(score)), edge
    assert max(abs(scores.score(e)) for e in edges) > 0.01


# ----- edge IG converges to exact patching -----------------------------------------------------------------------
def test_edge_ig_converges_to_exact_patching_on_interp_toy():
    model = model_of("interp-toy")
    task = small_induction_task(model)
    exact = exact_edge_scores(model, **task.inputs(), progress=False).scores
    errors = {steps: float((edge_ig(model, **task.inputs(), steps=steps, progress=False).scores - exact).abs().max())
              for steps in (1, 5, 20)}
    # Observed (interp-toy, 2 induction pairs of 9 tokens, max|exact| = 26.5): 25.8, 0.388, 0.0109; the midpoint
    # rule's error falls about as 1/steps² (35x from 5 to 20 steps).
    scale = float(exact.abs().max())
    assert errors[20] < errors[5] < errors[1]
    assert errors[20] < 0.05 * scale
    assert errors[20] < 0.001 * scale
    assert errors[5] / errors[20] > 8


def test_eap_ig_does_not_converge_to_exact_patching():
    # EAP-IG-inputs integrates the gradient along the *embedding* path, a different quantity from each edge's
    # own patch, so more steps need not bring it to exact patching. Observed max|error| on interp-toy:
    # 26.8, 19.2, 18.5 at 1, 5, 20 steps (max|exact| = 26.5). Recorded, with a loose check that it moves.
    model = model_of("interp-toy")
    task = small_induction_task(model)
    exact = exact_edge_scores(model, **task.inputs(), progress=False).scores
    errors = [float((eap_ig(model, **task.inputs(), steps=s, progress=False).scores - exact).abs().max())
              for s in (1, 5, 20)]
    assert errors[2] < errors[0]
    assert errors[2] > 0.1 * float(exact.abs().max())


# ----- padding -----------------------------------------------------------------------------------------------------
def exact(model, *args, **kwargs):
    return exact_edge_scores(model, *args, progress=False, **kwargs)


def eap_ig_2(model, *args, **kwargs):
    return eap_ig(model, *args, steps=2, progress=False, **kwargs)


def edge_ig_1(model, *args, **kwargs):
    return edge_ig(model, *args, steps=1, progress=False, **kwargs)


@pytest.mark.parametrize("case", ["llama_gqa", "mistral_window", "neox_parallel"])
@pytest.mark.parametrize("method", [exact, eap, eap_ig_2, edge_ig_1], ids=["exact", "eap", "eap_ig", "edge_ig"])
def test_left_padded_batch_scores_are_the_mean_of_each_prompt_alone(case, method):
    # Rotary families: a left-padded row's real tokens keep the positions they have alone, also in the partial
    # forwards (start_at_layer) of exact patching and edge IG.
    model = model_of(case)
    short, long = families.tokens(case, 1, 6, seed=3), families.tokens(case, 1, 9, seed=4)
    short_corrupted, long_corrupted = families.tokens(case, 1, 6, seed=5), families.tokens(case, 1, 9, seed=6)
    filler = torch.full((1, 3), 7)
    clean = torch.cat([torch.cat([filler, short], 1), long])
    corrupted = torch.cat([torch.cat([filler, short_corrupted], 1), long_corrupted])
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[0, :3] = False
    together = method(model, clean, corrupted, logit_difference, attention_mask=mask).scores
    alone = (method(model, short, short_corrupted, logit_difference).scores
             + method(model, long, long_corrupted, logit_difference).scores) / 2
    # Observed <= 2e-6 (fp32 rounding of differently shaped batches).
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)
    assert float(alone.abs().max()) > 0.5


# ----- purity and errors ----------------------------------------------------------------------------------------
def test_attribution_leaves_parameters_and_hooks_untouched():
    model = model_of("gpt2")
    clean, corrupted = family_inputs("gpt2")
    assert all(p.grad is None for p in model.parameters())
    flags = [p.requires_grad for p in model.parameters()]
    before = [p.detach().clone() for p in model.parameters()]
    eap(model, clean, corrupted, logit_difference)
    eap_ig(model, clean, corrupted, logit_difference, steps=2, progress=False)
    edge_ig(model, clean, corrupted, logit_difference, steps=1, progress=False)
    assert all(p.grad is None for p in model.parameters())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert not any(point.has_hooks for point in model.hook_dict.values())
    assert torch.is_grad_enabled()  # the global autograd mode is as it was
    with torch.no_grad():
        under_no_grad = eap(model, clean, corrupted, logit_difference)  # gradients are enabled inside
        assert not torch.is_grad_enabled()
    torch.testing.assert_close(under_no_grad.scores, eap(model, clean, corrupted, logit_difference).scores,
                               atol=0, rtol=0)


@pytest.mark.parametrize("steps", [0, -1, 2.5, "5"])
def test_steps_must_be_a_positive_integer(steps):
    model = model_of("gpt2")
    clean, corrupted = family_inputs("gpt2")
    with pytest.raises(ValueError, match="positive integer"):
        eap_ig(model, clean, corrupted, logit_difference, steps=steps, progress=False)
    with pytest.raises(ValueError, match="positive integer"):
        edge_ig(model, clean, corrupted, logit_difference, steps=steps, progress=False)


def test_patch_and_corrupted_tokens_are_exclusive():
    model = model_of("gpt2")
    clean, corrupted = family_inputs("gpt2")
    patch = sender_outputs(model, Graph.from_model(model), corrupted)
    for method in (eap, eap_ig, edge_ig):
        kwargs = {} if method is eap else {"progress": False}
        with pytest.raises(ValueError, match="exactly one of corrupted_tokens"):
            method(model, clean, corrupted, logit_difference, patch=patch, **kwargs)
        with pytest.raises(ValueError, match="exactly one of corrupted_tokens"):
            method(model, clean, None, logit_difference, **kwargs)


def padded_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    clean, corrupted = family_inputs("gpt2", pos=8)
    mask = torch.ones_like(clean, dtype=torch.bool)
    mask[0, 5:] = False  # row 0 is 5 tokens, right-padded
    return clean, corrupted, mask


def reads_padding(logits):
    return (logits[:, -1, 3] - logits[:, -1, 5]).mean()


@pytest.mark.parametrize("method", [eap, eap_ig, edge_ig], ids=["eap", "eap_ig", "edge_ig"])
def test_a_metric_reading_padded_positions_is_rejected(method):
    model = model_of("gpt2")
    clean, corrupted, mask = padded_inputs()
    kwargs = {} if method is eap else {"steps": 1, "progress": False}
    with pytest.raises(ValueError, match="padded positions"):
        method(model, clean, corrupted, reads_padding, attention_mask=mask, **kwargs)


# ----- per position ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["interp-toy", "llama_gqa", "neox_parallel"])
def test_eap_by_position_sums_to_eap_and_matches_a_backward_hook_on_the_logits_edges(case):
    from interp.analysis.edge_attribution import eap_by_position

    model = model_of(case)
    clean, corrupted = family_inputs(case) if not case.startswith("interp-toy") else \
        (small_induction_task(model).clean, small_induction_task(model).corrupted)
    graph = Graph.from_model(model)
    table = eap_by_position(model, clean, corrupted, logit_difference)
    assert table.shape == (graph.n_edges, clean.shape[1])
    torch.testing.assert_close(table.sum(1), eap(model, clean, corrupted, logit_difference).scores, atol=1e-9, rtol=0)
    # Edges into the logits, from the core's backward hook on the final residual stream and the senders' outputs.
    grads = {}
    last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    with model.hooks(bwd_hooks=[(last, lambda g, hook: grads.__setitem__("g", g.detach()))]):
        logit_difference(model(clean)).backward()
    model.zero_grad(set_to_none=True)
    shift = sender_outputs(model, graph, corrupted) - sender_outputs(model, graph, clean)
    for s, sender in enumerate(graph.senders):
        expected = (shift[s].double() * grads["g"].double()).sum((0, 2))  # [pos]
        torch.testing.assert_close(table[graph.index(f"{sender}->logits")], expected, atol=1e-7, rtol=1e-6)
    # Where both runs have the same first token (BOS), the embeddings agree there, so input's edges score 0 there.
    if bool((clean[:, 0] == corrupted[:, 0]).all()):
        assert table[graph.index("input->logits"), 0] == 0
