"""TransformerLens's quick evaluations (`transformer_lens.evals`), the parts that run offline: a one-prompt sanity
loss, the repeated-random-tokens induction loss, the mean loss over a data loader, and the IOI (indirect object
identification) logit difference of Wang et al. 2022, "Interpretability in the Wild".

The data-set loaders (Wikitext, OpenWebText, the Pile, CodeParrot, MMLU) download from the Hugging Face Hub;
here they raise `DownloadNeeded`, which says how to pass your own data to `evaluate_on_dataset` instead.
Randomness as in TL: `induction_loss` draws from torch's global generator, `IOIDataset(seed=...)` seeds
Python's global `random` (as TL does) and then makes the same draws in the same order, so a seed gives TL's samples.
"""

from __future__ import annotations

import random
from typing import Any, Optional, Union

import einops
import torch
from jaxtyping import Float
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from interp.model import HookedTransformer

# The first paragraph of "Zoom In: An Introduction to Circuits" (Olah et al. 2020), TL's sanity-check text.
SANITY_CHECK_TEXT = ("Many important transition points in the history of science have been moments when science "
                     "'zoomed in.' At these points, we develop a visualization or tool that allows us to see the "
                     "world in a new level of detail, and a new field of science develops to study the world "
                     "through this lens.")


def sanity_check(model: HookedTransformer) -> Float[Tensor, ""]:
    """The model's mean next-token loss on `SANITY_CHECK_TEXT`: under about 5 a trained model is probably fine,
    over 7 something is wrong."""
    return model(SANITY_CHECK_TEXT, return_type="loss")


# ----- loaders that need downloads -----------------------------------------------------------------
class DownloadNeeded(RuntimeError):
    """The function downloads a data set, which interp.tl does not do."""


def _needs_download(function: str, dataset: str) -> DownloadNeeded:
    return DownloadNeeded(
        f"{function} downloads {dataset} from the Hugging Face Hub (TransformerLens uses the `datasets` package "
        "and the network for it); interp.tl works offline and does not download data. Load the data yourself "
        "(pip install datasets; datasets.load_dataset(...)), tokenise it into rows of equal length, and pass a "
        "DataLoader of {'tokens': [batch, pos]} batches to evaluate_on_dataset(model, data_loader).")


def make_wiki_data_loader(tokenizer: Any, batch_size: int = 8) -> DataLoader:
    """Raises DownloadNeeded (TL loads Wikitext-2 here)."""
    raise _needs_download("make_wiki_data_loader", "Wikitext-2 ('wikitext', 'wikitext-2-v1')")


def make_owt_data_loader(tokenizer: Any, batch_size: int = 8) -> DataLoader:
    """Raises DownloadNeeded (TL loads 10k OpenWebText documents here)."""
    raise _needs_download("make_owt_data_loader", "OpenWebText ('stas/openwebtext-10k')")


def make_pile_data_loader(tokenizer: Any, batch_size: int = 8) -> DataLoader:
    """Raises DownloadNeeded (TL loads 10k documents of the Pile here)."""
    raise _needs_download("make_pile_data_loader", "the Pile ('NeelNanda/pile-10k')")


def make_code_data_loader(tokenizer: Any, batch_size: int = 8) -> DataLoader:
    """Raises DownloadNeeded (TL loads CodeParrot's validation set here)."""
    raise _needs_download("make_code_data_loader", "CodeParrot ('codeparrot/codeparrot-valid-v2-near-dedup')")


def make_mmlu_data_loader(subjects: Optional[Union[str, list[str]]] = None, split: str = "test",
                          num_samples: Optional[int] = None) -> list[dict]:
    """Raises DownloadNeeded (TL loads MMLU here)."""
    raise _needs_download("make_mmlu_data_loader", "MMLU ('cais/mmlu')")


def mmlu_eval(model: HookedTransformer, tokenizer: Any = None, subjects: Optional[Union[str, list[str]]] = None,
              split: str = "test", num_samples: Optional[int] = None) -> dict[str, Any]:
    """Raises DownloadNeeded (TL's MMLU evaluation needs the MMLU download)."""
    raise _needs_download("mmlu_eval", "MMLU ('cais/mmlu')")


DATASET_NAMES = ["wiki", "owt", "pile", "code"]
DATASET_LOADERS = [make_wiki_data_loader, make_owt_data_loader, make_pile_data_loader, make_code_data_loader]


