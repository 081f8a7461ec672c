"""``reduced``: proportional allocation (Eq. 3) at ``reduced_fraction`` of the uniform budget (the paper's 70%).

>>> from orchestrator.strategies import AllocationRequest, get_strategy
>>> get_strategy("reduced").ranks(AllocationRequest(num_layers=4, rank=32, r_min=4, r_max=64, multiple=4,
...                                                 importance=(1, 1, 2, 4)))
[12, 12, 20, 44]
"""

from orchestrator.allocation import distribute, reduced_budget
from orchestrator.errors import ConfigError
from orchestrator.strategies.registry import (
    AllocationRequest,
    Strategy,
    check_rank_within_bounds,
    register_strategy,
    require_importance,
)


@register_strategy
class Reduced(Strategy):
    name = "reduced"
    description = "Eq. 3 at allocation.reduced_fraction of the uniform budget"
    order = 40
    color = "#9467bd"
    needs_profile = True
    in_default_grid = True

    def check(self, config) -> None:
        check_rank_within_bounds(config)
        a, rank = config.allocation, config.lora.rank
        if a.reduced_fraction * rank < a.r_min:
            raise ConfigError(
                f"allocation.reduced_fraction: {a.reduced_fraction} x lora.rank ({rank}) is below "
                f"allocation.r_min ({a.r_min}), so the reduced budget is infeasible"
            )

    def budget(self, request: AllocationRequest) -> int:
        return reduced_budget(request.num_layers, request.rank, request.reduced_fraction, request.multiple)

    def ranks(self, request: AllocationRequest) -> list[int]:
        importance = require_importance(self, request)
        return distribute(importance, self.budget(request), request.r_min, request.r_max, request.multiple)
