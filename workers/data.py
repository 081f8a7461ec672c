"""Loading question/answer records for a task, from a hub id or a local .jsonl, and rendering prompts.

Tasks (:mod:`workers.tasks`) build their datasets from :func:`load_records`, which takes a hub id (e.g.
``openai/gsm8k`` with config ``main``) or a local .jsonl and returns the raw records with a locator that names
a record by file and line (or hub split and index), so a bad record fails with a one-line error before any
model is loaded. :func:`build_prompt` makes the conversational prompt every task uses (system prompt, then
the question as the user); TRL applies the model's chat template to it, and so does evaluation
(:func:`workers.evaluate.prompt_token_ids`).

Simplified: for a local file ``split`` only labels messages (the file is the split), and the whole dataset
is held in memory (GSM8K is 8,792 short records).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from orchestrator.core.errors import StudyError
from orchestrator.core.sources import is_local_path


def build_prompt(question: str, system_prompt: str) -> list[dict[str, str]]:
    """The conversational prompt for one question: a system message, then the question as the user.

    >>> [m["role"] for m in build_prompt("What is 2+2?", system_prompt="Be brief.")]
    ['system', 'user']
    >>> build_prompt("What is 2+2?", system_prompt="Be brief.")[0]["content"]
    'Be brief.'
    """
    return [{"role": "system", "content": system_prompt}, {"role": "user", "content": question}]


def load_records(source: str, split: str, hub_config: str, required: Sequence[str], limit: int | None = None):
    """``(records, locate)``: the raw ``datasets.Dataset`` of ``source`` (first ``limit`` records) and a
    function naming record ``i`` for error messages. Every field of ``required`` must be a column."""
    if limit is not None and limit < 1:
        raise StudyError(f"data limit: must be a positive integer or null, got {limit}")
    if is_local_path(source):
        path = Path(source).expanduser()
        raw = _load_local_jsonl(path, required)
        where: _Locator = _LineLocator(path)
    else:
        raw = _load_hub(source, hub_config, split)
        where = _RecordLocator(f"{source} ({hub_config}, split {split})")
    if len(raw) == 0:
        raise StudyError(f"{where.label}: holds no records")
    missing = [name for name in required if name not in raw.column_names]
    if missing:
        raise StudyError(f"{where(0)}: record has no {missing[0]!r} field; records need {' and '.join(required)}")
    if limit is not None:
        raw = raw.select(range(min(limit, len(raw))))
    return raw, where


def _load_local_jsonl(path: Path, required: Sequence[str]):
    import datasets

    if not path.is_file():
        raise StudyError(f"data file {path} does not exist; set data.train/data.test to a .jsonl or a hub id")
    if not sum(1 for _ in jsonl_records(path, required)):  # every line is an object, and there is one
        raise StudyError(f"{path}: holds no records; each line must be one JSON object with {' and '.join(required)}")
    # The JSON builder skips blank lines and fills a field missing from some records with None; its own errors
    # name neither the line nor the problem, which jsonl_records (above) already reported.
    return datasets.load_dataset("json", data_files=str(path), split="train")


def jsonl_records(path: Path, required: Sequence[str]) -> Iterator[tuple[int, Any]]:
    """(line number, record) of every non-blank line; StudyError naming file and line for one that is not an object."""
    with path.open(encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise StudyError(f"{path}:{number}: not valid JSON ({err.msg}); each line must be one JSON object") from None
            if not isinstance(record, dict):
                raise StudyError(f"{path}:{number}: not a JSON object; each line must be one object with "
                                 f"{' and '.join(required)}")
            yield number, record


def check_jsonl(path: str, required: Sequence[str], parse: Callable[[Mapping[str, Any]], Any]) -> int:
    """Check every record of a local .jsonl with a task's ``parse`` (no model, no ``datasets``); return the count.

    Problems are one-line StudyErrors naming file and line: an empty file, a line that is not a JSON object, a
    record ``parse`` rejects (its ValueError's message). Cached by path, size and modification time, so the
    cells of a study do not re-read the same file.
    """
    stat = Path(path).stat()
    return _check_jsonl_cached(str(path), stat.st_size, stat.st_mtime_ns, tuple(required), parse)


@functools.lru_cache(maxsize=32)
def _check_jsonl_cached(path: str, size: int, mtime_ns: int, required: tuple[str, ...], parse) -> int:
    count = 0
    for number, record in jsonl_records(Path(path), required):
        missing = [name for name in required if name not in record]
        if missing:
            raise StudyError(f"{path}:{number}: record has no {missing[0]!r} field; records need "
                             f"{' and '.join(required)}")
        try:
            parse(record)
        except ValueError as err:
            raise StudyError(f"{path}:{number}: {err}") from None
        count += 1
    if not count:
        raise StudyError(f"{path}: holds no records; each line must be one JSON object with {' and '.join(required)}")
    return count


def _load_hub(source: str, hub_config: str, split: str):
    import datasets

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
        self.label = str(path)

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
