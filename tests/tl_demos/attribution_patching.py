"""TransformerLens's Attribution Patching Demo (attribution vs activation patching on IOI), ported to a module.

Source: TransformerLensOrg/TransformerLens, demos/Attribution_Patching_Demo.ipynb at commit f970ba22 (Feb 2026),
the last version that loads a HookedTransformer (b4fc3754 moved it to TransformerBridge). Our own re-implementation
of its cells, in its order. Part "ioi" (GPT-2 small): the IOI prompts, logit difference and `ioi_metric`;
`get_cache_fwd_and_bwd` (forward and backward hooks added with `model.add_hook(filter, fn, "fwd"/"bwd")`, wrapped
as `ActivationCache(cache, model)`); attribution patching of attention patterns, the residual stream
(`accumulated_resid`), layer outputs (`decompose_resid`), head outputs (`stack_head_results`), head q/k/v/z and
patterns, and head-to-head paths; the attribution cache; then activation patching with `interp.tl.patching`
(`get_act_patch_block_every`, `get_act_patch_attn_head_all_pos_every`, `..._by_pos_every`) next to the attribution
versions (`stack_activation`). Part "factual_recall" (GPT-2 XL): `test_prompt` on two factual prompts, a factual
metric and hand-written residual-stream activation patching over one-dimensional tokens.

Only the import lines name the library: `record.py attribution_patching` runs this same source with `interp.tl`
replaced by `transformer_lens`. Differences from the notebook: plotly, pysvelte and display cells are not run; the
numbers they would draw are returned instead (attention-attribution plots as their top-k head labels and values,
attention patterns as each prompt's last query row, scatter plots as the two tables they plot); printed text is
captured; the forward/backward hook filter also leaves out `hook_attn_in` and `hook_mlp_in` (TL 3.9 refuses the
notebook's filter, which selects them while they are switched off); `fancy_einsum.einsum` is `einops.einsum` and
torchtyping's `TT` is jaxtyping's `Float`; the hand-written patching loop has no tqdm bar; the notebook's GPT-2-small
head numbers (L5H5, L8H6, L9H9, L10H7, L11H10) are scaled to the model's layers and heads; the scatter cells'
hard-coded `pos=15` is the prompt length.
"""

import interp.tl.patching as patching
import interp.tl.utils as utils
from interp.tl import ActivationCache, HookedTransformer

import contextlib
import io
from functools import partial
from typing import Any, Callable, Literal

import einops
import torch
from jaxtyping import Float

PROMPTS = [
    "When John and Mary went to the shops, John gave the bag to",
    "When John and Mary went to the shops, Mary gave the bag to",
    "When Tom and James went to the park, James gave the ball to",
    "When Tom and James went to the park, Tom gave the ball to",
    "When Dan and Sid went to the shops, Sid gave an apple to",
    "When Dan and Sid went to the shops, Dan gave an apple to",
    "After Martin and Amy went to the park, Amy gave a drink to",
    "After Martin and Amy went to the park, Martin gave a drink to",
]
ANSWERS = [(" Mary", " John"), (" John", " Mary"), (" Tom", " James"), (" James", " Tom"),
           (" Dan", " Sid"), (" Sid", " Dan"), (" Martin", " Amy"), (" Amy", " Martin")]


def load(hf_model: Any = None, tokenizer: Any = None) -> HookedTransformer:
    """The notebook's loading cell; `hf_model` and `tokenizer` stand in for GPT-2 small's hub weights offline."""
    model = HookedTransformer.from_pretrained("gpt2-small", hf_model=hf_model, tokenizer=tokenizer)
    model.set_use_attn_result(True)
    return model


def load_gpt2_xl(hf_model: Any = None, tokenizer: Any = None) -> HookedTransformer:
    """The factual-recall section's loading cell (GPT-2 XL; a stand-in offline)."""
    return HookedTransformer.from_pretrained("gpt2-xl", hf_model=hf_model, tokenizer=tokenizer)


def printed(function: Callable[[], Any]) -> str:
    """What `function()` prints."""
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        function()
    return output.getvalue()


