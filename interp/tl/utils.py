"""TransformerLens 3.9's `utils` module: the helpers TL scripts call, with TL's names and semantics.

`from interp.tl import utils` then `utils.get_act_name("pattern", 3)`, `utils.lm_cross_entropy_loss(...)`,
`utils.test_prompt(...)`. Sampling and `test_prompt` live in `interp.tl.sampling`, tokenizer helpers in
`interp.tl.tokenization`; both are re-exported here. Functions that download (`download_file_from_hf`,
`get_dataset`) raise, naming the offline alternative.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import sys
from typing import Any, List, Optional, Tuple, Union

import einops
import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from interp.factored import FactoredMatrix as BaseFactoredMatrix
from interp.tl.factored import FactoredMatrix
from interp.tl.sampling import sample_logits, test_prompt
from interp.tl.tokenization import (get_attention_mask, get_cumsum_along_dim, get_input_with_manually_prepended_bos,
                                    get_tokens_with_bos_removed, keep_single_column, tokenize_and_concatenate)

__all__ = [
    "USE_DEFAULT_VALUE", "Slice", "SliceInput", "check_structure", "composition_scores",
    "download_file_from_hf", "filter_dict_by_prefix", "gelu_fast", "gelu_new", "get_act_name", "get_attention_mask",
    "get_corner", "get_cumsum_along_dim", "get_dataset", "get_device", "get_input_with_manually_prepended_bos",
    "get_matrix_corner", "get_nested_attr", "get_offset_position_ids", "get_tokens_with_bos_removed",
    "is_library_available", "is_lower_triangular", "is_square", "keep_single_column", "lm_accuracy",
    "lm_cross_entropy_loss", "override_or_use_default_value", "remove_batch_dim", "repeat_along_head_dimension", "sample_logits",
    "set_nested_attr", "solu", "test_prompt", "to_numpy", "tokenize_and_concatenate", "transpose",
]

USE_DEFAULT_VALUE = None  # "use the model's default" for prepend_bos / padding_side arguments


def override_or_use_default_value(default_flag: Any, override: Any = None) -> Any:
    """`override` unless it is None, else `default_flag`."""
    return default_flag if override is None else override


# ---- hook names -------------------------------------------------------------------------------
_ATTENTION_NAMES = {"k", "v", "q", "z", "rot_k", "rot_q", "result", "pattern", "attn_scores"}
_MLP_NAMES = {"pre", "post", "mid", "pre_linear"}
_NAME_ALIASES = {"attn": "pattern", "attn_logits": "attn_scores", "key": "k", "query": "q", "value": "v",
                 "mlp_pre": "pre", "mlp_mid": "mid", "mlp_post": "post"}
_LAYER_TYPE_ALIASES = {"a": "attn", "m": "mlp", "b": "", "block": "", "blocks": "", "attention": "attn"}
_SHORT_FORM = re.compile(r"([a-z]+)(\d+)([a-z]?.*)")  # "k6" -> ("k", "6", ""), "scale4ln1" -> (.., "ln1")


def get_act_name(name: str, layer: Optional[Union[int, str]] = None, layer_type: Optional[str] = None) -> str:
    """Full hook name from TL's shorthand: ("k", 6) or "k6" -> "blocks.6.attn.hook_k".

    A full name (with "." or starting "hook_") passes through when no layer or layer_type is given. A name
    like "scale4ln1" is split into name, layer and layer_type (overriding the arguments). Aliases: "attn" ->
    "pattern", "attn_logits" -> "attn_scores", "key"/"query"/"value" -> k/q/v, "mlp_pre"/"mlp_mid"/"mlp_post".
    Attention and MLP names get their "attn."/"mlp." part; otherwise layer_type is used, with "a" -> "attn",
    "m" -> "mlp", "attention" -> "attn" and "b"/"block"/"blocks" -> none. "scale"/"normalized" without a
    layer are ln_final's. No check that the result exists: ("scale", 3) gives "blocks.3.hook_scale", as in TL.
    """
    if not isinstance(name, str):
        raise TypeError(f"get_act_name takes a string name, got {type(name).__name__}; "
                        "e.g. get_act_name('pattern', 3).")
    if layer is None and layer_type is None and ("." in name or name.startswith("hook_")):
        return name
    short = _SHORT_FORM.match(name)
    if short is not None:
        name, layer, layer_type = short.groups()
    name = _NAME_ALIASES.get(name, name)
    if name in _ATTENTION_NAMES:
        layer_type = "attn"
    elif name in _MLP_NAMES:
        layer_type = "mlp"
    elif layer_type in _LAYER_TYPE_ALIASES:
        layer_type = _LAYER_TYPE_ALIASES[layer_type]
    full = (f"blocks.{layer}." if layer is not None else "") + (f"{layer_type}." if layer_type else "") + f"hook_{name}"
    if name in ("scale", "normalized") and layer is None:
        full = f"ln_final.{full}"
    return full


# ---- tensors ----------------------------------------------------------------------------------
def to_numpy(tensor: Any) -> np.ndarray:
    """A numpy array of a tensor (detached, on CPU; bfloat16 as float32), list, tuple, array or scalar."""
    if isinstance(tensor, np.ndarray):
        return tensor
    if isinstance(tensor, (list, tuple)):
        return np.array(tensor)
    if isinstance(tensor, Tensor):
        tensor = tensor.detach().cpu()
        return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()
    if isinstance(tensor, (int, float, bool, str)):
        return np.array(tensor)
    raise ValueError(f"to_numpy takes a tensor, array, list, tuple or scalar, got {type(tensor).__name__}.")


def get_corner(tensor: Any, n: int = 3) -> Any:
    """`tensor[:n, :n, ...]`: the first n entries of every dim (tensors, arrays and FactoredMatrices)."""
    return tensor[tuple(slice(n) for _ in range(tensor.ndim))]


def get_matrix_corner(matrix: BaseFactoredMatrix, n: int = 3) -> Float[Tensor, "..."]:
    """The dense `[:n, ..., :n]` corner of a FactoredMatrix (every dim sliced)."""
    return get_corner(FactoredMatrix.from_interp(matrix), n).AB


def remove_batch_dim(tensor: Float[Tensor, "1 ..."]) -> Float[Tensor, "..."]:
    """The tensor without its first dim if that dim has size 1, else the tensor unchanged."""
    return tensor.squeeze(0) if tensor.shape[0] == 1 else tensor


def transpose(tensor: Float[Tensor, "... a b"]) -> Float[Tensor, "... b a"]:
    """Swap the last two dims."""
    return tensor.transpose(-1, -2)


def is_square(x: Tensor) -> bool:
    """True for a 2-d tensor with as many rows as columns."""
    return x.ndim == 2 and x.shape[0] == x.shape[1]


def is_lower_triangular(x: Tensor) -> bool:
    """True for a square matrix with zeros above the diagonal."""
    return is_square(x) and x.equal(x.tril())


def check_structure(t1: Float[Tensor, "rows cols"], t2: Float[Tensor, "rows cols"], *, verbose: bool = False) -> None:
    """Print whether neighbouring rows and columns of t1 and t2 compare (>=) the same way (a debugging aid)."""
    if t1.ndim != 2 or t1.shape != t2.shape:
        raise ValueError(f"check_structure takes two 2-d tensors of one shape, got {tuple(t1.shape)} and "
                         f"{tuple(t2.shape)}.")
    mismatches = {}
    for axis, label in ((0, "rows"), (1, "columns")):
        if verbose:
            print(f"Checking {label}")
        mismatches[axis] = []
        for i in range(t1.shape[axis] - 1):
            first, second = (t.select(axis, i).ge(t.select(axis, i + 1)) for t in (t1, t2))
            if (first != second).any():
                mismatches[axis].append(i)
                if verbose:  # TL prints "rows" for columns too
                    print(f"\trows {i}:{i + 1}\n\tt1: {first.tolist()}\n\tt2: {second.tolist()}")
    if not mismatches[0] and not mismatches[1]:
        print("PASSED")
    elif mismatches[0]:
        print(f"row mismatch: {mismatches[0]}")
    else:
        print(f"column mismatch: {mismatches[1]}")


def get_offset_position_ids(past_kv_pos_offset: int, attention_mask: Int[Tensor, "batch offset_pos"]
                            ) -> Int[Tensor, "batch pos"]:
    """Position ids counting real tokens only (left padding gets 0), from `past_kv_pos_offset` on."""
    position_ids = attention_mask.cumsum(dim=1) - 1
    return position_ids.clamp_min(0)[:, past_kv_pos_offset:]


def repeat_along_head_dimension(tensor: Float[Tensor, "batch pos d_model"], n_heads: int,
                                clone_tensor: bool = True) -> Float[Tensor, "batch pos n_heads d_model"]:
    """The tensor repeated for each head (a copy unless clone_tensor=False, then a view)."""
    repeated = einops.repeat(tensor, "batch pos d_model -> batch pos n_heads d_model", n_heads=n_heads)
    return repeated.clone() if clone_tensor else repeated


def filter_dict_by_prefix(dictionary: dict, prefix: str) -> dict:
    """Entries whose key starts with `prefix` + "." (a trailing dot is added if missing), prefix removed."""
    start = prefix if prefix.endswith(".") else prefix + "."
    return {key[len(start):]: value for key, value in dictionary.items() if key.startswith(start)}


def get_nested_attr(obj: Any, attr_str: str) -> Any:
    """`obj.a.b.c` for attr_str "a.b.c"."""
    for attr in attr_str.split("."):
        obj = getattr(obj, attr)
    return obj


def set_nested_attr(obj: Any, attr_str: str, value: Any) -> None:
    """Set `obj.a.b.c = value` for attr_str "a.b.c"."""
    *path, last = attr_str.split(".")
    setattr(get_nested_attr(obj, ".".join(path)) if path else obj, last, value)


# ---- language-model metrics --------------------------------------------------------------------
def lm_cross_entropy_loss(logits: Float[Tensor, "batch pos d_vocab"], tokens: Int[Tensor, "batch pos"],
                          attention_mask: Optional[Union[Bool[Tensor, "batch pos"], Int[Tensor, "batch pos"]]] = None,
                          per_token: bool = False) -> Union[Float[Tensor, ""], Float[Tensor, "batch pos_minus_1"]]:
    """Next-token cross-entropy: logits at position i predict tokens[i + 1].

    per_token=True: `[batch, pos - 1]` negative log-probs. With `attention_mask` (1 = real token), a pair is
    counted only if both tokens are real; masked pairs are 0 per token and left out of the mean.
    """
    log_probs = F.log_softmax(logits, dim=-1)
    target_log_probs = log_probs[..., :-1, :].gather(-1, tokens[..., 1:, None])[..., 0]
    if attention_mask is None:
        n_pairs = target_log_probs.numel()
    else:
        if tuple(attention_mask.shape) != tuple(tokens.shape):
            raise ValueError(f"attention_mask {tuple(attention_mask.shape)} must have the shape of tokens "
                             f"{tuple(tokens.shape)}.")
        real = attention_mask.bool()
        pair_is_real = real[:, :-1] & real[:, 1:]
        target_log_probs = target_log_probs.masked_fill(~pair_is_real, 0.0)
        n_pairs = pair_is_real.sum().item()
    if per_token:
        return -target_log_probs
    return -target_log_probs.sum() / n_pairs


def lm_accuracy(logits: Float[Tensor, "batch pos d_vocab"], tokens: Int[Tensor, "batch pos"], per_token: bool = False
                ) -> Union[Float[Tensor, ""], Bool[Tensor, "batch pos_minus_1"]]:
    """Top-1 next-token accuracy: the fraction (or, per_token, `[batch, pos - 1]` booleans) of argmaxes equal
    to the next token."""
    correct = logits.argmax(dim=-1)[:, :-1] == tokens[:, 1:]
    return correct if per_token else correct.sum() / correct.numel()


# ---- activation functions ---------------------------------------------------------------------
def gelu_new(input: Float[Tensor, "batch pos d_mlp"]) -> Float[Tensor, "batch pos d_mlp"]:
    """GPT-2's tanh approximation of GELU."""
    return 0.5 * input * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (input + 0.044715 * torch.pow(input, 3.0))))


