"""JSONL datasets (text, prompt/completion, chat), the built-in synthetic task, tokenising and batching."""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tui_tuner.format import first_line, json_problem, utf8_problem
from tui_tuner.preset import BUILTIN_DATA, BUILTIN_MARKOV

log = logging.getLogger(__name__)


class DataError(ValueError):
    """A dataset that cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class Example:
    ids: list[int]
    prompt_len: int  # tokens [0, prompt_len) are prompt: weighted by prompt_loss_weight


def progressions(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Arithmetic progressions mod 100 as prompt/completion pairs: learnable by a tiny model in ~100s of steps."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, d = rng.randrange(100), rng.randrange(1, 10)
        seq = [(a + i * d) % 100 for i in range(10)]
        rows.append({"prompt": f"{a}+{d}:", "completion": " " + " ".join(map(str, seq))})
    return rows


MARKOV_LETTERS = "abcdefghijklmnopqrst"
MARKOV_PROBS = (0.7, 0.2, 0.1)  # each letter's three successors: ~0.80 nats a letter is the floor


def markov_chain(seed: int = 0) -> dict[str, list[str]]:
    """Each letter's three successors, most likely first: a fixed random table (the task, not the sample)."""
    rng = random.Random(seed)
    return {c: rng.sample(MARKOV_LETTERS, len(MARKOV_PROBS)) for c in MARKOV_LETTERS}


def markov(n: int, seed: int = 0, length: int = 24) -> list[dict[str, str]]:
    """Walks of a fixed first-order Markov chain over 20 letters as prompt/completion pairs. Unlike progressions,
    which a model learns in jumps (one step size at a time, at a seed-dependent step), every letter's successors
    are learnt a little at each step: the eval loss is a smooth function of the hyperparameters, with little seed
    noise (benchmarks/task_noise.py)."""
    chain, rng = markov_chain(), random.Random(seed)
    rows = []
    for _ in range(n):
        walk = [rng.choice(MARKOV_LETTERS)]
        for _ in range(length):
            walk.append(rng.choices(chain[walk[-1]], MARKOV_PROBS)[0])
        rows.append({"prompt": walk[0] + ":", "completion": "".join(walk[1:])})
    return rows


_BUILTIN_ROWS = {BUILTIN_DATA: lambda: progressions(2000), BUILTIN_MARKOV: lambda: markov(4000)}


class Records(list[dict[str, Any]]):
    """A JSONL file's rows with the line each came from (blank lines are skipped), so errors can name it."""

    def __init__(self, rows: list[dict[str, Any]], lines: list[int]):
        super().__init__(rows)
        self.lines = lines


def load_records(path: str) -> list[dict[str, Any]]:
    if path in _BUILTIN_ROWS:
        return _BUILTIN_ROWS[path]()
    rows, lines, problems = [], [], []
    # Bytes, decoded a line at a time: a non-UTF-8 line is then one more bad line named like the others.
    with Path(path).open("rb") as f:
        for i, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                problems.append(utf8_problem(e, path, i))
                continue
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                problems.append(json_problem(e, path, i))
                continue
            if not isinstance(row, dict):
                problems.append(f"{path}:{i}: each line must be a JSON object")
                continue
            rows.append(row)
            lines.append(i)
    _raise_problems(problems, path)
    if not rows:
        raise DataError(f"{path}: no records")
    return Records(rows, lines)


def _raise_problems(problems: list[str], path: str, summary: str | None = None) -> None:
    """At most 10 lines (after an optional summary line): a file that is wrong throughout should not flood the
    terminal."""
    if problems:
        more = f"\n{path}: ... and {len(problems) - 10} more bad lines" if len(problems) > 10 else ""
        raise DataError("\n".join(([summary] if summary else []) + problems[:10]) + more)