def evaluate(model: HookedTransformer, truncate: int = 100, batch_size: int = 8, tokenizer: Any = None) -> dict:
    """Raises DownloadNeeded (TL evaluates on the four downloaded data sets of DATASET_NAMES)."""
    raise _needs_download("evaluate", "Wikitext-2, OpenWebText, the Pile and CodeParrot")


# ----- evaluations --------------------------------------------------------------------------------
def _device(model: HookedTransformer, device: Any) -> Any:
    return model.W_E.device if device is None else device


@torch.inference_mode()
def evaluate_on_dataset(model: HookedTransformer, data_loader: Any, truncate: int = 100, device: Any = None) -> float:
    """Mean over batches of the model's loss on `batch["tokens"]`, stopping after `truncate + 1` batches (as TL).

    device: where the tokens go (None: the model's device; TL's default is "cuda").
    """
    running_loss, total = 0.0, 0
    for batch in tqdm(data_loader):
        running_loss += model(batch["tokens"].to(_device(model, device)), return_type="loss").mean().item()
        total += 1
        if total > truncate:
            break
    if total == 0:
        raise ValueError("data_loader yielded no batches; pass a loader of {'tokens': [batch, pos]} batches.")
    return running_loss / total


@torch.inference_mode()
def induction_loss(model: HookedTransformer, tokenizer: Any = None, batch_size: int = 4, subseq_len: int = 384,
                   prepend_bos: Optional[bool] = None, device: Any = None) -> Float[Tensor, ""]:
    """Mean loss on the second copy of `batch_size` random token sequences repeated twice: low when the model has
    induction heads (Olsson et al. 2022, "In-context Learning and Induction Heads").

    Tokens are `torch.randint(100, 20000, (batch_size, subseq_len))` from torch's global generator (the upper
    bound is d_vocab if smaller; TL fails there), repeated to `2 * subseq_len`. With BOS (`prepend_bos`, default
    the model's `cfg.default_prepend_bos`, else True) the *first* token is replaced by the BOS id, as in TL, and
    the loss is the mean over predictions of positions subseq_len + 2 .. 2 * subseq_len - 1 (0-based targets).
    """
    high = min(20000, model.cfg.d_vocab)
    if high <= 100:
        raise ValueError(f"induction_loss draws token ids from [100, 20000); this model has only d_vocab="
                         f"{model.cfg.d_vocab}.")
    first_half = torch.randint(100, high, (batch_size, subseq_len)).to(_device(model, device))
    tokens = einops.repeat(first_half, "batch pos -> batch (copy pos)", copy=2)
    if prepend_bos is None:
        prepend_bos = getattr(model.cfg, "default_prepend_bos", True)
    if prepend_bos:
        tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
        bos = getattr(tokenizer, "bos_token_id", None) if tokenizer is not None else getattr(model.cfg, "bos_token_id", None)
        if bos is None:
            raise ValueError("induction_loss puts a BOS token first, but neither the tokenizer nor the config has a "
                             "bos_token_id; pass prepend_bos=False or a tokenizer with one.")
        tokens[:, 0] = bos
    logits = model(tokens, return_type="logits")
    log_probs = logits.log_softmax(-1)[:, :-1].gather(-1, tokens[:, 1:, None])[..., 0]
    return -log_probs[:, subseq_len + 1:].mean()


