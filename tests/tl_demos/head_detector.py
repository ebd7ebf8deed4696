"""TransformerLens's Head Detector Demo, ported to a module.

Source: TransformerLensOrg/TransformerLens, demos/Head_Detector_Demo.ipynb at commit f970ba22 (Feb 2026), the last
version that loads a HookedTransformer (05c9169a moved it to TransformerBridge). Our own re-implementation of its
cells, in its order. The notebook pastes an early copy of `transformer_lens.head_detector` into a cell and says
"after merging the code below can be replaced with simply `from transformer_lens.head_detector import *`"; this
port does that, so it exercises the library's `detect_head` (TL 3.9's: a list of prompts keeps the other
arguments, which the pasted copy dropped). Parts: "premade_heads" (the three built-in detection patterns, with and
without `exclude_bos` / `exclude_current_token`), "custom_heads" (a current-word pattern scored with "mul" and
"abs", then 100 times), "many_prompts" (lists of prompts) and "goodharting" (an all-ones pattern under both
error measures); "arguments" is not in the notebook: the `heads=` subsets (list of pairs, dict), `cache=` and the
errors the docstring promises, as the brief for this port asks.

Only the import lines name the library: `record.py head_detector` runs this same source with `interp.tl` replaced
by `transformer_lens`. Differences from the notebook: plotly and pysvelte cells are not run; the numbers they would
draw are returned instead (each head's score table; attention patterns as each head's last query row); printed
text is captured; tqdm is off; the layers the notebook looks at in GPT-2 small (0, 2, 4, 5) are scaled to the
model's depth.
"""

from interp.tl import ActivationCache, HookedTransformer
from interp.tl.head_detector import detect_head, get_supported_heads

import contextlib
import io
from typing import Any, Callable

import einops
import torch

FIRST_PROMPT = ("The head detector feature for TransformerLens allows users to check for various common heads "
                "automatically, reducing the cost of discovery.")
LEXICAL_PROMPT = ("The following lexical sequence has been optimised for the maximisation of loquaciously multitoken "
                  "letter combinations.")


def load(hf_model: Any = None, tokenizer: Any = None) -> HookedTransformer:
    """The notebook's loading cell; `hf_model` and `tokenizer` stand in for GPT-2 small's hub weights offline."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return HookedTransformer.from_pretrained("gpt2-small", device=device, hf_model=hf_model, tokenizer=tokenizer)


def printed(function: Callable[[], Any]) -> str:
    """What `function()` prints."""
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        function()
    return output.getvalue()


def scaled_layer(model: HookedTransformer, gpt2_small_layer: int) -> int:
    """The layer at the same depth fraction as `gpt2_small_layer` of GPT-2 small's 12."""
    return gpt2_small_layer * model.cfg.n_layers // 12


def attn_pattern_from_cache(model: HookedTransformer, prompt: str, cache: ActivationCache, layer_i: int) -> dict:
    """The notebook's `plot_attn_pattern_from_cache` up to its pysvelte call: the layer's patterns as
    [query, key, head], returned as the str tokens and each head's last query row."""
    attention_pattern = cache["pattern", layer_i, "attn"].squeeze(0)
    attention_pattern = einops.rearrange(attention_pattern, "heads seq1 seq2 -> seq1 seq2 heads")
    return {"heading": f"Layer {layer_i} Attention Heads:", "str_tokens": model.to_str_tokens(prompt),
            "last_query_rows": attention_pattern[-1].T.tolist()}


def premade_heads(model: HookedTransformer) -> dict:
    results: dict = {"supported_heads_printout": printed(get_supported_heads)}
    prompt = FIRST_PROMPT
    head_scores = detect_head(model, prompt, "previous_token_head")
    results["previous_token_scores"] = head_scores.tolist()
    _, cache = model.run_with_cache(prompt)
    results["patterns"] = {layer: attn_pattern_from_cache(model, prompt, cache, scaled_layer(model, layer))
                           for layer in (2, 4)}
    head_scores = detect_head(model, prompt, "previous_token_head", exclude_bos=True, exclude_current_token=True)
    results["previous_token_scores_excluding_bos_and_current"] = head_scores.tolist()
    results["patterns"].update({layer: attn_pattern_from_cache(model, prompt, cache, scaled_layer(model, layer))
                                for layer in (5, 0)})
    results["patterns"] = {f"gpt2_small_layer_{layer}": data for layer, data in results["patterns"].items()}
    return results


def current_word_pattern(device: Any, tokens: list) -> torch.Tensor:
    """The notebook's current-word detection pattern: 1 for the earlier tokens of the word the query is in."""
    detection_pattern = []
    for i in range(2):
        detection_pattern.append([0 for t in tokens])  # Ignore BOS token and first token.
    for i in range(2, len(tokens)):
        current_token = i
        previous_tokens_in_word = 0
        while not tokens[current_token].startswith(" "):  # a token without a leading space continues a word
            previous_tokens_in_word += 1
            current_token -= 1
        detection_pattern.append([0 for j in range(i - previous_tokens_in_word)]
                                 + [1 for j in range(previous_tokens_in_word)]
                                 + [0 for j in range(i + 1, len(tokens) + 1)])
    return torch.as_tensor(detection_pattern).to(device)


