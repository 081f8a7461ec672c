"""``proportional``: the paper's Eq. 3, ranks in proportion to S(l) at the uniform budget ``L x rank``.

The importance comes from a profiled run of the same seed and cell (``allocation.profile_from``, by default
the uniform run) or a profile file; :func:`orchestrator.core.allocation.distribute` keeps the budget exact.

>>> from orchestrator.core.strategies import allocate
>>> allocate("proportional", importance=(1, 1, 1, 9), rank=32, r_min=4, r_max=64, multiple=4)
[24, 20, 20, 64]
"""

from orchestrator.core.allocation import distribute
from orchestrator.core.strategies.registry import (
    AllocationRequest,
    Strategy,
    check_rank_within_bounds,
    register_strategy,
    require_importance,
)


@register_strategy
class Proportional(Strategy):
    name = "proportional"
    description = "Eq. 3: rank in proportion to the layer importance S(l), same budget as uniform"
    needs_profile = True
    allocation_round = 1

    def check(self, config) -> None:
        check_rank_within_bounds(config)

    def ranks(self, request: AllocationRequest) -> list[int]:
        importance = require_importance(self, request)
        return distribute(importance, self.budget(request), request.r_min, request.r_max, request.multiple)