def detect_format(rows: list[dict[str, Any]], declared: str, source: str) -> str:
    """The declared format, or the one the first row's keys say (check_rows then checks every row)."""
    return declared if declared != "auto" else _format_of(rows[0], source)


def _format_of(row: dict[str, Any], source: str) -> str:
    keys = set(row)
    if "messages" in keys:
        return "chat"
    if {"prompt", "completion"} <= keys:
        return "prompt_completion"
    if "text" in keys:
        return "text"
    raise DataError(
        f"{source}: cannot tell the format from keys {sorted(keys)}: need text, prompt/completion or messages"
    )


def check_rows(rows: list[dict[str, Any]], fmt: str, source: str) -> None:
    """Every record's shape for `fmt` (cheap: no tokenizer), all problems at once."""
    problems = []
    for i, row in enumerate(rows):
        problem = row_problem(row, fmt)
        if problem:
            problems.append(f"{_where(rows, i, source)}: {problem}")
    _raise_problems(problems, source)


def row_problem(row: dict[str, Any], fmt: str) -> str | None:
    """What is wrong with one record for `fmt`, or None."""
    fields = {"text": ("text",), "prompt_completion": ("prompt", "completion")}.get(fmt)
    if fields is not None:
        for key in fields:
            if key not in row:
                return f"missing key '{key}' for format {fmt}"
            if not isinstance(row[key], str):
                return f"'{key}' must be a string (got {type(row[key]).__name__})"
        # An empty answer trains on the end-of-sequence token alone (and empty text on nothing at all).
        return _empty(fields[-1]) if not row[fields[-1]].strip() else None
    if "messages" not in row:
        return "missing key 'messages' for format chat"
    messages = row["messages"]
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty list of {\"role\", \"content\"} objects"
    for j, m in enumerate(messages):
        if not isinstance(m, dict):
            return f"messages[{j}] must be an object with 'role' and 'content' (got {type(m).__name__})"
        for key in ("role", "content"):
            if not isinstance(m.get(key), str):
                what = "missing" if key not in m else f"not a string ({type(m[key]).__name__})"
                return f"messages[{j}].{key} is {what}"
    if messages[-1]["role"] == "assistant" and not messages[-1]["content"].strip():
        return _empty(f"messages[{len(messages) - 1}].content (the final assistant turn)")
    return None


def _empty(what: str) -> str:
    return f"{what} is empty: nothing to learn but the end of the sequence"


def _where(rows: list[dict[str, Any]], i: int, source: str) -> str:
    """'file:line' for rows read by load_records, else the record's position."""
    lines = rows.lines if isinstance(rows, Records) else None
    return f"{source}:{lines[i]}" if lines else f"{source}: record {i + 1}"


def tokenize(rows: list[dict[str, Any]], fmt: str, tokenizer: Any, max_length: int, source: str) -> list[Example]:
    """Token ids plus the prompt length; an EOS ends each example so the model learns to stop. Prompts that fill
    `max_length` are errors (all at once); examples cut to `max_length` are counted in one logged warning."""
    # Every row's shape first: a malformed row is an error naming its line, not a KeyError mid-way.
    check_rows(rows, fmt, source)
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    out, too_long, cut, longest = [], [], 0, 0
    for i, row in enumerate(rows):
        try:
            prompt, completion = _split(row, fmt, tokenizer)
        except Exception as e:  # the chat template's own checks (Jinja raises its TemplateError, roles order...)
            raise DataError(f"{_where(rows, i, source)}: chat template failed: {first_line(e)}") from None
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
        c_ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + eos
        if prompt and len(p_ids) >= max_length:
            # Cut to max_length, the example would keep no completion token: no loss (or the prompt's alone).
            too_long.append(f"{_where(rows, i, source)}: the prompt is {len(p_ids)} tokens, data.max_length is "
                            f"{max_length}: nothing of the completion is left to learn")
            continue
        cut += len(p_ids) + len(c_ids) > max_length
        longest = max(longest, len(p_ids) + len(c_ids))
        ids = (p_ids + c_ids)[:max_length]
        if len(ids) >= 2:
            out.append(Example(ids, min(len(p_ids), len(ids))))
    _raise_problems(too_long, source, f"{source}: {len(too_long)} of {len(rows)} records have a prompt of "
                    f"data.max_length ({max_length}) tokens or more: raise it or shorten them")
    if cut:
        log.warning("%s: warning: %d of %d records are longer than data.max_length (%d tokens; the longest is %d) "
                    "and are cut to it", source, cut, len(rows), max_length, longest)
    if not out:
        raise DataError(f"{source}: no usable examples after tokenising")
    return out


def _split(row: dict[str, Any], fmt: str, tokenizer: Any) -> tuple[str, str]:
    if fmt == "text":
        return "", row["text"]
    if fmt == "prompt_completion":
        return row["prompt"], row["completion"]
    messages = row["messages"]
    if messages[-1]["role"] != "assistant":
        # No final answer to isolate: train on the whole rendered conversation.
        return "", tokenizer.apply_chat_template(messages, tokenize=False)
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    return prompt, full[len(prompt):] if full.startswith(prompt) else messages[-1]["content"]


def train_eval_split(examples: list[Example], eval_fraction: float, seed: int,
                     source: str) -> tuple[list[Example], list[Example]]:
    """A seeded split holding out `eval_fraction` (at least one example); both sides must be non-empty."""
    if len(examples) < 2:
        raise DataError(f"{source}: {len(examples)} usable example(s); holding out data.eval_fraction for "
                        "evaluation needs at least 2 (one to train on, one to evaluate): add records or set data.eval")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, int(len(examples) * eval_fraction))
    return [examples[i] for i in order[n_eval:]], [examples[i] for i in order[:n_eval]]