def gelu_fast(input: Float[Tensor, "batch pos d_mlp"]) -> Float[Tensor, "batch pos d_mlp"]:
    """The same tanh approximation of GELU, with the constant rounded and x³ factored."""
    return 0.5 * input * (1.0 + torch.tanh(input * 0.7978845608 * (1.0 + 0.044715 * input * input)))


def solu(input: Float[Tensor, "batch pos d_mlp"]) -> Float[Tensor, "batch pos d_mlp"]:
    """SoLU, x * softmax(x) over the last dim (Elhage et al. 2022, "Softmax Linear Units")."""
    return input * F.softmax(input, dim=-1)


# ---- Slice --------------------------------------------------------------------------------------
SliceInput = Optional[Union[int, Tuple[int], Tuple[int, int], Tuple[int, int, int], List[int], Tensor, np.ndarray]]


class Slice:
    """A selection along one dim that may drop it: an int indexes (the dim goes), a tuple is `slice(*tuple)`,
    a list / tensor / array picks those indices, None keeps everything. `Slice(...).apply(tensor, dim)`."""

    def __init__(self, input_slice: SliceInput = None):
        if isinstance(input_slice, tuple):
            self.slice, self.mode = slice(*input_slice), "slice"
        elif isinstance(input_slice, (int, np.integer)):
            self.slice, self.mode = int(input_slice), "int"
        elif isinstance(input_slice, slice):
            self.slice, self.mode = input_slice, "slice"
        elif isinstance(input_slice, (list, Tensor, np.ndarray)):
            self.slice, self.mode = to_numpy(input_slice), "array"
        elif input_slice is None:
            self.slice, self.mode = slice(None), "identity"
        else:
            raise ValueError(f"Invalid input_slice {input_slice!r}: use an int, a tuple (slice arguments), a slice, "
                             "a list / tensor / array of indices, or None.")

    def apply(self, tensor: Tensor, dim: int = 0) -> Tensor:
        """The tensor with this selection applied along `dim` (negative dims count from the end)."""
        index: list[Any] = [slice(None)] * tensor.ndim
        index[dim] = self.slice
        return tensor[tuple(index)]

    def indices(self, max_ctx: Optional[int] = None) -> np.ndarray:
        """The selected indices of an axis of size max_ctx (needed unless the mode is "int")."""
        if self.mode == "int":
            return np.array([self.slice], dtype=np.int64)
        if max_ctx is None:
            raise ValueError("max_ctx must be specified if slice is not an integer")
        return np.arange(max_ctx, dtype=np.int64)[self.slice]

    def __repr__(self) -> str:
        return f"Slice: {self.slice} Mode: {self.mode} "

    @classmethod
    def unwrap(cls, slice_input: Union[Slice, SliceInput]) -> Slice:
        """A Slice of any slice input; an int becomes [int], so the dim is kept."""
        if isinstance(slice_input, Slice):
            return slice_input
        return cls([slice_input] if isinstance(slice_input, int) else slice_input)


