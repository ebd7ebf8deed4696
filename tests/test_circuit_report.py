"""`interp circuit`: the report files, their agreement with a fresh computation, the pictures, resume, refusal
of another run's folder, and bad task files (all on the bundled 2-layer models, 16 pairs)."""

import contextlib
import io
import json
import os
import re
import shutil
import xml.etree.ElementTree as ET

import pytest
import torch

from interp import HookedTransformer, circuit_report, files
from interp.analysis.circuit_search import faithfulness_curve
from interp.analysis.circuit_task import induction_task
from interp.analysis.edge_patching import exact_edge_scores
from interp.analysis.graph import Circuit, Graph
from interp.cli import main
from interp.viz_circuit import circuit_svg

METHODS = ("eap", "eap-ig", "exact")
ARGS = ["circuit", "--n-pairs", "16", "--no-progress"]
SVG = "{http://www.w3.org/2000/svg}"


def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def model():
    return HookedTransformer.from_pretrained("interp-toy")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One default run (three methods) into a fresh folder: (folder, stdout)."""
    out = tmp_path_factory.mktemp("circuit")
    code, stdout, stderr = cli(*ARGS, "--out", str(out))
    assert code == 0, stderr
    return out / "interp-toy" / "induction", stdout


@pytest.fixture
def run_copy(run, tmp_path):
    """A copy of the run's output tree (the tests that change it work on this), and its folder."""
    folder, _ = run
    shutil.copytree(folder.parent.parent, tmp_path / "out")
    return tmp_path / "out", tmp_path / "out" / "interp-toy" / "induction"


def report_files() -> set[str]:
    return ({f"graph_{m}.json" for m in METHODS} | {f"circuit_{m}.svg" for m in METHODS}
            | {"circuit.html", "faithfulness.json", "faithfulness.png", "summary.md"})