def default_batch_size(n_train: int) -> int:
    """About 0.2 % of the training examples, at least 1 and at most 256."""
    return max(1, min(256, round(0.002 * n_train)))


def collate(batch: list[Example], pad_id: int, prompt_weight: float) -> dict[str, torch.Tensor]:
    """Right-padded ids, attention mask, and per-token loss weights aligned with the shifted targets."""
    width = max(len(e.ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    weights = torch.zeros((len(batch), width), dtype=torch.float32)
    for row, e in enumerate(batch):
        n = len(e.ids)
        ids[row, :n] = torch.tensor(e.ids)
        mask[row, :n] = 1
        weights[row, :n] = 1.0
        weights[row, : e.prompt_len] = prompt_weight
    # weights[:, t] applies to predicting token t from tokens < t; token 0 is never a target.
    weights[:, 0] = 0.0
    return {"input_ids": ids, "attention_mask": mask, "weights": weights}


class BatchStream:
    """Deterministic micro-batches: epoch e uses a permutation seeded by (seed, e); the position is
    (epoch, examples consumed), so a fork may change the batch size and still continue where it was."""

    def __init__(self, examples: list[Example], batch_size: int, seed: int, pad_id: int, prompt_weight: float):
        self.examples, self.batch_size, self.seed = examples, batch_size, seed
        self.pad_id, self.prompt_weight = pad_id, prompt_weight
        self.epoch, self.offset = 0, 0
        self._perm = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.examples), generator=g).tolist()

    def next(self) -> dict[str, torch.Tensor]:
        if self.offset >= len(self.examples):
            self.epoch, self.offset = self.epoch + 1, 0
            self._perm = self._permutation(self.epoch)
        batch = [self.examples[i] for i in self._perm[self.offset : self.offset + self.batch_size]]
        self.offset += self.batch_size
        return collate(batch, self.pad_id, self.prompt_weight)

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "offset": self.offset}

    def restore(self, state: dict[str, int]) -> None:
        self.epoch, self.offset = state["epoch"], state["offset"]
        self._perm = self._permutation(self.epoch)
