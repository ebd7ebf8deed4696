"""TransformerLens's Main Demo, ported to a module, as far as it runs on GPT-2-shaped models offline.

Source: TransformerLensOrg/TransformerLens, demos/Main_Demo.ipynb at commit aaf384f2 (Dec 2024), the last version
that loads a HookedTransformer (e44c59a2, Oct 2025, moved it to TransformerBridge). Our own re-implementation of its
cells, in its order, one part per section: "caching" (loss on a paragraph, `run_with_cache(remove_batch_dim=True)`,
`stop_at_layer` with `names_filter`), "hooks" (a value-ablation hook, IOI residual-stream patching by hand),
"induction" (loss by position on repeated random tokens, induction scores from pattern hooks in GPT-2 small and
distilgpt2), "internals" (named parameters, every hook name and shape of block 0, the unembedding bias),
"tokenization" (`to_str_tokens`, `to_tokens`, padding, `to_string`, `get_token_position`, prepend_bos),
"factored_matrix" (norms, dimensions, eigenvalues, singular values, products), "ov_circuits" (OV and full-OV
eigenvalue copying scores), "generation" (`generate`), "hooked_root_module_cache" and "hooked_root_module_hooks"
(a two-layer toy model built from `HookedRootModule` and `HookPoint`), "induction_loss" (`evals.induction_loss`).

Only the import lines name the library: `record.py main_demo` runs this same source with `interp.tl` replaced by
`transformer_lens`. Differences from the notebook: plotly and circuitsvis cells are not run; the numbers they would
draw are returned instead (attention patterns as each head's last query row); printed text is captured;
`torch.set_grad_enabled(False)` (cell 10) is scoped to each part; tqdm is off; `print(type(cache))` records the
class name; the random tokens of the induction section are seeded (`torch.manual_seed(0)`; the cells the notebook
seeds under GitHub Actions use its seed, 50); the induction head it looks at (L5H5) is scaled to the model's depth;
`generate` runs greedily (`do_sample=False`) and, separately, sampling as in the notebook (temperature 0.7) after
`torch.manual_seed(0)`. Not ported: the cells that need other downloads (checkpoint labels and the solu-2l
checkpoints over training; `evals.induction_loss` is run on GPT-2 small instead).
"""

import interp.tl.utils as utils
from interp.tl import FactoredMatrix, HookedTransformer, evals
from interp.tl.hook_points import HookedRootModule, HookPoint

import contextlib
import functools
import io
from functools import partial
from typing import Any, Callable

import einops
import torch
import torch.nn as nn
from jaxtyping import Float

GPT2_TEXT = ("Natural language processing tasks, such as question answering, machine translation, reading "
             "comprehension, and summarization, are typically approached with supervised learning on taskspecific "
             "datasets.")


def load(hf_model: Any = None, tokenizer: Any = None) -> HookedTransformer:
    """The notebook's loading cell; `hf_model` and `tokenizer` stand in for GPT-2 small's hub weights offline."""
    device = utils.get_device()
    return HookedTransformer.from_pretrained("gpt2-small", device=device, hf_model=hf_model, tokenizer=tokenizer)


def load_distilgpt2(hf_model: Any = None, tokenizer: Any = None) -> HookedTransformer:
    device = utils.get_device()
    return HookedTransformer.from_pretrained("distilgpt2", device=device, hf_model=hf_model, tokenizer=tokenizer)


def printed(function: Callable[[], Any]) -> str:
    """What `function()` prints."""
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        function()
    return output.getvalue()


def without_gradients(part: Callable[..., dict]) -> Callable[..., dict]:
    """Cell 10's `torch.set_grad_enabled(False)`, for the duration of one part."""
    @functools.wraps(part)
    def run(*models: Any) -> dict:
        with torch.set_grad_enabled(False):
            return part(*models)
    return run


