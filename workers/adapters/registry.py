"""The worker's adapter registry: what a strategy's ``adapter`` name means for the model, in one class each.

A strategy (orchestrator/core/strategies/) names its adapter; the worker looks it up here once per run
(:func:`get_adapter`) and asks it everything that touches PEFT:

- :meth:`Adapter.peft_config`: the PEFT config for the run's per-layer ranks (TRL calls ``get_peft_model``);
- :meth:`Adapter.audit`: proof that the wrapped model got exactly those ranks and scales (a
  :class:`~workers.adapters.lora.LoraAudit` for run.json), a StudyError naming the mismatch otherwise;
- :meth:`Adapter.callbacks`: training-time hooks (transformers ``TrainerCallback`` s); a hook that changes
  ranks while training reports them with ``profiler.set_ranks``, so the profile's ``rank`` column is the rank
  at each step;
- ``ranks_change``: the ranks change while training, so run.json records the starting allocation, each
  module's final rank and, as ``allocation``, the final per-layer mean;
- ``restart_reason``: why a failed run restarts from step 0 instead of resuming from its checkpoint (None: it
  resumes).

A new adapter is one module in this package (imported automatically) with a class decorated by
:func:`register_adapter`, or such a class anywhere (a plugin, a test).
"""

from __future__ import annotations

from typing import Any, ClassVar

from orchestrator.core.errors import StudyError


class Adapter:
    """Base class of a worker adapter; subclass it and decorate with :func:`register_adapter`."""

    name: ClassVar[str]
    ranks_change: ClassVar[bool] = False
    restart_reason: ClassVar[str | None] = None

    def peft_config(self, layout, ranks: list[int], config) -> Any:
        raise NotImplementedError(f"adapter {self.name!r} does not implement peft_config()")

    def audit(self, peft_model, layout, ranks: list[int], config) -> Any:
        raise NotImplementedError(f"adapter {self.name!r} does not implement audit()")

    def callbacks(self, run) -> list:
        """Training-time hooks for a run (``workers.run.GRPORun``, set up up to its profiler)."""
        return []


_REGISTRY: dict[str, Adapter] = {}


def register_adapter(cls: type[Adapter]) -> type[Adapter]:
    """Class decorator: register one instance of ``cls`` under ``cls.name`` (a name may be taken once)."""
    if cls.name in _REGISTRY:
        raise TypeError(f"adapter name {cls.name!r} is already registered")
    _REGISTRY[cls.name] = cls()
    return cls


def unregister_adapter(name: str) -> None:
    """Remove a registered adapter (tests and plugins that register one for a while)."""
    _REGISTRY.pop(name, None)


def adapter_names() -> list[str]:
    return sorted(_REGISTRY)


def get_adapter(name: str) -> Adapter:
    """The registered adapter ``name``; a StudyError listing the registered ones otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise StudyError(f"adapter {name!r} is not registered in the worker (workers/adapters/); registered "
                         f"adapters: {', '.join(adapter_names())}") from None
