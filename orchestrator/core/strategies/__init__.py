"""Rank-allocation strategies: the registry (:mod:`.registry`) and one module per strategy in this package.

Every module of this package other than ``registry`` is imported here, so a strategy added as a new file
``orchestrator/core/strategies/<name>.py`` is registered wherever rankstudy runs (driver and Ray workers alike).
"""

import importlib
import pkgutil

from orchestrator.core.strategies.registry import (
    AllocationRequest,
    Strategy,
    allocate,
    check_rank_within_bounds,
    default_bounds,
    get_strategy,
    is_strategy,
    register_strategy,
    registered_names,
    require_importance,
    unregister_strategy,
)

for _module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _module.name != "registry":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "AllocationRequest", "Strategy", "allocate", "check_rank_within_bounds", "default_bounds", "get_strategy",
    "is_strategy", "register_strategy", "registered_names", "require_importance", "unregister_strategy",
]
