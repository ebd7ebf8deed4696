"""The bundled model is genuinely trained: it has induction and previous-token heads."""

import pytest
import torch

from interp import HookedTransformer
from interp.analysis.circuits import composition_scores
from interp.analysis.heads import repeated_random_scores, repeated_random_tokens
from interp.loading import BUNDLED_MODELS

from test_heads import direct_repeated_scores


@pytest.fixture(scope="module", params=["interp-toy", "interp-toy-llama"])
def toy(request):
    """Each bundled model: the GPT-2 one and the Llama one (GQA, RMSNorm, rotary, SwiGLU)."""
    return HookedTransformer.from_pretrained(request.param)


@pytest.fixture(scope="module")
def toy_scores(toy):
    return repeated_random_scores(toy, n_sequences=32, length=50, seed=0, progress=False)


def test_bundled_model_is_small_and_loads_offline(toy):
    size = sum(path.stat().st_size for path in BUNDLED_MODELS[toy.cfg.model_name].iterdir())
    assert size <= (10 if toy.cfg.model_name == "interp-toy" else 5) * 2**20
    assert toy.tokenizer is not None and toy.cfg.n_layers == 2
    text = "To be, or not to be, that is the question"
    assert toy.to_string(toy.to_tokens(text, prepend_bos=False)[0]) == text


def test_induction_and_previous_token_heads_exist(toy_scores):
    # The science (Olsson et al. 2022): a layer-1 induction head fed by a layer-0 previous-token head.
    assert toy_scores["induction"][1].max() > 0.5
    assert toy_scores["previous_token"][0].max() > 0.5
    assert toy_scores["induction"][0].max() < 0.3  # one layer cannot do induction


def test_second_repeat_loss_is_far_below_the_first(toy_scores):
    assert toy_scores.loss_second_repeat < 0.3 * toy_scores.loss_first_repeat


def test_ablating_the_induction_heads_raises_the_second_repeat_loss(toy, toy_scores):
    """Zeroing every head scoring > 0.5 on induction (interp-toy has one, interp-toy-llama three, which back each
    other up: ablating only its top head raises the loss by ~0.17) destroys most of the in-context copying."""
    heads = [(layer, head) for layer, head, score in toy_scores.top_heads("induction", 8) if score > 0.5]
    assert heads and all(layer == 1 for layer, _ in heads)

    def ablate(z, hook):
        z = z.clone()
        z[:, :, [head for _, head in heads]] = 0
        return z

    with toy.hooks([("blocks.1.attn.hook_z", ablate)]):
        ablated = repeated_random_scores(toy, n_sequences=32, length=50, seed=0, progress=False)
    assert ablated.loss_second_repeat > toy_scores.loss_second_repeat + 0.5


def test_induction_head_k_composes_with_the_previous_token_head(toy, toy_scores):
    layer, head, _ = toy_scores.top_heads("induction", 1)[0]
    prev_layer, prev_head, _ = toy_scores.top_heads("previous_token", 1)[0]
    k_composition = composition_scores(toy, "K")[0, :, layer, head]
    assert prev_layer == 0 and int(k_composition.argmax()) == prev_head


def test_bundled_model_scores_equal_transformers(toy, toy_scores):
    from transformers import AutoModelForCausalLM

    hf_model = AutoModelForCausalLM.from_pretrained(BUNDLED_MODELS[toy.cfg.model_name], attn_implementation="eager").eval()
    special = set(toy.tokenizer.all_special_ids)
    tokens = repeated_random_tokens(toy.cfg.d_vocab, 32, 50, seed=0, bos_token_id=toy.cfg.bos_token_id, exclude_ids=special)
    with torch.no_grad():
        reference = direct_repeated_scores(hf_model(tokens, output_attentions=True).attentions, 50)
    for name, table in reference.items():
        torch.testing.assert_close(toy_scores[name].double(), table, rtol=0, atol=1e-6)
