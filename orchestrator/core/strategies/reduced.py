"""``reduced``: proportional allocation (Eq. 3) at ``reduced_fraction`` of the uniform budget (the paper's 70%).

>>> from orchestrator.core.strategies import allocate
>>> allocate("reduced", importance=(1, 1, 2, 4), rank=32, r_min=4, r_max=64, multiple=4)
[12, 12, 20, 44]
"""

from orchestrator.core.allocation import reduced_budget
from orchestrator.core.errors import ConfigError
from orchestrator.core.strategies.proportional import Proportional
from orchestrator.core.strategies.registry import AllocationRequest, register_strategy


@register_strategy
class Reduced(Proportional):
    """Proportional's ranks with a smaller budget: only the budget and its feasibility rule differ."""

    name = "reduced"
    description = "Eq. 3 at allocation.reduced_fraction of the uniform budget"
    allocation_round = None  # a smaller budget, not a re-profiling round

    def check(self, config) -> None:
        super().check(config)
        a, rank = config.allocation, config.lora.rank
        if a.reduced_fraction * rank < a.r_min:
            raise ConfigError(
                f"allocation.reduced_fraction: {a.reduced_fraction} x lora.rank ({rank}) is below "
                f"allocation.r_min ({a.r_min}), so the reduced budget is infeasible"
            )

    def budget(self, request: AllocationRequest) -> int:
        return reduced_budget(request.num_layers, request.rank, request.reduced_fraction, request.multiple)
