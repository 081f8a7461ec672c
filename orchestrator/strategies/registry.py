"""The strategy registry: every rank-allocation strategy is one small class, registered by its name.

A strategy declares what the rest of rankstudy asks of it, so nothing else lists strategies:

- ``name``, ``description`` (one line, shown by ``rankstudy plan`` and in errors), ``order`` (where it
  appears in tables and figures) and ``color`` (figures);
- ``needs_profile``: its ranks need the layer importance S(l) (Eq. 2) of a profiled run. By default that is
  the run named by ``allocation.profile_from`` (the uniform run of the same seed and cell), see
  :meth:`Strategy.profile_source`;
- ``in_default_grid``: part of ``grid.strategies`` when a config does not list them;
- ``trains`` and ``per_seed``: a strategy that does not train (``base``) is only evaluated, and one whose result
  does not depend on the seed runs once per cell, with seed :data:`SEED_FREE` (0);
- :meth:`Strategy.budget` (the total rank), :meth:`Strategy.ranks` (the per-layer allocation, a pure
  function of an :class:`AllocationRequest`) and :meth:`Strategy.check` (config feasibility, before any
  run starts);
- ``allocation_round``: its place in a chain of re-profiling rounds (strategies/rounds.py), if any;
- :meth:`Strategy.callbacks`: training-time hooks (transformers ``TrainerCallback`` s) for strategies whose
  ranks change while training; such a hook reports the current ranks to the profiler
  (``GradientProfiler.set_ranks``), so the profile's ``rank`` column is the rank at each step.

A new strategy is one new module in this package (it is imported automatically) or, for a plugin or a test,
a class decorated with :func:`register_strategy` anywhere::

    @register_strategy
    class Alternating(Strategy):
        name = "alternating"
        description = "r_max on even layers, r_min on odd ones"

        def ranks(self, request):
            return [request.r_max if layer % 2 == 0 else request.r_min for layer in range(request.num_layers)]

Unknown names are errors that list the registered ones (:func:`get_strategy`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from orchestrator.contract import TRAINED_TABLES
from orchestrator.errors import ConfigError, StudyError

if TYPE_CHECKING:
    from orchestrator.config import StudyConfig

# Every other strategy is compared with this one (McNemar pairs, amplification, profile source by default).
REFERENCE = "uniform"
# The SFT warm start's profile rows carry this strategy label (full weights, no LoRA); it is not allocatable.
SFT = "sft"
# The untrained base model (strategies/base.py): Table 1's first row, and a second comparison for every strategy.
BASE = "base"
# The seed of a run whose result does not depend on the seed (``per_seed = False``): one run per cell, whatever
# seeds the grid lists now or later, so growing a study never repeats it.
SEED_FREE = 0


@dataclass(frozen=True)
class AllocationRequest:
    """Everything a strategy's :meth:`Strategy.ranks` may use: the budget's terms, bounds, seed, importance.

    ``rank`` is the uniform rank (the budget is ``num_layers x rank`` unless the strategy says otherwise);
    ``importance`` is S(l) per layer when the strategy needs a profile, else None.
    """

    num_layers: int
    rank: int
    r_min: int
    r_max: int
    multiple: int
    reduced_fraction: float = 0.7
    random_range: tuple[int, int] = (16, 48)
    seed: int = 0
    importance: tuple[float, ...] | None = None

    @classmethod
    def from_config(cls, config: StudyConfig, num_layers: int, seed: int,
                    importance: Iterable[float] | None = None) -> AllocationRequest:
        a = config.allocation
        return cls(num_layers=num_layers, rank=config.lora.rank, r_min=a.r_min, r_max=a.r_max,
                   multiple=a.multiple, reduced_fraction=a.reduced_fraction, random_range=tuple(a.random_range),
                   seed=seed, importance=None if importance is None else tuple(float(v) for v in importance))


class Strategy:
    """Base class of a rank-allocation strategy; subclass it and decorate with :func:`register_strategy`."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    order: ClassVar[int] = 100
    color: ClassVar[str | None] = None
    needs_profile: ClassVar[bool] = False
    in_default_grid: ClassVar[bool] = False
    trains: ClassVar[bool] = True
    per_seed: ClassVar[bool] = True
    # Re-profiling round (strategies/rounds.py): 1 for an allocation from the profile_from run, k for one from
    # round k-1's run; None for a strategy outside the rounds.
    allocation_round: ClassVar[int | None] = None
    # The PEFT adapter the worker builds: "lora" (ranks fixed before training) or "adalora" (workers/adalora.py).
    adapter: ClassVar[str] = "lora"
    # Why a failed run of this strategy restarts from step 0 instead of resuming from its checkpoint (None: it
    # resumes).
    restart_reason: ClassVar[str | None] = None

    def tables(self) -> tuple[str, ...]:
        """The contract tables a run of this strategy writes (an evaluation-only run writes eval).

        A trained run adds ``geometry`` when ``profile.geometry`` is on (the worker decides that).
        """
        return TRAINED_TABLES if self.trains else ("eval",)

    def budget(self, request: AllocationRequest) -> int:
        """Total rank over all layers (the same-budget comparison of the paper: ``num_layers x rank``)."""
        return request.num_layers * request.rank

    def ranks(self, request: AllocationRequest) -> list[int]:
        raise NotImplementedError(f"strategy {self.name!r} does not implement ranks()")

    def for_config(self, config: StudyConfig, request: AllocationRequest) -> list[int]:
        """The ranks a run of this config starts with: :meth:`ranks`, unless the strategy has its own settings."""
        return self.ranks(request)

    def check(self, config: StudyConfig) -> None:
        """Raise :class:`ConfigError` naming the key when ``config`` makes this strategy infeasible."""

    def profile_source(self, config: StudyConfig) -> str | None:
        """Strategy name (same seed and cell) or profile file that supplies the importance; None if unneeded."""
        return config.allocation.profile_from if self.needs_profile else None

    def callbacks(self, run: Any) -> list:
        """Training-time hooks (``TrainerCallback`` s) the worker adds to this strategy's runs."""
        return []