class IOIDataset(Dataset):
    """Indirect object identification prompts: "[A] and [B] went to ... [B] gave the [OBJECT] to" -> " [A]".

    Each sample is a template with its nouns and two distinct names filled in; the text ends with the indirect
    object (IO, name A) and `S` is the subject (name B). seed: seeds Python's global `random` first (as TL);
    None draws from its current state. symmetric: each draw also yields the sample with the names swapped
    (num_samples // 2 draws). Items: {"prompt": ids (BOS first if prepend_bos), "IO": ids of " A", "S": ids of " B"}.
    """

    def __init__(self, tokenizer: Any, templates: Optional[list[str]] = None, names: Optional[list[str]] = None,
                 nouns: Optional[dict[str, list[str]]] = None, num_samples: int = 1000, symmetric: bool = False,
                 prepend_bos: bool = True, seed: Optional[int] = None) -> None:
        self.tokenizer, self.prepend_bos = tokenizer, prepend_bos
        if seed is not None:
            random.seed(seed)
        self.templates = templates if templates is not None else self.get_default_templates()
        self.names = names if names is not None else self.get_default_names()
        self.nouns = nouns if nouns is not None else self.get_default_nouns()
        if len(self.names) < 2:
            raise ValueError(f"IOIDataset needs at least two names to choose from, got {self.names}.")
        self.samples: list[dict[str, str]] = []
        for _ in range(num_samples // 2 if symmetric else num_samples):
            self.samples.extend(self.get_sample(symmetric=symmetric))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, idx: int) -> dict[str, Tensor]:
        sample = self.samples[idx]
        prompt = self.tokenizer.encode(sample["text"])
        if self.prepend_bos:
            prompt = [self.tokenizer.bos_token_id] + list(prompt)
        return {"prompt": torch.LongTensor(prompt), "IO": torch.LongTensor(self.tokenizer.encode(sample["IO"])),
                "S": torch.LongTensor(self.tokenizer.encode(sample["S"]))}

    def get_sample(self, symmetric: bool = False) -> list[dict[str, str]]:
        """One draw: a template, one noun per placeholder (in `nouns` order), then two names without replacement."""
        template = random.choice(self.templates)
        for placeholder, choices in self.nouns.items():
            template = template.replace(f"[{placeholder}]", random.choice(choices))
        first, second = random.sample(self.names, 2)
        orders = [(first, second), (second, first)] if symmetric else [(first, second)]
        return [{"text": template.replace("[A]", io).replace("[B]", subject), "IO": " " + io, "S": " " + subject}
                for io, subject in orders]

    @staticmethod
    def get_default_names() -> list[str]:
        return ["John", "Mary"]

    @staticmethod
    def get_default_templates() -> list[str]:
        return ["[A] and [B] went to the [LOCATION] to buy [OBJECT]. [B] handed the [OBJECT] to [A]",
                "Then, [B] and [A] went to the [LOCATION]. [B] gave the [OBJECT] to [A]"]

    @staticmethod
    def get_default_nouns() -> dict[str, list[str]]:
        return {"LOCATION": ["store", "market"], "OBJECT": ["milk", "eggs", "bread"]}


def _collate(samples: list[dict[str, Tensor]]) -> dict[str, Any]:
    prompts = [sample["prompt"] for sample in samples]
    return {"prompt": torch.nn.utils.rnn.pad_sequence(prompts, batch_first=True),  # right-padded with 0
            "IO": [sample["IO"] for sample in samples], "S": [sample["S"] for sample in samples],
            "prompt_length": [len(prompt) for prompt in prompts]}


@torch.inference_mode()
def ioi_eval(model: HookedTransformer, dataset: Any = None, batch_size: int = 8, num_samples: int = 1000,
             tokenizer: Any = None, symmetric: bool = False) -> dict[str, float]:
    """{"Logit Difference": mean of logit(IO) - logit(S), "Accuracy": fraction where it is > 0} over `dataset`
    (default: a fresh unseeded `IOIDataset` of `num_samples`).

    The logits are read where the model predicts the first token at which the IO and S names differ (after any
    shared leading tokens), i.e. one position before it in the prompt, which ends with the IO name. Batches are
    shuffled (torch's generator) and right-padded, which causal attention makes harmless.
    """
    tokenizer = tokenizer if tokenizer is not None else model.tokenizer
    if dataset is None:
        dataset = IOIDataset(tokenizer, num_samples=num_samples, symmetric=symmetric)
    total_correct, total_logit_diff = 0, 0.0
    for batch in tqdm(DataLoader(dataset, batch_size=batch_size, shuffle=True, collate_fn=_collate)):
        logits = model(batch["prompt"], return_type="logits")
        for row, (io, subject) in enumerate(zip(batch["IO"], batch["S"])):
            shared = min(len(io), len(subject))
            differs = (io[:shared] != subject[:shared]).nonzero()
            if len(differs) == 0:
                raise ValueError(f"The names {io.tolist()} and {subject.tolist()} (token ids) agree on every token "
                                 "the shorter one has, so no position tells them apart; use names whose tokens differ.")
            first = int(differs[0])
            position = batch["prompt_length"][row] - len(io) + first - 1
            logit_diff = logits[row, position, io[first]] - logits[row, position, subject[first]]
            total_correct += int(logit_diff > 0)
            total_logit_diff += logit_diff.item()
    return {"Logit Difference": total_logit_diff / len(dataset), "Accuracy": total_correct / len(dataset)}
