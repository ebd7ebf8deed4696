"""Exact edge patching (`interp.analysis.edge_patching`) against a brute-force implementation written here.

The reference builds every receiver's input from its parts: Σ over its senders of (the sender's output in
this run if the edge is kept, else its replacement) + the attention output biases b_O of the layers before
(which no node owns). `evaluate_circuits` instead subtracts the removed senders from the residual stream,
so the two agree only if the graph, the hooks and the bookkeeping are right."""

from __future__ import annotations

import functools

import pytest
import torch

import families
from interp import HookedTransformer
from interp.analysis.circuit_task import CircuitTask, induction_task
from interp.analysis.edge_attribution import eap, eap_ig, edge_ig
from interp.analysis.edge_patching import evaluate_circuits, exact_edge_scores, sender_outputs
from interp.analysis.graph import Circuit, Graph

BRUTE_FORCE_CASES = ["interp-toy", "llama_gqa", "neox_parallel", "mistral_window", "gpt2"]


@functools.cache
def model_of(case: str) -> HookedTransformer:
    if case.startswith("interp-toy"):
        return HookedTransformer.from_pretrained(case)
    return families.load(case)


def clean_and_corrupted(case: str, batch: int = 2, pos: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    if case.startswith("interp-toy"):
        task = induction_task(model_of(case), n_pairs=batch, n_random=6, n_repeat=pos - 7, seed=3)
        return task.clean, task.corrupted
    return families.tokens(case, batch, pos, seed=0), families.tokens(case, batch, pos, seed=1)


def logit_difference(logits: torch.Tensor) -> torch.Tensor:
    return (logits[:, -1, 3] - logits[:, -1, 5]).mean()


# ----- the reference ------------------------------------------------------------------------------------------
def senders_of(model: HookedTransformer) -> list[str]:
    cfg = model.cfg
    names = ["input"]
    for layer in range(cfg.n_layers):
        names += [f"a{layer}.h{h}" for h in range(cfg.n_heads)] + [f"m{layer}"]
    return names


def recorders(model: HookedTransformer, store: dict[str, torch.Tensor]) -> list:
    """Hooks that write each node's output into `store` (input, per-head results, MLP outputs)."""
    def put_input(x, hook):
        store["input"] = x

    def put_heads(layer):
        def fn(x, hook):
            for head in range(x.shape[2]):
                store[f"a{layer}.h{head}"] = x[:, :, head]
        return fn

    def put_mlp(layer):
        def fn(x, hook):
            store[f"m{layer}"] = x
        return fn

    hooks = [("blocks.0.hook_resid_pre", put_input)]
    for layer in range(model.cfg.n_layers):
        hooks += [(f"blocks.{layer}.attn.hook_result", put_heads(layer)), (f"blocks.{layer}.hook_mlp_out", put_mlp(layer))]
    return hooks


@torch.no_grad()
def node_outputs(model: HookedTransformer, tokens: torch.Tensor, mask=None) -> dict[str, torch.Tensor]:
    store: dict[str, torch.Tensor] = {}
    with model.hooks(recorders(model, store)):
        model(tokens, attention_mask=mask)
    return {name: value.clone() for name, value in store.items()}


@torch.no_grad()
def brute_force_metric(model: HookedTransformer, clean: torch.Tensor, replacement: dict[str, torch.Tensor],
                       kept: set[str], metric, mask=None) -> float:
    """The metric with every receiver's input rebuilt from its parts (see the module docstring)."""
    cfg = model.cfg
    current: dict[str, torch.Tensor] = {}
    biases = [model.blocks[layer].attn.b_O for layer in range(cfg.n_layers)]
    grouped = cfg.n_kv_heads != cfg.n_heads

    def readable(layer: int, include_own_heads: bool) -> tuple[list[str], int]:
        """(senders writing the stream read in `layer`, how many b_O's are in it)."""
        names = ["input"]
        for before in range(layer):
            names += [f"a{before}.h{h}" for h in range(cfg.n_heads)] + [f"m{before}"]
        if include_own_heads:
            names += [f"a{layer}.h{h}" for h in range(cfg.n_heads)]
        return names, layer + int(include_own_heads)

    def built(receiver: str, layer: int, include_own_heads: bool) -> torch.Tensor:
        names, n_biases = readable(layer, include_own_heads)
        parts = [current[s] if f"{s}->{receiver}" in kept else replacement[s].expand_as(current[s]) for s in names]
        return sum(parts) + sum(biases[:n_biases], torch.zeros(cfg.d_model))

    def qkv_input(layer: int, kind: str, count: int):
        def fn(x, hook):
            unit = "kv" if kind != "q" and grouped else "h"
            return torch.stack([built(f"a{layer}.{unit}{i}<{kind}>", layer, False) for i in range(count)], dim=2)
        return fn

    def mlp_input(layer: int):
        return lambda x, hook: built(f"m{layer}", layer, not cfg.parallel_blocks)

    hooks = recorders(model, current)
    for layer in range(cfg.n_layers):
        hooks += [(f"blocks.{layer}.hook_q_input", qkv_input(layer, "q", cfg.n_heads)),
                  (f"blocks.{layer}.hook_k_input", qkv_input(layer, "k", cfg.n_kv_heads)),
                  (f"blocks.{layer}.hook_v_input", qkv_input(layer, "v", cfg.n_kv_heads)),
                  (f"blocks.{layer}.hook_mlp_in", mlp_input(layer))]
    hooks.append((f"blocks.{cfg.n_layers - 1}.hook_resid_post", lambda x, hook: built("logits", cfg.n_layers, False)))
    with model.hooks(hooks):
        return float(metric(model(clean, attention_mask=mask)))


def random_circuit(graph: Graph, fraction: float, seed: int) -> Circuit:
    generator = torch.Generator().manual_seed(seed)
    return Circuit(graph, None, torch.rand(graph.n_edges, generator=generator) < fraction)


# ----- every family: the two ends --------------------------------------------------------------------------------
@pytest.mark.parametrize("case", list(families.CASES))
def test_all_edges_is_clean_and_no_edges_is_corrupted(case):
    model = model_of(case)
    clean, corrupted = clean_and_corrupted(case)
    graph = Graph.from_model(model)
    patch = sender_outputs(model, graph, corrupted)
    with torch.no_grad():
        m_clean, m_corrupted = float(logit_difference(model(clean))), float(logit_difference(model(corrupted)))
    full = Circuit.full(graph)
    empty = Circuit(graph, None, torch.zeros(graph.n_edges, dtype=torch.bool))
    values = evaluate_circuits(model, [full, empty], clean, patch, logit_difference)
    assert values.dtype == torch.float64
    # Rebuilding the residual stream only reorders fp32 sums: rounding, far below 1e-5 on O(1) logits.
    assert abs(float(values[0]) - m_clean) <= 1e-5
    assert abs(float(values[1]) - m_corrupted) <= 1e-4 * max(1.0, abs(m_corrupted))
    assert abs(m_clean - m_corrupted) > 1e-2  # the two runs differ, so the checks mean something


def test_sender_outputs_are_the_hooked_activations():
    model = model_of("llama_gqa")
    tokens, _ = clean_and_corrupted("llama_gqa")
    graph = Graph.from_model(model)
    outputs = sender_outputs(model, graph, tokens)
    assert outputs.shape == (len(graph.senders), *tokens.shape, model.cfg.d_model)
    reference = node_outputs(model, tokens)
    for i, name in enumerate(graph.senders):
        torch.testing.assert_close(outputs[i], reference[name], atol=0, rtol=0)
    # the senders (and b_O) add up to the final residual stream
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_resid_post"))
    bias = sum(model.blocks[layer].attn.b_O for layer in range(model.cfg.n_layers))
    torch.testing.assert_close(outputs.sum(0) + bias, cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"],
                               atol=1e-5, rtol=0)


# ----- a brute-force reference ------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", BRUTE_FORCE_CASES)
@pytest.mark.parametrize("fraction, seed", [(0.5, 0), (0.15, 1), (0.9, 2)])
def test_evaluate_circuits_equals_receiver_inputs_built_from_parts(case, fraction, seed):
    model = model_of(case)
    clean, corrupted = clean_and_corrupted(case)
    graph = Graph.from_model(model)
    circuit = random_circuit(graph, fraction, seed)
    value = float(evaluate_circuits(model, circuit, clean, sender_outputs(model, graph, corrupted), logit_difference))
    expected = brute_force_metric(model, clean, node_outputs(model, corrupted), set(circuit.edges), logit_difference)
    # Both sum the same fp32 activations in different orders through a 2-layer model: rounding only (observed
    # <= 4e-7). Getting a single edge wrong moves the metric by >= 6e-4 on these cases, so 2e-5 separates them.
    assert abs(value - expected) <= 2e-5 * max(1.0, abs(expected))


@pytest.mark.parametrize("case", ["llama_gqa", "neox_parallel", "interp-toy"])
def test_mean_and_zero_ablation_equal_the_reference(case):
    model = model_of(case)
    clean, _ = clean_and_corrupted(case)
    reference_tokens = torch.randint(0, model.cfg.d_vocab, (4, clean.shape[1]), generator=torch.Generator().manual_seed(7))
    graph = Graph.from_model(model)
    circuit = random_circuit(graph, 0.4, 5)
    kept = set(circuit.edges)

    mean_patch = sender_outputs(model, graph, reference_tokens).mean(1, keepdim=True)  # [senders, 1, pos, d_model]
    reference_mean = {name: value.mean(0, keepdim=True) for name, value in node_outputs(model, reference_tokens).items()}
    value = float(evaluate_circuits(model, circuit, clean, mean_patch, logit_difference))
    expected = brute_force_metric(model, clean, reference_mean, kept, logit_difference)
    assert abs(value - expected) <= 1e-4 * max(1.0, abs(expected))

    position_mean = mean_patch.mean(2, keepdim=True)  # [senders, 1, 1, d_model]
    value = float(evaluate_circuits(model, circuit, clean, position_mean, logit_difference))
    expected = brute_force_metric(model, clean, {n: v.mean(1, keepdim=True) for n, v in reference_mean.items()},
                                  kept, logit_difference)
    assert abs(value - expected) <= 1e-4 * max(1.0, abs(expected))

    zeros = torch.zeros(len(graph.senders), 1, 1, model.cfg.d_model)
    value = float(evaluate_circuits(model, circuit, clean, zeros, logit_difference))
    expected = brute_force_metric(model, clean, {n: torch.zeros(model.cfg.d_model) for n in senders_of(model)},
                                  kept, logit_difference)
    assert abs(value - expected) <= 1e-4 * max(1.0, abs(expected))


def test_several_circuits_in_one_call_equal_one_at_a_time():
    model = model_of("llama_gqa")
    clean, corrupted = clean_and_corrupted("llama_gqa")
    graph = Graph.from_model(model)
    patch = sender_outputs(model, graph, corrupted)
    circuits = [random_circuit(graph, fraction, seed) for seed, fraction in enumerate([0.1, 0.3, 0.5, 0.7, 0.95])]
    together = evaluate_circuits(model, circuits, clean, patch, logit_difference, chunk_size=2)
    alone = torch.tensor([float(evaluate_circuits(model, c, clean, patch, logit_difference)) for c in circuits],
                         dtype=torch.float64)
    assert together.shape == (5,)
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)
    assert len(set(alone.tolist())) == 5  # different circuits, different values