def custom_heads(model: HookedTransformer) -> dict:
    results: dict = {}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    prompt = LEXICAL_PROMPT
    tokens = model.to_str_tokens(prompt)
    results["tokens_printout"] = printed(lambda: print(len(tokens), tokens))
    detection_pattern = current_word_pattern(device, tokens)
    results["detection_pattern"] = detection_pattern.tolist()
    results["detection_pattern_shape"] = list(detection_pattern.shape)
    _, cache = model.run_with_cache(prompt)
    for error_measure in ("mul", "abs"):
        head_scores = detect_head(model, prompt, detection_pattern=detection_pattern, exclude_bos=False,
                                  exclude_current_token=True, error_measure=error_measure)
        results[f"current_word_scores_{error_measure}"] = head_scores.tolist()
    results["patterns"] = {f"gpt2_small_layer_{layer}": attn_pattern_from_cache(model, prompt, cache,
                                                                                  scaled_layer(model, layer))
                           for layer in (5, 0)}
    scores = []
    for i in range(100):
        scores.append(detect_head(model, prompt, detection_pattern=detection_pattern, exclude_bos=False,
                                  exclude_current_token=True, error_measure="abs"))
    scores = torch.stack(scores).mean(dim=0)
    results["current_word_scores_abs_100_runs"] = scores.tolist()
    return results


def many_prompts(model: HookedTransformer) -> dict:
    results: dict = {}
    prompts = [
        "This is the first the test prompt.",
        "This is another test prompt, being just a sequence of tokens.",
        "If you're interested in mechanistic interpretability, this is how the sausage REALLY is made.",
    ]
    results["previous_token_abs"] = detect_head(model, prompts, "previous_token_head", error_measure="abs").tolist()
    results["duplicate_token_abs"] = detect_head(model, prompts, "duplicate_token_head", error_measure="abs").tolist()
    prompts = [
        "one two three one two three one two three",
        "1 2 3 4 5 1 2 3 4 1 2 3 1 2 3 4 5 6 7",
        "green ideas sleep furiously; green ideas don't sleep furiously",
    ]
    head_scores = detect_head(model, prompts, "duplicate_token_head", exclude_bos=False, exclude_current_token=False,
                              error_measure="abs")
    results["repeated_duplicate_token_abs"] = head_scores.tolist()
    head_scores = detect_head(model, prompts, "induction_head", exclude_bos=False, exclude_current_token=False,
                              error_measure="abs")
    results["repeated_induction_abs"] = head_scores.tolist()
    return results


def goodharting(model: HookedTransformer) -> dict:
    results: dict = {}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    prompt = FIRST_PROMPT
    seq_len = len(model.to_str_tokens(prompt))
    ones_detection_pattern = torch.tril(torch.ones(seq_len, seq_len).to(device))  # lower triangular
    ones_head_scores = detect_head(model, prompt, ones_detection_pattern, exclude_bos=True, exclude_current_token=True)
    results["ones_scores_mul"] = ones_head_scores.tolist()
    ones_head_scores = detect_head(model, prompt, ones_detection_pattern, exclude_bos=True, exclude_current_token=True,
                                   error_measure="abs")
    results["ones_scores_abs"] = ones_head_scores.tolist()
    return results


def arguments(model: HookedTransformer) -> dict:
    """Not in the notebook: `heads=` as pairs and as a dict, `cache=`, and bad input (TL raises AssertionError or,
    for a cache with a list of prompts, ValueError)."""
    results: dict = {}
    prompt = FIRST_PROMPT
    last = model.cfg.n_layers - 1
    pairs = [(0, 1), (last, 0), (last, model.cfg.n_heads - 1)]
    results["heads_as_pairs"] = detect_head(model, prompt, "previous_token_head", heads=pairs).tolist()
    results["heads_as_dict"] = detect_head(model, prompt, "previous_token_head",
                                           heads={0: [1], last: [0, model.cfg.n_heads - 1]}).tolist()
    _, cache = model.run_with_cache(prompt, remove_batch_dim=True)
    results["from_cache_abs"] = detect_head(model, prompt, "induction_head", cache=cache, exclude_bos=True,
                                            error_measure="abs").tolist()
    results["without_cache_abs"] = detect_head(model, prompt, "induction_head", exclude_bos=True,
                                               error_measure="abs").tolist()
    results["from_cache_mul"] = detect_head(model, prompt, "duplicate_token_head", cache=cache).tolist()

    def raises(kind: type, call: Callable[[], Any]) -> bool:
        try:
            call()
        except kind:
            return True
        return False

    n_tokens = model.to_tokens(prompt).shape[-1]
    results["raises"] = {
        "unknown_head_name": raises(AssertionError, lambda: detect_head(model, prompt, "copying_head")),
        "unknown_error_measure": raises(AssertionError,
                                        lambda: detect_head(model, prompt, "induction_head", error_measure="max")),
        "pattern_of_another_length": raises(AssertionError, lambda: detect_head(
            model, prompt, torch.tril(torch.ones(n_tokens - 1, n_tokens - 1)))),
        "pattern_not_lower_triangular": raises(AssertionError, lambda: detect_head(
            model, prompt, torch.ones(n_tokens, n_tokens))),
        "cache_with_a_list_of_prompts": raises(ValueError, lambda: detect_head(
            model, [prompt, prompt], "induction_head", cache=cache)),
    }
    return results


LOADERS = {"model": load}
PARTS = {"premade_heads": premade_heads, "custom_heads": custom_heads, "many_prompts": many_prompts,
         "goodharting": goodharting, "arguments": arguments}