def attention_attr_data(model: HookedTransformer, head_names_signed: list, attention_attr: torch.Tensor,
                        tokens: torch.Tensor, top_k: int = 20, index: int = 0) -> dict:
    """The notebook's `plot_attention_attr` up to its pysvelte call: each head's positive and negative attribution,
    normalised by the largest, heads sorted by their largest entry; returns the top_k labels and those maxima."""
    if len(tokens.shape) == 2:
        tokens = tokens[index]
    if len(attention_attr.shape) == 5:
        attention_attr = attention_attr[index]
    attention_attr_pos = attention_attr.clamp(min=-1e-5)
    attention_attr_neg = -attention_attr.clamp(max=1e-5)
    attention_attr_signed = torch.stack([attention_attr_pos, attention_attr_neg], dim=0)
    attention_attr_signed = einops.rearrange(attention_attr_signed,
                                             "sign layer head_index dest src -> (layer head_index sign) dest src")
    attention_attr_signed = attention_attr_signed / attention_attr_signed.max()
    head_maxima = attention_attr_signed.max(-1).values.max(-1).values
    attention_attr_indices = head_maxima.argsort(descending=True)
    head_labels = [head_names_signed[i.item()] for i in attention_attr_indices]
    return {"str_tokens": model.to_str_tokens(tokens), "head_labels": head_labels[:top_k],
            "head_maxima": head_maxima[attention_attr_indices][:top_k].tolist()}


