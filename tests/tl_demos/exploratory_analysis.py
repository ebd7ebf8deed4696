"""TransformerLens's Exploratory Analysis Demo (indirect object identification in GPT-2 small), ported to a module.

Source: TransformerLensOrg/TransformerLens, demos/Exploratory_Analysis_Demo.ipynb, the HookedTransformer version
(commit f970ba22, Feb 2026; later versions load a TransformerBridge instead). Our own re-implementation of its
steps, in its order: the IOI prompts and logit difference, direct logit attribution (logit lens with
`cache.accumulated_resid`, `decompose_resid`, `stack_head_results` + `apply_ln_to_stack`), attention patterns of
the top heads, activation patching of the residual stream, attention and MLP layers and heads (z, v, pattern) with
hand-written hooks, induction on repeated text and repeated random tokens (previous / duplicate / induction scores
from pattern hooks), and ablating the top name mover (backup name movers, final LayerNorm scales).

Only the import lines name the library: `record.py` runs this same source with `interp.tl` replaced by
`transformer_lens` to record tests/golden/tl_demo_numbers.json. Differences from the notebook: plotly and circuitsvis
cells are not run; the numbers they would draw are collected into `RESULTS` instead (attention patterns as each
head's row for the last query position); `fancy_einsum.einsum` is `einops.einsum`; `test_prompt`'s printout is
captured; `torch.set_grad_enabled(False)` is scoped to `run`; the notebook's GPT-2-small constants (middle layers
from 7, late layers from 9, induction heads 81 and 65) are scaled to the model's size; hooks are reset at the end.
"""

import interp.tl.utils as utils
from interp.tl import ActivationCache, HookedTransformer

import contextlib
import io
from functools import partial
from typing import Any, List, Union

import einops
import numpy as np
import torch
from jaxtyping import Float, Int

PROMPT_FORMAT = [
    "When John and Mary went to the shops,{} gave the bag to",
    "When Tom and James went to the park,{} gave the ball to",
    "When Dan and Sid went to the shops,{} gave an apple to",
    "After Martin and Amy went to the park,{} gave a drink to",
]
NAMES = [(" Mary", " John"), (" Tom", " James"), (" Dan", " Sid"), (" Martin", " Amy")]
EXAMPLE_TEXT = ("Research in mechanistic interpretability seeks to explain behaviors of machine learning models in "
                "terms of their internal components.")


def load(hf_model: Any = None, tokenizer: Any = None) -> HookedTransformer:
    """The notebook's loading cell; `hf_model` and `tokenizer` stand in for GPT-2 small's hub weights offline."""
    return HookedTransformer.from_pretrained(
        "gpt2-small",
        center_unembed=True,
        center_writing_weights=True,
        fold_ln=True,
        refactor_factored_attn_matrices=True,
        hf_model=hf_model,
        tokenizer=tokenizer,
    )


def logits_to_ave_logit_diff(logits: Float[torch.Tensor, "batch pos d_vocab"],
                             answer_tokens: Int[torch.Tensor, "batch 2"], per_prompt: bool = False) -> torch.Tensor:
    """logit(correct) - logit(incorrect) at the last position, per prompt or averaged."""
    final_logits = logits[:, -1, :]
    answer_logits = final_logits.gather(dim=-1, index=answer_tokens)
    answer_logit_diff = answer_logits[:, 0] - answer_logits[:, 1]
    return answer_logit_diff if per_prompt else answer_logit_diff.mean()


def residual_stack_to_logit_diff(residual_stack: Float[torch.Tensor, "components batch d_model"],
                                 cache: ActivationCache, logit_diff_directions: Float[torch.Tensor, "batch d_model"]
                                 ) -> Float[torch.Tensor, "components"]:
    """Each component's average direct contribution to the logit difference, through the final LayerNorm scale."""
    scaled_residual_stack = cache.apply_ln_to_stack(residual_stack, layer=-1, pos_slice=-1)
    return einops.einsum(scaled_residual_stack, logit_diff_directions,
                         "... batch d_model, batch d_model -> ...") / logit_diff_directions.shape[0]


