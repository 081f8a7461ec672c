"""``random``: the control with non-uniform ranks but no gradient guidance, at the uniform budget.

A seeded draw in ``allocation.random_range`` (multiples of ``multiple``), rescaled to total ``L x rank``.

>>> from orchestrator.core.strategies import allocate
>>> sum(allocate("random", num_layers=28, rank=32, r_min=4, r_max=64, multiple=4, random_range=(16, 48)))
896
"""

import numpy as np

from orchestrator.core.allocation import distribute
from orchestrator.core.errors import ConfigError
from orchestrator.core.strategies.registry import (
    AllocationRequest,
    Strategy,
    check_rank_within_bounds,
    register_strategy,
)


@register_strategy
class Random(Strategy):
    name = "random"
    description = "seeded random ranks in allocation.random_range, same budget as uniform"

    def check(self, config) -> None:
        check_rank_within_bounds(config)
        a, rank = config.allocation, config.lora.rank
        if not a.random_range[0] <= rank <= a.random_range[1]:
            raise ConfigError(
                f"allocation.random_range: {list(a.random_range)} must contain lora.rank ({rank}) "
                "so a random draw can keep the uniform budget"
            )

    def ranks(self, request: AllocationRequest) -> list[int]:
        low, high, multiple = *request.random_range, request.multiple
        draw = np.random.default_rng(request.seed).integers(low // multiple, high // multiple + 1,
                                                            size=request.num_layers) * multiple
        return distribute(draw.astype(float), self.budget(request), low, high, multiple)