# ---- circuits ------------------------------------------------------------------------------------
def as_index(selection: SliceInput | Slice, what: str = "pos_slice") -> int | slice | Tensor:
    """(interp.tl helper, not TL API) The index a TL slice input names (`utils.Slice` rules): an int, a slice (a tuple gives slice(*tuple), None
    everything) or an index tensor (from a list, array or tensor of indices or a boolean mask)."""
    if isinstance(selection, (bool, np.bool_)):
        raise ValueError(f"{what}={selection!r} is a bool: give an int, a tuple, a slice, indices or None.")
    if not (hasattr(selection, "mode") and hasattr(selection, "slice")):  # not yet a Slice (ours or TL's)
        try:
            selection = Slice(selection)
        except ValueError:
            raise ValueError(f"Invalid {what} {selection!r}: give an int, a tuple (start, stop[, step]), a slice, a "
                             "list / tensor / array of indices, a utils.Slice or None.") from None
    index = selection.slice
    return torch.as_tensor(index) if isinstance(index, np.ndarray) else index


def take(tensor: Tensor, index: int | slice | Tensor, dim: int) -> Tensor:
    """`tensor` indexed by `index` along `dim` (an int index drops that axis)."""
    return tensor[(slice(None),) * (dim % tensor.ndim) + (index,)]


