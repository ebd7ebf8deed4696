"""The edge graph (`interp.analysis.graph`): its edges against a brute-force enumeration, the count formula,
names, pruning against a path search written here, top-k selection and the EAP-IG/MIB JSON exchange."""

from __future__ import annotations

import itertools
import json
import random

import pytest
import torch

from interp.analysis.graph import Circuit, Graph
from interp.config import Config

# (n_layers, n_heads, n_kv_heads, parallel): GPT-2 small, GQA, multi-query, parallel, parallel + GQA, 1 x 1.
SHAPES = [(12, 12, 12, False), (3, 4, 2, False), (4, 8, 1, False), (3, 4, 4, True), (2, 6, 2, True), (1, 1, 1, False)]
SHAPE_IDS = ["gpt2-small", "gqa", "mqa", "parallel", "parallel-gqa", "1x1"]


# ----- references written for these tests ---------------------------------------------------------------------
def enumerated_edges(n_layers: int, n_heads: int, n_kv_heads: int, parallel: bool) -> list[tuple[str, str]]:
    """Every (sender, receiver) pair whose sender writes a residual stream the receiver reads, by brute force.

    A sender is placed at a time: input -1, head (l, 0), MLP (l, 1). A receiver reads at a time: q/k/v of
    layer l before its attention (l, 0), a sequential MLP after it (l, 1), a parallel MLP beside the heads
    (l, 0.5: after nothing of its own layer), logits after everything. A sender feeds a receiver when it comes strictly earlier."""
    def name(layer: int, index: int, kind: str) -> str:
        if kind != "q" and n_kv_heads != n_heads:
            return f"a{layer}.kv{index}<{kind}>"
        return f"a{layer}.h{index}<{kind}>"

    senders = [("input", (-1, 1))]
    senders += [(f"a{l}.h{h}", (l, 0)) for l in range(n_layers) for h in range(n_heads)]
    senders += [(f"m{l}", (l, 1)) for l in range(n_layers)]
    receivers = []
    for l in range(n_layers):
        receivers += [(name(l, h, "q"), (l, 0)) for h in range(n_heads)]
        receivers += [(name(l, g, kind), (l, 0)) for kind in "kv" for g in range(n_kv_heads)]
        receivers.append((f"m{l}", (l, 0.5) if parallel else (l, 1)))
    receivers.append(("logits", (n_layers, 0)))

    def reads(sender_time: tuple, receiver_time: tuple) -> bool:
        sender_layer, sender_slot = sender_time
        receiver_layer, receiver_slot = receiver_time
        if sender_layer < receiver_layer:
            return True
        if sender_layer > receiver_layer:
            return False
        # same layer: a head (slot 0) is read by a sequential MLP (slot 1) only
        return sender_slot == 0 and receiver_slot == 1

    return [(s, r) for (s, s_time), (r, r_time) in itertools.product(senders, receivers) if reads(s_time, r_time)]


def formula(n_layers: int, n_heads: int, n_kv_heads: int, parallel: bool) -> int:
    """The module docstring's count: Σ_l [(H + 2K)(1 + (H+1)l) + 1 + (H+1)l + sH] + 1 + L(H+1)."""
    H, K, s = n_heads, n_kv_heads, 0 if parallel else 1
    return sum((H + 2 * K) * (1 + (H + 1) * l) + 1 + (H + 1) * l + s * H for l in range(n_layers)) + 1 + n_layers * (H + 1)


def fed_nodes(graph_shape: tuple[int, int, int, bool], receiver: str) -> list[str]:
    """The nodes a receiver channel feeds: its head, every head of a GQA kv group, its MLP, or logits."""
    _, n_heads, n_kv_heads, _ = graph_shape
    node = receiver.split("<")[0]
    if ".kv" in node:
        layer, group = node[1:].split(".kv")
        size = n_heads // n_kv_heads
        return [f"a{layer}.h{h}" for h in range(int(group) * size, (int(group) + 1) * size)]
    return [node]


def path_pruned(graph_shape: tuple[int, int, int, bool], kept: set[str]) -> set[str]:
    """The kept edges on some path input -> ... -> logits made of kept edges, by depth-first search."""
    out_edges: dict[str, list[tuple[str, str]]] = {}
    for edge in kept:
        sender, receiver = edge.split("->")
        for node in fed_nodes(graph_shape, receiver):
            out_edges.setdefault(sender, []).append((edge, node))

    reached, stack = {"input"}, ["input"]
    while stack:
        for _, node in out_edges.get(stack.pop(), []):
            if node not in reached:
                reached.add(node)
                stack.append(node)

    def reaches_logits(node: str, seen: dict[str, bool]) -> bool:
        if node == "logits":
            return True
        if node not in seen:
            seen[node] = False
            seen[node] = any(reaches_logits(child, seen) for _, child in out_edges.get(node, []))
        return seen[node]

    useful: dict[str, bool] = {}
    return {edge for edge in kept if edge.split("->")[0] in reached
            and any(reaches_logits(node, useful) for node in fed_nodes(graph_shape, edge.split("->")[1]))}