@pytest.mark.parametrize("case", ["llama_gqa", "neox_parallel", "interp-toy"])
def test_pruning_a_circuit_does_not_change_its_metric(case):
    # A sender whose inputs are all patched computes its corrupted output, so a kept edge from it carries the
    # patch anyway; an edge into a node that reaches no logits changes nothing. Pruning removes exactly those.
    model = model_of(case)
    clean, corrupted = clean_and_corrupted(case)
    graph = Graph.from_model(model)
    circuits = [random_circuit(graph, 0.15, seed) for seed in range(4)]
    pruned = [c.pruned() for c in circuits]
    assert all(p.n_edges < c.n_edges for p, c in zip(pruned, circuits))
    values = evaluate_circuits(model, circuits + pruned, clean, sender_outputs(model, graph, corrupted),
                               logit_difference)
    torch.testing.assert_close(values[:4], values[4:], atol=2e-5, rtol=1e-5)


# ----- exact single-edge scores -------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["interp-toy", "llama_gqa", "neox_parallel"])
def test_exact_scores_equal_removing_that_one_edge(case):
    model = model_of(case)
    clean, corrupted = clean_and_corrupted(case)
    graph = Graph.from_model(model)
    scores = exact_edge_scores(model, clean, corrupted, logit_difference, progress=False)
    assert scores.method == "exact" and scores.scores.dtype == torch.float64 and scores.n_edges == graph.n_edges
    sample = torch.randperm(graph.n_edges, generator=torch.Generator().manual_seed(0))[:16].tolist()
    sample += [graph.n_edges - 1, 0]  # m{L-1} -> logits is last, input -> a0.h0<q> first
    circuits = []
    for edge in sample:
        keep = torch.ones(graph.n_edges, dtype=torch.bool)
        keep[edge] = False
        circuits.append(Circuit(graph, None, keep))
    patch = sender_outputs(model, graph, corrupted)
    values = evaluate_circuits(model, [Circuit.full(graph), *circuits], clean, patch, logit_difference)
    expected = values[1:] - values[0]
    torch.testing.assert_close(scores.scores[sample], expected, atol=1e-5, rtol=1e-5)
    # and the brute force for two of them
    outputs = node_outputs(model, corrupted)
    for edge in sample[:2]:
        kept = set(graph.edges) - {graph.edges[edge]}
        m = brute_force_metric(model, clean, outputs, kept, logit_difference)
        assert abs(float(scores.scores[edge]) - (m - float(values[0]))) <= 1e-4 * max(1.0, abs(m))