_REGISTRY: dict[str, Strategy] = {}


def register_strategy(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: register one instance of ``cls`` under ``cls.name`` (a name may be taken once)."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name or not name.replace("_", "").isalnum():
        raise TypeError(f"{cls.__name__}.name must be a non-empty identifier (letters, digits, _), got {name!r}")
    if name in _REGISTRY or name == SFT:
        raise TypeError(f"strategy name {name!r} is already registered")
    _REGISTRY[name] = cls()
    return cls


def unregister_strategy(name: str) -> None:
    """Remove a registered strategy (tests and plugins that register one for a while)."""
    _REGISTRY.pop(name, None)


def registered_names() -> list[str]:
    """Every registered strategy, in display order."""
    return sorted(_REGISTRY, key=lambda n: (_REGISTRY[n].order, n))


def default_strategies() -> tuple[str, ...]:
    """The grid when a config lists no strategies: the paper's (``in_default_grid``), in display order."""
    return tuple(n for n in registered_names() if _REGISTRY[n].in_default_grid)


def get_strategy(name: str, where: str = "strategy") -> Strategy:
    """The registered strategy ``name``; a :class:`ConfigError` listing the registered ones otherwise."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ConfigError(
            f"{where}: unknown strategy {name!r}; registered strategies: {', '.join(registered_names())}"
        ) from None


def order_strategies(names: Iterable[str]) -> list[str]:
    """Registered strategies in display order, then unknown ones alphabetically, the SFT profile last.

    >>> order_strategies({"random", "zeta", "uniform", "sft"})
    ['uniform', 'random', 'zeta', 'sft']
    """
    names = set(names)
    known = [n for n in registered_names() if n in names]
    rest = sorted(names - set(known) - {SFT})
    return known + rest + ([SFT] if SFT in names else [])


def color_of(name: str) -> str | None:
    """The registered strategy's colour, or None (figures then pick a palette colour)."""
    strategy = _REGISTRY.get(name)
    return strategy.color if strategy is not None else None


def check_rank_within_bounds(config: StudyConfig) -> None:
    """The rule every non-uniform strategy shares: ``lora.rank`` lies in ``[r_min, r_max]``."""
    a, rank = config.allocation, config.lora.rank
    if not a.r_min <= rank <= a.r_max:
        raise ConfigError(
            f"lora.rank: the budget num_layers x {rank} is infeasible within "
            f"[allocation.r_min, allocation.r_max] = [{a.r_min}, {a.r_max}]; choose a rank in that range"
        )


def require_importance(strategy: Strategy, request: AllocationRequest) -> tuple[float, ...]:
    """The request's importance, or a StudyError saying the strategy needs a profile."""
    if request.importance is None:
        raise StudyError(f"allocation: strategy {strategy.name!r} needs the layer importance S(l) from a profile")
    return request.importance
