"""The strategy registry: every rank-allocation strategy is one small class, registered by its name.

A strategy is a pure definition of what a run of it is; nothing here loads a model or knows how it is drawn:

- ``name`` and ``description`` (one line, shown by ``rankstudy plan`` and in errors);
- ``needs_profile``: its ranks need the layer importance S(l) (Eq. 2) of a profiled run. By default that is
  the run named by ``allocation.profile_from`` (the uniform run of the same seed and cell), see
  :meth:`Strategy.profile_source`;
- ``trains`` and ``per_seed``: a strategy that does not train (``base``) is only evaluated, and one whose result
  does not depend on the seed runs once per cell, with seed :data:`~orchestrator.core.roles.SEED_FREE` (0);
- :meth:`Strategy.budget` (the total rank), :meth:`Strategy.ranks` (the per-layer allocation, a pure
  function of an :class:`AllocationRequest`) and :meth:`Strategy.check` (config feasibility, before any
  run starts);
- ``allocation_round``: its place in a chain of re-profiling rounds (strategies/rounds.py), if any;
- ``adapter``: the name of the PEFT adapter the worker builds for it (``lora``: ranks fixed before training;
  ``adalora``: ranks that change while training), looked up in the worker's adapter registry
  (``workers/adapters/``), which owns everything that happens to the model.

How a strategy is drawn (its colour and its place in tables) is the dashboards' (``dashboards/style.py``).

A new strategy is one new module in this package (it is imported automatically) or, for a plugin or a test,
a class decorated with :func:`register_strategy` anywhere::

    @register_strategy
    class Alternating(Strategy):
        name = "alternating"
        description = "r_max on even layers, r_min on odd ones"

        def ranks(self, request):
            return [request.r_max if layer % 2 == 0 else request.r_min for layer in range(request.num_layers)]

Unknown names are errors that list the registered ones (:func:`get_strategy`).

>>> allocate("proportional", importance=[1, 1, 1, 9], rank=32, r_min=4, r_max=64, multiple=4)
[24, 20, 20, 64]
>>> sum(allocate("random", num_layers=28, rank=32, r_min=4, r_max=64, multiple=4, random_range=(16, 48), seed=0))
896
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from orchestrator.core.config import AllocationConfig
from orchestrator.core.errors import ConfigError, StudyError
from orchestrator.core.roles import SFT

if TYPE_CHECKING:
    from orchestrator.core.config import StudyConfig

# The allocation settings a strategy's ranks may depend on; their defaults are AllocationConfig's.
BOUNDS = ("r_min", "r_max", "multiple", "reduced_fraction", "random_range")


@dataclass(frozen=True)
class AllocationRequest:
    """Everything a strategy's :meth:`Strategy.ranks` may use: the budget's terms, bounds, seed, importance.

    ``rank`` is the uniform rank (the budget is ``num_layers x rank`` unless the strategy says otherwise);
    ``importance`` is S(l) per layer when the strategy needs a profile, else None. The bounds are
    ``allocation.*`` of the config (:class:`~orchestrator.core.config.AllocationConfig`).
    """

    num_layers: int
    rank: int
    r_min: int
    r_max: int
    multiple: int
    reduced_fraction: float
    random_range: tuple[int, int]
    seed: int = 0
    importance: tuple[float, ...] | None = None

    @classmethod
    def from_allocation(cls, allocation: AllocationConfig, num_layers: int, rank: int, seed: int = 0,
                        importance: Iterable[float] | None = None) -> AllocationRequest:
        bounds = {key: getattr(allocation, key) for key in BOUNDS}
        return cls(num_layers=num_layers, rank=rank, **{**bounds, "random_range": tuple(bounds["random_range"])},
                   seed=seed, importance=None if importance is None else tuple(float(v) for v in importance))

    @classmethod
    def from_config(cls, config: StudyConfig, num_layers: int, seed: int,
                    importance: Iterable[float] | None = None) -> AllocationRequest:
        return cls.from_allocation(config.allocation, num_layers, config.lora.rank, seed, importance)


class Strategy:
    """Base class of a rank-allocation strategy; subclass it and decorate with :func:`register_strategy`."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    needs_profile: ClassVar[bool] = False
    trains: ClassVar[bool] = True
    per_seed: ClassVar[bool] = True
    # Re-profiling round (strategies/rounds.py): 1 for an allocation from the profile_from run, k for one from
    # round k-1's run; None for a strategy outside the rounds.
    allocation_round: ClassVar[int | None] = None
    # The worker's adapter (workers/adapters/) by name: "lora" (ranks fixed before training) or "adalora".
    adapter: ClassVar[str] = "lora"

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
    """Every registered strategy, alphabetically."""
    return sorted(_REGISTRY)


def is_strategy(name: str) -> bool:
    """True when ``name`` is a registered strategy (``allocation.profile_from`` is a strategy or a file)."""
    return name in _REGISTRY


def get_strategy(name: str, where: str = "strategy") -> Strategy:
    """The registered strategy ``name``; a :class:`ConfigError` listing the registered ones otherwise."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ConfigError(
            f"{where}: unknown strategy {name!r}; registered strategies: {', '.join(registered_names())}"
        ) from None


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


def allocate(strategy: str, *, rank: int, importance: Sequence[float] | None = None, num_layers: int | None = None,
             seed: int = 0, **bounds) -> list[int]:
    """Per-layer ranks of the registered ``strategy``, by keyword (the CLI's ``allocate`` and the tests).

    ``importance`` (S(l) per layer) is required by strategies that need a profile; without it ``num_layers``
    gives the layer count. ``bounds``: any of ``r_min``, ``r_max``, ``multiple``, ``reduced_fraction``,
    ``random_range``; each defaults to ``allocation.*``'s default.

    >>> allocate("uniform", num_layers=3, rank=32, r_min=4, r_max=64, multiple=4)
    [32, 32, 32]
    >>> allocate("reduced", importance=[1, 1, 2, 4], rank=32, r_min=4, r_max=64, multiple=4)
    [12, 12, 20, 44]
    """
    unknown = sorted(set(bounds) - set(BOUNDS))
    if unknown:
        raise TypeError(f"allocate() got unexpected keyword arguments {unknown}; bounds are {list(BOUNDS)}")
    chosen = get_strategy(strategy, where="allocation")
    if importance is not None:
        importance = [float(v) for v in importance]
        if num_layers is not None and num_layers != len(importance):
            raise StudyError(f"allocation: importance has {len(importance)} layers but the model has {num_layers}")
        num_layers = len(importance)
    if num_layers is None or num_layers < 1:
        raise StudyError("allocation: need the number of layers (or an importance per layer)")
    values = default_bounds() | bounds
    if rank % values["multiple"] or values["r_min"] % values["multiple"] or values["r_max"] % values["multiple"]:
        raise StudyError(f"allocation: rank ({rank}), r_min ({values['r_min']}) and r_max ({values['r_max']}) must be "
                         f"multiples of {values['multiple']}")
    request = AllocationRequest(num_layers=num_layers, rank=rank, **{**values, "random_range": tuple(
        values["random_range"])}, seed=seed, importance=None if importance is None else tuple(importance))
    return chosen.ranks(request)


def default_bounds() -> dict:
    """``allocation.*``'s defaults for the bounds (what ``rankstudy allocate`` takes without flags)."""
    defaults = AllocationConfig()
    return {f.name: getattr(defaults, f.name) for f in dataclasses.fields(defaults) if f.name in BOUNDS}