def test_exact_scores_do_not_depend_on_edges_per_run_and_take_a_mean_patch():
    model = model_of("neox_parallel")
    clean, corrupted = clean_and_corrupted("neox_parallel")
    graph = Graph.from_model(model)
    default = exact_edge_scores(model, clean, corrupted, logit_difference, progress=False)
    small = exact_edge_scores(model, clean, corrupted, logit_difference, edges_per_run=7, progress=False)
    torch.testing.assert_close(small.scores, default.scores, atol=1e-6, rtol=0)
    mean_patch = sender_outputs(model, graph, corrupted).mean(1, keepdim=True)
    mean_scores = exact_edge_scores(model, clean, None, logit_difference, patch=mean_patch, progress=False)
    edges = [3, 40, graph.n_edges - 2]
    circuits = [Circuit.full(graph)] + [Circuit(graph, None, torch.arange(graph.n_edges) != e) for e in edges]
    values = evaluate_circuits(model, circuits, clean, mean_patch, logit_difference)
    torch.testing.assert_close(mean_scores.scores[edges], values[1:] - values[0], atol=1e-5, rtol=0)


# ----- padding ----------------------------------------------------------------------------------------------------
def two_pair_task(model: HookedTransformer) -> tuple[CircuitTask, CircuitTask, CircuitTask]:
    """A right-padded task of two induction pairs of 10 and 13 tokens, and each pair alone (unpadded)."""
    short = induction_task(model, n_pairs=1, n_random=6, n_repeat=3, seed=11)
    long = induction_task(model, n_pairs=1, n_random=8, n_repeat=4, seed=12)
    width = long.clean.shape[1]
    filler = torch.full((1, width - short.clean.shape[1]), 777)  # a real token id: only the mask says "padding"
    clean = torch.cat([torch.cat([short.clean, filler], 1), long.clean])
    corrupted = torch.cat([torch.cat([short.corrupted, filler], 1), long.corrupted])
    mask = torch.arange(width)[None] < torch.tensor([[short.clean.shape[1]], [width]])
    both = CircuitTask("two", clean, corrupted, mask, torch.cat([short.answer, long.answer]),
                       torch.cat([short.wrong, long.wrong]), torch.cat([short.position, long.position]))
    return both, short, long