def composition_scores(left: BaseFactoredMatrix, right: BaseFactoredMatrix, broadcast_dims: bool = True
                       ) -> Float[Tensor, "..."]:
    """‖L R‖_F / (‖L‖_F ‖R‖_F) of two FactoredMatrices (Elhage et al. 2021, composition scores).

    broadcast_dims=True: left's leading dims come first and right's after, so `[l1..., r1...]` scores every
    pair; False: the leading dims broadcast against each other. Needs left.rdim == right.ldim.
    """
    left, right = FactoredMatrix.from_interp(left), FactoredMatrix.from_interp(right)
    if broadcast_dims:
        n_left, n_right = left.ndim - 2, right.ndim - 2
        for dim in range(n_left):
            right = right.unsqueeze(dim)
        for dim in range(n_right):
            left = left.unsqueeze(n_left + dim)
    if left.rdim != right.ldim:
        raise ValueError(f"Composition scores need left.rdim == right.ldim, got left {tuple(left.shape)} and "
                         f"right {tuple(right.shape)}.")
    left_core, right_core = left.collapse_l(), right.collapse_r()  # [..., k, rdim], [..., ldim, k]
    product_norm = (left_core @ right_core).norm(dim=(-2, -1))
    return product_norm / right_core.norm(dim=(-2, -1)) / left_core.norm(dim=(-2, -1))


