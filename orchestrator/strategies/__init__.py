"""Rank-allocation strategies: the registry (:mod:`.registry`) and one module per strategy in this package.

Every module of this package other than ``registry`` is imported here, so a strategy added as a new file
``orchestrator/strategies/<name>.py`` is registered wherever rankstudy runs (driver and Ray workers alike).
"""

import importlib
import pkgutil

from orchestrator.strategies.registry import (
    BASE,
    REFERENCE,
    SEED_FREE,
    SFT,
    AllocationRequest,
    Strategy,
    check_rank_within_bounds,
    color_of,
    default_strategies,
    get_strategy,
    order_strategies,
    register_strategy,
    registered_names,
    require_importance,
    unregister_strategy,
)

for _module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _module.name != "registry":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "BASE", "REFERENCE", "SEED_FREE", "SFT", "AllocationRequest", "Strategy", "check_rank_within_bounds", "color_of",
    "default_strategies", "get_strategy", "order_strategies", "register_strategy", "registered_names",
    "require_importance", "unregister_strategy",
]
