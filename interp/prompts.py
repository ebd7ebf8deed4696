"""Prompt files for batch runs: their lines (plain text or JSON Lines) and their tokens, nothing dropped silently.

Text: UTF-8 (a UTF-8 byte-order mark is dropped), or UTF-16 / UTF-32 with a byte-order mark; lines end with
`\\n`, `\\r\\n` or a lone `\\r`. A file named `.jsonl` or `.json` (any case) is JSON Lines: one string or
`{"text"|"prompt": string}` per line; a file holding one JSON array is refused with the fix. Each unusable
line comes back as (line number, reason) for the caller to report or refuse.
"""

from __future__ import annotations

import codecs
import json
import math
import re
import weakref
from pathlib import Path
from typing import Any

import torch

from interp import tokens as tokens_module
from interp.model import HookedTransformer

JSONL_SUFFIXES = (".jsonl", ".json")
# UTF-32 first: its little-endian mark starts with UTF-16's.
WIDE_BOMS = ((codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"),
             (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_LINE_BREAK_BYTES = re.compile(rb"\r\n|\r|\n")

Lines = tuple[list[tuple[int, str]], list[tuple[int, str]]]  # (line number, text), (line number, problem)


# ----- lines -------------------------------------------------------------------------------------
def _split(data: Any, pattern: re.Pattern) -> list[Any]:
    lines = pattern.split(data)
    if lines and not lines[-1]:
        lines.pop()  # the file's final line break ends a line, it does not start one
    return lines


def _nul_problem(line: str) -> str | None:
    if "\x00" not in line:
        return None
    return (f"contains a NUL byte at column {line.index(chr(0)) + 1} (a binary file, or UTF-16 without a "
            "byte-order mark? save it as UTF-8 text)")


def text_lines(path: Path) -> Lines:
    """The lines of a text file, decoded; a line that is not text is a problem, not a prompt."""
    data = path.read_bytes()
    for bom, encoding in WIDE_BOMS:
        if data.startswith(bom):
            try:
                raw_lines = _split(data[len(bom):].decode(encoding), _LINE_BREAK)
            except UnicodeDecodeError as error:
                raise ValueError(f"{path} starts with a {encoding[:6].upper()} byte-order mark but is not valid "
                                 f"{encoding} (at byte {error.start + len(bom)}); re-save it as UTF-8.") from None
            break
    else:
        raw_lines = _split(data.removeprefix(codecs.BOM_UTF8), _LINE_BREAK_BYTES)
    lines, problems = [], []
    for number, raw in enumerate(raw_lines, start=1):
        try:
            line = raw if isinstance(raw, str) else raw.decode("utf-8")
        except UnicodeDecodeError as error:
            problems.append((number, f"not valid UTF-8 (byte {raw[error.start]:#04x} at column {error.start + 1})"))
            continue
        problem = _nul_problem(line)
        if problem:
            problems.append((number, problem))
            continue
        lines.append((number, line))
    return lines, problems


def _json_prompt(line: str) -> str:
    """The prompt of one JSON Lines line; ValueError saying what is wrong."""
    try:
        value = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"not valid JSON ({error.msg})") from None
    text = value.get("text", value.get("prompt")) if isinstance(value, dict) else value
    if not isinstance(text, str):
        raise ValueError('JSONL lines must be a string or an object with a "text" or "prompt" string')
    return text


def _refuse_json_array(path: Path, lines: list[tuple[int, str]]) -> None:
    if not lines or not lines[0][1].lstrip().startswith("["):
        return
    try:
        whole = json.loads("\n".join(line for _, line in lines))
    except json.JSONDecodeError:
        return
    if isinstance(whole, list):
        raise ValueError(f"{path} is one JSON array; prompt files hold one JSON value per line (JSON Lines): a "
                         'string or {"text": ...} on each line. Convert it with: python -c "import json, sys; '
                         f'[print(json.dumps(x)) for x in json.load(open(sys.argv[1]))]" {path} > prompts.jsonl')


def read_prompts(path: Path) -> Lines:
    """Prompts from a text file (one per line) or JSON Lines (`.jsonl`/`.json`, see the module docstring).

    Returns (prompts as (line number, text), problems as (line number, reason)); nothing is dropped
    silently. Each line is decoded on its own, so one bad byte costs one line. A file without one usable
    prompt is a ValueError listing the first problems.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Prompt file {path} does not exist.")
    lines, problems = text_lines(path)
    is_jsonl = path.suffix.lower() in JSONL_SUFFIXES
    if is_jsonl:
        _refuse_json_array(path, lines)
    prompts = []
    for number, line in lines:
        if is_jsonl and line.strip():
            try:
                line = _json_prompt(line)
            except ValueError as error:
                problems.append((number, str(error)))
                continue
        if not line.strip():
            problems.append((number, "empty line"))
            continue
        prompts.append((number, line))
    if not prompts:
        detail = "; ".join(f"line {n}: {why}" for n, why in sorted(problems)[:5]) or "the file is empty"
        raise ValueError(f"No usable prompts in {path} ({detail}).")
    return prompts, sorted(problems)


# ----- tokens ------------------------------------------------------------------------------------
_LONGEST_TOKEN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def longest_token_chars(tokenizer: Any) -> float:
    """An upper bound on the characters one token of `tokenizer` stands for (math.inf if its vocabulary
    cannot be listed). Computed once per tokenizer: the UTF-8 bytes of each decoded token, plus one for the
    space that decoding may drop."""
    try:
        return _LONGEST_TOKEN[tokenizer]
    except (KeyError, TypeError):
        pass
    try:
        ids = [[index] for index in range(len(tokenizer))]
        texts = tokenizer.batch_decode(ids) if hasattr(tokenizer, "batch_decode") else [tokenizer.decode(i) for i in ids]
        longest: float = max(len(text.encode("utf-8")) + 1 for text in texts)
    except (TypeError, AttributeError, ValueError):
        longest = math.inf
    try:
        _LONGEST_TOKEN[tokenizer] = longest
    except TypeError:
        pass  # not weak-referenceable: computed again next time
    return longest


def tokenize_prompts(model: HookedTransformer, prompts: list[tuple[int, str]]) -> tuple[list[torch.Tensor], list[tuple[int, str]]]:
    """Token ids (with BOS) of each prompt that fits the context; the rest as (line, reason). Never truncates.

    A line longer than n_ctx x the longest token (in characters) cannot fit, so it is skipped without
    being tokenised: a multi-megabyte line costs nothing.
    """
    if model.tokenizer is None:
        raise ValueError("This model has no tokenizer, so it cannot score text prompts; use --random-repeated, "
                         "or a model directory with tokenizer files.")
    n_ctx = model.cfg.n_ctx
    max_chars = n_ctx * longest_token_chars(model.tokenizer)
    sequences, problems = [], []
    for number, text in prompts:
        if len(text) > max_chars:
            problems.append((number, f"{len(text):,} characters, more than {n_ctx} tokens of this tokenizer can "
                                     f"hold ({max_chars:,}), so longer than the model's context n_ctx={n_ctx} "
                                     "(split it into shorter lines)"))
            continue
        tokens, _ = tokens_module.to_tokens(model.tokenizer, text, model._prepend_bos(None), model.cfg.bos_token_id)
        if tokens.shape[1] > n_ctx:
            problems.append((number, f"{tokens.shape[1]} tokens, longer than the model's context "
                                     f"n_ctx={n_ctx} (split it into shorter lines)"))
            continue
        sequences.append(tokens[0])
    return sequences, problems
