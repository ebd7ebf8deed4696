"""The benchmarks still run (quick mode: tiny model, one rep). They time nothing that is asserted."""

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.slow  # each script is a fresh process that imports torch and transformers: 4-13 s
@pytest.mark.parametrize("script, heading", [("bench_forward.py", "Forward and caching"), ("bench_load.py", "Load"),
                                             ("bench_circuits.py", "Circuits and weight processing"),
                                             ("bench_patching.py", "Patching and path attribution"),
                                             ("bench_compare.py", "Comparison with transformers"),
                                             ("bench_families.py", "Other families"),
                                             ("bench_generate.py", "Generation"),
                                             ("bench_tl.py", "interp.tl vs TransformerLens (same code)"),
                                             ("bench_edges.py", "Edge attribution and exact edge patching")])
def test_benchmark_quick_mode_runs(script, heading):
    result = subprocess.run([sys.executable, str(BENCHMARKS / script), "--quick"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"## {heading}" in result.stdout and any(row in result.stdout for row in ("| interp", "| composition_scores", "| attribution patching",
                                                                              "| Llama-shaped"))
