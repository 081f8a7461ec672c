"""The task registry: a task is one module holding a dataset's loading, gold answers, prompt, rewards and SFT.

A :class:`Task` (nanochat-style) answers everything the study asks of a dataset:

- ``fields`` and :meth:`Task.parse_record`: the record fields and how one record becomes the task's columns
  (a ValueError saying what is wrong with it otherwise);
- :meth:`Task.load` returns a ``datasets.Dataset`` with the columns ``question``, ``answer`` (the gold answer
  string the correctness reward compares with; TRL passes it to the rewards), ``solution`` (the worked
  solution), ``item`` (0-based record index: the eval table's ``item``) and ``prompt`` (system + user
  messages). Every record is checked, so bad data fails with one line naming the file and line;
- :meth:`Task.check_source`: the same check of a local file without loading a model or ``datasets``, which
  the config runs when a study is planned, so bad data stops ``rankstudy plan`` and ``rankstudy run`` before
  anything starts.
- ``system_prompt``: the default of ``data.system_prompt``.
- ``rewards``: config name -> reward function (TRL's signature), in their default order;
  :meth:`Task.reward_functions` resolves ``config.rewards``.
- :meth:`Task.sft_example`: one prompt/completion example for the SFT warm start, in the rewarded format (or
  plain, without the answer block, for ``warm_start.plain_answer_pattern``).
- :meth:`Task.corpus`: texts to train a local tokenizer on (``model.build``).

Tasks are selected by ``data.task``; every module of this package is imported by the package, so a new task
is one new file there (plus its test). A task kept outside the package (a module of your own, e.g. in the
working directory ``ray job submit --working-dir`` uploads) is named in the environment variable
``RANKSTUDY_TASK_MODULES`` (comma-separated module names): every process that looks a task up (the driver and
each run's Ray worker, which inherit the variable) imports those modules first, and their ``@register_task``
classes are tasks like the built-in ones.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from orchestrator.core.errors import ConfigError, StudyError
from orchestrator.core.sources import is_local_path
from orchestrator.core.typed_yaml import from_dict, to_dict
from workers.rewards import RewardFunction


class Task:
    name: ClassVar[str]
    description: ClassVar[str] = ""
    system_prompt: ClassVar[str]
    rewards: ClassVar[dict[str, RewardFunction]]
    fields: ClassVar[tuple[str, ...]] = ("question", "answer")

    def parse_record(self, record: Mapping[str, Any]) -> dict[str, str]:
        """``{"question", "answer" (gold), "solution"}`` of one record; ValueError saying what is wrong."""
        raise NotImplementedError

    # -- data ---------------------------------------------------------------------------------------------
    # A task reads its records from data.train/data.test (a hub id or a local .jsonl), or, when it declares
    # ``options`` (a dataclass of data.options), generates them itself (:meth:`generate`).
    options: ClassVar[type | None] = None

    @property
    def generated(self) -> bool:
        return self.options is not None

    def generate(self, options: dict, split: str) -> list[dict]:
        """A generated task's raw records of ``split`` (``fields`` as keys), from its resolved options."""
        raise NotImplementedError

    def resolve_options(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        """``data.options`` checked against the task's options dataclass, every default filled in."""
        if self.options is None:
            if raw:
                raise ConfigError(f"options: task {self.name!r} reads data.train/data.test and takes no options; "
                                  "remove data.options")
            return {}
        return to_dict(from_dict(self.options, dict(raw), "options"))

    def dataset(self, data, split: str, limit: int | None = None):
        """The task's ``split`` (``train``/``test``) for a DataConfig: loaded or generated, first ``limit``."""
        if not self.generated:
            return self.load(getattr(data, split), split, hub_config=data.hub_config, limit=limit,
                             system_prompt=data.system_prompt)
        records = self.generate(data.options, split)[:limit]
        return self._columns(records, lambda index: f"generated {self.name} {split} record {index}",
                             data.system_prompt)

    def source_key(self, data, split: str) -> str:
        """What identifies ``split``'s data for caches: a local file's bytes, a hub id, a generator's options."""
        source = getattr(data, split)
        if is_local_path(source):
            import hashlib

            return "sha256:" + hashlib.sha256(Path(source).expanduser().read_bytes()).hexdigest()
        return f"hub:{source}:{data.hub_config}"

    def check(self, data, split: str) -> None:
        """Check ``split``'s data before anything starts: every record of a local file (StudyError naming file
        and line; a hub id is checked when a worker loads it), or that the generator makes what is asked."""
        from workers.data import check_jsonl

        if self.generated:
            self.generate(data.options, split)
            return
        source = getattr(data, split)
        if is_local_path(source):
            check_jsonl(str(Path(source).expanduser()), self.fields, self.parse_record)

    def load(self, source: str, split: str, *, hub_config: str = "main", limit: int | None = None,
             system_prompt: str | None = None):
        """The task's ``split`` from a hub id or a local .jsonl, every record checked (first ``limit``)."""
        from workers.data import load_records

        raw, where = load_records(source, split, hub_config, self.fields, limit)
        return self._columns(raw.to_list(), where, system_prompt)

    def _columns(self, records: Sequence[Mapping[str, Any]], where, system_prompt: str | None):
        """The task's dataset columns from raw records; ``where(index)`` names a record in errors."""
        import datasets

        from workers.data import build_prompt

        columns: dict[str, list[Any]] = {"question": [], "answer": [], "solution": [], "item": [], "prompt": []}
        for index, record in enumerate(records):
            try:
                parsed = self.parse_record(record)
            except ValueError as err:
                raise StudyError(f"{where(index)}: {err}") from None
            for key in ("question", "answer", "solution"):
                columns[key].append(parsed[key])
            columns["item"].append(index)
            columns["prompt"].append(build_prompt(parsed["question"], system_prompt or self.system_prompt))
        if not records:
            raise StudyError(f"{where(0)}: no records")
        return datasets.Dataset.from_dict(columns)

    def sft_example(self, question: str, solution: str, system_prompt: str,
                    answer_block: bool = True) -> dict[str, list[dict[str, str]]]:
        raise NotImplementedError

    def score(self, completions: Sequence[str], answers: Sequence[str]) -> dict[str, list]:
        """Per-item evaluation scores with the training rewards: ``correct`` (the ``correctness`` reward gives
        1.0), ``format_ok`` (the ``format`` reward does; None for a task without one) and the ``prediction`` in
        the answer block.

        >>> from workers.tasks import get_task
        >>> get_task("gsm8k").score(["<think>a</think><answer>7</answer>", "7"], ["7", "7"])
        {'correct': [True, False], 'format_ok': [True, False], 'prediction': ['7', None]}
        """
        from workers.rewards import extract_answer

        def verdicts(name: str, **kwargs) -> list:
            if name not in self.rewards:
                return [None] * len(completions)
            return [value == 1.0 for value in self.rewards[name](list(completions), **kwargs)]

        return {"correct": verdicts("correctness", answer=list(answers)), "format_ok": verdicts("format"),
                "prediction": [extract_answer(c) for c in completions]}

    def corpus(self, records: Any) -> list[str]:
        """Tokenizer training texts from loaded records: each question and its worked solution."""
        return [f"{q}\n{s}" for q, s in zip(records["question"], records["solution"], strict=True)]

    def reward_functions(self, names: Sequence[str]) -> list[RewardFunction]:
        """The reward functions for config names, in order; ConfigError for a name this task lacks."""
        unknown = [name for name in names if name not in self.rewards]
        if unknown:
            raise ConfigError(f"rewards: task {self.name!r} has no reward {unknown[0]!r}; "
                              f"choose from {', '.join(self.rewards)}")
        return [self.rewards[name] for name in names]


_REGISTRY: dict[str, Task] = {}
TASK_MODULES_ENV = "RANKSTUDY_TASK_MODULES"


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: register one instance of ``cls`` under ``cls.name``."""
    if cls.name in _REGISTRY:
        raise TypeError(f"task name {cls.name!r} is already registered")
    _REGISTRY[cls.name] = cls()
    return cls


def unregister_task(name: str) -> None:
    """Remove a registered task (tests and plugins that register one for a while)."""
    _REGISTRY.pop(name, None)


def import_task_modules() -> None:
    """Import each module named in ``$RANKSTUDY_TASK_MODULES`` (their tasks register on import; a module imported
    before is only looked up in ``sys.modules``); a StudyError naming the variable and the module if one cannot be
    imported (the environment, not the config)."""
    for module in filter(None, (m.strip() for m in os.environ.get(TASK_MODULES_ENV, "").split(","))):
        try:
            importlib.import_module(module)
        except Exception as err:  # noqa: BLE001 - any failure of the user's module is reported in one line
            raise StudyError(f"{TASK_MODULES_ENV}: cannot import task module {module!r}: "
                              f"{type(err).__name__}: {err}") from None


def task_names() -> list[str]:
    import_task_modules()
    return sorted(_REGISTRY)


def get_task(name: str) -> Task:
    """The registered task ``name``; a ConfigError listing the registered ones otherwise."""
    import_task_modules()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"data.task: unknown task {name!r}; registered tasks: {', '.join(task_names())}") from None