@without_gradients
def caching(model: HookedTransformer) -> dict:
    results: dict = {}
    model_description_text = """## Loading Models

HookedTransformer comes loaded with >40 open source GPT-style models. You can load any of them in with `HookedTransformer.from_pretrained(MODEL_NAME)`. See my explainer for documentation of all supported models, and this table for hyper-parameters and the name used to load them. Each model is loaded into the consistent HookedTransformer architecture, designed to be clean, consistent and interpretability-friendly. 

For this demo notebook we'll look at GPT-2 Small, an 80M parameter model. To try the model the model out, let's find the loss on this paragraph!"""  # noqa: E501, W291 - the notebook's text
    loss = model(model_description_text, return_type="loss")
    results["loss_printout"] = printed(lambda: print("Model loss:", loss))
    gpt2_tokens = model.to_tokens(GPT2_TEXT)
    results["tokens_device"] = str(gpt2_tokens.device)
    gpt2_logits, gpt2_cache = model.run_with_cache(gpt2_tokens, remove_batch_dim=True)
    results["cache_type"] = type(gpt2_cache).__name__
    attention_pattern = gpt2_cache["pattern", 0, "attn"]
    results["pattern_shape"] = list(attention_pattern.shape)
    gpt2_str_tokens = model.to_str_tokens(GPT2_TEXT)
    results["str_tokens"] = gpt2_str_tokens
    results["layer_0_last_query_rows"] = attention_pattern[:, -1].tolist()
    attn_hook_name = "blocks.0.attn.hook_pattern"
    attn_layer = 0
    _, gpt2_attn_cache = model.run_with_cache(gpt2_tokens, remove_batch_dim=True, stop_at_layer=attn_layer + 1,
                                              names_filter=[attn_hook_name])
    gpt2_attn = gpt2_attn_cache[attn_hook_name]
    results["stop_at_layer_cache_names"] = list(gpt2_attn_cache.keys())
    results["stop_at_layer_pattern_equal"] = torch.equal(gpt2_attn, attention_pattern)
    return results


@without_gradients
def hooks(model: HookedTransformer) -> dict:
    results: dict = {}
    gpt2_tokens = model.to_tokens(GPT2_TEXT)
    layer_to_ablate = 0
    head_index_to_ablate = 8

    def head_ablation_hook(value: Float[torch.Tensor, "batch pos head_index d_head"], hook: HookPoint
                           ) -> Float[torch.Tensor, "batch pos head_index d_head"]:
        print(f"Shape of the value tensor: {value.shape}")
        value[:, :, head_index_to_ablate, :] = 0.
        return value

    def ablate() -> None:
        original_loss = model(gpt2_tokens, return_type="loss")
        ablated_loss = model.run_with_hooks(gpt2_tokens, return_type="loss", fwd_hooks=[(
            utils.get_act_name("v", layer_to_ablate), head_ablation_hook)])
        print(f"Original Loss: {original_loss.item():.3f}")
        print(f"Ablated Loss: {ablated_loss.item():.3f}")

    results["ablation_printout"] = printed(ablate)

    clean_prompt = "After John and Mary went to the store, Mary gave a bottle of milk to"
    corrupted_prompt = "After John and Mary went to the store, John gave a bottle of milk to"
    clean_tokens = model.to_tokens(clean_prompt)
    corrupted_tokens = model.to_tokens(corrupted_prompt)

    def logits_to_logit_diff(logits: torch.Tensor, correct_answer: str = " John", incorrect_answer: str = " Mary"
                             ) -> torch.Tensor:
        correct_index = model.to_single_token(correct_answer)
        incorrect_index = model.to_single_token(incorrect_answer)
        return logits[0, -1, correct_index] - logits[0, -1, incorrect_index]

    clean_logits, clean_cache = model.run_with_cache(clean_tokens)
    clean_logit_diff = logits_to_logit_diff(clean_logits)
    corrupted_logits = model(corrupted_tokens)
    corrupted_logit_diff = logits_to_logit_diff(corrupted_logits)
    results["logit_diff_printout"] = printed(lambda: (
        print(f"Clean logit difference: {clean_logit_diff.item():.3f}"),
        print(f"Corrupted logit difference: {corrupted_logit_diff.item():.3f}")))

    def residual_stream_patching_hook(resid_pre: Float[torch.Tensor, "batch pos d_model"], hook: HookPoint,
                                      position: int) -> Float[torch.Tensor, "batch pos d_model"]:
        clean_resid_pre = clean_cache[hook.name]
        resid_pre[:, position, :] = clean_resid_pre[:, position, :]
        return resid_pre

    num_positions = len(clean_tokens[0])
    ioi_patching_result = torch.zeros((model.cfg.n_layers, num_positions), device=model.cfg.device)
    for layer in range(model.cfg.n_layers):
        for position in range(num_positions):
            temp_hook_fn = partial(residual_stream_patching_hook, position=position)
            patched_logits = model.run_with_hooks(corrupted_tokens, fwd_hooks=[
                (utils.get_act_name("resid_pre", layer), temp_hook_fn)])
            patched_logit_diff = logits_to_logit_diff(patched_logits).detach()
            ioi_patching_result[layer, position] = (patched_logit_diff - corrupted_logit_diff) / (
                clean_logit_diff - corrupted_logit_diff)
    results["ioi_patching_result"] = ioi_patching_result.tolist()
    results["token_labels"] = [f"{token}_{index}" for index, token in enumerate(model.to_str_tokens(clean_tokens))]
    return results


