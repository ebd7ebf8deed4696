"""Fixes from the review of the edge-circuit code: ungrouped GQA graphs, masked mean patches, patches in another
dtype, GQA node counts, argument checks, the CLI's `--task induction`."""

from __future__ import annotations

import torch

import families
from interp import HookedTransformer
from interp.analysis.circuit_task import induction_task
from interp.analysis.edge_attribution import eap
from interp.analysis.edge_patching import evaluate_circuits, exact_edge_scores, mean_outputs, sender_outputs
from interp.analysis.frozen import frozen_hooks
from interp.analysis.graph import Circuit, Graph
from interp.components.blocks import set_ungrouped
from interp.cli import main


def logit_difference(logits: torch.Tensor) -> torch.Tensor:
    return (logits[:, -1, 3] - logits[:, -1, 5]).mean()


def test_an_ungrouped_gqa_model_gets_per_query_head_key_channels_and_exact_numbers():
    model = families.load("llama_gqa")
    assert model.cfg.n_kv_heads < model.cfg.n_heads
    grouped = Graph.from_model(model)
    for block in model.blocks:
        set_ungrouped(block, True)
    try:
        graph = Graph.from_model(model)
        assert graph.n_kv_heads == model.cfg.n_heads and graph.n_edges > grouped.n_edges
        assert "input->a1.h5<k>" in graph.edges and not any(".kv" in e for e in graph.edges)  # MIB's layout
        clean, corrupted = families.tokens("llama_gqa", 2, 8, seed=0), families.tokens("llama_gqa", 2, 8, seed=1)
        patch = sender_outputs(model, graph, corrupted)
        values = evaluate_circuits(model, [Circuit.full(graph), Circuit(graph, None, torch.zeros(graph.n_edges, dtype=torch.bool))],
                                   clean, patch, logit_difference)
        with torch.no_grad():
            assert abs(float(values[0]) - float(logit_difference(model(clean)))) <= 1e-5
            assert abs(float(values[1]) - float(logit_difference(model(corrupted)))) <= 1e-4
        frozen = frozen_hooks(model, clean)
        linear = eap(model, clean, corrupted, logit_difference, hooks=frozen).scores
        exact = exact_edge_scores(model, clean, corrupted, logit_difference, hooks=frozen, progress=False).scores
        assert float(exact.abs().max()) > 1e-2
        torch.testing.assert_close(linear, exact, atol=1e-5, rtol=0)
        # Query heads sharing a kv head now have separate key edges, with different exact effects.
        g = model.cfg.n_heads // model.cfg.n_kv_heads
        pair = exact_edge_scores(model, clean, corrupted, logit_difference, progress=False)
        assert pair.score("input->a1.h0<k>") != pair.score(f"input->a1.h{g - 1}<k>")
    finally:
        for block in model.blocks:
            set_ungrouped(block, False)
    assert Graph.from_model(model) == grouped


def test_mean_outputs_average_real_tokens_only():
    model = HookedTransformer.from_pretrained("interp-toy")
    graph = Graph.from_model(model)
    tokens = torch.randint(100, 2000, (3, 6))
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[0, 4:] = False  # right padding
    mask[1, 5:] = False
    mean = mean_outputs(model, graph, tokens, mask)
    assert mean.shape == (len(graph.senders), 1, 6, model.cfg.d_model)
    alone = [sender_outputs(model, graph, tokens[i:i + 1, :int(mask[i].sum())]) for i in range(3)]
    for position in range(6):
        rows = [out[:, 0, position] for out in alone if out.shape[2] > position]
        torch.testing.assert_close(mean[:, 0, position], torch.stack(rows).mean(0), atol=1e-5, rtol=0)


