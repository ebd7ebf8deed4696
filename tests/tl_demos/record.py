"""Record a demo's numbers from TransformerLens: run tests/tl_demos/<demo>.py with its imports pointed at
`transformer_lens`, offline, on the stand-in models, and write RESULTS with the versions and date.

    /tmp/benchvenv/bin/python tests/tl_demos/record.py                   # writes tests/golden/tl_demo_numbers.json
    /tmp/benchvenv/bin/python tests/tl_demos/record.py --output x.json   # what tests/test_tl_demo.py's live test runs
    /tmp/benchvenv/bin/python tests/tl_demos/record.py head_detector     # tests/golden/tl_head_detector_numbers.json
                                                                         # (any demo in harness.DEMO_SPECS)

Needs a venv with transformer_lens (3.x) and interp (for the stand-in model and the GPT-2 tokenizer files).
TransformerLens's `from_pretrained("gpt2-small", hf_model=...)` still reads the "gpt2" config from the hub;
this script writes that config (the stand-in's own) into a temporary HF cache and runs with HF_HUB_OFFLINE=1,
so nothing is downloaded and any other hub look-up fails.
"""

import os
import sys
import tempfile
from pathlib import Path

HUB_CACHE = Path(tempfile.mkdtemp(prefix="tl-demo-hub-"))
os.environ["HF_HUB_OFFLINE"] = "1"          # before transformers / huggingface_hub read their settings
os.environ["HF_HUB_CACHE"] = str(HUB_CACHE)
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import datetime  # noqa: E402
import importlib.metadata  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import warnings  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402


def record() -> dict:
    model = harness.hf_model()
    weights = harness.weights_sha256(model)  # before loading: nothing may change the stand-in's weights
    harness.write_offline_gpt2_config(model, HUB_CACHE)
    with warnings.catch_warnings():  # TL 3.9 deprecates HookedTransformer and transformer_lens.utils
        warnings.simplefilter("ignore", DeprecationWarning)
        demo = harness.transformer_lens_demo()
        tl_model = demo.load(model, harness.tokenizer(HUB_CACHE / "gpt2-tokenizer"))
        results = demo.run(tl_model)
    versions = {name: importlib.metadata.version(name) for name in ("transformer_lens", "transformers", "torch")}
    return {"recorded_with": {**versions, "date": datetime.date.today().isoformat(),
                              "threads": torch.get_num_threads()},
            "demo": ("tests/tl_demos/exploratory_analysis.py, ported from TransformerLens "
                     "demos/Exploratory_Analysis_Demo.ipynb (commit f970ba22)"),
            "model": harness.model_description(), "weights_sha256": weights,
            "tolerance": ("|ours - TL| <= 1e-4 * max(1, |TL|); test_prompt's printed 2-decimal numbers within "
                          "0.0101"),
            "results": results}


def record_parts(spec: harness.DemoSpec) -> dict:
    """A demo of harness.DEMO_SPECS: its models loaded by its own cells from the stand-ins, then every part."""
    hf_models = {argument: stand_in.hf_model() for argument, stand_in in spec.stand_ins.items()}
    weights = {argument: harness.weights_sha256(model) for argument, model in hf_models.items()}
    for argument, stand_in in spec.stand_ins.items():
        harness.write_offline_gpt2_config(hf_models[argument], HUB_CACHE, stand_in.hub_name)
    with warnings.catch_warnings():  # TL 3.9 deprecates HookedTransformer and transformer_lens.utils
        warnings.simplefilter("ignore", DeprecationWarning)
        demo = harness.transformer_lens_demo(spec.name)
        models = harness.load_models(demo, spec, hf_models, harness.tokenizer(HUB_CACHE / "gpt2-tokenizer"))
        results = {name: part(*[models[argument] for argument in harness.part_arguments(part)])
                   for name, part in demo.PARTS.items()}
    versions = {name: importlib.metadata.version(name) for name in ("transformer_lens", "transformers", "torch")}
    return {"recorded_with": {**versions, "date": datetime.date.today().isoformat(),
                              "threads": torch.get_num_threads()},
            "demo": spec.source, "models": spec.models_description(), "weights_sha256": weights,
            "tolerance": ("|ours - TL| <= 1e-4 * max(1, |TL|); printed numbers within 0.0101"),
            "results": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("demo", nargs="?", default="exploratory_analysis",
                        choices=["exploratory_analysis", *harness.DEMO_SPECS])
    parser.add_argument("--output", type=Path)
    arguments = parser.parse_args()
    spec = harness.DEMO_SPECS.get(arguments.demo)
    arguments.output = arguments.output or (harness.GOLDEN if spec is None else spec.golden)
    try:
        recorded = record() if spec is None else record_parts(spec)
    finally:
        shutil.rmtree(HUB_CACHE, ignore_errors=True)
    arguments.output.write_text(json.dumps(recorded, indent=1) + "\n")
    print(f"wrote {arguments.output}")


if __name__ == "__main__":
    main()
