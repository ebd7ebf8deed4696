"""Circuit search and faithfulness (`interp.analysis.circuit_search`) and circuit tasks
(`interp.analysis.circuit_task`) on the bundled trained models, whose induction circuits are known:
interp-toy's previous-token head a0.h2 feeds the key of its induction head a1.h3; interp-toy-llama's a0.h1
feeds kv head 1 of layer 1."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import torch

from interp import HookedTransformer
from interp.analysis.circuit_search import (MIB_FRACTIONS, FaithfulnessCurve, faithfulness, faithfulness_curve,
                                            greedy_circuit)
from interp.analysis.circuit_task import CircuitTask, induction_task
from interp.analysis.edge_patching import evaluate_circuits, exact_edge_scores, sender_outputs
from interp.analysis.graph import Circuit
from test_edge_graph import path_pruned


@functools.cache
def model_of(name: str) -> HookedTransformer:
    return HookedTransformer.from_pretrained(name)


@functools.cache
def tasks(name: str) -> tuple[CircuitTask, CircuitTask]:
    """(a task to search on, a held-out task from another seed)."""
    model = model_of(name)
    return induction_task(model, n_pairs=16, seed=0), induction_task(model, n_pairs=32, seed=1)


@functools.cache
def exact_scores(name: str) -> Circuit:
    return exact_edge_scores(model_of(name), **tasks(name)[0].inputs(), progress=False)


def plain_metrics(model: HookedTransformer, task: CircuitTask) -> tuple[float, float]:
    """The task's metric on the clean and the corrupted run, by plain forwards."""
    with torch.no_grad():
        return float(task.metric(model(task.clean))), float(task.metric(model(task.corrupted)))


def held_out_faithfulness(name: str, circuit: Circuit) -> float:
    model, (_, held_out) = model_of(name), tasks(name)
    patch = sender_outputs(model, circuit.graph, held_out.corrupted)
    value = float(evaluate_circuits(model, circuit, held_out.clean, patch, held_out.metric))
    clean, corrupted = plain_metrics(model, held_out)
    return (value - corrupted) / (clean - corrupted)


# ----- faithfulness curves ----------------------------------------------------------------------------------------
def test_faithfulness_curve_sizes_endpoints_and_values():
    model = model_of("interp-toy")
    _, held_out = tasks("interp-toy")
    scores = exact_scores("interp-toy")
    graph = scores.graph
    curve = faithfulness_curve(model, scores, held_out.clean, held_out.corrupted, held_out.metric, progress=False)
    assert curve.fractions == MIB_FRACTIONS and curve.total_edges == graph.n_edges == 110
    assert curve.method == "exact"

    # sizes: MIB's int(f * n) highest-|score| edges, then pruned to input -> logits paths
    order = sorted(range(graph.n_edges), key=lambda i: -abs(float(scores.scores[i])))
    shape = (graph.n_layers, graph.n_heads, graph.n_kv_heads, graph.parallel)
    expected_sets = [path_pruned(shape, {graph.edges[i] for i in order[:int(f * graph.n_edges)]}) for f in MIB_FRACTIONS]
    assert curve.n_edges == tuple(len(s) for s in expected_sets)
    assert all(n <= int(f * graph.n_edges) for n, f in zip(curve.n_edges, MIB_FRACTIONS))
    assert curve.n_edges[-1] == graph.n_edges

    # endpoints and values, against plain forwards of the two runs
    clean, corrupted = plain_metrics(model, held_out)
    assert abs(curve.clean - clean) <= 1e-4 and abs(curve.corrupted - corrupted) <= 1e-4
    assert abs(curve.faithfulness[-1] - 1.0) <= 1e-5  # every edge kept is the clean run
    for value, fraction_faithfulness in zip(curve.metric, curve.faithfulness):
        assert abs(fraction_faithfulness - (value - corrupted) / (clean - corrupted)) <= 1e-5
    # an empty circuit is the corrupted run: faithfulness 0
    assert all(abs(f) <= 1e-5 for f, n in zip(curve.faithfulness, curve.n_edges) if n == 0)
    # one middle point re-evaluated on the independently chosen edge set
    middle = MIB_FRACTIONS.index(0.2)
    chosen = Circuit.from_edges(graph, sorted(expected_sets[middle]))
    value = float(evaluate_circuits(model, chosen, held_out.clean, sender_outputs(model, graph, held_out.corrupted),
                                    held_out.metric))
    assert abs(value - curve.metric[middle]) <= 1e-5