def test_a_float32_patch_of_a_bfloat16_model_is_cast():
    model = HookedTransformer.from_pretrained("interp-toy", dtype="bfloat16")
    task = induction_task(model, 2, n_random=5, n_repeat=3)
    graph = Graph.from_model(model)
    patch = sender_outputs(model, graph, task.corrupted).float().mean(1, keepdim=True)
    scores = exact_edge_scores(model, task.clean, None, task.metric, patch=patch, progress=False)
    assert torch.isfinite(scores.scores).all() and float(scores.scores.abs().max()) > 0.1


def test_a_gqa_key_edge_counts_only_the_heads_already_in_the_circuit():
    graph = Graph(2, 4, 2, False, 8)
    circuit = Circuit.from_edges(graph, ["input->a1.kv0<k>", "input->a1.h0<q>", "a1.h0->logits"])
    assert circuit.nodes() == ["input", "a1.h0", "logits"]
    dangling = Circuit.from_edges(graph, ["input->a1.kv1<v>"])
    assert dangling.nodes() == ["input", "a1.h2", "a1.h3"]  # no head of the group is otherwise in: all of them


def test_bad_sizes_are_value_errors():
    import pytest

    model = HookedTransformer.from_pretrained("interp-toy")
    task = induction_task(model, 2, n_random=5, n_repeat=3)
    graph = Graph.from_model(model)
    patch = sender_outputs(model, graph, task.corrupted)
    with pytest.raises(ValueError, match="chunk_size"):
        evaluate_circuits(model, [Circuit.full(graph)], task.clean, patch, task.metric, chunk_size=0)
    with pytest.raises(ValueError, match="edges_per_run"):
        exact_edge_scores(model, **task.inputs(), edges_per_run=0, progress=False)
    with pytest.raises(ValueError, match="k must be"):
        Circuit.full(graph, torch.randn(graph.n_edges)).top_k(1.5)


def test_the_cli_accepts_task_induction(tmp_path, capsys):
    code = main(["circuit", "--task", "induction", "--method", "eap", "--n-pairs", "4", "--no-progress",
                 "--out", str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "interp-toy" / "induction" / "graph_eap.json").is_file()


def test_second_review_fixes():
    """interp.tl unembed hooks force the full-logits path; numpy/torch integers for top_k; a metric for another
    batch size names the mismatch; in_batches refuses a search."""
    import numpy as np
    import pytest

    from interp.analysis.circuit_search import greedy_circuit
    from interp.analysis.circuit_task import in_batches
    from interp.tl import HookedTransformer as TLModel

    model = TLModel.from_pretrained("interp-toy")
    task = induction_task(model, 3, n_random=5, n_repeat=3)
    graph = Graph.from_model(model)
    patch = sender_outputs(model, graph, task.corrupted)
    double_last = [("unembed.hook_in", lambda x, hook: torch.cat([x[:, :-1], 2 * x[:, -1:]], 1))]
    plain = lambda logits: task.metric(logits)  # noqa: E731  (the full-logits path)
    fast, full = (float(evaluate_circuits(model, Circuit.full(graph), task.clean, patch, metric, hooks=double_last))
                  for metric in (task.metric, plain))
    assert fast == pytest.approx(full, abs=1e-5)
    with torch.no_grad():
        unhooked = float(task.metric(model(task.clean)))
    assert abs(full - unhooked) > 1e-2  # the hook matters, so the check above means something

    scored = Circuit.full(graph, torch.arange(graph.n_edges, dtype=torch.float64))
    assert scored.top_k(np.int64(5), prune=False).n_edges == scored.top_k(torch.tensor(5), prune=False).n_edges == 5
    with pytest.raises(ValueError, match="k must be an integer"):
        scored.top_k(True)
    other = induction_task(model, 2, n_random=5, n_repeat=3).metric
    with pytest.raises(ValueError, match="one per row"):
        exact_edge_scores(model, task.clean, task.corrupted, other, progress=False)
    with pytest.raises(ValueError, match="not searches"):
        in_batches(greedy_circuit, model, task, 2, progress=False)
