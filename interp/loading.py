"""Loading weights of any supported family (see `interp.adapters`), from the hub, a directory, a file or memory: config, state dict and tokenizer.

Weights are read with safetensors (memory-mapped) or `torch.load(weights_only=True)`: no code is
ever unpickled. Loading returns data and never imports the model (layers import only downward);
`HookedTransformer.from_pretrained` builds the model on the meta device and assigns the loaded
tensors to it (reshaped as views), so a load holds one copy of the weights, not two.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from interp import adapters
from interp.config import Config
from interp.files import read_json

DATA_DIR = Path(__file__).parent / "data"
BUNDLED_MODELS = {"interp-toy": DATA_DIR / "interp-toy", "interp-toy-llama": DATA_DIR / "interp-toy-llama"}
HUB_MODELS = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "distilgpt2")
HUB_FILES = ["config.json", "model*.safetensors", "model.safetensors.index.json", "tokenizer.json", "vocab.json", "merges.txt",
             "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model"]
WEIGHT_SUFFIXES = (".bin", ".pt", ".pth")
SHARD_INDEX = "model.safetensors.index.json"
TOKENIZER_JSON_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "special_tokens_map.json")
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}

def convert_hf_state_dict(hf_state: dict[str, Tensor], cfg: Config) -> dict[str, Tensor]:
    """Map a `transformers` state dict of the config's family to interp names (see `interp.adapters`), checking
    every name and shape. Raises ValueError naming every missing, unexpected or mis-shaped tensor."""
    return adapters.to_interp(hf_state, cfg)


class Loaded(NamedTuple):
    """What loading returns: data, never a model (`HookedTransformer.from_pretrained` builds one)."""

    cfg: Config
    state: dict[str, Tensor]  # interp names -> tensors (views of the checkpoint's, converted once)
    tokenizer: Any


def load_weights(source: Any, *, tokenizer: Any = None, config: Any = None, device: Any = None,
                 dtype: torch.dtype | str | None = None) -> Loaded:
    """Config, interp-named state dict and tokenizer of a checkpoint of a supported family (`interp.adapters`).

    source: a bundled name ("interp-toy"), a hub id ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl",
    "distilgpt2" or "org/name"), a `save_pretrained` directory, a `.safetensors`/`.bin` file (its
    config from `config=` or a config.json beside it), or an in-memory `transformers` causal LM
    (its weights are copied; the transformers model is left untouched).
    config: a `Config`, a `transformers` config (GPT2Config, LlamaConfig, ...), dict or path to config.json. dtype: fp32/bf16/fp16.
    """
    return _load_raw(source, tokenizer, config, device, _dtype(dtype))


def processing_steps(process: bool, **flags: bool | None) -> dict[str, bool | None]:
    """The processing flags to pass on: a step's own flag, else None (= where valid) with `process`, else False."""
    return {step: (None if process else False) if flag is None else flag for step, flag in flags.items()}


def _load_raw(source: Any, tokenizer: Any, config: Any, device: Any, dtype: torch.dtype | None) -> Loaded:
    if hasattr(source, "state_dict") and hasattr(source, "config"):
        cfg = _config(config or source.config, getattr(source.config, "name_or_path", "") or "custom")
        hf_state = {name: tensor.detach().clone() for name, tensor in source.state_dict().items()}
        return _finish(cfg, hf_state, tokenizer, device, dtype, f"the in-memory {type(source).__name__}")
    if not isinstance(source, (str, Path)):
        raise TypeError(f"from_pretrained takes a name, path or transformers model, got {type(source).__name__}.")
    name = str(source)
    path = BUNDLED_MODELS.get(name, Path(name).expanduser())
    if not path.exists():
        if name in BUNDLED_MODELS:
            raise FileNotFoundError(f"The bundled model {name!r} is missing from {path}; reinstall interp.")
        if looks_local(name):
            raise FileNotFoundError(_missing_path_message(name, path))
        path = _from_hub(name)
    if path.is_dir():
        cfg = _config(config or path / "config.json", name)
        weights_file = _weights_file(path)
        if tokenizer is None:
            tokenizer = _tokenizer_from(path)
    else:
        weights_file = path
        config_source = config or path.parent / "config.json"
        if not config and not Path(config_source).exists():
            raise ValueError(f"No config for {path}: pass config= (a transformers config such as GPT2Config(...), or a "
                             "config.json path), "
                             f"or put config.json beside the weights.")
        cfg = _config(config_source, name)
    return _finish(cfg, read_weights(weights_file), tokenizer, device, dtype, str(weights_file))