@without_gradients
def induction(model: HookedTransformer, distilgpt2: HookedTransformer) -> dict:
    results: dict = {}
    torch.manual_seed(0)
    batch_size = 10
    seq_len = 50
    size = (batch_size, seq_len)
    input_tensor = torch.randint(1000, 10000, size)
    random_tokens = input_tensor.to(model.cfg.device)
    repeated_tokens = einops.repeat(random_tokens, "batch seq_len -> batch (2 seq_len)")
    repeated_logits = model(repeated_tokens)
    correct_log_probs = model.loss_fn(repeated_logits, repeated_tokens, per_token=True)
    loss_by_position = einops.reduce(correct_log_probs, "batch position -> position", "mean")
    results["loss_by_position"] = loss_by_position.tolist()

    def induction_scores(model: HookedTransformer) -> torch.Tensor:
        induction_score_store = torch.zeros((model.cfg.n_layers, model.cfg.n_heads), device=model.cfg.device)

        def induction_score_hook(pattern: Float[torch.Tensor, "batch head_index dest_pos source_pos"],
                                 hook: HookPoint) -> None:
            # attention from each destination position to the source seq_len - 1 tokens back
            induction_stripe = pattern.diagonal(dim1=-2, dim2=-1, offset=1 - seq_len)
            induction_score = einops.reduce(induction_stripe, "batch head_index position -> head_index", "mean")
            induction_score_store[hook.layer(), :] = induction_score

        pattern_hook_names_filter = lambda name: name.endswith("pattern")  # noqa: E731
        model.run_with_hooks(repeated_tokens, return_type=None, fwd_hooks=[(pattern_hook_names_filter,
                                                                            induction_score_hook)])
        return induction_score_store

    results["induction_scores"] = induction_scores(model).tolist()

    torch.manual_seed(50)
    induction_head_layer = 5 * model.cfg.n_layers // 12
    induction_head_index = 5
    size = (1, 20)
    input_tensor = torch.randint(1000, 10000, size)
    single_random_sequence = input_tensor.to(model.cfg.device)
    repeated_random_sequence = einops.repeat(single_random_sequence, "batch seq_len -> batch (2 seq_len)")
    shown = {}

    def visualize_pattern_hook(pattern: Float[torch.Tensor, "batch head_index dest_pos source_pos"],
                               hook: HookPoint) -> None:
        shown["str_tokens"] = model.to_str_tokens(repeated_random_sequence)
        shown["last_query_row"] = pattern[0, induction_head_index, :, :][None, :, :][0, -1].tolist()

    model.run_with_hooks(repeated_random_sequence, return_type=None, fwd_hooks=[(
        utils.get_act_name("pattern", induction_head_layer), visualize_pattern_hook)])
    results["induction_head_pattern"] = shown
    results["distilgpt2_induction_scores"] = induction_scores(distilgpt2).tolist()
    return results


