"""Load time and peak memory: `transformers` vs interp, each load in a fresh process.

    python benchmarks/bench_load.py            # GPT-2 small shape (random weights saved as safetensors)
    python benchmarks/bench_load.py --quick    # tiny model (CI smoke test)

Peak RSS is VmHWM at the end of the load minus VmRSS just before it (imports already done), so it
counts what the load itself holds at its peak. Target (issue "Foundation"): interp's peak ≤ 1.5 x
the weights' size, and load time ≤ transformers + 0.5 s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
CHILD = r"""
import json, sys, time
from pathlib import Path
import torch
torch.set_num_threads(2)
from transformers import GPT2LMHeadModel
from interp import HookedTransformer
def field(name):
    return next(int(l.split()[1]) * 1024 for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(name + ":"))
which, directory = sys.argv[1], sys.argv[2]
Path("/proc/self/clear_refs").write_text("5")
before = field("VmRSS")
start = time.perf_counter()
if which == "hf":
    model = GPT2LMHeadModel.from_pretrained(directory)
else:
    model = HookedTransformer.from_pretrained(directory)
seconds = time.perf_counter() - start
total = sum(p.numel() * p.element_size() for p in model.parameters())
print(json.dumps({"seconds": seconds, "peak_bytes": field("VmHWM") - before, "param_bytes": total}))
"""


def measure(which: str, directory: Path) -> dict[str, float]:
    result = subprocess.run([sys.executable, "-c", CHILD, which, str(directory)], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    from interp.testing import hf_config, random_hf_gpt2

    config = hf_config(n_layer=2, n_head=4, n_embd=64, n_positions=128, vocab_size=500) if args.quick else hf_config()
    reps = 1 if args.quick else args.reps
    with tempfile.TemporaryDirectory() as directory:
        random_hf_gpt2(config, seed=0).save_pretrained(directory)
        weights = (Path(directory) / "model.safetensors").stat().st_size
        runs = {"hf": [], "interp": []}
        for _ in range(reps):
            for which in runs:
                runs[which].append(measure(which, Path(directory)))
    summary = {which: {"seconds": statistics.median(r["seconds"] for r in values),
                       "peak_mib": statistics.median(r["peak_bytes"] for r in values) / 2**20}
               for which, values in runs.items()}
    lines = ["## Load (GPT-2 small shape, safetensors on local disk)" if not args.quick else "## Load (quick, tiny model)", "",
             f"Command: `python benchmarks/bench_load.py{' --quick' if args.quick else ''}` ({reps} fresh processes each, medians). "
             f"Weights file {weights / 2**20:.0f} MiB.", "",
             "| loader | seconds | peak extra RSS (MiB) | peak / weights |", "|---|---|---|---|"]
    for which, values in summary.items():
        lines.append(f"| {which} | {values['seconds']:.2f} | {values['peak_mib']:.0f} | {values['peak_mib'] * 2**20 / weights:.2f} |")
    lines.append(f"\ninterp − transformers load time: {summary['interp']['seconds'] - summary['hf']['seconds']:+.2f} s (target ≤ +0.5 s).")
    lines.append("interp checks every weight for NaN/inf at load, so it reads each page of the memory-mapped file once; "
                 "those file-backed pages count in its RSS (the first forward of either model reads them anyway).")
    markdown = "\n".join(lines)
    print(markdown)
    if not args.quick:
        sys.path.insert(0, str(HERE))
        from bench_forward import write_section

        write_section(markdown, mark="bench_load")


if __name__ == "__main__":
    main()