def test_cpr_and_cmd_are_trapezoid_areas():
    model = model_of("interp-toy")
    _, held_out = tasks("interp-toy")
    curve = faithfulness_curve(model, exact_scores("interp-toy"), held_out.clean, held_out.corrupted,
                               held_out.metric, progress=False)
    x, y = np.array(curve.fractions), np.array(curve.faithfulness)
    assert curve.cpr == pytest.approx(np.trapezoid(y, x), abs=1e-12)
    assert curve.cmd == pytest.approx(np.trapezoid(np.abs(1 - y), x), abs=1e-12)
    assert 0.85 < curve.cpr < 1.0  # observed 0.923: the induction circuit is a few percent of the edges
    assert FaithfulnessCurve.from_dict(json.loads(json.dumps(curve.to_dict()))) == curve


def test_cpr_and_cmd_of_a_hand_curve():
    # x = 0.001, 0.5, 1 and f = 0, 0.5, 1.5: CPR = 0.499·0.25 + 0.5·1 = 0.62475;
    # |1 − f| = 1, 0.5, 0.5: CMD = 0.499·0.75 + 0.5·0.5 = 0.62425.
    curve = FaithfulnessCurve("hand", (0.001, 0.5, 1.0), (0, 5, 10), (0.0, 0.5, 1.5), (0.0, 0.5, 1.5), 1.0, 0.0, 10)
    assert curve.cpr == pytest.approx(0.62475, abs=1e-12)
    assert curve.cmd == pytest.approx(0.62425, abs=1e-12)


def test_faithfulness_curve_and_faithfulness_errors():
    model = model_of("interp-toy")
    _, held_out = tasks("interp-toy")
    scores = exact_scores("interp-toy")
    for fractions in ((0.5, 0.1), (0.0, 0.5), (0.5, 1.5)):
        with pytest.raises(ValueError, match="fractions must increase within"):
            faithfulness_curve(model, scores, held_out.clean, held_out.corrupted, held_out.metric,
                               fractions=fractions, progress=False)
    assert faithfulness(0.5, 2.0, 0.0) == 0.25
    with pytest.raises(ValueError, match="undefined"):
        faithfulness(1.0, 3.0, 3.0)


# ----- circuits found on the bundled models -------------------------------------------------------------------------
def test_greedy_circuit_finds_the_induction_circuit_of_interp_toy():
    model = model_of("interp-toy")
    task, _ = tasks("interp-toy")
    circuit = greedy_circuit(model, **task.inputs(), progress=False)
    assert "a0.h2->a1.h3<k>" in circuit and "a1.h3->logits" in circuit
    assert circuit.n_edges < 0.2 * circuit.graph.n_edges  # observed 12 of 110
    assert torch.equal(circuit.pruned().in_graph, circuit.in_graph)
    # an edge stays only if removing it moved the metric by more than 1 % of |clean − corrupted| (its score)
    clean, corrupted = plain_metrics(model, task)
    kept_scores = circuit.scores[circuit.in_graph].abs()
    assert bool((kept_scores > 0.01 * abs(clean - corrupted)).all())
    assert int((circuit.scores[~circuit.in_graph] != 0).sum()) > 0  # edges were tried and removed
    # Observed held-out faithfulness (32 fresh pairs): 0.993.
    assert held_out_faithfulness("interp-toy", circuit) >= 0.8


def test_greedy_circuit_finds_the_induction_circuit_of_interp_toy_llama():
    model = model_of("interp-toy-llama")
    task, _ = tasks("interp-toy-llama")
    circuit = greedy_circuit(model, **task.inputs(), progress=False)
    assert circuit.graph.n_kv_heads == 2
    assert "a0.h1->a1.kv1<k>" in circuit
    assert any(f"a1.h{head}->logits" in circuit for head in range(4))
    # Observed held-out faithfulness: 0.975 (31 of 82 edges).
    assert held_out_faithfulness("interp-toy-llama", circuit) >= 0.8


def test_top_ten_percent_of_exact_scores_is_a_faithful_induction_circuit():
    scores = exact_scores("interp-toy")
    circuit = scores.top_fraction(0.1)  # int(0.1 * 110) = 11 edges, all on paths (observed)
    assert circuit.n_edges <= 11
    assert "a0.h2->a1.h3<k>" in circuit and "a1.h3->logits" in circuit
    # Observed held-out faithfulness: 0.983.
    assert held_out_faithfulness("interp-toy", circuit) >= 0.8


def test_greedy_threshold_must_be_non_negative():
    model = model_of("interp-toy")
    task, _ = tasks("interp-toy")
    with pytest.raises(ValueError, match="threshold"):
        greedy_circuit(model, **task.inputs(), threshold=-0.1, progress=False)


# ----- tasks --------------------------------------------------------------------------------------------------------
PAIRS = [{"clean": "The cat sat on the", "corrupted": "The dog sat on the", "answer": " a", "wrong": " the"},
         {"clean": "Hello world and the cat sat on the", "corrupted": "Hello world and the dog sat on the",
          "answer": " the", "wrong": " and"}]


