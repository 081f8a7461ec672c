"""The task registry: a task is one module holding a dataset's loading, gold answers, prompt, rewards and SFT.

A :class:`Task` (nanochat-style) answers everything the study asks of a dataset:

- :meth:`Task.load` returns a ``datasets.Dataset`` with the columns ``question``, ``answer`` (the gold answer
  string the correctness reward compares with; TRL passes it to the rewards), ``solution`` (the worked
  solution), ``item`` (0-based record index: the eval table's ``item``) and ``prompt`` (system + user
  messages). Every record is checked, so bad data fails with one line naming the file and line.
- ``system_prompt``: the default of ``data.system_prompt``.
- ``rewards``: config name -> reward function (TRL's signature), in their default order;
  :meth:`Task.reward_functions` resolves ``config.rewards``.
- :meth:`Task.sft_example`: one prompt/completion example for the SFT warm start, in the rewarded format.
- :meth:`Task.corpus`: texts to train a local tokenizer on (``model.build``).

Tasks are selected by ``data.task``; every module of this package is imported by the package, so a new task
is one new file there (plus its test).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from orchestrator.errors import ConfigError

RewardFunction = Callable[..., list[float]]


class Task:
    name: ClassVar[str]
    description: ClassVar[str] = ""
    system_prompt: ClassVar[str]
    rewards: ClassVar[dict[str, RewardFunction]]

    def load(self, source: str, split: str, *, hub_config: str, limit: int | None, system_prompt: str):
        raise NotImplementedError

    def sft_example(self, question: str, solution: str, system_prompt: str) -> dict[str, list[dict[str, str]]]:
        raise NotImplementedError

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


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: register one instance of ``cls`` under ``cls.name``."""
    if cls.name in _REGISTRY:
        raise TypeError(f"task name {cls.name!r} is already registered")
    _REGISTRY[cls.name] = cls()
    return cls


def unregister_task(name: str) -> None:
    """Remove a registered task (tests and plugins that register one for a while)."""
    _REGISTRY.pop(name, None)


def task_names() -> list[str]:
    return sorted(_REGISTRY)


def get_task(name: str) -> Task:
    """The registered task ``name``; a ConfigError listing the registered ones otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"data.task: unknown task {name!r}; registered tasks: {', '.join(task_names())}") from None