@pytest.mark.parametrize("method", [exact_edge_scores, eap, eap_ig, edge_ig], ids=["exact", "eap", "eap_ig", "edge_ig"])
def test_padded_batch_scores_are_the_mean_of_each_pair_alone(method):
    model = model_of("interp-toy")
    both, short, long = two_pair_task(model)
    assert both.attention_mask is not None and not bool(both.attention_mask.all())
    kwargs = {"progress": False} if method is exact_edge_scores else {} if method is eap else \
        {"progress": False, "steps": 2}
    together = method(model, **both.inputs(), **kwargs).scores
    alone = (method(model, **short.inputs(), **kwargs).scores + method(model, **long.inputs(), **kwargs).scores) / 2
    # The metric is the mean over the two pairs, and padding changes nothing real: rounding only.
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)
    assert float(alone.abs().max()) > 0.1


def test_padded_batch_circuit_metric_is_the_mean_of_each_pair_alone():
    model = model_of("interp-toy")
    both, short, long = two_pair_task(model)
    graph = Graph.from_model(model)
    circuit = random_circuit(graph, 0.5, 3)

    def value(task: CircuitTask) -> float:
        patch = sender_outputs(model, graph, task.corrupted, task.attention_mask)
        return float(evaluate_circuits(model, circuit, task.clean, patch, task.metric,
                                       attention_mask=task.attention_mask))
    assert abs(value(both) - (value(short) + value(long)) / 2) <= 1e-5