# ---- environment ----------------------------------------------------------------------------------
def get_device() -> str:
    """"cuda" if available, else "cpu" ("mps" only with TRANSFORMERLENS_ALLOW_MPS=1, as TL)."""
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available() and os.environ.get("TRANSFORMERLENS_ALLOW_MPS", "") == "1":
        return "mps"
    return "cpu"


def is_library_available(name: str) -> bool:
    """Whether a package is importable, without importing it."""
    return name in sys.modules or importlib.util.find_spec(name) is not None


def download_file_from_hf(repo_name: str, file_name: str, subfolder: str = ".", cache_dir: Any = None,
                          force_is_torch: bool = False, **kwargs: Any) -> Any:
    """Not provided: interp.tl does not download files."""
    raise NotImplementedError(f"download_file_from_hf({repo_name!r}, {file_name!r}) is not part of interp.tl; "
                              "download with huggingface_hub.hf_hub_download and load the file yourself "
                              "(torch.load(path, weights_only=True) for tensors, json.load for configs).")


def get_dataset(dataset_name: str, **kwargs: Any) -> Any:
    """Not provided: interp.tl does not download data sets."""
    raise NotImplementedError(f"get_dataset({dataset_name!r}) is not part of interp.tl; load the data with "
                              "datasets.load_dataset(...) (pip install datasets), or pass a list of strings to "
                              "tokenize_and_concatenate.")