@without_gradients
def internals(model: HookedTransformer) -> dict:
    results: dict = {}
    results["block_0_parameters_printout"] = printed(lambda: [
        print(name, param.shape) for name, param in model.named_parameters() if name.startswith("blocks.0.")])
    results["other_parameters_printout"] = printed(lambda: [
        print(name, param.shape) for name, param in model.named_parameters() if not name.startswith("blocks")])

    test_prompt = "The quick brown fox jumped over the lazy dog"

    def print_name_shape_hook_function(activation: torch.Tensor, hook: HookPoint) -> None:
        print(hook.name, activation.shape)

    not_in_late_block_filter = lambda name: name.startswith("blocks.0.") or not name.startswith("blocks")  # noqa: E731
    results["hook_names_printout"] = printed(lambda: (
        print("Num tokens:", len(model.to_tokens(test_prompt)[0])),
        model.run_with_hooks(test_prompt, return_type=None,
                             fwd_hooks=[(not_in_late_block_filter, print_name_shape_hook_function)])))

    unembed_bias = model.unembed.b_U
    bias_values, bias_indices = unembed_bias.sort(descending=True)

    def print_bias() -> None:
        top_k = 20
        print(f"Top {top_k} values")
        for i in range(top_k):
            print(f"{bias_values[i].item():.2f} {repr(model.to_string(bias_indices[i]))}")
        print("...")
        print(f"Bottom {top_k} values")
        for i in range(top_k, 0, -1):
            print(f"{bias_values[-i].item():.2f} {repr(model.to_string(bias_indices[-i]))}")

    results["unembed_bias_printout"] = printed(print_bias)
    john_bias = model.unembed.b_U[model.to_single_token(" John")]
    mary_bias = model.unembed.b_U[model.to_single_token(" Mary")]
    results["name_bias_printout"] = printed(lambda: (
        print(f"John bias: {john_bias.item():.4f}"), print(f"Mary bias: {mary_bias.item():.4f}"),
        print(f"Prob ratio bias: {torch.exp(john_bias - mary_bias).item():.4f}x")))
    return results