# ----- errors -------------------------------------------------------------------------------------------------------
def test_bad_patch_shapes_are_rejected():
    model = model_of("gpt2")
    clean, corrupted = clean_and_corrupted("gpt2")
    graph = Graph.from_model(model)
    patch = sender_outputs(model, graph, corrupted)
    circuit = Circuit.full(graph)
    for bad in (patch[:-1], patch[:, :, :-1], patch[..., :-1], patch[:, :1, :1, 0], torch.cat([patch, patch], 1),
                patch.tolist()):
        with pytest.raises(ValueError, match="patch must be the senders' replacement outputs"):
            evaluate_circuits(model, circuit, clean, bad, logit_difference)
    with pytest.raises(ValueError, match="patch must be"):
        exact_edge_scores(model, clean, None, logit_difference, patch=patch[:, :, :3], progress=False)
    with pytest.raises(ValueError, match="exactly one of corrupted_tokens"):
        exact_edge_scores(model, clean, corrupted, logit_difference, patch=patch, progress=False)
    with pytest.raises(ValueError, match="exactly one of corrupted_tokens"):
        exact_edge_scores(model, clean, None, logit_difference, progress=False)


def test_a_graph_of_another_model_is_rejected():
    model = model_of("gpt2")
    clean, corrupted = clean_and_corrupted("gpt2")
    other = Graph.from_model(model_of("neox_parallel"))
    with pytest.raises(ValueError, match="Graph.from_model"):
        evaluate_circuits(model, Circuit.full(other), clean, torch.zeros(len(other.senders), 1, 1, other.d_model),
                          logit_difference)
    with pytest.raises(ValueError, match="Graph.from_model"):
        exact_edge_scores(model, clean, corrupted, logit_difference, graph=other, progress=False)
    with pytest.raises(ValueError, match="Graph.from_model"):
        sender_outputs(model, other, clean)
    graph = Graph.from_model(model)
    with pytest.raises(ValueError, match="same graph"):
        evaluate_circuits(model, [Circuit.full(graph), Circuit.full(Graph(2, 4, 4, True, 32))], clean,
                          sender_outputs(model, graph, corrupted), logit_difference)
    with pytest.raises(ValueError, match="No circuits"):
        evaluate_circuits(model, [], clean, sender_outputs(model, graph, corrupted), logit_difference)


def test_clean_and_corrupted_of_different_lengths_are_rejected():
    model = model_of("gpt2")
    clean, corrupted = clean_and_corrupted("gpt2")
    with pytest.raises(ValueError, match="same \\[batch, pos\\] shape"):
        exact_edge_scores(model, clean, corrupted[:, :-1], logit_difference, progress=False)
    with pytest.raises(ValueError, match="same \\[batch, pos\\] shape"):
        eap(model, clean[:, :-2], corrupted, logit_difference)


def test_a_non_scalar_metric_is_rejected_naming_mean():
    model = model_of("gpt2")
    clean, corrupted = clean_and_corrupted("gpt2")
    graph = Graph.from_model(model)

    def per_prompt(logits):
        return logits[:, -1, 3] - logits[:, -1, 5]
    with pytest.raises(ValueError, match=r"\.mean\(\)"):
        evaluate_circuits(model, Circuit.full(graph), clean, sender_outputs(model, graph, corrupted), per_prompt)
    with pytest.raises(ValueError, match=r"\.mean\(\)"):
        exact_edge_scores(model, clean, corrupted, per_prompt, progress=False)


def reads_padding(logits):
    return (logits[:, -1, 3] - logits[:, -1, 5]).mean()  # position -1 is padding in a right-padded row


@pytest.mark.parametrize("method", [exact_edge_scores, eap], ids=["exact", "eap"])
def test_a_metric_reading_padded_positions_is_rejected(method):
    model = model_of("interp-toy")
    both, _, _ = two_pair_task(model)
    kwargs = {"progress": False} if method is exact_edge_scores else {}
    with pytest.raises(ValueError, match="padded positions"):
        method(model, both.clean, both.corrupted, reads_padding, attention_mask=both.attention_mask, **kwargs)


def test_evaluate_circuits_rejects_a_metric_reading_padded_positions():
    # As exact_edge_scores and eap do: a metric of logits[:, -1] on a right-padded batch reads padding, whose
    # logits mean nothing, so every circuit's value would be silently wrong.
    model = model_of("interp-toy")
    both, _, _ = two_pair_task(model)
    graph = Graph.from_model(model)
    patch = sender_outputs(model, graph, both.corrupted, both.attention_mask)
    with pytest.raises(ValueError, match="padded positions"):
        evaluate_circuits(model, Circuit.full(graph), both.clean, patch, reads_padding,
                          attention_mask=both.attention_mask)