def looks_local(name: str) -> bool:
    """Whether a model name that does not exist was meant as a local path, not a hub id: it starts with
    '.', '/', '~' or '\\', ends in a weights or config suffix, or its first folder exists here."""
    path = Path(name).expanduser()
    return (name.startswith((".", "/", "~", "\\")) or path.suffix in (".safetensors", *WEIGHT_SUFFIXES, ".json")
            or (len(path.parts) > 1 and Path(path.parts[0]).exists()))


def _missing_path_message(name: str, path: Path) -> str:
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    hint = ""
    if existing.is_dir() and existing == path.parent:
        close = difflib.get_close_matches(path.name, [entry.name for entry in existing.iterdir()], n=3, cutoff=0.5)
        hint = f" Did you mean {[str(existing / c) for c in close]}?" if close else ""
    return (f"No such file or directory: {name!r} (the nearest existing folder is {str(existing)!r}).{hint} "
            "Check the path; hub ids look like 'gpt2' or 'org/name'.")


def read_weights(path: Path) -> dict[str, Tensor]:
    """Tensors from a .safetensors file (memory-mapped), a sharded one's index, or a .bin/.pt file (`weights_only=True`).

    A damaged file, or one holding Python objects other than tensors, raises ValueError naming it;
    pickled objects are never unpickled (that could run code).
    """
    if path.name.endswith(".safetensors.index.json"):
        return read_sharded_weights(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as file:
                return {name: file.get_tensor(name) for name in file.keys()}
        except (SafetensorError, OSError) as error:  # a truncated or rewritten file, or not safetensors at all
            raise ValueError(f"The weights file {path} is damaged or not a safetensors file ({error}); "
                             "download or save it again.") from None
    if path.suffix in WEIGHT_SUFFIXES:
        import pickle
        import zipfile

        mappable = zipfile.is_zipfile(path)  # torch.save's format since 1.6; older pickles cannot be mmapped
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=mappable)
        except pickle.UnpicklingError:  # torch's message advises weights_only=False, which would run the code
            raise ValueError(
                f"{path} holds Python objects other than tensors, so it was not loaded: unpickling them could run "
                "code. Only state dicts of tensors are read; if you trust the file's source, convert it to "
                "safetensors where it was made.") from None
        except (RuntimeError, EOFError) as error:
            raise ValueError(f"The weights file {path} is damaged or not a PyTorch checkpoint ({error}); "
                             "download or save it again.") from None
        if not isinstance(state, dict) or not all(isinstance(value, Tensor) for value in state.values()):
            raise ValueError(f"{path} does not hold a state dict of tensors (name -> Tensor).")
        return state
    raise ValueError(f"Unknown weights format {path.suffix!r} for {path}; use .safetensors (preferred) or .bin.")


def _finish(cfg: Config, hf_state: dict[str, Tensor], tokenizer: Any, device: Any, dtype: torch.dtype | None,
            source: str) -> Loaded:
    for name in list(hf_state):  # convert one tensor at a time, so two full copies never coexist
        original = hf_state[name]
        hf_state[name] = original.to(device=device, dtype=dtype or original.dtype)
        check_finite(name, hf_state[name], original, source)
    return Loaded(cfg, convert_hf_state_dict(hf_state, cfg), tokenizer)


def check_finite(name: str, tensor: Tensor, original: Tensor, source: str) -> None:
    """Refuse a weight holding NaN or inf (a damaged checkpoint, or an overflow when converting dtype)."""
    if not tensor.is_floating_point():
        return
    # A NaN or inf anywhere makes the sum non-finite, so a finite sum proves every element finite in one fast pass
    # (torch.isfinite is ~100x slower on CPU); only a non-finite sum (a real NaN/inf, or an overflowing sum) pays
    # for the exact check.
    if bool(torch.isfinite(tensor.sum(dtype=torch.float32 if tensor.element_size() < 4 else None))):
        return
    if bool(torch.isfinite(tensor).all()):
        return
    n_nan, n_inf = int(torch.isnan(tensor).sum()), int(torch.isinf(tensor).sum())
    overflowed = original.dtype != tensor.dtype and bool(torch.isfinite(original).all())
    fix = (f"its values overflow {tensor.dtype}: load it in float32 or bfloat16" if overflowed
           else "the checkpoint is damaged: download or save it again")
    raise ValueError(f"Weight {name!r} of {source} holds {n_nan} NaN and {n_inf} inf values "
                     f"(of {tensor.numel()}); {fix}.")