def attention_pattern_data(model: HookedTransformer, heads: Union[List[int], int, torch.Tensor],
                           local_cache: ActivationCache, local_tokens: torch.Tensor) -> dict:
    """What the notebook's `visualize_attention_patterns` draws (circuitsvis): head labels, the axis tokens and each
    head's pattern on the first prompt; kept here as the row of the last query position."""
    if isinstance(heads, int):
        heads = [heads]
    labels, patterns = [], []
    for head in [int(head) for head in heads]:
        layer, head_index = head // model.cfg.n_heads, head % model.cfg.n_heads
        labels.append(f"L{layer}H{head_index}")
        patterns.append(local_cache["attn", layer][0, head_index])
    rows = torch.stack(patterns, dim=0)[:, -1, :] if patterns else torch.zeros(0)
    return {"labels": labels, "str_tokens": model.to_str_tokens(local_tokens), "last_query_row": rows.tolist()}


def patch_residual_component(corrupted_residual_component: Float[torch.Tensor, "batch pos d_model"], hook: Any,
                             pos: int, clean_cache: ActivationCache) -> torch.Tensor:
    corrupted_residual_component[:, pos, :] = clean_cache[hook.name][:, pos, :]
    return corrupted_residual_component


def patch_head_vector(corrupted_head_vector: Float[torch.Tensor, "batch pos head_index d_head"], hook: Any,
                      head_index: int, clean_cache: ActivationCache) -> torch.Tensor:
    corrupted_head_vector[:, :, head_index, :] = clean_cache[hook.name][:, :, head_index, :]
    return corrupted_head_vector


def patch_head_pattern(corrupted_head_pattern: Float[torch.Tensor, "batch head_index query_pos key_pos"], hook: Any,
                       head_index: int, clean_cache: ActivationCache) -> torch.Tensor:
    corrupted_head_pattern[:, head_index, :, :] = clean_cache[hook.name][:, head_index, :, :]
    return corrupted_head_pattern


def run(model: HookedTransformer) -> dict:
    """Every step of the notebook on `model`; returns each number it prints or plots (floats, lists, strings)."""
    with torch.set_grad_enabled(False):
        return _run(model)