def test_from_pairs_tokenises_pads_and_masks():
    model = model_of("interp-toy")
    task = CircuitTask.from_pairs(model, PAIRS, name="cats")
    rows = [model.to_tokens(p["clean"])[0] for p in PAIRS]
    assert len(rows[0]) < len(rows[1])  # different lengths: the first row is padded
    assert task.clean.shape == (2, len(rows[1]))
    for i, row in enumerate(rows):
        assert torch.equal(task.clean[i, :len(row)], row)
        assert torch.equal(task.corrupted[i, :len(row)], model.to_tokens(PAIRS[i]["corrupted"])[0])
        assert task.attention_mask[i].tolist() == [True] * len(row) + [False] * (task.clean.shape[1] - len(row))
        assert int(task.position[i]) == len(row) - 1
        assert int(task.answer[i]) == model.to_tokens(PAIRS[i]["answer"], prepend_bos=False)[0, 0]
    # the metric reads each pair's last real token
    logits = torch.randn(2, task.clean.shape[1], model.cfg.d_vocab, generator=torch.Generator().manual_seed(0))
    expected = sum(float(logits[i, len(r) - 1, task.answer[i]] - logits[i, len(r) - 1, task.wrong[i]])
                   for i, r in enumerate(rows)) / 2
    assert float(task.metric(logits)) == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError, match="for 2 pairs"):
        task.metric(torch.zeros(3, task.clean.shape[1], model.cfg.d_vocab))
    assert task.inputs()["attention_mask"] is task.attention_mask
    first, rest = task.split(1)
    assert len(first) == 1 and len(rest) == 1 and torch.equal(rest.clean, task.clean[1:])
    with pytest.raises(ValueError, match="0 < n_first < 2"):
        task.split(2)


def test_the_induction_task_has_the_structure_it_promises():
    model = model_of("interp-toy")
    task = induction_task(model, n_pairs=5, n_random=7, n_repeat=3, seed=4)
    assert task.clean.shape == (5, 11) and task.attention_mask is None
    assert bool((task.clean[:, 0] == model.cfg.bos_token_id).all())
    assert torch.equal(task.clean[:, 8:], task.clean[:, 1:4])  # the second copy repeats the first
    assert torch.equal(task.corrupted[:, 8:], task.clean[:, 8:])  # same second copy
    assert torch.equal(task.answer, task.clean[:, 4]) and torch.equal(task.wrong, task.corrupted[:, 4])
    assert bool((task.position == 10).all())
    assert torch.equal(induction_task(model, n_pairs=5, n_random=7, n_repeat=3, seed=4).clean, task.clean)
    clean, corrupted = plain_metrics(model, task)
    assert clean > corrupted + 1.0  # the trained model does induction
    with pytest.raises(ValueError, match="n_repeat < n_random"):
        induction_task(model, n_random=4, n_repeat=4)


def test_pairs_of_different_lengths_are_rejected_with_how_to_align():
    model = model_of("interp-toy")
    pair = {"clean": "The cat sat on the", "corrupted": "The elephant sat on the", "answer": " a", "wrong": " the"}
    with pytest.raises(ValueError, match="Pair 2: the clean prompt is 8 tokens and the corrupted one 11") as error:
        CircuitTask.from_pairs(model, [PAIRS[0], pair])
    assert "same number of tokens" in str(error.value)


def test_a_multi_token_answer_is_rejected():
    model = model_of("interp-toy")
    pair = dict(PAIRS[0], answer=" Mary")
    with pytest.raises(ValueError, match=r"Pair 1: the answer ' Mary' is 2 tokens \[' Mar', 'y'\], not one"):
        CircuitTask.from_pairs(model, [pair])
    with pytest.raises(ValueError, match="the wrong"):
        CircuitTask.from_pairs(model, [dict(PAIRS[0], wrong=" elephant")])


def test_missing_or_non_text_keys_are_rejected():
    model = model_of("interp-toy")
    pair = {k: v for k, v in PAIRS[0].items() if k != "wrong"}
    with pytest.raises(ValueError, match=r"missing or not text: \['wrong'\]"):
        CircuitTask.from_pairs(model, [PAIRS[0], PAIRS[1], pair])
    with pytest.raises(ValueError, match=r"Pair 1: .*\['answer'\]"):
        CircuitTask.from_pairs(model, [dict(PAIRS[0], answer=5)])
    with pytest.raises(ValueError, match="at least one"):
        CircuitTask.from_pairs(model, [])


