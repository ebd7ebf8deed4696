"""Edge attribution (EAP, EAP-IG) and exact edge patching of every edge, at GPT-2 small's shape.

    python benchmarks/bench_edges.py            # GPT-2 small shape, random weights, 1 x 32 tokens (~3 min)
    python benchmarks/bench_edges.py --quick    # tiny model, every edge measured (CI smoke test, seconds)

Random clean and corrupted token ids; the metric is logit(11) − logit(22) at the last position, as a
`LogitDifference` (it names the position it reads, so exact patching unembeds only that row). Rows: `eap` (two
forwards and one backward), `eap_ig` with 5 steps, `exact_edge_scores` (one partial forward per 64 edges,
starting at the receiver's block from the cached clean residual stream), and the reference way to get the same
numbers: `evaluate_circuits` with one edge removed per circuit and the metric on full logits (a full forward per
edge with every position unembedded, 64 circuits per forward, the same batching).

Exact patching of all 32,491 edges takes 20 to 30 minutes on 2 threads (shared machine), so it is measured on a
stratified sample: the loop of `exact_edge_scores` (its `CleanRun` and `single_edge_metrics`) runs on `--chunks`
evenly spaced chunks of 64 edges into each receiver layer in `--layers` (and the logits), round-robin over the
layers so that a burst of load from other processes hits every layer alike. A chunk's cost depends on the layer it
starts at. A layer's seconds per edge is the median of its `--chunks` timings (layer 0 and the logits, which have
fewer chunks, run theirs again); the unmeasured layers' are interpolated linearly between the measured ones; the
total is the sum over layers of seconds per edge × edges. `--quick` measures every chunk of every layer once and
checks the loop against `exact_edge_scores` itself. The reference runs on `--reference` of the measured edges and
must agree with exact patching to 1e-4 (fp32 rounding of the same sums in another order). EAP's and EAP-IG's
errors are measured against exact patching on the measured edges. Wall clock, fp32, 2 threads; /proc/loadavg is
recorded at the start and the end (other processes share the machine). Writes a section of benchmarks/RESULTS.md
and benchmarks/results_edges.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402
from bench_forward import HERE, machine, write_section  # noqa: E402

from interp import HookedTransformer  # noqa: E402
from interp.analysis.circuit_task import LogitDifference  # noqa: E402
from interp.analysis.edge_attribution import eap, eap_ig  # noqa: E402
from interp.analysis.edge_patching import (CleanRun, evaluate_circuits, exact_edge_scores, patch_inputs,  # noqa: E402
                                           single_edge_metrics)
from interp.analysis.graph import Circuit, Graph  # noqa: E402
from interp.testing import hf_config, random_hf_gpt2  # noqa: E402

MARK = "bench_edges"
EDGES_PER_RUN = 64
ANSWER, WRONG = 11, 22


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def sampled_chunks(edges: torch.Tensor, n_chunks: int | None) -> list[torch.Tensor]:
    """`exact_edge_scores`'s chunks of one layer's edges: all of them, or `n_chunks` evenly spaced ones."""
    chunks = [edges[start:start + EDGES_PER_RUN] for start in range(0, len(edges), EDGES_PER_RUN)]
    if n_chunks is None or n_chunks >= len(chunks):
        return chunks
    picks = sorted({round(i * (len(chunks) - 1) / max(n_chunks - 1, 1)) for i in range(n_chunks)})
    return [chunks[i] for i in picks]


def interpolate(layers: list[int], values: list[float], at: int) -> float:
    """Piecewise-linear value at `at` through the points (layers, values), constant beyond the ends."""
    if at <= layers[0]:
        return values[0]
    for (x0, y0), (x1, y1) in zip(zip(layers, values), zip(layers[1:], values[1:])):
        if x0 <= at <= x1:
            return y0 + (y1 - y0) * (at - x0) / (x1 - x0)
    return values[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny model, every edge measured (CI smoke test)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3, help="EAP and EAP-IG: median of this many calls")
    parser.add_argument("--layers", default="0,2,4,6,8,10,11", help="receiver layers measured (the logits always are)")
    parser.add_argument("--chunks", type=int, default=4, help="chunks of 64 edges measured per layer")
    parser.add_argument("--reference", type=int, default=64, help="edges the full-forward reference runs on")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_start = load_average()
    wall_start = time.perf_counter()
    config = hf_config(n_layer=2, n_head=4, n_embd=64, n_positions=64, vocab_size=500) if args.quick else hf_config()
    n_pos, reps = 32, 1 if args.quick else args.reps
    model = HookedTransformer.from_pretrained(random_hf_gpt2(config, seed=0))
    graph = Graph.from_model(model)
    generator = torch.Generator().manual_seed(0)
    clean = torch.randint(0, config.vocab_size, (1, n_pos), generator=generator)
    corrupted = torch.randint(0, config.vocab_size, (1, n_pos), generator=generator)
    # A metric that names the position it reads, as CircuitTask.metric: exact patching unembeds only that row.
    metric = LogitDifference(torch.tensor([ANSWER]), torch.tensor([WRONG]), torch.tensor([n_pos - 1]))
    full_logits_metric = lambda logits: metric(logits)  # noqa: E731  (the same metric, on every position's logits)
    inputs = dict(clean_tokens=clean, corrupted_tokens=corrupted, metric=metric)

    eap(model, **inputs)  # warm-up
    eap_times = []
    for _ in range(reps):
        start = time.perf_counter()
        eap_scores = eap(model, **inputs).scores
        eap_times.append(time.perf_counter() - start)
    eap_seconds = statistics.median(eap_times)
    ig_times = []
    for _ in range(reps):
        start = time.perf_counter()
        ig_scores = eap_ig(model, **inputs, steps=5, progress=False).scores
        ig_times.append(time.perf_counter() - start)
    ig_seconds = statistics.median(ig_times)

    # Exact patching: the loop of exact_edge_scores on sampled chunks of each measured receiver layer.
    start = time.perf_counter()
    tokens, mask, patch = patch_inputs(model, graph, clean, corrupted, None, None, ())
    base = CleanRun(model, graph, tokens, mask, metric, ())
    delta = base.outputs - patch
    setup_seconds = time.perf_counter() - start
    layer_of = graph.receiver_layer()[graph.edge_receiver]
    edges_in = {layer: (layer_of == layer).nonzero()[:, 0] for layer in range(graph.n_layers + 1)}
    measured_layers = list(range(graph.n_layers)) if args.quick else \
        sorted({int(x) for x in args.layers.split(",") if int(x) < graph.n_layers})
    measured_layers.append(graph.n_layers)  # the logits
    single_edge_metrics(model, graph, base, delta, edges_in[0][:EDGES_PER_RUN], 0, metric, ())  # warm-up, full depth
    exact = torch.full((graph.n_edges,), float("nan"), dtype=torch.float64)
    chunks = {layer: sampled_chunks(edges_in[layer], None if args.quick else args.chunks) for layer in measured_layers}
    if not args.quick:  # a layer with fewer chunks (layer 0, the logits) repeats them: `--chunks` timings per layer
        chunks = {layer: [c[i % len(c)] for i in range(args.chunks)] for layer, c in chunks.items()}
    chunk_costs: dict[int, list[tuple[float, int]]] = {layer: [] for layer in measured_layers}  # (seconds, edges)
    for round_ in range(max(len(c) for c in chunks.values())):  # round-robin: a burst of load hits every layer alike
        for layer in measured_layers:
            if round_ < len(chunks[layer]):
                chunk = chunks[layer][round_]
                start = time.perf_counter()
                exact[chunk] = single_edge_metrics(model, graph, base, delta, chunk, layer, metric, ()) - base.metric
                chunk_costs[layer].append((time.perf_counter() - start, len(chunk)))
        print(f"round {round_ + 1}: {int((~exact.isnan()).sum())} edges measured", flush=True)
    per_edge = {layer: sum(t for t, _ in costs) / sum(n for _, n in costs) if args.quick  # every chunk: the mean
                else statistics.median(t / n for t, n in costs) for layer, costs in chunk_costs.items()}
    measured = (~exact.isnan()).nonzero()[:, 0]
    block_layers = measured_layers[:-1]  # without the logits: the points the interpolation goes through
    layer_rows, exact_total = [], setup_seconds
    for layer in range(graph.n_layers + 1):
        cost = per_edge.get(layer, interpolate(block_layers, [per_edge[b] for b in block_layers], layer))
        exact_total += cost * len(edges_in[layer])
        n_measured = int((~exact[edges_in[layer]].isnan()).sum())
        layer_rows.append((("logits" if layer == graph.n_layers else str(layer)), len(edges_in[layer]), n_measured,
                           cost, cost * len(edges_in[layer])))
    notes = []
    if args.quick:
        direct = exact_edge_scores(model, **inputs, progress=False).scores
        difference = float((direct - exact).abs().max())
        assert difference <= 1e-9, f"the benchmark's loop differs from exact_edge_scores by {difference}"
        notes.append(f"`exact_edge_scores` itself gives the same scores as the loop timed here (max |difference| "
                     f"{difference:.1e})")

    # The reference: one full forward per edge (evaluate_circuits, one edge removed per circuit).
    reference_edges = measured[torch.linspace(0, len(measured) - 1, min(args.reference, len(measured))).round().long()]
    circuits = []
    for edge in reference_edges.tolist():
        keep = torch.ones(graph.n_edges, dtype=torch.bool)
        keep[edge] = False
        circuits.append(Circuit(graph, None, keep))
    m_clean = float(evaluate_circuits(model, Circuit.full(graph), tokens, patch, full_logits_metric))
    start = time.perf_counter()
    reference = evaluate_circuits(model, circuits, tokens, patch, full_logits_metric, chunk_size=EDGES_PER_RUN) - m_clean
    reference_seconds = time.perf_counter() - start
    reference_total = reference_seconds / len(reference_edges) * graph.n_edges
    reference_difference = float((reference - exact[reference_edges]).abs().max())
    assert reference_difference <= 1e-4, f"exact patching and full reruns differ by {reference_difference:.2e}"

    sample_note = ("all edges measured" if len(measured) == graph.n_edges else
                   f"extrapolated from {len(measured):,} measured edges")
    n = graph.n_edges
    timings = [("interp `eap`", eap_seconds, f"median of {reps}"),
               ("interp `eap_ig` (5 steps)", ig_seconds, f"median of {reps}"),
               (f"interp `exact_edge_scores` ({EDGES_PER_RUN} edges per partial forward)", exact_total, sample_note),
               (f"reference: `evaluate_circuits`, one edge removed, a full forward per edge, full logits "
                f"({EDGES_PER_RUN} per forward)", reference_total, f"extrapolated from {len(reference_edges)} edges")]
    rows = [f"| {name} | {seconds:,.2f} | {n / seconds:,.0f} | {seconds / eap_seconds:,.1f} | {how} |"
            for name, seconds, how in timings]
    per_layer = [f"| {layer} | {edges:,} | {count:,} | {cost * 1000:,.1f}{'' if count else ' (interpolated)'} | "
                 f"{seconds:,.1f} |" for layer, edges, count, cost, seconds in layer_rows]
    accuracy = []
    truth = exact[measured]
    for name, scores in (("EAP", eap_scores), ("EAP-IG (5 steps)", ig_scores)):
        estimate = scores[measured].double()
        accuracy.append({"method": name, "mean_abs_error": float((estimate - truth).abs().mean()),
                         "pearson": float(torch.corrcoef(torch.stack([estimate, truth]))[0, 1]),
                         "sign_agreement": float(((estimate > 0) == (truth > 0)).double().mean())})
    accuracy_rows = [f"| {a['method']} | {a['mean_abs_error']:.2e} | {a['pearson']:.3f} | {a['sign_agreement']:.3f} |"
                     for a in accuracy]
    load_end = load_average()
    wall = time.perf_counter() - wall_start
    shape = "quick" if args.quick else "GPT-2 small shape"
    markdown = "\n".join([
        "## Edge attribution and exact edge patching", "",
        f"Command: `python benchmarks/bench_edges.py{' --quick' if args.quick else ''}`. Machine: {machine()}. "
        f"Load average (1, 5, 15 min) {load_start} at the start, {load_end} at the end; wall time {wall:.0f} s.",
        f"Model: {config.n_layer} layers x {config.n_head} heads, d_model {config.n_embd}, d_vocab {config.vocab_size} "
        f"({shape}), random weights, fp32; 1 x {n_pos} random tokens, random corrupted tokens, metric logit({ANSWER}) − "
        f"logit({WRONG}) at the last position; {n:,} edges. edges/s = {n:,} / seconds.", "",
        "| method | seconds (all edges) | edges/s | x `eap` | how measured |", "|---|---:|---:|---:|---|", *rows, "",
        f"Exact patching per receiver layer: a chunk of {EDGES_PER_RUN} edges starts at its receivers' block; "
        + ("ms per edge is the mean over every chunk" if args.quick else
           f"ms per edge is the median of {args.chunks} timed chunks per layer (layer 0 and the logits repeat theirs), "
           "run round-robin over the layers; unmeasured layers are interpolated linearly")
        + f". Setup (the clean run and both sender-output runs): {setup_seconds:.2f} s, included above.", "",
        "| receiver layer | edges | measured | ms per edge | seconds (layer) |", "|---|---:|---:|---:|---:|", *per_layer, "",
        f"Exact patching vs the reference on {len(reference_edges)} of the measured edges: max |difference| "
        f"{reference_difference:.1e} (asserted ≤ 1e-4); the reference costs {reference_total / exact_total:.1f}x "
        "exact patching's time." + ("  " + "; ".join(notes) + "." if notes else ""), "",
        f"EAP and EAP-IG against exact patching on the {len(measured):,} measured edges (mean |exact score| "
        f"{float(truth.abs().mean()):.2e}, max {float(truth.abs().max()):.2e}):", "",
        "| estimate | mean abs error | pearson | sign agreement |", "|---|---:|---:|---:|", *accuracy_rows,
    ])
    print(markdown)
    if not (args.quick or args.no_write):
        write_section(markdown, MARK)
        (HERE / "results_edges.json").write_text(json.dumps({
            "machine": machine(), "load_average": {"start": load_start, "end": load_end}, "n_edges": n,
            "seconds": {"eap": eap_seconds, "eap_ig_5": ig_seconds, "exact_extrapolated": exact_total,
                        "exact_setup": setup_seconds, "reference_extrapolated": reference_total},
            "measured_edges": len(measured), "reference_edges": len(reference_edges),
            "reference_max_abs_difference": reference_difference,
            "per_layer": [{"layer": layer, "edges": edges, "measured": count, "seconds_per_edge": cost}
                          for layer, edges, count, cost, _ in layer_rows],
            "accuracy": accuracy}, indent=1) + "\n")


if __name__ == "__main__":
    main()