@without_gradients
def tokenization(model: HookedTransformer) -> dict:
    example_text = ("The first thing you need to figure out is *how* things are tokenized. `model.to_str_tokens` "
                    "splits a string into the tokens *as a list of substrings*, and so lets you explore what the "
                    "text looks like. To demonstrate this, let's use it on this paragraph.")

    def cells() -> None:
        example_text_str_tokens = model.to_str_tokens(example_text)
        print(example_text_str_tokens)
        example_text_tokens = model.to_tokens(example_text)
        print(example_text_tokens)
        example_multi_text = ["The cat sat on the mat.", "The cat sat on the mat really hard."]
        example_multi_text_tokens = model.to_tokens(example_multi_text)
        print(example_multi_text_tokens)

        cat_text = "The cat sat on the mat."
        cat_logits = model(cat_text)
        cat_probs = cat_logits.softmax(dim=-1)
        print(f"Probability tensor shape [batch, position, d_vocab] == {cat_probs.shape}")
        capital_the_token_index = model.to_single_token(" The")
        print(f"| The| probability: {cat_probs[0, -1, capital_the_token_index].item():.2%}")

        print(f"Token 256 - the most common pair of ASCII characters: |{model.to_string(256)}|")
        print(f"De-Tokenizing the example tokens: {model.to_string(example_text_tokens.squeeze())}")

        print("With BOS:", model.get_token_position(" cat", "The cat sat on the mat"))
        print("Without BOS:", model.get_token_position(" cat", "The cat sat on the mat", prepend_bos=False))
        print("First occurrence", model.get_token_position(" cat", "The cat sat on the mat. The mat sat on the cat.",
                                                           mode="first"))
        print("Final occurrence", model.get_token_position(" cat", "The cat sat on the mat. The mat sat on the cat.",
                                                           mode="last"))
        print(model.to_str_tokens("2342+2017=21445"))
        print(model.to_str_tokens("1000+1000000=999999"))

        print("Logits shape by default (with BOS)", model("Hello World").shape)
        print("Logits shape with BOS", model("Hello World", prepend_bos=True).shape)
        print("Logits shape without BOS - only 2 positions!", model("Hello World", prepend_bos=False).shape)

        ioi_text = "Claire and Mary went to the shops, then Mary gave a bottle of milk to"
        ioi_logits_with_bos = model(ioi_text, prepend_bos=True)
        mary_logit_with_bos = ioi_logits_with_bos[0, -1, model.to_single_token(" Mary")].item()
        claire_logit_with_bos = ioi_logits_with_bos[0, -1, model.to_single_token(" Claire")].item()
        print(f"Logit difference with BOS: {(claire_logit_with_bos - mary_logit_with_bos):.3f}")
        ioi_logits_without_bos = model(ioi_text, prepend_bos=False)
        mary_logit_without_bos = ioi_logits_without_bos[0, -1, model.to_single_token(" Mary")].item()
        claire_logit_without_bos = ioi_logits_without_bos[0, -1, model.to_single_token(" Claire")].item()
        print(f"Logit difference without BOS: {(claire_logit_without_bos - mary_logit_without_bos):.3f}")

        print(f"| Claire| -> {model.to_str_tokens(' Claire', prepend_bos=False)}")
        print(f"|Claire| -> {model.to_str_tokens('Claire', prepend_bos=False)}")

    return {"printout": printed(cells)}


def complex_list(values: torch.Tensor) -> list:
    """A complex tensor as [real parts, imaginary parts]."""
    return [values.real.tolist(), values.imag.tolist()]


@without_gradients
def factored_matrix() -> dict:
    results: dict = {}
    torch.manual_seed(50)
    A = torch.randn(5, 2)
    B = torch.randn(2, 5)
    AB = A @ B
    AB_factor = FactoredMatrix(A, B)
    results["norms_printout"] = printed(lambda: (
        print("Norms:"), print(AB.norm()), print(AB_factor.norm()),
        print(f"Right dimension: {AB_factor.rdim}, Left dimension: {AB_factor.ldim}, "
              f"Hidden dimension: {AB_factor.mdim}")))
    results["dense_eigenvalues"] = complex_list(torch.linalg.eig(AB).eigenvalues)
    results["factored_eigenvalues"] = complex_list(AB_factor.eigenvalues)
    results["dense_singular_values"] = torch.linalg.svd(AB).S.tolist()
    results["factored_singular_values"] = AB_factor.S.tolist()

    torch.manual_seed(50)
    C = torch.randn(5, 300)
    ABC = AB @ C
    ABC_factor = AB_factor @ C
    results["product_printout"] = printed(lambda: (
        print("Unfactored:", ABC.shape, ABC.norm().round(decimals=3)),
        print("Factored:", ABC_factor.shape, ABC_factor.norm().round(decimals=3)),
        print(f"Right dimension: {ABC_factor.rdim}, Left dimension: {ABC_factor.ldim}, "
              f"Hidden dimension: {ABC_factor.mdim}")))
    AB_unfactored = AB_factor.AB
    results["unfactored_is_close"] = bool(torch.isclose(AB_unfactored, AB).all())
    return results