# ----- structure ----------------------------------------------------------------------------------------------
def test_gpt2_small_edge_count_from_a_config():
    config = Config(n_layers=12, d_model=768, n_heads=12, d_mlp=3072, d_vocab=50257, n_ctx=1024)
    graph = Graph.from_model(config)
    assert graph == Graph(12, 12, 12, False, 768)
    assert graph.n_edges == 32_491  # MIB's count for GPT-2 small
    assert len(enumerated_edges(12, 12, 12, False)) == 32_491


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_edges_equal_brute_force_enumeration_and_formula(shape):
    graph = Graph(*shape, d_model=16)
    expected = [f"{s}->{r}" for s, r in enumerated_edges(*shape)]
    assert len(graph.edges) == len(set(graph.edges))  # no duplicate names
    assert set(graph.edges) == set(expected)
    assert graph.n_edges == len(expected) == formula(*shape)


@pytest.mark.parametrize("shape", SHAPES[1:], ids=SHAPE_IDS[1:])
def test_edge_index_tensors_match_names_and_are_ordered_by_receiver(shape):
    graph = Graph(*shape, d_model=16)
    for i, name in enumerate(graph.edges):
        assert name == f"{graph.senders[graph.edge_sender[i]]}->{graph.receivers[graph.edge_receiver[i]]}"
        assert graph.index(name) == i
    assert bool((graph.edge_receiver[1:] >= graph.edge_receiver[:-1]).all())
    # per layer: H q channels, K k, K v, the MLP; logits last
    n_heads, n_kv = shape[1], shape[2]
    assert len(graph.receivers) == shape[0] * (n_heads + 2 * n_kv + 1) + 1
    assert graph.receivers[-1] == "logits"


def test_parallel_blocks_have_no_head_to_own_mlp_edge():
    parallel, sequential = Graph(2, 3, 3, True, 8), Graph(2, 3, 3, False, 8)
    for head in range(3):
        assert f"a1.h{head}->m1" not in parallel.edges
        assert f"a1.h{head}->m1" in sequential.edges
        assert f"a0.h{head}->m1" in parallel.edges  # the previous layer's heads still feed it
    assert "m0->m1" in parallel.edges and "input->m0" in parallel.edges
    with pytest.raises(KeyError, match="parallel"):
        parallel.index("a0.h0->m0")


def test_gqa_key_value_channels_are_named_per_kv_head():
    graph = Graph(2, 4, 2, False, 8)
    assert "a0.h1->a1.kv0<k>" in graph.edges and "m0->a1.kv1<v>" in graph.edges
    assert "a0.h1->a1.h3<q>" in graph.edges
    assert not any(name.endswith(("h0<k>", "h0<v>")) for name in graph.edges)
    assert not any("kv2" in name for name in graph.edges)
    assert not any(".kv" in name for name in Graph(2, 4, 4, False, 8).edges)
    feeds = graph.receiver_nodes()
    kv1 = graph.receivers.index("a1.kv1<k>")
    fed = [(list(graph.senders) + ["logits"])[i] for i in feeds[kv1].nonzero()[:, 0].tolist()]
    assert fed == ["a1.h2", "a1.h3"]
    with pytest.raises(ValueError, match="multiple"):
        Graph(2, 4, 3, False, 8)


@pytest.mark.parametrize("name, hint", [
    ("a1.h0->a0.h1<q>", "forward only"),   # backward
    ("a0.h0->a0.h1<q>", "forward only"),   # same layer: heads read resid_pre
    ("m1->m1", "forward only"),
    ("a0.h7->a1.h0<q>", "Close"),          # no head 7
    ("a0.h0->a1.h0<k>", "kv heads"),       # GQA graph: keys are per kv head
    ("input->a1.kv0<q>", "not an edge name"),
    ("a0.h0 -> logits", "not an edge name"),
    ("nonsense", "not an edge name"),
])
def test_unknown_and_backward_edges_raise_key_error_with_help(name, hint):
    graph = Graph(2, 4, 2, False, 8)
    with pytest.raises(KeyError, match=hint):
        graph.index(name)
    circuit = Circuit.full(graph)
    with pytest.raises(KeyError):
        _ = name in circuit
    with pytest.raises(KeyError):
        Circuit.from_edges(graph, ["input->logits", name])