def _run(model: HookedTransformer) -> dict:
    results: dict = {}
    device = utils.get_device()
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads

    # ----- Introduction: can the model do the task? -------------------------------------------------------
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        utils.test_prompt("After John and Mary went to the store, John gave a bottle of milk to", " Mary", model,
                          prepend_bos=True)
    results["test_prompt_printout"] = printed.getvalue()

    prompts, answers, answer_tokens = [], [], []
    for i in range(len(PROMPT_FORMAT)):
        for j in range(2):
            answers.append((NAMES[i][j], NAMES[i][1 - j]))
            answer_tokens.append((model.to_single_token(answers[-1][0]), model.to_single_token(answers[-1][1])))
            prompts.append(PROMPT_FORMAT[i].format(answers[-1][1]))  # the incorrect name is the subject
    answer_tokens = torch.tensor(answer_tokens).to(device)
    results["prompts"], results["answer_tokens"] = prompts, answer_tokens.tolist()
    results["prompt_str_tokens"] = [model.to_str_tokens(prompt) for prompt in prompts]

    tokens = model.to_tokens(prompts, prepend_bos=True)
    original_logits, cache = model.run_with_cache(tokens)
    original_average_logit_diff = logits_to_ave_logit_diff(original_logits, answer_tokens)
    results["per_prompt_logit_diff"] = logits_to_ave_logit_diff(original_logits, answer_tokens, True).tolist()
    results["average_logit_diff"] = original_average_logit_diff.item()

    # ----- Direct logit attribution -----------------------------------------------------------------------
    answer_residual_directions = model.tokens_to_residual_directions(answer_tokens)
    logit_diff_directions = answer_residual_directions[:, 0] - answer_residual_directions[:, 1]
    results["answer_residual_directions_shape"] = list(answer_residual_directions.shape)
    results["logit_diff_directions_shape"] = list(logit_diff_directions.shape)

    final_residual_stream = cache["resid_post", -1]
    results["final_residual_stream_shape"] = list(final_residual_stream.shape)
    scaled_final_token_residual_stream = cache.apply_ln_to_stack(final_residual_stream[:, -1, :], layer=-1,
                                                                 pos_slice=-1)
    results["calculated_average_logit_diff"] = (einops.einsum(
        scaled_final_token_residual_stream, logit_diff_directions, "batch d_model, batch d_model ->"
    ) / len(prompts)).item()
    to_logit_diff = partial(residual_stack_to_logit_diff, logit_diff_directions=logit_diff_directions)

    accumulated_residual, labels = cache.accumulated_resid(layer=-1, incl_mid=True, pos_slice=-1, return_labels=True)
    results["logit_lens_logit_diffs"] = to_logit_diff(accumulated_residual, cache).tolist()
    results["logit_lens_labels"] = labels
    results["logit_lens_x"] = (np.arange(n_layers * 2 + 1) / 2).tolist()

    per_layer_residual, labels = cache.decompose_resid(layer=-1, pos_slice=-1, return_labels=True)
    results["per_layer_logit_diffs"] = to_logit_diff(per_layer_residual, cache).tolist()
    results["per_layer_labels"] = labels

    per_head_residual, labels = cache.stack_head_results(layer=-1, pos_slice=-1, return_labels=True)
    per_head_logit_diffs = einops.rearrange(to_logit_diff(per_head_residual, cache),
                                            "(layer head_index) -> layer head_index", layer=n_layers,
                                            head_index=n_heads)
    results["per_head_logit_diffs"], results["per_head_labels"] = per_head_logit_diffs.tolist(), labels

    # ----- Attention analysis: the top 3 positive and negative heads by direct logit attribution -------------
    top_k = 3
    top_positive = torch.topk(per_head_logit_diffs.flatten(), k=top_k).indices
    top_negative = torch.topk(-per_head_logit_diffs.flatten(), k=top_k).indices
    results["top_positive_heads"] = attention_pattern_data(model, top_positive, cache, tokens[0])
    results["top_negative_heads"] = attention_pattern_data(model, top_negative, cache, tokens[0])

    # ----- Activation patching: clean activations into the corrupted run (names swapped) -------------------
    corrupted_prompts = []
    for i in range(0, len(prompts), 2):
        corrupted_prompts += [prompts[i + 1], prompts[i]]
    corrupted_tokens = model.to_tokens(corrupted_prompts, prepend_bos=True)
    corrupted_logits, corrupted_cache = model.run_with_cache(corrupted_tokens, return_type="logits")
    corrupted_average_logit_diff = logits_to_ave_logit_diff(corrupted_logits, answer_tokens)
    results["corrupted_average_logit_diff"] = corrupted_average_logit_diff.item()
    results["corrupted_strings"] = model.to_string(corrupted_tokens)

    def normalize_patched_logit_diff(patched_logit_diff: torch.Tensor) -> torch.Tensor:
        # 0: no change from the corrupted run, 1: the clean logit difference fully restored
        return (patched_logit_diff - corrupted_average_logit_diff) / (
            original_average_logit_diff - corrupted_average_logit_diff)

    def patched(hook_name: str, hook_fn: Any) -> torch.Tensor:
        patched_logits = model.run_with_hooks(corrupted_tokens, fwd_hooks=[(hook_name, hook_fn)],
                                              return_type="logits")
        return normalize_patched_logit_diff(logits_to_ave_logit_diff(patched_logits, answer_tokens))

    n_pos = tokens.shape[1]
    residual_diff, attn_diff, mlp_diff = (torch.zeros(n_layers, n_pos, device=device, dtype=torch.float32)
                                          for _ in range(3))
    for layer in range(n_layers):
        for position in range(n_pos):
            hook_fn = partial(patch_residual_component, pos=position, clean_cache=cache)
            residual_diff[layer, position] = patched(utils.get_act_name("resid_pre", layer), hook_fn)
            attn_diff[layer, position] = patched(utils.get_act_name("attn_out", layer), hook_fn)
            mlp_diff[layer, position] = patched(utils.get_act_name("mlp_out", layer), hook_fn)
    results["patched_residual_stream_diff"] = residual_diff.tolist()
    results["patched_attn_diff"], results["patched_mlp_diff"] = attn_diff.tolist(), mlp_diff.tolist()
    results["prompt_position_labels"] = [f"{tok}_{i}" for i, tok in enumerate(model.to_str_tokens(tokens[0]))]

    head_z_diff, head_v_diff, head_attn_diff = (torch.zeros(n_layers, n_heads, device=device, dtype=torch.float32)
                                                for _ in range(3))
    for layer in range(n_layers):
        for head_index in range(n_heads):
            vector_hook = partial(patch_head_vector, head_index=head_index, clean_cache=cache)
            pattern_hook = partial(patch_head_pattern, head_index=head_index, clean_cache=cache)
            head_z_diff[layer, head_index] = patched(utils.get_act_name("z", layer, "attn"), vector_hook)
            head_v_diff[layer, head_index] = patched(utils.get_act_name("v", layer, "attn"), vector_hook)
            head_attn_diff[layer, head_index] = patched(utils.get_act_name("attn", layer, "attn"), pattern_hook)
    results["patched_head_z_diff"], results["patched_head_v_diff"] = head_z_diff.tolist(), head_v_diff.tolist()
    results["patched_head_attn_diff"] = head_attn_diff.tolist()
    head_labels = [f"L{l}H{h}" for l in range(n_layers) for h in range(n_heads)]
    results["head_labels"] = head_labels

    # ----- Consolidating: the top 10 heads by output patching, split into early / middle / late -------------
    top_heads_by_output_patch = torch.topk(head_z_diff.abs().flatten(), k=10).indices
    first_mid_layer, first_late_layer = 7 * n_layers // 12, 9 * n_layers // 12  # GPT-2 small: 7 and 9
    early_heads = top_heads_by_output_patch[top_heads_by_output_patch < n_heads * first_mid_layer]
    mid_heads = top_heads_by_output_patch[torch.logical_and(n_heads * first_mid_layer <= top_heads_by_output_patch,
                                                            top_heads_by_output_patch < n_heads * first_late_layer)]
    late_heads = top_heads_by_output_patch[n_heads * first_late_layer <= top_heads_by_output_patch]
    results["top_heads_by_output_patch"] = top_heads_by_output_patch.tolist()
    for group, heads in (("early", early_heads), ("mid", mid_heads), ("late", late_heads)):
        results[f"{group}_heads"] = attention_pattern_data(model, heads, cache, tokens[0])

    # ----- Bonus: early heads are induction heads (repeated text, then repeated random tokens) --------------
    example_repeated_tokens = model.to_tokens(EXAMPLE_TEXT + EXAMPLE_TEXT, prepend_bos=True)
    example_repeated_logits, example_repeated_cache = model.run_with_cache(example_repeated_tokens)
    # GPT-2 small's L6H9 and L5H5 (81 and 65) were the top early heads by output patching; here: this model's.
    induction_head_labels = [81, 65] if (n_layers, n_heads) == (12, 12) else top_heads_by_output_patch[:2].tolist()
    results["induction_heads_on_repeated_text"] = attention_pattern_data(
        model, induction_head_labels, example_repeated_cache, example_repeated_tokens)

    seq_len, batch_size = 100, 2
    prev_token_scores = torch.zeros((n_layers, n_heads), device=device)
    duplicate_token_scores = torch.zeros((n_layers, n_heads), device=device)
    induction_scores = torch.zeros((n_layers, n_heads), device=device)

    def prev_token_hook(pattern: torch.Tensor, hook: Any) -> None:
        diagonal = pattern.diagonal(offset=1, dim1=-1, dim2=-2)
        prev_token_scores[hook.layer()] = einops.reduce(diagonal, "batch head_index diagonal -> head_index", "mean")

    def duplicate_token_hook(pattern: torch.Tensor, hook: Any) -> None:
        diagonal = pattern.diagonal(offset=seq_len, dim1=-1, dim2=-2)
        duplicate_token_scores[hook.layer()] = einops.reduce(diagonal, "batch head_index diagonal -> head_index",
                                                             "mean")

    def induction_hook(pattern: torch.Tensor, hook: Any) -> None:
        diagonal = pattern.diagonal(offset=seq_len - 1, dim1=-1, dim2=-2)
        induction_scores[hook.layer()] = einops.reduce(diagonal, "batch head_index diagonal -> head_index", "mean")

    torch.manual_seed(0)
    original_tokens = torch.randint(100, 20000, size=(batch_size, seq_len), device="cpu").to(device)
    repeated_tokens = einops.repeat(original_tokens, "batch seq_len -> batch (2 seq_len)").to(device)
    pattern_filter = lambda act_name: act_name.endswith("hook_pattern")  # noqa: E731
    loss = model.run_with_hooks(repeated_tokens, return_type="loss", fwd_hooks=[
        (pattern_filter, prev_token_hook), (pattern_filter, duplicate_token_hook), (pattern_filter, induction_hook)])
    results["repeated_random_tokens_loss"] = loss.item()
    results["prev_token_scores"] = prev_token_scores.tolist()
    results["duplicate_token_scores"] = duplicate_token_scores.tolist()
    results["induction_scores"] = induction_scores.tolist()
    results["prev_token_scores_corner"] = utils.get_corner(prev_token_scores).tolist()

    # ----- Bonus: backup name movers (ablate the top name mover's output at the final position) -------------
    top_name_mover = per_head_logit_diffs.flatten().argmax().item()
    top_name_mover_layer, top_name_mover_head = top_name_mover // n_heads, top_name_mover % n_heads
    results["top_name_mover"] = f"L{top_name_mover_layer}H{top_name_mover_head}"

    def ablate_top_head_hook(z: Float[torch.Tensor, "batch pos head_index d_head"], hook: Any) -> torch.Tensor:
        z[:, -1, top_name_mover_head, :] = 0
        return z

    model.blocks[top_name_mover_layer].attn.hook_z.add_hook(ablate_top_head_hook)  # stays until hooks are reset
    ablated_logits, ablated_cache = model.run_with_cache(tokens)
    results["post_ablation_logit_diff"] = logits_to_ave_logit_diff(ablated_logits, answer_tokens).item()
    results["top_name_mover_direct_logit_attribution"] = per_head_logit_diffs.flatten()[top_name_mover].item()
    results["naive_post_ablation_prediction"] = (original_average_logit_diff
                                                 - per_head_logit_diffs.flatten()[top_name_mover]).item()
    # TransformerLens 3 keeps a hook added with HookPoint.add_hook after run_with_cache (which removes only its own).
    results["logit_diff_after_run_with_cache"] = logits_to_ave_logit_diff(model(tokens), answer_tokens).item()
    model.reset_hooks()
    results["logit_diff_after_reset_hooks"] = logits_to_ave_logit_diff(model(tokens), answer_tokens).item()

    per_head_ablated_residual, labels = ablated_cache.stack_head_results(layer=-1, pos_slice=-1, return_labels=True)
    per_head_ablated_logit_diffs = to_logit_diff(per_head_ablated_residual, ablated_cache).reshape(n_layers, n_heads)
    results["per_head_ablated_logit_diffs"] = per_head_ablated_logit_diffs.tolist()

    ablated_scale, original_scale = ablated_cache["ln_final.hook_scale"][:, -1], cache["ln_final.hook_scale"][:, -1]
    results["average_ln_scaling_ratio"] = (original_scale / ablated_scale).mean().item()
    results["ablation_ln_scale"], results["original_ln_scale"] = ablated_scale.tolist(), original_scale.tolist()
    return results
