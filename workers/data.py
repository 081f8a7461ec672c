"""GSM8K as a ``datasets.Dataset`` of conversational GRPO prompts, from the hub or a local .jsonl.

``load_gsm8k(source, split)`` loads a hub id (``openai/gsm8k``, config ``main``) or a local .jsonl with
``question``/``answer`` fields and returns one row per question with the columns

- ``question``: the question text,
- ``answer``: the gold number string (:func:`workers.rewards.gold_number`); TRL passes it to
  ``correctness_reward(completions, answer=...)``,
- ``solution``: the original worked solution ending in ``#### <gold>``,
- ``item``: the 0-based record index in the file or split (the ``item`` column of eval parquet files),
- ``prompt``: ``[{"role": "system", ...}, {"role": "user", "content": question}]``; TRL applies the
  model's chat template to conversational prompts itself.

Every record is checked when loading: a missing file, a missing or non-string field, or a gold answer that
is not one number raises :class:`StudyError` naming the file and line (or hub split and record), so a bad
data file fails before any model is loaded. ``render_prompt`` turns the messages into the string a model
sees (used by evaluation, which generates outside TRL).

Simplified: for a local file ``split`` only labels messages (the file is the split), and the whole
dataset is held in memory (GSM8K is 8,792 short records).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import datasets

from orchestrator.config import SYSTEM_PROMPT, is_local_path
from orchestrator.errors import StudyError
from workers.rewards import gold_number, parse_number

REQUIRED_FIELDS = ("question", "answer")


def build_prompt(question: str, system_prompt: str = SYSTEM_PROMPT) -> list[dict[str, str]]:
    """The conversational prompt for one question: a system message, then the question as the user.

    >>> [m["role"] for m in build_prompt("What is 2+2?")]
    ['system', 'user']
    >>> build_prompt("What is 2+2?", system_prompt="Be brief.")[0]["content"]
    'Be brief.'
    """
    return [{"role": "system", "content": system_prompt}, {"role": "user", "content": question}]


def load_gsm8k(
    source: str,
    split: str,
    hub_config: str = "main",
    limit: int | None = None,
    system_prompt: str = SYSTEM_PROMPT,
) -> datasets.Dataset:
    """GSM8K ``split`` from a hub id or a local .jsonl, checked, with the columns listed in the module doc.

    ``limit`` keeps the first N records (all when None or larger than the data).
    """
    if limit is not None and limit < 1:
        raise StudyError(f"data limit: must be a positive integer or null, got {limit}")
    if is_local_path(source):
        path = Path(source).expanduser()
        raw = _load_local_jsonl(path)
        where = _LineLocator(path)
    else:
        raw = _load_hub(source, hub_config, split)
        where = _RecordLocator(f"{source} ({hub_config}, split {split})")
    missing = [name for name in REQUIRED_FIELDS if name not in raw.column_names]
    if missing:
        raise StudyError(f"{where(0)}: record has no {missing[0]!r} field; GSM8K records need question and answer")
    if limit is not None:
        raw = raw.select(range(min(limit, len(raw))))
    columns: dict[str, list[Any]] = {"question": [], "answer": [], "solution": [], "item": [], "prompt": []}
    for index, (question, solution) in enumerate(zip(raw["question"], raw["answer"], strict=True)):
        for name, value in (("question", question), ("answer", solution)):
            if not isinstance(value, str) or not value.strip():
                raise StudyError(f"{where(index)}: field {name!r} must be a non-empty string, got {value!r}")
        gold = _checked_gold(solution, where, index)
        columns["question"].append(question)
        columns["answer"].append(gold)
        columns["solution"].append(solution)
        columns["item"].append(index)
        columns["prompt"].append(build_prompt(question, system_prompt))
    return datasets.Dataset.from_dict(columns)


def _checked_gold(solution: str, where: _Locator, index: int) -> str:
    try:
        gold = gold_number(solution)
    except ValueError:
        raise StudyError(f"{where(index)}: answer has no '#### <number>' gold line") from None
    if parse_number(gold) is None:
        raise StudyError(f"{where(index)}: gold answer {gold[:40]!r} after '####' is not a number")
    return gold


def _load_local_jsonl(path: Path) -> datasets.Dataset:
    if not path.is_file():
        raise StudyError(f"data file {path} does not exist; set data.train/data.test to a GSM8K .jsonl or a hub id")
    try:
        # The JSON builder skips blank lines and fills a field missing from some records with None.
        return datasets.load_dataset("json", data_files=str(path), split="train")
    except datasets.exceptions.DatasetGenerationError:
        # The JSON reader's error names neither the line nor the problem; find the first bad line ourselves.
        raise StudyError(_first_invalid_json_line(path)) from None


def _first_invalid_json_line(path: Path) -> str:
    with path.open(encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                return f"{path}:{number}: not valid JSON ({err.msg}); each line must be one JSON object"
            if not isinstance(record, dict):
                return f"{path}:{number}: not a JSON object; each line must be one object with question and answer"
    return f"{path}: could not be read as JSON lines with question and answer fields"


def _load_hub(source: str, hub_config: str, split: str) -> datasets.Dataset:
    try:
        return datasets.load_dataset(source, hub_config, split=split)
    except (OSError, ValueError) as err:  # not found, offline (ConnectionError is an OSError), unknown split
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise StudyError(
            f"data source {source!r} (config {hub_config!r}, split {split!r}) could not be loaded: {message}; "
            "use a hub id that is cached or reachable, or a local .jsonl path"
        ) from None


class _LineLocator:
    """Names a record of a local .jsonl by file and line; the JSON reader skips blank lines, so count them."""

    def __init__(self, path: Path):
        self.path = path

    def __call__(self, index: int) -> str:
        with self.path.open(encoding="utf-8", errors="replace") as lines:
            seen = -1
            for number, line in enumerate(lines, start=1):
                if line.strip():
                    seen += 1
                    if seen == index:
                        return f"{self.path}:{number}"
        return f"{self.path} record {index}"


class _RecordLocator:
    """Names a record of a hub split by its index."""

    def __init__(self, label: str):
        self.label = label

    def __call__(self, index: int) -> str:
        return f"{self.label} record {index}"


_Locator = _LineLocator | _RecordLocator


def render_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """``messages`` as the prompt string the model sees: its chat template plus the assistant turn opener.

    Raises StudyError when the tokenizer has no chat template (a base model rather than an instruct model).
    """
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise StudyError(
            f"tokenizer {name!r} has no chat template; use an instruct/chat model or set tokenizer.chat_template"
        )
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