def test_run_writes_every_file_as_one_set(run):
    folder, stdout = run
    record = files.verify_file_set(folder, circuit_report.COMPLETE_NAME, "rerun")
    assert set(record["files"]) == report_files()
    assert {p.name for p in (folder / "units").iterdir()} == {f"{m}.json" for m in METHODS}
    assert (folder / "manifest.json").is_file()
    assert (folder / "faithfulness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(folder / "circuit.html") in stdout and "input->m0" in stdout  # where, and the top edges
    summary = (folder / "summary.md").read_text()
    assert "scored on the first 8" in summary and "other 8 (held out)" in summary
    for method in METHODS:
        assert f"## {method}" in summary
    curves = json.loads((folder / "faithfulness.json").read_text())["curves"]
    assert [c["method"].split()[0] for c in curves] == list(METHODS)


def test_graph_json_matches_a_fresh_exact_computation(run, model):
    folder, _ = run
    scoring, held_out = induction_task(model, 16, seed=0).split(8)
    fresh = exact_edge_scores(model, **scoring.inputs(), progress=False)
    saved = Circuit.from_json(folder / "graph_exact.json")
    # The same float64 computation on the same pairs, and JSON keeps every float64 digit: only summation-order
    # noise could differ, far below 1e-9 on scores of size ~10.
    torch.testing.assert_close(saved.scores, fresh.scores, atol=1e-9, rtol=0)
    entry = json.loads((folder / "graph_exact.json").read_text())["report"]
    chosen = fresh.top_fraction(entry["fraction"])
    assert torch.equal(saved.in_graph, chosen.in_graph) and saved.n_edges > 0
    # The chosen circuit's held-out faithfulness, recomputed with the curve code on the held-out pairs.
    again = faithfulness_curve(model, fresh, **held_out.inputs(), fractions=(entry["fraction"],), progress=False)
    assert again.faithfulness[0] == pytest.approx(entry["faithfulness_held_out"], abs=1e-9)


def svg_counts(svg: str) -> tuple[set[str], list[str]]:
    root = ET.fromstring(svg)
    nodes = {g.get("data-node") for g in root.iter(f"{SVG}g") if g.get("class") == "node"}
    edges = [p.get("data-edge") for p in root.iter(f"{SVG}path") if p.get("class") == "edge"]
    return nodes, edges


@pytest.mark.parametrize("method", METHODS)
def test_svg_draws_exactly_the_circuit(run, method):
    folder, _ = run
    circuit = Circuit.from_json(folder / f"graph_{method}.json")
    nodes, edges = svg_counts((folder / f"circuit_{method}.svg").read_text())
    assert circuit.n_edges <= 60  # all drawn
    assert nodes == set(circuit.nodes())
    assert sorted(edges) == sorted(circuit.edges)  # no GQA here: one line per edge


def test_svg_gqa_edges_reach_the_heads_of_their_group_in_the_circuit_and_truncates():
    graph = Graph.from_model(HookedTransformer.from_pretrained("interp-toy-llama"))
    assert graph.group == 2
    names = ["input->a0.kv0<k>", "a0.h1->a1.kv1<v>", "a0.h3->a1.h2<q>", "a1.h2->logits", "a1.h3->logits"]
    scores = torch.zeros(graph.n_edges, dtype=torch.float64)
    scores[graph.indices(names)] = torch.tensor([1.0, -2.0, 0.5, 3.0, -0.1], dtype=torch.float64)
    circuit = Circuit.from_edges(graph, names, scores)
    nodes, edges = svg_counts(circuit_svg(circuit))
    # kv0 serves a0.h0 and a0.h1, of which only a0.h1 is in the circuit; kv1 serves a1.h2 and a1.h3, both in.
    assert nodes == {"input", "a0.h1", "a0.h3", "a1.h2", "a1.h3", "logits"}
    assert edges.count("input->a0.kv0<k>") == 1 and edges.count("a0.h1->a1.kv1<v>") == 2
    assert len(edges) == 1 + 2 + 3
    nodes, edges = svg_counts(circuit_svg(circuit, max_edges=2))  # the two largest |score|: a1.h2->logits, kv1<v>
    assert set(edges) == {"a1.h2->logits", "a0.h1->a1.kv1<v>"} and nodes == {"a0.h1", "a1.h2", "logits"}
    assert len(edges) == 2  # a1.h3 is not drawn, so the kv1 edge goes to a1.h2 only


@pytest.mark.parametrize("parallel", [False, True], ids=["sequential", "parallel"])
def test_svg_places_the_mlp_beside_its_heads(parallel):
    graph = Graph(2, 2, 2, parallel, 16)
    circuit = Circuit.from_edges(graph, ["input->a0.h0<q>", "input->m0", "a0.h0->logits", "m0->logits"],
                                 torch.ones(graph.n_edges, dtype=torch.float64))
    root = ET.fromstring(circuit_svg(circuit))
    box = {g.get("data-node"): g.find(f"{SVG}rect") for g in root.iter(f"{SVG}g") if g.get("class") == "node"}
    y = {name: float(rect.get("y")) for name, rect in box.items()}
    assert y["input"] > y["a0.h0"] > y["logits"] and float(box["m0"].get("x")) > float(box["a0.h0"].get("x"))
    assert (y["m0"] == y["a0.h0"]) == parallel and (parallel or y["m0"] < y["a0.h0"])  # sequential: MLP above


def test_html_is_self_contained(run):
    folder, _ = run
    page = (folder / "circuit.html").read_text()
    assert not re.search(r"https?://", page, re.IGNORECASE) and "<script" not in page.lower()
    assert page.count("<svg") == len(METHODS) and "data:image/png;base64," in page


def test_resume_rewrites_only_what_is_missing(run_copy, monkeypatch):
    out, folder = run_copy
    units = {p: p.stat().st_mtime_ns for p in (folder / "units").iterdir()}
    (folder / circuit_report.COMPLETE_NAME).unlink()
    (folder / "circuit.html").unlink()

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished method was scored again")
    for method in METHODS:
        monkeypatch.setitem(circuit_report.SCORERS, method, must_not_run)
    code, _, stderr = cli(*ARGS, "--out", str(out), "--resume")
    assert code == 0, stderr
    assert set(files.verify_file_set(folder, circuit_report.COMPLETE_NAME, "rerun")["files"]) == report_files()
    assert {p: p.stat().st_mtime_ns for p in (folder / "units").iterdir()} == units


def test_interrupted_run_keeps_finished_methods_and_resumes(tmp_path, monkeypatch):
    scorers = dict(circuit_report.SCORERS)

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setitem(circuit_report.SCORERS, "exact", interrupt)
    code, _, stderr = cli(*ARGS, "--out", str(tmp_path))
    folder = tmp_path / "interp-toy" / "induction"
    assert code == 130 and "2 of 3 methods are saved" in stderr and "--resume" in stderr
    assert {p.name for p in (folder / "units").iterdir()} == {"eap.json", "eap-ig.json"}
    assert not (folder / circuit_report.COMPLETE_NAME).exists()

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished method was scored again")
    monkeypatch.setitem(circuit_report.SCORERS, "eap", must_not_run)
    monkeypatch.setitem(circuit_report.SCORERS, "eap-ig", must_not_run)
    monkeypatch.setitem(circuit_report.SCORERS, "exact", scorers["exact"])
    code, _, stderr = cli(*ARGS, "--out", str(tmp_path), "--resume")
    assert code == 0, stderr
    files.verify_file_set(folder, circuit_report.COMPLETE_NAME, "rerun")


def test_another_run_is_refused_without_overwrite(run_copy):
    out, folder = run_copy
    before = files.verify_file_set(folder, circuit_report.COMPLETE_NAME, "rerun")
    code, _, stderr = cli(*ARGS, "--out", str(out), "--steps", "3")
    assert code == 2 and "different run" in stderr and "steps" in stderr and "--overwrite" in stderr
    assert files.verify_file_set(folder, circuit_report.COMPLETE_NAME, "rerun") == before  # untouched
    code, _, stderr = cli(*ARGS, "--out", str(out), "--steps", "3", "--method", "eap", "--overwrite")
    assert code == 0, stderr
    assert set(files.verify_file_set(folder, circuit_report.COMPLETE_NAME, "rerun")["files"]) == {
        "graph_eap.json", "circuit_eap.svg", "circuit.html", "faithfulness.json", "faithfulness.png", "summary.md"}
    assert not (folder / "graph_exact.json").exists() and not (folder / "units" / "exact.json").exists()


GOOD = {"clean": "The king is dead", "corrupted": "The queen is dead", "answer": " and", "wrong": " the"}


@pytest.mark.parametrize("bad_line, where", [
    (json.dumps({**GOOD, "corrupted": "The queen"}), r"Pair 2: the clean prompt is 5 tokens and the corrupted one 3"),
    (json.dumps({**GOOD, "answer": "xqzvbnmlkj"}), r"Pair 2: the answer 'xqzvbnmlkj' is 10 tokens"),
    ('{"clean": "The king", ', r"line 2: not JSON"),
], ids=["lengths", "multi-token-answer", "bad-json"])
def test_bad_task_file_is_one_line_naming_the_line(tmp_path, bad_line, where):
    task = tmp_path / "task.jsonl"
    task.write_text(json.dumps(GOOD) + "\n" + bad_line + "\n" + json.dumps(GOOD) + "\n")
    code, _, stderr = cli("circuit", "--task", str(task), "--out", str(tmp_path / "out"), "--no-progress")
    assert code == 2 and "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1
    assert str(task) in stderr and re.search(where, stderr), stderr
    assert not (tmp_path / "out").exists()  # checked before anything is written


def test_options_are_checked_before_the_model_loads(tmp_path, monkeypatch):
    def no_load(*args, **kwargs):
        raise AssertionError("the model loaded before the options were checked")
    monkeypatch.setattr(HookedTransformer, "from_pretrained", no_load)
    for argv, message in ((["--method", "eap,acdc"], "Unknown methods ['acdc']"), (["--steps", "0"], "--steps"),
                          (["--top-fraction", "2"], "--top-fraction"), (["--task", str(tmp_path / "none.jsonl")],
                                                                         "No task file")):
        code, _, stderr = cli(*ARGS, "--out", str(tmp_path), *argv)
        assert code == 2 and message in stderr, stderr


def test_non_finite_scores_are_an_error_not_a_report(tmp_path, monkeypatch):
    def nan_scores(model, task, steps, progress, batch_size):
        graph = Graph.from_model(model)
        return Circuit.full(graph, torch.full((graph.n_edges,), float("nan"), dtype=torch.float64), "eap")
    monkeypatch.setitem(circuit_report.SCORERS, "eap", nan_scores)
    code, _, stderr = cli(*ARGS, "--out", str(tmp_path), "--method", "eap")
    folder = tmp_path / "interp-toy" / "induction"
    assert code == 2 and "Non-finite eap scores" in stderr
    assert not (folder / "units" / "eap.json").exists() and not any(folder.glob("*.svg"))
    assert not os.path.exists(folder / circuit_report.COMPLETE_NAME)


def test_without_matplotlib_the_page_shows_the_curves_as_a_table(tmp_path, monkeypatch):
    def no_matplotlib(*args, **kwargs):
        raise ImportError("no matplotlib")
    monkeypatch.setattr(circuit_report, "faithfulness_png", no_matplotlib)
    code, _, stderr = cli(*ARGS, "--out", str(tmp_path), "--method", "eap")
    folder = tmp_path / "interp-toy" / "induction"
    assert code == 0, stderr
    assert "faithfulness.png" not in files.verify_file_set(folder, circuit_report.COMPLETE_NAME, "rerun")["files"]
    page = (folder / "circuit.html").read_text()
    assert "<img" not in page and "faithfulness \\ edges" in page


def test_batch_size_gives_the_same_scores(tmp_path):
    """--batch-size scores the pairs in batches: the same numbers (to rounding) as all at once, another run id."""
    code, _, stderr = cli(*ARGS, "--out", str(tmp_path / "one"), "--method", "exact")
    assert code == 0, stderr
    code, _, stderr = cli(*ARGS, "--out", str(tmp_path / "batched"), "--method", "exact", "--batch-size", "3")
    assert code == 0, stderr
    whole, batched = (Circuit.from_json(tmp_path / run / "interp-toy" / "induction" / "graph_exact.json")
                      for run in ("one", "batched"))
    assert float(whole.scores.abs().max()) > 1
    torch.testing.assert_close(batched.scores, whole.scores, atol=1e-4, rtol=0)
    code, _, stderr = cli(*ARGS, "--out", str(tmp_path / "bad"), "--batch-size", "0")
    assert code == 2 and "--batch-size" in stderr
