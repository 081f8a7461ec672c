"""``uniform``: every layer gets ``lora.rank``, the baseline every other strategy is compared with.

>>> from orchestrator.core.strategies import AllocationRequest, get_strategy
>>> request = AllocationRequest(num_layers=3, rank=32, r_min=4, r_max=64, multiple=4, reduced_fraction=0.7,
...                             random_range=(16, 48))
>>> get_strategy("uniform").ranks(request)
[32, 32, 32]
"""

from orchestrator.core.roles import REFERENCE
from orchestrator.core.strategies.registry import AllocationRequest, Strategy, register_strategy


@register_strategy
class Uniform(Strategy):
    name = REFERENCE
    description = "every layer gets lora.rank (the baseline)"

    def ranks(self, request: AllocationRequest) -> list[int]:
        return [request.rank] * request.num_layers