def _dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"Unknown dtype {dtype!r}; use one of {sorted(DTYPES)} or a torch.dtype.")
    return DTYPES[dtype]


def _config(source: Any, model_name: str) -> Config:
    if isinstance(source, Config):
        return source
    if isinstance(source, (str, Path)):
        path_text = str(source)
        if not Path(source).exists():
            raise FileNotFoundError(f"No config.json at {source}; pass config= or save the model with save_pretrained.")
        source = read_json(source, "config", "pass the config.json saved with these weights (save_pretrained writes it)")
        if not isinstance(source, dict):
            raise ValueError(f"The config file {path_text} holds {type(source).__name__}, not a JSON object; "
                             "pass the config.json saved with these weights.")
    return adapters.config_from_hf(source, model_name=model_name)


def _weights_file(directory: Path) -> Path:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (directory / name).exists():
            return directory / name
    if (directory / SHARD_INDEX).exists():
        return directory / SHARD_INDEX
    if (directory / "pytorch_model.bin.index.json").exists():
        raise ValueError(f"{directory} holds a sharded .bin checkpoint; interp reads sharded safetensors. Re-save it "
                         "with save_pretrained(dir) (safetensors is the default) where it was made.")
    raise FileNotFoundError(f"No model.safetensors, {SHARD_INDEX} or pytorch_model.bin in {directory}.")


def read_sharded_weights(index_path: Path) -> dict[str, Tensor]:
    """Tensors of a sharded safetensors checkpoint (`model.safetensors.index.json` and its shards), each
    shard memory-mapped, so the load still holds one copy. ValueError naming the file for a damaged index,
    a missing shard, or a tensor the index lists but its shard lacks."""
    fix = "download or save the checkpoint again"
    index = read_json(index_path, "shard index", fix)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ValueError(f"The shard index {index_path} is damaged (no weight_map of tensor -> file); {fix}.")
    by_file: dict[str, list[str]] = {}
    for name, file_name in weight_map.items():
        by_file.setdefault(file_name, []).append(name)
    state: dict[str, Tensor] = {}
    for file_name, names in sorted(by_file.items()):
        shard_path = index_path.parent / file_name
        if not shard_path.is_file():
            raise FileNotFoundError(f"The shard {shard_path} listed in {index_path} is missing; {fix}.")
        shard = read_weights(shard_path)
        missing = [name for name in names if name not in shard]
        if missing:
            raise ValueError(f"The shard {shard_path} lacks {missing[:5]} that {index_path} lists there; {fix}.")
        state.update({name: shard[name] for name in names})
    return state


def _tokenizer_from(directory: Path) -> Any:
    if not ((directory / "tokenizer.json").exists() or (directory / "vocab.json").exists()):
        return None
    from transformers import AutoTokenizer

    fix = "fix or delete the tokenizer files, or pass tokenizer= (or load with tokenizer=None for token ids only)"
    for name in TOKENIZER_JSON_FILES:  # damaged JSON gets a message naming the file, not the parser's line/column
        if (directory / name).exists():
            read_json(directory / name, "tokenizer", fix)
    try:
        return AutoTokenizer.from_pretrained(str(directory))
    except Exception as error:  # tokenizers and transformers raise many types for unreadable files
        raise ValueError(f"The tokenizer in {directory} could not be read ({type(error).__name__}: {error}); "
                         f"{fix}.") from None


def _from_hub(name: str) -> Path:
    """Download (or find in the local cache) a hub model's config, weights and tokenizer."""
    if name not in HUB_MODELS and "/" not in name:
        close = difflib.get_close_matches(name, [*BUNDLED_MODELS, *HUB_MODELS], n=3, cutoff=0.5)
        hint = f" Did you mean {close}?" if close else ""
        raise KeyError(f"Unknown model {name!r}.{hint} Known names: {[*BUNDLED_MODELS, *HUB_MODELS]}; "
                       "or pass a local directory saved with save_pretrained, or a .safetensors file.")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, allow_patterns=HUB_FILES, etag_timeout=10))
    except Exception as error:  # network and hub errors come in many types; all mean the same here
        raise OSError(
            f"Could not get {name!r} from the Hugging Face Hub ({type(error).__name__}). Without network access, "
            f"pass a local directory instead: on a machine with access run "
            f"AutoModelForCausalLM.from_pretrained({name!r}).save_pretrained('DIR') (and the tokenizer), copy DIR here, "
            f"then HookedTransformer.from_pretrained('DIR')."
        ) from error