def test_from_jsonl_reads_a_task_and_names_bad_lines(tmp_path):
    model = model_of("interp-toy")
    path = tmp_path / "cats.jsonl"
    path.write_text(json.dumps(PAIRS[0]) + "\n\n" + json.dumps(PAIRS[1]) + "\n")
    task = CircuitTask.from_jsonl(model, path)
    assert task.name == "cats" and len(task) == 2
    assert torch.equal(task.clean, CircuitTask.from_pairs(model, PAIRS).clean)

    path.write_text(json.dumps(PAIRS[0]) + "\n\n" + '{"clean": "The cat", oops}\n')
    with pytest.raises(ValueError, match=r"cats.jsonl, line 3: not JSON"):
        CircuitTask.from_jsonl(model, path)
    missing = {k: v for k, v in PAIRS[1].items() if k != "answer"}
    path.write_text(json.dumps(PAIRS[0]) + "\n\n" + json.dumps(missing) + "\n")
    with pytest.raises(ValueError, match=r"Pair 3: .*\['answer'\]"):  # the file's line number, blank line counted
        CircuitTask.from_jsonl(model, path)
    with pytest.raises(FileNotFoundError, match="one JSON object per line"):
        CircuitTask.from_jsonl(model, tmp_path / "absent.jsonl")


def test_task_shapes_are_checked():
    ids = torch.zeros(2, 5, dtype=torch.long)
    one = torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="same shape"):
        CircuitTask("t", ids, ids[:, :4], None, one, one, one)
    with pytest.raises(ValueError, match="answer must have one entry per pair"):
        CircuitTask("t", ids, ids, None, one[:1], one, one)


@pytest.mark.parametrize("method", ["eap", "exact"])
def test_scores_in_batches_equal_the_whole_task_at_once(method):
    """Pair-batched scores (weights len(batch)/len(task)) against one call on all pairs, with uneven batches and
    right padding (pairs of two lengths)."""
    from interp.analysis.circuit_task import in_batches
    from interp.analysis.edge_attribution import eap
    from interp.analysis.edge_patching import exact_edge_scores

    model = HookedTransformer.from_pretrained("interp-toy")
    short, long = induction_task(model, 3, n_random=5, n_repeat=3, seed=4), induction_task(model, 4, seed=5)
    width = long.clean.shape[1]
    pad = lambda t: torch.nn.functional.pad(t, (0, width - t.shape[1]))  # noqa: E731
    mask = torch.cat([torch.arange(width)[None].expand(3, -1) < short.clean.shape[1], torch.ones(4, width, dtype=torch.bool)])
    task = CircuitTask("mixed", torch.cat([pad(short.clean), long.clean]), torch.cat([pad(short.corrupted), long.corrupted]),
                       mask, torch.cat([short.answer, long.answer]), torch.cat([short.wrong, long.wrong]),
                       torch.cat([short.position, long.position]))
    score = {"eap": eap, "exact": lambda *a, **k: exact_edge_scores(*a, **k, progress=False)}[method]
    whole = score(model, **task.inputs()).scores
    batched = in_batches(score, model, task, batch_size=3).scores
    torch.testing.assert_close(batched, whole, atol=2e-5 * float(whole.abs().max()), rtol=0)
    assert float(whole.abs().max()) > 1  # the scores are not trivially zero


def test_a_metric_naming_its_positions_gives_the_numbers_of_full_logits():
    """`task.metric` names the positions it reads, so the edge functions unembed only those rows; the same metric
    hidden behind a plain function gets full logits. Same scores, circuits' metrics and errors, padded or not."""
    model = model_of("interp-toy")
    task = CircuitTask.from_pairs(model, PAIRS, name="cats")  # right-padded
    plain = lambda logits: task.metric(logits)  # noqa: E731  (no `positions`: the full-logits path)
    assert task.attention_mask is not None
    for kind in ("positions", "full"):
        metric = task.metric if kind == "positions" else plain
        scores = exact_edge_scores(model, task.clean, task.corrupted, metric, attention_mask=task.attention_mask,
                                   progress=False).scores
        if kind == "positions":
            reference = scores
        else:
            torch.testing.assert_close(scores, reference, atol=1e-5, rtol=0)
    graph = Circuit.full(exact_edge_scores(model, **task.inputs(), progress=False).graph, reference).top_k(20)
    patch = sender_outputs(model, graph.graph, task.corrupted, task.attention_mask)
    a, b = (float(evaluate_circuits(model, graph, task.clean, patch, metric, attention_mask=task.attention_mask))
            for metric in (task.metric, plain))
    assert a == pytest.approx(b, abs=1e-5)
    wrong = CircuitTask(task.name, task.clean, task.corrupted, task.attention_mask, task.answer, task.wrong,
                        torch.full_like(task.position, task.clean.shape[1] - 1))  # the short row's last slot is padding
    with pytest.raises(ValueError, match="padding"):
        exact_edge_scores(model, **wrong.inputs(), progress=False)