@without_gradients
def ov_circuits(model: HookedTransformer) -> dict:
    results: dict = {}
    OV_circuit_all_heads = model.OV
    OV_circuit_all_heads_eigenvalues = OV_circuit_all_heads.eigenvalues
    results["ov_printout"] = printed(lambda: (
        print(OV_circuit_all_heads), print(OV_circuit_all_heads_eigenvalues.shape),
        print(OV_circuit_all_heads_eigenvalues.dtype)))
    OV_copying_score = (OV_circuit_all_heads_eigenvalues.sum(dim=-1).real
                        / OV_circuit_all_heads_eigenvalues.abs().sum(dim=-1))
    results["ov_copying_score"] = utils.to_numpy(OV_copying_score).tolist()
    results["last_head_eigenvalues"] = complex_list(OV_circuit_all_heads_eigenvalues[-1, -1, :])

    full_OV_circuit = model.embed.W_E @ OV_circuit_all_heads @ model.unembed.W_U
    full_OV_circuit_eigenvalues = full_OV_circuit.eigenvalues
    results["full_ov_printout"] = printed(lambda: (
        print(full_OV_circuit), print(full_OV_circuit_eigenvalues.shape), print(full_OV_circuit_eigenvalues.dtype)))
    full_OV_copying_score = (full_OV_circuit_eigenvalues.sum(dim=-1).real
                             / full_OV_circuit_eigenvalues.abs().sum(dim=-1))
    results["full_ov_copying_score"] = utils.to_numpy(full_OV_copying_score).tolist()
    return results


@without_gradients
def generation(model: HookedTransformer) -> dict:
    prompt = "(CNN) President Barack Obama caught in embarrassing new scandal\n"
    greedy = model.generate(prompt, max_new_tokens=50, temperature=0.7, prepend_bos=True, do_sample=False,
                            verbose=False)
    torch.manual_seed(0)
    sampled = model.generate(prompt, max_new_tokens=50, temperature=0.7, prepend_bos=True, verbose=False)
    return {"greedy": greedy, "sampled": sampled}


class SquareThenAdd(nn.Module):
    def __init__(self, offset: float) -> None:
        super().__init__()
        self.offset = nn.Parameter(torch.tensor(offset))
        self.hook_square = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        square = self.hook_square(x * x)  # the hook point leaves the value unchanged unless a hook changes it
        return self.offset + square


class TwoLayerModel(HookedRootModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer1 = SquareThenAdd(3.0)
        self.layer2 = SquareThenAdd(-4.0)
        self.hook_in = HookPoint()
        self.hook_mid = HookPoint()
        self.hook_out = HookPoint()
        super().setup()  # names the hook points and builds the module and hook dictionaries

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_in = self.hook_in(x)
        x_mid = self.hook_mid(self.layer1(x_in))
        x_out = self.hook_out(self.layer2(x_mid))
        return x_out


@without_gradients
def hooked_root_module_cache() -> dict:
    model = TwoLayerModel()

    def cells() -> None:
        out, cache = model.run_with_cache(torch.tensor(5.0))
        print("Model output:", out.item())
        for key in cache:
            print(f"Value cached at hook {key}", cache[key].item())

    return {"printout": printed(cells)}


@without_gradients
def hooked_root_module_hooks() -> dict:
    model = TwoLayerModel()

    def set_to_zero_hook(tensor: torch.Tensor, hook: HookPoint) -> torch.Tensor:
        print(hook.name)
        return torch.tensor(0.0)

    return {"printout": printed(lambda: print(
        "Output after intervening on layer2.hook_scaled",
        model.run_with_hooks(torch.tensor(5.0), fwd_hooks=[("layer2.hook_square", set_to_zero_hook)]).item()))}


@without_gradients
def induction_loss(model: HookedTransformer) -> dict:
    device = utils.get_device()
    torch.manual_seed(0)
    return {"induction_loss": evals.induction_loss(model, device=device).item()}


LOADERS = {"model": load, "distilgpt2": load_distilgpt2}
PARTS = {"caching": caching, "hooks": hooks, "induction": induction, "internals": internals,
         "tokenization": tokenization, "factored_matrix": factored_matrix, "ov_circuits": ov_circuits,
         "generation": generation, "hooked_root_module_cache": hooked_root_module_cache,
         "hooked_root_module_hooks": hooked_root_module_hooks, "induction_loss": induction_loss}