def ioi(model: HookedTransformer) -> dict:
    """Every IOI cell of the notebook on `model`; returns what each prints or plots."""
    results: dict = {}
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads

    # ----- Setup: clean prompts and their name-swapped partners --------------------------------------------
    clean_tokens = model.to_tokens(PROMPTS)
    corrupted_tokens = clean_tokens[[(i + 1 if i % 2 == 0 else i - 1) for i in range(len(clean_tokens))]]
    answer_token_indices = torch.tensor([[model.to_single_token(ANSWERS[i][j]) for j in range(2)]
                                         for i in range(len(ANSWERS))], device=model.cfg.device)
    results["setup_printout"] = printed(lambda: (
        print("Clean string 0", model.to_string(clean_tokens[0])),
        print("Corrupted string 0", model.to_string(corrupted_tokens[0])),
        print("Answer token indices", answer_token_indices)))

    def get_logit_diff(logits: torch.Tensor, answer_token_indices: torch.Tensor = answer_token_indices
                       ) -> torch.Tensor:
        if len(logits.shape) == 3:
            logits = logits[:, -1, :]  # final logits only
        correct_logits = logits.gather(1, answer_token_indices[:, 0].unsqueeze(1))
        incorrect_logits = logits.gather(1, answer_token_indices[:, 1].unsqueeze(1))
        return (correct_logits - incorrect_logits).mean()

    clean_logits, clean_cache = model.run_with_cache(clean_tokens)
    corrupted_logits, corrupted_cache = model.run_with_cache(corrupted_tokens)
    clean_logit_diff = get_logit_diff(clean_logits, answer_token_indices).item()
    corrupted_logit_diff = get_logit_diff(corrupted_logits, answer_token_indices).item()
    results["clean_logit_diff"], results["corrupted_logit_diff"] = clean_logit_diff, corrupted_logit_diff

    CLEAN_BASELINE, CORRUPTED_BASELINE = clean_logit_diff, corrupted_logit_diff

    def ioi_metric(logits: torch.Tensor, answer_token_indices: torch.Tensor = answer_token_indices) -> torch.Tensor:
        return (get_logit_diff(logits, answer_token_indices) - CORRUPTED_BASELINE) / (
            CLEAN_BASELINE - CORRUPTED_BASELINE)

    results["baselines_printout"] = printed(lambda: (
        print(f"Clean Baseline is 1: {ioi_metric(clean_logits).item():.4f}"),
        print(f"Corrupted Baseline is 0: {ioi_metric(corrupted_logits).item():.4f}")))

    # ----- Attribution patching: one forward and one backward pass per input ----------------------------------
    # The notebook's filter is `"_input" not in name`; TransformerLens 3.9 refuses it (AssertionError: "Cannot add
    # hook blocks.0.hook_attn_in if use_attn_in is False"), so the other two switched-off points are left out too.
    filter_not_qkv_input = lambda name: (  # noqa: E731
        "_input" not in name and not name.endswith(("hook_attn_in", "hook_mlp_in")))

    def get_cache_fwd_and_bwd(model: HookedTransformer, tokens: torch.Tensor, metric: Callable) -> tuple:
        model.reset_hooks()
        cache = {}

        def forward_cache_hook(act: torch.Tensor, hook: Any) -> None:
            cache[hook.name] = act.detach()

        model.add_hook(filter_not_qkv_input, forward_cache_hook, "fwd")
        grad_cache = {}

        def backward_cache_hook(act: torch.Tensor, hook: Any) -> None:
            grad_cache[hook.name] = act.detach()

        model.add_hook(filter_not_qkv_input, backward_cache_hook, "bwd")
        value = metric(model(tokens))
        value.backward()
        model.reset_hooks()
        return value.item(), ActivationCache(cache, model), ActivationCache(grad_cache, model)

    clean_value, clean_cache, clean_grad_cache = get_cache_fwd_and_bwd(model, clean_tokens, ioi_metric)
    corrupted_value, corrupted_cache, corrupted_grad_cache = get_cache_fwd_and_bwd(model, corrupted_tokens, ioi_metric)
    results["cache_printout"] = printed(lambda: (
        print("Clean Value:", clean_value),
        print("Clean Activations Cached:", len(clean_cache)),
        print("Clean Gradients Cached:", len(clean_grad_cache)),
        print("Corrupted Value:", corrupted_value),
        print("Corrupted Activations Cached:", len(corrupted_cache)),
        print("Corrupted Gradients Cached:", len(corrupted_grad_cache))))
    results["cached_names"] = list(clean_cache.keys())
    results["cached_gradient_names"] = sorted(clean_grad_cache.keys())

    def create_attention_attr(clean_cache: ActivationCache, clean_grad_cache: ActivationCache
                              ) -> Float[torch.Tensor, "batch layer head_index dest src"]:
        attention_stack = torch.stack([clean_cache["pattern", l] for l in range(n_layers)], dim=0)
        attention_grad_stack = torch.stack([clean_grad_cache["pattern", l] for l in range(n_layers)], dim=0)
        attention_attr = attention_grad_stack * attention_stack
        return einops.rearrange(attention_attr, "layer batch head_index dest src -> batch layer head_index dest src")

    attention_attr = create_attention_attr(clean_cache, clean_grad_cache)
    HEAD_NAMES = [f"L{l}H{h}" for l in range(n_layers) for h in range(n_heads)]
    HEAD_NAMES_SIGNED = [f"{name}{sign}" for name in HEAD_NAMES for sign in ["+", "-"]]
    HEAD_NAMES_QKV = [f"{name}{act_name}" for name in HEAD_NAMES for act_name in ["Q", "K", "V"]]
    results["head_names_printout"] = printed(lambda: (
        print(HEAD_NAMES[:5]), print(HEAD_NAMES_SIGNED[:5]), print(HEAD_NAMES_QKV[:5])))
    plot = partial(attention_attr_data, model, HEAD_NAMES_SIGNED)
    results["attention_attr_first_sequence"] = plot(attention_attr, clean_tokens, index=0)
    results["attention_attr_summed"] = plot(attention_attr.sum(0), clean_tokens[0])

    def attr_patch_residual(clean_cache: ActivationCache, corrupted_cache: ActivationCache,
                            corrupted_grad_cache: ActivationCache) -> tuple:
        clean_residual, residual_labels = clean_cache.accumulated_resid(-1, incl_mid=True, return_labels=True)
        corrupted_residual = corrupted_cache.accumulated_resid(-1, incl_mid=True, return_labels=False)
        corrupted_grad_residual = corrupted_grad_cache.accumulated_resid(-1, incl_mid=True, return_labels=False)
        residual_attr = einops.reduce(corrupted_grad_residual * (clean_residual - corrupted_residual),
                                      "component batch pos d_model -> component pos", "sum")
        return residual_attr, residual_labels

    residual_attr, residual_labels = attr_patch_residual(clean_cache, corrupted_cache, corrupted_grad_cache)
    results["residual_attr"], results["residual_labels"] = residual_attr.tolist(), residual_labels

    def attr_patch_layer_out(clean_cache: ActivationCache, corrupted_cache: ActivationCache,
                             corrupted_grad_cache: ActivationCache) -> tuple:
        clean_layer_out, labels = clean_cache.decompose_resid(-1, return_labels=True)
        corrupted_layer_out = corrupted_cache.decompose_resid(-1, return_labels=False)
        corrupted_grad_layer_out = corrupted_grad_cache.decompose_resid(-1, return_labels=False)
        layer_out_attr = einops.reduce(corrupted_grad_layer_out * (clean_layer_out - corrupted_layer_out),
                                       "component batch pos d_model -> component pos", "sum")
        return layer_out_attr, labels

    layer_out_attr, layer_out_labels = attr_patch_layer_out(clean_cache, corrupted_cache, corrupted_grad_cache)
    results["layer_out_attr"], results["layer_out_labels"] = layer_out_attr.tolist(), layer_out_labels

    def attr_patch_head_out(clean_cache: ActivationCache, corrupted_cache: ActivationCache,
                            corrupted_grad_cache: ActivationCache) -> tuple:
        labels = HEAD_NAMES
        clean_head_out = clean_cache.stack_head_results(-1, return_labels=False)
        corrupted_head_out = corrupted_cache.stack_head_results(-1, return_labels=False)
        corrupted_grad_head_out = corrupted_grad_cache.stack_head_results(-1, return_labels=False)
        head_out_attr = einops.reduce(corrupted_grad_head_out * (clean_head_out - corrupted_head_out),
                                      "component batch pos d_model -> component pos", "sum")
        return head_out_attr, labels

    head_out_attr, head_out_labels = attr_patch_head_out(clean_cache, corrupted_cache, corrupted_grad_cache)
    sum_head_out_attr = einops.reduce(head_out_attr, "(layer head) pos -> layer head", "sum",
                                      layer=n_layers, head=n_heads)
    results["head_out_attr"], results["sum_head_out_attr"] = head_out_attr.tolist(), sum_head_out_attr.tolist()

    def stack_head_vector_from_cache(cache: ActivationCache, activation_name: Literal["q", "k", "v", "z"]
                                     ) -> Float[torch.Tensor, "layer_and_head_index batch pos d_head"]:
        """Stack one head vector (query, key, value or z) of every layer, heads flattened with layers."""
        stacked_head_vectors = torch.stack([cache[activation_name, l] for l in range(n_layers)], dim=0)
        return einops.rearrange(stacked_head_vectors,
                                "layer batch pos head_index d_head -> (layer head_index) batch pos d_head")

    def attr_patch_head_vector(clean_cache: ActivationCache, corrupted_cache: ActivationCache,
                               corrupted_grad_cache: ActivationCache,
                               activation_name: Literal["q", "k", "v", "z"]) -> tuple:
        labels = HEAD_NAMES
        clean_head_vector = stack_head_vector_from_cache(clean_cache, activation_name)
        corrupted_head_vector = stack_head_vector_from_cache(corrupted_cache, activation_name)
        corrupted_grad_head_vector = stack_head_vector_from_cache(corrupted_grad_cache, activation_name)
        head_vector_attr = einops.reduce(corrupted_grad_head_vector * (clean_head_vector - corrupted_head_vector),
                                         "component batch pos d_head -> component pos", "sum")
        return head_vector_attr, labels

    head_vector_attr_dict = {}
    for activation_name, activation_name_full in [("k", "Key"), ("q", "Query"), ("v", "Value"), ("z", "Mixed Value")]:
        head_vector_attr_dict[activation_name], head_vector_labels = attr_patch_head_vector(
            clean_cache, corrupted_cache, corrupted_grad_cache, activation_name)
        sum_head_vector_attr = einops.reduce(head_vector_attr_dict[activation_name], "(layer head) pos -> layer head",
                                             "sum", layer=n_layers, head=n_heads)
        results[f"head_{activation_name}_attr"] = head_vector_attr_dict[activation_name].tolist()
        results[f"sum_head_{activation_name}_attr"] = sum_head_vector_attr.tolist()

    def stack_head_pattern_from_cache(cache: ActivationCache
                                      ) -> Float[torch.Tensor, "layer_and_head_index batch dest_pos src_pos"]:
        """Stack every layer's attention patterns, heads flattened with layers."""
        stacked_head_pattern = torch.stack([cache["pattern", l] for l in range(n_layers)], dim=0)
        return einops.rearrange(stacked_head_pattern,
                                "layer batch head_index dest_pos src_pos -> (layer head_index) batch dest_pos src_pos")

    def attr_patch_head_pattern(clean_cache: ActivationCache, corrupted_cache: ActivationCache,
                                corrupted_grad_cache: ActivationCache) -> tuple:
        labels = HEAD_NAMES
        clean_head_pattern = stack_head_pattern_from_cache(clean_cache)
        corrupted_head_pattern = stack_head_pattern_from_cache(corrupted_cache)
        corrupted_grad_head_pattern = stack_head_pattern_from_cache(corrupted_grad_cache)
        head_pattern_attr = einops.reduce(corrupted_grad_head_pattern * (clean_head_pattern - corrupted_head_pattern),
                                          "component batch dest_pos src_pos -> component dest_pos src_pos", "sum")
        return head_pattern_attr, labels

    head_pattern_attr, labels = attr_patch_head_pattern(clean_cache, corrupted_cache, corrupted_grad_cache)
    results["head_pattern_attr_plot"] = plot(
        einops.rearrange(head_pattern_attr, "(layer head) dest src -> layer head dest src", layer=n_layers,
                         head=n_heads), clean_tokens, index=0)

    def get_head_vector_grad_input_from_grad_cache(grad_cache: ActivationCache, activation_name: Literal["q", "k", "v"],
                                                   layer: int) -> Float[torch.Tensor, "batch pos head_index d_model"]:
        vector_grad = grad_cache[activation_name, layer]
        ln_scales = grad_cache["scale", layer, "ln1"]
        attn_layer_object = model.blocks[layer].attn
        if activation_name == "q":
            W = attn_layer_object.W_Q
        elif activation_name == "k":
            W = attn_layer_object.W_K
        elif activation_name == "v":
            W = attn_layer_object.W_V
        else:
            raise ValueError("Invalid activation name")
        return einops.einsum(vector_grad, ln_scales.squeeze(-1), W,
                             "batch pos head_index d_head, batch pos, head_index d_model d_head "
                             "-> batch pos head_index d_model")

    def get_stacked_head_vector_grad_input(grad_cache: ActivationCache, activation_name: Literal["q", "k", "v"]
                                           ) -> Float[torch.Tensor, "layer batch pos head_index d_model"]:
        return torch.stack([get_head_vector_grad_input_from_grad_cache(grad_cache, activation_name, l)
                            for l in range(n_layers)], dim=0)

    def get_full_vector_grad_input(grad_cache: ActivationCache
                                   ) -> Float[torch.Tensor, "qkv layer batch pos head_index d_model"]:
        return torch.stack([get_stacked_head_vector_grad_input(grad_cache, activation_name)
                            for activation_name in ["q", "k", "v"]], dim=0)

    def attr_patch_head_path(clean_cache: ActivationCache, corrupted_cache: ActivationCache,
                             corrupted_grad_cache: ActivationCache) -> tuple:
        """The attribution patch along the path between each pair of heads (zero from a head to an earlier one)."""
        start_labels, end_labels = HEAD_NAMES, HEAD_NAMES_QKV
        full_vector_grad_input = get_full_vector_grad_input(corrupted_grad_cache)
        clean_head_result_stack = clean_cache.stack_head_results(-1)
        corrupted_head_result_stack = corrupted_cache.stack_head_results(-1)
        diff_head_result = einops.rearrange(
            clean_head_result_stack - corrupted_head_result_stack,
            "(layer head_index) batch pos d_model -> layer batch pos head_index d_model",
            layer=n_layers, head_index=n_heads)
        path_attr = einops.einsum(
            full_vector_grad_input, diff_head_result,
            "qkv layer_end batch pos head_end d_model, layer_start batch pos head_start d_model "
            "-> qkv layer_end head_end layer_start head_start pos")
        correct_layer_order_mask = (torch.arange(n_layers)[None, :, None, None, None, None]
                                    > torch.arange(n_layers)[None, None, None, :, None, None]).to(path_attr.device)
        zero = torch.zeros(1, device=path_attr.device)
        path_attr = torch.where(correct_layer_order_mask, path_attr, zero)
        path_attr = einops.rearrange(path_attr, "qkv layer_end head_end layer_start head_start pos "
                                                "-> (layer_end head_end qkv) (layer_start head_start) pos")
        return path_attr, end_labels, start_labels

    head_path_attr, end_labels, start_labels = attr_patch_head_path(clean_cache, corrupted_cache, corrupted_grad_cache)
    results["head_path_attr_summed"] = head_path_attr.sum(-1).tolist()
    results["head_path_end_labels"], results["head_path_start_labels"] = end_labels, start_labels

    head_out_values, head_out_indices = head_out_attr.sum(-1).abs().sort(descending=True)
    results["head_out_values"] = head_out_values.tolist()
    top_head_indices = head_out_indices[:22].sort().values
    top_end_indices, top_end_labels, top_start_indices, top_start_labels = [], [], [], []
    for i in top_head_indices:
        i = i.item()
        top_start_indices.append(i)
        top_start_labels.append(start_labels[i])
        for j in range(3):
            top_end_indices.append(3 * i + j)
            top_end_labels.append(end_labels[3 * i + j])
    filtered = head_path_attr[top_end_indices, :][:, top_start_indices].sum(-1)
    results["top_start_labels"], results["top_end_labels"] = top_start_labels, top_end_labels
    results["top_head_path_attr"] = filtered.tolist()
    results["top_head_path_attr_rows_by_type"] = {
        composition_type: head_path_attr[top_end_indices, :][:, top_start_indices][j::3].sum(-1).shape[0]
        for j, composition_type in enumerate(["Query", "Key", "Value"])}
    top_head_path_attr = einops.rearrange(filtered, "(head_end qkv) head_start -> qkv head_end head_start", qkv=3)
    results["top_head_path_attr_facets_shape"] = list(top_head_path_attr.shape)
    results["top_head_path_attr_facet_y"] = [i[:-1] for i in top_end_labels[::3]]

    # GPT-2 small's L5H5, L8H6 and L9H9, at the same fractions of this model's layers and heads.
    interesting_heads = [5 * n_layers // 12 * n_heads + 5 * n_heads // 12,
                         8 * n_layers // 12 * n_heads + 6 * n_heads // 12,
                         9 * n_layers // 12 * n_heads + 9 * n_heads // 12]
    interesting_head_labels = [HEAD_NAMES[i] for i in interesting_heads]
    results["interesting_head_paths"] = {}
    for head_index, label in zip(interesting_heads, interesting_head_labels):
        in_paths = head_path_attr[3 * head_index: 3 * head_index + 3].sum(-1)
        out_paths = head_path_attr[:, head_index].sum(-1)
        out_paths = einops.rearrange(out_paths, "(layer_head qkv) -> qkv layer_head", qkv=3)
        all_paths = torch.cat([in_paths, out_paths], dim=0)
        all_paths = einops.rearrange(all_paths, "path_type (layer head) -> path_type layer head",
                                     layer=n_layers, head=n_heads)
        results["interesting_head_paths"][label] = all_paths.tolist()

    # ----- Validating attribution vs activation patching ---------------------------------------------------
    attribution_cache_dict = {}
    for key in corrupted_grad_cache.cache_dict.keys():
        attribution_cache_dict[key] = corrupted_grad_cache.cache_dict[key] * (
            clean_cache.cache_dict[key] - corrupted_cache.cache_dict[key])
    attr_cache = ActivationCache(attribution_cache_dict, model)
    str_tokens = model.to_str_tokens(clean_tokens[0])
    context_length = len(str_tokens)
    position_labels = [f"{tok}_{i}" for i, tok in enumerate(model.to_str_tokens(clean_tokens[0]))]
    results["position_labels"] = position_labels

    every_block_act_patch_result = patching.get_act_patch_block_every(model, corrupted_tokens, clean_cache, ioi_metric)
    results["every_block_act_patch_result"] = every_block_act_patch_result.tolist()

    def get_attr_patch_block_every(attr_cache: ActivationCache) -> torch.Tensor:
        resid_pre_attr = einops.reduce(attr_cache.stack_activation("resid_pre"),
                                       "layer batch pos d_model -> layer pos", "sum")
        attn_out_attr = einops.reduce(attr_cache.stack_activation("attn_out"),
                                      "layer batch pos d_model -> layer pos", "sum")
        mlp_out_attr = einops.reduce(attr_cache.stack_activation("mlp_out"),
                                     "layer batch pos d_model -> layer pos", "sum")
        return torch.stack([resid_pre_attr, attn_out_attr, mlp_out_attr], dim=0)

    every_block_attr_patch_result = get_attr_patch_block_every(attr_cache)
    results["every_block_attr_patch_result"] = every_block_attr_patch_result.tolist()
    results["block_scatter_hover"] = [f"Layer {l}, Position {p}, |{str_tokens[p]}|"
                                      for l in range(n_layers) for p in range(context_length)]
    results["block_scatter_color"] = einops.repeat(torch.arange(n_layers), "layer -> (layer pos)",
                                                   pos=context_length).tolist()

    every_head_all_pos_act_patch_result = patching.get_act_patch_attn_head_all_pos_every(
        model, corrupted_tokens, clean_cache, ioi_metric)
    results["every_head_all_pos_act_patch_result"] = every_head_all_pos_act_patch_result.tolist()

    def get_attr_patch_attn_head_all_pos_every(attr_cache: ActivationCache) -> torch.Tensor:
        head_out_all_pos_attr = einops.reduce(attr_cache.stack_activation("z"),
                                              "layer batch pos head_index d_head -> layer head_index", "sum")
        head_q_all_pos_attr = einops.reduce(attr_cache.stack_activation("q"),
                                            "layer batch pos head_index d_head -> layer head_index", "sum")
        head_k_all_pos_attr = einops.reduce(attr_cache.stack_activation("k"),
                                            "layer batch pos head_index d_head -> layer head_index", "sum")
        head_v_all_pos_attr = einops.reduce(attr_cache.stack_activation("v"),
                                            "layer batch pos head_index d_head -> layer head_index", "sum")
        head_pattern_all_pos_attr = einops.reduce(attr_cache.stack_activation("pattern"),
                                                  "layer batch head_index dest_pos src_pos -> layer head_index", "sum")
        return torch.stack([head_out_all_pos_attr, head_q_all_pos_attr, head_k_all_pos_attr, head_v_all_pos_attr,
                            head_pattern_all_pos_attr])

    every_head_all_pos_attr_patch_result = get_attr_patch_attn_head_all_pos_every(attr_cache)
    results["every_head_all_pos_attr_patch_result"] = every_head_all_pos_attr_patch_result.tolist()

    graph_tok_labels = [f"{tok}_{i}" for i, tok in enumerate(model.to_str_tokens(clean_tokens[0]))]
    # GPT-2 small's L5H5, L10H7 and L11H10, at the same fractions of this model's layers and heads: each prompt's
    # last query row.
    results["head_attention_last_query"] = {
        f"L{layer}H{head}": clean_cache["pattern", layer][:, head][:, -1].tolist()
        for layer, head in [(5 * n_layers // 12, 5 * n_heads // 12), (10 * n_layers // 12, 7 * n_heads // 12),
                            (11 * n_layers // 12, 10 * n_heads // 12)]}
    results["graph_tok_labels"] = graph_tok_labels

    every_head_by_pos_act_patch_result = patching.get_act_patch_attn_head_by_pos_every(
        model, corrupted_tokens, clean_cache, ioi_metric)
    every_head_by_pos_act_patch_result = einops.rearrange(every_head_by_pos_act_patch_result,
                                                          "act_type layer pos head -> act_type (layer head) pos")
    results["every_head_by_pos_act_patch_result"] = every_head_by_pos_act_patch_result.tolist()

    def get_attr_patch_attn_head_by_pos_every(attr_cache: ActivationCache) -> torch.Tensor:
        head_out_by_pos_attr = einops.reduce(attr_cache.stack_activation("z"),
                                             "layer batch pos head_index d_head -> layer pos head_index", "sum")
        head_q_by_pos_attr = einops.reduce(attr_cache.stack_activation("q"),
                                           "layer batch pos head_index d_head -> layer pos head_index", "sum")
        head_k_by_pos_attr = einops.reduce(attr_cache.stack_activation("k"),
                                           "layer batch pos head_index d_head -> layer pos head_index", "sum")
        head_v_by_pos_attr = einops.reduce(attr_cache.stack_activation("v"),
                                           "layer batch pos head_index d_head -> layer pos head_index", "sum")
        head_pattern_by_pos_attr = einops.reduce(attr_cache.stack_activation("pattern"),
                                                 "layer batch head_index dest_pos src_pos -> layer dest_pos head_index",
                                                 "sum")
        return torch.stack([head_out_by_pos_attr, head_q_by_pos_attr, head_k_by_pos_attr, head_v_by_pos_attr,
                            head_pattern_by_pos_attr])

    every_head_by_pos_attr_patch_result = get_attr_patch_attn_head_by_pos_every(attr_cache)
    every_head_by_pos_attr_patch_result = einops.rearrange(every_head_by_pos_attr_patch_result,
                                                           "act_type layer pos head -> act_type (layer head) pos")
    results["every_head_by_pos_attr_patch_result"] = every_head_by_pos_attr_patch_result.tolist()
    results["by_pos_scatter_hover_count"] = len([f"{label} {tok}" for label in head_out_labels
                                                 for tok in graph_tok_labels])
    results["by_pos_scatter_color"] = einops.repeat(torch.arange(n_layers), "layer -> (layer head pos)",
                                                    head=n_heads, pos=context_length).tolist()
    model.reset_hooks()
    return results


def factual_recall(gpt2_xl: HookedTransformer) -> dict:
    """The notebook's factual-recall cells (Eiffel Tower vs Colosseum) on `gpt2_xl`."""
    results: dict = {}
    clean_prompt = "The Eiffel Tower is located in the city of"
    clean_answer = " Paris"
    corrupted_prompt = "The Colosseum is located in the city of"
    corrupted_answer = " Rome"
    results["test_prompt_printout"] = printed(lambda: (utils.test_prompt(clean_prompt, clean_answer, gpt2_xl),
                                                       utils.test_prompt(corrupted_prompt, corrupted_answer, gpt2_xl)))
    clean_answer_index = gpt2_xl.to_single_token(clean_answer)
    corrupted_answer_index = gpt2_xl.to_single_token(corrupted_answer)

    def factual_logit_diff(logits: Float[torch.Tensor, "batch position d_vocab"]) -> torch.Tensor:
        return logits[0, -1, clean_answer_index] - logits[0, -1, corrupted_answer_index]

    clean_logits, clean_cache = gpt2_xl.run_with_cache(clean_prompt)
    CLEAN_LOGIT_DIFF_FACTUAL = factual_logit_diff(clean_logits).item()
    corrupted_logits, _ = gpt2_xl.run_with_cache(corrupted_prompt)
    CORRUPTED_LOGIT_DIFF_FACTUAL = factual_logit_diff(corrupted_logits).item()

    def factual_metric(logits: Float[torch.Tensor, "batch position d_vocab"]) -> torch.Tensor:
        return (factual_logit_diff(logits) - CORRUPTED_LOGIT_DIFF_FACTUAL) / (
            CLEAN_LOGIT_DIFF_FACTUAL - CORRUPTED_LOGIT_DIFF_FACTUAL)

    results["clean_logit_diff"] = CLEAN_LOGIT_DIFF_FACTUAL
    results["corrupted_logit_diff"] = CORRUPTED_LOGIT_DIFF_FACTUAL
    results["metrics_printout"] = printed(lambda: (print("Clean Metric:", factual_metric(clean_logits)),
                                                   print("Corrupted Metric:", factual_metric(corrupted_logits))))

    clean_tokens = gpt2_xl.to_tokens(clean_prompt)
    clean_str_tokens = gpt2_xl.to_str_tokens(clean_prompt)
    corrupted_tokens = gpt2_xl.to_tokens(corrupted_prompt)
    corrupted_str_tokens = gpt2_xl.to_str_tokens(corrupted_prompt)
    results["clean_tokens"], results["corrupted_tokens"] = clean_tokens.tolist(), corrupted_tokens.tolist()
    results["clean_str_tokens"], results["corrupted_str_tokens"] = clean_str_tokens, corrupted_str_tokens

    def act_patch_residual(clean_cache: ActivationCache, corrupted_tokens: torch.Tensor, model: HookedTransformer,
                           metric: Callable) -> torch.Tensor:
        if len(corrupted_tokens.shape) == 2:
            corrupted_tokens = corrupted_tokens[0]
        residual_patches = torch.zeros((model.cfg.n_layers, len(corrupted_tokens)), device=model.cfg.device)

        def residual_hook(resid_pre: torch.Tensor, hook: Any, layer: int, pos: int) -> torch.Tensor:
            resid_pre[:, pos, :] = clean_cache["resid_pre", layer][:, pos, :]
            return resid_pre

        for layer in range(model.cfg.n_layers):
            for pos in range(len(corrupted_tokens)):
                patched_logits = model.run_with_hooks(corrupted_tokens, fwd_hooks=[
                    (f"blocks.{layer}.hook_resid_pre", partial(residual_hook, layer=layer, pos=pos))])
                residual_patches[layer, pos] = metric(patched_logits).item()
        return residual_patches

    residual_act_patch = act_patch_residual(clean_cache, corrupted_tokens, gpt2_xl, factual_metric)
    results["residual_act_patch"] = residual_act_patch.tolist()
    return results


LOADERS = {"model": load, "gpt2_xl": load_gpt2_xl}
PARTS = {"ioi": ioi, "factual_recall": factual_recall}