def test_close_names_are_suggested():
    graph = Graph(2, 4, 4, False, 8)
    with pytest.raises(KeyError) as error:
        graph.index("a0.h1->a1.h2<z>")
    assert "edges are 'SENDER->RECEIVER'" in str(error.value)
    with pytest.raises(KeyError) as error:
        graph.index("a1.h1->a1.h2<k>")
    assert "a0.h1->a1.h2<k>" in str(error.value)


# ----- circuits -----------------------------------------------------------------------------------------------
def test_circuit_checks_shapes_and_dtype():
    graph = Graph(1, 2, 2, False, 8)
    with pytest.raises(ValueError, match=r"\[n_edges\] = \[13\]"):
        Circuit(graph, torch.zeros(12), torch.ones(13, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool"):
        Circuit(graph, None, torch.ones(13))
    with pytest.raises(ValueError, match="bool"):
        Circuit(graph, None, torch.ones(12, dtype=torch.bool))


def test_edges_nodes_and_scores_of_a_small_circuit():
    graph = Graph(1, 2, 2, False, 8)
    assert graph.n_edges == 13  # 6 q/k/v from input, 3 into m0, 4 into logits (worked out by hand)
    scores = torch.zeros(13)
    scores[graph.index("a0.h1->logits")] = -3.0
    scores[graph.index("input->a0.h1<v>")] = 2.0
    circuit = Circuit.from_edges(graph, ["input->a0.h1<v>", "a0.h1->logits", "input->m0"], scores)
    assert circuit.n_edges == 3
    assert circuit.edges == ["a0.h1->logits", "input->a0.h1<v>", "input->m0"]  # by |score|
    assert circuit.nodes() == ["input", "a0.h1", "m0", "logits"]
    assert circuit.score("a0.h1->logits") == -3.0
    assert "input->m0" in circuit and "a0.h0->m0" not in circuit
    with pytest.raises(ValueError, match="no scores"):
        Circuit.from_edges(graph, ["input->m0"]).score("input->m0")


def test_pruned_drops_an_edge_whose_sender_is_unreachable():
    graph = Graph(2, 2, 2, False, 8)
    # a0.h0 has no input edge, so a0.h0 -> a1.h1<q> carries nothing from the input, and then a1.h1 -> logits
    # has nothing either; input -> a1.h0<v> -> logits is a path.
    circuit = Circuit.from_edges(graph, ["a0.h0->a1.h1<q>", "a1.h1->logits", "input->a1.h0<v>", "a1.h0->logits"])
    assert set(circuit.pruned().edges) == {"input->a1.h0<v>", "a1.h0->logits"}


def test_pruned_drops_a_dangling_edge_that_never_reaches_logits():
    graph = Graph(2, 2, 2, False, 8)
    # m0 writes nowhere in the circuit, so a0.h1 -> m0 dangles, then input -> a0.h1<k> does.
    circuit = Circuit.from_edges(graph, ["input->a0.h1<k>", "a0.h1->m0", "input->logits"])
    assert circuit.pruned().edges == ["input->logits"]
    assert circuit.pruned().nodes() == ["input", "logits"]


def test_pruned_keeps_a_gqa_kv_edge_that_reaches_a_head_of_its_group():
    graph = Graph(2, 4, 2, False, 8)  # kv1 serves query heads 2 and 3
    edges = ["input->a0.h0<q>", "a0.h0->a1.kv1<k>", "input->a1.h3<q>", "a1.h3->logits"]
    assert set(Circuit.from_edges(graph, edges).pruned().edges) == set(edges)
    # the same kv edge when only head 1 (group 0) reaches the logits: nothing flows through kv1
    edges = ["input->a0.h0<q>", "a0.h0->a1.kv1<k>", "input->a1.h1<q>", "a1.h1->logits"]
    assert set(Circuit.from_edges(graph, edges).pruned().edges) == {"input->a1.h1<q>", "a1.h1->logits"}


def test_pruned_follows_paths_through_a_parallel_mlp():
    graph = Graph(2, 2, 2, True, 8)
    edges = ["input->m0", "m0->a1.h0<q>", "a1.h0->logits", "m0->m1"]  # m1 reaches nothing
    assert set(Circuit.from_edges(graph, edges).pruned().edges) == set(edges[:3])


def test_pruned_of_the_full_and_the_empty_graph():
    graph = Graph(2, 4, 2, True, 8)
    assert Circuit.full(graph).pruned().n_edges == graph.n_edges  # every sender has input->s and s->logits
    empty = Circuit(graph, None, torch.zeros(graph.n_edges, dtype=torch.bool))
    assert empty.pruned().n_edges == 0


@pytest.mark.parametrize("shape", [(2, 4, 2, False), (3, 2, 2, True), (3, 3, 3, False)], ids=["gqa", "parallel", "3L"])
@pytest.mark.parametrize("density", [0.08, 0.2, 0.5])
def test_pruned_equals_a_path_search_on_random_circuits(shape, density):
    graph = Graph(*shape, d_model=8)
    rng = random.Random(hash((shape, density)) % 1000)
    for _ in range(20):
        kept = {e for e in graph.edges if rng.random() < density}
        pruned = Circuit.from_edges(graph, sorted(kept)).pruned()
        assert set(pruned.edges) == path_pruned(shape, kept)
        assert set(pruned.pruned().edges) == set(pruned.edges)  # idempotent


# ----- top-k ----------------------------------------------------------------------------------------------------
def test_top_k_ranks_by_absolute_or_signed_score():
    graph = Graph(1, 2, 2, False, 8)
    scores = torch.zeros(graph.n_edges)
    for name, value in [("input->logits", 0.5), ("a0.h0->logits", -4.0), ("input->a0.h0<v>", 3.0),
                        ("m0->logits", 1.0)]:
        scores[graph.index(name)] = value
    circuit = Circuit.full(graph, scores, method="hand")
    assert set(circuit.top_k(2, prune=False).edges) == {"a0.h0->logits", "input->a0.h0<v>"}
    assert set(circuit.top_k(2, absolute=False, prune=False).edges) == {"input->a0.h0<v>", "m0->logits"}
    # pruned: input -> a0.h0<v> -> a0.h0 -> logits is a path
    assert set(circuit.top_k(2).edges) == {"a0.h0->logits", "input->a0.h0<v>"}
    assert circuit.top_k(2).method == "hand top-2"
    # signed top 2 is input->a0.h0<v> and m0->logits: m0 has no input edge, a0.h0 no output edge
    assert circuit.top_k(2, absolute=False).n_edges == 0
    assert circuit.top_fraction(4 / 13 + 1e-9, prune=False).n_edges == 4  # int(fraction * n_edges)


def test_top_k_with_ties_takes_exactly_k_in_graph_order():
    graph = Graph(1, 2, 2, False, 8)
    circuit = Circuit.full(graph, torch.ones(graph.n_edges))
    chosen = circuit.top_k(5, prune=False)
    assert chosen.n_edges == 5
    assert bool(chosen.in_graph[:5].all())  # stable: the first edges in graph order
    scores = torch.ones(graph.n_edges)
    scores[7] = 2.0
    assert set(Circuit.full(graph, scores).top_k(3, prune=False).in_graph.nonzero()[:, 0].tolist()) == {7, 0, 1}


def test_top_k_bounds_and_errors():
    graph = Graph(1, 2, 2, False, 8)
    circuit = Circuit.full(graph, torch.arange(graph.n_edges, dtype=torch.float32))
    assert circuit.top_k(0).n_edges == 0
    assert circuit.top_k(graph.n_edges, prune=False).n_edges == graph.n_edges
    for k in (-1, graph.n_edges + 1):
        with pytest.raises(ValueError, match="between 0 and the number of edges, 13"):
            circuit.top_k(k)
    with pytest.raises(ValueError, match="fraction"):
        circuit.top_fraction(1.5)
    with pytest.raises(ValueError, match="no scores"):
        Circuit.full(graph).top_k(1)
    nan_scores = torch.zeros(graph.n_edges)
    nan_scores[3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        Circuit.full(graph, nan_scores).top_k(1)


def test_threshold_keeps_edges_at_or_above_the_value():
    graph = Graph(1, 2, 2, False, 8)
    scores = torch.linspace(-1, 1, graph.n_edges)
    chosen = Circuit.full(graph, scores).threshold(0.5, prune=False)
    assert torch.equal(chosen.in_graph, scores.abs() >= 0.5)
    assert torch.equal(Circuit.full(graph, scores).threshold(0.5, absolute=False, prune=False).in_graph, scores >= 0.5)


def test_threshold_of_an_unscored_circuit_is_a_value_error():
    # As top_k's: "This circuit has no scores" (ValueError), not an AttributeError from None.abs().
    with pytest.raises(ValueError, match="no scores"):
        Circuit.full(Graph(1, 2, 2, False, 8)).threshold(0.5)


# ----- JSON exchange -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(2, 4, 2, False), (2, 3, 3, True), (12, 12, 12, False)],
                         ids=["gqa", "parallel", "gpt2-small"])
def test_json_round_trip(tmp_path, shape):
    graph = Graph(*shape, d_model=24)
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(graph.n_edges, generator=generator)
    in_graph = torch.rand(graph.n_edges, generator=generator) < 0.3
    circuit = Circuit(graph, scores, in_graph, method="eap-ig (5 steps)")
    path = circuit.to_json(tmp_path / "circuit.json")
    back = Circuit.from_json(path)
    assert back.graph == graph
    assert torch.equal(back.scores, scores.double())  # float32 -> float64 and JSON's repr are exact
    assert torch.equal(back.in_graph, in_graph)
    assert back.method == "eap-ig (5 steps)"
    data = json.loads(path.read_text())
    assert data["cfg"]["n_layers"] == shape[0] and data["cfg"]["n_heads"] == shape[1]
    assert data["cfg"]["parallel_attn_mlp"] is shape[3] and data["cfg"]["d_model"] == 24
    assert set(data["edges"]) == set(graph.edges)
    assert set(data["nodes"]) == set(graph.senders) | {"logits"}
    assert {n for n, v in data["nodes"].items() if v["in_graph"]} == set(circuit.nodes())
    first = graph.edges[0]
    assert data["edges"][first] == {"score": float(scores[0]), "in_graph": bool(in_graph[0])}


def test_json_of_an_unscored_circuit_reads_back_zero_scores(tmp_path):
    graph = Graph(1, 2, 2, False, 8)
    circuit = Circuit.from_edges(graph, ["input->logits"])
    back = Circuit.from_json(circuit.to_json(tmp_path / "c.json"))
    assert back.edges == ["input->logits"] and float(back.scores.abs().sum()) == 0.0


def test_a_hand_written_eap_ig_style_json_loads(tmp_path):
    # As EAP-IG's Graph.to_json writes it: cfg with TransformerLens's keys, nodes {in_graph}, every edge
    # {score, in_graph}. One layer, two heads, sequential: 13 edges.
    senders = ["input", "a0.h0", "a0.h1", "m0"]
    edges = {}
    for head in range(2):
        for kind in "qkv":
            edges[f"input->a0.h{head}<{kind}>"] = {"score": 0.0, "in_graph": False}
    for sender in senders[:3]:
        edges[f"{sender}->m0"] = {"score": 0.0, "in_graph": False}
    for sender in senders:
        edges[f"{sender}->logits"] = {"score": 0.0, "in_graph": False}
    edges["input->a0.h1<k>"] = {"score": 0.25, "in_graph": True}
    edges["a0.h1->logits"] = {"score": -1.5, "in_graph": True}
    edges["a0.h0->m0"] = {"score": 0.125, "in_graph": False}
    data = {"cfg": {"n_layers": 1, "n_heads": 2, "parallel_attn_mlp": False, "d_model": 8, "d_vocab": 50},
            "nodes": {name: {"in_graph": name in ("input", "a0.h1", "logits")} for name in [*senders, "logits"]},
            "edges": edges}
    path = tmp_path / "eap_ig.json"
    path.write_text(json.dumps(data))
    circuit = Circuit.from_json(path)
    assert circuit.graph == Graph(1, 2, 2, False, 8)
    assert set(circuit.edges) == {"input->a0.h1<k>", "a0.h1->logits"}
    assert circuit.edges == ["a0.h1->logits", "input->a0.h1<k>"]  # by |score|
    assert circuit.score("a0.h0->m0") == 0.125 and circuit.score("a0.h1->logits") == -1.5
    assert circuit.method == ""


def test_malformed_json_is_rejected_with_the_format():
    with pytest.raises(ValueError, match="no 'cfg' key"):
        Circuit.from_dict({"edges": {}})
    with pytest.raises(ValueError, match=r"lacks \['d_model'\]"):
        Circuit.from_dict({"cfg": {"n_layers": 1, "n_heads": 2}, "edges": {}})
    with pytest.raises(KeyError, match="forward only"):
        Circuit.from_dict({"cfg": {"n_layers": 1, "n_heads": 2, "d_model": 8},
                           "edges": {"m0->a0.h0<q>": {"score": 1.0, "in_graph": True}}})
